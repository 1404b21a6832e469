"""Run the receiver on cheroot, the WSGI server of CherryPy.

cheroot was chosen because its builtin TLS adapter hands the verified peer certificate to the
WSGI application (``SSL_CLIENT_CERT``, PEM) once it is given an ``ssl.SSLContext`` that
requires client certificates, and because it serves Unix sockets for the mode behind nginx.
It is a thread-pool server: a worker thread per request being handled, with keep-alive
connections waiting in a selector between requests.

cheroot 10 and 11 perform the TLS handshake in the thread that accepts connections and also
dispatches every ready keep-alive connection. Each handshake (several round trips) would
delay all other requests, and a client that stalled mid-handshake would hold them up to the
socket timeout. :class:`DeferredHandshakeAdapter` and :class:`TLSConnection` therefore move
the handshake into the worker thread that serves the connection's first request. The
verified certificate then reaches the WSGI environ as ``SSL_CLIENT_CERT``, as with the builtin
adapter.
"""

from __future__ import annotations

import logging
import os
import signal
import ssl
import threading
from pathlib import Path

from cheroot import errors, wsgi
from cheroot.server import HTTPConnection
from cheroot.ssl.builtin import BuiltinSSLAdapter

from receiver.app import DISCARD_FACTOR, ReceiverApp
from receiver.config import ReceiverConfig
from receiver.identity import LockDirectory
from receiver.store import SQLiteStore

log = logging.getLogger(__name__)

# Socket timeout in seconds for the handshake and for reading a request.
SOCKET_TIMEOUT = 10
# Idle keep-alive connections kept open at most; each costs a file descriptor.
KEEP_ALIVE_LIMIT = 1000
# nginx must be able to connect; other local users must not, because the identity header is
# trusted on this socket.
UNIX_SOCKET_MODE = 0o660


class DeferredHandshakeAdapter(BuiltinSSLAdapter):
    """The builtin adapter, except that ``wrap`` leaves the handshake to :class:`TLSConnection`.

    ``get_environ`` sets only the entries the receiver reads, without the builtin adapter's
    work of parsing the certificate into dozens of ``SSL_CLIENT_*`` entries.
    """

    def wrap(self, sock):
        try:
            tls_socket = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        except OSError as error:
            raise errors.FatalSSLAlert(*error.args) from error
        return tls_socket, {}

    def get_environ(self, sock):
        environ = {"wsgi.url_scheme": "https", "HTTPS": "on", "SSL_PROTOCOL": sock.version(),
                   "SSL_CLIENT_VERIFY": "NONE"}
        # The context requires a client certificate, so the handshake only succeeded if the
        # certificate verified against the client CA.
        certificate = sock.getpeercert(binary_form=True)
        if certificate:
            environ["SSL_CLIENT_VERIFY"] = "SUCCESS"
            environ["SSL_CLIENT_CERT"] = ssl.DER_cert_to_PEM_cert(certificate).strip()
        return environ


class TLSConnection(HTTPConnection):
    """An HTTP connection that completes the TLS handshake before it reads the first request."""

    handshake_done = False

    def communicate(self):
        if isinstance(self.socket, ssl.SSLSocket) and not self.handshake_done:
            try:
                self.socket.do_handshake()
            except (ssl.SSLError, OSError) as error:
                # A certificate from another CA, none at all, or plain HTTP on the TLS port.
                log.warning("TLS handshake with %s failed: %s", self.remote_addr, error)
                return False
            self.handshake_done = True
            self.ssl_env.update(self.server.ssl_adapter.get_environ(self.socket))
        return super().communicate()


def tls_context(config: ReceiverConfig) -> ssl.SSLContext:
    """Build a server context that requires a client certificate issued by the client CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(config.certificate), str(config.private_key))
    context.load_verify_locations(cafile=str(config.client_ca))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def build_app(config: ReceiverConfig) -> tuple[ReceiverApp, SQLiteStore]:
    directory = LockDirectory(config.manifest)
    store = SQLiteStore(config.database)
    return ReceiverApp(config, store, directory), store


def build_server(config: ReceiverConfig, app) -> wsgi.Server:
    """Create (not start) the cheroot server for ``config``."""
    if config.mode == "proxy" and config.unix_socket is not None:
        bind: str | tuple[str, int] = str(config.unix_socket)
    else:
        bind = (config.host, config.port)
    server = wsgi.Server(bind, app, numthreads=config.threads, server_name="doorlock-receiver",
                         timeout=SOCKET_TIMEOUT, request_queue_size=128)
    server.error_log = _log_server_error
    # cheroot keeps at most 10 idle keep-alive connections by default and closes every further
    # connection after its response, so most locks would pay a new TLS handshake per push.
    # Idle connections are still closed after SOCKET_TIMEOUT seconds.
    server.keep_alive_conn_limit = KEEP_ALIVE_LIMIT
    # Headers carry at most the escaped client certificate. Bodies are checked by the app,
    # which returns 413 with a JSON message; cheroot's own limit is only the backstop.
    server.max_request_header_size = 64 * 1024
    server.max_request_body_size = DISCARD_FACTOR * config.limits.max_body_bytes

    if config.mode == "tls":
        adapter = DeferredHandshakeAdapter(str(config.certificate), str(config.private_key))
        adapter.context = tls_context(config)
        server.ssl_adapter = adapter
        server.ConnectionClass = TLSConnection
    return server


def _log_server_error(msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
    # cheroot reports failed handshakes (no certificate, a certificate from another CA) here.
    server_log = logging.getLogger("receiver.server.cheroot")
    server_log.log(level if level >= logging.WARNING else logging.WARNING, "%s", msg, exc_info=traceback)


def listening_address(config: ReceiverConfig, server: wsgi.Server) -> str:
    if isinstance(server.bind_addr, str):
        return f"unix:{server.bind_addr}"
    host, port = server.bind_addr[:2]
    scheme = "https" if config.mode == "tls" else "http"
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


def serve(config: ReceiverConfig, ready_file: Path | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then finish the requests in progress and stop."""
    app, store = build_app(config)
    server = build_server(config, app)
    server.prepare()
    if isinstance(server.bind_addr, str):
        os.chmod(server.bind_addr, UNIX_SOCKET_MODE)
    address = listening_address(config, server)

    stop = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda number, frame: stop.set())
    worker = threading.Thread(target=server.serve, name="receiver-server", daemon=True)
    worker.start()
    log.info("receiver listening on %s (mode %s, database %s, manifest %s)",
             address, config.mode, config.database, config.manifest)
    if ready_file is not None:
        _write_atomically(ready_file, address + "\n")

    try:
        while not stop.wait(1.0):
            if not worker.is_alive():
                log.error("receiver server thread ended unexpectedly")
                break
    finally:
        log.info("receiver stopping")
        server.stop()
        store.close()
        log.info("receiver stopped")


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
