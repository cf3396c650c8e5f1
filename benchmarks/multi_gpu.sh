#!/usr/bin/env bash
# Issue 9 on a lent 2-GPU machine (nvidia-h100-x2 or nvidia-h200-x2), one step per device
# call (each well under 9 minutes); results under $OUT. Usage, from the repo root:
#   bash benchmarks/multi_gpu.sh a   # CUDA_VISIBLE_DEVICES=1 wattscope run configs/quick.toml:
#                                    # the load is on NVML card 1, window energies equal its
#                                    # counter deltas (read by an independent NVML poller), card 0 idle
#   bash benchmarks/multi_gpu.sh b   # Yi-1.5-6B FP16 b8 on one card, then split over both
#   bash benchmarks/multi_gpu.sh c   # Llama-3-70B-shaped FP16 b1 (141 GB) split over both
# FP16 needs no extra wheel; quick.toml's INT8/NF4 rows need bitsandbytes: carry .whl
# (installed when present) or they fail as rows with their reason while FP16 is measured.
set -u
step=${1:?usage: multi_gpu.sh a|b|c}
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=index,name,uuid,pci.bus_id,power.default_limit,memory.total --format=csv | tee "$OUT/gpus-$step.txt"
python3 -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/gpus-$step.txt"

case $step in
  a)
    python3 benchmarks/multi_gpu.py poll "$OUT/a-nvml.csv" &
    poller=$!
    sleep 1
    CUDA_VISIBLE_DEVICES=1 timeout 480 python3 -m wattscope run configs/quick.toml --headless \
      -o "$OUT/a-visible1.wattscope" > "$OUT/a-run.log" 2>&1
    echo "run exit code $?" | tee -a "$OUT/a-run.log"
    kill "$poller"; wait "$poller"
    tail -n 12 "$OUT/a-run.log"
    python3 benchmarks/multi_gpu.py check-visible "$OUT/a-visible1.wattscope" "$OUT/a-nvml.csv" "$OUT/a-check.json"
    ;;
  b)
    timeout 250 python3 -m wattscope run benchmarks/multi_gpu_yi.toml --headless --gpus 0 \
      -o "$OUT/b-yi-1gpu.wattscope" > "$OUT/b-1gpu.log" 2>&1
    echo "one card: exit code $?" | tee -a "$OUT/b-1gpu.log"
    timeout 250 python3 -m wattscope run benchmarks/multi_gpu_yi.toml --headless --gpus 0,1 \
      -o "$OUT/b-yi-2gpu.wattscope" > "$OUT/b-2gpu.log" 2>&1
    echo "two cards: exit code $?" | tee -a "$OUT/b-2gpu.log"
    tail -n 6 "$OUT/b-1gpu.log" "$OUT/b-2gpu.log"
    python3 benchmarks/multi_gpu.py summary "$OUT/b-summary.json" "$OUT/b-yi-1gpu.wattscope" "$OUT/b-yi-2gpu.wattscope"
    ;;
  c)
    timeout 500 python3 -m wattscope run benchmarks/multi_gpu_70b.toml --headless \
      -o "$OUT/c-70b-2gpu.wattscope" > "$OUT/c-2gpu.log" 2>&1
    echo "exit code $?" | tee -a "$OUT/c-2gpu.log"
    tail -n 12 "$OUT/c-2gpu.log"
    python3 benchmarks/multi_gpu.py summary "$OUT/c-summary.json" "$OUT/c-70b-2gpu.wattscope"
    ;;
  *) echo "unknown step $step; expected a, b or c"; exit 2 ;;
esac
