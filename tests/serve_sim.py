"""Small serving recordings made by ``serve-bench`` on the simulated GPU and engine, for
the plot and compare tests (``serve_recordings`` in conftest.py makes them once a session).

- ``a``: FP16 and NF4 at 6 and 18 requests/s, 0.02 J per prefill and 0.2 J per decode token;
- ``b``: the same run with decode at 0.4 J per token (B/A of decode near 2);
- ``poor``: FP16 at 6 and 30 requests/s for 0.5 s: too few counter intervals for a fit
  (attribution.MIN_INTERVALS), so every figure is blank and says why.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUN = """
name = "{name}"
[serve]
engine = "sim"
precisions = {precisions}
rates = {rates}
duration_s = {duration}
idle_s = 2
drain_s = 5
min_interval_s = {interval}
max_batch = 16
prompt_tokens = {{ dist = "uniform", min = 64, max = 512 }}
output_tokens = {{ dist = "uniform", min = 8, max = 40 }}
[sampler]
energy_hz = 50
[sim]
prefill_j_per_token = 0.02
decode_j_per_token = {decode}
"""

RUNS = {
    "a": {"precisions": '["fp16", "nf4"]', "rates": "[6.0, 18.0]", "duration": 4, "interval": 0.15, "decode": 0.2},
    "b": {"precisions": '["fp16", "nf4"]', "rates": "[6.0, 18.0]", "duration": 4, "interval": 0.15, "decode": 0.4},
    "poor": {"precisions": '["fp16"]', "rates": "[6.0, 30.0]", "duration": 0.5, "interval": 0.15, "decode": 0.2},
}


def make(folder: Path) -> dict[str, Path]:
    """Record every run of ``RUNS`` into ``folder`` (at once: the simulated engine mostly
    sleeps) and return their paths by name."""
    procs = {}
    for name, values in RUNS.items():
        cfg = folder / f"{name}.toml"
        cfg.write_text(RUN.format(name=name, **values))
        out = folder / f"{name}.wattscope"
        procs[name] = (out, subprocess.Popen([sys.executable, "-m", "wattscope", "serve-bench", str(cfg), "-o", str(out)],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for name, (_, p) in procs.items():
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"serve-bench {name}: {err}"
    return {name: out for name, (out, _) in procs.items()}
