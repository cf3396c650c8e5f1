"""An OpenAI-compatible server (vLLM, SGLang, TGI, ``transformers serve``) as a Backend.

Streaming ``/v1/completions`` over the standard library's ``http.client``: the body is
server-sent events, one ``data: {json}`` line per chunk and ``data: [DONE]`` at the end.
Prompts are sent as token ids, so a request's prompt length is exact without a
tokenizer (vLLM and SGLang accept them); ``ignore_eos`` and ``min_tokens`` (vLLM's
extensions, ignored elsewhere) ask for the full output length.

With ``serve.command`` the server is started here, its output kept in a log file beside
the recording, and stopped (its whole process group) at the end.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from wattscope.serve.config import Serve
from wattscope.serve.driver import BackendError, ServeError

PROBE_PATH = "/v1/models"
VOCAB_IDS = 1000  # prompt token ids are drawn below this (present in every vocabulary)


class HttpBackend:
    def __init__(self, serve: Serve, log_path: Path | None = None) -> None:
        u = urlsplit(serve.url)
        self.serve = serve
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.base = u.path.rstrip("/")
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._socks: dict[str, socket.socket] = {}  # of requests in flight, for cancel
        self._cancelled: set[str] = set()  # cancelled before their socket was known
        self._lock = threading.Lock()

    # -- the server ---------------------------------------------------------------------

    def _answers(self) -> str | None:
        """None when something answers HTTP at the URL (any status: the server is up);
        otherwise why not."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
        try:
            conn.request("GET", self.base + PROBE_PATH)
            conn.getresponse().read()
            return None
        except (OSError, http.client.HTTPException) as e:
            return _reason(e)
        finally:
            conn.close()

    def start(self) -> None:
        if not self.serve.command:
            why = self._answers()
            if why is not None:
                raise ServeError(f"{self.serve.url}: {why}")
            return
        if self.log_path is not None:
            self._log = open(self.log_path, "wb")
        try:
            self._proc = subprocess.Popen(
                list(self.serve.command), stdout=self._log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        except OSError as e:
            raise ServeError(f"serve.command {self.serve.command[0]!r} could not start: {e.strerror or e}") from None
        deadline = time.monotonic() + self.serve.startup_timeout_s
        log = f"; its log: {self.log_path}" if self.log_path else ""
        while True:
            code = self._proc.poll()
            if code is not None:
                raise ServeError(f"the server command exited with code {code} before it answered at {self.serve.url}{log}")
            if self._answers() is None:
                return
            if time.monotonic() > deadline:
                raise ServeError(f"the server did not answer at {self.serve.url} within "
                                 f"serve.startup_timeout_s = {self.serve.startup_timeout_s:g} s{log}")
            time.sleep(0.5)

    def failure(self) -> str | None:
        if self._proc is None:
            return None
        code = self._proc.poll()
        return None if code is None else f"the server exited with code {code} during the run"

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(5)
            except ProcessLookupError:
                pass
        if self._log is not None:
            self._log.close()
            self._log = None

    # -- one request --------------------------------------------------------------------

    def generate(self, request_id: str, prompt_tokens: int, max_tokens: int) -> Iterator[int]:
        rng = random.Random(request_id)
        body = json.dumps({
            "model": self.serve.model,
            "prompt": [rng.randrange(VOCAB_IDS) for _ in range(prompt_tokens)],
            "max_tokens": max_tokens,
            "min_tokens": max_tokens,
            "ignore_eos": True,
            "temperature": 0.0,
            "stream": True,
        })
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.serve.request_timeout_s)
        try:
            try:
                conn.request("POST", self.base + "/v1/completions", body, {"Content-Type": "application/json"})
                if conn.sock is not None:  # the response takes it over (conn.sock goes None)
                    with self._lock:
                        self._socks[request_id] = conn.sock
                        early = request_id in self._cancelled
                    if early:
                        raise BackendError("cancelled")
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                raise BackendError(_reason(e)) from None
            if resp.status != 200:
                text = resp.read(300).decode("utf-8", "replace")
                raise BackendError(f"HTTP {resp.status}: {' '.join(text.split())}")
            yield from _stream(resp, self.serve.request_timeout_s)
        finally:
            with self._lock:
                self._socks.pop(request_id, None)
                self._cancelled.discard(request_id)
            conn.close()

    def cancel(self, request_id: str) -> None:
        """Shut the request's connection: the reading thread wakes with an error, and
        OpenAI-compatible servers (vLLM, SGLang, TGI) abort a request whose client left."""
        with self._lock:
            sock = self._socks.get(request_id)
            if sock is None:
                self._cancelled.add(request_id)  # still connecting: generate checks once it has sent
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed


def _reason(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection without a response"
    return f"{type(e).__name__}: {e}"


def _stream(resp: Any, timeout_s: float) -> Iterator[int]:
    """Tokens per chunk of a server-sent-event stream, until ``data: [DONE]``."""
    while True:
        try:
            raw = resp.readline()
        except (socket.timeout, TimeoutError):
            raise BackendError(f"no data for {timeout_s:g} s (serve.request_timeout_s)") from None
        except (OSError, http.client.HTTPException) as e:
            raise BackendError(f"the stream broke: {_reason(e)}") from None
        if not raw:
            raise BackendError("the stream ended before data: [DONE]")
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue  # blank separators, comments, event names
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            raise BackendError(f"invalid stream: not JSON: {data[:80]!r}") from None
        if not isinstance(chunk, dict):
            raise BackendError(f"invalid stream: not a JSON object: {data[:80]!r}")
        if "error" in chunk:
            err = chunk["error"]
            msg = err.get("message", err) if isinstance(err, dict) else err
            raise BackendError(f"error in the stream: {msg}")
        for choice in chunk.get("choices") or []:
            # A closing chunk carries the finish reason and no text; any other is a token.
            if choice.get("text") or choice.get("finish_reason") is None:
                yield 1
