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


# ------------------------------------------------------------------------- limits


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("[protocol]\nprompt_tokens = 131073\n" + MINIMAL, ["protocol.prompt_tokens", "from 1 to 131072"]),
        ("[protocol]\ndecode_steps = 1000000000\n" + MINIMAL, ["protocol.decode_steps", "from 1 to 65536"]),
        (MINIMAL.replace("[1]", "[1000000000]"), ["matrix[0].batches", "from 1 to 4096"]),
        ("[protocol]\nseed = -1\n" + MINIMAL, ["protocol.seed", "0 to 2^63 - 1"]),
        ("[sim]\nseed = -1\n" + MINIMAL, ["sim.seed", "0 to 2^63 - 1"]),
        ("[protocol]\ncooldown_s = inf\n" + MINIMAL, ["protocol.cooldown_s", "0 to 3600"]),
        ("[bitsandbytes]\nllm_int8_threshold = 1e9\n" + MINIMAL, ["bitsandbytes.llm_int8_threshold", "from 0 to 1000"]),
        ("[run]\ngpus = [0, 0]\n" + MINIMAL, ["run.gpus", "distinct CUDA ordinals from 0 to 255"]),
        ("[run]\ngpus = [256]\n" + MINIMAL, ["run.gpus", "from 0 to 255"]),
        ("[host]\nrunner_cpu = 5000\n" + MINIMAL, ["host.runner_cpu", "from 0 to 4095"]),
        ('name = "../../x"\n' + MINIMAL, ["'name' = '../../x'", "no path"]),
        ('name = "/tmp/x"\n' + MINIMAL, ["'name' = '/tmp/x'", "no path"]),
        ('name = "a/b"\n' + MINIMAL, ["'name' = 'a/b'"]),
        ('name = ".hidden"\n' + MINIMAL, ["'name' = '.hidden'"]),
        ('name = ""\n' + MINIMAL, ["'name' = ''"]),
        (MINIMAL.replace("synthetic:Qwen2-1.5B", "./no/such/model"), ["matrix[0].models", "model path ./no/such/model not found"]),
        (MINIMAL.replace("synthetic:Qwen2-1.5B", "/no/such/model"), ["model path /no/such/model not found"]),
        (MINIMAL.replace("synthetic:Qwen2-1.5B", "a/b/c"), ["model path a/b/c not found", "owner/name"]),
        (MINIMAL.replace("synthetic:Qwen2-1.5B", "~/no-such-model-here"), ["model path ~/no-such-model-here not found"]),
    ],
)
def test_limits_name_key_and_range(text: str, needles: list[str]) -> None:
    with pytest.raises(config.ConfigError) as exc:
        config.parse(text, "configs/bad.toml")
    for needle in [*needles, "configs/bad.toml: "]:
        assert needle in str(exc.value)


def test_every_numeric_key_has_a_finite_range() -> None:
    """Each int or float key's check refuses a value beyond any range this tool could use."""
    for section, (_, keys) in config.SECTIONS.items():
        for name, key in keys.items():
            if key.types in (int, (int, float)):
                assert key.check is not None, f"{section}.{name}"
                assert not key.check(2**64) and not key.check(-(2**64)), f"{section}.{name}"


def test_names_and_models_that_are_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    text = 'name = "my-run_2.b"\n' + MINIMAL.replace('"synthetic:Qwen2-1.5B"', '"Qwen/Qwen2-1.5B", "ckpt", "gpt2"')
    sweep = config.parse(text, "x.toml")
    assert sweep.name == "my-run_2.b"
    assert {c.model for c in sweep.configs} == {"Qwen/Qwen2-1.5B", "ckpt", "gpt2"}


def test_simulated_machine_refuses_a_gpu_it_lacks(tmp_path: Path) -> None:
    from wattscope.session import Session
    from wattscope.telemetry.gpu_map import GpuMapError

    sweep = config.parse("[run]\ngpus = [0, 8]\n" + MINIMAL, "g.toml")
    out = tmp_path / "r.wattscope"
    with pytest.raises(GpuMapError, match=r"^g.toml: 'run.gpus': GPU 8 does not exist: this process sees 8 GPU\(s\), "
                                          r"CUDA ordinals 0..7$"):
        Session(sweep, out, sim=True).start()
    assert not out.exists()


def _guarded(sweep: config.Sweep, card_mib: float | None):
    from wattscope.bench.runner import memory_guard

    built: list[str] = []

    def build(rc: config.RunConfig, info: dict) -> object:
        built.append(rc.config_id)
        return object()

    return memory_guard(sweep, build, card_mib), built


def test_memory_guard_fails_a_row_that_cannot_fit_before_loading() -> None:
    from wattscope.architectures import ARCHITECTURES, memory_bytes
    from wattscope.bench.workload import WorkloadError

    text = "[protocol]\nprompt_tokens = 2000\ndecode_steps = 32\n" + MINIMAL.replace(
        "Qwen2-1.5B", "Yi-1.5-6B").replace("[1]", "[64]").replace('["fp16", "nf4"]', '["fp16", "int8", "nf4"]')
    sweep = config.parse(text, "m.toml")
    cfg = ARCHITECTURES["Yi-1.5-6B"]
    sizes = {c.precision: sum(memory_bytes(cfg, c.precision, 64, 2032)) for c in sweep.configs}
    # Yi-1.5-6B FP16: ~11 GiB of weights; its KV cache is 32 layers x 4 heads x 128 x 2 x 2 bytes per token.
    weights, kv = memory_bytes(cfg, "fp16", 64, 2032)
    assert kv == 2 * 32 * 4 * 128 * 2 * 64 * 2032
    assert 10.5 * 2**30 < weights < 12 * 2**30
    assert sizes["nf4"] < sizes["int8"] < sizes["fp16"]
    # A card that holds FP16 and INT8 together but not NF4 beside them.
    card_mib = (sizes["fp16"] + sizes["int8"] + sizes["nf4"] // 2) / 2**20
    build, built = _guarded(sweep, card_mib)
    fp16, int8, nf4 = sweep.configs
    build(fp16, {})
    build(int8, {})
    with pytest.raises(WorkloadError, match=r"does not fit the card: .* GiB of nf4 weights \+ .* GiB of KV cache "
                                            r"\(batch 64 x 2032 tokens\) beside .* GiB of the group's other rows > .* GiB"):
        build(nf4, {})
    assert built == [fp16.config_id, int8.config_id]
    # No card size known (NVML unavailable): no check.
    build, built = _guarded(sweep, None)
    build(nf4, {})
    assert built == [nf4.config_id]


def test_memory_guard_positions_and_unknown_architectures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wattscope.bench.workload import WorkloadError

    text = "[protocol]\nprompt_tokens = 4096\ndecode_steps = 32\n" + MINIMAL.replace("Qwen2-1.5B", "Yi-1.5-6B")
    build, built = _guarded(config.parse(text, "p.toml"), 81559.0)
    with pytest.raises(WorkloadError, match="prompt_tokens \\+ decode_steps = 4128 exceed Yi-1.5-6B's 4096 positions"):
        build(config.parse(text, "p.toml").configs[0], {})
    # A hub id's architecture is not known offline: built without a check.
    hub = config.parse(MINIMAL.replace("synthetic:Qwen2-1.5B", "Qwen/Qwen2-1.5B").replace("[1]", "[4096]"), "h.toml")
    build, built = _guarded(hub, 1.0)
    build(hub.configs[0], {})
    assert built == [hub.configs[0].config_id]


def test_a_row_too_big_for_the_simulated_card_fails_with_its_reason() -> None:
    """The runner's own path on the simulated GPU: the row fails before loading, the
    sweep goes on and ends."""
    from wattscope.bench.runner import run_sweep
    from wattscope.events import ConfigFinished
    from wattscope.telemetry import SensorSpec, open_sensor
    from wattscope.telemetry.sim import SimGPU, SimSpec

    text = "[protocol]\nprompt_tokens = 4000\n" + MINIMAL.replace("Qwen2-1.5B", "Yi-1.5-6B").replace("[1]", "[4096]")
    sweep = config.parse(text, "big.toml").for_simulation()
    events: list = []
    with SimGPU.create(SimSpec(refresh_s=0.002)) as gpu:
        sensor = open_sensor(SensorSpec.simulated(gpu))
        try:
            assert run_sweep(sweep, sensor, events.append, sim=True) is True
        finally:
            sensor.close()
    finished = [e for e in events if isinstance(e, ConfigFinished)]
    assert [f.ok for f in finished] == [False, False]
    assert all("does not fit the card" in f.reason and "batch 4096 x 4032 tokens" in f.reason for f in finished)
