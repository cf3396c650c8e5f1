"""A fake OpenAI-compatible server as a program: streams completions on the given port
and exits with code 7 after the given number of seconds (a server dying mid-run)."""

from __future__ import annotations

import os
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from test_serve_bench import _Fake  # noqa: E402

if __name__ == "__main__":
    port, life_s = int(sys.argv[1]), float(sys.argv[2])
    server = ThreadingHTTPServer(("127.0.0.1", port), _Fake)
    server.daemon_threads = True
    threading.Timer(life_s, lambda: os._exit(7)).start()
    server.serve_forever()
