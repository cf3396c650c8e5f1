"""Host isolation plans: which core the runner and the sampler get."""

from __future__ import annotations

import os

import pytest

from wattscope import config, host

MINIMAL = '[[matrix]]\nmodels = ["synthetic:Qwen2-1.5B"]\nbatches = [1]\nprecisions = ["fp16", "nf4"]\n'


def test_auto_gives_the_highest_cores_to_runner_and_sampler() -> None:
    plan = host.plan(config.Host(), set(range(16)))
    assert (plan.runner_cpu, plan.sampler_cpu) == (15, 14)
    assert plan.parent_cpus == tuple(range(14))
    meta = plan.to_meta()
    assert meta["torch_threads"] == 1 and "disabled inside" in meta["gc"]


def test_auto_takes_a_core_an_explicit_choice_left_free() -> None:
    plan = host.plan(config.Host(runner_cpu=7, sampler_cpu="auto"), set(range(8)))
    assert (plan.runner_cpu, plan.sampler_cpu) == (7, 6)
    small = host.plan(config.Host(runner_cpu=1, sampler_cpu="auto"), {0, 1})
    assert (small.runner_cpu, small.sampler_cpu) == (1, None)
    assert small.note.startswith("runner pinned") and "only 2 usable cores" in small.note


def test_auto_on_a_small_machine_pins_nothing_and_says_why() -> None:
    plan = host.plan(config.Host(), {0, 1})
    assert plan.runner_cpu is None and plan.sampler_cpu is None and plan.parent_cpus is None
    assert "only 2 usable cores" in plan.note


def test_explicit_cores_and_off() -> None:
    plan = host.plan(config.Host(runner_cpu=3, sampler_cpu="off"), {0, 1, 2, 3})
    assert (plan.runner_cpu, plan.sampler_cpu, plan.parent_cpus) == (3, None, (0, 1, 2))
    off = host.plan(config.Host(runner_cpu="off", sampler_cpu="off"), set(range(8)))
    assert off.runner_cpu is None and off.parent_cpus is None and "off" in off.note


@pytest.mark.parametrize(
    ("h", "needle"),
    [
        (config.Host(runner_cpu=9, sampler_cpu="off"), "'host.runner_cpu' = 9 is not a CPU"),
        (config.Host(runner_cpu=1, sampler_cpu=1), "both CPU 1"),
    ],
)
def test_impossible_choices_are_config_errors(h: config.Host, needle: str) -> None:
    with pytest.raises(config.ConfigError, match=needle):
        host.plan(h, {0, 1, 2, 3}, "x.toml")


def test_host_table_parses_and_pin_confines_a_process() -> None:
    sweep = config.parse('[host]\nrunner_cpu = 1\nsampler_cpu = "off"\n' + MINIMAL, "x.toml")
    assert sweep.host == config.Host(runner_cpu=1, sampler_cpu="off")
    before = os.sched_getaffinity(0)
    try:
        cpu = min(before)
        host.pin(0, cpu)
        assert os.sched_getaffinity(0) == {cpu}
    finally:
        os.sched_setaffinity(0, before)


def test_engine_and_group_name_the_rows() -> None:
    text = MINIMAL + '\n[[matrix]]\nmodels = ["synthetic:Qwen2-1.5B"]\nbatches = [1]\nprecisions = ["fp16", "nf4"]\nengine = "graphs"\n'
    sweep = config.parse(text, "x.toml")
    assert [c.config_id for c in sweep.configs] == [
        "Qwen2-1.5B/b1/fp16", "Qwen2-1.5B/b1/nf4", "Qwen2-1.5B/b1/graphs/fp16", "Qwen2-1.5B/b1/graphs/nf4"]
    assert [[c.precision for c in g] for g in sweep.groups()] == [["fp16", "nf4"], ["fp16", "nf4"]]
    assert {c.engine for c in sweep.groups()[1]} == {"graphs"}
