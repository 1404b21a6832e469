"""DEVELOPMENT ONLY: a small mutual-TLS static server for a published tree, for when nginx is missing.

``doorlock demo`` uses it on machines without nginx. It applies the same access rule as the
generated nginx configuration (see :mod:`compiler.nginx`): the client certificate must be
issued by the deployment CA, its subject CN names the lock, and that lock may read only
``/bundles/<its name>.json`` and ``/signers.json``. A lock is known when the live
``manifest.json`` lists its bundle. ETags are computed the way nginx does (mtime in seconds
and size, in hex) so clients see the same caching behaviour.

It is single-process Python without rate limits, request size limits beyond the basics or
access logs worth the name. Deploy nginx with ``doorlock nginx-config`` instead.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["DevServer", "DEVELOPMENT_BANNER"]

log = logging.getLogger(__name__)

DEVELOPMENT_BANNER = "doorlock development server (not for production; use nginx)"

_HANDSHAKE_TIMEOUT = 10.0


class DevServer:
    """Serve ``<publish_dir>/current`` over HTTPS with client certificates, in a thread."""

    def __init__(self, publish_dir: str | os.PathLike, certificate: str | os.PathLike,
                 certificate_key: str | os.PathLike, client_ca: str | os.PathLike,
                 host: str = "127.0.0.1", port: int = 0):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(certificate), str(certificate_key))
        context.load_verify_locations(str(client_ca))
        # Optional, so that a request without a certificate gets HTTP 400 (as from nginx)
        # instead of a failed handshake. A certificate that is sent is still verified.
        context.verify_mode = ssl.CERT_OPTIONAL
        context.verify_flags |= ssl.VERIFY_X509_STRICT

        self.root = Path(publish_dir) / "current"
        self._server = _TlsServer((host, port), _Handler, context, self.root)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="doorlock-devserver", daemon=True)
        self._thread.start()
        log.warning("%s listening on 127.0.0.1:%d, serving %s", DEVELOPMENT_BANNER, self.port, self.root)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        log.info("development server on port %d stopped", self.port)

    def __enter__(self) -> DevServer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


class _TlsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler, context: ssl.SSLContext, root: Path):
        self.context = context
        self.root = root
        super().__init__(address, handler)

    def get_request(self):
        connection, address = self.socket.accept()
        # The handshake runs in the request's thread (finish_request) so that a slow client
        # cannot block the accept loop.
        return self.context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False), address

    def finish_request(self, request, client_address):
        request.settimeout(_HANDSHAKE_TIMEOUT)
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError) as error:
            log.info("TLS handshake with %s failed: %s", client_address[0], error)
            return
        super().finish_request(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server_version = "doorlock-devserver"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def do_POST(self) -> None:
        # nginx's 'limit_except GET' rejects other methods with 403 as well. The body is not
        # read, so the connection cannot carry another request.
        self.close_connection = True
        self._reply(403, b"Forbidden\n", {"Connection": "close"})

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _serve(self, send_body: bool) -> None:
        lock = self._lock_name()
        if lock is None:
            self._reply(400, b"No required SSL certificate was sent\n")
            return
        path = self.path.split("?", 1)[0]
        if not self._allowed(lock, path):
            self._reply(403, b"Forbidden\n")
            return
        self._send_file(self.server.root / path.lstrip("/"), send_body)

    def _lock_name(self) -> str | None:
        certificate = self.connection.getpeercert()
        if not certificate:
            return None
        for attributes in certificate.get("subject", ()):
            for name, value in attributes:
                if name == "commonName":
                    return value
        return ""

    def _allowed(self, lock: str, path: str) -> bool:
        known = self._known_locks()
        if lock not in known:
            return False
        return path == "/signers.json" or path == f"/bundles/{lock}.json"

    def _known_locks(self) -> set[str]:
        try:
            manifest = json.loads((self.server.root / "manifest.json").read_bytes())
            return set(manifest["bundles"])
        except (OSError, ValueError, KeyError, TypeError):
            return set()

    def _send_file(self, path: Path, send_body: bool) -> None:
        try:
            with open(path, "rb") as handle:
                status = os.fstat(handle.fileno())
                data = handle.read()
        except FileNotFoundError:
            self._reply(404, b"Not Found\n")
            return
        etag = f'"{int(status.st_mtime):x}-{status.st_size:x}"'
        if self.headers.get("If-None-Match") == etag:
            self._reply(304, b"", {"ETag": etag})
            return
        self._reply(200, data, {"ETag": etag, "Content-Type": "application/json",
                                "Last-Modified": formatdate(int(status.st_mtime), usegmt=True),
                                "Cache-Control": "no-cache"}, send_body)

    def _reply(self, status: int, body: bytes, headers: dict | None = None, send_body: bool = True) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body and body and status != 304:
            self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.client_address[0], format % args)

