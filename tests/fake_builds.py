"""Builds shaped like the output of ``doorlock compile``, with chosen versions and bytes.

The publisher and nginx treat bundle files as opaque bytes listed in the manifest, so their
tests use these instead of signing real bundles.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def write_build(directory: Path, bundles: dict[str, tuple[int, bytes]],
                signers: tuple[int, bytes] = (1, b'{"signers": 1}'), commit: str | None = None) -> Path:
    """Write manifest.json, signers.json and bundles/<lock>.json; return ``directory``."""
    directory = Path(directory)
    (directory / "bundles").mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": 1,
        "generated_at": "2026-12-04T20:00:00Z",
        "source_commit": commit,
        "signers": {"version": signers[0], "sha256": hashlib.sha256(signers[1]).hexdigest()},
        "bundles": {},
    }
    (directory / "signers.json").write_bytes(signers[1])
    for lock, (version, data) in bundles.items():
        (directory / "bundles" / f"{lock}.json").write_bytes(data)
        manifest["bundles"][lock] = {
            "version": version, "sha256": hashlib.sha256(data).hexdigest(),
            "issued_at": "2026-12-04T20:00:00Z", "expires_at": "2026-12-11T20:00:00Z",
            "path": f"bundles/{lock}.json", "certificate_sha256": None, "keys": 1,
        }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return directory


def bundle_bytes(lock: str, version: int, size: int = 200) -> bytes:
    """Return ``size`` bytes of JSON naming the lock and version, padded to the exact size."""
    head = json.dumps({"lock": lock, "version": version, "pad": ""})
    padding = size - len(head)
    if padding < 0:
        raise ValueError(f"size {size} is too small for lock {lock!r}")
    return json.dumps({"lock": lock, "version": version, "pad": "x" * padding}).encode()
