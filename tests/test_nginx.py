"""Bundle hosting on the real nginx binary: per-lock access over mutual TLS, ETags, receiver proxy."""

from __future__ import annotations

import json
import re
import shutil
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from click.testing import CliRunner

from compiler import pki
from compiler.cli import main
from compiler.demo import EXAMPLE_ACCESS
from compiler.nginx import NginxConfigError, NginxSettings, render_server_block
from compiler.nginx_run import NginxInstance, free_port
from compiler.publish import publish
from tests.fake_builds import bundle_bytes, write_build

LOCKS = ["front-door", "back-door"]


class _RecordingReceiver(BaseHTTPRequestHandler):
    """Stands in for the statistics receiver: stores the headers nginx forwards."""

    seen: list[dict] = []

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen.append({name.lower(): value for name, value in self.headers.items()})
        body = b'{"stored": 0}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("nginx")
    ca = pki.init_ca(root / "ca")
    server_cert, server_key = pki.issue_server(ca, "localhost", root / "server")
    certs = {name: pki.issue_lock(ca, name, root / "locks") for name in [*LOCKS, "retired"]}
    foreign_ca = pki.init_ca(root / "foreign-ca")
    certs["foreign"] = pki.issue_lock(foreign_ca, "front-door", root / "foreign")

    www = root / "www"
    publish(write_build(root / "build1", {name: (1, bundle_bytes(name, 1)) for name in LOCKS}), www)

    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingReceiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()

    port = free_port()
    settings = NginxSettings(
        publish_dir=www, certificate=server_cert, certificate_key=server_key, client_ca=ca,
        server_name="localhost", listen=(f"127.0.0.1:{port}",),
        receiver=f"http://127.0.0.1:{receiver.server_address[1]}",
    )
    nginx = NginxInstance(root / "prefix", render_server_block(LOCKS, settings), port)
    nginx.start()
    yield {"root": root, "ca": str(ca), "certs": certs, "www": www, "url": f"https://localhost:{port}"}
    nginx.stop()
    receiver.shutdown()


def _session(site, lock=None) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxy or CA bundle from the environment
    session.verify = site["ca"]
    if lock is not None:
        session.cert = (str(site["certs"][lock][0]), str(site["certs"][lock][1]))
    return session


def _live_version(www, lock) -> int:
    return json.loads((www / "current" / "manifest.json").read_text())["bundles"][lock]["version"]


def _get(site, path, lock=None, **kwargs):
    with _session(site, lock) as session:
        return session.get(site["url"] + path, timeout=10, **kwargs)


@pytest.mark.parametrize("lock", LOCKS)
def test_own_bundle_served(site, lock):
    response = _get(site, f"/bundles/{lock}.json", lock)

    assert response.status_code == 200
    assert response.json()["lock"] == lock
    assert response.headers["ETag"]


@pytest.mark.parametrize("lock, other", [("front-door", "back-door"), ("back-door", "front-door")])
def test_other_lock_bundle_forbidden(site, lock, other):
    assert _get(site, f"/bundles/{other}.json", lock).status_code == 403


def test_encoded_path_still_forbidden(site):
    assert _get(site, "/bundles/back%2ddoor.json", "front-door").status_code == 403


def test_signers_readable_by_every_lock(site):
    for lock in LOCKS:
        assert _get(site, "/signers.json", lock).status_code == 200


@pytest.mark.parametrize("path", ["/manifest.json", "/", "/releases/", "/bundles/"])
def test_other_paths_forbidden(site, path):
    assert _get(site, path, "front-door").status_code == 403


def test_no_certificate_rejected(site):
    response = _get(site, "/bundles/front-door.json")

    assert response.status_code == 400
    assert "certificate" in response.text.lower()


def test_foreign_ca_certificate_rejected(site):
    assert _get(site, "/bundles/front-door.json", "foreign").status_code == 400


def test_lock_not_in_repository_forbidden(site):
    """A valid certificate for a lock that was removed or disabled reads nothing."""
    assert _get(site, "/bundles/retired.json", "retired").status_code == 403
    assert _get(site, "/signers.json", "retired").status_code == 403


def test_server_certificate_not_accepted_as_client(site, tmp_path):
    server_cert, server_key = pki.issue_server(site["root"] / "ca", "front-door", tmp_path)
    with _session(site) as session:
        response = session.get(site["url"] + "/bundles/front-door.json", cert=(str(server_cert), str(server_key)),
                               timeout=10)

    assert response.status_code == 400


def test_etag_changes_across_same_second_publishes(site):
    """Two publishes in one second with equal sizes must not repeat nginx's mtime-size ETag."""
    root, www = site["root"], site["www"]
    first = _get(site, "/bundles/front-door.json", "front-door")
    unchanged = _get(site, "/bundles/back-door.json", "back-door")
    now = 1_796_414_400
    sizes = set()
    etags = {first.headers["ETag"]}
    previous = first
    for version in (_live_version(www, "front-door") + 1, _live_version(www, "front-door") + 2):
        build = {"front-door": (version, bundle_bytes("front-door", version)),
                 "back-door": (1, bundle_bytes("back-door", 1))}
        publish(write_build(root / f"etag{version}", build), www, now=now)

        response = _get(site, "/bundles/front-door.json", "front-door",
                        headers={"If-None-Match": previous.headers["ETag"]})

        assert response.status_code == 200
        assert response.json()["version"] == version
        sizes.add(len(response.content))
        etags.add(response.headers["ETag"])
        previous = response

    revalidated = _get(site, "/bundles/back-door.json", "back-door",
                       headers={"If-None-Match": unchanged.headers["ETag"]})
    assert sizes == {len(first.content)}
    assert len(etags) == 3
    assert revalidated.status_code == 304


def test_receiver_gets_verified_certificate(site):
    _RecordingReceiver.seen.clear()
    fingerprint = site["certs"]["front-door"][2]

    with _session(site, "front-door") as session:
        response = session.post(site["url"] + "/v1/status", json={}, timeout=10,
                                headers={"X-Doorlock-Client-Cert": "forged", "X_Doorlock_Client_Cert": "forged"})

    assert response.status_code == 200
    headers = _RecordingReceiver.seen[-1]
    forwarded = urllib.parse.unquote(headers["x-doorlock-client-cert"])
    assert pki.certificate_sha256(forwarded.encode()) == fingerprint
    assert "x_doorlock_client_cert" not in headers


def test_receiver_unknown_lock_forbidden(site):
    with _session(site, "retired") as session:
        response = session.post(site["url"] + "/v1/status", json={}, timeout=10)

    assert response.status_code == 403


def test_long_lock_name_config_loads(tmp_path):
    """Map keys longer than nginx's default hash bucket allow are handled by the generator."""
    ca = pki.init_ca(tmp_path / "ca")
    cert, key = pki.issue_server(ca, "localhost", tmp_path)
    settings = NginxSettings(publish_dir=tmp_path / "www", certificate=cert, certificate_key=key, client_ca=ca,
                             listen=(f"127.0.0.1:{free_port()}",))
    nginx = NginxInstance(tmp_path / "prefix", render_server_block(["l" * 63, "short"], settings),
                          int(settings.listen[0].rsplit(":", 1)[1]))
    nginx.start()
    nginx.stop()


@pytest.mark.parametrize("field, value", [
    ("listen", ("127.0.0.1:8443; include /etc/passwd",)),
    ("receiver", "http://127.0.0.1:1; }"),
    ("server_name", "a b"),
])
def test_unsafe_settings_rejected(tmp_path, field, value):
    settings = NginxSettings(publish_dir=tmp_path, certificate=tmp_path / "c", certificate_key=tmp_path / "k",
                             client_ca=tmp_path / "ca", **{field: value})

    with pytest.raises(NginxConfigError):
        render_server_block(["front-door"], settings)


def test_cli_rejects_invalid_repository(tmp_path):
    (tmp_path / "access" / "locks").mkdir(parents=True)
    (tmp_path / "access" / "locks" / "front-door.yaml").write_text("name: [unclosed\n")

    result = CliRunner().invoke(main, ["nginx-config", str(tmp_path / "access"), "--publish-dir", str(tmp_path),
                                       "--certificate", "c", "--certificate-key", "k", "--client-ca", "ca"])

    assert result.exit_code == 1
    assert "front-door.yaml" in result.output
    assert "Traceback" not in result.output


def test_cli_maps_enabled_locks_only(tmp_path):
    access = tmp_path / "access"
    shutil.copytree(EXAMPLE_ACCESS, access)
    workshop = access / "locks" / "workshop.yaml"
    text = re.sub(r"(?m)^enabled:.*\n", "", workshop.read_text())
    workshop.write_text(text.rstrip("\n") + "\nenabled: false\n")
    ca = pki.init_ca(tmp_path / "ca")
    cert, key = pki.issue_server(ca, "localhost", tmp_path)
    port = free_port()
    out = tmp_path / "server.conf"

    result = CliRunner().invoke(main, [
        "nginx-config", str(access), "--publish-dir", str(tmp_path / "www"), "--certificate", str(cert),
        "--certificate-key", str(key), "--client-ca", str(ca), "--listen", f"127.0.0.1:{port}", "--out", str(out)])
    config = out.read_text()

    assert result.exit_code == 0, result.output
    assert '"CN=front-door" "front-door";' in config
    assert "CN=workshop" not in config
    assert f"root {tmp_path / 'www' / 'current'};" in config
    with NginxInstance(tmp_path / "prefix", config, port):
        pass


def test_reader_during_publishes_gets_whole_files(site):
    """Bundles fetched through nginx while releases are swapped are always one complete version."""
    root, www = site["root"], site["www"]
    expected = {}
    builds = []
    first_version = _live_version(www, "front-door") + 1
    for version in range(first_version, first_version + 20):
        data = bundle_bytes("front-door", version, size=3000 + 97 * version)
        expected[data] = version
        builds.append(write_build(root / f"swap{version}", {"front-door": (version, data),
                                                            "back-door": (1, bundle_bytes("back-door", 1))}))
    problems: list[str] = []
    fetched = []
    done = threading.Event()

    def fetch_forever():
        with _session(site, "front-door") as session:
            while not done.is_set():
                response = session.get(site["url"] + "/bundles/front-door.json", timeout=10)
                if response.status_code != 200:
                    problems.append(f"status {response.status_code}")
                    continue
                body = response.content
                if body in expected:
                    fetched.append(expected[body])
                elif json.loads(body)["version"] >= first_version:
                    problems.append(f"body of {len(body)} bytes matches no published version")

    reader = threading.Thread(target=fetch_forever)
    reader.start()
    try:
        for build in builds:
            publish(build, www, keep=50)
    finally:
        done.set()
        reader.join(10)

    assert problems == []
    assert fetched
    assert fetched == sorted(fetched)
    assert _get(site, "/bundles/front-door.json", "front-door").json()["version"] == first_version + 19
