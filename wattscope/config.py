"""TOML sweep files -> a validated Sweep.

Every error names the file, the key and what is allowed, and is raised before anything
is started or written, so a bad config never leaves a half-made recording behind.
"""

from __future__ import annotations

import math
import random
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from wattscope.architectures import ARCHITECTURES
from wattscope.errors import WattscopeError

# The precisions a sweep may ask for, in the order every table lists them; the ratios
# divide by the baseline's row; the quantised ones load through bitsandbytes.
PRECISIONS = ("fp16", "bf16", "int8", "nf4")
BASELINE_PRECISION = "fp16"
QUANTISED = ("int8", "nf4")
PRECISION_ORDERS = ("fp16-first", "as-listed", "random")
# Decode engines: "eager" is the transformers forward loop with a dynamic KV cache (the
# seed study's stack); "graphs" a static KV cache with each decode step replayed from a
# captured CUDA graph, which takes the host's kernel launches out of the measured time.
ENGINES = ("eager", "graphs")
# A host CPU for a child process: "auto" picks a dedicated core when the machine has
# enough of them, "off" leaves the process free to move, an integer names the core.
CPU_CHOICES = ("auto", "off")
NF4_COMPUTE_DTYPES = ("float16", "bfloat16", "float32")


class ConfigError(WattscopeError, ValueError):
    """A config problem, phrased for the user: file, key, what is allowed."""


@dataclass(frozen=True)
class Protocol:
    prompt_tokens: int = 128
    decode_steps: int = 32
    warmup_calls: int = 3  # untimed calls of each precision and phase before any window
    min_window_s: float = 2.0
    min_calls: int = 5  # a prefill window holds at least this many calls
    # Rounds: every precision of a model and batch, both phases, one window each, in an
    # order shuffled per round. Warm-up rounds run until two consecutive ones agree in
    # average power within steady_tolerance (at most max_warmup_rounds); then measured
    # rounds run until every ratio's 95% interval is within ci_target of its value, at
    # least min_rounds and at most max_rounds, or until max_row_s has passed.
    max_warmup_rounds: int = 4
    steady_tolerance: float = 0.03
    min_rounds: int = 3
    max_rounds: int = 100
    ci_target: float = 0.03
    max_row_s: float = 240.0
    engine: str = "eager"
    cooldown_s: float = 3.0
    idle_s: float = 5.0  # idle baseline of each model and batch, models loaded
    precision_order: str = "fp16-first"  # the order precisions are loaded in
    seed: int = 0  # prompt token ids, precision orders and round shuffles


@dataclass(frozen=True)
class Host:
    """Host isolation of the measured processes (recorded in the meta)."""

    runner_cpu: int | str = "auto"
    sampler_cpu: int | str = "auto"


@dataclass(frozen=True)
class Sampler:
    rate_hz: float = 100.0
    # The counter costs ~3 ms of sampler CPU a read on an H100; phase windows read it at
    # their own edges, so the sampler's reads only feed traces.
    energy_hz: float = 2.0


@dataclass(frozen=True)
class Run:
    """What the run measures: the GPUs the model runs on, as CUDA ordinals of the user's
    process (after CUDA_VISIBLE_DEVICES; ``telemetry.gpu_map`` binds them to NVML)."""

    gpus: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class BitsAndBytes:
    llm_int8_threshold: float = 6.0  # transformers' default
    nf4_compute_dtype: str = "float16"
    nf4_double_quant: bool = False


@dataclass(frozen=True)
class Sim:
    """Timing used instead of the protocol's when the GPU is simulated, so a whole
    sweep takes seconds. Only a demo and test aid: the numbers are not measurements."""

    min_window_s: float = 0.12
    max_row_s: float = 2.0
    cooldown_s: float = 0.05
    idle_s: float = 0.3
    seed: int = 0
    # The simulated sensor and counter refresh period. Windows are 0.15 s here, so the
    # H100's 100 ms would make every window one or two counter steps long.
    refresh_s: float = 0.01


@dataclass(frozen=True)
class RunConfig:
    """One row of the sweep."""

    config_id: str
    model: str
    batch: int
    precision: str
    engine: str = "eager"

    @property
    def group(self) -> str:
        """The rows measured together in interleaved rounds and compared with each other:
        one model, batch and engine."""
        label = f"{self.model_label}/b{self.batch}"
        return label if self.engine == "eager" else f"{label}/{self.engine}"

    @property
    def synthetic(self) -> bool:
        return self.model.startswith("synthetic:")

    @property
    def model_label(self) -> str:
        """Short display name: 'synthetic:Qwen2-1.5B' -> 'Qwen2-1.5B', 'Qwen/Qwen2-1.5B' ->
        'Qwen2-1.5B', a path -> its last part."""
        name = self.model.removeprefix("synthetic:").rstrip("/")
        name = name.rsplit("/", 1)[-1]
        return name.removesuffix(".json")


@dataclass(frozen=True)
class Sweep:
    name: str
    source: str  # the file it came from
    text: str  # the file as given, kept in every recording
    protocol: Protocol
    sampler: Sampler
    bitsandbytes: BitsAndBytes
    sim: Sim
    configs: tuple[RunConfig, ...]
    host: Host = Host()
    run: Run = Run()

    def groups(self) -> list[list[RunConfig]]:
        """The configurations by group, in sweep order (a group's rows are consecutive)."""
        out: dict[str, list[RunConfig]] = {}
        for c in self.configs:
            out.setdefault(c.group, []).append(c)
        return list(out.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "text": self.text,
            "protocol": asdict(self.protocol),
            "sampler": asdict(self.sampler),
            "bitsandbytes": asdict(self.bitsandbytes),
            "sim": asdict(self.sim),
            "host": asdict(self.host),
            "configs": [asdict(c) for c in self.configs],
            "run": asdict(self.run),
        }

    def for_simulation(self) -> Sweep:
        """The same sweep with the simulated-GPU timing."""
        p = replace(
            self.protocol,
            min_window_s=self.sim.min_window_s,
            max_row_s=max(self.sim.max_row_s, 2 * max(len(g) for g in self.groups()) * self.sim.min_window_s),
            cooldown_s=self.sim.cooldown_s,
            idle_s=self.sim.idle_s,
        )
        return replace(self, protocol=p)


# key -> (type(s) allowed, description of what is allowed, check or None)
_Check = tuple[type | tuple[type, ...], str, Any]


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _between(lo: float, hi: float) -> Any:
    return lambda v: lo <= v <= hi


def _cpu(v: Any) -> bool:
    return v in CPU_CHOICES or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 4096)


_PROTOCOL_KEYS: dict[str, _Check] = {
    "prompt_tokens": (int, "an integer >= 1", _positive),
    "decode_steps": (int, "an integer >= 1", _positive),
    "warmup_calls": (int, "an integer from 0 to 1000", _between(0, 1000)),
    "min_window_s": ((int, float), "a number of seconds > 0 and <= 600", lambda v: 0 < v <= 600),
    "min_calls": (int, "an integer from 1 to 100000", _between(1, 100000)),
    "max_warmup_rounds": (int, "an integer from 2 to 100 (steadiness needs two rounds to agree)", _between(2, 100)),
    "steady_tolerance": ((int, float), "a fraction > 0 and < 1, e.g. 0.03", lambda v: 0 < v < 1),
    "min_rounds": (int, "an integer from 2 to 10000 (an interval needs two rounds)", _between(2, 10000)),
    "max_rounds": (int, "an integer from 2 to 10000", _between(2, 10000)),
    "ci_target": ((int, float), "a fraction > 0 and < 1, e.g. 0.03 for +-3%", lambda v: 0 < v < 1),
    "max_row_s": ((int, float), "a number of seconds > 0 and <= 86400", lambda v: 0 < v <= 86400),
    "engine": (str, "one of " + ", ".join(ENGINES), lambda v: v in ENGINES),
    "cooldown_s": ((int, float), "a number of seconds from 0 to 3600", _between(0, 3600)),
    "idle_s": ((int, float), "a number of seconds > 0 and <= 3600", lambda v: 0 < v <= 3600),
    "precision_order": (str, "one of " + ", ".join(PRECISION_ORDERS), lambda v: v in PRECISION_ORDERS),
    "seed": (int, "an integer", None),
}
_SAMPLER_KEYS: dict[str, _Check] = {
    "rate_hz": ((int, float), "a rate in Hz from 1 to 1000", lambda v: 1 <= v <= 1000),
    "energy_hz": ((int, float), "a rate in Hz from 0.1 to 100", lambda v: 0.1 <= v <= 100),
}
_BNB_KEYS: dict[str, _Check] = {
    "llm_int8_threshold": ((int, float), "a number >= 0 (0.0 is pure INT8; transformers' default is 6.0)", _non_negative),
    "nf4_compute_dtype": (str, "one of " + ", ".join(NF4_COMPUTE_DTYPES), lambda v: v in NF4_COMPUTE_DTYPES),
    "nf4_double_quant": (bool, "true or false", None),
}
_SIM_KEYS: dict[str, _Check] = {
    "refresh_s": ((int, float), "a number of seconds from 0.001 to 0.5", lambda v: 0.001 <= v <= 0.5),
    "min_window_s": ((int, float), "a number of seconds > 0 and <= 60", lambda v: 0 < v <= 60),
    "max_row_s": ((int, float), "a number of seconds > 0 and <= 3600", lambda v: 0 < v <= 3600),
    "cooldown_s": ((int, float), "a number of seconds from 0 to 60", _between(0, 60)),
    "idle_s": ((int, float), "a number of seconds > 0 and <= 60", lambda v: 0 < v <= 60),
    "seed": (int, "an integer", None),
}
_HOST_KEYS: dict[str, _Check] = {
    "runner_cpu": ((str, int), '"auto", "off" or a CPU core number', _cpu),
    "sampler_cpu": ((str, int), '"auto", "off" or a CPU core number', _cpu),
}
_MATRIX_KEYS = ("models", "batches", "precisions", "engine")
_MATRIX_REQUIRED = ("models", "batches", "precisions")
_RUN_KEYS: dict[str, _Check] = {
    "gpus": (list, "a non-empty list of distinct CUDA ordinals >= 0 (as CUDA_VISIBLE_DEVICES numbers them)",
             lambda v: bool(v) and len(set(v)) == len(v)
             and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in v)),
}
_TOP_KEYS = ("name", "protocol", "sampler", "bitsandbytes", "sim", "host", "run", "matrix")


# Keys of earlier protocols, with what replaced them.
_REPLACED = {
    "protocol.repeats": "min_rounds (measured rounds now continue until ci_target is met)",
    "protocol.max_warmup_windows": "max_warmup_rounds (at least 2: steadiness needs two rounds to agree)",
    "sampler.gpus": "run.gpus (CUDA ordinals as your process sees them; the sampler reads exactly those GPUs)",
}


def _table(path: str, where: str, value: Any, keys: dict[str, _Check]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{where}] must be a table")
    out: dict[str, Any] = {}
    for key, v in value.items():
        if f"{where}.{key}" in _REPLACED:
            raise ConfigError(f"{path}: '{where}.{key}' is no longer a key; use {_REPLACED[f'{where}.{key}']}")
        if key not in keys:
            raise ConfigError(f"{path}: unknown key '{where}.{key}'; allowed: {', '.join(keys)}")
        types, allowed, check = keys[key]
        ok_type = isinstance(v, types) and not (isinstance(v, bool) and types is not bool)
        if ok_type and isinstance(v, float) and not math.isfinite(v):
            ok_type = False
        if not ok_type or (check is not None and not check(v)):
            raise ConfigError(f"{path}: '{where}.{key}' = {v!r} is not allowed; expected {allowed}")
        out[key] = float(v) if types == (int, float) else v
    return out


def _string_list(path: str, key: str, v: Any) -> list[str]:
    if not isinstance(v, list) or not v or not all(isinstance(s, str) and s for s in v):
        raise ConfigError(f"{path}: '{key}' = {v!r} is not allowed; expected a non-empty list of strings")
    return v


def _check_model(path: str, key: str, model: str, base: Path) -> None:
    """Synthetic names must be known or point at a config.json; other names are hub ids
    or local paths and are resolved by the runner (a hub id cannot be checked offline)."""
    if not model.startswith("synthetic:"):
        return
    name = model.removeprefix("synthetic:")
    if name in ARCHITECTURES:
        return
    if name.endswith(".json"):
        p = Path(name) if Path(name).is_absolute() else base / name
        if p.is_file():
            return
        raise ConfigError(f"{path}: '{key}': synthetic config file {name} not found (looked at {p})")
    raise ConfigError(
        f"{path}: '{key}': unknown synthetic model '{name}'; allowed: "
        + ", ".join(ARCHITECTURES)
        + ", or synthetic:path/to/config.json"
    )


def _order(precisions: list[str], order: str, rng: random.Random) -> list[str]:
    if order == "fp16-first":
        return sorted(precisions, key=lambda p: p != BASELINE_PRECISION)
    if order == "random":
        shuffled = list(precisions)
        rng.shuffle(shuffled)
        return shuffled
    return list(precisions)


def parse(text: str, path: str = "<string>") -> Sweep:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for key in data:
        if key not in _TOP_KEYS:
            raise ConfigError(f"{path}: unknown key '{key}'; allowed: {', '.join(_TOP_KEYS)}")
    name = data.get("name", Path(path).stem)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: 'name' = {name!r} is not allowed; expected a non-empty string")
    protocol = Protocol(**_table(path, "protocol", data.get("protocol", {}), _PROTOCOL_KEYS))
    sampler = Sampler(**_table(path, "sampler", data.get("sampler", {}), _SAMPLER_KEYS))
    run_d = _table(path, "run", data.get("run", {}), _RUN_KEYS)
    run = Run(**{k: tuple(v) for k, v in run_d.items()})
    bnb = BitsAndBytes(**_table(path, "bitsandbytes", data.get("bitsandbytes", {}), _BNB_KEYS))
    sim = Sim(**_table(path, "sim", data.get("sim", {}), _SIM_KEYS))
    host = Host(**_table(path, "host", data.get("host", {}), _HOST_KEYS))
    if protocol.max_rounds < protocol.min_rounds:
        raise ConfigError(
            f"{path}: 'protocol.max_rounds' = {protocol.max_rounds} is not allowed; expected an integer >= "
            f"protocol.min_rounds ({protocol.min_rounds})"
        )

    matrix = data.get("matrix")
    if not isinstance(matrix, list) or not matrix:
        raise ConfigError(
            f"{path}: 'matrix' is missing; expected at least one [[matrix]] table with keys "
            + ", ".join(_MATRIX_KEYS)
        )
    base = Path(path).parent
    rng = random.Random(protocol.seed)
    configs: list[RunConfig] = []
    seen: set[str] = set()
    for i, m in enumerate(matrix):
        where = f"matrix[{i}]"
        if not isinstance(m, dict):
            raise ConfigError(f"{path}: '{where}' must be a table")
        for key in m:
            if key not in _MATRIX_KEYS:
                raise ConfigError(f"{path}: unknown key '{where}.{key}'; allowed: {', '.join(_MATRIX_KEYS)}")
        for key in _MATRIX_REQUIRED:
            if key not in m:
                raise ConfigError(f"{path}: '{where}.{key}' is missing")
        models = _string_list(path, f"{where}.models", m["models"])
        for model in models:
            _check_model(path, f"{where}.models", model, base)
        batches = m["batches"]
        if not isinstance(batches, list) or not batches or not all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in batches
        ):
            raise ConfigError(f"{path}: '{where}.batches' = {batches!r} is not allowed; expected a non-empty list of integers >= 1")
        precisions = _string_list(path, f"{where}.precisions", m["precisions"])
        for p in precisions:
            if p not in PRECISIONS:
                raise ConfigError(
                    f"{path}: '{where}.precisions' has {p!r}; allowed: {', '.join(PRECISIONS)}"
                )
        engine = m.get("engine", protocol.engine)
        if engine not in ENGINES:
            raise ConfigError(f"{path}: '{where}.engine' = {engine!r} is not allowed; expected one of {', '.join(ENGINES)}")
        for model in models:
            for batch in batches:
                for precision in _order(precisions, protocol.precision_order, rng):
                    rc = RunConfig("", model, batch, precision, engine)
                    cid = f"{rc.group}/{precision}"
                    if cid in seen:
                        raise ConfigError(f"{path}: '{where}' repeats the configuration {cid}")
                    seen.add(cid)
                    configs.append(replace(rc, config_id=cid))
    sweep = Sweep(name, path, text, protocol, sampler, bnb, sim, tuple(configs), host, run)
    _check_budget(path, sweep)
    return sweep


def _check_budget(path: str, sweep: Sweep) -> None:
    """A row's budget must hold at least one round of its largest group: every precision,
    both phases, one window of min_window_s each."""
    p = sweep.protocol
    widest = max(sweep.groups(), key=len)
    one_round = 2 * len(widest) * p.min_window_s
    if p.max_row_s < one_round:
        raise ConfigError(
            f"{path}: 'protocol.max_row_s' = {p.max_row_s:g} is too short for one round of {widest[0].group} "
            f"({len(widest)} precisions x 2 phases x min_window_s {p.min_window_s:g} s = {one_round:g} s); "
            f"expected a number of seconds >= {one_round:g}"
        )


def load(path: str | Path) -> Sweep:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read config: {e}") from None
    return parse(text, str(p))
