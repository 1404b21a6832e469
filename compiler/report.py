"""The static HTML site for admins: who can open which lock and when, and what the locks report.

Pages (all plain HTML and one stylesheet: no JavaScript, nothing loaded from elsewhere):

- ``index.html``: people and locks at a glance;
- ``people/<username>.html``: groups, locks with their hours in the lock's local time, keys
  with the last-seen window the locks reported (already coarsened to the lock's precision);
- ``locks/<name>.html``: who can open it and when, break-glass keys, the bundle version
  published and the one the lock runs, last contact, unknown cards seen at it;
- ``matrix.html``: people × locks;
- ``unknown-keys.html``: cards the locks saw but nobody has, with the YAML to enrol each.

Statistics come from the receiver database (``receiver.queries``) or from a JSON export with
the same lists (``{"unknown_keys": [...], "last_seen": [...], "locks": [...]}``). The site is
rendered into a temporary directory and moved into place, so a failed run leaves the previous
site untouched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import jinja2

from compiler.access_view import (
    Grant,
    access_hours,
    describe_date_range,
    describe_schedule,
    describe_validity,
    grants_by_person_and_lock,
)
from compiler.model import AccessRepository, DateRange, Lock, Person, Schedule

log = logging.getLogger(__name__)

# Marks a directory as written by this module, so that a re-run may replace it.
MARKER = ".doorlock-report"
# Above this many people × locks cells the matrix shows groups × locks instead: 10,000 people
# and 1,000 locks would make a page of hundreds of megabytes.
MATRIX_MAX_CELLS = 200_000
TEMPLATES = Path(__file__).with_name("report_templates")
# Closed-day ranges up to this long are checked day by day against a person's other grants.
CLOSED_SCAN_DAYS = 400


class ReportError(Exception):
    """A report that cannot be written; the message names the path and the fix."""


@dataclass
class Stats:
    """Statistics the locks pushed to the receiver, as lists of dicts from ``receiver.queries``."""

    unknown_keys: list[dict] = field(default_factory=list)
    last_seen: list[dict] = field(default_factory=list)
    locks: list[dict] = field(default_factory=list)
    source: str = ""


# Fields every row of the statistics needs; the pages read the others with defaults.
_REQUIRED_FIELDS = {
    "unknown_keys": ("lock", "hwid"),
    "last_seen": ("lock", "hwid", "window_start", "window_end"),
    "locks": ("lock",),
}
_TIME_FIELDS = ("first_seen", "last_seen", "window_start", "window_end", "last_contact")


def load_stats(path: Path) -> Stats:
    """Read statistics from a receiver database, or from a JSON export of the same lists."""
    if path.suffix == ".json":
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ReportError(f"statistics export {path} cannot be read: {error}") from None
        if not isinstance(document, dict):
            raise ReportError(f"statistics export {path} must be a JSON object with unknown_keys, last_seen and locks")
        stats = Stats(document.get("unknown_keys", []), document.get("last_seen", []),
                      document.get("locks", []), str(path))
        _check_stats(stats, path)
        return stats

    from receiver import queries

    try:
        return Stats(queries.unknown_keys(path), queries.last_seen(path), queries.locks(path), str(path))
    except queries.DatabaseNotFound as error:
        raise ReportError(str(error)) from None
    except sqlite3.Error as error:
        raise ReportError(f"statistics database {path} cannot be read ({error}); pass the receiver's "
                          "SQLite database or a JSON export ending in .json") from None


def _check_stats(stats: Stats, path: Path) -> None:
    """Reject an export whose rows the pages cannot show, naming the first bad row."""
    for name, fields in _REQUIRED_FIELDS.items():
        rows = getattr(stats, name)
        if not isinstance(rows, list):
            raise ReportError(f"statistics export {path}: {name} must be a list, not {type(rows).__name__}")
        for index, row in enumerate(rows):
            where = f"statistics export {path}: {name}[{index}]"
            if not isinstance(row, dict):
                raise ReportError(f"{where} must be an object with {', '.join(fields)}")
            for field_name in fields:
                if not isinstance(row.get(field_name), str) or not row[field_name]:
                    raise ReportError(f"{where} needs '{field_name}' as text")
            for field_name in _TIME_FIELDS:
                value = row.get(field_name)
                if value is None:
                    continue
                try:
                    if not isinstance(value, str) or _parse_utc(value).utcoffset() is None:
                        raise ValueError
                except ValueError:
                    raise ReportError(f"{where}: {field_name} {value!r} is not a UTC time such as "
                                      "2026-12-04T10:00:00Z") from None


def load_published(path: Path) -> dict:
    """Read the published ``manifest.json`` (or the directory that contains it): lock -> bundle entry."""
    manifest = path / "manifest.json" if path.is_dir() else path
    try:
        document = json.loads(manifest.read_text(encoding="utf-8"))
        return dict(document["bundles"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ReportError(f"published manifest {manifest} cannot be read ({error}); "
                          "pass the manifest.json of the published build") from None


def page_name(name: str) -> str:
    """File name for an id: usernames and lock names are already safe, anything else is quoted."""
    quoted = urllib.parse.quote(name, safe="-_.")
    return ("_" + quoted if quoted.startswith(".") else quoted) + ".html"


def _parse_utc(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def format_local(text: str | None, zone_name: str) -> str:
    """Format a UTC timestamp string in the lock's local time, e.g. ``2026-12-04 21:00 CET``."""
    moment = _parse_utc(text)
    if moment is None:
        return "never"
    return moment.astimezone(ZoneInfo(zone_name)).strftime("%Y-%m-%d %H:%M %Z")


def format_window(start: str, end: str, zone_name: str) -> str:
    """Describe a last-seen window in local time: ``2026-12-04 14:00–15:00 CET``."""
    first = _parse_utc(start).astimezone(ZoneInfo(zone_name))
    last = _parse_utc(end).astimezone(ZoneInfo(zone_name))
    if first.date() == last.date():
        return f"{first:%Y-%m-%d %H:%M}–{last:%H:%M %Z}"
    return f"{first:%Y-%m-%d %H:%M %Z} – {last:%Y-%m-%d %H:%M %Z}"


def _opens_on(schedule: Schedule, day: date) -> bool:
    """True when some window of ``schedule`` starts on ``day`` (closed days and date ranges applied)."""
    if any(r.contains(day) for r in schedule.closed):
        return False
    if schedule.date_ranges and not any(r.contains(day) for r in schedule.date_ranges):
        return False
    return schedule.always or any(day.weekday() in w.days for w in schedule.windows)


def _opens_every_day(schedule: Schedule) -> bool:
    every_weekday = schedule.always or set().union(*(w.days for w in schedule.windows)) >= set(range(7))
    return every_weekday and not schedule.closed and not schedule.date_ranges


def _covered(closed: DateRange, others: list[Schedule]) -> bool:
    """True when on every day of ``closed`` one of ``others`` opens, so the person can still enter."""
    if not others:
        return False
    if closed.first is None or closed.last is None or (closed.last - closed.first).days > CLOSED_SCAN_DAYS:
        return any(_opens_every_day(s) for s in others)
    day = closed.first
    while day <= closed.last:
        if not any(_opens_on(s, day) for s in others):
            return False
        day += timedelta(days=1)
    return True


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 key``, ``2 keys``; ``many`` for irregular plurals (``person``/``people``)."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


def enrol_snippet(hwid: str, sightings: list[dict]) -> str:
    """Return the YAML lines an admin pastes under a person's ``keys:`` to enrol an unknown card."""
    first = min(sightings, key=lambda s: s.get("first_seen") or "")
    tag = first.get("tag_type") or "card"
    seen = (first.get("first_seen") or "")[:10]
    return (
        f'  - hwid: "{hwid}"\n'
        f"    description: {tag} first seen at {first['lock']} on {seen}\n"
    )


class SiteBuilder:
    """Collect what every page needs from the model and the statistics, then render."""

    def __init__(self, repository: AccessRepository, stats: Stats | None, published: dict | None, now: datetime):
        self.repository = repository
        self.stats = stats
        self.published = published or {}
        self.now = now
        self.grants = grants_by_person_and_lock(repository)
        self.locks_of: dict[str, list[str]] = {}
        self.people_at: dict[str, list[str]] = {}
        for username, lock_name in sorted(self.grants):
            self.locks_of.setdefault(username, []).append(lock_name)
            self.people_at.setdefault(lock_name, []).append(username)
        self.key_owner = {key.hwid: person for person in repository.people.values() for key in person.keys}
        self.status_of = {row.get("lock"): row for row in (stats.locks if stats else [])}
        self.unknown_by_lock: dict[str, list[dict]] = {}
        for row in stats.unknown_keys if stats else []:
            self.unknown_by_lock.setdefault(row.get("lock"), []).append(row)
        self.last_seen_by_key: dict[str, list[dict]] = {}
        for row in stats.last_seen if stats else []:
            self.last_seen_by_key.setdefault(row["hwid"], []).append(row)
        self.environment = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(TEMPLATES)),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.environment.filters["page"] = page_name
        self.environment.filters["plural"] = plural

    # -- per-page data ------------------------------------------------------------------

    def membership_state(self, person: Person, lock: Lock) -> str:
        """Say when the membership does not cover today at the lock: "ended" or "not started yet".

        The grant stays on the pages (it is in the YAML and in the bundle), but an admin who
        reads "who can open it" must not count a member who left in June.
        """
        today = self.now.astimezone(ZoneInfo(lock.timezone)).date()
        if person.valid_until is not None and person.valid_until < today:
            return "membership ended"
        if person.valid_from is not None and person.valid_from > today:
            return "membership not started yet"
        return ""

    def person_rows(self, person: Person) -> list[dict]:
        rows = []
        for lock_name in self.locks_of.get(person.username, []):
            grants = self.grants[(person.username, lock_name)]
            lock = self.repository.locks[lock_name]
            rows.append({
                "lock": lock_name,
                "timezone": lock.timezone,
                "hours": access_hours(grants),
                "groups": sorted({g.group for g in grants}),
                "closed": self.closed_days(grants),
                "office_mode": any(g.office_mode for g in grants),
                "membership_state": self.membership_state(person, lock),
            })
        return rows

    def closed_days(self, grants: list[Grant]) -> list[str]:
        """Return, in plain words, the closed days on which none of a person's grants at one lock opens.

        A closed day of one schedule is left out when another grant opens on every day of
        it (e.g. an ``always`` grant via another group): the person can still enter then.
        With several schedules at the lock, each closed day names the schedule and groups.
        NOTE: coverage is judged per day, not per hour, so a day on which another grant opens
        only briefly is not listed as closed; the row's hours show when that grant opens.
        """
        schedules = self.repository.schedules
        groups_of: dict[str, set[str]] = {}
        for grant in grants:
            groups_of.setdefault(grant.schedule, set()).add(grant.group)
        texts = []
        for name in sorted(groups_of):
            others = [schedules[other] for other in groups_of if other != name]
            for closed in schedules[name].closed:
                if _covered(closed, others):
                    continue
                text = describe_date_range(closed)
                if len(groups_of) > 1:
                    text += f" under {name} (via {', '.join(sorted(groups_of[name]))})"
                texts.append(text)
        return texts

    def key_rows(self, person: Person) -> list[dict]:
        seen = self.last_seen_by_key
        rows = []
        for key in person.keys:
            windows = [
                {"lock": row["lock"], "text": format_window(row["window_start"], row["window_end"], self._zone(row["lock"])),
                 "anomaly": bool(row.get("anomaly"))}
                for row in seen.get(key.hwid, [])
            ]
            rows.append({
                "hwid": key.hwid,
                "description": key.description,
                "enabled": key.enabled,
                "validity": describe_validity(key.valid_from, key.valid_until) or "no limit",
                "last_seen": windows,
            })
        return rows

    def lock_rows(self, lock: Lock) -> list[dict]:
        rows = []
        for username in self.people_at.get(lock.name, []):
            grants: list[Grant] = self.grants[(username, lock.name)]
            person = self.repository.people[username]
            usable = [key for key in person.keys if key.enabled]
            rows.append({
                "username": username,
                "name": person.name,
                "hours": access_hours(grants),
                "groups": sorted({g.group for g in grants}),
                "key_count": len(usable),
                "validity": describe_validity(person.valid_from, person.valid_until),
                "membership_state": self.membership_state(person, lock),
            })
        return rows

    def lock_status(self, lock: Lock) -> dict:
        published = self.published.get(lock.name) or {}
        running = self.status_of.get(lock.name, {})
        published_version = published.get("version")
        running_version = running.get("bundle_version")
        if published_version is None or running_version is None:
            state = "unknown"
        elif published_version == running_version:
            state = "up to date"
        else:
            state = "behind" if running_version < published_version else "ahead of the manifest"
        status = running.get("status") or {}
        return {
            "published_version": published_version,
            "published_expires": format_local(published.get("expires_at"), lock.timezone) if published else "",
            "running_version": running_version,
            "state": state,
            "last_contact": format_local(running.get("last_contact"), lock.timezone) if running else "never",
            "clock_offset": running.get("clock_offset_seconds"),
            "reader_healthy": (status.get("reader") or {}).get("healthy"),
        }

    def unknown_at_lock(self, lock_name: str) -> list[dict]:
        zone = self._zone(lock_name)
        return [
            {**row, "first_local": format_local(row.get("first_seen"), zone),
             "last_local": format_local(row.get("last_seen"), zone),
             "owner": self.key_owner.get(row["hwid"])}
            for row in self.unknown_by_lock.get(lock_name, [])
        ]

    def unknown_keys(self) -> list[dict]:
        by_hwid: dict[str, list[dict]] = {}
        for row in self.stats.unknown_keys if self.stats else []:
            by_hwid.setdefault(row["hwid"], []).append(row)
        entries = []
        for hwid in sorted(by_hwid, key=lambda h: max(r.get("last_seen") or "" for r in by_hwid[h]), reverse=True):
            sightings = by_hwid[hwid]
            owner = self.key_owner.get(hwid)
            entries.append({
                "hwid": hwid,
                "anchor": "key-" + hwid.replace(":", ""),
                "owner": owner.username if owner else None,
                "count": sum(int(r.get("count") or 0) for r in sightings),
                "sightings": [
                    {**r, "first_local": format_local(r.get("first_seen"), self._zone(r["lock"])),
                     "last_local": format_local(r.get("last_seen"), self._zone(r["lock"]))}
                    for r in sightings
                ],
                "snippet": enrol_snippet(hwid, sightings),
            })
        return entries

    def _zone(self, lock_name: str) -> str:
        lock = self.repository.locks.get(lock_name)
        return lock.timezone if lock else "UTC"

    # -- rendering ----------------------------------------------------------------------

    def render(self, template: str, root: str, **values) -> str:
        common = {
            "root": root,
            "generated": self.now.strftime("%Y-%m-%d %H:%M UTC"),
            "stats_source": self.stats.source if self.stats else "",
            "has_stats": self.stats is not None,
        }
        return self.environment.get_template(template).render(**common, **values)

    def pages(self) -> dict[str, str]:
        """Return relative path -> page content for the whole site."""
        repository = self.repository
        people = [repository.people[name] for name in sorted(repository.people)]
        locks = [repository.locks[name] for name in sorted(repository.locks)]
        unknown = self.unknown_keys()

        pages = {
            "style.css": (TEMPLATES / "style.css").read_text(encoding="utf-8"),
            "index.html": self.render(
                "index.html", "", people=people, locks=locks, unknown_count=len(unknown),
                lock_counts={lock.name: len(self.people_at.get(lock.name, [])) for lock in locks},
                person_counts={p.username: len(self.locks_of.get(p.username, [])) for p in people},
                statuses={lock.name: self.lock_status(lock) for lock in locks},
            ),
            "matrix.html": self._matrix(people, locks),
            "unknown-keys.html": self.render("unknown.html", "", entries=unknown),
        }
        for person in people:
            pages[f"people/{page_name(person.username)}"] = self.render(
                "person.html", "../", person=person, rows=self.person_rows(person), keys=self.key_rows(person),
                validity=describe_validity(person.valid_from, person.valid_until),
                groups=[(name, repository.groups.get(name)) for name in person.groups],
            )
        for lock in locks:
            pages[f"locks/{page_name(lock.name)}"] = self.render(
                "lock.html", "../", lock=lock, rows=self.lock_rows(lock), status=self.lock_status(lock),
                unknown=self.unknown_at_lock(lock.name),
                schedules=self._schedules_at(lock.name),
            )
        return pages

    def _matrix(self, people: list[Person], locks: list[Lock]) -> str:
        """Render people × locks, or groups × locks when that table would be too large for a page."""
        if len(people) * len(locks) <= MATRIX_MAX_CELLS:
            cells = {key: access_hours(grants) for key, grants in self.grants.items()}
            return self.render("matrix.html", "", rows=[(p.username, f"people/{page_name(p.username)}") for p in people],
                               locks=locks, cells=cells, by_group=False)

        cells = {}
        for group in self.repository.groups.values():
            if not group.enabled:
                continue
            for rule in group.access:
                schedule = self.repository.schedules.get(rule.schedule)
                for lock_name in rule.locks:
                    if schedule is not None and lock_name in self.repository.locks:
                        text = describe_schedule(schedule)
                        previous = cells.get((group.name, lock_name))
                        cells[(group.name, lock_name)] = f"{previous}; {text}" if previous else text
        rows = [(name, None) for name in sorted(self.repository.groups)]
        return self.render("matrix.html", "", rows=rows, locks=locks, cells=cells, by_group=True,
                           people_count=len(people))

    def _schedules_at(self, lock_name: str) -> list[tuple[str, str]]:
        names = sorted({g.schedule for username in self.people_at.get(lock_name, [])
                        for g in self.grants[(username, lock_name)]})
        return [(name, describe_schedule(self.repository.schedules[name])) for name in names]


def write_site(
    repository: AccessRepository,
    out: Path,
    stats: Stats | None = None,
    published: dict | None = None,
    now: datetime | None = None,
) -> list[Path]:
    """Render the site and move it into ``out``; return the written files (relative paths).

    ``out`` must be missing, empty, or a site this function wrote before.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise ReportError(f"{out} exists and is not a doorlock report; choose an empty or new directory for --out")

    builder = SiteBuilder(repository, stats, published, now or datetime.now(timezone.utc))
    pages = builder.pages()

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for relative, content in pages.items():
            path = staging / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content, encoding="utf-8")
        (staging / MARKER).write_text("written by doorlock report; the whole directory is replaced on the next run\n")
        os.chmod(staging, 0o755)
        _replace_directory(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("wrote %d pages to %s", len(pages), out)
    return sorted(Path(p) for p in pages)


def _replace_directory(staging: Path, out: Path) -> None:
    """Move ``staging`` to ``out``; an old site is renamed away first and removed after."""
    if not out.exists():
        staging.rename(out)
        return
    old = out.with_name(f".{out.name}-old-{os.getpid()}")
    out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
