"""The serving attribution end to end on an engine-like stream (serve_stream.py) with an
H100's counter (refreshed every ~0.1 s, read every 0.05 s) and a cost per engine step:
the report's all-in J per prefill and per decode token cover the truth (each step's own
cost shared by its own tokens) at close to their nominal 95%, and the steps counted from
the stream are the engine's. The stream's engine works as the attribution assumes (a
prompt in the step of its first token, tokens at the end of their step), so this checks
the estimator and its intervals, not the assumptions: those are checked against a real
engine's step log on the GPU (benchmarks/serve_check.py)."""

from __future__ import annotations

import dataclasses

import pytest
from serve_stream import SERVE, StreamRecording, event_stream, steps_truth

from wattscope.serve.analysis import analyse

H100_REFRESH_S = 0.0973
STEP_J = 0.5
LONGER = dataclasses.replace(SERVE, duration_s=20.0, min_interval_s=0.5, precisions=("fp16",))


def _runs(seeds: range):
    for seed in seeds:
        serve = dataclasses.replace(LONGER, seed=seed)
        steps: dict = {}
        stream = event_stream(serve, seed=seed, step_j=STEP_J, refresh_s=H100_REFRESH_S, steps_out=steps)
        for r in analyse(StreamRecording(stream)):
            yield r, steps[(r.precision, r.index)]


def test_all_in_intervals_cover_the_truth_near_their_nominal_rate() -> None:
    hits = checks = 0
    for r, steps in _runs(range(20)):
        assert r.fit.terms == 3 and r.merged_bursts == 0.0
        assert r.stream_steps == len(steps)  # every engine step seen as one burst
        truth = steps_truth(steps, STEP_J)
        for est, want in zip((r.fit.prefill_j_per_token, r.fit.decode_j_per_token), truth):
            checks += 1
            hits += est.low <= want <= est.high
        assert r.fit.step_j.value == pytest.approx(STEP_J, rel=0.6)
    # 92.5% over 60 seeds when this was written. The 80 checks are 40 pairs from the same
    # fits, so they are not independent: the bound is loose on purpose.
    assert 0.85 <= hits / checks <= 0.99


def test_the_parts_sum_to_the_measured_energy() -> None:
    for r, _ in _runs(range(2)):
        f = r.fit
        assert f.idle_j + f.prefill_j + f.decode_j == pytest.approx(f.measured_j, rel=1e-9)
        assert sum(q.prefill_j + q.decode_j for q in r.requests) == pytest.approx(f.prefill_j + f.decode_j, rel=1e-9)
