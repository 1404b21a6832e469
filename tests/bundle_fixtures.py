"""Keys, signers documents and small access repositories shared by the compiler tests."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from compiler import signing
from compiler.bundle_build import Build, compile_repository
from compiler.model import (
    AccessRepository, AccessRule, BreakGlassKey, Group, Key, Lock, Person, Schedule, Window,
)
from lockclient import bundle as bundle_format
from lockclient.dsse import key_id

DAY = 86400
# Friday 2026-12-04 20:00:00 UTC
NOW = 1796414400


@dataclass
class Trust:
    """A root key, a signing key and the signers document that links them."""

    root: Ed25519PrivateKey
    signer: Ed25519PrivateKey
    signers_document: bytes

    @property
    def root_keys(self):
        return {key_id(self.root.public_key()): self.root.public_key()}

    def verified_signers(self, now: int = NOW) -> bundle_format.Signers:
        return bundle_format.verify_signers(self.signers_document, self.root_keys, None, now)


def make_trust(issued_at: int = NOW - 30 * DAY, days: int = 365, version: int = 1) -> Trust:
    root = Ed25519PrivateKey.generate()
    signer = Ed25519PrivateKey.generate()
    document = signing.build_signers_document(
        root, [(signer.public_key(), "ci")], version, issued_at, issued_at + days * DAY
    )
    return Trust(root, signer, document)


def compile_verified(repository: AccessRepository, trust: Trust, now: int = NOW, **options) -> tuple[Build, dict]:
    """Compile ``repository`` and return the build and each lock's verified bundle."""
    build = compile_repository(repository, trust.signer, trust.signers_document, now, **options)
    signers = trust.verified_signers(now)
    verified = {
        name: bundle_format.verify_bundle(entry.envelope, signers, name, None, now)
        for name, entry in build.bundles.items()
    }
    return build, verified


ALICE_KEY = "04:a2:3b:4c:5d:6e:7f"
BOB_KEY = "04:b0:b0:b0:b0:b0:01"
FIRE_BRIGADE_KEY = "04:11:22:33:44:55:66"


def small_repository(root: Path = Path("access")) -> AccessRepository:
    """Two locks, two people, a workshop schedule with a window across midnight."""
    workshop_hours = Schedule(
        "workshop-hours",
        windows=(
            Window(frozenset(range(5)), 9 * 60, 18 * 60),
            Window(frozenset({4}), 22 * 60, 2 * 60),
        ),
    )
    always = Schedule("always", always=True)
    return AccessRepository(
        root=root,
        people={
            "alice": Person("alice", "Alice Jansen", email="alice@example.org", groups=("members",),
                            keys=(Key(ALICE_KEY, "blue fob"),)),
            "bob": Person("bob", "Bob de Vries", email="bob@example.org", groups=("staff",),
                          valid_until=date(2026, 12, 31), keys=(Key(BOB_KEY, "card"),)),
        },
        groups={
            "members": Group("members", access=(AccessRule(("front-door", "workshop"), "workshop-hours"),)),
            "staff": Group("staff", access=(AccessRule(("front-door",), "always", office_mode=True),)),
        },
        locks={
            "front-door": Lock("front-door", "Europe/Amsterdam", certificate_sha256="ab" * 32,
                               break_glass=(BreakGlassKey(FIRE_BRIGADE_KEY, "key safe"),)),
            "workshop": Lock("workshop", "Europe/Amsterdam", valid_days=3),
        },
        schedules={"workshop-hours": workshop_hours, "always": always},
    )
