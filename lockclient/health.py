"""Optional health pings to an operator's monitoring endpoint, healthchecks.io style.

The operator configures one URL per lock. The daemon pings ``URL/start`` when it starts,
``URL`` after a healthy turn (bundle fetched or still valid, reader working) and ``URL/fail``
with a short reason when something is wrong. The monitoring service alerts when pings stop
or a fail arrives.

Pings go out from one background thread through a small bounded queue, each with a timeout,
so a slow or unreachable endpoint never delays a door decision; when the queue is full the
newest ping is dropped and counted.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

__all__ = ["HealthConfigError", "HealthSettings", "HealthPinger", "check_url", "parse_health"]

log = logging.getLogger(__name__)

QUEUE_SIZE = 16
MAX_MESSAGE_BYTES = 10_000


class HealthConfigError(ValueError):
    """The health ping URL or its settings are invalid."""


def check_url(url: object, source: str = "config") -> str:
    """Return ``url`` if it is an http(s) URL with a host; raise :class:`HealthConfigError` otherwise."""
    if not isinstance(url, str) or not url:
        raise HealthConfigError(f"{source}: health.url must be a URL like \"https://hc-ping.com/<uuid>\", got {url!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise HealthConfigError(f"{source}: health.url {url!r} must be an https:// (or http://) URL with a host name")
    return url.rstrip("/")


@dataclass(frozen=True)
class HealthSettings:
    """The ``[health]`` table: where to ping and how patiently."""

    url: str
    timeout: float = 10.0
    # Successful turns are pinged at most this often (seconds); failures always are.
    min_interval: float = 60.0


def parse_health(table: object, source: str = "config") -> HealthSettings | None:
    """Build :class:`HealthSettings` from the ``[health]`` table, or None when it is absent."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise HealthConfigError(f"{source}: setting health: must be a table ([health]) with url = \"https://…\"")
    known = {"url", "timeout", "min_interval"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise HealthConfigError(
            f"{source}: setting health.{unknown[0]}: unknown setting; valid settings here are {', '.join(sorted(known))}"
        )
    settings = {"url": check_url(table.get("url"), source)}
    for key, minimum, maximum in (("timeout", 0.5, 60.0), ("min_interval", 10.0, 86_400.0)):
        if key not in table:
            continue
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not minimum <= value <= maximum:
            raise HealthConfigError(
                f"{source}: setting health.{key}: must be a number of seconds from {minimum:g} to {maximum:g}, got {value!r}"
            )
        settings[key] = float(value)
    return HealthSettings(**settings)


class HealthPinger:
    """Sends start, success and fail pings in the background; every call returns at once."""

    def __init__(
        self,
        url: str,
        timeout: float = 10.0,
        min_interval: float = 60.0,
        ca_file: str | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self._url = check_url(url)
        self._timeout = timeout
        self._min_interval = min_interval
        self._monotonic = monotonic
        self._last_success: float | None = None
        self._last_kind: str | None = None
        self.dropped = 0
        self.failures = 0
        self.sent = 0

        self._session = requests.Session()
        # Proxy and CA variables from the environment must not redirect the pings.
        self._session.trust_env = False
        if ca_file:
            self._session.verify = ca_file
        self._queue: queue.Queue[tuple[str, str | None] | None] = queue.Queue(QUEUE_SIZE)
        self._thread = threading.Thread(target=self._work, name="health-pings", daemon=True)
        self._thread.start()

    def start(self, message: str | None = None) -> None:
        self._enqueue("start", message)

    def success(self, message: str | None = None) -> None:
        """Ping success, at most once per ``min_interval`` unless the last ping was not a success."""
        now = self._monotonic()
        recent = self._last_success is not None and now - self._last_success < self._min_interval
        if recent and self._last_kind == "success":
            return
        self._last_success = now
        self._enqueue("success", message)

    def fail(self, message: str) -> None:
        self._enqueue("fail", message)

    def _enqueue(self, kind: str, message: str | None) -> None:
        self._last_kind = kind
        try:
            self._queue.put_nowait((kind, message))
        except queue.Full:
            self.dropped += 1
            log.warning("health ping %s dropped: %d pings are still waiting to be sent", kind, QUEUE_SIZE)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            kind, message = item
            self._send(kind, message)

    def _send(self, kind: str, message: str | None) -> None:
        url = self._url if kind == "success" else f"{self._url}/{kind}"
        body = (message or "").encode("utf-8")[:MAX_MESSAGE_BYTES]
        try:
            response = self._session.post(url, data=body, timeout=self._timeout)
        except requests.RequestException as error:
            self.failures += 1
            log.warning("health ping %s failed: %s", kind, type(error).__name__)
            return
        if response.status_code >= 400:
            self.failures += 1
            log.warning("health ping %s failed: HTTP %d", kind, response.status_code)
            return
        self.sent += 1
        log.debug("health ping %s sent", kind)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the worker after the pings already queued, waiting at most ``timeout`` seconds."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        self._session.close()
