"""Untrusted text made safe to show.

Names and messages reach the screen and the exports from places wattscope does not
control: a recording's contents (model ids, GPU and sweep names, warnings, failure
reasons), a config's names, an imported CSV's cells, file paths. Written raw, an ESC or
OSC sequence in one of them would drive the user's terminal (set its title, move the
cursor, hide lines), and a bidi override would make the text read differently from what
it is. ``printable`` is the one place that decides which characters are never written
raw: each is replaced by the escape Python would write for it (``\\x1b``, ``\\n``,
``\\u202e``), so the text stays readable and nothing is dropped silently.

The formats built on top (Rich markup, Markdown, LaTeX, CSV cells) live in
``wattscope.render``; this module is pure Python so every floor can use it.
"""

from __future__ import annotations

import re

# C0 controls and DEL and C1 controls (ESC, CSI, OSC, BEL, CR ...), the line and
# paragraph separators, the bidi embeddings, overrides, isolates and marks, and lone
# surrogates (a recording's JSON can hold one; no terminal encoding can write it).
_REST = "\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_ONE_LINE = re.compile(f"[\x00-\x1f{_REST}]")
_MULTI_LINE = re.compile(f"[\x00-\x09\x0b-\x1f{_REST}]")  # all but the newline
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object, *, keep_newlines: bool = False) -> str:
    """``text`` as a string with every control, separator, bidi or surrogate character
    replaced by its visible escape; one line unless ``keep_newlines`` (then ``\\n`` stays,
    for text that is meant to span lines)."""
    s = text if isinstance(text, str) else str(text)
    pattern = _MULTI_LINE if keep_newlines else _ONE_LINE
    return pattern.sub(_escape, s) if pattern.search(s) else s
