"""The tests' synthetic event stream: its results follow from its own windows."""

from __future__ import annotations

import statistics

from wattscope import events as ev

from synthetic_run import SEED_CALLS, event_stream, result_of

CONFIGS = list(SEED_CALLS)


def _events() -> list[ev.Event]:
    return event_stream(configs=CONFIGS, rate_hz=10.0)


def test_results_are_the_medians_of_their_windows() -> None:
    events = _events()
    windows = [e for e in events if isinstance(e, ev.Window)]
    for model, batch, precision in CONFIGS:
        cid = f"{model}/b{batch}/{precision}"
        group = f"{model}/b{batch}"
        idle = [w for w in windows if w.role == "idle" and w.group == group]
        idle_w = sum(w.energy_j for w in idle) / sum(w.duration_s for w in idle)
        mine = [w for w in windows if w.config_id == cid and w.role == "measure"]
        assert sorted(w.round for w in mine) == [1, 1, 2, 2, 3, 3] and {w.group for w in mine} == {group}
        f = result_of(events, cid).figures
        for phase in ("prefill", "decode"):
            ws = [w for w in mine if w.phase == phase]
            per_call = statistics.median((w.energy_j - idle_w * w.tail_s) / w.calls for w in ws)
            assert f[f"{phase}_energy_j"] == per_call
        tok_s = statistics.median(w.tokens / w.work_s for w in mine if w.phase == "decode")
        assert f["decode_tok_s"] == tok_s
        # A group's results come after its last window.
        assert result_of(events, cid).t_ns >= max(w.end_ns for w in windows if w.group == group)


def test_figures_keep_the_seed_shape() -> None:
    """INT8 costs more energy than NF4, NF4 more than FP16, in both phases; decode speed
    runs the other way (Qwen2.5-3B b8 and Yi-1.5-6B b8, where the seed's NF4 cost more
    than its INT8, keep that too)."""
    events = _events()
    for model, batch in {(m, b) for m, b, _ in CONFIGS}:
        f = {p: result_of(events, f"{model}/b{batch}/{p}").figures for p in ("fp16", "int8", "nf4")}
        seed = {p: SEED_CALLS[(model, batch, p)] for p in f}
        for i, name in enumerate(("prefill_energy_j", "decode_energy_j", "decode_tok_s")):
            by_figure = sorted(f, key=lambda p: f[p][name])
            assert by_figure == sorted(seed, key=lambda p: seed[p][i]), (model, batch, name)
        assert f["fp16"]["prefill_energy_ratio"] == 1.0
        assert f["int8"]["decode_speed_ratio"] < 1 < f["int8"]["decode_energy_ratio"]


def test_is_deterministic() -> None:
    assert event_stream(rate_hz=10.0) == event_stream(rate_hz=10.0) != event_stream(rate_hz=10.0, seed=1)
