"""Decode tok/s of FP16 batch 1 with the live app attached versus --headless.

Runs `wattscope run benchmarks/fp16_b1.toml` twice, alternating headless and the Textual
app (in a pseudo-terminal, as over SSH), and compares decode tok/s from the recordings.
Target: app / headless >= 0.99. Needs a GPU.

    python benchmarks/tui_vs_headless.py --out DIR [--pairs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import wattscope

CONFIG = Path(__file__).with_name("fp16_b1.toml")


def run_headless(out: Path) -> None:
    subprocess.run([sys.executable, "-m", "wattscope", "run", str(CONFIG), "--headless", "-o", str(out)], check=True)


def run_app(out: Path, timeout_s: float = 300) -> None:
    """The app in a 100x30 pty; once the recording says the run is over, press q."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(TERM="xterm-256color", COLUMNS="100", LINES="30")
        os.execvp(sys.executable, [sys.executable, "-m", "wattscope", "run", str(CONFIG), "-o", str(out)])
    deadline = time.monotonic() + timeout_s
    sent_q = False
    while time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.25)
        if r:
            try:
                os.read(fd, 65536)  # drain the screen so the app never blocks on output
            except OSError:  # the app closed its terminal: it is exiting
                os.waitpid(pid, 0)
                return
        if not sent_q and out.exists():
            try:
                with wattscope.load(out) as rec:
                    done = rec.complete
            except Exception:
                done = False
            if done:
                os.write(fd, b"q")
                sent_q = True
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished:
            return
    os.kill(pid, 9)
    raise RuntimeError("the app did not exit")


def tok_s(path: Path) -> float:
    with wattscope.load(path) as rec:
        return float(rec.results["decode_tok_s"].iloc[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--pairs", type=int, default=2)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(args.pairs):
        h, a = args.out / f"headless-{k}.wattscope", args.out / f"app-{k}.wattscope"
        run_headless(h)
        run_app(a)
        rows.append({"headless_tok_s": tok_s(h), "app_tok_s": tok_s(a)})
        print(rows[-1], flush=True)
    ratio = sum(r["app_tok_s"] for r in rows) / sum(r["headless_tok_s"] for r in rows)
    result = {"pairs": rows, "app_over_headless": ratio}
    print(json.dumps(result, indent=2))
    (args.out / "tui_vs_headless.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
