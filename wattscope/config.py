"""TOML sweep files -> a validated Sweep.

Every error names the file, the key and what is allowed, and is raised before anything
is started or written, so a bad config never leaves a half-made recording behind.
"""

from __future__ import annotations

import math
import random
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

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
    min_rounds: int = 8  # fewer lets the stopping rule under-cover (bench.protocol.rounds_enough)
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
        one model, batch and engine; the configuration id without its precision."""
        if self.config_id:
            return self.config_id.rsplit("/", 1)[0]
        return group_id(self.model_label, self.batch, self.engine)

    @property
    def synthetic(self) -> bool:
        return self.model.startswith("synthetic:")

    @property
    def model_label(self) -> str:
        """The model's short name (``short_model_name``); where two models of a table share
        one, ``model_labels`` gives their full ids instead."""
        return short_model_name(self.model)


def short_model_name(model: str) -> str:
    """Short display name: 'synthetic:Qwen2-1.5B' -> 'Qwen2-1.5B', 'Qwen/Qwen2-1.5B' ->
    'Qwen2-1.5B', a path -> its last part."""
    name = model.removeprefix("synthetic:").rstrip("/")
    name = name.rsplit("/", 1)[-1]
    return name.removesuffix(".json") or model


def model_labels(models: Iterable[str]) -> dict[str, str]:
    """Each model id -> how a table of these models names it: its short name where no
    other id has the same one, else the full id ('synthetic:Qwen2-1.5B' and
    'Qwen/Qwen2-1.5B' are two models and stay two names). Keys are always full ids."""
    ids = list(dict.fromkeys(models))
    count: dict[str, int] = {}
    for m in ids:
        count[short_model_name(m)] = count.get(short_model_name(m), 0) + 1
    return {m: short_model_name(m) if count[short_model_name(m)] == 1 else m for m in ids}


def group_id(label: str, batch: int, engine: str) -> str:
    """A group's id from its model's label: 'Qwen2-1.5B/b8', with the engine where it is
    not the default."""
    gid = f"{label}/b{batch}"
    return gid if engine == "eager" else f"{gid}/{engine}"


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


class Key(NamedTuple):
    """One config key: the types it takes, what is allowed (said in errors, the README and
    ``wattscope init``), the check (None: any value of the type) and what it means."""

    types: type | tuple[type, ...]
    allowed: str
    check: Callable[[Any], bool] | None
    meaning: str


def _between(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: lo <= v <= hi


def _above(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: lo < v <= hi


def _cpu(v: Any) -> bool:
    return v in CPU_CHOICES or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_CPU)


# Upper limits that keep a typo from asking for hours of work or all of a host's memory;
# each is far above what a card of today holds for the models measured here.
MAX_PROMPT_TOKENS = 131072
MAX_DECODE_STEPS = 65536
MAX_BATCH = 4096
MAX_GPU = 255
MAX_CPU = 4095
MAX_SEED = 2**63 - 1
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"

_PROTOCOL_KEYS: dict[str, Key] = {
    "prompt_tokens": Key(int, f"an integer from 1 to {MAX_PROMPT_TOKENS}", _between(1, MAX_PROMPT_TOKENS),
                         "tokens in each prompt of a prefill call"),
    "decode_steps": Key(int, f"an integer from 1 to {MAX_DECODE_STEPS}", _between(1, MAX_DECODE_STEPS),
                        "tokens generated by one decode call (its figures are per this many steps)"),
    "warmup_calls": Key(int, "an integer from 0 to 1000", _between(0, 1000),
                        "untimed calls of each precision and phase before any window"),
    "min_window_s": Key((int, float), "a number of seconds > 0 and <= 600", _above(0, 600),
                        "shortest measured window; calls are repeated until it is filled"),
    "min_calls": Key(int, "an integer from 1 to 100000", _between(1, 100000),
                     "fewest calls in a prefill window"),
    "max_warmup_rounds": Key(int, "an integer from 2 to 100 (steadiness needs two rounds to agree)", _between(2, 100),
                             "warm-up rounds run until two in a row agree in power, at most this many"),
    "steady_tolerance": Key((int, float), "a fraction > 0 and < 1, e.g. 0.03", lambda v: 0 < v < 1,
                            "how closely two warm-up rounds' average powers must agree"),
    "min_rounds": Key(int, "an integer from 2 to 10000 (an interval needs two rounds)", _between(2, 10000),
                      "measured rounds that always run before the intervals are checked (simulated, at per-round CVs of 4-8%: 3 let the stopped 95% intervals cover 91%, 8 cover 94-95%)"),
    "max_rounds": Key(int, "an integer from 2 to 10000, >= min_rounds", _between(2, 10000),
                      "measured rounds at most"),
    "ci_target": Key((int, float), "a fraction > 0 and < 1, e.g. 0.03 for +-3%", lambda v: 0 < v < 1,
                     "rounds stop once every ratio's 95% interval is within this fraction of its value"),
    "max_row_s": Key((int, float), "a number of seconds > 0 and <= 86400, at least one round", _above(0, 86400),
                     "measured-round budget of each model x batch group"),
    "engine": Key(str, "one of " + ", ".join(ENGINES), lambda v: v in ENGINES,
                  "engine: eager (transformers loop) or graphs (static caches; prefill and each decode step replayed from CUDA graphs)"),
    "cooldown_s": Key((int, float), "a number of seconds from 0 to 3600", _between(0, 3600),
                      "pause after each group"),
    "idle_s": Key((int, float), "a number of seconds > 0 and <= 3600", _above(0, 3600),
                  "idle baseline of each group, models loaded"),
    "precision_order": Key(str, "one of " + ", ".join(PRECISION_ORDERS), lambda v: v in PRECISION_ORDERS,
                           "the order a group's precisions are loaded in"),
    "seed": Key(int, "an integer from 0 to 2^63 - 1", _between(0, MAX_SEED),
                "seeds prompt token ids, precision orders and round shuffles"),
}
_SAMPLER_KEYS: dict[str, Key] = {
    "rate_hz": Key((int, float), "a rate in Hz from 1 to 1000", _between(1, 1000),
                   "instant-power samples per second (traces, live graph, cross-check)"),
    "energy_hz": Key((int, float), "a rate in Hz from 0.1 to 100", _between(0.1, 100),
                     "energy-counter reads per second for the traces (windows read it at their edges)"),
}
_BNB_KEYS: dict[str, Key] = {
    "llm_int8_threshold": Key((int, float), "a number from 0 to 1000 (0.0 is pure INT8; transformers' default is 6.0)",
                              _between(0, 1000), "INT8 outlier threshold: larger activations run in FP16"),
    "nf4_compute_dtype": Key(str, "one of " + ", ".join(NF4_COMPUTE_DTYPES), lambda v: v in NF4_COMPUTE_DTYPES,
                             "dtype NF4 weights are dequantised to for the matmuls"),
    "nf4_double_quant": Key(bool, "true or false", None, "quantise NF4's scaling constants too"),
}
_SIM_KEYS: dict[str, Key] = {
    "refresh_s": Key((int, float), "a number of seconds from 0.001 to 0.5", _between(0.001, 0.5),
                     "the simulated sensor's and counter's refresh period"),
    "min_window_s": Key((int, float), "a number of seconds > 0 and <= 60", _above(0, 60),
                        "protocol.min_window_s under --sim"),
    "max_row_s": Key((int, float), "a number of seconds > 0 and <= 3600", _above(0, 3600),
                     "protocol.max_row_s under --sim (raised to one round if shorter)"),
    "cooldown_s": Key((int, float), "a number of seconds from 0 to 60", _between(0, 60),
                      "protocol.cooldown_s under --sim"),
    "idle_s": Key((int, float), "a number of seconds > 0 and <= 60", _above(0, 60),
                  "protocol.idle_s under --sim"),
    "seed": Key(int, "an integer from 0 to 2^63 - 1", _between(0, MAX_SEED),
                "seeds the simulated GPU's noise and call times"),
}
_HOST_KEYS: dict[str, Key] = {
    "runner_cpu": Key((str, int), f'"auto", "off" or a CPU core number from 0 to {MAX_CPU}', _cpu,
                      "core of the process that runs the model (auto: a dedicated one if there are enough)"),
    "sampler_cpu": Key((str, int), f'"auto", "off" or a CPU core number from 0 to {MAX_CPU}', _cpu,
                       "core of the sampler process"),
}
_RUN_KEYS: dict[str, Key] = {
    "gpus": Key(list, f"a non-empty list of distinct CUDA ordinals from 0 to {MAX_GPU} (as CUDA_VISIBLE_DEVICES numbers them)",
                lambda v: 0 < len(v) == len(set(v)) and all(
                    isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_GPU for i in v),
                "GPUs the model runs on (split over several) and whose energy counters are read"),
}
MATRIX: dict[str, Key] = {
    "models": Key(list, "a non-empty list of Hugging Face ids, local paths or synthetic:NAME", None,
                  "models of this block; synthetic: builds a published architecture with random weights"),
    "batches": Key(list, f"a non-empty list of integers from 1 to {MAX_BATCH}", None, "batch sizes"),
    "precisions": Key(list, "a non-empty list of " + ", ".join(PRECISIONS), None,
                      "precisions; ratios divide by fp16 of the same model, batch and engine"),
    "engine": Key(str, "one of " + ", ".join(ENGINES), None, "this block's engine (default protocol.engine)"),
}
# Section -> (the dataclass whose defaults it sets, its keys), in the order a config
# lists them; the README's reference and ``wattscope init`` are generated from it.
SECTIONS: dict[str, tuple[type, dict[str, Key]]] = {
    "run": (Run, _RUN_KEYS),
    "protocol": (Protocol, _PROTOCOL_KEYS),
    "sampler": (Sampler, _SAMPLER_KEYS),
    "bitsandbytes": (BitsAndBytes, _BNB_KEYS),
    "host": (Host, _HOST_KEYS),
    "sim": (Sim, _SIM_KEYS),
}


def _valid_name(v: str) -> bool:
    return re.fullmatch(NAME_PATTERN, v) is not None


def _name_from(stem: str) -> str:
    """The default name, from the config file's name: what a name may not hold becomes
    '-' (a file "my sweep.toml" is named "my-sweep"; text given as "<string>", "string")."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:64]
    return name if name and _valid_name(name) else "sweep"


NAME_KEY = Key(str, "a name of letters, digits, '.', '_' or '-' (up to 64, no path)", _valid_name,
               "names the default recording, recordings/NAME-DATE.wattscope (default: the file's name)")
_MATRIX_KEYS = tuple(MATRIX)
_MATRIX_REQUIRED = ("models", "batches", "precisions")
_TOP_KEYS = ("name", "protocol", "sampler", "bitsandbytes", "sim", "host", "run", "matrix")


# Keys of earlier protocols, with what replaced them.
_REPLACED = {
    "protocol.repeats": "min_rounds (measured rounds now continue until ci_target is met)",
    "protocol.max_warmup_windows": "max_warmup_rounds (at least 2: steadiness needs two rounds to agree)",
    "sampler.gpus": "run.gpus (CUDA ordinals as your process sees them; the sampler reads exactly those GPUs)",
}


def _table(path: str, where: str, value: Any, keys: dict[str, Key]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{where}] must be a table")
    out: dict[str, Any] = {}
    for key, v in value.items():
        if f"{where}.{key}" in _REPLACED:
            raise ConfigError(f"{path}: '{where}.{key}' is no longer a key; use {_REPLACED[f'{where}.{key}']}")
        if key not in keys:
            raise ConfigError(f"{path}: unknown key '{where}.{key}'; allowed: {', '.join(keys)}")
        types, allowed, check, _ = keys[key]
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


# What the Hugging Face hub accepts as a model id: 'name' or 'owner/name'.
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")


def _check_model(path: str, key: str, model: str, base: Path) -> None:
    """Synthetic names must be known or point at a config.json. Other names are local
    paths, which must exist (relative ones are taken from the current folder, as the
    runner loads them), or hub ids, which cannot be checked offline. The same check
    holds with --sim, where no model is loaded."""
    if not model.startswith("synthetic:"):
        local = Path(model).expanduser()
        if local.exists() or (_HUB_ID.fullmatch(model) and ".." not in model and not model.startswith(".")):
            return
        raise ConfigError(f"{path}: '{key}': model path {model} not found, and it is not a Hugging Face id (owner/name)")
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


def document(text: str, path: str, top_keys: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    """A config file's TOML with only ``top_keys`` at its top, and its name: the ``name``
    key, or one made from the file's name. Shared by sweep and serve-bench configs."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for key in data:
        if key not in top_keys:
            raise ConfigError(f"{path}: unknown key '{key}'; allowed: {', '.join(top_keys)}")
    name = data.get("name", _name_from(Path(path).stem))
    # The name becomes a file name under recordings/: a path in it would write elsewhere.
    if not isinstance(name, str) or not _valid_name(name):
        raise ConfigError(f"{path}: 'name' = {name!r} is not allowed; expected {NAME_KEY.allowed}")
    return data, name


def parse(text: str, path: str = "<string>") -> Sweep:
    data, name = document(text, path, _TOP_KEYS)
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
    seen: set[tuple[str, int, str, str]] = set()
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
            isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= MAX_BATCH for b in batches
        ):
            raise ConfigError(f"{path}: '{where}.batches' = {batches!r} is not allowed; expected {MATRIX['batches'].allowed}")
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
                    # Keyed by the full model id: two models with one short name are two.
                    ident = (model, batch, engine, precision)
                    if ident in seen:
                        raise ConfigError(f"{path}: '{where}' repeats the configuration {rc.group}/{precision}")
                    seen.add(ident)
                    configs.append(rc)
    labels = model_labels(c.model for c in configs)
    configs = [replace(c, config_id=f"{group_id(labels[c.model], c.batch, c.engine)}/{c.precision}") for c in configs]
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


def read(path: str | Path) -> str:
    """A config file's text; a missing or unreadable one is a ConfigError naming it."""
    p = Path(path)
    try:
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read config: {e}") from None


def load(path: str | Path) -> Sweep:
    return parse(read(path), str(path))
