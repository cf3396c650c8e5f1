# Issue 12, run 4 (2026-11-28, second lease): serve_qwen3b_prefill.toml on both cards of
# one host, the same workload and seed, each followed by the offline rows at the light
# rate's batch on the same card (serve_offline_qwen3b_prefill.toml). Two cards give two
# independent runs of the attribution at once: each card's figures against its own
# offline rows, and the NF4 / FP16 ratios of the two cards against each other.
CHAIN0="
  step serve-0 python3 -m wattscope serve-bench benchmarks/serve_qwen3b_prefill.toml -o $dir/serve-0.wattscope
  step offline-0 python3 -m wattscope run benchmarks/serve_offline_qwen3b_prefill.toml --headless -o $dir/offline-0.wattscope"
CHAIN1="
  step serve-1 python3 -m wattscope serve-bench benchmarks/serve_qwen3b_prefill.toml -o $dir/serve-1.wattscope
  step offline-1 python3 -m wattscope run benchmarks/serve_offline_qwen3b_prefill.toml --headless -o $dir/offline-1.wattscope"
LAST="offline-0 offline-1"
