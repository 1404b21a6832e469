"""A lock rejects every bundle and signers document an attacker can bring (threat model table)."""

from __future__ import annotations

import random

import pytest

from compiler import signing
from lockclient import bundle as bundle_format
from lockclient.bundle import (
    BadSignatureError, BundleError, ExpiredError, MalformedError, OversizedError, RollbackError,
    TrustedState, UnknownSignerError, WrongLockError, WrongPayloadTypeError, verify_bundle, verify_signers,
)
from tests.bundle_fixtures import DAY, NOW, compile_verified, make_trust, small_repository


@pytest.fixture(scope="module")
def trust():
    return make_trust()


@pytest.fixture(scope="module")
def build(trust):
    compiled, _ = compile_verified(small_repository(), trust)
    return compiled


@pytest.fixture(scope="module")
def envelope(build) -> bytes:
    return build.bundles["front-door"].envelope


def test_genuine_bundle_accepted(trust, envelope):
    verified = verify_bundle(envelope, trust.verified_signers(), "front-door", None, NOW)
    assert verified.lock == "front-door"


def test_single_byte_changes_rejected(trust, envelope):
    signers = trust.verified_signers()
    chooser = random.Random(20261204)
    positions = chooser.sample(range(len(envelope)), min(1000, len(envelope)))
    accepted = []
    for position in positions:
        tampered = bytearray(envelope)
        tampered[position] = (tampered[position] + chooser.randrange(1, 256)) % 256
        try:
            verify_bundle(bytes(tampered), signers, "front-door", None, NOW)
        except BundleError:
            continue
        accepted.append(position)
    assert accepted == []


def test_other_locks_bundle_rejected(trust, build):
    with pytest.raises(WrongLockError):
        verify_bundle(build.bundles["workshop"].envelope, trust.verified_signers(), "front-door", None, NOW)


def test_lower_version_rejected(trust, envelope):
    verified = verify_bundle(envelope, trust.verified_signers(), "front-door", None, NOW)
    stored = TrustedState(verified.version + 1, "0" * 64)
    with pytest.raises(RollbackError):
        verify_bundle(envelope, trust.verified_signers(), "front-door", stored, NOW)


def test_equal_version_other_bytes_rejected(trust, envelope):
    verified = verify_bundle(envelope, trust.verified_signers(), "front-door", None, NOW)
    stored = TrustedState(verified.version, "0" * 64)
    with pytest.raises(RollbackError):
        verify_bundle(envelope, trust.verified_signers(), "front-door", stored, NOW)


def test_equal_version_same_bytes_accepted(trust, envelope):
    verified = verify_bundle(envelope, trust.verified_signers(), "front-door", None, NOW)
    stored = TrustedState(verified.version, verified.sha256)
    assert verify_bundle(envelope, trust.verified_signers(), "front-door", stored, NOW).version == verified.version


def test_expired_bundle_rejected(trust, envelope):
    verified = verify_bundle(envelope, trust.verified_signers(), "front-door", None, NOW)
    with pytest.raises(ExpiredError):
        verify_bundle(envelope, trust.verified_signers(), "front-door", None, verified.expires_at)


def test_unlisted_signer_rejected(trust):
    impostor = make_trust()  # another signing key, not in trust's signers document
    compiled, _ = compile_verified(small_repository(), impostor)
    with pytest.raises(UnknownSignerError):
        verify_bundle(compiled.bundles["front-door"].envelope, trust.verified_signers(), "front-door", None, NOW)


def test_signature_under_listed_keyid_by_other_key_rejected(trust, envelope):
    import base64, json
    document = json.loads(envelope)
    forger = make_trust().signer
    forged_sig = forger.sign(b"anything")
    document["signatures"][0]["sig"] = base64.b64encode(forged_sig).decode()
    with pytest.raises(BadSignatureError):
        verify_bundle(signing.encode_json(document), trust.verified_signers(), "front-door", None, NOW)


def test_signers_document_not_accepted_as_bundle(trust):
    signers = trust.verified_signers()
    with pytest.raises(WrongPayloadTypeError):
        verify_bundle(trust.signers_document, signers, "front-door", None, NOW)


def test_expired_signers_document_rejected(trust):
    with pytest.raises(ExpiredError):
        verify_signers(trust.signers_document, trust.root_keys, None, NOW + 400 * DAY)


def test_rolled_back_signers_document_rejected(trust):
    newer = signing.build_signers_document(trust.root, [(trust.signer.public_key(), "ci")], 2, NOW, NOW + 30 * DAY)
    accepted = verify_signers(newer, trust.root_keys, None, NOW)
    stored = TrustedState(accepted.version, accepted.sha256)
    with pytest.raises(RollbackError):
        verify_signers(trust.signers_document, trust.root_keys, stored, NOW)


def test_signers_document_by_unpinned_root_rejected(trust):
    other = make_trust()
    with pytest.raises(UnknownSignerError):
        verify_signers(other.signers_document, trust.root_keys, None, NOW)


def test_signers_document_signed_by_signing_key_rejected(trust):
    # A stolen signing key cannot authorise more signing keys: only a pinned root key can.
    forged = signing.build_signers_document(trust.signer, [(trust.signer.public_key(), "x")], 99, NOW, NOW + DAY)
    with pytest.raises(UnknownSignerError):
        verify_signers(forged, trust.root_keys, None, NOW)


def test_oversized_bundle_rejected(trust):
    with pytest.raises(OversizedError):
        verify_bundle(b" " * (bundle_format.MAX_ENVELOPE_BYTES + 1), trust.verified_signers(), "front-door", None, NOW)


@pytest.mark.parametrize("data", [b"", b"[]", b"{}", b"not json", b'{"payloadType":"x"}'])
def test_malformed_envelope_rejected(trust, data):
    with pytest.raises(MalformedError):
        verify_bundle(data, trust.verified_signers(), "front-door", None, NOW)


def test_noncanonical_base64_signature_rejected(trust, envelope):
    # The last character of a 64-byte signature in base64 carries 4 unused bits: flipping one
    # leaves the decoded signature unchanged, but the envelope bytes differ.
    import json
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    document = json.loads(envelope)
    sig = document["signatures"][0]["sig"]
    last = sig.rstrip("=")[-1]
    document["signatures"][0]["sig"] = sig[: len(sig.rstrip("=")) - 1] + alphabet[alphabet.index(last) ^ 1] + "=="
    with pytest.raises(MalformedError):
        verify_bundle(signing.encode_json(document), trust.verified_signers(), "front-door", None, NOW)


# --- JSON that two parsers could read differently, or that breaks the parser ---------------


def _signed_payload(trust, payload_text: str) -> bytes:
    return signing.sign_envelope(bundle_format.BUNDLE_PAYLOAD_TYPE, payload_text.encode("utf-8"), trust.signer)


def _payload_text(build, **changes) -> str:
    import base64, json
    payload = json.loads(base64.b64decode(json.loads(build.bundles["front-door"].envelope)["payload"]))
    payload.update(changes)
    return json.dumps(payload, separators=(",", ":"))


def test_duplicate_field_in_signed_payload_rejected(trust, build):
    # Python keeps the last "lock", other parsers the first: the same signed bytes must not
    # name two different locks.
    text = _payload_text(build).replace('"lock":"front-door"', '"lock":"workshop","lock":"front-door"')
    with pytest.raises(MalformedError, match="more than once"):
        verify_bundle(_signed_payload(trust, text), trust.verified_signers(), "front-door", None, NOW)


def test_duplicate_field_in_envelope_rejected(trust, envelope):
    doubled = envelope.replace(b'{"payload":', b'{"payload":"e30=","payload":', 1)
    with pytest.raises(MalformedError, match="more than once"):
        verify_bundle(doubled, trust.verified_signers(), "front-door", None, NOW)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_number_in_payload_rejected(trust, build, constant):
    text = _payload_text(build).replace('"unlock_seconds":5', f'"unlock_seconds":{constant}')
    assert constant in text
    with pytest.raises(MalformedError):
        verify_bundle(_signed_payload(trust, text), trust.verified_signers(), "front-door", None, NOW)


@pytest.mark.parametrize("version", ["9" * 5000, str(2**63), "-1"])
def test_out_of_range_version_rejected(trust, build, version):
    text = _payload_text(build, version=0).replace('"version":0', f'"version":{version}')
    with pytest.raises(MalformedError):
        verify_bundle(_signed_payload(trust, text), trust.verified_signers(), "front-door", None, NOW)


def test_deeply_nested_payload_rejected(trust, build):
    text = _payload_text(build, source_commit=None).replace('"source_commit":null',
                                                             '"source_commit":' + "[" * 100_000 + "]" * 100_000)
    with pytest.raises(MalformedError, match="too deeply"):
        verify_bundle(_signed_payload(trust, text), trust.verified_signers(), "front-door", None, NOW)


def test_deeply_nested_envelope_rejected(trust):
    with pytest.raises(MalformedError, match="too deeply"):
        verify_bundle(b"[" * 100_000 + b"]" * 100_000, trust.verified_signers(), "front-door", None, NOW)


def test_utf16_envelope_rejected(trust, envelope):
    # Python's json guesses UTF-16 from the bytes; the same envelope in another encoding is
    # other bytes that must not verify.
    with pytest.raises(MalformedError, match="UTF-8"):
        verify_bundle(envelope.decode("ascii").encode("utf-16"), trust.verified_signers(), "front-door", None, NOW)


def test_many_signatures_rejected(trust, envelope):
    import json
    document = json.loads(envelope)
    document["signatures"] = document["signatures"] * 1000
    with pytest.raises(MalformedError, match="signatures"):
        verify_bundle(signing.encode_json(document), trust.verified_signers(), "front-door", None, NOW)


@pytest.mark.parametrize("settings", [
    {"unlock_seconds": "5"}, {"unlock_seconds": 0}, {"unlock_seconds": True}, {"unlock_seconds": 10**9},
    {"last_seen_precision": 1.5}, {"last_seen_precision": 0}, {"lockdown": "no"}, {"lockdown": 1},
    {"timezone": 7},
])
def test_settings_of_wrong_type_rejected(trust, build, settings):
    import base64, json
    payload = json.loads(base64.b64decode(json.loads(build.bundles["front-door"].envelope)["payload"]))
    payload["settings"].update(settings)
    with pytest.raises(MalformedError, match="settings"):
        verify_bundle(_signed_payload(trust, json.dumps(payload)), trust.verified_signers(), "front-door", None, NOW)


def test_expiry_before_issue_rejected(trust, build):
    text = _payload_text(build, expires_at=bundle_format.format_time(NOW - 3600))
    with pytest.raises(MalformedError, match="not after issued_at"):
        verify_bundle(_signed_payload(trust, text), trust.verified_signers(), "front-door", None, NOW)


# --- revocation of a stolen signing key ----------------------------------------------------


def test_forged_version_of_revoked_key_does_not_block_genuine_bundle(trust, envelope):
    # A thief signed a bundle with a huge version before the key was removed from the signers
    # document. Once it is removed, that version no longer makes genuine bundles a rollback.
    stolen = "f" * 64
    stored = TrustedState(2**40, "0" * 64, signed_by=stolen)
    verified = verify_bundle(envelope, trust.verified_signers(), "front-door", stored, NOW)
    assert verified.version < 2**40


def test_version_of_listed_key_still_binds(trust, envelope):
    signers = trust.verified_signers()
    listed = next(iter(signers.keys))
    stored = TrustedState(2**40, "0" * 64, signed_by=listed)
    with pytest.raises(RollbackError):
        verify_bundle(envelope, signers, "front-door", stored, NOW)


def test_storage_remembers_signer_of_accepted_bundle(tmp_path, trust, envelope):
    from lockclient.storage import Storage

    signers = trust.verified_signers()
    verified = verify_bundle(envelope, signers, "front-door", None, NOW)
    storage = Storage(tmp_path, "front-door", trust.root_keys)
    storage.load(NOW)
    storage.store_signers(trust.signers_document, signers, None)
    storage.store_bundle(envelope, verified, None)

    reloaded = Storage(tmp_path, "front-door", trust.root_keys)
    reloaded.load(NOW)
    assert reloaded.trusted("bundle") == TrustedState(verified.version, verified.sha256, verified.signed_by)
