#!/usr/bin/env bash
# Two chains of work at once on a lent two-GPU host (nvidia-h100-x2), one per card, so one
# lease measures both; each command of the lease may run 10 minutes at most, so the chains
# run in process sessions of their own and later commands follow them. A plan file
# (benchmarks/x2-plans/) names the chains: CHAIN0 runs on card 0 (host cores 0-15), CHAIN1
# on card 1 (host cores 16-31), each a list of `step NAME COMMAND...` lines; LAST names the
# steps that end them. Each chain is confined to its half of the host's cores (taskset), so one chain's
# processes never share a core with the other's; inside a chain wattscope pins the runner
# and sampler to cores of their own as usual. NVML reads each card by the UUID that
# CUDA_VISIBLE_DEVICES names, so each recording holds its own card.
#   bash benchmarks/device_x2.sh start PLAN      # install wheels, start both chains
#   bash benchmarks/device_x2.sh follow PLAN [S] # wait up to S seconds (default 540), then collect
# `follow` copies whatever has finished into $OUT (8 files at most come back a call, 16 MiB
# each: recordings travel xz-compressed, as benchmarks/results keeps them, and the logs as
# one tarball).
set -u
cmd=$1
dir=/tmp/x2
. "$2"
. "$(dirname "$0")/device_lib.sh"
step() {  # step NAME COMMAND...: run one step of a chain, its exit code in NAME.rc
  local name=$1; shift
  echo "== $(date -u +%T) $name" >> "$dir/$name.log"
  "$@" >> "$dir/$name.log" 2>&1; echo $? > "$dir/$name.rc"
}
export -f step
export dir
collect() {
  for f in "$dir"/*.json; do [ -f "$f" ] && [ -f "${f%.*}.rc" ] && cp "$f" "$OUT"/; done
  for f in "$dir"/*.wattscope; do
    [ -f "$f" ] && [ -f "${f%.*}.rc" ] && [ ! -f "$OUT/${f##*/}.xz" ] && python3 -c \
      'import lzma, shutil, sys; shutil.copyfileobj(open(sys.argv[1], "rb"), lzma.open(sys.argv[2], "wb"))' "$f" "$OUT/${f##*/}.xz"
  done
  tar czf "$OUT/logs.tgz" -C "$dir" $(cd "$dir" && ls *.log *.rc 2>/dev/null) 2>/dev/null
  ls -la "$OUT"
}
case $cmd in
  start)
    # The chains run from a copy of the tree: a later call's tree, copied over this one,
    # must not change the code of a step that has not started yet.
    rm -rf "$dir/code" && cp -a . "$dir/code" && cd "$dir/code" && export PYTHONPATH=/tmp/site:$PWD || exit 1
    nvidia-smi --query-gpu=index,name,uuid,power.limit --format=csv > "$dir/gpus.log"
    CUDA_VISIBLE_DEVICES=0 setsid taskset -c 0-15 bash -c "$CHAIN0" < /dev/null > /dev/null 2>&1 &
    CUDA_VISIBLE_DEVICES=1 setsid taskset -c 16-31 bash -c "$CHAIN1" < /dev/null > /dev/null 2>&1 &
    sleep 60; tail -n 3 "$dir"/*.log ;;
  follow)
    deadline=$((SECONDS + ${3:-540}))
    ended() { for n in $LAST; do [ -f "$dir/$n.rc" ] || return 1; done; }
    while [ $SECONDS -lt $deadline ] && ! ended; do sleep 10; done
    for f in "$dir"/*.log; do echo "-- $f"; tail -n 4 "$f"; done
    collect ;;
esac
