"""Downloading bundles over mutual TLS: what the lock keeps, rejects and retries."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lockclient.bundle import decide, format_time
from lockclient.cli import main
from lockclient.clock import CONFIRM_SECONDS, Clock
from lockclient.fetch import Backoff, FetchError
from lockclient.storage import Storage
from tests.bundle_factory import DAY, FOREVER, HOUR, NOW, KeyPair, Trust
from tests.lock_environment import BUNDLE_PATH, SIGNERS_PATH, LockEnvironment
from tests.tls_fixtures import endless, make_pki, static, status_only, trickle

MEMBER = "04:a2:3b:4c:5d:6e:7f"
RESCUE = "04:11:22:33:44:55:66"
THIEF = "04:66:66:66:66:66:66"


@pytest.fixture
def env(tmp_path):
    environment = LockEnvironment.create(tmp_path)
    trust = environment.trust
    environment.server.routes[SIGNERS_PATH] = static(trust.signers())
    environment.server.routes[BUNDLE_PATH] = static(trust.bundle(version=1, keys={MEMBER: FOREVER}))
    yield environment
    environment.close()


def test_bundle_fetched_verified_and_stored(env):
    updater = env.updater()

    outcome = updater.run_once()

    assert outcome.bundle_updated
    assert outcome.signers_updated
    assert updater.storage.bundle.document.version == 1
    assert (env.config.state_dir / "bundle.json").exists()
    assert updater.storage.trusted("bundle").version == 1


def test_not_modified_keeps_bundle_and_etag(env):
    updater = env.updater()
    updater.run_once()
    etag = updater.storage.etag("bundle")

    outcome = updater.run_once()

    assert not outcome.bundle_updated
    assert env.server.requests[-1].headers.get("If-None-Match") == etag
    assert updater.storage.etag("bundle") == etag
    assert updater.storage.bundle.document.version == 1


def test_not_modified_without_etag_keeps_old_etag(env):
    updater = env.updater()
    updater.run_once()
    etag = updater.storage.etag("bundle")
    env.server.routes[BUNDLE_PATH] = static(env.trust.bundle(version=1, keys={MEMBER: FOREVER}), etag_on_304=False)

    updater.run_once()
    updater.run_once()

    assert updater.storage.etag("bundle") == etag
    assert env.server.requests[-1].headers.get("If-None-Match") == etag


@pytest.mark.parametrize("code", [403, 500])
def test_http_error_keeps_current_bundle(env, code):
    updater = env.updater()
    updater.run_once()
    env.server.routes[BUNDLE_PATH] = status_only(code)

    with pytest.raises(FetchError) as raised:
        updater.run_once()

    assert raised.value.reason == f"http-{code}"
    assert updater.storage.bundle.document.version == 1
    assert decide(updater.storage.bundle.document, MEMBER, NOW).allowed


@pytest.mark.parametrize("announce", [True, False])
def test_huge_body_rejected(env, announce):
    updater = env.updater()
    env.server.routes[BUNDLE_PATH] = endless(env.config.fetch.max_bytes + 10 * 65536, announce=announce)

    with pytest.raises(FetchError) as raised:
        updater.run_once()

    assert raised.value.reason == "too-large"
    assert updater.storage.bundle is None


def test_slow_body_cut_off_by_deadline(env):
    updater = env.updater()
    env.server.routes[BUNDLE_PATH] = trickle(byte_interval=0.2, total_bytes=200)

    with pytest.raises(FetchError) as raised:
        updater.run_once()

    # Each byte arrives well within the read timeout; only the overall deadline ends it.
    assert raised.value.reason == "deadline"


def test_requests_ca_bundle_cannot_override_pinned_ca(env, tmp_path, monkeypatch):
    # The server presents a certificate from another CA; the environment vouches for that CA.
    other = make_pki(tmp_path / "other")
    from tests.tls_fixtures import ScriptedServer

    impostor = ScriptedServer(other, routes=dict(env.server.routes)).start()
    try:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other.ca_cert))
        monkeypatch.setenv("CURL_CA_BUNDLE", str(other.ca_cert))
        updater = env.updater()
        updater.bundle_url = impostor.url(BUNDLE_PATH)
        updater.signers_url = impostor.url(SIGNERS_PATH)

        with pytest.raises(FetchError) as raised:
            updater.run_once()
    finally:
        impostor.stop()

    assert raised.value.reason == "tls"
    assert impostor.requests == []


def test_pinned_ca_works_despite_foreign_environment(env, tmp_path, monkeypatch):
    other = make_pki(tmp_path / "other")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other.ca_cert))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")

    outcome = env.updater().run_once()

    assert outcome.bundle_updated


def test_client_certificate_presented(env):
    env.updater().run_once()

    assert {request.client_cn for request in env.server.requests} == {"front-door"}


def test_tampered_bundle_rejected_and_current_kept(env):
    updater = env.updater()
    updater.run_once()
    good = env.trust.bundle(version=2, keys={MEMBER: FOREVER})
    tampered = good.replace(b'"payload": "', b'"payload": "A', 1)
    env.server.routes[BUNDLE_PATH] = static(tampered)

    outcome = updater.run_once()

    assert not outcome.bundle_updated
    assert outcome.rejections[0].reason in ("bad signature", "malformed")
    assert updater.storage.bundle.document.version == 1


def test_rollback_rejected(env):
    updater = env.updater()
    env.server.routes[BUNDLE_PATH] = static(env.trust.bundle(version=5, keys={MEMBER: FOREVER}))
    updater.run_once()
    env.server.routes[BUNDLE_PATH] = static(env.trust.bundle(version=4, keys={MEMBER: FOREVER, RESCUE: FOREVER}))

    outcome = updater.run_once()

    assert outcome.rejections[0].reason == "rollback"
    assert outcome.rejections[0].version == 4
    assert updater.storage.bundle.document.version == 5


def test_other_locks_bundle_rejected(env):
    updater = env.updater()
    env.server.routes[BUNDLE_PATH] = static(env.trust.bundle(lock="back-door", keys={MEMBER: FOREVER}))

    outcome = updater.run_once()

    assert outcome.rejections[0].reason == "wrong lock"
    assert updater.storage.bundle is None


def test_bundle_by_unauthorised_key_rejected(env):
    updater = env.updater()
    stranger = Trust()
    env.server.routes[BUNDLE_PATH] = static(stranger.bundle(keys={MEMBER: FOREVER}))

    outcome = updater.run_once()

    assert outcome.rejections[0].reason == "unknown signer"


def test_clock_far_past_decides_with_floor(env):
    clock = Clock(system_time=lambda: 978_307_200.0)  # 2001-01-01: a Pi without RTC
    updater = env.updater(clock=clock)
    env.server.routes[BUNDLE_PATH] = static(
        env.trust.bundle(keys={MEMBER: [NOW - DAY, NOW + DAY]}, issued_at=NOW - 60)
    )

    outcome = updater.run_once()
    bundle = updater.storage.bundle.document

    assert outcome.bundle_updated
    assert clock.now() >= NOW - 60
    assert clock.behind_floor()
    assert decide(bundle, MEMBER, clock.now()).allowed


def test_clock_far_future_rejects_new_bundle(env):
    updater = env.updater()
    updater.run_once()
    updater.clock.system_time = lambda: 2_208_988_800.0  # 2040
    env.server.routes[BUNDLE_PATH] = static(env.trust.bundle(version=2, keys={MEMBER: FOREVER}, break_glass=(RESCUE,)))

    outcome = updater.run_once()
    bundle = updater.storage.bundle.document
    now = updater.clock.now()

    assert outcome.rejections[-1].reason == "expired"
    assert bundle.version == 1
    assert decide(bundle, MEMBER, now).code == "expired"


class SteppedTime:
    """A system clock (``wall``) and a monotonic clock (``elapsed``) that the test sets and moves."""

    def __init__(self, wall: float):
        self.wall = float(wall)
        self.elapsed = 1000.0

    def system(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.elapsed

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.elapsed += seconds

    def clock(self, floor: float = 0) -> Clock:
        return Clock(floor, system_time=self.system, monotonic=self.monotonic)


def clock_far_ahead_for(updater, times: SteppedTime, seconds: float, rounds: int = 4) -> None:
    """Set the system clock to 2040 for ``seconds`` of real time, sampling it like the daemon, then put it right."""
    bundle = updater.storage.bundle.document
    right = times.wall
    times.wall = 2_208_988_800.0
    for _ in range(rounds):
        updater.clock.advance_floor(bundle.expires_at)
        times.elapsed += seconds / rounds
        right += seconds / rounds
    updater.clock.advance_floor(bundle.expires_at)
    times.wall = right  # NTP puts the clock right
    updater.clock.advance_floor(bundle.expires_at)


def test_brief_clock_step_leaves_floor(env):
    times = SteppedTime(NOW)
    updater = env.updater(clock=times.clock())
    updater.run_once()
    updater.clock.advance_floor(updater.storage.bundle.document.expires_at)

    clock_far_ahead_for(updater, times, 3600)
    env.server.routes[BUNDLE_PATH] = static(env.trust.bundle(version=2, keys={MEMBER: FOREVER}, issued_at=NOW))
    outcome = updater.run_once()

    assert updater.clock.floor <= times.wall
    assert outcome.bundle_updated
    assert decide(updater.storage.bundle.document, MEMBER, updater.clock.now()).allowed


def test_floor_advances_at_monotonic_speed(env):
    times = SteppedTime(NOW)
    updater = env.updater(clock=times.clock())
    updater.run_once()
    expires_at = updater.storage.bundle.document.expires_at
    updater.clock.advance_floor(expires_at)

    times.advance(600)
    steady = updater.clock.advance_floor(expires_at)
    times.wall += 5 * DAY  # a sudden step forward
    times.elapsed += 300
    after_step = updater.clock.advance_floor(expires_at)

    assert steady == NOW + 600
    assert after_step == NOW + 900


def test_long_clock_step_floor_capped_at_expiry(env):
    times = SteppedTime(NOW)
    updater = env.updater(clock=times.clock())
    updater.run_once()
    bundle = updater.storage.bundle.document

    clock_far_ahead_for(updater, times, CONFIRM_SECONDS + 3600)

    assert updater.clock.floor == bundle.expires_at


def test_long_clock_step_recovers_with_next_bundle(env):
    times = SteppedTime(NOW)
    updater = env.updater(clock=times.clock())
    updater.run_once()
    first = updater.storage.bundle.document
    clock_far_ahead_for(updater, times, CONFIRM_SECONDS + 3600)

    stuck = decide(first, MEMBER, updater.clock.now()).code
    env.server.routes[BUNDLE_PATH] = static(env.trust.bundle(
        version=2, keys={MEMBER: FOREVER}, issued_at=NOW, expires_at=first.expires_at + 7 * DAY,
    ))
    outcome = updater.run_once()

    assert stuck == "expired"  # until a bundle that expires after the floor arrives
    assert outcome.bundle_updated
    assert decide(updater.storage.bundle.document, MEMBER, updater.clock.now()).allowed


def test_restart_clock_ahead_leaves_floor(env):
    times = SteppedTime(NOW)
    updater = env.updater(clock=times.clock())
    updater.run_once()
    updater.storage.state["clock_floor"] = int(updater.clock.advance_floor(updater.storage.bundle.document.expires_at))
    updater.storage.save_state()

    times.wall = 2_208_988_800.0  # the lock starts again with a real-time clock far ahead
    times.elapsed = 5.0
    storage = Storage(env.config.state_dir, env.config.lock, updater.root_keys)
    storage.load(times.wall)
    clock = times.clock(storage.clock_floor)
    clock.observe_stored(*storage.stored_documents())
    times.elapsed += 300
    floor = clock.advance_floor(storage.bundle.document.expires_at)
    times.wall = NOW + 400  # NTP puts it right

    assert floor == NOW + 300
    assert decide(storage.bundle.document, MEMBER, clock.now()).allowed


def test_restart_clock_in_past_uses_floor(env):
    times = SteppedTime(NOW + 3 * DAY)
    updater = env.updater(clock=times.clock())
    updater.run_once()
    updater.storage.state["clock_floor"] = int(updater.clock.advance_floor(updater.storage.bundle.document.expires_at))
    updater.storage.save_state()

    times.wall = 978_307_200.0  # 2001-01-01: a Pi without RTC boots
    times.elapsed = 5.0
    storage = Storage(env.config.state_dir, env.config.lock, updater.root_keys)
    storage.load(times.wall)
    clock = times.clock(storage.clock_floor)
    clock.observe_stored(*storage.stored_documents())
    times.elapsed += 300
    clock.advance_floor(storage.bundle.document.expires_at)
    judged_at = clock.now()
    behind = clock.behind_floor()
    times.wall = NOW + 5 * DAY  # NTP sets the clock after two days off
    times.elapsed += 300
    floor = clock.advance_floor(storage.bundle.document.expires_at)

    assert judged_at == NOW + 3 * DAY + 300  # the saved value plus the uptime so far
    assert behind
    assert floor == NOW + 3 * DAY + 600  # the saved value plus the uptime, not the two days off


def forge_with_stolen_key(env, issued_at: int) -> bytes:
    """A bundle signed with the lock's genuine (now stolen) signing key: huge version, a thief's card."""
    return env.trust.bundle(version=2**40, keys={MEMBER: FOREVER, THIEF: FOREVER},
                            issued_at=issued_at, expires_at=issued_at + 30 * DAY)


def revoke_stolen_key(env) -> KeyPair:
    """Publish a signers document without the stolen key and a genuine bundle signed by its replacement."""
    replacement = KeyPair.generate()
    env.server.routes[SIGNERS_PATH] = static(env.trust.signers(version=2, issued_at=NOW, signing_keys=[replacement]))
    env.server.routes[BUNDLE_PATH] = static(env.trust.bundle(
        version=2, keys={MEMBER: FOREVER}, issued_at=NOW, signing=replacement,
    ))
    return replacement


def test_revoked_key_future_issue_time_dropped(env):
    times = SteppedTime(NOW)
    updater = env.updater(clock=times.clock())
    updater.run_once()
    env.server.routes[BUNDLE_PATH] = static(forge_with_stolen_key(env, NOW + 400 * DAY))
    updater.run_once()
    forged_floor = updater.clock.now()
    times.advance(300)
    system_part = updater.clock.advance_floor(updater.storage.bundle.document.expires_at)

    replacement = revoke_stolen_key(env)
    times.advance(300)
    outcome = updater.run_once()
    bundle = updater.storage.bundle.document

    assert forged_floor == NOW + 400 * DAY
    assert system_part == NOW + 300
    assert outcome.rejections == ()
    assert bundle.version == 2
    assert bundle.signed_by == replacement.keyid
    assert updater.clock.now() == NOW + 600
    assert decide(bundle, MEMBER, updater.clock.now()).allowed
    assert not decide(bundle, THIEF, updater.clock.now()).allowed


def test_restart_after_revocation_ignores_forged_time(env):
    times = SteppedTime(NOW)
    updater = env.updater(clock=times.clock())
    updater.run_once()
    env.server.routes[BUNDLE_PATH] = static(forge_with_stolen_key(env, NOW + 400 * DAY))
    updater.run_once()
    revoke_stolen_key(env)
    genuine = env.server.routes[BUNDLE_PATH]
    env.server.routes[BUNDLE_PATH] = status_only(500)
    with pytest.raises(FetchError):
        updater.run_once()  # the new signers document is stored, the genuine bundle is not

    storage = Storage(env.config.state_dir, env.config.lock, updater.root_keys)
    storage.load(times.wall)
    clock = times.clock(storage.clock_floor)
    clock.observe_stored(*storage.stored_documents())
    forged_in_force = storage.bundle.document.version
    env.server.routes[BUNDLE_PATH] = genuine
    outcome = env.updater(clock=clock, storage=storage).run_once()

    assert forged_in_force == 2**40
    assert clock.now() == NOW
    assert outcome.rejections == ()
    assert storage.bundle.document.version == 2


def test_backoff_doubles_with_jitter():
    backoff = Backoff(1.0, 10.0, random_fraction=lambda: 0.999)
    delays = [backoff.next_delay() for _ in range(6)]
    backoff.reset()
    low = Backoff(1.0, 10.0, random_fraction=lambda: 0.0)

    assert delays[0] == pytest.approx(0.9995)
    assert delays[1] == pytest.approx(1.999)
    assert delays[5] == pytest.approx(9.995)  # capped at the maximum
    assert backoff.next_delay() == pytest.approx(0.9995)
    assert low.next_delay() == pytest.approx(0.5)


def test_absurdly_nested_bundle_rejected_not_crashing(env):
    updater = env.updater()
    updater.run_once()
    env.server.routes[BUNDLE_PATH] = static(b"[" * 200_000 + b"]" * 200_000)

    outcome = updater.run_once()

    assert outcome.rejections[0].reason == "malformed"
    assert updater.storage.bundle.document.version == 1


def test_new_bundle_rejected_while_signers_expired(env):
    clock = Clock()
    updater = env.updater(clock=clock)
    updater.run_once()
    signers = updater.storage.signers.document
    clock.system_time = lambda: signers.expires_at + 60.0
    env.server.routes[BUNDLE_PATH] = static(env.trust.bundle(
        version=2, keys={MEMBER: FOREVER}, expires_at=int(signers.expires_at) + 7 * DAY,
    ))

    outcome = updater.run_once()

    assert outcome.rejections[-1].reason == "expired"
    assert "signers document version 1 expired" in outcome.rejections[-1].message
    assert updater.storage.bundle.document.version == 1


def test_stalled_body_cut_off_by_read_timeout(env):
    updater = env.updater()
    env.server.routes[BUNDLE_PATH] = trickle(byte_interval=env.config.fetch.read_timeout + 1.5, total_bytes=3)

    with pytest.raises(FetchError) as raised:
        updater.run_once()

    assert raised.value.reason == "connection"
    assert "timed out" in str(raised.value).lower()


def test_bundle_valid_longer_than_limit_rejected(env):
    updater = env.updater()
    updater.run_once()
    # Signed with the genuine key (stolen), valid for 400 days: withheld updates would keep it working.
    env.server.routes[BUNDLE_PATH] = static(env.trust.bundle(
        version=2, keys={MEMBER: FOREVER, THIEF: FOREVER}, issued_at=NOW - HOUR, expires_at=NOW - HOUR + 400 * DAY,
    ))

    outcome = updater.run_once()
    bundle = updater.storage.bundle.document

    assert outcome.rejections[0].reason == "validity too long"
    assert outcome.rejections[0].version == 2
    assert "valid for 400 days" in outcome.rejections[0].message
    assert "max_bundle_validity_days" in outcome.rejections[0].message
    assert bundle.version == 1
    assert updater.storage.trusted("bundle").version == 1
    assert not decide(bundle, THIEF, NOW).allowed


def test_bundle_valid_exactly_the_limit_accepted(env):
    updater = env.updater()
    env.server.routes[BUNDLE_PATH] = static(env.trust.bundle(
        keys={MEMBER: FOREVER}, issued_at=NOW - HOUR, expires_at=NOW - HOUR + 31 * DAY,
    ))

    outcome = updater.run_once()

    assert outcome.rejections == ()
    assert updater.storage.bundle.document.expires_at == NOW - HOUR + 31 * DAY


def test_bundle_one_second_over_the_limit_rejected(env):
    updater = env.updater()
    env.server.routes[BUNDLE_PATH] = static(env.trust.bundle(
        keys={MEMBER: FOREVER}, issued_at=NOW - HOUR, expires_at=NOW - HOUR + 31 * DAY + 1,
    ))

    outcome = updater.run_once()

    assert outcome.rejections[0].reason == "validity too long"
    assert updater.storage.bundle is None


def test_raised_validity_limit_accepts_longer_bundle(env):
    updater = env.updater()
    updater.max_validity_days = 90
    env.server.routes[BUNDLE_PATH] = static(env.trust.bundle(
        keys={MEMBER: FOREVER}, issued_at=NOW - HOUR, expires_at=NOW - HOUR + 60 * DAY,
    ))

    outcome = updater.run_once()

    assert outcome.rejections == ()
    assert updater.storage.bundle.document.version == 1


def run_for(updater, times: SteppedTime, seconds: float, rounds: int = 4) -> None:
    """Let ``seconds`` of real time pass in update rounds that reach nothing (withheld updates)."""
    bundle = updater.storage.bundle.document
    for _ in range(rounds):
        times.advance(seconds / rounds)
        updater.clock.advance_floor(bundle.expires_at)


def restarted(env, updater, times: SteppedTime) -> tuple[Storage, Clock]:
    """Save the system part as the daemon does, then load the state directory like a new start."""
    updater.storage.state["clock_floor"] = int(updater.clock.advance_floor(updater.storage.bundle.document.expires_at))
    updater.storage.save_state()
    times.elapsed = 5.0
    storage = Storage(env.config.state_dir, env.config.lock, updater.root_keys)
    storage.load(times.wall)
    clock = times.clock(storage.clock_floor)
    clock.observe_stored(*storage.stored_documents(), storage.bundle_accepted_at)
    return storage, clock


def test_forged_future_bundle_expires_after_its_span(env):
    times = SteppedTime(NOW)
    updater = env.updater(clock=times.clock())
    updater.run_once()
    env.server.routes[BUNDLE_PATH] = static(forge_with_stolen_key(env, NOW + 400 * DAY))
    updater.run_once()
    forged = updater.storage.bundle.document
    env.server.routes[BUNDLE_PATH] = status_only(503)  # the attacker withholds every update

    run_for(updater, times, 30 * DAY - 60)
    before = decide(forged, THIEF, updater.clock.now())
    effective = updater.clock.effective_expiry(forged.expires_at)
    run_for(updater, times, 60)
    after = decide(forged, THIEF, updater.clock.now())

    assert forged.version == 2**40
    assert before.allowed
    assert effective == NOW + 30 * DAY
    assert after.code == "expired"
    assert not decide(forged, MEMBER, updater.clock.now()).allowed


def test_genuine_bundle_expires_at_its_signed_expiry(env):
    times = SteppedTime(NOW)
    env.server.routes[BUNDLE_PATH] = static(env.trust.bundle(
        keys={MEMBER: FOREVER}, issued_at=NOW - 5 * DAY, expires_at=NOW + 2 * DAY,
    ))
    updater = env.updater(clock=times.clock())
    updater.run_once()
    bundle = updater.storage.bundle.document

    effective = updater.clock.effective_expiry(bundle.expires_at)
    run_for(updater, times, 2 * DAY - 1)
    before = decide(bundle, MEMBER, updater.clock.now())
    run_for(updater, times, 1, rounds=1)

    assert effective == NOW + 2 * DAY
    assert before.allowed
    assert updater.clock.now() == NOW + 2 * DAY
    assert decide(bundle, MEMBER, updater.clock.now()).code == "expired"


def test_bundle_span_expiry_clock_behind(env):
    times = SteppedTime(978_307_200.0)  # 2001-01-01: a new Pi without RTC and without NTP
    updater = env.updater(clock=times.clock())
    updater.run_once()
    bundle = updater.storage.bundle.document  # issued an hour before NOW, valid for 7 days and an hour

    judged_at = updater.clock.now()
    run_for(updater, times, 7 * DAY + HOUR - 1)
    before = decide(bundle, MEMBER, updater.clock.now())
    run_for(updater, times, 1, rounds=1)

    assert judged_at == bundle.issued_at
    assert before.allowed
    assert decide(bundle, MEMBER, updater.clock.now()).code == "expired"


def test_restart_keeps_forged_bundle_acceptance_time(env):
    times = SteppedTime(NOW)
    updater = env.updater(clock=times.clock())
    updater.run_once()
    env.server.routes[BUNDLE_PATH] = static(forge_with_stolen_key(env, NOW + 400 * DAY))
    updater.run_once()
    run_for(updater, times, 20 * DAY)

    storage, clock = restarted(env, updater, times)
    forged = storage.bundle.document
    accepted_at = storage.bundle_accepted_at
    effective = clock.effective_expiry(forged.expires_at)
    times.advance(10 * DAY - 60)
    before = decide(forged, THIEF, clock.now())
    times.advance(60)

    assert accepted_at == NOW
    assert effective == NOW + 30 * DAY
    assert before.allowed
    assert decide(forged, THIEF, clock.now()).code == "expired"


def test_old_state_file_counts_acceptance_from_saved_floor(env):
    times = SteppedTime(NOW)
    updater = env.updater(clock=times.clock())
    updater.run_once()
    env.server.routes[BUNDLE_PATH] = static(forge_with_stolen_key(env, NOW + 400 * DAY))
    updater.run_once()
    run_for(updater, times, 20 * DAY)
    del updater.storage.state["bundle"]["accepted_system_time"]  # written by an older lockclient

    storage, clock = restarted(env, updater, times)
    forged = storage.bundle.document
    times.advance(30 * DAY - 60)
    before = decide(forged, THIEF, clock.now())
    times.advance(60)

    assert storage.bundle_accepted_at is None
    assert before.allowed
    assert decide(forged, THIEF, clock.now()).code == "expired"


def test_cli_reports_effective_expiry_of_forged_bundle(env):
    # Far ahead of the real clock the CLI reads, so that the saved system part is what counts.
    start = NOW + 2000 * DAY
    env.server.routes[SIGNERS_PATH] = static(env.trust.signers(issued_at=start - DAY, expires_at=start + 365 * DAY))
    env.server.routes[BUNDLE_PATH] = static(forge_with_stolen_key(env, start + 400 * DAY))
    times = SteppedTime(start)
    updater = env.updater(clock=times.clock())
    updater.run_once()
    run_for(updater, times, 10 * DAY)
    restarted(env, updater, times)
    config = str(env.config.path)
    runner = CliRunner()

    status = json.loads(runner.invoke(main, ["status", "--json", "--config", config]).output)
    opens = runner.invoke(main, ["check", THIEF, "--config", config])
    state_file = env.config.state_dir / "state.json"
    state = json.loads(state_file.read_text())
    state["clock_floor"] = start + 30 * DAY  # the span has elapsed since acceptance
    state_file.write_text(json.dumps(state))
    lapsed = json.loads(runner.invoke(main, ["status", "--json", "--config", config]).output)
    denied = runner.invoke(main, ["check", THIEF, "--config", config])

    assert status["bundle_expires_at"] == format_time(start + 30 * DAY)
    assert status["bundle_signed_expiry"] == format_time(start + 430 * DAY)
    assert status["bundle_expired"] is False
    assert opens.exit_code == 0, opens.output
    assert lapsed["bundle_expired"] is True
    assert denied.exit_code == 1
    assert "(expired)" in denied.output


def test_revoked_key_effective_expiry_signed(env):
    times = SteppedTime(NOW)
    updater = env.updater(clock=times.clock())
    updater.run_once()
    env.server.routes[BUNDLE_PATH] = static(forge_with_stolen_key(env, NOW + 400 * DAY))
    updater.run_once()
    revoke_stolen_key(env)
    env.server.routes[BUNDLE_PATH] = status_only(500)
    with pytest.raises(FetchError):
        updater.run_once()  # the new signers document is stored, the genuine bundle is not

    forged = updater.storage.bundle.document

    assert updater.clock.now() == NOW
    assert updater.clock.effective_expiry(forged.expires_at) == forged.expires_at
