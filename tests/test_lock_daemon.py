"""The lock daemon as a whole: taps to strike, bundles, statistics, shutdown, watchdog, CLI."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from lockclient.actuator import LogOutput
from lockclient.bundle import format_time
from lockclient.cli import main
from lockclient.clock import Clock
from lockclient.config import ReaderSettings
from lockclient.config import load_config
from lockclient.daemon import EXIT_STALLED, LockDaemon
from lockclient.gpio import FakeGpio
from lockclient.reader import TagRead
from lockclient.spool import SPOOL_FILE, Spool
from receiver import queries
from tests.bundle_factory import DAY, FOREVER, HOUR, NOW
from tests.lock_environment import BUNDLE_PATH, SIGNERS_PATH, IdleFrontend, LockEnvironment, write_config
from tests.receiver_harness import ReceiverSite
from tests.test_lock_reader import TYPE2_UID, Emulator
from compiler import pki
from compiler.cli import main as doorlock
from tests.tls_fixtures import TestPki, static, status_only

ROOT = Path(__file__).resolve().parent.parent
MEMBER = "04:a2:3b:4c:5d:6e:7f"
STRANGER = "04:99:88:77:66:55:44"
RESCUE = "04:11:22:33:44:55:66"
FAST = {"unlock_seconds": 0.3}

# An exit button and a door sensor on FakeGpio lines; the strike stays the log actuator.
DOOR_CONFIG = """
[door_sensor]
line = 22

[gpio]
exit_button = { line = 27, active_low = true, bias = "pull-up", debounce_ms = 10 }

[door]
held_open_seconds = 30
"""


class HungFrontend(IdleFrontend):
    """A driver stuck in a call that never returns, as a wedged PN532 can be."""

    def __init__(self):
        self.release = threading.Event()

    def connect(self, rdwr, terminate):
        self.release.wait(30)
        return None


def tap(hwid: str) -> TagRead:
    return TagRead(hwid=hwid, raw=bytes.fromhex(hwid.replace(":", "")), tag_type="Type2Tag",
                   atqa="4400", sak="00", at=time.time())


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def env(tmp_path):
    environment = LockEnvironment.create(tmp_path)
    environment.server.routes[SIGNERS_PATH] = static(environment.trust.signers())
    environment.server.routes[BUNDLE_PATH] = static(environment.trust.bundle(
        keys={MEMBER: FOREVER}, break_glass=(RESCUE,), settings=FAST,
    ))
    yield environment
    environment.close()


@pytest.fixture
def running(env):
    daemons = []

    def start(config=None, frontend=IdleFrontend, **options) -> tuple[LockDaemon, LogOutput]:
        output = LogOutput()
        daemon = LockDaemon(config or env.config, output=output, frontend_factory=frontend, **options)
        daemon.start()
        daemons.append(daemon)
        return daemon, output

    yield start
    for daemon in daemons:
        daemon.shutdown()


def test_granted_tap_energises_then_releases(running):
    daemon, output = running()
    wait_for(lambda: daemon.bundle is not None)

    decision = daemon.handle_tag(tap(MEMBER))
    wait_for(lambda: len(output.changes) == 2)

    assert decision.code == "granted"
    assert [active for active, _ in output.changes] == [True, False]
    held = output.changes[1][1] - output.changes[0][1]
    assert held >= 0.3


def test_denied_tap_never_energises(running):
    daemon, output = running()
    wait_for(lambda: daemon.bundle is not None)

    decision = daemon.handle_tag(tap(STRANGER))
    time.sleep(0.1)

    assert decision.code == "unknown-key"
    assert output.changes == []
    assert daemon.spool.sizes()["unknown_keys"] == 1


def test_no_bundle_denies_everyone(env, running):
    env.server.routes[BUNDLE_PATH] = static(b"not a bundle")
    daemon, output = running()
    wait_for(lambda: daemon.storage.state.get("last_fetch"))

    decision = daemon.handle_tag(tap(MEMBER))

    assert decision.code == "no-bundle"
    assert output.changes == []


def test_expired_bundle_opens_only_break_glass(env, running):
    clock = {"now": time.time()}
    daemon, output = running(system_time=lambda: clock["now"])
    wait_for(lambda: daemon.bundle is not None)
    clock["now"] = daemon.bundle.expires_at + DAY

    member = daemon.handle_tag(tap(MEMBER))
    rescue = daemon.handle_tag(tap(RESCUE))

    assert member.code == "expired"
    assert rescue.code == "break-glass"
    assert [active for active, _ in output.changes][:1] == [True]


def test_keep_last_bundle_policy_keeps_opening(env, running):
    config = dataclasses.replace(env.config, expired_policy="keep-last-bundle")
    clock = {"now": time.time()}
    daemon, _ = running(config=config, system_time=lambda: clock["now"])
    wait_for(lambda: daemon.bundle is not None)
    clock["now"] = daemon.bundle.expires_at + DAY

    assert daemon.handle_tag(tap(MEMBER)).allowed


def test_rejected_bundle_reported_and_current_kept(env, running):
    daemon, _ = running()
    wait_for(lambda: daemon.bundle is not None)
    env.server.routes[BUNDLE_PATH] = static(env.trust.bundle(lock="back-door", version=9, keys={STRANGER: FOREVER}))

    wait_for(lambda: daemon.storage.state.get("last_rejected"))
    status = daemon.status_snapshot()

    assert daemon.bundle.version == 1
    assert status["last_rejected_bundle"]["version"] == 9
    assert "wrong lock" in status["last_rejected_bundle"]["reason"]
    assert daemon.spool.sizes()["events"] >= 1


def test_bundle_valid_too_long_rejected_and_reported(env, running, caplog):
    caplog.set_level(logging.INFO)
    daemon, _ = running()
    wait_for(lambda: daemon.bundle is not None)
    env.server.routes[BUNDLE_PATH] = static(env.trust.bundle(
        version=2, keys={STRANGER: FOREVER}, expires_at=NOW + 400 * DAY, settings=FAST,
    ))

    wait_for(lambda: daemon.storage.state.get("last_rejected"))
    status = daemon.status_snapshot()
    logged = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]

    assert daemon.bundle.version == 1
    assert status["last_rejected_bundle"]["version"] == 2
    assert status["last_rejected_bundle"]["reason"].startswith(
        "bundle: validity too long: bundle version 2 is valid for 400.04 days")
    assert any("rejected downloaded bundle (version 2): validity too long" in line for line in logged)
    assert not daemon.handle_tag(tap(STRANGER)).allowed


def test_bundle_validity_limit_read_from_config(env, running):
    text = env.config.path.read_text().replace("poll_interval = 1\n", "poll_interval = 1\nmax_bundle_validity_days = 3\n")
    env.config.path.write_text(text)
    daemon, _ = running(config=load_config(env.config.path))  # the served bundle is valid for 7 days

    wait_for(lambda: daemon.storage.state.get("last_rejected"))

    assert daemon.bundle is None
    assert daemon.storage.state["last_rejected"]["reason"] == "validity too long"
    assert "more than the 3 days this lock accepts" in daemon.storage.state["last_rejected"]["message"]


def test_status_counts_since_start(env, running):
    daemon, _ = running()
    wait_for(lambda: daemon.bundle is not None)
    before = daemon.status_snapshot()["counters"]

    daemon.handle_tag(tap(MEMBER))
    daemon.handle_tag(tap(RESCUE))
    daemon.handle_tag(tap(STRANGER))

    assert before == {"exit_button": 0, "door_forced": 0, "door_held_open": 0, "granted": 0, "denied": 0}
    assert daemon.status_snapshot()["counters"] == {
        "exit_button": 0, "door_forced": 0, "door_held_open": 0, "granted": 2, "denied": 1}


def test_office_mode_double_tap_holds_door(env, running):
    office = [NOW - DAY, NOW + 30 * DAY]
    env.server.routes[BUNDLE_PATH] = static(env.trust.bundle(
        keys={MEMBER: FOREVER}, office_mode={MEMBER: office}, settings=FAST,
    ))
    daemon, output = running()
    wait_for(lambda: daemon.bundle is not None)

    daemon.handle_tag(tap(MEMBER))
    daemon.handle_tag(tap(MEMBER))
    time.sleep(0.6)  # longer than unlock_seconds: only the office-mode hold keeps it open
    held = output.active
    daemon.handle_tag(tap(MEMBER))
    daemon.handle_tag(tap(MEMBER))
    wait_for(lambda: not output.active)

    assert held
    assert not daemon.door.office_mode


def test_stalled_reader_exits_for_restart(env, running):
    reader = dataclasses.replace(env.config.reader, watchdog_seconds=0.3)
    config = dataclasses.replace(env.config, reader=reader)
    frontend = HungFrontend()
    daemon, _ = running(config=config, frontend=lambda: frontend)

    wait_for(daemon.stop_event.is_set)
    frontend.release.set()

    assert daemon.exit_code == EXIT_STALLED
    assert not daemon.reader.healthy


def test_reader_that_turns_again_is_healthy_again(env, running):
    reader = dataclasses.replace(env.config.reader, watchdog_seconds=60)
    config = dataclasses.replace(env.config, reader=reader)
    frontend = HungFrontend()
    clock = {"offset": 0.0}
    daemon, _ = running(config=config, frontend=lambda: frontend,
                        monotonic=lambda: time.monotonic() + clock["offset"])
    wait_for(lambda: daemon.reader.opened_count == 1)

    clock["offset"] = 90.0  # the driver call has hung for 90 s
    daemon._check_reader()
    stalled = (daemon.reader.healthy, daemon.reader.last_error)
    frontend.release.set()  # ... and then returns
    wait_for(lambda: daemon.monotonic() - daemon.reader.last_turn < 60)
    daemon._check_reader()

    assert stalled[0] is False
    assert "has not turned" in stalled[1]
    assert daemon.reader.healthy
    assert daemon.reader.last_error is None
    assert not daemon.stop_event.is_set()


def test_statistics_reach_receiver(tmp_path):
    site = ReceiverSite(tmp_path / "receiver", {"front-door": [MEMBER]})
    lock = site.locks["front-door"]
    server_cert, server_key = pki.issue_server(site.ca_dir, "127.0.0.1", tmp_path / "bundle-host")
    shared = TestPki(site.ca_certificate, server_cert, server_key, lock.certificate, lock.private_key, lock.sha256)
    environment = LockEnvironment.create(tmp_path / "lock", pki=shared, receiver_url=site.start())
    environment.server.routes[SIGNERS_PATH] = static(environment.trust.signers())
    environment.server.routes[BUNDLE_PATH] = static(environment.trust.bundle(keys={MEMBER: FOREVER}))
    daemon = LockDaemon(environment.config, output=LogOutput(), frontend_factory=IdleFrontend)
    try:
        daemon.start()
        wait_for(lambda: daemon.bundle is not None)
        daemon.handle_tag(tap(STRANGER))
        daemon.handle_tag(tap(MEMBER))
        wait_for(lambda: queries.unknown_keys(site.database), timeout=30)
        wait_for(lambda: any(row["lock"] == "front-door" and row.get("bundle_version") == 1
                             for row in queries.locks(site.database)), timeout=30)
    finally:
        daemon.shutdown()
        environment.close()
        site.stop()

    unknown = queries.unknown_keys(site.database)
    assert [row["hwid"] for row in unknown] == [STRANGER]
    assert unknown[0]["atqa"] == "4400"
    assert unknown[0]["count"] == 1
    assert daemon.spool is not None


def test_counters_and_rejection_reach_receiver_and_stats(tmp_path):
    site = ReceiverSite(tmp_path / "receiver", {"front-door": [MEMBER]})
    lock = site.locks["front-door"]
    server_cert, server_key = pki.issue_server(site.ca_dir, "127.0.0.1", tmp_path / "bundle-host")
    shared = TestPki(site.ca_certificate, server_cert, server_key, lock.certificate, lock.private_key, lock.sha256)
    environment = LockEnvironment.create(tmp_path / "lock", extra_config=DOOR_CONFIG, pki=shared,
                                         receiver_url=site.start())
    trust = environment.trust
    environment.server.routes[SIGNERS_PATH] = static(trust.signers())
    environment.server.routes[BUNDLE_PATH] = static(trust.bundle(keys={MEMBER: FOREVER}, settings=FAST))
    output = LogOutput()
    gpio = FakeGpio(list(environment.config.device.lines))
    shift = [0.0]  # moves the daemon's monotonic clock past the forced-door grace and held-open time
    daemon = LockDaemon(environment.config, output=output, gpio=gpio, frontend_factory=IdleFrontend,
                        monotonic=lambda: time.monotonic() + shift[0])
    expected = {"exit_button": 1, "door_forced": 1, "door_held_open": 1, "granted": 1, "denied": 1}

    def reported() -> dict | None:
        rows = [row for row in queries.locks(site.database) if row["lock"] == "front-door"]
        return rows[0] if rows and rows[0]["counters"] == expected and rows[0]["status"]["last_rejected_bundle"] else None

    try:
        daemon.start()
        wait_for(lambda: daemon.bundle is not None)
        daemon.handle_tag(tap(MEMBER))
        daemon.handle_tag(tap(STRANGER))
        gpio.inject("exit_button", True)
        wait_for(lambda: daemon.door.counts()["exit_button"] == 1)
        gpio.inject("exit_button", False)
        wait_for(lambda: not output.active)
        shift[0] += 10  # well past the 2 s in which a late push after relocking is not forced
        gpio.inject("door_sensor", True)
        wait_for(lambda: daemon.door.counts()["door_forced"] == 1)
        shift[0] += 40  # past held_open_seconds = 30
        wait_for(lambda: daemon.door.counts()["door_held_open"] == 1)
        gpio.inject("door_sensor", False)
        environment.server.routes[BUNDLE_PATH] = static(trust.bundle(
            version=2, keys={MEMBER: FOREVER}, expires_at=NOW + 90 * DAY, settings=FAST))
        wait_for(reported, timeout=30)
    finally:
        daemon.shutdown()
        environment.close()
        site.stop()

    row = reported()
    events = {event["type"] for event in queries.events(site.database, "front-door")}
    as_json = CliRunner().invoke(doorlock, ["stats", "locks", "--db", str(site.database), "--format", "json"])
    as_text = CliRunner().invoke(doorlock, ["stats", "locks", "--db", str(site.database)])
    header, line = as_text.output.splitlines()
    shown = dict(zip(header.split(), line.split()))

    assert "validity too long" in row["status"]["last_rejected_bundle"]["reason"]
    assert row["status"]["last_rejected_bundle"]["version"] == 2
    assert {"exit-button", "door-forced", "door-held-open", "bundle-rejected"} <= events
    assert json.loads(as_json.output)[0]["counters"] == expected
    assert [shown[column] for column in ("granted", "denied", "exit_button", "forced", "held_open")] == ["1"] * 5


def test_real_card_opens_through_udp_reader(env, tmp_path, caplog):
    port = 41030
    config = dataclasses.replace(env.config, reader=ReaderSettings(path=f"udp:127.0.0.1:{port}", targets=("106A",)))
    output = LogOutput()
    daemon = LockDaemon(config, output=output)
    emulator = Emulator(port, "type2", TYPE2_UID)
    try:
        with caplog.at_level(logging.INFO):
            daemon.start()
            wait_for(lambda: daemon.bundle is not None)
            emulator.start()  # the card arrives once the bundle is there
            wait_for(lambda: output.changes, timeout=30)
    finally:
        emulator.stop()
        daemon.shutdown()

    assert daemon.decisions[0][1].code == "granted"
    assert output.changes[0][0] is True
    assert output.changes[-1][0] is False  # released at the latest on shutdown
    logged = "\n".join(record.getMessage() for record in caplog.records if record.levelno >= logging.INFO)
    assert "tap 04:…:7f: open" in logged
    for form in (MEMBER, MEMBER.upper(), TYPE2_UID, TYPE2_UID.upper()):
        assert form not in logged  # nfcpy's and lockclient's INFO lines never contain the full UID


def test_sigterm_stops_daemon_cleanly(env):
    process = subprocess.Popen(
        [sys.executable, "-m", "lockclient.cli", "run", "--config", str(env.config.path)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )
    lines = []
    try:
        for line in process.stderr:
            lines.append(line)
            if "accepted bundle version 1" in line:
                break
        process.send_signal(signal.SIGTERM)
        _, remaining = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    log = "".join(lines) + (remaining or "")

    assert process.returncode == 0, log
    assert "received SIGTERM, stopping" in log
    assert "reader loop stopped" in log
    assert "lockclient stopped" in log
    assert MEMBER not in log  # full UIDs never at INFO


def test_cli_check_and_status(env, running):
    daemon, _ = running()
    wait_for(lambda: daemon.bundle is not None)
    daemon.shutdown()
    runner = CliRunner()
    config = str(env.config.path)

    allowed = runner.invoke(main, ["check", MEMBER.upper().replace(":", ""), "--config", config])
    denied = runner.invoke(main, ["check", STRANGER, "--config", config])
    expired = runner.invoke(main, ["check", MEMBER, "--at", "2040-01-01T00:00:00Z", "--config", config])
    status = runner.invoke(main, ["status", "--json", "--config", config])

    assert allowed.exit_code == 0, allowed.output
    assert allowed.output.startswith("open: 04:a2:3b:4c:5d:6e:7f")
    assert denied.exit_code == 1
    assert "unknown-key" in denied.output
    assert "expired" in expired.output
    report = json.loads(status.output)
    assert report["bundle_version"] == 1
    assert report["keys"] == 1
    assert report["last_fetch"]["result"] == "updated"
    assert report["spool"]["dropped"] == 0


def test_cli_status_warns_expired_bundle(env, running):
    config = dataclasses.replace(env.config, expired_policy="keep-last-bundle")
    daemon, _ = running(config=config)
    wait_for(lambda: daemon.bundle is not None)
    daemon.shutdown()
    text = env.config.path.read_text().replace("poll_interval = 1\n", 'poll_interval = 1\nexpired_policy = "keep-last-bundle"\n')
    env.config.path.write_text(text)
    state_file = env.config.state_dir / "state.json"
    state = json.loads(state_file.read_text())
    state["clock_floor"] = daemon.bundle.expires_at + DAY  # the clock once ran past the expiry
    state_file.write_text(json.dumps(state))
    spool = Spool(env.config.state_dir / SPOOL_FILE)
    spool.record_last_seen(MEMBER, NOW, 60)
    spool.quarantine(spool.next_batch("last-seen", NOW + HOUR), 422, "precision: 60 s is finer", NOW + HOUR)
    spool.close()

    result = CliRunner().invoke(main, ["status", "--config", str(env.config.path)])

    assert result.exit_code == 0, result.output
    assert "bundle_expired     True" in result.output
    assert "STILL USED for all keys" in result.output
    assert "behind the clock floor" in result.output
    assert "rejected statistics for good (1 items lost)" in result.output
    assert "422 precision: 60 s is finer" in result.output


def test_cli_rejects_bad_config_without_traceback(tmp_path):
    path = tmp_path / "lock.toml"
    path.write_text('lock = "front-door"\nbundle_url = "http://example.org/b.json"\n')

    result = CliRunner().invoke(main, ["status", "--config", str(path)])

    assert result.exit_code == 2
    assert "bundle_url" in result.output
    assert "Traceback" not in result.output


def test_status_reports_effective_expiry_of_forged_bundle(env, running):
    # A bundle signed with a stolen key, issued 400 days ahead and accepted 10 days ago while
    # the attacker withholds every update since: it has 20 days left, not 420.
    start = NOW + 2000 * DAY
    env.server.routes[SIGNERS_PATH] = static(env.trust.signers(issued_at=start - DAY, expires_at=start + 365 * DAY))
    env.server.routes[BUNDLE_PATH] = static(env.trust.bundle(
        version=2**40, keys={MEMBER: FOREVER}, issued_at=start + 400 * DAY, expires_at=start + 430 * DAY,
    ))
    env.updater(clock=Clock(system_time=lambda: float(start))).run_once()
    state_file = env.config.state_dir / "state.json"
    state = json.loads(state_file.read_text())
    state["clock_floor"] = start + 10 * DAY
    state_file.write_text(json.dumps(state))
    env.server.routes[BUNDLE_PATH] = status_only(503)

    daemon, _ = running(system_time=lambda: float(start + 10 * DAY))
    status = daemon.status_snapshot()

    assert state["bundle"]["accepted_system_time"] == start
    assert status["bundle_version"] == 2**40
    assert status["bundle_expires_at"] == format_time(start + 30 * DAY)
