"""``doorlock report``: the admin site, rendered and opened in headless Chromium.

Chromium loads the pages from a loopback HTTP server. A probe page with test-only JavaScript
(the site itself has none) frames every page at phone width. It records what the browser laid
out: page width against viewport width, the links and element ids, and every resource the
page loaded. The checks are therefore on rendered pages, not on HTML text.
"""

from __future__ import annotations

import functools
import html
import json
import re
import shutil
import struct
import subprocess
import threading
from datetime import datetime, timezone
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urldefrag, urlparse

import pytest
from click.testing import CliRunner

from compiler.cli import main
from compiler.loader import load_repository
from compiler.report import ReportError, write_site
from receiver.store import Batch, Contact, SeenWindow, SQLiteStore, UnknownKey
from tests.access_samples import write_access

CHROMIUM = "/usr/bin/chromium"
PHONE_WIDTH = 375
UNKNOWN_CARD = "04:de:ad:be:ef:00:01"
ALICE_KEY = "04:a2:3b:4c:5d:6e:7f"


def at(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp())


def make_stats(path: Path) -> Path:
    """A real receiver database: an unknown card and a status at front-door, alice seen at workshop."""
    store = SQLiteStore(path)
    try:
        received = at("2026-12-04T12:00")
        store.store_unknown_keys(
            Batch("front-door", "batch-unknown-0001", "a" * 64, received),
            [UnknownKey(UNKNOWN_CARD, at("2026-12-03T18:05"), at("2026-12-04T09:10"), 3, "Type2Tag", "0044", "00")],
            Contact("front-door", "5e8f" + "0" * 59 + "1", received, 0),
        )
        store.store_last_seen(
            Batch("workshop", "batch-seen-000001", "b" * 64, received),
            [SeenWindow(ALICE_KEY, at("2026-12-04T09:00"), at("2026-12-04T10:00"))], set(), 41,
            Contact("workshop", "5e8f" + "0" * 59 + "2", received, 0),
        )
        status = {"bundle_version": 41, "bundle_sha256": "c" * 64, "bundle_expires_at": "2026-12-10T00:00:00Z",
                  "clock": "2026-12-04T12:00:00Z", "clock_behind_floor": False, "uptime": 100,
                  "reader": {"healthy": True, "last_error": None}, "last_rejected_bundle": None,
                  "spool_dropped": 0, "events": []}
        store.store_status(Batch("front-door", "batch-status-00001", "d" * 64, received), received,
                           json.dumps(status), 41, "c" * 64, [],
                           Contact("front-door", "5e8f" + "0" * 59 + "1", received, 0))
    finally:
        store.close()
    return path


def make_manifest(path: Path) -> Path:
    bundle = {"version": 42, "sha256": "e" * 64, "issued_at": "2026-12-04T00:00:00Z",
              "expires_at": "2026-12-11T00:00:00Z", "path": "bundles/front-door.json",
              "certificate_sha256": None, "keys": 3}
    path.write_text(json.dumps({"format": 1, "generated_at": "2026-12-04T00:00:00Z", "source_commit": None,
                                "signers": {"version": 1, "sha256": "f" * 64}, "bundles": {"front-door": bundle}}))
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    access = write_access(root / "access")
    stats = make_stats(root / "receiver.db")
    manifest = make_manifest(root / "manifest.json")
    result = CliRunner().invoke(main, ["report", str(access), "--out", str(root / "site"),
                                       "--stats", str(stats), "--published", str(manifest)])
    assert result.exit_code == 0, result.output
    return root / "site"


# -- Chromium ------------------------------------------------------------------------------------

def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={profile}", *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


PROBE = """<!DOCTYPE html><html><body><pre id="out">pending</pre><script>
const pages = %s;
const results = {};
let left = pages.length;
for (const page of pages) {
  const frame = document.createElement("iframe");
  frame.width = %d; frame.height = 800; frame.src = page;
  frame.onload = () => {
    const doc = frame.contentDocument;
    results[page] = {
      scrollWidth: doc.documentElement.scrollWidth,
      clientWidth: doc.documentElement.clientWidth,
      navDisplay: getComputedStyle(doc.querySelector("nav")).display,
      links: [...doc.querySelectorAll("a[href]")].map(a => a.href),
      ids: [...doc.querySelectorAll("[id]")].map(e => e.id),
      lockNames: [...doc.querySelectorAll("#locks .name")].map(e => e.textContent.trim()),
      peopleNames: [...doc.querySelectorAll("#people .name")].map(e => e.textContent.trim()),
      resources: frame.contentWindow.performance.getEntriesByType("resource").map(r => r.name),
      scripts: doc.scripts.length,
    };
    if (--left === 0) document.getElementById("out").textContent = JSON.stringify(results);
  };
  document.body.appendChild(frame);
}
</script></body></html>"""


@pytest.fixture(scope="module")
def rendered(site, tmp_path_factory) -> dict:
    """Open every page of the site in Chromium at phone width; return what each page laid out."""
    served = tmp_path_factory.mktemp("served")
    shutil.copytree(site, served / "site")
    pages = sorted(str(p.relative_to(served)) for p in (served / "site").rglob("*.html"))
    (served / "probe.html").write_text(PROBE % (json.dumps(pages), PHONE_WIDTH))

    handler = functools.partial(QuietHandler, directory=str(served))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}/"
        result = chromium(tmp_path_factory.mktemp("profile"), "--virtual-time-budget=15000",
                          "--dump-dom", base + "probe.html")
    finally:
        server.shutdown()
        server.server_close()

    match = re.search(r'<pre id="out">(.*?)</pre>', result.stdout, re.S)
    assert match, result.stdout[:2000]
    text = html.unescape(match.group(1))
    assert text != "pending", "Chromium did not finish loading the pages"
    measurements = json.loads(text)
    return {"base": base, "pages": {page.removeprefix("site/"): value for page, value in measurements.items()}}


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


def test_every_page_rendered(site, rendered):
    files = sorted(str(p.relative_to(site)) for p in site.rglob("*.html"))
    assert sorted(rendered["pages"]) == files
    assert "people/alice.html" in files
    assert "locks/front-door.html" in files
    for path in site.rglob("*.html"):
        assert "method" not in path.read_text(), f"{path} shows a Python method instead of a value"


def test_stylesheet_applied(rendered):
    for page, measured in rendered["pages"].items():
        assert measured["navDisplay"] == "flex", page


def test_pages_fit_phone_width(rendered):
    for page, measured in rendered["pages"].items():
        assert measured["scrollWidth"] <= measured["clientWidth"], f"{page} is wider than a phone screen"


def test_person_page_lists_locks(rendered):
    assert rendered["pages"]["people/alice.html"]["lockNames"] == ["front-door", "workshop"]
    assert rendered["pages"]["people/carol.html"]["lockNames"] == ["front-door", "workshop"]
    assert rendered["pages"]["people/bob.html"]["lockNames"] == ["front-door"]


def test_lock_page_lists_people(rendered):
    assert rendered["pages"]["locks/workshop.html"]["peopleNames"] == ["Alice Jansen", "Carol Smit"]


def test_links_resolve_to_rendered_pages(rendered):
    base = rendered["base"] + "site/"
    pages = rendered["pages"]
    for page, measured in pages.items():
        for link in measured["links"]:
            target, fragment = urldefrag(link)
            assert target.startswith(base), f"{page} links outside the site: {link}"
            relative = target.removeprefix(base)
            assert relative in pages, f"{page} links to missing {relative}"
            if fragment:
                assert fragment in pages[relative]["ids"], f"{page} links to missing anchor {link}"


def test_no_script_and_no_external_resources(site, rendered):
    for page, measured in rendered["pages"].items():
        assert measured["scripts"] == 0, page
        for resource in measured["resources"]:
            assert urlparse(resource).hostname == "127.0.0.1", f"{page} loaded {resource}"
    for path in site.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert "<script" not in text.lower(), path
            assert not re.search(r"\son[a-z]+=", text), path
            assert "http://" not in text, path
            assert "https://" not in text, path


def test_phone_screenshot_renders(site, tmp_path):
    shot = tmp_path / "alice.png"
    chromium(tmp_path / "profile", "--window-size=390,844", f"--screenshot={shot}",
             (site / "people" / "alice.html").as_uri())
    header = shot.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert (width, height) == (390, 844)
    # A blank page compresses to about a kilobyte; a page with text is far larger.
    assert shot.stat().st_size > 10_000


def test_person_dom_shows_last_seen_window(site, tmp_path):
    dom = chromium(tmp_path / "profile", "--dump-dom", (site / "people" / "alice.html").as_uri()).stdout
    assert "2026-12-04 10:00–11:00 CET at" in dom
    assert "Mon–Fri 09:00–18:00" in dom


def test_lock_page_published_versus_running(site):
    page = (site / "locks" / "front-door.html").read_text()
    assert "version 42, expires 2026-12-11 01:00 CET" in page
    assert "version 41" in page
    assert "behind" in page
    assert UNKNOWN_CARD in page
    assert "04:11:22:33:44:55:66" in page  # break-glass key
    assert "Via members · 1 key · membership valid until 2027-06-30" in page
    assert "built-in method" not in page


def test_unknown_key_has_enrol_snippet(site):
    page = html.unescape((site / "unknown-keys.html").read_text())
    assert f'  - hwid: "{UNKNOWN_CARD}"' in page
    assert "Type2Tag first seen at front-door on 2026-12-03" in page


def test_matrix_cells(site):
    page = (site / "matrix.html").read_text()
    assert page.count('class="yes"') == 5  # alice 2, bob 1, carol 2


def test_html_is_escaped(tmp_path):
    access = write_access(tmp_path / "access", {
        "people/eve.yaml": 'username: eve\nname: "<img src=x onerror=alert(1)>"\ngroups: [members]\n'})
    write_site(load_repository(access), tmp_path / "site")
    page = (tmp_path / "site" / "people" / "eve.html").read_text()
    assert "<img" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_rerun_replaces_site_but_never_a_foreign_directory(tmp_path):
    repository = load_repository(write_access(tmp_path / "access"))
    write_site(repository, tmp_path / "site")
    (tmp_path / "site" / "stale.html").write_text("old")
    write_site(repository, tmp_path / "site")
    assert not (tmp_path / "site" / "stale.html").exists()

    foreign = tmp_path / "documents"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("precious")
    with pytest.raises(ReportError, match="is not a doorlock report"):
        write_site(repository, foreign)
    assert (foreign / "thesis.txt").read_text() == "precious"


def test_missing_manifest_is_a_usage_error(tmp_path):
    access = write_access(tmp_path / "access")
    result = CliRunner().invoke(main, ["report", str(access), "--out", str(tmp_path / "site"),
                                       "--published", str(tmp_path / "nothing.json")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_stats_from_json_export(tmp_path):
    access = write_access(tmp_path / "access")
    export = tmp_path / "stats.json"
    export.write_text(json.dumps({
        "unknown_keys": [{"lock": "workshop", "hwid": UNKNOWN_CARD, "first_seen": "2026-12-01T10:00:00Z",
                          "last_seen": "2026-12-02T10:00:00Z", "count": 1, "tag_type": None,
                          "atqa": None, "sak": None}],
        "last_seen": [], "locks": [],
    }))
    result = CliRunner().invoke(main, ["report", str(access), "--out", str(tmp_path / "site"), "--stats", str(export)])
    assert result.exit_code == 0, result.output
    assert UNKNOWN_CARD in (tmp_path / "site" / "locks" / "workshop.html").read_text()
    assert "card first seen at workshop on 2026-12-01" in (tmp_path / "site" / "unknown-keys.html").read_text()


def test_large_matrix_falls_back_to_groups(tmp_path, monkeypatch):
    import compiler.report

    monkeypatch.setattr(compiler.report, "MATRIX_MAX_CELLS", 1)
    write_site(load_repository(write_access(tmp_path / "access")), tmp_path / "site")
    page = (tmp_path / "site" / "matrix.html").read_text()
    assert "too large for one page, so rows are groups" in page
    assert '<th scope="row">keyholders</th>' in page
    assert "people/alice.html" not in page


def test_ended_membership_tagged(tmp_path):
    # bob's membership runs until 2027-06-30: in August 2027 he is still in the YAML (and the
    # report lists him), but "who can open it" must not read as if he still could.
    repository = load_repository(write_access(tmp_path / "access"))
    write_site(repository, tmp_path / "after", now=datetime(2027, 8, 1, tzinfo=timezone.utc))
    lock_page = (tmp_path / "after" / "locks" / "front-door.html").read_text()
    bob_row = lock_page[lock_page.index("people/bob.html"):].split("</li>")[0]
    assert '<span class="tag">membership ended</span>' in bob_row
    alice_row = lock_page[lock_page.index("people/alice.html"):].split("</li>")[0]
    assert "membership" not in alice_row
    assert "membership ended" in (tmp_path / "after" / "people" / "bob.html").read_text()

    write_site(repository, tmp_path / "before", now=datetime(2026, 12, 4, tzinfo=timezone.utc))
    assert "membership ended" not in (tmp_path / "before" / "locks" / "front-door.html").read_text()


def test_future_membership_tagged(tmp_path):
    repository = load_repository(write_access(tmp_path / "access", {
        "people/dave.yaml": "username: dave\nname: Dave\nvalid_from: 2027-01-01\ngroups: [members]\n"}))
    # 23:30 UTC on 31 December is already 1 January in Amsterdam, the lock's time zone.
    write_site(repository, tmp_path / "site", now=datetime(2026, 12, 31, 22, 0, tzinfo=timezone.utc))
    assert "membership not started yet" in (tmp_path / "site" / "locks" / "front-door.html").read_text()
    write_site(repository, tmp_path / "site", now=datetime(2026, 12, 31, 23, 30, tzinfo=timezone.utc))
    assert "membership not started yet" not in (tmp_path / "site" / "locks" / "front-door.html").read_text()


@pytest.mark.parametrize(("name", "content", "message"), [
    ("stats.db", b"not a database, just text\n", "statistics database"),
    ("stats.json", json.dumps({"unknown_keys": [{"hwid": UNKNOWN_CARD}]}).encode(),
     "unknown_keys[0] needs 'lock' as text"),
    ("stats.json", json.dumps({"last_seen": [{"lock": "workshop", "hwid": ALICE_KEY, "window_start": "yesterday",
                                              "window_end": "2026-12-04T10:00:00Z"}]}).encode(),
     "window_start 'yesterday' is not a UTC time"),
    ("stats.json", json.dumps({"locks": {"front-door": {}}}).encode(), "locks must be a list"),
])
def test_unreadable_stats_rejected_cleanly(tmp_path, name, content, message):
    access = write_access(tmp_path / "access")
    (tmp_path / name).write_bytes(content)
    result = CliRunner().invoke(main, ["report", str(access), "--out", str(tmp_path / "site"),
                                       "--stats", str(tmp_path / name)])
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert message in result.output
    assert name in result.output
    assert not (tmp_path / "site").exists()


def test_closed_day_hidden_when_covered(tmp_path):
    # dave is in members (daytime, closed 2026-12-25) and keyholders (always): `explain` lets him
    # in on Christmas evening, so his page must not say the front door is closed then.
    access = write_access(tmp_path / "access", {
        "people/dave.yaml": "username: dave\nname: Dave\ngroups: [members, keyholders]\n"
                            "keys:\n  - hwid: '04:d0:d0:d0:d0:d0:01'\n",
        "people/erik.yaml": "username: erik\nname: Erik\ngroups: [members, weekend]\n"
                            "keys:\n  - hwid: '04:e0:e0:e0:e0:e0:01'\n",
        "groups/weekend.yaml": "name: weekend\naccess:\n  - locks: [front-door]\n    schedule: weekend\n",
        "schedules/weekend.yaml": "name: weekend\nwindows:\n  - days: [sat, sun]\n    start: '10:00'\n"
                                  "    end: '16:00'\n",
    })
    repository = load_repository(access)
    explained = CliRunner().invoke(main, ["explain", str(access), "--lock", "front-door", "--person", "dave",
                                          "--at", "2026-12-25T19:00"])
    assert explained.output.startswith("ALLOWED")

    write_site(repository, tmp_path / "site")
    people = tmp_path / "site" / "people"
    assert "Closed" not in (people / "dave.html").read_text()
    assert "Closed 2026-12-25</p>" in (people / "bob.html").read_text()
    # Friday 25 December: the weekend schedule does not open, so erik is locked out that day;
    # with two schedules at the lock the page names the one that closes.
    assert "Closed 2026-12-25 under daytime (via members)" in (people / "erik.html").read_text()


def test_counts_use_singular_for_one(tmp_path):
    access = write_access(tmp_path / "access", {
        "locks/workshop.yaml": None,
        "groups/workshop.yaml": None,
        "groups/keyholders.yaml": "name: keyholders\naccess:\n  - locks: [front-door]\n    schedule: always\n",
        "people/alice.yaml": "username: alice\nname: Alice\ngroups: [members]\n",
        "people/carol.yaml": None,
        "locks/front-door.yaml": "name: front-door\ntimezone: Europe/Amsterdam\nbundle:\n  valid_days: 1\n",
    })
    write_site(load_repository(access), tmp_path / "site")
    index = (tmp_path / "site" / "index.html").read_text()
    assert "2 people, 1 lock." in index
    lock_page = (tmp_path / "site" / "locks" / "front-door.html").read_text()
    assert "<dd>1 day</dd>" in lock_page
    assert "· 1 key" in lock_page
    assert "1 keys" not in lock_page
