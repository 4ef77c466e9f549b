"""A heartbeat receiver for tests: http.server on 127.0.0.1 recording every request
(method, path, query, body), like a healthchecks.io or Uptime Kuma server would see it.
`status` is its answer, `delay` the seconds it waits before answering (a slow receiver);
`down()` closes its port (a receiver that does not answer)."""

from __future__ import annotations

import http.server
import threading
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when the request arrived

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class PingReceiver:
    def __init__(self, status: int = 200, delay: float = 0.0):
        self.status, self.delay = status, delay
        self.requests: list[Seen] = []
        self._release = threading.Event()  # set: a slow receiver stops waiting (teardown)
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                parts = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
                receiver.requests.append(Seen(self.command, parts.path, query, body, time.monotonic()))
                if receiver.delay:
                    receiver._release.wait(receiver.delay)
                try:
                    self.send_response(receiver.status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"OK")
                except OSError:  # the client gave up waiting
                    pass

            do_GET = do_POST = do_HEAD = _handle

            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def url(self, path: str = "/ping/0b6e4f7a-check") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def down(self) -> None:
        """Close the port: connections are refused from now on."""
        self.close()

    def close(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
