"""A complete lock setup for tests: certificates, trust, a bundle server and a config file."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from lockclient import dsse
from lockclient.clock import Clock
from lockclient.config import Config, load_config
from lockclient.fetch import Fetcher, make_session
from lockclient.storage import Storage
from lockclient.update import Updater
from tests.bundle_factory import Trust
from tests.tls_fixtures import ScriptedServer, TestPki, make_pki

BUNDLE_PATH = "/bundles/front-door.json"
SIGNERS_PATH = "/signers.json"


def write_config(path: Path, pki: TestPki, trust: Trust, bundle_url: str, state_dir: Path,
                 extra: str = "", receiver_url: str | None = None, reader_path: str = "udp:127.0.0.1:41099") -> Path:
    receiver = f'receiver_url = "{receiver_url}"\n' if receiver_url else ""
    path.write_text(f"""
lock = "front-door"
bundle_url = "{bundle_url}"
ca_file = "{pki.ca_cert}"
client_cert = "{pki.client_cert}"
client_key = "{pki.client_key}"
root_keys = ["{trust.root.public_b64}"]
state_dir = "{state_dir}"
poll_interval = 1
push_interval = 1
{receiver}{extra}
[reader]
path = "{reader_path}"
targets = ["106A"]

[actuator]
type = "log"

[fetch]
connect_timeout = 2
read_timeout = 2
deadline = 5
backoff_initial = 0.05
backoff_max = 0.5
""")
    return path


@dataclass
class LockEnvironment:
    directory: Path
    pki: TestPki
    trust: Trust
    server: ScriptedServer
    config: Config

    @classmethod
    def create(cls, directory: Path, extra_config: str = "", pki: TestPki | None = None,
               receiver_url: str | None = None) -> LockEnvironment:
        directory.mkdir(parents=True, exist_ok=True)
        pki = pki or make_pki(directory)
        trust = Trust()
        server = ScriptedServer(pki).start()
        config_path = write_config(
            directory / "lock.toml", pki, trust, server.url(BUNDLE_PATH), directory / "state", extra_config,
            receiver_url=receiver_url,
        )
        return cls(directory, pki, trust, server, load_config(config_path))

    def updater(self, clock: Clock | None = None, storage: Storage | None = None) -> Updater:
        config = self.config
        clock = clock or Clock()
        root_keys = {self.trust.root.keyid: dsse.load_public_key(self.trust.root.public_b64)}
        if storage is None:
            storage = Storage(config.state_dir, config.lock, root_keys)
            storage.load(clock.now())
        fetcher = Fetcher(make_session(config.ca_file, config.client_cert, config.client_key), config.fetch)
        return Updater(fetcher, storage, clock, root_keys, config.lock, config.bundle_url, config.signers_url)

    def close(self) -> None:
        self.server.stop()


class IdleFrontend:
    """An nfcpy frontend stand-in with no card in the field: connect() polls until terminate()."""

    def open(self, path):
        return True

    def connect(self, rdwr, terminate):
        while not terminate():
            time.sleep(0.01)
        return None

    def close(self):
        pass
