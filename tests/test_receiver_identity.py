"""Which lock a certificate belongs to, from the published manifest, as it changes on disk."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from receiver.identity import LockDirectory

FRONT = "a1" * 32
BACK = "b2" * 32


def publish(directory: Path, bundles: dict[str, str], text: str | None = None) -> Path:
    """Write manifest.json as a publish does (a new file renamed into place)."""
    manifest = directory / "manifest.json"
    document = {"format": 1, "bundles": {name: {"version": 1, "sha256": "0" * 64, "path": f"bundles/{name}.json",
                                                "certificate_sha256": fingerprint}
                                         for name, fingerprint in bundles.items()}}
    temporary = directory / "manifest.json.tmp"
    temporary.write_text(text if text is not None else json.dumps(document))
    os.replace(temporary, manifest)
    return manifest


def test_certificate_shared_by_two_locks_accepted_for_neither(tmp_path, caplog):
    manifest = publish(tmp_path, {"front-door": FRONT, "back-door": FRONT, "cellar": BACK})

    with caplog.at_level(logging.ERROR):
        directory = LockDirectory(manifest)

    assert directory.identify(FRONT) is None
    assert directory.identify(BACK).lock == "cellar"
    assert "back-door, front-door have the same certificate" in caplog.text


def test_fingerprint_with_colons_and_capitals_matched(tmp_path):
    written = ":".join(FRONT[index:index + 2] for index in range(0, 64, 2)).upper()
    manifest = publish(tmp_path, {"front-door": written})

    assert LockDirectory(manifest).identify(FRONT).lock == "front-door"


def test_republished_manifest_read_without_restart(tmp_path):
    manifest = publish(tmp_path, {"front-door": FRONT})
    directory = LockDirectory(manifest)
    before = directory.identify(BACK)

    publish(tmp_path, {"back-door": BACK})

    assert before is None
    assert directory.identify(BACK).lock == "back-door"
    assert directory.identify(FRONT) is None


def test_broken_manifest_keeps_previous_one(tmp_path, caplog):
    manifest = publish(tmp_path, {"front-door": FRONT})
    directory = LockDirectory(manifest)

    publish(tmp_path, {}, text='{"format": 1, "bundles": ')
    with caplog.at_level(logging.ERROR):
        lock = directory.identify(FRONT)

    assert lock.lock == "front-door"
    assert "still using the previous manifest" in caplog.text
