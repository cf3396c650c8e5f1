#!/usr/bin/env bash
# One device call: host-isolation levers, the quick sweep through the real CLI, and the
# observer effect. Results under $OUT. Usage (repo root, wheels in .whl/):
#   bash benchmarks/device_check.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,power.default_limit,temperature.gpu --format=csv | tee $OUT/gpu.txt
nproc | tee -a $OUT/gpu.txt
python3 -m wattscope devices 2>&1 | tee $OUT/devices.txt
python3 benchmarks/host_isolation.py --json $OUT/host_isolation.json 2>&1 | tail -5
python3 -m wattscope run configs/quick.toml --headless -o $OUT/quick.wattscope 2>&1 | tail -25
python3 benchmarks/observer_effect.py --json $OUT/observer_effect.json 2>&1 | tail -3
