"""TOML serving-load files -> a validated ServeBench.

The same rules as sweep configs (``wattscope.config``): every error names the file, the
key and what is allowed, and is raised before anything starts or is written.

    name = "serve-demo"
    [serve]
    engine = "http"                  # http | sim | transformers
    url = "http://127.0.0.1:8000"    # http: the OpenAI-compatible server
    command = ["vllm", "serve", "Qwen/Qwen2.5-3B"]   # http, optional: started and stopped
    model = "Qwen/Qwen2.5-3B"        # sent in each request / loaded in-process
    precisions = ["fp16"]
    rates = [1.0, 4.0, 8.0]          # offered requests per second, open-loop Poisson
    duration_s = 60                  # arrivals per rate
    prompt_tokens = { dist = "uniform", min = 128, max = 512 }
    output_tokens = { dist = "fixed", value = 128 }
    [sampler]                        # as in sweeps; energy_hz defaults to 10 here
    [sim]                            # the simulated engine's known costs
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wattscope.config import (
    _BNB_KEYS,
    _RUN_KEYS,
    _SAMPLER_KEYS,
    PRECISIONS,
    BitsAndBytes,
    ConfigError,
    Key,
    Run,
    _check_model,
    _table,
    document,
    read,
)

ENGINES = ("http", "sim", "transformers")
DISTRIBUTIONS = ("fixed", "uniform", "lognormal")
_DIST_KEYS = {
    "fixed": ("value",),
    "uniform": ("min", "max"),
    "lognormal": ("median", "sigma", "max"),
}


@dataclass(frozen=True)
class Lengths:
    """A token-length distribution: fixed ``value``; uniform integers in [min, max];
    lognormal with ``median`` and ``sigma`` (of the log), cut at ``max``."""

    dist: str = "fixed"
    value: int = 128
    min: int = 1
    max: int = 1
    median: float = 1.0
    sigma: float = 0.0

    def draw(self, rng: random.Random) -> int:
        if self.dist == "fixed":
            return self.value
        if self.dist == "uniform":
            return rng.randint(self.min, self.max)
        return max(1, min(self.max, round(self.median * rng.lognormvariate(0.0, self.sigma))))

    @property
    def longest(self) -> int:
        """The most tokens a draw can give."""
        return self.value if self.dist == "fixed" else self.max


@dataclass(frozen=True)
class SimEngine:
    """The simulated engine's known costs: energy above idle per prefill and per decode
    token and per step, and step timing (a step lasts step_s + prefill_s_per_token *
    prefill tokens + decode_s_per_seq * decoding sequences). ``refresh_s`` is the simulated
    counter's."""

    prefill_j_per_token: float = 0.02
    decode_j_per_token: float = 0.2
    step_j: float = 0.0
    step_s: float = 0.01
    prefill_s_per_token: float = 2e-5
    decode_s_per_seq: float = 2e-4
    refresh_s: float = 0.01
    seed: int = 0


@dataclass(frozen=True)
class Serve:
    engine: str = "http"
    url: str = "http://127.0.0.1:8000"
    command: tuple[str, ...] = ()
    model: str = "model"
    precisions: tuple[str, ...] = ("fp16",)
    rates: tuple[float, ...] = (1.0,)
    duration_s: float = 60.0
    idle_s: float = 10.0
    drain_s: float = 60.0  # longest wait for requests in flight after the arrivals stop
    request_timeout_s: float = 120.0  # a stream silent this long has failed
    startup_timeout_s: float = 600.0
    seed: int = 0
    min_interval_s: float = 0.5  # attribution intervals last at least this long
    max_batch: int = 32  # in-process engines: sequences decoded together at most
    prompt_tokens: Lengths = field(default_factory=lambda: Lengths("fixed", value=256))
    output_tokens: Lengths = field(default_factory=lambda: Lengths("fixed", value=128))


@dataclass(frozen=True)
class ServeSampler:
    rate_hz: float = 100.0
    energy_hz: float = 10.0  # the attribution's intervals sit on these readings


@dataclass(frozen=True)
class ServeBench:
    name: str
    source: str
    text: str
    serve: Serve
    sampler: ServeSampler
    sim: SimEngine
    bitsandbytes: BitsAndBytes = BitsAndBytes()
    run: Run = Run()  # the GPU, as in sweeps: a CUDA ordinal bound to its NVML card

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "text": self.text,
            "serve": asdict(self.serve),
            "sampler": asdict(self.sampler),
            "run": asdict(self.run),
            "sim": asdict(self.sim),
            "bitsandbytes": asdict(self.bitsandbytes),
        }


def _seconds(lo: float, hi: float, meaning: str) -> Key:
    return Key((int, float), f"a number of seconds > {lo:g} and <= {hi:g}", lambda v: lo < v <= hi, meaning)


_SERVE_KEYS: dict[str, Key] = {
    "engine": Key(str, "one of " + ", ".join(ENGINES), lambda v: v in ENGINES,
                  "what serves the requests: an OpenAI-compatible server, transformers in-process, or the simulated engine"),
    "url": Key(str, "an http:// URL", lambda v: v.startswith("http://"), "the server's base URL (engine http)"),
    "command": Key(list, "a non-empty list of strings (the program and its arguments)",
                   lambda v: bool(v) and all(isinstance(s, str) and s for s in v),
                   "the server command started before and stopped after the run (engine http)"),
    "model": Key(str, "a non-empty string", bool, "the model the engine serves"),
    "precisions": Key(list, "a non-empty list of " + ", ".join(PRECISIONS),
                      lambda v: bool(v) and all(p in PRECISIONS for p in v) and len(set(v)) == len(v),
                      "precisions served, one after another"),
    "rates": Key(list, "a non-empty list of request rates per second > 0",
                 lambda v: bool(v) and all(isinstance(r, (int, float)) and not isinstance(r, bool) and r > 0
                                           and r < float("inf") for r in v),
                 "offered request rates (open-loop Poisson arrivals)"),
    "duration_s": _seconds(0, 86400, "arrivals last this long at each rate"),
    "idle_s": _seconds(0, 3600, "idle window of each precision, engine loaded"),
    "drain_s": _seconds(0, 3600, "longest wait for requests still in flight after the arrivals"),
    "request_timeout_s": _seconds(0, 3600, "a request without a token for this long fails"),
    "startup_timeout_s": _seconds(0, 7200, "longest wait for a started server to answer"),
    "seed": Key(int, "an integer", None, "seeds arrivals and lengths"),
    "min_interval_s": Key((int, float), "a number of seconds from 0.01 to 60", lambda v: 0.01 <= v <= 60,
                          "shortest counter interval the attribution fits"),
    "max_batch": Key(int, "an integer from 1 to 4096", lambda v: 1 <= v <= 4096,
                     "most sequences in one step of the simulated engine"),
    "prompt_tokens": Key(dict, "a table with dist = " + " | ".join(DISTRIBUTIONS), None, "prompt length distribution"),
    "output_tokens": Key(dict, "a table with dist = " + " | ".join(DISTRIBUTIONS), None, "output length distribution"),
}
_SIM_ENGINE_KEYS: dict[str, Key] = {
    "prefill_j_per_token": Key((int, float), "a number of joules > 0", lambda v: v > 0, "true energy above idle per prefill token"),
    "decode_j_per_token": Key((int, float), "a number of joules > 0", lambda v: v > 0, "true energy above idle per decode token"),
    "step_j": Key((int, float), "a number of joules >= 0", lambda v: v >= 0,
                  "true energy above idle per engine step, whatever its tokens"),
    "step_s": _seconds(0, 10, "fixed time of one engine step"),
    "prefill_s_per_token": Key((int, float), "a number of seconds from 0 to 1", lambda v: 0 <= v <= 1,
                               "step time per prefill token"),
    "decode_s_per_seq": Key((int, float), "a number of seconds from 0 to 1", lambda v: 0 <= v <= 1,
                            "step time per decoding sequence"),
    "refresh_s": Key((int, float), "a number of seconds from 0.001 to 0.5", lambda v: 0.001 <= v <= 0.5,
                     "the simulated counter's refresh period"),
    "seed": Key(int, "an integer", None, "seeds the simulated engine"),
}
_TOP_KEYS = ("name", "serve", "run", "sampler", "sim", "bitsandbytes")


def _lengths(path: str, where: str, value: dict[str, Any]) -> Lengths:
    dist = value.get("dist")
    if dist not in DISTRIBUTIONS:
        raise ConfigError(f"{path}: '{where}.dist' = {dist!r} is not allowed; expected one of {', '.join(DISTRIBUTIONS)}")
    allowed = _DIST_KEYS[dist]
    out: dict[str, Any] = {"dist": dist}
    for key, v in value.items():
        if key == "dist":
            continue
        if key not in allowed:
            raise ConfigError(f"{path}: unknown key '{where}.{key}' for dist {dist!r}; allowed: dist, {', '.join(allowed)}")
        if key == "sigma":
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 5
            what = "a number from 0 to 5"
        elif key == "median":
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and 1 <= v <= 1_000_000
            what = "a number of tokens from 1 to 1000000"
        else:
            ok = isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1_000_000
            what = "an integer number of tokens from 1 to 1000000"
        if not ok:
            raise ConfigError(f"{path}: '{where}.{key}' = {v!r} is not allowed; expected {what}")
        out[key] = v
    for key in allowed:
        if key not in out:
            raise ConfigError(f"{path}: '{where}.{key}' is missing (dist {dist!r} needs {', '.join(allowed)})")
    if dist == "uniform" and out["max"] < out["min"]:
        raise ConfigError(f"{path}: '{where}.max' = {out['max']} is not allowed; expected an integer >= {where}.min ({out['min']})")
    return Lengths(**out)


def parse(text: str, path: str = "<string>") -> ServeBench:
    data, name = document(text, path, _TOP_KEYS)
    if "serve" not in data:
        raise ConfigError(f"{path}: '[serve]' is missing; expected a table with keys {', '.join(_SERVE_KEYS)}")
    s = _table(path, "serve", data["serve"], _SERVE_KEYS)
    for key in ("prompt_tokens", "output_tokens"):
        if key in s:
            s[key] = _lengths(path, f"serve.{key}", s[key])
    for key in ("command", "precisions"):
        if key in s:
            s[key] = tuple(s[key])
    if "rates" in s:
        s["rates"] = tuple(float(r) for r in s["rates"])
    serve = Serve(**s)
    if serve.engine == "http" and len(serve.precisions) > 1:
        raise ConfigError(f"{path}: 'serve.precisions' = {list(serve.precisions)!r} is not allowed with engine 'http'; "
                          "expected one precision (the one the server runs)")
    if serve.engine == "transformers":
        _check_model(path, "serve.model", serve.model, Path(path).parent)
    sampler = ServeSampler(**_table(path, "sampler", data.get("sampler", {}), _SAMPLER_KEYS))
    run = Run(**{k: tuple(v) for k, v in _table(path, "run", data.get("run", {}), _RUN_KEYS).items()})
    if len(run.gpus) != 1:
        raise ConfigError(f"{path}: 'run.gpus' = {list(run.gpus)} is not allowed; expected one GPU "
                          "(serve-bench attributes one card's energy counter)")
    sim = SimEngine(**_table(path, "sim", data.get("sim", {}), _SIM_ENGINE_KEYS))
    bnb = BitsAndBytes(**_table(path, "bitsandbytes", data.get("bitsandbytes", {}), _BNB_KEYS))
    return ServeBench(name, path, text, serve, sampler, sim, bnb, run)


def load(path: str | Path) -> ServeBench:
    return parse(read(path), str(path))
