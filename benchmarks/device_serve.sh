#!/usr/bin/env bash
# serve-bench on a lent GPU machine whose commands may run 10 minutes at most: each run
# goes in its own process session (it outlives the command); later commands wait for it.
# Recordings and logs stay in /tmp/serve until `collect` copies them to $OUT.
#   bash benchmarks/device_serve.sh start NAME CONFIG [PRECISION]  # install wheels, start, follow
#                                     (no PRECISION: every one of serve.precisions, in one recording)
#   bash benchmarks/device_serve.sh follow NAME                  # wait (up to 9 min) for it to end
#   bash benchmarks/device_serve.sh collect                      # copy recordings, tables, logs to $OUT
set -u
cmd=$1
dir=/tmp/serve
. "$(dirname "$0")/device_lib.sh"
case $cmd in
  start)
    name=$2 config=$3 only=${4:+--precision $4}
    setsid bash -c "python3 -m wattscope serve-bench '$config' $only -o '$dir/$name.wattscope' > '$dir/$name.log' 2>&1; echo \$? > '$dir/$name.rc'; python3 -m wattscope export '$dir/$name.wattscope' --table serving --format csv -o '$dir/$name.serving.csv'; python3 -m wattscope export '$dir/$name.wattscope' --table serving --format csv --per-request -o '$dir/$name.requests.csv'" < /dev/null &
    follow "$name" 540 ;;
  follow) follow "$2" "${3:-540}" ;;
  collect) cp "$dir"/*.wattscope "$dir"/*.csv "$dir"/*.log "$OUT"/ 2>/dev/null; ls -la "$OUT" ;;
esac
