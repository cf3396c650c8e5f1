"""Which workload a configuration's engine gets: "eager" (``models.ModelWorkload``, the
transformers forward loop) or "graphs" (``graphs.GraphsWorkload``, CUDA-graph replays).
Its own module because the graphs engine builds on the eager one: choosing between them
in either would tie the two modules in a circle. torch is imported by those two, inside
their functions, never here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wattscope.bench.graphs import GraphsWorkload
from wattscope.bench.models import ModelWorkload, WeightCache, device_list, model_and_prompt
from wattscope.bench.workload import WorkloadError
from wattscope.config import RunConfig, Sweep


def build_workload(rc: RunConfig, sweep: Sweep, device: str | Sequence[str], cache: WeightCache,
                   info: dict[str, Any]) -> ModelWorkload:
    """The configuration's workload on its engine, on one device or split over several
    (eager only)."""
    devices = device_list(device)
    if rc.engine == "graphs" and len(devices) > 1:
        raise WorkloadError(f"the graphs engine runs on one GPU; {rc.config_id} lists {len(devices)}: use engine = \"eager\"")
    model, ids = model_and_prompt(rc, sweep, devices, cache, info)
    info["engine"] = rc.engine
    if rc.engine == "graphs":
        return GraphsWorkload(model, ids, devices[0], max_steps=sweep.protocol.decode_steps)
    return ModelWorkload(model, ids, devices[0], devices)
