"""A real receiver for tests: generated CA and certificates, a published tree, a subprocess.

``ReceiverSite`` builds everything in a temporary directory: a CA (``compiler.pki``), a server
certificate for 127.0.0.1, one certificate per lock, a ``manifest.json`` with the locks'
certificate fingerprints, and one bundle per lock (a DSSE envelope whose payload lists the
lock's keys; the receiver does not verify signatures, so the signature is a placeholder).
``start()`` runs ``python -m receiver serve`` on an ephemeral port of 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import resource
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from compiler import pki

ROOT = Path(__file__).resolve().parent.parent
BUNDLE_PAYLOAD_TYPE = "application/vnd.doorlock.bundle+json; version=1"


@dataclass
class LockIdentity:
    name: str
    certificate: Path
    private_key: Path
    sha256: str
    keys: list[str] = field(default_factory=list)
    precision: int = 3600


def write_bundle(publish_dir: Path, lock: LockIdentity, version: int = 1) -> dict:
    """Write ``bundles/<lock>.json`` and return its manifest entry."""
    payload = {
        "format": 1, "lock": lock.name, "version": version,
        "issued_at": "2026-12-04T00:00:00Z", "expires_at": "2026-12-11T00:00:00Z",
        "source_commit": None,
        "settings": {"timezone": "Europe/Berlin", "unlock_seconds": 5,
                     "last_seen_precision": lock.precision, "lockdown": False},
        "intervals": [[0, 4102444800]],
        "keys": {key: 0 for key in lock.keys},
        "office_mode": {}, "break_glass": [],
    }
    envelope = {"payloadType": BUNDLE_PAYLOAD_TYPE,
                "payload": base64.b64encode(json.dumps(payload).encode()).decode(),
                "signatures": [{"keyid": "0" * 64, "sig": base64.b64encode(b"placeholder").decode()}]}
    path = publish_dir / "bundles" / f"{lock.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(envelope).encode()
    path.write_bytes(data)
    import hashlib
    return {"version": version, "sha256": hashlib.sha256(data).hexdigest(),
            "issued_at": payload["issued_at"], "expires_at": payload["expires_at"],
            "path": f"bundles/{lock.name}.json", "certificate_sha256": lock.sha256,
            "keys": len(lock.keys)}


class ReceiverSite:
    """Everything a receiver needs, under ``directory``."""

    def __init__(self, directory: Path, locks: dict[str, list[str]], precision: int = 3600,
                 clock_tolerance: int = 300, max_body_bytes: int = 65536, max_items: int = 100,
                 threads: int = 16):
        self.directory = Path(directory)
        self.ca_dir = self.directory / "ca"
        self.certs_dir = self.directory / "certs"
        self.publish_dir = self.directory / "publish"
        self.database = self.directory / "receiver.sqlite"
        self.config_path = self.directory / "receiver.toml"
        self.ready_file = self.directory / "ready"
        self.log_path = self.directory / "receiver.log"
        self.process: subprocess.Popen | None = None
        self.url: str | None = None

        pki.init_ca(self.ca_dir)
        self.server_cert, self.server_key = pki.issue_server(self.ca_dir, "127.0.0.1", self.certs_dir)
        self.precision = precision
        self.locks: dict[str, LockIdentity] = {}
        for name, keys in locks.items():
            cert, key, sha = pki.issue_lock(self.ca_dir, name, self.certs_dir)
            self.locks[name] = LockIdentity(name, cert, key, sha, list(keys), precision)
        self.publish()
        self.config_path.write_text(f"""
[server]
mode = "tls"
host = "127.0.0.1"
port = 0
threads = {threads}

[tls]
certificate = "{self.server_cert}"
private_key = "{self.server_key}"
client_ca = "{self.ca_dir / 'ca.crt'}"

[data]
manifest = "{self.publish_dir / 'manifest.json'}"
database = "{self.database}"

[limits]
max_body_bytes = {max_body_bytes}
max_items = {max_items}
clock_tolerance_seconds = {clock_tolerance}
""")

    def add_lock(self, name: str, keys: list[str] = ()) -> LockIdentity:
        """Issue a certificate for a new lock and publish a manifest that includes it."""
        cert, key, sha = pki.issue_lock(self.ca_dir, name, self.certs_dir)
        self.locks[name] = LockIdentity(name, cert, key, sha, list(keys), self.precision)
        self.publish()
        return self.locks[name]

    def remove_lock(self, name: str) -> None:
        """Publish a manifest without ``name``, as when its file is deleted from the access repository."""
        del self.locks[name]
        self.publish()

    @property
    def ca_certificate(self) -> Path:
        return self.ca_dir / "ca.crt"

    def publish(self, disabled: tuple[str, ...] = ()) -> None:
        """Write the bundles and ``manifest.json``; ``disabled`` locks get no entry."""
        bundles = {name: write_bundle(self.publish_dir, lock)
                   for name, lock in self.locks.items() if name not in disabled}
        manifest = {"format": 1, "generated_at": "2026-12-04T00:00:00Z", "source_commit": None,
                    "signers": {"version": 1, "sha256": "0" * 64}, "bundles": bundles}
        temporary = self.publish_dir / "manifest.json.tmp"
        temporary.write_text(json.dumps(manifest))
        os.replace(temporary, self.publish_dir / "manifest.json")

    def start(self, timeout: float = 30.0, open_files: int | None = None) -> str:
        """Start the receiver subprocess and return its base URL once it accepts connections.

        ``open_files`` sets the process's soft and hard limit of open file descriptors.
        """
        self.ready_file.unlink(missing_ok=True)
        log = open(self.log_path, "ab")
        limit = None
        if open_files is not None:
            def limit():
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "receiver", "serve", "--config", str(self.config_path),
             "--ready-file", str(self.ready_file)],
            cwd=ROOT, stdout=log, stderr=log, preexec_fn=limit)
        log.close()
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"receiver exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"receiver did not start within {timeout} s:\n{self.log()}")
            time.sleep(0.05)
        self.url = self.ready_file.read_text().strip()
        return self.url

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Kill the receiver with SIGKILL, as a crash or power cut would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def session(self, lock: str | None) -> requests.Session:
        """A requests session that presents ``lock``'s certificate (or none) and trusts our CA."""
        session = requests.Session()
        # Without this, REQUESTS_CA_BUNDLE from the environment would replace our CA, and a
        # proxy variable could send loopback traffic elsewhere.
        session.trust_env = False
        session.verify = str(self.ca_certificate)
        if lock is not None:
            identity = self.locks[lock]
            session.cert = (str(identity.certificate), str(identity.private_key))
        return session

    def ssl_context(self, lock: str) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_certificate))
        identity = self.locks[lock]
        context.load_cert_chain(str(identity.certificate), str(identity.private_key))
        return context
