"""Fault injection for the end-to-end fault suite (tests/e2e/test_faults*.py).

`FaultProxy`: a small HTTP/1.1 proxy in front of the real S3 server (SeaweedFS). Each
request is checked against `rule(method, path)`, which returns None (forward it) or a
`Fault`: answer with a status (500s for a while), wait some seconds first (a slow store,
timeouts), hold the request until released or the client gives up (a sidecar stuck mid-
upload, mid-rotation, mid-download: the moment to SIGKILL it), or drop the connection.
Written here because no packaged proxy injects per-request faults into HTTP/1.1 with
`Expect: 100-continue` as boto3 sends it; http.server and http.client do the parsing.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import urlsplit

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade",
               "expect"}


@dataclass(frozen=True)
class Fault:
    status: int | None = None  # answer this status instead of forwarding
    delay: float = 0.0  # seconds to wait before forwarding (or answering)
    hold: bool = False  # wait until FaultProxy.release() (or the client goes away)
    drop: bool = False  # close the connection without an answer


Rule = Callable[[str, str], "Fault | None"]


class FaultProxy:
    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.rule: Rule = lambda method, path: None
        self.seen: list[tuple[str, str, str]] = []  # (method, path, what happened)
        self.released = threading.Event()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and 100-continue answered by http.server

            def _any(self):
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def release(self) -> None:
        self.released.set()

    def requests(self, method: str | None = None, what: str | None = None) -> list[tuple[str, str, str]]:
        with self._lock:
            return [r for r in self.seen if (method is None or r[0] == method) and (what is None or r[2] == what)]

    def _note(self, method: str, path: str, what: str) -> None:
        with self._lock:
            self.seen.append((method, path, what))

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        method, path = handler.command, handler.path
        body = _read_body(handler)
        fault = self.rule(method, path)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.hold:
                self._note(method, path, "held")
                self.released.wait()
            if fault.drop:
                self._note(method, path, "dropped")
                handler.close_connection = True
                return
            if fault.status is not None:
                self._note(method, path, str(fault.status))
                payload = (b"<?xml version=\"1.0\"?><Error><Code>InternalError</Code>"
                           b"<Message>injected fault</Message></Error>")
                handler.send_response(fault.status)
                handler.send_header("Content-Type", "application/xml")
                handler.send_header("Content-Length", str(len(payload) if method != "HEAD" else 0))
                handler.end_headers()
                if method != "HEAD":
                    handler.wfile.write(payload)
                return
        self._forward(handler, method, path, body)

    def _forward(self, handler: BaseHTTPRequestHandler, method: str, path: str, body: bytes | None) -> None:
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            upstream.request(method, path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
        finally:
            upstream.close()
        self._note(method, path, str(response.status))
        handler.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in _HOP_BY_HOP and key.lower() != "content-length":
                handler.send_header(key, value)
        length = response.getheader("Content-Length") if method == "HEAD" else str(len(data))
        handler.send_header("Content-Length", length or "0")
        handler.end_headers()
        if method != "HEAD":
            handler.wfile.write(data)


def _read_body(handler: BaseHTTPRequestHandler) -> bytes | None:
    """The request's body, de-chunked when sent in chunks; None when it has none."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
    length = handler.headers.get("Content-Length")
    return handler.rfile.read(int(length)) if length else None
