"""The whole system on 127.0.0.1: real nginx, real TLS, the real nfcpy udp read path.

One story, because every step builds on the previous one:

1. compile the example ``access/`` repository, publish, start nginx with the generated
   configuration and the receiver behind it;
2. start ``lockclient run`` with the udp reader and the log actuator; it fetches its bundle;
3. a member's card opens; an unknown card is denied and reaches ``doorlock stats unknown-keys``;
4. the card is removed in a git commit, compiled and published: after the next poll the same
   tap is denied (the time from publish to the first denial is printed);
5. a second lock's certificate cannot fetch the first lock's bundle; with nginx stopped the
   lock keeps deciding from its stored bundle.
"""

from __future__ import annotations

import time

import pytest

from compiler.demo import FIRST_LOCK, KEPT_CARD, REMOVED_CARD, UNKNOWN_CARD, Deployment

pytestmark = pytest.mark.slow


def test_door_story_end_to_end(tmp_path, capsys):
    with Deployment(tmp_path, hosting="nginx") as deployment:
        # 1. repository, certificates, keys, build, hosting
        deployment.prepare_repository()
        deployment.create_pki()
        deployment.create_keys()
        release, version = deployment.compile_and_publish()
        deployment.start_receiver()
        deployment.start_hosting()
        assert (tmp_path / "www" / "current").resolve() == release

        # 2. the lock fetches its bundle over mutual TLS
        deployment.start_lock()
        deployment.wait_for_bundle(version)

        # 3. a member's card opens; an unknown card is denied and reported
        assert deployment.tap(REMOVED_CARD).verdict == "open"
        assert deployment.tap(UNKNOWN_CARD).verdict == "denied"
        reported = deployment.wait_for_unknown_key(UNKNOWN_CARD)
        assert reported["lock"] == FIRST_LOCK
        assert reported["count"] >= 1

        # 4. revoke in git, compile, publish; the next poll denies the card
        deployment.remove_card_in_git()
        mark = deployment.lock_log.mark()
        release, new_version = deployment.compile_and_publish()
        published_at = time.monotonic()
        assert new_version > version
        verdicts = [deployment.tap(REMOVED_CARD).verdict]
        while verdicts[-1] == "open" and len(verdicts) < 20:
            verdicts.append(deployment.tap(REMOVED_CARD).verdict)
        denial_seconds = time.monotonic() - published_at
        bundle_seconds = deployment.wait_for_bundle(new_version, since=mark) - published_at
        with capsys.disabled():  # shown in every run, not only when the test fails
            print(f"\npublish to first denial: {denial_seconds:.1f} s; publish to new bundle on the lock: "
                  f"{bundle_seconds:.1f} s (poll interval {deployment.poll_interval:.0f} s, {len(verdicts)} tap(s))")
        assert verdicts[-1] == "denied"
        assert deployment.tap(KEPT_CARD).verdict == "open"

        # 5. another lock's certificate; nginx stopped
        second = deployment.second_lock
        assert deployment.fetch_as(second, f"/bundles/{FIRST_LOCK}.json") == 403
        assert deployment.fetch_as(second, f"/bundles/{second}.json") == 200
        outage_mark = deployment.lock_log.mark()
        deployment.stop_hosting()
        deployment.wait_for_fetch_failure(outage_mark)
        assert deployment.tap(KEPT_CARD).verdict == "open"
        assert deployment.tap(REMOVED_CARD).verdict == "denied"
