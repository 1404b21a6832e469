"""Tell systemd how the daemon is doing (sd_notify protocol), without extra dependencies.

systemd passes ``NOTIFY_SOCKET`` (a path, or an abstract socket name starting with ``@``) to a
``Type=notify`` service; the service sends newline-separated ``KEY=VALUE`` datagrams to it:
``READY=1`` once started, ``WATCHDOG=1`` as a keep-alive within ``WatchdogSec``, ``STOPPING=1``
when it shuts down and ``STATUS=…`` as free text for ``systemctl status``.

:class:`Watchdog` feeds ``WATCHDOG=1`` only while every registered loop (the card reader loop
and the bundle fetch loop) has turned recently, so a hung reader stops the keep-alives and
systemd restarts the service.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "Watchdog"]

log = logging.getLogger(__name__)


class Notifier:
    """Sends sd_notify messages; does nothing when not started by systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]
        elif address and not address.startswith("/"):
            log.warning("NOTIFY_SOCKET %r is neither a path nor an abstract socket: notifications are off", address)
            address = ""
        self.address = address or None
        self.watchdog_seconds = self._watchdog_seconds(environ)

    @staticmethod
    def _watchdog_seconds(environ: Mapping[str, str]) -> float | None:
        usec = environ.get("WATCHDOG_USEC")
        if not usec:
            return None
        pid = environ.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            # The watchdog is meant for another process (for example our parent).
            return None
        try:
            value = int(usec)
        except ValueError:
            log.warning("WATCHDOG_USEC %r is not a number of microseconds: watchdog off", usec)
            return None
        return value / 1_000_000 if value > 0 else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; return whether it was delivered."""
        if self.address is None:
            return False
        message = "\n".join(assignments).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never wait: a receiver whose queue is full (systemd busy or re-executing) must
                # not hold up the caller, which may be the shutdown that locks the strike.
                sock.setblocking(False)
                sock.connect(self.address)
                sock.send(message)
        except OSError as error:
            # Notifications are advisory: a missing socket must not stop the door.
            log.warning("sd_notify %s failed: %s", assignments[0].split("=")[0] if assignments else "", error)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")


class Watchdog:
    """Feeds the systemd watchdog only while every registered loop keeps turning.

    Each loop calls :meth:`beat` whenever it completes a turn; :meth:`feed` (called from a
    timer, see :meth:`run`) sends ``WATCHDOG=1`` only if every loop beat within its own
    allowed age. A loop that has never beaten counts as stale once its age limit has passed
    since registration.
    """

    def __init__(self, notifier: Notifier, monotonic: Callable[[], float] = time.monotonic):
        self._notifier = notifier
        self._monotonic = monotonic
        self._limits: dict[str, float] = {}
        self._beats: dict[str, float] = {}
        self._sources: dict[str, Callable[[], float]] = {}
        self._lock = threading.Lock()
        self._stale_reported: set[str] = set()

    def register(self, name: str, max_age: float, last_turn: Callable[[], float] | None = None) -> None:
        """Watch loop ``name``; ``last_turn`` (optional) returns the monotonic time of its last turn.

        With ``last_turn`` the loop needs no :meth:`beat` calls: the watchdog reads the time itself.
        """
        with self._lock:
            self._limits[name] = max_age
            self._beats[name] = self._monotonic()
            if last_turn is not None:
                self._sources[name] = last_turn

    def beat(self, name: str) -> None:
        with self._lock:
            self._beats[name] = self._monotonic()
            self._stale_reported.discard(name)

    def stale(self) -> list[str]:
        """Return the loops that have not turned within their limit."""
        now = self._monotonic()
        with self._lock:
            for name, source in self._sources.items():
                self._beats[name] = max(self._beats[name], source())
            return sorted(name for name, limit in self._limits.items() if now - self._beats[name] > limit)

    def feed(self) -> bool:
        """Send WATCHDOG=1 if every loop is alive; return whether it was sent."""
        stale = self.stale()
        if stale:
            newly = [name for name in stale if name not in self._stale_reported]
            if newly:
                log.error("watchdog not fed: loop(s) %s stopped turning; systemd will restart the service", ", ".join(newly))
                self._stale_reported.update(newly)
            return False
        return self._notifier.watchdog()

    def interval(self) -> float | None:
        """Seconds between feeds: half the systemd watchdog time, or None without a watchdog."""
        if self._notifier.watchdog_seconds is None:
            return None
        return self._notifier.watchdog_seconds / 2

    def run(self, stop: threading.Event) -> None:
        """Feed at :meth:`interval` until ``stop`` is set (for a daemon thread)."""
        interval = self.interval()
        if interval is None:
            return
        while not stop.wait(interval):
            self.feed()
