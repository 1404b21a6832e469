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
the handshake out of that thread, and run it without blocking: a worker thread advances it
with the bytes that have arrived and, when it needs more, hands the connection back to
cheroot's selector. A client that connects and sends nothing, or sends its handshake slowly,
thus holds no worker while it waits. The verified certificate then reaches the WSGI environ
as ``SSL_CLIENT_CERT``, as with the builtin adapter.
"""

from __future__ import annotations

import errno
import logging
import os
import resource
import signal
import ssl
import threading
import time
from pathlib import Path

from cheroot import errors, wsgi
from cheroot.makefile import MakeFile
from cheroot.server import HTTPConnection
from cheroot.ssl.builtin import BuiltinSSLAdapter

from lockclient.storage import atomic_write

from receiver.app import DISCARD_FACTOR, ReceiverApp
from receiver.config import ReceiverConfig
from receiver.identity import LockDirectory
from receiver.store import SQLiteStore

log = logging.getLogger(__name__)

# Socket timeout in seconds for reading a request; a connection that is silent for this long
# between requests or during its handshake is closed.
SOCKET_TIMEOUT = 10
# A TLS handshake still unfinished this many seconds after the connection was accepted is
# dropped, however slowly the client keeps sending.
HANDSHAKE_SECONDS = 10
# Idle keep-alive connections kept open at most; each costs a file descriptor.
KEEP_ALIVE_LIMIT = 1000
# When the process runs out of file descriptors, connections idle for longer than this many
# seconds are closed to make room for new ones.
SHED_IDLE_SECONDS = 1.0
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
    """An HTTP connection that completes the TLS handshake before it reads the first request.

    The handshake does not block a worker thread. :meth:`communicate` advances it with what the
    client has sent so far. When it needs more, it returns True ("keep the connection"), and
    cheroot puts the connection back into its selector until more bytes arrive. The selector
    closes a connection that stays silent for ``SOCKET_TIMEOUT`` seconds. A handshake still
    unfinished ``HANDSHAKE_SECONDS`` after the connection was accepted is dropped when the
    next bytes arrive. Reading the request after the handshake is cheroot's usual blocking read.
    """

    def __init__(self, server, sock, makefile=MakeFile):
        super().__init__(server, sock, makefile)
        self.handshake_done = not isinstance(sock, ssl.SSLSocket)
        self.handshake_deadline = time.monotonic() + HANDSHAKE_SECONDS

    def communicate(self):
        if not self.handshake_done:
            progress = self._advance_handshake()
            if progress != "done":
                return progress == "waiting"
        return super().communicate()

    def _advance_handshake(self) -> str:
        """Return "done", "waiting" (needs more bytes from the client) or "failed"."""
        remaining = self.handshake_deadline - time.monotonic()
        if remaining <= 0:
            log.warning("TLS handshake with %s not finished within %d s; connection closed",
                        self.remote_addr, HANDSHAKE_SECONDS)
            return "failed"
        try:
            self.socket.settimeout(0)
            try:
                self.socket.do_handshake()
            except ssl.SSLWantWriteError:
                # The kernel's send buffer is full (unusual for a few kilobytes): finish
                # blocking, within the time the handshake has left.
                self.socket.settimeout(remaining)
                self.socket.do_handshake()
            finally:
                self.socket.settimeout(self.server.timeout)
        except ssl.SSLWantReadError:
            return "waiting"
        except (ssl.SSLError, OSError) as error:
            # A certificate from another CA, none at all, plain HTTP or other bytes that are
            # not TLS, a client that closed the connection, or the time above ran out.
            log.warning("TLS handshake with %s failed: %s", self.remote_addr, error)
            return "failed"
        self.handshake_done = True
        self.ssl_env.update(self.server.ssl_adapter.get_environ(self.socket))
        return "done"


def tls_context(config: ReceiverConfig) -> ssl.SSLContext:
    """Build a server context that requires a client certificate issued by the client CA."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    source = config.source or "the configuration"
    try:
        context.load_cert_chain(str(config.certificate), str(config.private_key))
    except (OSError, ssl.SSLError) as error:
        raise TLSSetupError(f"{source}: [tls] certificate {config.certificate} with private_key "
                            f"{config.private_key} cannot be loaded ({_reason(error)}); give the "
                            "server's PEM certificate and its own key, as written by 'doorlock pki "
                            "issue-server'") from None
    try:
        context.load_verify_locations(cafile=str(config.client_ca))
    except (OSError, ssl.SSLError) as error:
        raise TLSSetupError(f"{source}: [tls] client_ca {config.client_ca} cannot be loaded "
                            f"({_reason(error)}); give the ca.crt of the CA that issued the lock "
                            "certificates") from None
    context.verify_mode = ssl.CERT_REQUIRED
    return context


class TLSSetupError(Exception):
    """The server certificate, its key or the client CA cannot be loaded."""


def _reason(error: Exception) -> str:
    if isinstance(error, ssl.SSLError):
        return error.reason or str(error)
    return error.strerror or str(error)


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
        # The context first: it names the file that cannot be loaded.
        context = tls_context(config)
        adapter = DeferredHandshakeAdapter(str(config.certificate), str(config.private_key))
        adapter.context = context
        server.ssl_adapter = adapter
        server.ConnectionClass = TLSConnection
    return server


def _log_server_error(msg: str = "", level: int = logging.INFO, traceback: bool = False) -> None:
    # cheroot reports failed handshakes (no certificate, a certificate from another CA) here.
    server_log = logging.getLogger("receiver.server.cheroot")
    server_log.log(level if level >= logging.WARNING else logging.WARNING, "%s", msg, exc_info=traceback)


def raise_open_file_limit() -> int:
    """Raise the soft limit of open files to the hard limit; return the limit in force.

    Every connection, also one still in its handshake, costs a file descriptor, and the usual
    soft limit of 1,024 is within reach of a single client that opens connections and sends
    nothing.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Linux refuses an unlimited number of open files; 2**20 is its usual ceiling (nr_open).
    target = hard if hard != resource.RLIM_INFINITY else 2**20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as error:
            log.warning("cannot raise the open file limit from %d to %d: %s", soft, target, error)
    return soft


def survive_descriptor_exhaustion(server: wsgi.Server) -> None:
    """Keep accepting connections after the process ran out of file descriptors.

    cheroot 11 lets the error of ``accept()`` escape from its selector loop and runs the loop
    again at once. It then logs a traceback per iteration and never reaches the step that
    closes expired connections, so the server stays stuck after the clients have gone. The
    wrapper around cheroot's (internal) accept step logs the condition at most every 10 s,
    closes connections idle for more than ``SHED_IDLE_SECONDS`` and pauses briefly. The
    connection waiting in the listen queue is accepted once a descriptor is free.
    """
    manager = server._connections
    accept = manager._from_server_socket
    last_logged = [0.0]

    def accept_or_shed(server_socket):
        try:
            return accept(server_socket)
        except OSError as error:
            if error.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            if time.monotonic() - last_logged[0] > 10:
                last_logged[0] = time.monotonic()
                log.error("cannot accept connections: %s; closing connections idle for more than %.0f s",
                          error.strerror, SHED_IDLE_SECONDS)
        manager._expire(threshold=time.time() - SHED_IDLE_SECONDS)
        time.sleep(0.05)
        return None

    manager._from_server_socket = accept_or_shed


def listening_address(config: ReceiverConfig, server: wsgi.Server) -> str:
    if isinstance(server.bind_addr, str):
        return f"unix:{server.bind_addr}"
    host, port = server.bind_addr[:2]
    scheme = "https" if config.mode == "tls" else "http"
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


def serve(config: ReceiverConfig, ready_file: Path | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then finish the requests in progress and stop."""
    if config.mode == "tls":
        tls_context(config)  # a wrong certificate path fails here, before the database is created
    open_files = raise_open_file_limit()
    app, store = build_app(config)
    try:
        server = build_server(config, app)
        server.prepare()
    except BaseException:
        store.close()
        raise
    survive_descriptor_exhaustion(server)
    if isinstance(server.bind_addr, str):
        os.chmod(server.bind_addr, UNIX_SOCKET_MODE)
    address = listening_address(config, server)

    stop = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda number, frame: stop.set())
    worker = threading.Thread(target=server.serve, name="receiver-server", daemon=True)
    worker.start()
    log.info("receiver listening on %s (mode %s, database %s, manifest %s, open file limit %d)",
             address, config.mode, config.database, config.manifest, open_files)
    if ready_file is not None:
        atomic_write(ready_file, (address + "\n").encode())

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
