"""Crash-safe bundle storage: kill -9 at every write step, truncated and garbage files."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lockclient import bundle as bundle_mod
from lockclient import dsse
from lockclient.storage import (BUNDLE_FILE, PREVIOUS_BUNDLE_FILE, PREVIOUS_SIGNERS_FILE, SIGNERS_FILE,
                                STATE_FILE, Storage)
from tests.bundle_factory import FOREVER, NOW, Trust

ROOT = Path(__file__).resolve().parent.parent
MEMBER = "04:a2:3b:4c:5d:6e:7f"

# The child stores bundles 2.. in order. With KILL_AT = k it SIGKILLs itself right before the
# k-th call of os.fchmod, os.fsync or os.replace, i.e. between any two steps of a write.
WRITER = r"""
import json, os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from lockclient import bundle as bundle_mod, dsse
from lockclient.storage import Storage

state_dir, root_b64, bundles_dir, kill_at = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
calls = [0]
def deadly(original):
    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    return wrapper
for name in ("fchmod", "fsync", "replace"):
    setattr(os, name, deadly(getattr(os, name)))

root = dsse.load_public_key(root_b64)
storage = Storage(state_dir, "front-door", {dsse.key_id(root): root})
storage.load(time.time())
names = sorted(os.listdir(bundles_dir), key=lambda n: int(n.split(".")[0]))
for name in names:
    data = open(os.path.join(bundles_dir, name), "rb").read()
    bundle = bundle_mod.verify_bundle(data, storage.signers.document, "front-door", storage.trusted("bundle"), time.time())
    storage.store_bundle(data, bundle, '"etag-%s"' % name)
print("calls", calls[0], flush=True)
"""


def root_keys(trust: Trust) -> dict:
    key = dsse.load_public_key(trust.root.public_b64)
    return {dsse.key_id(key): key}


def initial_state(state_dir: Path, trust: Trust) -> Storage:
    """A state directory holding signers and bundle version 1, as after a first good fetch."""
    storage = Storage(state_dir, "front-door", root_keys(trust))
    storage.load(NOW)
    signers_data = trust.signers()
    signers = bundle_mod.verify_signers(signers_data, storage.root_keys, None, NOW)
    storage.store_signers(signers_data, signers, None)
    data = trust.bundle(version=1, keys={MEMBER: FOREVER})
    storage.store_bundle(data, bundle_mod.verify_bundle(data, signers, "front-door", None, NOW), None)
    return storage


def write_bundles(directory: Path, trust: Trust, versions) -> Path:
    directory.mkdir()
    for version in versions:
        (directory / f"{version}.json").write_bytes(trust.bundle(version=version, keys={MEMBER: FOREVER}))
    return directory


def run_writer(state_dir: Path, trust: Trust, bundles: Path, kill_at: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", WRITER, str(ROOT), str(state_dir), trust.root.public_b64, str(bundles), str(kill_at)],
        capture_output=True, text=True, timeout=60,
    )


def reload(state_dir: Path, trust: Trust) -> Storage:
    storage = Storage(state_dir, "front-door", root_keys(trust))
    storage.load(NOW)
    return storage


def test_kill_at_every_write_step_leaves_valid_bundle(tmp_path):
    trust = Trust()
    bundles = write_bundles(tmp_path / "bundles", trust, [2, 3, 4])
    completed = run_writer(initial_state(tmp_path / "probe", trust).directory, trust, bundles, kill_at=0)
    total_steps = int(completed.stdout.split()[-1])
    assert total_steps >= 3 * 3 * 3  # three files per bundle, at least three steps per file

    for kill_at in range(1, total_steps + 1):
        state_dir = tmp_path / f"state-{kill_at}"
        initial_state(state_dir, trust)

        result = run_writer(state_dir, trust, bundles, kill_at)
        storage = reload(state_dir, trust)

        assert result.returncode == -signal.SIGKILL, result.stderr
        assert storage.bundle is not None, f"no valid bundle after kill at step {kill_at}"
        assert storage.bundle.document.version in (1, 2, 3, 4)
        assert storage.trusted("bundle").version >= storage.bundle.document.version
        assert not list(state_dir.glob(".*.tmp")), "unfinished temporary files are cleaned up"


def test_kill_at_random_moments_leaves_valid_bundle(tmp_path):
    trust = Trust()
    bundles = write_bundles(tmp_path / "bundles", trust, range(2, 200))
    rng = random.Random(7)
    seen_versions = set()

    for attempt in range(6):
        state_dir = tmp_path / f"state-{attempt}"
        initial_state(state_dir, trust)
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(ROOT), str(state_dir), trust.root.public_b64, str(bundles), "-1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(0.4 + rng.random() * 0.8)
        process.send_signal(signal.SIGKILL)
        process.wait()

        storage = reload(state_dir, trust)

        assert storage.bundle is not None
        seen_versions.add(storage.bundle.document.version)
    assert seen_versions  # the kill landed somewhere in the sequence of writes


def test_truncated_bundle_falls_back_to_previous(tmp_path):
    trust = Trust()
    storage = initial_state(tmp_path, trust)
    data = trust.bundle(version=2, keys={MEMBER: FOREVER})
    storage.store_bundle(data, bundle_mod.verify_bundle(data, storage.signers.document, "front-door", None, NOW), None)
    (tmp_path / BUNDLE_FILE).write_bytes(data[: len(data) // 2])

    loaded = reload(tmp_path, trust)

    assert loaded.bundle.document.version == 1
    assert loaded.trusted("bundle").version == 2  # the rollback reference is not lowered


@pytest.mark.parametrize("content", [b"", b"\x00" * 4096, b"garbage", b'{"payloadType": 1}', b"[]"])
def test_garbage_bundle_without_previous_means_no_bundle(tmp_path, content):
    trust = Trust()
    initial_state(tmp_path, trust)
    (tmp_path / BUNDLE_FILE).write_bytes(content)

    loaded = reload(tmp_path, trust)

    assert loaded.bundle is None
    assert loaded.signers is not None


def test_garbage_state_file_rebuilt_from_bundles(tmp_path):
    trust = Trust()
    initial_state(tmp_path, trust)
    (tmp_path / STATE_FILE).write_bytes(b"{\"bundle\": {\"versi")

    loaded = reload(tmp_path, trust)

    assert loaded.bundle.document.version == 1
    assert loaded.trusted("bundle").version == 1


def test_truncated_signers_falls_back_to_previous(tmp_path):
    trust = Trust()
    storage = initial_state(tmp_path, trust)
    newer = trust.signers(version=2)
    storage.store_signers(newer, bundle_mod.verify_signers(newer, storage.root_keys, None, NOW), None)
    (tmp_path / SIGNERS_FILE).write_bytes(newer[:40])

    loaded = reload(tmp_path, trust)

    assert loaded.signers.document.version == 1
    assert loaded.bundle.document.version == 1


def test_bundle_newer_than_state_accepted_at_start(tmp_path):
    trust = Trust()
    initial_state(tmp_path, trust)
    # A crash after bundle.json was replaced but before state.json was: the bundle is ahead.
    (tmp_path / BUNDLE_FILE).write_bytes(trust.bundle(version=3, keys={MEMBER: FOREVER}))

    loaded = reload(tmp_path, trust)

    assert loaded.bundle.document.version == 3
    assert loaded.trusted("bundle").version == 3


def test_corrupt_current_never_overwrites_good_previous(tmp_path):
    trust = Trust()
    storage = initial_state(tmp_path, trust)
    data = trust.bundle(version=2, keys={MEMBER: FOREVER})
    storage.store_bundle(data, bundle_mod.verify_bundle(data, storage.signers.document, "front-door", None, NOW), None)
    (tmp_path / BUNDLE_FILE).write_bytes(b"garbage")
    loaded = reload(tmp_path, trust)
    newer = trust.bundle(version=3, keys={MEMBER: FOREVER})

    loaded.store_bundle(newer, bundle_mod.verify_bundle(newer, loaded.signers.document, "front-door",
                                                         loaded.trusted("bundle"), NOW), None)

    previous = (tmp_path / PREVIOUS_BUNDLE_FILE).read_bytes()
    assert json.loads(previous)["payloadType"] == bundle_mod.BUNDLE_PAYLOAD_TYPE


def test_expired_stored_bundle_still_loaded_for_break_glass(tmp_path):
    trust = Trust()
    initial_state(tmp_path, trust)
    storage = Storage(tmp_path, "front-door", root_keys(trust))

    storage.load(NOW + 10 * 365 * 86_400)

    assert storage.bundle is not None
    assert storage.bundle.document.is_expired(NOW + 10 * 365 * 86_400)


def test_files_written_with_expected_names_and_no_leftovers(tmp_path):
    trust = Trust()
    initial_state(tmp_path, trust)

    names = sorted(os.listdir(tmp_path))

    assert names == sorted([BUNDLE_FILE, SIGNERS_FILE, STATE_FILE])
    assert PREVIOUS_SIGNERS_FILE not in names


def test_absurdly_nested_stored_bundle_falls_back(tmp_path):
    trust = Trust()
    storage = initial_state(tmp_path, trust)
    data = trust.bundle(version=2, keys={MEMBER: FOREVER})
    storage.store_bundle(data, bundle_mod.verify_bundle(data, storage.signers.document, "front-door", None, NOW), None)
    (tmp_path / BUNDLE_FILE).write_bytes(b"[" * 200_000 + b"]" * 200_000)

    loaded = reload(tmp_path, trust)

    assert loaded.bundle.document.version == 1
