"""The config reference, generated from the tables that validate configs.

``wattscope init`` writes ``starter_config()`` and the README's config reference is
``reference_markdown()`` (a test holds the README to it), so neither can drift from the
defaults (the dataclasses in ``wattscope.config``) or from what the validator allows.
"""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Any

from wattscope.config import MATRIX, NAME_KEY, SECTIONS, Key, Protocol

# The starter's one [[matrix]] block: the quick config's, small enough to try with --sim.
STARTER_MATRIX: dict[str, Any] = {
    "models": ["synthetic:Qwen2-1.5B"],
    "batches": [1],
    "precisions": ["fp16", "int8", "nf4"],
}


def toml_value(v: Any) -> str:
    """A default as TOML writes it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def _defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in fields(cls)}


def _comment(key: Key) -> str:
    return f"# {key.meaning}. Allowed: {key.allowed}."


def starter_config() -> str:
    """A config that sets every key to its default, each under a comment with its meaning
    and what is allowed; it parses to the defaults and one small matrix."""
    lines = [
        "# A wattscope sweep, written by `wattscope init`.",
        "# Every key is set to its default, under what it means and what is allowed; a key",
        "# left out takes the same default. Try it on a simulated GPU with",
        "# `wattscope run FILE --sim`, then without --sim on the GPU.",
        "",
        _comment(NAME_KEY),
        '# name = "sweep"',
    ]
    for section, (cls, keys) in SECTIONS.items():
        defaults = _defaults(cls)
        lines += ["", f"[{section}]"]
        for name, key in keys.items():
            lines += [_comment(key), f"{name} = {toml_value(defaults[name])}"]
    lines += ["", "# One [[matrix]] block per set of models x batches x precisions; add more blocks as needed.", "[[matrix]]"]
    for name, key in MATRIX.items():
        value = f"{name} = {toml_value(STARTER_MATRIX[name])}" if name in STARTER_MATRIX else f"# {name} = {toml_value(Protocol.engine)}"
        lines += [_comment(key), value]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def reference_markdown() -> str:
    """The README's config reference: one table row per key."""
    rows = ["| key | default | allowed | meaning |", "|---|---|---|---|",
            f"| `name` | the file's name | {_cell(NAME_KEY.allowed)} | {_cell(NAME_KEY.meaning)} |"]
    for section, (cls, keys) in SECTIONS.items():
        defaults = _defaults(cls)
        for name, key in keys.items():
            rows.append(f"| `{section}.{name}` | `{toml_value(defaults[name])}` | {_cell(key.allowed)} | {_cell(key.meaning)} |")
    for name, key in MATRIX.items():
        default = "protocol.engine" if name == "engine" else "required"
        rows.append(f"| `[[matrix]] {name}` | {default} | {_cell(key.allowed)} | {_cell(key.meaning)} |")
    return "\n".join(rows) + "\n"
