"""The card reader loop on nfcpy's ``ContactlessFrontend``, built to run unattended for weeks.

Failure modes it survives (observed with nfcpy 1.0.4 on PN532 and RC-S380 readers):

- opening fails (ENODEV, EBUSY, permissions): retried with exponential backoff;
- ``connect()`` returns False (I/O error, or a swallowed Ctrl-C): the reader is closed and
  reopened;
- ``TagCommandError`` / ``CommunicationError`` while activating or reading a tag: logged, the
  loop goes on;
- SIGTERM/SIGINT: the daemon sets the stop event; the reader is closed in ``finally``. nfcpy
  consults the ``terminate`` callback of ``connect()`` only between sense rounds, and a round
  senses every target ``iterations`` times, each target up to the driver's timeout (1 s on the
  udp driver when no card responds). So each ``connect()`` here senses a single technology once
  and ``terminate`` ends it right after: a stop waits for at most one sense;
- the same card reported many times a second (``on-connect`` returns False, so nfcpy reports
  a resting card again on every poll): a UID triggers again only after it has been away for
  ``debounce_seconds``;
- a hung driver: every turn of the loop records a heartbeat (:attr:`CardReader.last_turn`) that
  the daemon's watchdog checks.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from lockclient.fetch import Backoff
from lockclient.hwid import format_hwid

log = logging.getLogger(__name__)

# Pause after a round through all targets that found no card, so that an idle reader does not
# keep the RF field busy. A stop interrupts the pause.
SENSE_INTERVAL = 0.2

# After a tag was reported, wait this long before polling again, so a card resting on the
# reader does not keep a core busy.
PAUSE_AFTER_TAG = 0.1


def short_hwid(hwid: str) -> str:
    """Return a shortened hardware id for INFO logs: first and last byte only."""
    parts = hwid.split(":")
    if len(parts) <= 2:
        return hwid
    return f"{parts[0]}:…:{parts[-1]}"


@dataclass(frozen=True)
class TagRead:
    """One debounced card tap as the reader saw it."""

    hwid: str
    raw: bytes
    tag_type: str | None
    atqa: str | None
    sak: str | None
    at: float  # Unix seconds (system clock; the daemon applies the trusted clock)


def describe_tag(tag) -> TagRead:
    """Turn an nfcpy tag into a :class:`TagRead`; ATQA and SAK exist for type A targets only."""
    raw = bytes(tag.identifier)
    target = getattr(tag, "target", None)
    sens_res = getattr(target, "sens_res", None)
    sel_res = getattr(target, "sel_res", None)
    return TagRead(
        hwid=format_hwid(raw),
        raw=raw,
        tag_type=getattr(tag, "type", None) or type(tag).__name__,
        atqa=bytes(sens_res).hex() if sens_res else None,
        sak=bytes(sel_res).hex() if sel_res else None,
        at=time.time(),
    )


class CardReader:
    """Read cards until stopped; call ``on_tag`` once per debounced tap."""

    def __init__(
        self,
        path: str,
        on_tag: Callable[[TagRead], None],
        targets: tuple[str, ...] = ("106A", "106B", "212F"),
        debounce_seconds: float = 1.0,
        reopen_initial: float = 1.0,
        reopen_max: float = 60.0,
        frontend_factory: Callable[[], object] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.path = path
        self.on_tag = on_tag
        self.targets = list(targets)
        self.debounce_seconds = debounce_seconds
        self.backoff = Backoff(reopen_initial, reopen_max)
        self._unsupported: set[str] = set()
        self.frontend_factory = frontend_factory or _nfcpy_frontend
        self.monotonic = monotonic
        self.last_turn = monotonic()
        self.healthy = False
        self.last_error: str | None = None
        self.opened_count = 0
        self.sightings = 0  # tags reported by nfcpy, before debouncing
        self._last_sighting: dict[str, float] = {}

    def beat(self) -> None:
        self.last_turn = self.monotonic()

    def run(self, stop: threading.Event) -> None:
        """Open, read, and reopen the reader until ``stop`` is set."""
        log.info("reader loop starting on %s", self.path)
        while not stop.is_set():
            self.beat()
            frontend = None
            try:
                frontend = self._open()
                self._read_until_failure(frontend, stop)
            except Exception as error:  # any driver failure: close, back off, reopen
                self._fail(f"{type(error).__name__}: {error}")
            finally:
                if frontend is not None:
                    self._close(frontend)
            if stop.is_set():
                break
            delay = self.backoff.next_delay()
            log.warning("reopening reader %s in %.1f s (attempt %d)", self.path, delay, self.backoff.failures)
            self._wait(stop, delay)
        log.info("reader loop stopped")

    def _wait(self, stop: threading.Event, delay: float) -> None:
        """Wait out a reopen delay; the loop is alive meanwhile, so the heartbeat goes on."""
        deadline = self.monotonic() + delay
        while not stop.is_set() and (remaining := deadline - self.monotonic()) > 0:
            stop.wait(min(remaining, 1.0))
            self.beat()

    def _open(self):
        frontend = self.frontend_factory()
        if not frontend.open(self.path):
            raise OSError(f"no reader found on path {self.path}")
        self.opened_count += 1
        self.healthy = True
        self.last_error = None
        self.backoff.reset()
        log.info("reader opened on %s", self.path)
        return frontend

    def _read_until_failure(self, frontend, stop: threading.Event) -> None:
        import nfc.clf
        import nfc.tag

        position = 0
        while not stop.is_set():
            targets = [target for target in self.targets if target not in self._unsupported]
            if not targets:
                raise OSError(f"the reader supports none of the configured targets {', '.join(self.targets)}")
            target = targets[position % len(targets)]
            try:
                result = frontend.connect(rdwr=self._options(target), terminate=self._one_round(stop))
            except (nfc.tag.TagCommandError, nfc.clf.CommunicationError) as error:
                # Activation of a half-present card failed; the reader itself is fine.
                log.info("tag activation failed: %s", error)
                continue
            self.beat()
            if result is False:
                if self._unsupported_target(frontend, target):
                    continue
                self._fail("connect() returned False (reader I/O error)")
                return
            if result is not None and result is not True:
                # A card responded: sense the same technology next, so a resting card is seen
                # again at once and stays debounced.
                stop.wait(PAUSE_AFTER_TAG)
                continue
            position += 1
            if position % len(targets) == 0:
                stop.wait(SENSE_INTERVAL)

    def _options(self, target: str) -> dict:
        return {
            "targets": [target],
            "on-connect": self._on_connect,
            "iterations": 1,
            "beep-on-connect": False,
        }

    def _one_round(self, stop: threading.Event) -> Callable[[], bool]:
        """Return a terminate callback that lets ``connect()`` sense once, or not at all after a stop.

        nfcpy calls it before each sense round and after a round that found nothing.
        """
        calls = 0

        def terminate() -> bool:
            nonlocal calls
            calls += 1
            self.beat()
            return stop.is_set() or calls > 1

        return terminate

    def _unsupported_target(self, frontend, target: str) -> bool:
        """Check whether ``connect()`` returned False because the driver cannot sense ``target``.

        With a single target nfcpy reports an unsupported technology the same way as an I/O
        error, so this senses ``target`` directly to distinguish the two.
        """
        import nfc.clf

        try:
            frontend.sense(nfc.clf.RemoteTarget(target), iterations=1)
        except nfc.clf.UnsupportedTargetError:
            log.warning("reader %s cannot sense %s targets; polling the other configured targets only",
                        self.path, target)
            self._unsupported.add(target)
            return True
        except Exception:  # the I/O error shows up here too: the caller reopens the reader
            return False
        return False

    def _on_connect(self, tag) -> bool:
        import nfc.clf
        import nfc.tag

        self.beat()
        try:
            read = describe_tag(tag)
        except (nfc.tag.TagCommandError, nfc.clf.CommunicationError) as error:
            log.info("reading the tag failed: %s", error)
            return False
        self.sightings += 1
        if self._debounced(read.hwid):
            return False
        try:
            self.on_tag(read)
        except Exception as error:  # a bug in the decision path must not stop the reader
            # The traceback goes to DEBUG only: its text may hold the full UID.
            log.error("handling tap of %s failed: %s", short_hwid(read.hwid),
                      _without_uid(f"{type(error).__name__}: {error}", read))
            log.debug("handling tap of %s failed", read.hwid, exc_info=True)
        return False

    def _debounced(self, hwid: str) -> bool:
        """Record a sighting of ``hwid`` and return True when it was seen within the debounce period."""
        now = self.monotonic()
        previous = self._last_sighting.get(hwid)
        self._last_sighting[hwid] = now
        if len(self._last_sighting) > 256:
            cutoff = now - self.debounce_seconds
            self._last_sighting = {h: t for h, t in self._last_sighting.items() if t >= cutoff}
        return previous is not None and now - previous < self.debounce_seconds

    def _fail(self, message: str) -> None:
        self.healthy = False
        self.last_error = message
        log.error("reader %s failed: %s", self.path, message)

    def _close(self, frontend) -> None:
        try:
            frontend.close()
        except Exception as error:
            log.warning("closing reader %s failed: %s", self.path, error)


def _without_uid(text: str, read: TagRead) -> str:
    """Replace the full UID in ``text`` (colon, plain hex and upper-case forms) by its short form."""
    for form in {read.hwid, read.hwid.upper(), read.raw.hex(), read.raw.hex().upper()}:
        text = text.replace(form, short_hwid(read.hwid))
    return text


def _nfcpy_frontend():
    import nfc

    return nfc.ContactlessFrontend()
