"""Config files: the shipped ones parse to the intended matrix; every kind of bad input
is a ConfigError naming the file, the key and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wattscope import config

ROOT = Path(__file__).resolve().parent.parent

MINIMAL = """
[[matrix]]
models = ["synthetic:Qwen2-1.5B"]
batches = [1]
precisions = ["fp16", "nf4"]
"""


def test_seed_config_is_the_seed_matrix() -> None:
    sweep = config.load(ROOT / "configs" / "seed.toml")
    rows = [(c.model_label, c.batch, c.precision) for c in sweep.configs]
    assert len(rows) == 15
    expected = [
        (m, b, p)
        for m, batches in (("Qwen2-1.5B", (1, 8)), ("Qwen2.5-3B", (1, 8)), ("Yi-1.5-6B", (8,)))
        for b in batches
        for p in ("fp16", "int8", "nf4")
    ]
    assert rows == expected
    assert all(c.synthetic for c in sweep.configs)
    assert sweep.protocol.decode_steps == 32
    assert sweep.protocol.min_window_s >= 1.0
    assert sweep.protocol.ci_target == 0.03
    assert [len(g) for g in sweep.groups()] == [3, 3, 3, 3, 3]
    assert sweep.bitsandbytes.llm_int8_threshold == 6.0


def test_quick_config_parses() -> None:
    sweep = config.load(ROOT / "configs" / "quick.toml")
    assert {c.precision for c in sweep.configs} == {"fp16", "int8", "nf4"}


def test_defaults_and_fp16_first() -> None:
    text = MINIMAL.replace('["fp16", "nf4"]', '["nf4", "int8", "fp16"]')
    sweep = config.parse(text, "x.toml")
    assert [c.precision for c in sweep.configs] == ["fp16", "nf4", "int8"]
    assert sweep.protocol == config.Protocol()
    assert sweep.sampler.rate_hz == 100.0
    assert sweep.name == "x"


def test_random_order_is_seeded() -> None:
    text = '[protocol]\nprecision_order = "random"\nseed = 3\n' + MINIMAL.replace(
        '["fp16", "nf4"]', '["fp16", "bf16", "int8", "nf4"]'
    )
    a = [c.precision for c in config.parse(text, "x.toml").configs]
    b = [c.precision for c in config.parse(text, "x.toml").configs]
    assert a == b and sorted(a) == ["bf16", "fp16", "int8", "nf4"]


def test_for_simulation_shortens_windows() -> None:
    sweep = config.parse(MINIMAL, "x.toml").for_simulation()
    assert sweep.protocol.min_window_s == config.Sim().min_window_s
    assert sweep.protocol.decode_steps == 32


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[protocol]\nrepeatz = 3\n" + MINIMAL, ["protocol.repeatz", "allowed", "min_rounds"]),
        ("[protocol]\nrepeats = 3\n" + MINIMAL, ["protocol.repeats", "no longer a key", "min_rounds"]),
        ("[protocol]\nmax_warmup_windows = 1\n" + MINIMAL, ["protocol.max_warmup_windows", "max_warmup_rounds"]),
        ('[protocol]\nmin_rounds = "3"\n' + MINIMAL, ["protocol.min_rounds", "integer from 2"]),
        ("[protocol]\nmin_rounds = 1\n" + MINIMAL, ["protocol.min_rounds", "an interval needs two rounds"]),
        ("[protocol]\nmax_warmup_rounds = 1\n" + MINIMAL, ["protocol.max_warmup_rounds", "from 2"]),
        ("[protocol]\nci_target = 0\n" + MINIMAL, ["protocol.ci_target", "fraction > 0 and < 1"]),
        ("[protocol]\nci_target = 1.5\n" + MINIMAL, ["protocol.ci_target", "fraction > 0 and < 1"]),
        ("[protocol]\nmax_row_s = 3\n" + MINIMAL, ["protocol.max_row_s", "too short for one round", "Qwen2-1.5B/b1", ">= 8"]),
        ("[protocol]\nmax_rounds = 2\nmin_rounds = 3\n" + MINIMAL, ["protocol.max_rounds", ">= protocol.min_rounds"]),
        ("[protocol]\nengine = 'turbo'\n" + MINIMAL, ["protocol.engine", "eager, graphs"]),
        (MINIMAL + "engine = 'jit'\n", ["matrix[0].engine", "eager, graphs"]),
        ("[protocol]\nmin_window_s = inf\n" + MINIMAL, ["protocol.min_window_s", "seconds"]),
        ("[protocol]\ncooldown_s = nan\n" + MINIMAL, ["protocol.cooldown_s", "seconds"]),
        ("[host]\nrunner_cpu = 'fast'\n" + MINIMAL, ["host.runner_cpu", '"auto", "off" or a CPU core number']),
        ("[protocol]\nmin_window_s = true\n" + MINIMAL, ["protocol.min_window_s", "seconds"]),
        ("[sampler]\nrate_hz = 5000\n" + MINIMAL, ["sampler.rate_hz", "1 to 1000"]),
        (MINIMAL.replace('"nf4"', '"int4"'), ["matrix[0].precisions", "'int4'", "fp16, bf16, int8, nf4"]),
        (MINIMAL.replace("[1]", "[0]"), ["matrix[0].batches", "integers from 1 to 4096"]),
        (MINIMAL.replace("[1]", "[]"), ["matrix[0].batches"]),
        (MINIMAL.replace("Qwen2-1.5B", "Qwen9"), ["matrix[0].models", "unknown synthetic model 'Qwen9'", "Yi-1.5-6B"]),
        ("colour = 1\n" + MINIMAL, ["unknown key 'colour'"]),
        ("[protocol]\n", ["'matrix' is missing"]),
        ('[[matrix]]\nmodels = ["synthetic:Qwen2-1.5B"]\nbatches = [1]\n', ["matrix[0].precisions", "missing"]),
        ("[bitsandbytes]\nnf4_compute_dtype = 'fp8'\n" + MINIMAL, ["bitsandbytes.nf4_compute_dtype", "float16"]),
        ("not toml [", ["not valid TOML"]),
    ],
)
def test_bad_config_names_file_key_and_allowed(text: str, needles: list[str]) -> None:
    with pytest.raises(config.ConfigError) as exc:
        config.parse(text, "configs/bad.toml")
    msg = str(exc.value)
    assert msg.startswith("configs/bad.toml: ")
    for needle in needles:
        assert needle in msg


def test_missing_file() -> None:
    with pytest.raises(config.ConfigError, match="nope.toml: config file not found"):
        config.load("nope.toml")


def test_synthetic_config_json_resolved_next_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "tiny.json").write_text("{}")
    text = MINIMAL.replace("synthetic:Qwen2-1.5B", "synthetic:tiny.json")
    sweep = config.parse(text, str(tmp_path / "s.toml"))
    assert sweep.configs[0].model_label == "tiny"
    with pytest.raises(config.ConfigError, match="not found"):
        config.parse(text.replace("tiny.json", "other.json"), str(tmp_path / "s.toml"))


@pytest.mark.process
@pytest.mark.parametrize("bad", ["[protocol]\nrepeats = 0\n" + MINIMAL, None])
def test_cli_bad_config_exits_2_and_writes_nothing(tmp_path: Path, bad: str | None) -> None:
    cfg = tmp_path / "bad.toml"
    if bad is not None:
        cfg.write_text(bad)
    out = tmp_path / "rec.wattscope"
    proc = subprocess.run(
        [sys.executable, "-m", "wattscope", "run", str(cfg), "--sim", "--headless", "-o", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert str(cfg) in proc.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == ([cfg] if bad is not None else [])


@pytest.mark.process
def test_run_without_a_gpu_says_so_and_writes_nothing(tmp_path: Path) -> None:
    pytest.importorskip("pynvml")
    from wattscope.telemetry import NvmlUnavailable, SensorSpec, open_sensor

    try:
        open_sensor(SensorSpec.nvml(0)).close()
        pytest.skip("this machine has an NVIDIA GPU")
    except NvmlUnavailable:
        pass
    out = tmp_path / "rec.wattscope"
    proc = subprocess.run(
        [sys.executable, "-m", "wattscope", "run", str(ROOT / "configs" / "quick.toml"), "--headless", "-o", str(out)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert "NVML is unavailable" in proc.stderr and "--sim" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
