"""wattscope: phase-separated energy of LLM inference, measured live.

The package root stays light: ``load`` and ``measure`` import what they need on first use,
so ``import wattscope`` never pulls in torch or Textual.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wattscope.version import __version__
__all__ = ["load", "measure", "Meter", "__version__"]

if TYPE_CHECKING:
    from wattscope.meter import Meter, measure
    from wattscope.recording import load


def __getattr__(name: str) -> Any:
    if name == "load":
        from wattscope.recording import load

        return load
    if name in ("measure", "Meter"):
        from wattscope import meter as m

        return getattr(m, name)
    raise AttributeError(name)
