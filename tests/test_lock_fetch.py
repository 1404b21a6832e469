"""Downloading bundles over mutual TLS: what the lock keeps, rejects and retries."""

from __future__ import annotations

import pytest

from lockclient.bundle import decide
from lockclient.clock import Clock
from lockclient.fetch import Backoff, FetchError
from tests.bundle_factory import DAY, FOREVER, NOW, Trust
from tests.lock_environment import BUNDLE_PATH, SIGNERS_PATH, LockEnvironment
from tests.tls_fixtures import endless, make_pki, static, status_only, trickle

MEMBER = "04:a2:3b:4c:5d:6e:7f"
RESCUE = "04:11:22:33:44:55:66"


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


def test_far_future_floor_capped_at_bundle_expiry(env):
    updater = env.updater()
    updater.run_once()
    bundle = updater.storage.bundle.document
    updater.clock.system_time = lambda: 2_208_988_800.0

    floor = updater.clock.advance_floor(bundle.expires_at)

    assert floor == bundle.expires_at


def test_clock_back_from_future_recovers_with_next_bundle(env):
    updater = env.updater()
    updater.run_once()
    first = updater.storage.bundle.document
    updater.clock.system_time = lambda: 2_208_988_800.0  # 2040 for a while: the floor follows
    updater.clock.advance_floor(first.expires_at)
    updater.clock.system_time = lambda: NOW  # NTP puts the clock right

    stuck = decide(first, MEMBER, updater.clock.now()).code
    env.server.routes[BUNDLE_PATH] = static(env.trust.bundle(
        version=2, keys={MEMBER: FOREVER}, issued_at=NOW, expires_at=first.expires_at + 7 * DAY,
    ))
    outcome = updater.run_once()

    assert stuck == "expired"  # until a bundle that expires after the floor arrives
    assert outcome.bundle_updated
    assert decide(updater.storage.bundle.document, MEMBER, updater.clock.now()).allowed


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
