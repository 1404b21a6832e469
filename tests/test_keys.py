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
