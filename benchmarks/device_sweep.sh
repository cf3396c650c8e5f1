#!/usr/bin/env bash
# Long sweeps on a lent GPU machine whose commands may run 10 minutes at most: the sweep
# runs in its own process session (it outlives the command) and later commands wait for
# it. Recordings stay in /tmp/sweeps until `collect` copies them to $OUT.
#   bash benchmarks/device_sweep.sh start NAME CONFIG [FOLLOW_S] [TIMES]
#       install wheels, start the sweep TIMES times back to back (NAME-1, NAME-2, ... when
#       TIMES > 1; NAME ends when the last one does), then follow it for FOLLOW_S seconds
#   bash benchmarks/device_sweep.sh follow NAME [FOLLOW_S]  # wait (up to 9 min) for it to end
#   bash benchmarks/device_sweep.sh collect             # copy recordings and logs to $OUT
set -u
cmd=$1
dir=/tmp/sweeps
. "$(dirname "$0")/device_lib.sh"
case $cmd in
  start)
    name=$2 config=$3 times=${5:-1}
    date -u +%FT%TZ > "$dir/$name.started"
    runs=""
    for i in $(seq 1 "$times"); do
      out=$name; [ "$times" -gt 1 ] && out=$name-$i
      runs="$runs python3 -m wattscope run '$config' --headless -o '$dir/$out.wattscope' >> '$dir/$name.log' 2>&1; rc=\$?;"
    done
    setsid bash -c "$runs echo \$rc > '$dir/$name.rc'" < /dev/null &
    follow "$name" "${4:-540}" ;;
  follow) follow "$2" "${3:-540}" ;;
  collect) cp "$dir"/*.wattscope* "$dir"/*.log "$OUT"/ 2>/dev/null; ls -la "$OUT" ;;
esac
