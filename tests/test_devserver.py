"""The development server applies the same per-lock rule as the nginx configuration."""

from __future__ import annotations

import pytest
import requests

from compiler import pki
from compiler.devserver import DevServer
from compiler.publish import publish
from tests.fake_builds import bundle_bytes, write_build

LOCKS = ["front-door", "back-door"]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("devserver")
    ca = pki.init_ca(root / "ca")
    server_cert, server_key = pki.issue_server(ca, "localhost", root / "server")
    certs = {name: pki.issue_lock(ca, name, root / "locks") for name in [*LOCKS, "retired"]}
    publish(write_build(root / "build", {name: (1, bundle_bytes(name, 1)) for name in LOCKS}), root / "www")
    with DevServer(root / "www", server_cert, server_key, ca) as server:
        yield {"url": server.url, "ca": str(ca), "certs": certs}


def _get(site, path, lock=None, **kwargs):
    with requests.Session() as session:
        session.trust_env = False
        session.verify = site["ca"]
        if lock is not None:
            session.cert = (str(site["certs"][lock][0]), str(site["certs"][lock][1]))
        return session.get(site["url"] + path, timeout=10, **kwargs)


@pytest.mark.parametrize("lock, path, status", [
    ("front-door", "/bundles/front-door.json", 200),
    ("front-door", "/bundles/back-door.json", 403),
    ("back-door", "/bundles/back-door.json", 200),
    ("back-door", "/signers.json", 200),
    ("front-door", "/manifest.json", 403),
    ("retired", "/bundles/retired.json", 403),
    (None, "/bundles/front-door.json", 400),
])
def test_devserver_access_rule(site, lock, path, status):
    assert _get(site, path, lock).status_code == status


def test_devserver_etag_revalidation(site):
    first = _get(site, "/bundles/front-door.json", "front-door")

    again = _get(site, "/bundles/front-door.json", "front-door", headers={"If-None-Match": first.headers["ETag"]})

    assert again.status_code == 304


def test_devserver_rejects_other_methods(site):
    with requests.Session() as session:
        session.trust_env = False
        session.verify = site["ca"]
        session.cert = (str(site["certs"]["front-door"][0]), str(site["certs"]["front-door"][1]))
        head = session.head(site["url"] + "/bundles/front-door.json", timeout=10)
        post = session.post(site["url"] + "/bundles/front-door.json", data=b"x", timeout=10)

    assert head.status_code == 200
    assert head.headers["ETag"]
    assert post.status_code == 403
