"""The lock daemon: reader -> decision -> strike, with update, push and watchdog loops beside it.

Threads:

- ``reader``: the nfcpy loop (:class:`lockclient.reader.CardReader`); every debounced tap is
  decided and handed to the door controller (:class:`lockclient.door.DoorController`), which
  energises the strike from this thread before anything is logged or spooled;
- ``door``: the door controller's input and timer loop (exit button, door sensor, relocking,
  office mode, LEDs and buzzer);
- ``update``: downloads and verifies bundles every ``poll_interval`` (backoff with jitter on
  failure; SIGHUP fetches at once) and persists the clock floor;
- ``push``: sends spooled statistics every ``push_interval`` (backoff on failure);
- ``watchdog``: notices a reader loop that stopped turning, and reports a system clock behind
  the floor and an expired bundle;
- ``sd-watchdog``: feeds systemd's watchdog (``WATCHDOG=1``) only while the reader, door and
  update loops turn.

SIGTERM and SIGINT stop every loop; the reader is closed and the strike locked on the way out.
A reader stalled for twice the watchdog period makes :meth:`LockDaemon.run` return
:data:`EXIT_STALLED`, so the service manager restarts the process (a thread blocked inside a
driver call cannot be stopped from Python).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

from lockclient import dsse
from lockclient.actuator import build_door_outputs
from lockclient.bundle import Bundle, Decision, decide, format_time
from lockclient.clock import Clock
from lockclient.config import Config
from lockclient.door import STATUS_COUNTERS, DoorController, Strike
from lockclient.feedback import OUTPUTS as FEEDBACK_OUTPUTS
from lockclient.feedback import Feedback
from lockclient.gpio import Gpio
from lockclient.health import HealthPinger
from lockclient.fetch import Backoff, FetchError, Fetcher, make_session
from lockclient.hwid import is_random_uid
from lockclient.push import Pusher, PushError
from lockclient.reader import CardReader, TagRead, short_hwid
from lockclient.spool import MAX_DETAIL, SPOOL_FILE, Spool
from lockclient.storage import Storage
from lockclient.systemd_notify import Notifier, Watchdog
from lockclient.update import Rejection, Updater

log = logging.getLogger(__name__)

EXIT_STALLED = 75  # EX_TEMPFAIL: restart me

class StartupError(Exception):
    """The daemon cannot start as configured; the message names what to install or change."""


NO_BUNDLE = Decision(False, "no valid bundle is stored yet: every tap is denied", "no-bundle")

SHUTDOWN_SECONDS = 10

# The door loop turns at least every 0.5 s; this much silence means it is stuck.
DOOR_LOOP_MAX_AGE = 30.0


@dataclass
class DoorClock:
    """The clock the door controller reads: monotonic for durations, trusted time for instants."""

    monotonic: Callable[[], float]
    time: Callable[[], float]


class LockDaemon:
    """One lock's daemon; ``frontend_factory``, ``output`` and ``gpio`` replace hardware in tests."""

    def __init__(
        self,
        config: Config,
        *,
        frontend_factory: Callable[[], object] | None = None,
        output: Strike | None = None,
        gpio: Gpio | None = None,
        system_time: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.monotonic = monotonic
        self.stop_event = threading.Event()
        self.exit_code = 0
        self.started = monotonic()
        self.decisions: list[tuple[str, Decision]] = []  # last few (shortened hwid, decision)
        self._frontend_factory = frontend_factory
        self._output = output
        self._gpio = gpio
        self._state_lock = threading.Lock()
        self._wake_update = threading.Event()
        self._threads: list[threading.Thread] = []
        self._expired_reported = False
        self._stall_reported = False
        self._stall_message: str | None = None
        self._clock_behind = False
        self._update_turn = monotonic()
        self._door_bundle: Bundle | None = None
        self._door_bundle_lock = threading.Lock()

        self.root_keys = {}
        for encoded in config.root_keys:
            public_key = dsse.load_public_key(encoded)
            self.root_keys[dsse.key_id(public_key)] = public_key
        self.storage = Storage(config.state_dir, config.lock, self.root_keys)
        self.clock = Clock(system_time=system_time, monotonic=monotonic)
        self.spool: Spool | None = None
        self.strike: Strike | None = None
        self.gpio: Gpio | None = None
        self.door: DoorController | None = None
        self.health: HealthPinger | None = None
        self.notifier = Notifier()
        self.reader: CardReader | None = None
        self.updater: Updater | None = None
        self.pusher: Pusher | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Load stored state and start every loop; returns once the threads run."""
        config = self.config
        log.info("lockclient starting for lock %s (state in %s)", config.lock, config.state_dir)
        if self._frontend_factory is None:
            try:
                import nfc  # noqa: F401  (only checked here; the reader imports it when it opens)
            except ImportError:
                raise StartupError(
                    "nfcpy is not installed, so no card can be read; install the device extra: "
                    "pip install 'doorlock[device]'"
                ) from None
        try:
            config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            raise StartupError(f"cannot create state_dir {config.state_dir}: {error.strerror}") from None

        self.storage.load(self.clock.system_time())
        self.clock = Clock(
            floor=self.storage.clock_floor, system_time=self.clock.system_time, monotonic=self.monotonic,
        )
        self.clock.observe_stored(*self.storage.stored_documents(), self.storage.bundle_accepted_at)
        if config.keep_expired:
            log.warning("expired_policy is keep-last-bundle: an expired bundle keeps opening for everyone in it")

        self.spool = Spool(config.state_dir / SPOOL_FILE, config.spool.max_items, config.spool.batch_size)
        self._start_door()
        if config.device.health is not None:
            health = config.device.health
            self.health = HealthPinger(health.url, timeout=health.timeout, min_interval=health.min_interval)
            self.health.start(f"lock {config.lock}")

        fetcher = Fetcher(make_session(config.ca_file, config.client_cert, config.client_key), config.fetch)
        self.updater = Updater(
            fetcher, self.storage, self.clock, self.root_keys, config.lock,
            config.bundle_url, config.signers_url, on_reject=self._on_reject,
            max_validity_days=config.max_bundle_validity_days,
        )
        if config.receiver_url:
            session = make_session(config.ca_file, config.client_cert, config.client_key)
            self.pusher = Pusher(session, config.receiver_url, self.spool,
                                 (config.fetch.connect_timeout, config.fetch.read_timeout))
        else:
            log.warning("no receiver_url configured: statistics are spooled but never pushed")

        self.reader = CardReader(
            config.reader.path, self.handle_tag, targets=config.reader.targets,
            debounce_seconds=config.reader.debounce_seconds, frontend_factory=self._frontend_factory,
            monotonic=self.monotonic,
        )
        self._spawn("reader", self.reader.run, self.stop_event)
        self._spawn("door", self.door.run_inputs, self.gpio, self.stop_event)
        self._spawn("update", self._update_loop)
        if self.pusher is not None:
            self._spawn("push", self._push_loop)
        self._spawn("watchdog", self._watchdog_loop)
        self._start_systemd_watchdog()
        self.notifier.ready(f"lock {config.lock}, bundle version {self.bundle.version if self.bundle else 'none'}")

    def _start_door(self) -> None:
        config = self.config
        self.strike, self.gpio = build_door_outputs(config.actuator, list(config.device.lines), self._gpio, self._output)
        feedback = None
        if self.gpio is not None and any(self.gpio.has(name) for name in FEEDBACK_OUTPUTS):
            feedback = Feedback(self.gpio, self._door_clock(), config.device.patterns)
        self.door = DoorController(
            self.strike, self._door_clock(), config.device.door, gpio=self.gpio,
            input_lines=list(config.device.inputs), feedback=feedback, on_event=self._event,
        )
        self._sync_door_bundle(self.bundle)

    def _sync_door_bundle(self, bundle: Bundle | None) -> None:
        """Give the door controller the bundle the decision used (unlock time, office mode)."""
        with self._door_bundle_lock:
            if bundle is not self._door_bundle:
                self._door_bundle = bundle
                self.door.set_bundle(bundle)

    def _door_clock(self) -> DoorClock:
        return DoorClock(monotonic=self.monotonic, time=self.clock.now)

    def _start_systemd_watchdog(self) -> None:
        watchdog = Watchdog(self.notifier, self.monotonic)
        if watchdog.interval() is None:
            return
        fetch = self.config.fetch
        update_max_age = max(self.config.poll_interval, fetch.backoff_max) + 2 * fetch.deadline + 60
        watchdog.register("reader", self.config.reader.watchdog_seconds, lambda: self.reader.last_turn)
        watchdog.register("door", DOOR_LOOP_MAX_AGE, lambda: self.door.last_turn)
        watchdog.register("update", update_max_age, lambda: self._update_turn)
        self._spawn("sd-watchdog", watchdog.run, self.stop_event)

    def _spawn(self, name: str, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def request_stop(self, exit_code: int = 0) -> None:
        if not self.stop_event.is_set():
            self.exit_code = exit_code
            self.stop_event.set()
            self._wake_update.set()

    def fetch_now(self) -> None:
        """Start an update round at once instead of after the poll interval (SIGHUP)."""
        self._wake_update.set()

    def shutdown(self) -> None:
        """Lock the strike, stop all loops, close the reader and GPIO, persist the clock floor."""
        self.request_stop(self.exit_code)
        # The strike is locked first: a reader thread stuck in a driver call must not keep the
        # door open while the threads are joined.
        if self.door is not None:
            self.door.shutdown()
        self.notifier.stopping()

        # One deadline for all threads, well inside systemd's stop timeout of the shipped unit.
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        for thread in self._threads:
            thread.join(timeout=max(deadline - time.monotonic(), 0.0))
            if thread.is_alive():
                log.error("thread %s did not stop within %d s; exiting without it", thread.name, SHUTDOWN_SECONDS)
        self._threads = []

        for closable in (self.strike, self.gpio):
            close = getattr(closable, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as error:  # the rest of the shutdown must still happen
                    log.error("closing %s failed: %s", type(closable).__name__, error)
        if self.health is not None:
            self.health.close()
        # The update thread holds this lock during a download; do not wait out its deadline.
        if self._state_lock.acquire(timeout=2.0):
            try:
                self._persist_floor()
            finally:
                self._state_lock.release()
        else:
            log.warning("a download is still running: the clock floor is not saved at this shutdown")
        if self.spool is not None:
            self.spool.close()
        log.info("lockclient stopped (exit code %d)", self.exit_code)

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or a stalled reader); return the process exit code."""
        def on_signal(number, _frame):
            log.info("received %s, stopping", signal.Signals(number).name)
            self.request_stop(0)

        def on_hangup(_number, _frame):
            log.info("received SIGHUP, fetching the bundle now")
            self.fetch_now()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, on_hangup)
        # A CPU-bound thread (verifying a large bundle) holds the GIL for up to the switch
        # interval before the reader thread gets it; 1 ms instead of Python's 5 ms default
        # bounds that delay for a tap.
        sys.setswitchinterval(0.001)
        try:
            self.start()
            while not self.stop_event.wait(1.0):
                pass
        finally:
            self.shutdown()
        return self.exit_code

    # -- deciding --------------------------------------------------------------------------

    @property
    def bundle(self) -> Bundle | None:
        stored = self.storage.bundle
        return stored.document if stored is not None else None

    def decide(self, hwid: str, instant: float | None = None) -> Decision:
        bundle = self.bundle
        if bundle is None:
            return NO_BUNDLE
        return decide(bundle, hwid, self.clock.now() if instant is None else instant, self.config.keep_expired)

    def handle_tag(self, read: TagRead) -> Decision:
        """Decide one tap and act on it at the door; then log and spool it."""
        bundle = self.bundle
        now = self.clock.now()
        decision = NO_BUNDLE if bundle is None else decide(bundle, read.hwid, now, self.config.keep_expired)
        self._sync_door_bundle(bundle)
        self.door.tap(read.hwid, decision)

        log.info("tap %s: %s (%s)", short_hwid(read.hwid), "open" if decision.allowed else "denied", decision.code)
        log.debug("tap %s: %s", read.hwid, decision.reason)
        self.decisions = (self.decisions + [(short_hwid(read.hwid), decision)])[-20:]
        if bundle is not None:
            self._record_statistics(bundle, read, now)
        return decision

    def _record_statistics(self, bundle: Bundle, read: TagRead, now: float) -> None:
        known = read.hwid in bundle.keys or read.hwid in bundle.break_glass or read.hwid in bundle.office_mode
        try:
            if known:
                self.spool.record_last_seen(read.hwid, now, bundle.last_seen_precision)
            elif not is_random_uid(read.raw):
                self.spool.record_unknown(read.hwid, now, read.tag_type, read.atqa, read.sak)
        except Exception as error:  # a full or broken disk must not stop the door
            log.error("spooling statistics for tap %s failed: %s", short_hwid(read.hwid), error)

    def _event(self, kind: str, at: float, detail: str | None) -> None:
        try:
            self.spool.record_event(kind, at, detail)
        except Exception as error:
            log.error("spooling event %s failed: %s", kind, error)

    # -- loops -----------------------------------------------------------------------------

    def _update_loop(self) -> None:
        backoff = Backoff(self.config.fetch.backoff_initial, self.config.fetch.backoff_max)
        while not self.stop_event.is_set():
            self._update_turn = self.monotonic()
            with self._state_lock:
                try:
                    outcome = self.updater.run_once()
                except FetchError as error:
                    delay = backoff.next_delay()
                    result = f"failed: {error.reason}"
                    log.warning("fetching the bundle failed (%s): %s; retrying in %.1f s", error.reason, error, delay)
                    if self.health is not None:
                        self.health.fail(f"bundle fetch failed: {error.reason}")
                except Exception as error:  # a bug or a full disk must not end the update loop
                    delay = backoff.next_delay()
                    result = f"failed: {type(error).__name__}"
                    log.exception("update round failed unexpectedly; retrying in %.1f s", delay)
                else:
                    backoff.reset()
                    delay = self.config.poll_interval
                    result = "updated" if outcome.bundle_updated else "unchanged"
                    if outcome.rejections:
                        result = "rejected"
                    if outcome.bundle_updated:
                        self._sync_door_bundle(self.bundle)
                    self._report_health(outcome.rejections)
                self.storage.state["last_fetch"] = {"at": format_time(self.clock.now()), "result": result}
                self._persist_floor()
            self._wake_update.wait(delay)
            self._wake_update.clear()

    def _report_health(self, rejections=()) -> None:
        if self.health is None:
            return
        bundle = self.bundle
        if not self.reader.healthy:
            self.health.fail(f"reader: {self.reader.last_error}")
        elif bundle is None:
            self.health.fail("no valid bundle")
        elif bundle.is_expired(self.clock.now()):
            self.health.fail(f"bundle version {bundle.version} expired at {format_time(bundle.expires_at)}")
        elif rejections:
            self.health.fail(f"bundle rejected: {rejections[-1].kind}: {rejections[-1].reason}")
        else:
            self.health.success(f"bundle version {self.bundle.version}")

    def _persist_floor(self) -> None:
        bundle = self.bundle
        floor = self.clock.advance_floor(bundle.expires_at if bundle is not None else None)
        self.storage.state["clock_floor"] = int(floor)
        try:
            self.storage.save_state()
        except OSError as error:
            log.error("saving the state file failed: %s", error)

    def _push_loop(self) -> None:
        backoff = Backoff(self.config.fetch.backoff_initial, self.config.fetch.backoff_max)
        delay = self.config.push_interval
        while not self.stop_event.wait(delay):
            try:
                report = self.pusher.push_all(self.clock.now, self.status_snapshot)
            except PushError as error:
                delay = backoff.next_delay()
                log.warning("pushing statistics failed: %s; retrying in %.1f s", error, delay)
                continue
            except Exception:  # a bug here must not end the loop: statistics stay spooled
                delay = backoff.next_delay()
                log.exception("pushing statistics failed unexpectedly; retrying in %.0f s", delay)
                continue
            backoff.reset()
            delay = self.config.push_interval
            if report.rejected:
                log.warning("statistics items lost because the receiver rejected their batch: %s", report.rejected)

    def _watchdog_loop(self) -> None:
        while not self.stop_event.wait(1.0):
            try:
                self._watch_once()
            except Exception:  # the loop that notices a stalled reader must itself survive
                log.exception("watchdog check failed")

    def _watch_once(self) -> None:
        self._check_reader()
        self.door.set_reader_healthy(self.reader.healthy)
        now = self.clock.now()
        behind = self.clock.behind_floor()
        if behind and not self._clock_behind:
            self._event("clock-behind-floor", now, f"system clock {format_time(self.clock.system_time())}")
        self._clock_behind = behind
        self._check_expiry(now)

    def _check_reader(self) -> None:
        stalled_for = self.monotonic() - self.reader.last_turn
        limit = self.config.reader.watchdog_seconds
        if stalled_for <= limit:
            if self._stall_reported:
                self._stall_reported = False
                log.warning("reader loop on %s turns again", self.config.reader.path)
                if self.reader.last_error == self._stall_message:
                    # Nothing else went wrong since: the stall was the only reason to be unhealthy.
                    self.reader.healthy = True
                    self.reader.last_error = None
            return
        if not self._stall_reported:
            self._stall_reported = True
            self.reader.healthy = False
            self._stall_message = f"reader loop has not turned for {stalled_for:.0f} s"
            self.reader.last_error = self._stall_message
            log.critical("reader loop on %s has not turned for %.0f s", self.config.reader.path, stalled_for)
            self._event("reader-stalled", self.clock.now(), self.reader.last_error)
        if stalled_for > 2 * limit:
            log.critical("reader still stalled after %.0f s: exiting so the service manager restarts lockclient",
                         stalled_for)
            self.request_stop(EXIT_STALLED)

    def _check_expiry(self, now: float) -> None:
        bundle = self.bundle
        expired = bundle is not None and bundle.is_expired(now)
        if expired and not self._expired_reported:
            if self.config.keep_expired:
                log.warning("bundle version %d expired at %s and is STILL USED for all keys (keep-last-bundle)",
                            bundle.version, format_time(bundle.expires_at))
            else:
                log.warning("bundle version %d expired at %s: only break-glass keys open",
                            bundle.version, format_time(bundle.expires_at))
            self._event("bundle-expired", now, f"version {bundle.version}, policy {self.config.expired_policy}")
        self._expired_reported = expired

    # -- reporting -------------------------------------------------------------------------

    def _on_reject(self, rejection: Rejection) -> None:
        self.storage.state["last_rejected"] = {
            "kind": rejection.kind, "at": format_time(rejection.at), "reason": rejection.reason,
            "message": rejection.message, "version": rejection.version,
        }
        self._event("bundle-rejected", rejection.at, f"{rejection.kind}: {rejection.reason}: {rejection.message}")

    def status_snapshot(self) -> dict:
        """Return the status record for the receiver (without events and spool counters).

        ``counters`` count since this daemon started, ``uptime`` seconds ago, so a restart sets
        them to zero. Each exit-button press, forced door and held-open door is also an
        event, spooled on disk, so a restart loses none of those.
        """
        bundle = self.bundle
        rejected = self.storage.state.get("last_rejected")
        reader = self.reader
        return {
            "bundle_version": bundle.version if bundle else None,
            "bundle_sha256": bundle.sha256 if bundle else None,
            "bundle_expires_at": format_time(self.clock.effective_expiry(bundle.expires_at)) if bundle else None,
            "clock": format_time(self.clock.system_time()),
            "clock_behind_floor": self.clock.behind_floor(),
            "uptime": int(self.monotonic() - self.started),
            "reader": {
                "healthy": bool(reader and reader.healthy),
                "last_error": _capped(reader.last_error) if reader else None,
            },
            "last_rejected_bundle": (
                {"at": rejected["at"],
                 "reason": _capped(f"{rejected['kind']}: {rejected['reason']}: {rejected['message']}"),
                 "version": rejected.get("version")}
                if isinstance(rejected, dict) else None
            ),
            "counters": self.door.counts() if self.door is not None else dict.fromkeys(STATUS_COUNTERS, 0),
        }


def _capped(text: str | None) -> str | None:
    """Shorten a text to what the receiver's status schema accepts."""
    if text is None or len(text) <= MAX_DETAIL:
        return text
    return text[:MAX_DETAIL - 1] + "…"
