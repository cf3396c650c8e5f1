"""The import contract: what each floor of wattscope may import.

Floors, lowest first; a module may import its own floor and those below it, never above:

  lower floors   events, config, errors, architectures, metrics, state, source, analysis,
                 tables, recording, replay, session, meter, child, provenance, safe_text, version,
                 resources, files, config_reference, extras, timeline, telemetry/, bench/
  display floor  render, headless, export, plot, perfetto, jsonl, tui/
  front end      cli, __main__, the package's __init__

and four rules about third-party packages: Textual only under tui/; matplotlib only
inside the functions of plot.py (an optional extra); telemetry imports
neither torch nor Textual; torch, transformers, bitsandbytes and accelerate only inside
the functions of bench/models.py that build and run a model (the runner process imports
it lazily), so nothing the CLI imports pulls them in.

Imports are read from the source with ``ast`` (every import, also those inside functions
and under TYPE_CHECKING), and checked once more at run time in a fresh interpreter,
where ``sys.modules`` shows what importing really loads. A floor's module that does
not exist (yet) is simply not in the package and is not checked.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "wattscope"

LOWER = {
    "events", "config", "errors", "architectures", "stats", "metrics", "host", "state", "source", "analysis",
    "attribution", "serve",
    "tables", "recording", "replay", "session", "meter", "child", "provenance", "telemetry", "bench",
    "safe_text", "version", "resources", "files", "config_reference", "extras", "timeline",
}
DISPLAY = {"render", "headless", "export", "plot", "perfetto", "jsonl", "tui", "serve_report"}
FRONT = {"cli", "__main__", "__init__"}
FLOOR_RANK = {**{n: 0 for n in LOWER}, **{n: 1 for n in DISPLAY}, **{n: 2 for n in FRONT}}
FLOOR_NAME = ("a lower floor", "the display floor", "the front end")

HEAVY = ("torch", "transformers", "bitsandbytes", "accelerate")
# The modules that build and run a model: models.py, the graphs engine built on it, and the
# in-process serving engine.
MODEL_MODULES = ("wattscope.bench.models", "wattscope.bench.graphs", "wattscope.serve.transformers_engine")


@dataclass(frozen=True)
class Import:
    name: str  # the module, or module.name for `from module import name`
    line: int
    in_function: bool


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every import in ``source``, the code of ``module``, with relative ones resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import):
            found.extend(Import(a.name, node.lineno, in_function) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = ".".join(parts[: len(parts) - (node.level - 1)])
                base = f"{anchor}.{base}" if base else anchor
            found.append(Import(base, node.lineno, in_function))
            found.extend(Import(f"{base}.{a.name}", node.lineno, in_function) for a in node.names)
        inside = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(ast.parse(source), False)
    return found


def _floor_key(module: str) -> str | None:
    """The name that places a wattscope module on a floor: its first part below the
    package (``wattscope.tui.app`` -> ``tui``); None for other packages."""
    parts = module.split(".")
    if parts[0] != "wattscope":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def _top(name: str) -> str:
    return name.split(".")[0]


def _violations(rule) -> list[str]:  # noqa: ANN001
    out = []
    for module, path in _modules().items():
        for imp in _imports(path.read_text(), module, path.name == "__init__.py"):
            why = rule(module, imp)
            if why:
                out.append(f"{path.relative_to(ROOT)}:{imp.line}: {module} imports {imp.name} ({why})")
    return sorted(set(out))


def test_every_module_is_on_a_floor() -> None:
    unplaced = [m for m in _modules() if _floor_key(m) not in FLOOR_RANK]
    assert not unplaced, f"place these modules on a floor in {Path(__file__).name}: {unplaced}"


def test_no_module_imports_a_floor_above_its_own() -> None:
    def rule(module: str, imp: Import) -> str | None:
        own, other = _floor_key(module), _floor_key(imp.name)
        # Python imports the package root to reach any submodule; it stays light by
        # loading what it names lazily.
        if imp.name == "wattscope" or own not in FLOOR_RANK or other not in FLOOR_RANK:
            return None
        if FLOOR_RANK[other] > FLOOR_RANK[own]:
            return f"{FLOOR_NAME[FLOOR_RANK[own]]} importing {FLOOR_NAME[FLOOR_RANK[other]]}"
        return None

    assert _violations(rule) == []


def test_only_the_tui_package_imports_textual() -> None:
    def rule(module: str, imp: Import) -> str | None:
        if _top(imp.name) == "textual" and _floor_key(module) != "tui":
            return "Textual belongs to wattscope/tui/"
        return None

    assert _violations(rule) == []


def test_only_the_plot_module_imports_matplotlib_and_only_inside_functions() -> None:
    def rule(module: str, imp: Import) -> str | None:
        if _top(imp.name) != "matplotlib" or (module == "wattscope.plot" and imp.in_function):
            return None
        if module != "wattscope.plot":
            return "matplotlib (the plot extra) belongs to wattscope/plot.py"
        return "at module import; import it inside the function that draws"

    assert _violations(rule) == []


def test_telemetry_imports_neither_torch_nor_textual() -> None:
    def rule(module: str, imp: Import) -> str | None:
        if _floor_key(module) == "telemetry" and _top(imp.name) in (*HEAVY, "textual"):
            return "telemetry runs in the sampler process, which must stay light"
        return None

    assert _violations(rule) == []


def test_model_libraries_only_inside_the_functions_that_run_a_model() -> None:
    def rule(module: str, imp: Import) -> str | None:
        if _top(imp.name) not in HEAVY:
            return None
        if module not in MODEL_MODULES:
            return f"only {' and '.join(MODEL_MODULES)} may import it"
        if not imp.in_function:
            return "at module import; import it inside the function that needs it"
        return None

    assert _violations(rule) == []


def test_the_reader_sees_lazy_relative_and_from_imports() -> None:
    text = "import os\nfrom wattscope import events as ev\ndef f():\n    from . import render\n    import torch.nn\n"
    seen = {(i.name, i.in_function) for i in _imports(text, "wattscope.bench.probe")}
    assert {("os", False), ("wattscope.events", False), ("wattscope.bench.render", True), ("torch.nn", True)} <= seen
    up = {i.name for i in _imports("from ..tui import app\n", "wattscope.bench.probe")}
    assert "wattscope.tui.app" in up


# --------------------------------------------------------------------------- at run time


def _loaded_after_import(*modules: str) -> set[str]:
    """Top-level names in sys.modules of a fresh interpreter after importing ``modules``."""
    code = (
        "import importlib, json, sys\n"
        "for m in sys.argv[1:]:\n"
        "    importlib.import_module(m)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, *modules], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout))


def _importable() -> list[str]:
    return [m for m in _modules() if m != "wattscope.__main__"]


@pytest.mark.process
def test_importing_the_cli_loads_no_model_library_and_no_textual() -> None:
    loaded = _loaded_after_import("wattscope.cli")
    assert "wattscope" in loaded
    assert loaded & {*HEAVY, "textual"} == set()


@pytest.mark.process
def test_importing_all_of_telemetry_loads_neither_torch_nor_textual() -> None:
    telemetry = [m for m in _importable() if _floor_key(m) == "telemetry"]
    assert "wattscope.telemetry.sampler" in telemetry
    assert _loaded_after_import(*telemetry) & {*HEAVY, "textual"} == set()


@pytest.mark.process
def test_importing_every_module_loads_no_model_library() -> None:
    loaded = _loaded_after_import(*_importable())
    assert "textual" in loaded  # the tui package was imported too
    assert loaded & set(HEAVY) == set()


@pytest.mark.process
def test_importing_everything_below_the_tui_loads_no_textual() -> None:
    assert _loaded_after_import(*[m for m in _importable() if _floor_key(m) != "tui"]) & {"textual"} == set()
