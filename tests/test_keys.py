"""`doorlock keygen` and `doorlock signers`: key files, key ids and the signers document."""

from __future__ import annotations

import base64
import hashlib
import json
import stat

import pytest
from click.testing import CliRunner

from compiler import signing
from compiler.cli import main
from lockclient.bundle import verify_signers
from lockclient.dsse import key_id

NOW_ISO = "2026-12-04T20:00:00Z"


def invoke(*arguments: str, env: dict | None = None):
    return CliRunner().invoke(main, list(arguments), env=env, catch_exceptions=False)


def test_keygen_writes_private_key_mode_0600(tmp_path):
    result = invoke("keygen", "--out", str(tmp_path / "ci"))
    assert result.exit_code == 0, result.output
    mode = stat.S_IMODE((tmp_path / "ci.key").stat().st_mode)
    assert mode == 0o600
    assert (tmp_path / "ci.key").read_text().startswith("-----BEGIN PRIVATE KEY-----")


def test_keygen_prints_key_id_not_private_key(tmp_path):
    result = invoke("keygen", "--out", str(tmp_path / "ci"))
    raw = base64.b64decode((tmp_path / "ci.pub").read_text().strip())
    assert len(raw) == 32
    assert hashlib.sha256(raw).hexdigest() in result.output
    assert "PRIVATE KEY" not in result.output
    pem_body = "".join((tmp_path / "ci.key").read_text().splitlines()[1:-1])
    assert pem_body not in result.output


def test_public_key_file_is_one_line(tmp_path):
    invoke("keygen", "--root", "--out", str(tmp_path / "root"))
    assert len((tmp_path / "root.pub").read_text().splitlines()) == 1


def test_keygen_refuses_to_overwrite(tmp_path):
    invoke("keygen", "--out", str(tmp_path / "ci"))
    before = (tmp_path / "ci.key").read_bytes()
    result = invoke("keygen", "--out", str(tmp_path / "ci"))
    assert result.exit_code == 1
    assert "already exists" in result.output
    assert (tmp_path / "ci.key").read_bytes() == before


def test_keygen_missing_directory_reported(tmp_path):
    result = invoke("keygen", "--out", str(tmp_path / "nowhere" / "ci"))
    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_private_key_loaded_from_environment(tmp_path, monkeypatch):
    paths = signing.generate_key_pair(tmp_path / "ci")
    monkeypatch.setenv(signing.SIGNING_KEY_ENV, paths.private.read_text())
    assert key_id(signing.load_private_key(None).public_key()) == paths.key_id


@pytest.mark.parametrize(("content", "message"), [
    ("garbage", "is not a PEM private key"),
    ("", "is not a PEM private key"),
])
def test_unreadable_private_key_reported(tmp_path, content, message):
    path = tmp_path / "bad.key"
    path.write_text(content)
    with pytest.raises(signing.KeyFileError, match=message):
        signing.load_private_key(path)


def test_public_key_given_as_private_key_reported(tmp_path):
    paths = signing.generate_key_pair(tmp_path / "ci")
    with pytest.raises(signing.KeyFileError, match="is a public key"):
        signing.load_private_key(paths.public)


def _keys(tmp_path):
    invoke("keygen", "--root", "--out", str(tmp_path / "root"))
    invoke("keygen", "--out", str(tmp_path / "ci-2026"))
    invoke("keygen", "--out", str(tmp_path / "ci-2027"))
    root_public = signing.load_public_key_file(tmp_path / "root.pub")
    return {key_id(root_public): root_public}


def test_signers_document_verifies_with_root(tmp_path):
    roots = _keys(tmp_path)
    result = invoke("signers", "sign", "--root", str(tmp_path / "root.key"), "--signer", str(tmp_path / "ci-2026.pub"),
                    "--signer", str(tmp_path / "ci-2027.pub"), "--version", "3", "--expires-days", "30",
                    "--out", str(tmp_path / "signers.json"), "--now", NOW_ISO)
    assert result.exit_code == 0, result.output
    signers = verify_signers((tmp_path / "signers.json").read_bytes(), roots, None, 1796414400)
    assert signers.version == 3
    assert signers.expires_at == 1796414400 + 30 * 86400
    expected = {key_id(signing.load_public_key_file(tmp_path / f"{name}.pub")) for name in ("ci-2026", "ci-2027")}
    assert set(signers.keys) == expected


def test_signers_version_continues_previous(tmp_path):
    _keys(tmp_path)
    common = ["--root", str(tmp_path / "root.key"), "--signer", str(tmp_path / "ci-2026.pub"), "--now", NOW_ISO]
    invoke("signers", "sign", *common, "--version", "4", "--out", str(tmp_path / "v4.json"))
    result = invoke("signers", "sign", *common, "--previous-file", str(tmp_path / "v4.json"), "--out", str(tmp_path / "next.json"))
    assert result.exit_code == 0, result.output
    payload = json.loads(base64.b64decode(json.loads((tmp_path / "next.json").read_bytes())["payload"]))
    assert payload["version"] == 5


@pytest.mark.parametrize("version", ["3", "4"])
def test_signers_version_not_above_previous_rejected(tmp_path, version):
    _keys(tmp_path)
    common = ["--root", str(tmp_path / "root.key"), "--signer", str(tmp_path / "ci-2026.pub"), "--now", NOW_ISO]
    invoke("signers", "sign", *common, "--version", "4", "--out", str(tmp_path / "v4.json"))
    result = invoke("signers", "sign", *common, "--previous-file", str(tmp_path / "v4.json"),
                    "--version", version, "--out", str(tmp_path / "next.json"))
    assert result.exit_code == 1
    assert "is not higher than version 4" in result.output
    assert not (tmp_path / "next.json").exists()


@pytest.mark.parametrize("arguments, message", [
    (["--version", str(2**63)], "above 2**63-1"),
    (["--version", "1", "--expires-days", "100000000"], "not in the range"),
    (["--version", "1", "--now", "9999-12-01T00:00:00Z"], "after the year 9999"),
])
def test_signers_values_locks_reject_refused(tmp_path, arguments, message):
    _keys(tmp_path)
    result = invoke("signers", "sign", "--root", str(tmp_path / "root.key"), "--signer", str(tmp_path / "ci-2026.pub"),
                    *arguments, "--out", str(tmp_path / "signers.json"))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "signers.json").exists()


def test_signers_without_version_rejected(tmp_path):
    _keys(tmp_path)
    result = invoke("signers", "sign", "--root", str(tmp_path / "root.key"), "--signer", str(tmp_path / "ci-2026.pub"),
                    "--out", str(tmp_path / "signers.json"))
    assert result.exit_code == 2
    assert "--version" in result.output


def test_root_key_as_signer_rejected(tmp_path):
    _keys(tmp_path)
    result = invoke("signers", "sign", "--root", str(tmp_path / "root.key"), "--signer", str(tmp_path / "root.pub"),
                    "--version", "1", "--out", str(tmp_path / "signers.json"))
    assert result.exit_code == 1
    assert "root key must not sign bundles" in result.output


def test_private_key_as_signer_rejected(tmp_path):
    _keys(tmp_path)
    result = invoke("signers", "sign", "--root", str(tmp_path / "root.key"), "--signer", str(tmp_path / "ci-2026.key"),
                    "--version", "1", "--out", str(tmp_path / "signers.json"))
    assert result.exit_code == 1
    assert "is a PEM file" in result.output


def test_signers_show_lists_keys(tmp_path):
    _keys(tmp_path)
    invoke("signers", "sign", "--root", str(tmp_path / "root.key"), "--signer", str(tmp_path / "ci-2026.pub"),
           "--version", "7", "--out", str(tmp_path / "signers.json"), "--now", NOW_ISO)
    result = invoke("signers", "show", str(tmp_path / "signers.json"))
    assert result.exit_code == 0
    assert "version 7" in result.output
    assert key_id(signing.load_public_key_file(tmp_path / "ci-2026.pub")) in result.output
    assert "(ci-2026)" in result.output


def test_envelope_signing_is_deterministic(tmp_path):
    paths = signing.generate_key_pair(tmp_path / "ci")
    key = signing.load_private_key(paths.private)
    assert signing.sign_envelope("text/plain", b"hello", key) == signing.sign_envelope("text/plain", b"hello", key)


# --- the rotation and revocation procedures of docs/keys.md, run with the real commands -----


class DirectoryFetcher:
    """Serves a build directory in place of the hosting: the lock's fetcher without TLS."""

    def __init__(self):
        self.build = None

    def get(self, url: str, etag: str | None):
        from lockclient.fetch import FetchResult

        return FetchResult((self.build / url).read_bytes(), None)


class LockSide:
    """A lock's real update round (lockclient.update) and storage, fed from build directories."""

    def __init__(self, state_dir, root_pub, lock_name: str):
        from lockclient.clock import Clock
        from lockclient.storage import Storage
        from lockclient.update import Updater

        root = signing.load_public_key_file(root_pub)
        root_keys = {key_id(root): root}
        self.lock_name = lock_name
        self.now = 0
        self.fetcher = DirectoryFetcher()
        self.storage = Storage(state_dir, lock_name, root_keys)
        self.storage.load(0)
        clock = Clock(system_time=lambda: self.now)
        self.updater = Updater(self.fetcher, self.storage, clock, root_keys, lock_name,
                               f"bundles/{lock_name}.json", "signers.json")

    def update(self, build, now: int):
        """Run one update round against ``build``; return the bundle in force and the rejections."""
        self.fetcher.build = build
        self.now = now
        outcome = self.updater.run_once()
        return self.storage.bundle.document, outcome.rejections


def _at(offset_hours: int) -> tuple[int, str]:
    from lockclient.bundle import format_time
    instant = 1796414400 + offset_hours * 3600
    return instant, format_time(instant)


def _sign_signers(tmp_path, hours: int, *signers: str, first: bool = False):
    _, iso = _at(hours)
    version = ["--version", "1"] if first else ["--previous-file", str(tmp_path / "signers.json")]
    arguments = ["signers", "sign", "--root", str(tmp_path / "root-a.key"), *version, "--expires-days", "365",
                 "--out", str(tmp_path / "signers.json"), "--now", iso]
    for name in signers:
        arguments += ["--signer", str(tmp_path / f"{name}.pub")]
    result = invoke(*arguments)
    assert result.exit_code == 0, result.output
    (tmp_path / "access" / "signers.json").write_bytes((tmp_path / "signers.json").read_bytes())


def _compile(tmp_path, hours: int, key: str, out: str, previous: str | None = None):
    _, iso = _at(hours)
    arguments = ["compile", str(tmp_path / "access"), "--key", str(tmp_path / f"{key}.key"),
                 "--out", str(tmp_path / out), "--now", iso]
    if previous is not None:
        arguments += ["--previous", str(tmp_path / previous)]
    result = invoke(*arguments)
    assert result.exit_code == 0, result.output
    return tmp_path / out


def _keygen(tmp_path, name: str, root: bool = False):
    result = invoke("keygen", *(["--root"] if root else []), "--out", str(tmp_path / name))
    assert result.exit_code == 0, result.output


def _first_build(tmp_path) -> LockSide:
    from tests.test_compile import write_access

    write_access(tmp_path / "access")
    for name, root in (("root-a", True), ("root-b", True), ("ci-2026", False)):
        _keygen(tmp_path, name, root)
    _sign_signers(tmp_path, 0, "ci-2026", first=True)
    _compile(tmp_path, 0, "ci-2026", "build-1")
    lock = LockSide(tmp_path / "lock", tmp_path / "root-a.pub", "main-entrance")
    bundle, rejections = lock.update(tmp_path / "build-1", _at(0)[0])
    assert rejections == ()
    return lock


def test_documented_rotation_keeps_lock_verifying(tmp_path):
    lock = _first_build(tmp_path)
    ci_2026 = key_id(signing.load_public_key_file(tmp_path / "ci-2026.pub"))

    _keygen(tmp_path, "ci-2027")                                    # step 1
    _sign_signers(tmp_path, 1, "ci-2026", "ci-2027")                # step 2
    _compile(tmp_path, 1, "ci-2026", "build-2", "build-1")          # step 3
    bundle, rejections = lock.update(tmp_path / "build-2", _at(1)[0])
    assert rejections == ()
    assert bundle.signed_by == ci_2026
    _compile(tmp_path, 2, "ci-2027", "build-3", "build-2")          # step 4: unchanged bundles stay
    bundle, rejections = lock.update(tmp_path / "build-3", _at(2)[0])
    assert rejections == ()
    assert bundle.signed_by == ci_2026
    _sign_signers(tmp_path, 3, "ci-2027")                           # step 5
    _compile(tmp_path, 3, "ci-2027", "build-4", "build-3")          # step 6: every bundle re-signed
    bundle, rejections = lock.update(tmp_path / "build-4", _at(3)[0])

    ci_2027 = key_id(signing.load_public_key_file(tmp_path / "ci-2027.pub"))
    assert rejections == ()
    assert bundle.signed_by == ci_2027
    assert lock.storage.signers.document.keys.keys() == {ci_2027}


def test_documented_revocation_replaces_forged_bundle(tmp_path):
    from lockclient import bundle as bundle_mod
    from lockclient.dsse import parse_envelope

    lock = _first_build(tmp_path)
    genuine = (tmp_path / "build-1" / "bundles" / "main-entrance.json").read_bytes()

    # The thief signs a bundle that admits their card, with a huge version, and gets it onto the lock.
    payload = json.loads(parse_envelope(genuine).payload)
    payload["version"] = 2**40
    payload["keys"]["04:66:66:66:66:66:66"] = 0
    forged_build = tmp_path / "forged"
    (forged_build / "bundles").mkdir(parents=True)
    (forged_build / "signers.json").write_bytes((tmp_path / "build-1" / "signers.json").read_bytes())
    (forged_build / "bundles" / "main-entrance.json").write_bytes(signing.sign_envelope(
        bundle_mod.BUNDLE_PAYLOAD_TYPE, signing.encode_json(payload), signing.load_private_key(tmp_path / "ci-2026.key")))
    bundle, rejections = lock.update(forged_build, _at(1)[0])
    assert rejections == ()
    assert bundle.version == 2**40

    _keygen(tmp_path, "ci-new")                                      # step 1
    _sign_signers(tmp_path, 2, "ci-new")                             # step 2
    build = _compile(tmp_path, 2, "ci-new", "build-2", "build-1")    # step 3
    bundle, rejections = lock.update(build, _at(2)[0])

    assert rejections == ()
    assert bundle.version < 2**40
    assert bundle.signed_by == key_id(signing.load_public_key_file(tmp_path / "ci-new.pub"))
    assert not bundle_mod.decide(bundle, "04:66:66:66:66:66:66", _at(2)[0]).allowed
    # The forged bundle cannot come back: its key is no longer listed.
    bundle, rejections = lock.update(forged_build, _at(3)[0])
    assert [rejection.reason for rejection in rejections] == ["rollback", "unknown signer"]
    assert bundle.version < 2**40
