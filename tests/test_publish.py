"""Atomic publishing: releases, the ``current`` swap, ETag-safe mtimes and rollback rejection."""

from __future__ import annotations

import hashlib
import json
import os
import threading

import pytest
from click.testing import CliRunner

from compiler.cli import main
from compiler.publish import PublishError, PublishRejected, live_release, publish
from tests.fake_builds import bundle_bytes, write_build

NOW = 1_796_414_400  # 2026-12-04T20:00:00Z, a fixed second for the same-second cases


def _served(publish_dir, path):
    return (publish_dir / "current" / path).read_bytes()


def _mtime(publish_dir, path):
    return os.stat(publish_dir / "current" / path).st_mtime


def test_first_publish_serves_build(tmp_path):
    build = write_build(tmp_path / "build", {"front-door": (1, b"front v1"), "back-door": (1, b"back v1")})

    result = publish(build, tmp_path / "www")

    assert (tmp_path / "www" / "current").is_symlink()
    assert live_release(tmp_path / "www") == result.release
    assert _served(tmp_path / "www", "bundles/front-door.json") == b"front v1"
    assert _served(tmp_path / "www", "signers.json") == (build / "signers.json").read_bytes()
    assert _served(tmp_path / "www", "manifest.json") == (build / "manifest.json").read_bytes()
    assert result.changed == ["bundles/back-door.json", "bundles/front-door.json", "signers.json"]


def test_unchanged_bundle_keeps_mtime(tmp_path):
    www = tmp_path / "www"
    publish(write_build(tmp_path / "b1", {"front-door": (1, b"front v1"), "back-door": (1, b"back v1")}), www, now=NOW)
    back_mtime = _mtime(www, "bundles/back-door.json")

    result = publish(write_build(tmp_path / "b2", {"front-door": (2, b"front v2"), "back-door": (1, b"back v1")}),
                     www, now=NOW + 60)

    assert result.unchanged == ["bundles/back-door.json", "signers.json"]
    assert result.changed == ["bundles/front-door.json"]
    assert _mtime(www, "bundles/back-door.json") == back_mtime
    assert _mtime(www, "bundles/front-door.json") == NOW + 60


def test_same_second_publishes_get_new_mtime(tmp_path):
    """nginx's ETag is mtime seconds plus size: equal sizes in one second must still differ."""
    www = tmp_path / "www"
    first, second = bundle_bytes("front-door", 1), bundle_bytes("front-door", 2)
    assert len(first) == len(second)
    publish(write_build(tmp_path / "b1", {"front-door": (1, first)}), www, now=NOW)
    before = os.stat(www / "current" / "bundles/front-door.json")

    publish(write_build(tmp_path / "b2", {"front-door": (2, second)}), www, now=NOW)
    after = os.stat(www / "current" / "bundles/front-door.json")

    assert after.st_size == before.st_size
    assert int(after.st_mtime) > int(before.st_mtime)


def test_mtime_never_repeats_when_clock_goes_back(tmp_path):
    www = tmp_path / "www"
    seen = set()
    for version, now in enumerate([NOW, NOW, NOW - 3600, NOW + 1, NOW], start=1):
        publish(write_build(tmp_path / f"b{version}", {"front-door": (version, bundle_bytes("front-door", version))}),
                www, now=now)
        seen.add(int(_mtime(www, "bundles/front-door.json")))

    assert len(seen) == 5


def test_lower_version_rejected(tmp_path):
    www = tmp_path / "www"
    publish(write_build(tmp_path / "new", {"front-door": (5, b"revoked key removed")}), www)

    with pytest.raises(PublishRejected, match="version 4 but the live release"):
        publish(write_build(tmp_path / "old", {"front-door": (4, b"revoked key still in")}), www)
    assert _served(www, "bundles/front-door.json") == b"revoked key removed"


def test_equal_version_different_bytes_rejected(tmp_path):
    """Two pipelines that compiled different commits in the same second."""
    www = tmp_path / "www"
    publish(write_build(tmp_path / "a", {"front-door": (7, b"pipeline A")}), www)

    with pytest.raises(PublishRejected):
        publish(write_build(tmp_path / "b", {"front-door": (7, b"pipeline B")}), www)
    assert _served(www, "bundles/front-door.json") == b"pipeline A"


def test_signers_rollback_rejected(tmp_path):
    www = tmp_path / "www"
    publish(write_build(tmp_path / "a", {"front-door": (1, b"x")}, signers=(3, b"signers v3")), www)

    with pytest.raises(PublishRejected, match="signers.json"):
        publish(write_build(tmp_path / "b", {"front-door": (1, b"x")}, signers=(2, b"signers v2")), www)


def test_identical_build_publishes_nothing(tmp_path):
    www = tmp_path / "www"
    build = write_build(tmp_path / "build", {"front-door": (1, b"x")})
    first = publish(build, www)

    again = publish(build, www)

    assert again.release is None
    assert live_release(www) == first.release
    assert len(list((www / "releases").iterdir())) == 1


def test_removed_lock_disappears(tmp_path):
    www = tmp_path / "www"
    publish(write_build(tmp_path / "a", {"front-door": (1, b"x"), "shed": (1, b"y")}), www)

    result = publish(write_build(tmp_path / "b", {"front-door": (1, b"x")}), www)

    assert result.removed == ["bundles/shed.json"]
    assert not (www / "current" / "bundles" / "shed.json").exists()


def test_keep_n_releases(tmp_path):
    www = tmp_path / "www"
    for version in range(1, 6):
        publish(write_build(tmp_path / f"b{version}", {"front-door": (version, b"v%d" % version)}), www, keep=3)

    releases = sorted(path.name for path in (www / "releases").iterdir())

    assert len(releases) == 3
    assert live_release(www).name == releases[-1]
    assert [name.split("-")[0] for name in releases] == ["r000003", "r000004", "r000005"]


def test_sha_mismatch_rejected(tmp_path):
    www = tmp_path / "www"
    publish(write_build(tmp_path / "good", {"front-door": (1, b"good")}), www)
    broken = write_build(tmp_path / "broken", {"front-door": (2, b"v2")})
    (broken / "bundles" / "front-door.json").write_bytes(b"v2 but truncat")

    with pytest.raises(PublishError, match="does not match the sha256"):
        publish(broken, www)
    assert _served(www, "bundles/front-door.json") == b"good"


def test_missing_bundle_rejected(tmp_path):
    broken = write_build(tmp_path / "broken", {"front-door": (1, b"x")})
    (broken / "bundles" / "front-door.json").unlink()

    with pytest.raises(PublishError, match="missing"):
        publish(broken, tmp_path / "www")
    assert not (tmp_path / "www" / "current").exists()


def test_concurrent_reader_never_sees_mix(tmp_path):
    """A reader that resolves ``current`` once sees one complete release; single files are never partial."""
    www = tmp_path / "www"
    locks = ["front-door", "back-door", "shed"]
    builds = []
    for version in range(1, 41):
        bundles = {lock: (version, bundle_bytes(lock, version, size=4000 + 100 * version)) for lock in locks}
        builds.append(write_build(tmp_path / f"b{version}", bundles))
    publish(builds[0], www, keep=100)

    problems: list[str] = []
    reads = 0
    done = threading.Event()

    def read_forever():
        nonlocal reads
        while not done.is_set():
            release = www / "releases" / os.path.basename(os.readlink(www / "current"))
            manifest = json.loads((release / "manifest.json").read_bytes())
            versions = set()
            for lock, entry in manifest["bundles"].items():
                data = (release / entry["path"]).read_bytes()
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    problems.append(f"{release.name}: {lock} does not match its manifest")
                versions.add(json.loads(data)["version"])
            if len(versions) != 1:
                problems.append(f"{release.name}: mixed versions {sorted(versions)}")
            through_link = json.loads((www / "current" / "bundles" / "shed.json").read_bytes())
            if through_link["lock"] != "shed":
                problems.append("current/bundles/shed.json is not shed's bundle")
            reads += 1

    reader = threading.Thread(target=read_forever)
    reader.start()
    try:
        for build in builds[1:]:
            publish(build, www, keep=100)
    finally:
        done.set()
        reader.join(10)

    assert problems == []
    assert reads > 0
    assert json.loads(_served(www, "bundles/front-door.json"))["version"] == 40


def test_concurrent_publishers_one_wins(tmp_path):
    """Two pipelines with the same version and different bytes: exactly one is published."""
    www = tmp_path / "www"
    publish(write_build(tmp_path / "base", {"front-door": (1, b"base")}), www)
    candidates = [write_build(tmp_path / name, {"front-door": (2, name.encode())}) for name in ("ci-a", "ci-b")]
    outcomes: list[str] = []

    def run(build):
        try:
            publish(build, www)
            outcomes.append("published")
        except PublishRejected:
            outcomes.append("rejected")

    threads = [threading.Thread(target=run, args=(build,)) for build in candidates]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert sorted(outcomes) == ["published", "rejected"]
    assert _served(www, "bundles/front-door.json") in (b"ci-a", b"ci-b")


def test_cli_publish_and_rejection(tmp_path):
    runner = CliRunner()
    write_build(tmp_path / "new", {"front-door": (2, b"new")})
    write_build(tmp_path / "old", {"front-door": (1, b"old")})

    published = runner.invoke(main, ["publish", str(tmp_path / "new"), "--to", str(tmp_path / "www")])
    rejected = runner.invoke(main, ["publish", str(tmp_path / "old"), "--to", str(tmp_path / "www")])

    assert published.exit_code == 0, published.output
    assert "changed   bundles/front-door.json" in published.output
    assert rejected.exit_code == 1
    assert "rejected:" in rejected.output
    assert "Traceback" not in rejected.output


def test_publish_into_foreign_directory_rejected(tmp_path):
    www = tmp_path / "www"
    (www / "current").mkdir(parents=True)

    with pytest.raises(PublishError, match="not a symlink"):
        publish(write_build(tmp_path / "b", {"front-door": (1, b"x")}), www)


def test_deliberate_rollback_resigns_higher_version(tmp_path):
    """Rolling back is a git revert compiled again: a new version, never the old bytes."""
    import base64

    from compiler.demo import REMOVED_CARD, Deployment

    deployment = Deployment(tmp_path, hosting="devserver")
    deployment.prepare_repository()
    deployment.create_pki()
    deployment.create_keys()
    _, granted_version = deployment.compile_and_publish()
    granted_bytes = _served(tmp_path / "www", "bundles/front-door.json")
    deployment.remove_card_in_git()
    _, revoked_version = deployment.compile_and_publish()

    with pytest.raises(PublishRejected):
        publish(tmp_path / "build-1", tmp_path / "www")

    deployment._git("revert", "--no-edit", "HEAD")
    _, rollback_version = deployment.compile_and_publish()
    served = _served(tmp_path / "www", "bundles/front-door.json")
    payload = json.loads(base64.b64decode(json.loads(served)["payload"]))

    assert rollback_version > revoked_version > granted_version
    assert payload["version"] == rollback_version
    assert REMOVED_CARD in payload["keys"]
    assert served != granted_bytes
