#!/usr/bin/env bash
# Two chains of work at once on a lent two-GPU host (nvidia-h100-x2), one per card, so one
# lease measures both; each command of the lease may run 10 minutes at most, so the chains
# run in process sessions of their own and later commands follow them.
#   card 0 (host cores 0-15): seed_graphs.toml twice back to back (issue 8), the observer
#       effect with the live app (graphs engine), then INT8 at threshold 0.0 on graphs
#   card 1 (host cores 16-31): serve_qwen3b_long.toml (issue 12), then the offline rows
#       at the serving batches (serve_offline_qwen3b.toml) on the same card
# Each chain is confined to its half of the host's cores (taskset), so one chain's
# processes never share a core with the other's; inside a chain wattscope pins the runner
# and sampler to cores of their own as usual. NVML reads each card by the UUID that
# CUDA_VISIBLE_DEVICES names, so each recording holds its own card.
#   bash benchmarks/device_x2.sh start      # install wheels, start both chains, follow
#   bash benchmarks/device_x2.sh follow [S] # wait up to S seconds (default 540), then collect
# `follow` copies whatever has finished into $OUT (8 files at most come back a call: the
# logs travel as one tarball).
set -u
cmd=$1
dir=/tmp/x2
. "$(dirname "$0")/device_lib.sh"
step() {  # step NAME COMMAND...: run one step of a chain, its exit code in NAME.rc
  local name=$1; shift
  echo "== $(date -u +%T) $name" >> "$dir/$name.log"
  "$@" >> "$dir/$name.log" 2>&1; echo $? > "$dir/$name.rc"
}
export -f step
export dir
collect() {
  for f in "$dir"/*.wattscope "$dir"/*.json; do [ -f "$f" ] && [ -f "${f%.*}.rc" ] && cp "$f" "$OUT"/; done
  tar czf "$OUT/logs.tgz" -C "$dir" $(cd "$dir" && ls *.log *.rc 2>/dev/null) 2>/dev/null
  ls -la "$OUT"
}
case $cmd in
  start)
    nvidia-smi --query-gpu=index,name,uuid,power.limit --format=csv > "$dir/gpus.log"
    CUDA_VISIBLE_DEVICES=0 setsid taskset -c 0-15 bash -c "
      step seed-graphs-1 python3 -m wattscope run benchmarks/seed_graphs.toml --headless -o $dir/seed-graphs-1.wattscope
      step seed-graphs-2 python3 -m wattscope run benchmarks/seed_graphs.toml --headless -o $dir/seed-graphs-2.wattscope
      step observer-live python3 benchmarks/observer_effect.py --engine graphs --live --gpu 0 --seconds 4 --pairs 6 --json $dir/observer-live.json
      step int8-t0 python3 -m wattscope run benchmarks/seed_graphs_int8_t0.toml --headless -o $dir/int8-t0.wattscope" < /dev/null > /dev/null 2>&1 &
    CUDA_VISIBLE_DEVICES=1 setsid taskset -c 16-31 bash -c "
      step serve python3 -m wattscope serve-bench benchmarks/serve_qwen3b_long.toml -o $dir/serve.wattscope
      step offline python3 -m wattscope run benchmarks/serve_offline_qwen3b.toml --headless -o $dir/offline.wattscope" < /dev/null > /dev/null 2>&1 &
    sleep 60; tail -n 3 "$dir"/*.log ;;
  follow)
    deadline=$((SECONDS + ${2:-540}))
    while [ $SECONDS -lt $deadline ] && ! { [ -f "$dir/int8-t0.rc" ] && [ -f "$dir/offline.rc" ]; }; do sleep 10; done
    for f in "$dir"/*.log; do echo "-- $f"; tail -n 4 "$f"; done
    collect ;;
esac
