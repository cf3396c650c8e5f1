# The plan of 2026-11-28's first two-GPU lease (issues 8 and 12), for device_x2.sh.
#   card 0: seed_graphs.toml twice back to back, the observer effect with the live app
#       (graphs engine), then INT8 at threshold 0.0 on graphs
#   card 1: serve_qwen3b_long.toml, then the offline rows at the serving batches
#       (serve_offline_qwen3b.toml) on the same card
CHAIN0="
  step seed-graphs-1 python3 -m wattscope run benchmarks/seed_graphs.toml --headless -o $dir/seed-graphs-1.wattscope
  step seed-graphs-2 python3 -m wattscope run benchmarks/seed_graphs.toml --headless -o $dir/seed-graphs-2.wattscope
  step observer-live python3 benchmarks/observer_effect.py --engine graphs --live --gpu 0 --seconds 4 --pairs 6 --json $dir/observer-live.json
  step int8-t0 python3 -m wattscope run benchmarks/seed_graphs_int8_t0.toml --headless -o $dir/int8-t0.wattscope"
CHAIN1="
  step serve python3 -m wattscope serve-bench benchmarks/serve_qwen3b_long.toml -o $dir/serve.wattscope
  step offline python3 -m wattscope run benchmarks/serve_offline_qwen3b.toml --headless -o $dir/offline.wattscope"
LAST="int8-t0 offline"  # the steps that end each chain
