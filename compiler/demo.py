"""``doorlock demo``: the whole system on loopback, step by step, in a temporary directory.

The story (the end-to-end test drives the same :class:`Deployment`):

1. copy the example access repository into a fresh git repository and add a demo member with
   two cards; create the CA, a server certificate and lock certificates, and paste the lock
   fingerprints into the lock YAML; create root and signing keys and the signers document;
   compile, publish, and serve the published tree over mutual TLS (nginx when it is
   installed, otherwise the development server) with the statistics receiver behind it;
2. start ``lockclient run`` with the nfcpy ``udp`` reader and the ``log`` actuator; it
   downloads its bundle over mutual TLS;
3. tap the member's card (an nfcpy udp tag emulator on 127.0.0.1): the door opens; tap an
   unknown card: denied, and it shows up in ``doorlock stats unknown-keys`` after the push;
4. remove the card from the member's YAML in a git commit, compile and publish: the next poll
   brings the new bundle, and the same tap is denied (the time from publish to the first
   denial is printed);
5. a second lock's certificate cannot read the first lock's bundle; with the bundle server
   stopped the lock keeps deciding from its stored bundle.

Nothing listens on anything but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click

from compiler import pki
from compiler.publish import live_release

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_ACCESS = ROOT / "access"
# Runs as its own process per tap: the card is on the reader while it runs.
CARD_EMULATOR_MODULE = "compiler.nfc_emulator"

FIRST_LOCK = "front-door"
MEMBER = "demo.member"
MEMBER_FILE = f"people/{MEMBER}.yaml"
# Seven-byte UIDs (NTAG-like cards); the lock logs only the first and last byte at INFO,
# so the three cards differ in their last byte.
REMOVED_CARD = "04:d3:a1:5e:22:71:80"
KEPT_CARD = "04:d3:a1:5e:22:71:81"
UNKNOWN_CARD = "04:5a:c0:33:9e:10:44"

GIT_IDENTITY = ["-c", "user.name=doorlock demo", "-c", "user.email=demo@example.invalid",
                "-c", "commit.gpgsign=false"]


class DemoError(RuntimeError):
    """A step of the story failed; the message names the step and carries the relevant log."""


@dataclass
class TapResult:
    verdict: str  # "open" or "denied"
    code: str
    seconds: float  # from placing the card to the lock's decision


def short_hwid(hwid: str) -> str:
    """Return the form the lock logs at INFO: first and last byte."""
    parts = hwid.split(":")
    return f"{parts[0]}:…:{parts[-1]}"


# --- helpers for processes and commands ----------------------------------------------------


def run_doorlock(*arguments) -> str:
    """Run a ``doorlock`` command in this process and return what it printed."""
    from compiler.cli import main

    output = io.StringIO()
    words = [str(argument) for argument in arguments]
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        try:
            main.main(args=words, prog_name="doorlock", standalone_mode=False)
        except click.ClickException as error:
            raise DemoError(f"'doorlock {' '.join(words)}' failed: {error.format_message()}\n"
                            f"{output.getvalue()}") from None
    return output.getvalue()


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def subprocess_environment() -> dict[str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environment.get("PYTHONPATH")]))
    environment["PYTHONIOENCODING"] = "utf-8"
    # Loopback traffic must never go through a proxy from the environment.
    environment["NO_PROXY"] = environment["no_proxy"] = "localhost,127.0.0.1,::1"
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        environment.pop(name, None)
    return environment


class LogFollower:
    """Collect a subprocess's output lines with the monotonic time each was read."""

    def __init__(self, stream, copy_to: Path):
        self.lines: list[tuple[float, str]] = []
        self._condition = threading.Condition()
        self._copy = open(copy_to, "a", encoding="utf-8")
        self._thread = threading.Thread(target=self._follow, args=(stream,), daemon=True)
        self._thread.start()

    def _follow(self, stream) -> None:
        for raw in stream:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self._copy.write(line + "\n")
            self._copy.flush()
            with self._condition:
                self.lines.append((time.monotonic(), line))
                self._condition.notify_all()
        self._copy.close()

    def mark(self) -> int:
        with self._condition:
            return len(self.lines)

    def wait_for(self, pattern: str, since: int = 0, timeout: float = 30.0) -> tuple[float, re.Match]:
        """Wait for a line matching ``pattern`` at or after line ``since``; return (time read, match)."""
        expression = re.compile(pattern)
        deadline = time.monotonic() + timeout
        position = since
        with self._condition:
            while True:
                while position < len(self.lines):
                    read_at, line = self.lines[position]
                    found = expression.search(line)
                    if found:
                        return read_at, found
                    position += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(pattern)
                self._condition.wait(remaining)

    def text(self, last: int = 30) -> str:
        with self._condition:
            return "\n".join(line for _, line in self.lines[-last:])


# --- the deployment ------------------------------------------------------------------------


class Deployment:
    """Everything the story runs, under one working directory, started and stopped step by step."""

    def __init__(self, workdir: Path, access_source: Path = EXAMPLE_ACCESS, hosting: str = "auto",
                 poll_interval: float = 1.0):
        self.workdir = Path(workdir)
        self.access_source = Path(access_source)
        self.access = self.workdir / "access"
        self.pki_dir = self.workdir / "pki"
        self.keys_dir = self.workdir / "keys"
        self.www = self.workdir / "www"
        self.lock_dir = self.workdir / "lock"
        self.poll_interval = poll_interval
        self.hosting, self.hosting_reason = self._choose_hosting(hosting)

        self.second_lock: str | None = None
        self.lock_certs: dict[str, tuple[Path, Path, str]] = {}
        self.server_cert: Path | None = None
        self.server_key: Path | None = None
        self.builds = 0
        self.base_url: str | None = None
        self.receiver_url: str | None = None
        self._nginx = None
        self._devserver = None
        self._receiver: subprocess.Popen | None = None
        self._lock: subprocess.Popen | None = None
        self.lock_log: LogFollower | None = None
        self.reader_port = free_udp_port()

    @staticmethod
    def _choose_hosting(hosting: str) -> tuple[str, str]:
        """Return the hosting to use and why, for the demo's first line."""
        if hosting not in ("auto", "nginx", "devserver"):
            raise DemoError(f"unknown hosting {hosting!r}: use auto, nginx or devserver")
        from compiler.nginx_run import NginxNotFound, find_nginx

        if hosting == "nginx":
            try:
                return "nginx", f"found {find_nginx()}"
            except NginxNotFound as error:
                raise DemoError(f"{error}\n(run 'doorlock demo --hosting devserver' to use the development "
                                f"server)") from None
        if hosting == "devserver":
            return hosting, "chosen with --hosting devserver"

        try:
            return "nginx", f"found {find_nginx()}"
        except NginxNotFound as error:
            return "devserver", str(error)

    # -- step 1: repository, certificates, keys, build, hosting ------------------------------

    def prepare_repository(self) -> None:
        """Copy the access repository, add the demo member, and commit it to a new git repository."""
        if importlib.util.find_spec("nfc") is None:
            raise DemoError("nfcpy is not installed; the lock's reader and the card emulator need it: "
                            "install doorlock with the device extra (pip install -e '.[device]', or 'make venv')")
        if not (self.access_source / "locks" / f"{FIRST_LOCK}.yaml").is_file():
            raise DemoError(f"{self.access_source} has no locks/{FIRST_LOCK}.yaml; the demo needs the example "
                            f"access repository")
        shutil.copytree(self.access_source, self.access, ignore=shutil.ignore_patterns("signers.json"))
        (self.access / "schedules" / "demo-always.yaml").write_text(
            "name: demo-always\ndescription: Open at all times (doorlock demo)\nalways: true\n")
        (self.access / "groups" / "demo-members.yaml").write_text(
            "name: demo-members\ndescription: Members added by doorlock demo\naccess:\n"
            f"  - locks: [{FIRST_LOCK}]\n    schedule: demo-always\n")
        self._write_member(with_removed_card=True)
        self._git("init", "--quiet", "--initial-branch=main")
        self.second_lock = self._pick_second_lock()

    def _write_member(self, with_removed_card: bool) -> None:
        cards = []
        if with_removed_card:
            cards.append(f'  - hwid: "{REMOVED_CARD}"\n    description: blue key fob\n')
        cards.append(f'  - hwid: "{KEPT_CARD}"\n    description: spare card\n')
        (self.access / MEMBER_FILE).write_text(
            f"username: {MEMBER}\nname: Demo Member\ngroups: [demo-members]\nkeys:\n" + "".join(cards))

    def _pick_second_lock(self) -> str:
        names = sorted(path.stem for path in (self.access / "locks").glob("*.yaml") if path.stem != FIRST_LOCK)
        if not names:
            raise DemoError(f"{self.access_source}/locks has only {FIRST_LOCK}; the demo needs a second lock")
        return "workshop" if "workshop" in names else names[0]

    def create_pki(self) -> None:
        """Create the CA, the server certificate and both lock certificates; pin their fingerprints."""
        ca = pki.init_ca(self.pki_dir)
        self.server_cert, self.server_key = pki.issue_server(ca, "localhost", self.pki_dir / "server")
        for lock in (FIRST_LOCK, self.second_lock):
            self.lock_certs[lock] = pki.issue_lock(ca, lock, self.pki_dir / "locks")
            set_lock_fingerprint(self.access / "locks" / f"{lock}.yaml", self.lock_certs[lock][2])
        self._commit("Add the demo member and pin the lock certificates")

    @property
    def ca_cert(self) -> Path:
        return self.pki_dir / pki.CA_CERT_NAME

    def create_keys(self) -> None:
        """Create a root key (pinned by the lock), a signing key, and the root-signed signers document."""
        self.keys_dir.mkdir(parents=True)
        run_doorlock("keygen", "--root", "--out", self.keys_dir / "root")
        run_doorlock("keygen", "--out", self.keys_dir / "signing")
        run_doorlock("signers", "sign", "--root", self.keys_dir / "root.key",
                     "--signer", self.keys_dir / "signing.pub", "--version", 1,
                     "--out", self.keys_dir / "signers.json")

    def compile_and_publish(self) -> tuple[Path, int]:
        """Compile the access repository (continuing from the live release) and publish it.

        Returns the new release directory and the first lock's bundle version in it.
        """
        self.builds += 1
        build = self.workdir / f"build-{self.builds}"
        arguments = ["compile", self.access, "--key", self.keys_dir / "signing.key", "--out", build,
                     "--signers", self.keys_dir / "signers.json"]
        live = live_release(self.www)
        if live is not None:
            arguments += ["--previous", live]
        run_doorlock(*arguments)
        run_doorlock("publish", build, "--to", self.www)
        release = live_release(self.www)
        manifest = json.loads((release / "manifest.json").read_text())
        return release, manifest["bundles"][FIRST_LOCK]["version"]

    def published_bundles(self) -> dict[str, dict]:
        """Return the live manifest's entry per lock (version, number of keys, expiry)."""
        release = live_release(self.www)
        return json.loads((release / "manifest.json").read_text())["bundles"]

    def start_receiver(self) -> None:
        """Start the statistics receiver: behind nginx (proxy mode) or with its own TLS port."""
        config = self.workdir / "receiver.toml"
        manifest = self.www / "current" / "manifest.json"
        if self.hosting == "nginx":
            server = '[server]\nmode = "proxy"\nhost = "127.0.0.1"\nport = 0\nthreads = 4\n'
        else:
            server = (f'[server]\nmode = "tls"\nhost = "127.0.0.1"\nport = 0\nthreads = 4\n\n'
                      f'[tls]\ncertificate = "{self.server_cert}"\nprivate_key = "{self.server_key}"\n'
                      f'client_ca = "{self.ca_cert}"\n')
        config.write_text(server + f'\n[data]\nmanifest = "{manifest}"\n'
                                   f'database = "{self.workdir / "receiver.sqlite"}"\n')
        ready = self.workdir / "receiver.ready"
        log_file = open(self.workdir / "receiver.log", "ab")
        self._receiver = subprocess.Popen(
            [sys.executable, "-m", "receiver", "serve", "--config", str(config), "--ready-file", str(ready)],
            cwd=ROOT, env=subprocess_environment(), stdout=log_file, stderr=log_file, stdin=subprocess.DEVNULL)
        log_file.close()
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self._receiver.poll() is not None or time.monotonic() > deadline:
                raise DemoError(f"the receiver did not start:\n{self._tail(self.workdir / 'receiver.log')}")
            time.sleep(0.05)
        self.receiver_url = ready.read_text().strip()

    def start_hosting(self) -> None:
        """Serve the published tree over mutual TLS on a free loopback port."""
        if self.hosting == "nginx":
            self._start_nginx()
        else:
            from compiler.devserver import DevServer

            self._devserver = DevServer(self.www, self.server_cert, self.server_key, self.ca_cert)
            self._devserver.start()
            self.base_url = self._devserver.url

    def _start_nginx(self) -> None:
        from compiler.nginx_run import NginxInstance, free_port

        port = free_port()
        server_block = self.workdir / "nginx-server.conf"
        run_doorlock("nginx-config", self.access, "--publish-dir", self.www,
                     "--certificate", self.server_cert, "--certificate-key", self.server_key,
                     "--client-ca", self.ca_cert, "--server-name", "localhost",
                     "--listen", f"127.0.0.1:{port}", "--receiver", self.receiver_url, "--out", server_block)
        try:
            self._nginx = NginxInstance(self.workdir / "nginx", server_block.read_text(), port)
            self._nginx.start()
        except RuntimeError as error:  # NginxNotFound, NginxStartError
            raise DemoError(f"{error}\n(run 'doorlock demo --hosting devserver' to use the development server)") from None
        self.base_url = f"https://localhost:{port}"

    def stop_hosting(self) -> None:
        if self._nginx is not None:
            self._nginx.stop()
            self._nginx = None
        if self._devserver is not None:
            self._devserver.stop()
            self._devserver = None

    @property
    def lock_receiver_url(self) -> str:
        # Behind nginx the lock pushes to the bundle host, which proxies /v1/ to the receiver.
        if self.hosting == "nginx":
            return self.base_url
        return self.receiver_url.replace("127.0.0.1", "localhost")

    # -- step 2: the lock ------------------------------------------------------------------

    def start_lock(self) -> None:
        """Start ``lockclient run`` for the first lock with the udp reader and the log actuator."""
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        cert, key, _ = self.lock_certs[FIRST_LOCK]
        root_key = (self.keys_dir / "root.pub").read_text().strip()
        config = self.lock_dir / "lockclient.toml"
        config.write_text(
            f'lock = "{FIRST_LOCK}"\n'
            f'bundle_url = "{self.base_url}/bundles/{FIRST_LOCK}.json"\n'
            f'ca_file = "{self.ca_cert}"\nclient_cert = "{cert}"\nclient_key = "{key}"\n'
            f'root_keys = ["{root_key}"]\nstate_dir = "{self.lock_dir / "state"}"\n'
            f'receiver_url = "{self.lock_receiver_url}"\n'
            f"poll_interval = {self.poll_interval}\npush_interval = 1\n\n"
            "[fetch]\nconnect_timeout = 2\nread_timeout = 5\ndeadline = 10\nbackoff_initial = 0.5\nbackoff_max = 2\n\n"
            f'[reader]\npath = "udp:127.0.0.1:{self.reader_port}"\ndebounce_seconds = 0.2\n\n'
            '[actuator]\ntype = "log"\n')
        self._lock = subprocess.Popen(
            [sys.executable, "-m", "lockclient.cli", "run", "--config", str(config)],
            cwd=ROOT, env=subprocess_environment(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.lock_log = LogFollower(self._lock.stdout, self.lock_dir / "lockclient.log")

    def wait_for_bundle(self, version: int, since: int = 0, timeout: float = 30.0) -> float:
        """Wait until the lock accepted bundle ``version``; return the monotonic time it was logged."""
        try:
            read_at, _ = self.lock_log.wait_for(rf"accepted bundle version {version}\b", since, timeout)
        except TimeoutError:
            raise DemoError(f"the lock did not accept bundle version {version} within {timeout} s:\n"
                            f"{self.lock_log.text()}") from None
        return read_at

    # -- step 3: taps ------------------------------------------------------------------------

    def tap(self, hwid: str, timeout: float = 20.0) -> TapResult:
        """Hold an emulated card to the lock's reader until the lock decides, then take it away."""
        since = self.lock_log.mark()
        placed = time.monotonic()
        card = subprocess.Popen(
            [sys.executable, "-m", CARD_EMULATOR_MODULE, "--port", str(self.reader_port),
             "--type2", hwid.replace(":", "")],
            cwd=ROOT, env=subprocess_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL)
        try:
            pattern = rf"tap {re.escape(short_hwid(hwid))}: (open|denied) \(([^)]*)\)"
            try:
                read_at, found = self.lock_log.wait_for(pattern, since, timeout)
            except TimeoutError:
                raise DemoError(f"the lock did not decide a tap of card {short_hwid(hwid)} within {timeout} s:\n"
                                f"{self.lock_log.text()}") from None
        finally:
            card.send_signal(signal.SIGTERM)
            try:
                card.communicate(timeout=5)
            except subprocess.TimeoutExpired:
                card.kill()
                card.communicate()
        return TapResult(found.group(1), found.group(2), read_at - placed)

    def unknown_keys(self) -> list[dict]:
        output = run_doorlock("stats", "unknown-keys", "--db", self.workdir / "receiver.sqlite", "--format", "json")
        return json.loads(output)

    def wait_for_unknown_key(self, hwid: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            database = self.workdir / "receiver.sqlite"
            if database.exists():
                for row in self.unknown_keys():
                    if row.get("hwid") == hwid:
                        return row
            if time.monotonic() > deadline:
                raise DemoError(f"card {short_hwid(hwid)} did not appear in 'doorlock stats unknown-keys' within "
                                f"{timeout} s:\n{self.lock_log.text()}\n{self._tail(self.workdir / 'receiver.log')}")
            time.sleep(0.3)

    # -- step 4: revoke --------------------------------------------------------------------

    def remove_card_in_git(self) -> str:
        """Remove the member's blue key fob from the YAML and commit; return the commit id."""
        self._write_member(with_removed_card=False)
        return self._commit(f"Remove {MEMBER}'s blue key fob")

    # -- step 5: other lock, outage -------------------------------------------------------

    def fetch_as(self, lock: str, path: str) -> int:
        """Return the HTTP status the bundle host gives ``lock``'s certificate for ``path``."""
        import requests

        cert, key, _ = self.lock_certs[lock]
        with requests.Session() as session:
            session.trust_env = False
            session.verify = str(self.ca_cert)
            session.cert = (str(cert), str(key))
            return session.get(self.base_url + path, timeout=10).status_code

    def wait_for_fetch_failure(self, since: int, timeout: float = 15.0) -> None:
        try:
            self.lock_log.wait_for(r"fetching the bundle failed", since, timeout)
        except TimeoutError:
            raise DemoError(f"the lock did not notice the bundle server was down:\n{self.lock_log.text()}") from None

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        for process in (self._lock, self._receiver):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self._lock is not None and self._lock.stdout is not None:
            self._lock.stdout.close()
        self.stop_hosting()

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- git -------------------------------------------------------------------------------

    def _git(self, *arguments: str) -> str:
        result = subprocess.run(["git", *GIT_IDENTITY, *arguments], cwd=self.access, capture_output=True, text=True)
        if result.returncode != 0:
            raise DemoError(f"git {' '.join(arguments)} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def _commit(self, message: str) -> str:
        self._git("add", "--all")
        self._git("commit", "--quiet", "-m", message)
        return self._git("rev-parse", "--short", "HEAD")

    @staticmethod
    def _tail(path: Path, lines: int = 30) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"({path} is missing)"


def set_lock_fingerprint(lock_file: Path, fingerprint: str) -> None:
    """Write ``fingerprint`` into the lock YAML's ``certificate.sha256``, as an admin pastes it."""
    text = lock_file.read_text()
    block = f'certificate:\n  sha256: "{fingerprint}"\n'
    pattern = re.compile(r"^certificate:\n(?:[ \t]+.*\n?)*", re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(block, text, count=1)
    else:
        text = text.rstrip("\n") + "\n" + block
    lock_file.write_text(text)


# --- the story, printed ---------------------------------------------------------------------


def run_story(deployment: Deployment, say: Callable[[str], None]) -> dict:
    """Run the five steps, reporting each with ``say``; return the measured figures."""
    figures: dict = {}
    started = time.monotonic()

    say("1. Access repository, certificates, keys, first build")
    deployment.prepare_repository()
    deployment.create_pki()
    say(f"   copied {deployment.access_source} into a new git repository with member {MEMBER} "
        f"(cards {short_hwid(REMOVED_CARD)} and {short_hwid(KEPT_CARD)})")
    say(f"   private CA, server certificate for localhost, lock certificates for {FIRST_LOCK} and "
        f"{deployment.second_lock}; fingerprints pinned in locks/*.yaml")
    deployment.create_keys()
    say("   root key (pinned by the lock), signing key, root-signed signers document")
    release, version = deployment.compile_and_publish()
    say(f"   compiled and published {release.name} with a freshly generated signing key:")
    for lock, entry in sorted(deployment.published_bundles().items()):
        keys = entry["keys"]
        say(f"     {lock}: admits {keys} key{'' if keys == 1 else 's'}, bundle version {entry['version']}, "
            f"expires {entry['expires_at']}")
    say("   (versions are issue times in Unix seconds, so they only increase)")
    if deployment.hosting == "nginx":
        deployment.start_receiver()
        deployment.start_hosting()
        say(f"   nginx serves {deployment.base_url} (mutual TLS) and proxies /v1/ to the receiver")
    else:
        deployment.start_hosting()
        deployment.start_receiver()
        say(f"   the DEVELOPMENT server (compiler/devserver.py, not for production) serves {deployment.base_url} "
            f"(mutual TLS); receiver at {deployment.receiver_url}")

    say("2. Lock client with the nfcpy udp reader and the log actuator")
    deployment.start_lock()
    deployment.wait_for_bundle(version)
    say(f"   {FIRST_LOCK} downloaded and verified bundle version {version} over mutual TLS")

    say("3. Taps")
    first = deployment.tap(REMOVED_CARD)
    say(f"   member card {short_hwid(REMOVED_CARD)}: {first.verdict.upper()} ({first.code})")
    unknown = deployment.tap(UNKNOWN_CARD)
    say(f"   unknown card {short_hwid(UNKNOWN_CARD)}: {unknown.verdict.upper()} ({unknown.code})")
    row = deployment.wait_for_unknown_key(UNKNOWN_CARD)
    say(f"   'doorlock stats unknown-keys' lists {short_hwid(UNKNOWN_CARD)} at {row.get('lock')} "
        f"(count {row.get('count')})")
    figures.update(first=first.verdict, unknown=unknown.verdict)

    say("4. Revoke the card in git, compile, publish")
    commit = deployment.remove_card_in_git()
    mark = deployment.lock_log.mark()
    release, new_version = deployment.compile_and_publish()
    published_at = time.monotonic()
    say(f"   commit {commit} removes {short_hwid(REMOVED_CARD)}; published {release.name} "
        f"with bundle version {new_version}")
    revoked = deployment.tap(REMOVED_CARD)
    while revoked.verdict == "open" and time.monotonic() - published_at < 30:
        revoked = deployment.tap(REMOVED_CARD)
    denial = time.monotonic() - published_at
    accepted = deployment.wait_for_bundle(new_version, since=mark) - published_at
    say(f"   same card: {revoked.verdict.upper()} ({revoked.code}); publish to first denial: {denial:.1f} s "
        f"(the lock polls every {deployment.poll_interval:.0f} s and accepted the new bundle after "
        f"{accepted:.1f} s; the emulated tap itself took {revoked.seconds:.1f} s)")
    figures.update(revoked=revoked.verdict, publish_to_denial=denial, publish_to_bundle=accepted)

    say("5. Another lock's certificate, and an outage")
    other = deployment.fetch_as(deployment.second_lock, f"/bundles/{FIRST_LOCK}.json")
    own = deployment.fetch_as(deployment.second_lock, f"/bundles/{deployment.second_lock}.json")
    say(f"   {deployment.second_lock}'s certificate: /bundles/{FIRST_LOCK}.json -> {other}, "
        f"its own bundle -> {own}")
    mark = deployment.lock_log.mark()
    deployment.stop_hosting()
    deployment.wait_for_fetch_failure(mark)
    say("   bundle server stopped; the lock's next fetch failed")
    kept_tap = deployment.tap(KEPT_CARD)
    removed_tap = deployment.tap(REMOVED_CARD)
    say(f"   offline: card {short_hwid(KEPT_CARD)} {kept_tap.verdict.upper()}, card {short_hwid(REMOVED_CARD)} "
        f"{removed_tap.verdict.upper()} (decided from the stored bundle)")
    figures.update(other_lock_status=other, own_status=own, offline_kept=kept_tap.verdict, offline_removed=removed_tap.verdict)
    figures["total_seconds"] = time.monotonic() - started
    return figures


@click.command(name="demo")
@click.option("--hosting", type=click.Choice(["auto", "nginx", "devserver"]), default="auto", show_default=True,
              help="Serve bundles with nginx, with the development server, or nginx when installed "
                   "(set DOORLOCK_NGINX to choose the nginx binary).")
@click.option("--keep", "keep_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run in this new directory and keep it (logs, certificates, builds) instead of a temporary one.")
def demo(hosting: str, keep_dir: Path | None) -> None:
    """Run the whole system on 127.0.0.1 and print each step (about half a minute)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if keep_dir is not None:
        if keep_dir.exists() and any(keep_dir.iterdir()):
            raise click.ClickException(f"{keep_dir} is not empty; pass a new directory to --keep")
        keep_dir.mkdir(parents=True, exist_ok=True)
        workdir, temporary = keep_dir, False
    else:
        workdir, temporary = Path(tempfile.mkdtemp(prefix="doorlock-demo-")), True

    try:
        with Deployment(workdir, hosting=hosting) as deployment:
            click.echo(f"doorlock demo in {workdir}")
            click.echo(f"bundle hosting: {deployment.hosting} ({deployment.hosting_reason})")
            figures = run_story(deployment, click.echo)
    except DemoError as error:
        if temporary and not any(workdir.iterdir()):
            workdir.rmdir()
            raise click.ClickException(str(error)) from None
        # Every process is stopped by now; the logs, certificates and builds stay for a look.
        raise click.ClickException(f"{error}\nEverything the demo wrote, logs included, is kept in {workdir}; "
                                   f"delete it when done.") from None
    except BaseException:
        if temporary:
            shutil.rmtree(workdir, ignore_errors=True)
        raise

    if temporary:
        shutil.rmtree(workdir, ignore_errors=True)
        click.echo(f"done in {figures['total_seconds']:.0f} s; every process stopped, {workdir} deleted")
    else:
        click.echo(f"done in {figures['total_seconds']:.0f} s; logs, certificates and builds are in {workdir}")
