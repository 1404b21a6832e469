"""Certificates from :mod:`compiler.pki` and a scriptable HTTPS server on 127.0.0.1 for lock tests.

:class:`ScriptedServer` requires a client certificate signed by the test CA (mutual TLS, as the
bundle host and the receiver do) and serves each path with a route function, so a test can
play any server behaviour: 403, 500, a huge or slow body, 304 with or without an ETag.
"""

from __future__ import annotations

import hashlib
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

from compiler import pki


@dataclass
class TestPki:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_sha256: str


def make_pki(directory: Path, lock: str = "front-door") -> TestPki:
    """Create a CA, a server certificate for 127.0.0.1 and a lock client certificate."""
    ca_dir = directory / "ca"
    certs = directory / "certs"
    pki.init_ca(ca_dir)
    server_cert, server_key = pki.issue_server(ca_dir, "127.0.0.1", certs)
    client_cert, client_key, sha = pki.issue_lock(ca_dir, lock, certs)
    return TestPki(ca_dir / "ca.crt", server_cert, server_key, client_cert, client_key, sha)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_cn: str | None


Route = Callable[[BaseHTTPRequestHandler, Request], None]


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    if status != 304:
        handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if body and status != 304:
        handler.wfile.write(body)


def static(data_source: Callable[[], bytes] | bytes, etag_on_304: bool = True) -> Route:
    """Serve bytes with a strong ETag and honour ``If-None-Match`` like nginx does."""
    def route(handler: BaseHTTPRequestHandler, request: Request) -> None:
        data = data_source() if callable(data_source) else data_source
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        if request.headers.get("If-None-Match") == etag:
            send(handler, 304, headers={"ETag": etag} if etag_on_304 else {})
        else:
            send(handler, 200, data, {"ETag": etag, "Content-Type": "application/json"})
    return route


def status_only(code: int) -> Route:
    def route(handler: BaseHTTPRequestHandler, request: Request) -> None:
        send(handler, code, json.dumps({"error": f"scripted {code}"}).encode(), {"Content-Type": "application/json"})
    return route


def endless(total_bytes: int, announce: bool = False) -> Route:
    """Send ``total_bytes`` of filler, optionally announcing the length up front."""
    def route(handler: BaseHTTPRequestHandler, request: Request) -> None:
        handler.send_response(200)
        if announce:
            handler.send_header("Content-Length", str(total_bytes))
        handler.send_header("Connection", "close")
        handler.end_headers()
        chunk = b"x" * 65536
        sent = 0
        try:
            while sent < total_bytes:
                handler.wfile.write(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
    return route


def trickle(byte_interval: float, total_bytes: int = 1000) -> Route:
    """Send one byte every ``byte_interval`` seconds: never idle long enough for a read timeout."""
    def route(handler: BaseHTTPRequestHandler, request: Request) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(total_bytes))
        handler.end_headers()
        try:
            for _ in range(total_bytes):
                handler.wfile.write(b"x")
                handler.wfile.flush()
                time.sleep(byte_interval)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
    return route


@dataclass
class ScriptedServer:
    """HTTPS server on 127.0.0.1 with an ephemeral port that requires a client certificate."""

    pki: TestPki
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                peer = self.connection.getpeercert() or {}
                cn = next((value for rdn in peer.get("subject", ()) for key, value in rdn if key == "commonName"), None)
                request = Request(self.command, self.path, dict(self.headers), body, cn)
                server.requests.append(request)
                route = server.routes.get(self.path)
                if route is None:
                    send(self, 404, b'{"error": "not found"}')
                else:
                    route(self, request)

            do_GET = _handle
            do_POST = _handle

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        context.load_verify_locations(self.pki.ca_cert)
        context.verify_mode = ssl.CERT_REQUIRED
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def start(self) -> ScriptedServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
