"""`wattscope serve`: the app drawn in a real browser, and the command's bad input.

The browser test starts `wattscope serve demo` on a free port, opens the page in a
headless Chromium driven over the DevTools protocol, and reads the terminal the page
draws: xterm.js keeps what it draws in its buffer (it paints the cells on a canvas, so
they are not DOM text), and a script installed before the page loads keeps a handle on
the page's terminal so the test can read its lines."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from wattscope import cli, resources

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Whatever object of the page's script first gets a `terminal` is the xterm.js Terminal.
KEEP_TERMINAL = """
Object.defineProperty(Object.prototype, "terminal", {
  configurable: true,
  set(value) {
    window.__wattscopeTerminal = value;
    Object.defineProperty(this, "terminal", {value, writable: true, configurable: true, enumerable: true});
  },
});
"""
READ_LINES = """
(() => {
  const t = window.__wattscopeTerminal;
  if (!t || !t.buffer) return null;
  const b = t.buffer.active, out = [];
  for (let i = 0; i < t.rows; i++) { const l = b.getLine(i); out.push(l ? l.translateToString(true) : ""); }
  return out.join("\\n");
})()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listening on port {port} after {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End a process we started in its own session, and everything it started."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


async def _terminal_text(page_url: str, devtools_port: int, timeout: float) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.put(f"http://127.0.0.1:{devtools_port}/json/new?about:blank") as r:
            target = json.loads(await r.text())
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 1_000_000))

            async def call(method: str, **params: object) -> dict:
                n = next(ids)
                await ws.send_json({"id": n, "method": method, "params": params})
                while True:
                    msg = json.loads((await ws.receive()).data)
                    if msg.get("id") == n:
                        assert "error" not in msg, msg
                        return dict(msg.get("result", {}))

            await call("Page.enable")
            await call("Page.addScriptToEvaluateOnNewDocument", source=KEEP_TERMINAL)
            await call("Page.navigate", url=page_url)
            text = ""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                result = await call("Runtime.evaluate", expression=READ_LINES, returnByValue=True)
                text = result.get("result", {}).get("value") or ""
                if "REPLAY" in text and "Results" in text:
                    return text
                await asyncio.sleep(0.5)
            return text


@pytest.mark.process
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs Debian's chromium)")
def test_serve_draws_the_app_in_a_headless_browser() -> None:
    pytest.importorskip("textual_serve", reason="the serve extra is not installed")
    port, devtools = _free_port(), _free_port()
    serve = subprocess.Popen([sys.executable, "-m", "wattscope", "serve", "--host", "127.0.0.1", "--port", str(port),
                              "demo", "--speed", "8", "--fps", "2"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    profile = tempfile.mkdtemp(prefix="wattscope-chromium-")
    browser = None
    try:
        _wait_port(port, serve, 30)
        assert CHROMIUM is not None
        browser = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                                    f"--remote-debugging-port={devtools}", f"--user-data-dir={profile}",
                                    "--window-size=1280,800", "about:blank"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait_port(devtools, browser, 30)
        text = asyncio.run(_terminal_text(f"http://127.0.0.1:{port}/", devtools, 60))
    finally:
        if browser is not None:
            _stop(browser)
        _stop(serve)
        shutil.rmtree(profile, ignore_errors=True)
    # The app's own header and boxes, drawn by the served process into the page.
    assert re.search(r"wattscope\s+REPLAY", text), text
    assert "Power (0..TDP" in text and "Results" in text, text


def test_serve_refuses_what_it_cannot_serve(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, says in ((["serve"], "expected one of run, replay, demo"),
                       (["serve", "export", "x.wattscope"], "serve: got `export`"),
                       (["serve", "demo", "--headless"], "--headless is not allowed"),
                       (["serve", "demo", "--fps", "0"], "--fps 0 is not allowed; expected a refresh rate from 0.5 to 30"),
                       (["serve", "--port", "70000", "demo"], "--port 70000 is not allowed"),
                       (["serve", "replay", "/nonexistent/run.wattscope"], "/nonexistent/run.wattscope")):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err


def test_serve_without_textual_serve_names_the_pip_command(monkeypatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "textual_serve.server", None)  # import fails as if not installed
    assert cli.main(["serve", "demo"]) == 2
    assert capsys.readouterr().err == f"wattscope: error: serve needs textual-serve, which is not installed: {cli.SERVE_INSTALL}\n"


@pytest.mark.parametrize("command", [["replay", str(resources.bundled_recording())], ["demo"], ["run", "configs/quick.toml", "--sim"]])
@pytest.mark.parametrize("fps", ["0.1", "nan", "31"])
def test_fps_out_of_range_is_refused_before_anything_starts(command, fps, capsys, tmp_path: Path) -> None:
    out = tmp_path / "never.wattscope"
    extra = ["-o", str(out)] if command[0] == "run" else []
    assert cli.main([*command, *extra, "--fps", fps]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"wattscope: error: --fps {float(fps):g} is not allowed") and err.count("\n") == 1
    assert not out.exists()
