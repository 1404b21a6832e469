"""Convert a checked doorlockd dump into an access repository (YAML files).

The mapping, entity by entity:

- person -> ``people/<username>.yaml``; the username is the name folded to ASCII and
  lowercased; a name that gives a taken username gets ``-2``, ``-3``, ... in primary-key order.
- key -> an entry in its owner's ``keys`` with the normalised hardware id; its metadata
  (card type) and the person's ``info`` are kept as comments.
- person group -> ``groups/<name>.yaml``; each access group the person group is linked to
  becomes an access rule (the access group's locks, under the schedules made from its ruleset).
- ruleset -> one or more ``schedules/``: the weekly rules form ``<ruleset>``; a rule limited by
  ``after``/``before`` adds windows valid only on the days inside that period, and the days its
  limits cut through get windows of their own, valid on that one day.
- lock -> ``locks/<name>.yaml`` with the SHA-256 fingerprint of the certificate and the PEM in
  ``certs/<name>.pem``.

How rules become windows is in :mod:`compiler.doorlockd_rules`; every place where the result
differs from what doorlockd did is a finding in the migration report
(:mod:`compiler.doorlockd_report`).

The output is deterministic: the same dump, time zone, options and ``now`` give the same bytes.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from compiler.doorlockd_dump import DoorlockdDump, Rule
from compiler.doorlockd_report import CHANGED, NOTE, SKIPPED, WARNING, MigrationReport
from compiler.doorlockd_rules import MINUTES_PER_DAY, Piece, RuleConverter, format_minute
from compiler.doorlockd_yaml import render_yaml
from compiler.pki import PkiError, certificate_common_name, certificate_sha256

__all__ = ["ConvertedRepository", "convert_dump", "derive_usernames", "ascii_fold", "slugify", "DEFAULT_TIMEZONE"]

DEFAULT_TIMEZONE = "Europe/Amsterdam"
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_NAME_LENGTH = 64
MAX_LOCK_NAME_LENGTH = 63

# Letters that Unicode decomposition does not reduce to ASCII.
_ASCII_FOLDS = str.maketrans({
    "ß": "ss", "æ": "ae", "Æ": "AE", "ø": "o", "Ø": "O", "đ": "d", "Đ": "D", "ł": "l", "Ł": "L",
    "þ": "th", "Þ": "TH", "œ": "oe", "Œ": "OE", "ı": "i", "ð": "d", "Ð": "D", "ŋ": "ng",
})


@dataclass
class ConvertedRepository:
    """The files of the access repository (relative path -> bytes) and the report."""

    files: dict[str, bytes]
    report: MigrationReport
    usernames: dict[int, str]  # person pk -> username
    lock_names: dict[int, str]  # lock pk -> name


# --- names ---------------------------------------------------------------------------------


def ascii_fold(text: str) -> str:
    """Return ``text`` with accents removed and other letters spelled in ASCII (``ß`` -> ``ss``)."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_ASCII_FOLDS))
    return "".join(char for char in decomposed if ord(char) < 128)


def slugify(text: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """Return lowercase ASCII words of ``text`` joined by '-', or '' when none are left."""
    words = re.findall(r"[a-z0-9]+", ascii_fold(text).lower())
    slug = "-".join(words)[:max_length].strip("-")
    return slug


def _unique(base: str, taken: set[str], max_length: int) -> str:
    if base not in taken:
        return base
    counter = 2
    while True:
        suffix = f"-{counter}"
        candidate = base[: max_length - len(suffix)].rstrip("-") + suffix
        if candidate not in taken:
            return candidate
        counter += 1


def derive_usernames(names: dict[int, str]) -> dict[int, str]:
    """Map person primary keys to unique usernames, deciding collisions by primary key order."""
    usernames: dict[int, str] = {}
    taken: set[str] = set()
    for pk in sorted(names):
        base = slugify(names[pk]) or f"person-{pk}"
        username = _unique(base, taken, MAX_NAME_LENGTH)
        taken.add(username)
        usernames[pk] = username
    return usernames


def _assign_names(
    records: dict[int, object], kind: str, report: MigrationReport, max_length: int = MAX_NAME_LENGTH,
) -> dict[int, str]:
    names: dict[int, str] = {}
    taken: set[str] = set()
    for pk in sorted(records):
        original = records[pk].name
        base = slugify(original, max_length) or f"{kind.replace(' ', '-')}-{pk}"
        name = _unique(base, taken, max_length)
        taken.add(name)
        names[pk] = name
        if name != original:
            report.add(NOTE, "renamed", f"{kind} {original!r}",
                       f"named {name!r}: names here are lowercase ASCII letters, digits and '-'")
    return names



# --- schedules -----------------------------------------------------------------------------


def _schedule_documents(
    dump: DoorlockdDump, converter: RuleConverter, report: MigrationReport, taken: set[str],
) -> tuple[dict[str, dict], dict[int, list[str]]]:
    """Return schedule documents by name and, per ruleset pk, the names of its schedules."""
    documents: dict[str, dict] = {}
    per_ruleset: dict[int, list[str]] = {}
    rules_by_ruleset: dict[int, list[Rule]] = {}
    for rule in sorted(dump.rules.values(), key=lambda r: r.pk):
        rules_by_ruleset.setdefault(rule.ruleset_pk, []).append(rule)

    for ruleset_pk in sorted(dump.rulesets):
        ruleset = dump.rulesets[ruleset_pk]
        grouped: dict[tuple, list[Piece]] = {}
        sources: dict[tuple, list[int]] = {}
        for rule in rules_by_ruleset.get(ruleset_pk, []):
            for piece in converter.convert(rule):
                key = (piece.first, piece.last)
                grouped.setdefault(key, []).append(piece)
                if rule.pk not in sources.setdefault(key, []):
                    sources[key].append(rule.pk)
        if not grouped:
            report.add(NOTE, "empty-ruleset", f"ruleset {ruleset.name!r}",
                       "no rule of it can match, so it grants nothing; no schedule written")
            per_ruleset[ruleset_pk] = []
            continue

        base = slugify(ruleset.name, MAX_NAME_LENGTH - 25) or f"ruleset-{ruleset_pk}"
        names = []
        for key in sorted(grouped, key=_range_sort_key):
            name = _unique(base + _range_suffix(*key), taken, MAX_NAME_LENGTH)
            taken.add(name)
            names.append(name)
            rules_text = ", ".join(str(pk) for pk in sources[key])
            description = f"Imported from doorlockd ruleset {ruleset.name!r} (rule {rules_text})"
            documents[name] = _schedule_document(name, description, grouped[key], *key)
            report.count("schedules")
        per_ruleset[ruleset_pk] = names
    return documents, per_ruleset


def _range_sort_key(key: tuple[date | None, date | None]) -> tuple:
    first, last = key
    return (first is not None or last is not None, first or date.min, last or date.max)


def _range_suffix(first: date | None, last: date | None) -> str:
    if first is None and last is None:
        return ""
    if first == last:
        return f"-{first.isoformat()}"
    return f"-{first.isoformat() if first else 'start'}-to-{last.isoformat() if last else 'end'}"


def _schedule_document(name: str, description: str, pieces: list[Piece],
                       first: date | None, last: date | None) -> dict:
    # Merge windows with the same times into one window with several days.
    days_by_times: dict[tuple[int, int], set[int]] = {}
    for piece in pieces:
        days_by_times.setdefault((piece.start, piece.end), set()).update(piece.days)

    document: dict = {"name": name, "description": description}
    whole_day = days_by_times.get((0, MINUTES_PER_DAY), set())
    if len(whole_day) == 7:
        document["always"] = True
    else:
        windows = []
        ordered = sorted(days_by_times.items(), key=lambda item: (min(item[1]), item[0]))
        for (start, end), days in ordered:
            end_text = format_minute(end) if end <= MINUTES_PER_DAY else format_minute(end - MINUTES_PER_DAY)
            windows.append({
                "days": [DAY_NAMES[day] for day in sorted(days)],
                "start": format_minute(start),
                "end": end_text,
            })
        document["windows"] = windows
    if first is not None or last is not None:
        date_range: dict = {}
        if first is not None:
            date_range["from"] = first
        if last is not None:
            date_range["until"] = last
        document["date_ranges"] = [date_range]
    return document


# --- the whole repository ------------------------------------------------------------------


def convert_dump(
    dump: DoorlockdDump,
    timezone: str = DEFAULT_TIMEZONE,
    keep_doorlockd_behaviour: bool = False,
    now: datetime | None = None,
) -> ConvertedRepository:
    """Convert ``dump`` into access repository files; ``now`` decides which rules have expired."""
    zone = ZoneInfo(timezone)
    now = now or datetime.now().astimezone()
    report = MigrationReport()
    files: dict[str, bytes] = {}

    lock_names = _assign_names(dump.locks, "lock", report, MAX_LOCK_NAME_LENGTH)
    for pk in sorted(dump.locks):
        files.update(_lock_files(dump.locks[pk], lock_names[pk], timezone, report))

    converter = RuleConverter(dump, zone, keep_doorlockd_behaviour, now, report)
    schedule_names: set[str] = set()
    schedules, per_ruleset = _schedule_documents(dump, converter, report, schedule_names)
    for name, document in schedules.items():
        files[f"schedules/{name}.yaml"] = render_yaml(document, "schedule")

    group_names = _assign_names(dump.person_groups, "person group", report)
    for pk in sorted(dump.person_groups):
        document = _group_document(dump, pk, group_names[pk], lock_names, per_ruleset, report)
        files[f"groups/{group_names[pk]}.yaml"] = render_yaml(document, "group")

    usernames = derive_usernames({pk: person.name for pk, person in dump.persons.items()})
    for pk in sorted(dump.persons):
        document, comments = _person_document(dump, pk, usernames, group_names, report)
        files[f"people/{usernames[pk]}.yaml"] = render_yaml(document, "person", comments)

    _report_unmapped(dump, report)
    return ConvertedRepository(files=dict(sorted(files.items())), report=report,
                               usernames=usernames, lock_names=lock_names)


def _lock_files(lock, name: str, timezone: str, report: MigrationReport) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    document: dict = {"name": name}
    if lock.description:
        document["description"] = lock.description
    document["timezone"] = timezone
    if not lock.enabled:
        document["enabled"] = False
        report.count("locks disabled")
        report.add(NOTE, "lock-disabled", f"lock {lock.name!r}",
                   "imported disabled: it gets no bundle and opens for nobody (as in doorlockd)")
    report.count("locks")

    if lock.certificate:
        pem = lock.certificate.replace("\r\n", "\n").strip() + "\n"
        try:
            fingerprint = certificate_sha256(pem.encode())
        except PkiError as error:
            report.add(WARNING, "certificate-invalid", f"lock {lock.name!r}",
                       f"certificate cannot be read ({error}); imported without one: add it before "
                       "the lock fetches bundles")
        else:
            document["certificate"] = {"sha256": fingerprint, "file": f"certs/{name}.pem"}
            files[f"certs/{name}.pem"] = pem.encode()
            # Bundle hosting accepts only certificates from the deployment's own CA and maps
            # the certificate's common name to the lock's bundle.
            common_name = certificate_common_name(pem.encode())
            issued_to = "" if common_name == name else f" and is issued to {common_name!r}, not {name!r}"
            report.add(WARNING, "certificate-reissue", f"lock {lock.name!r}",
                       f"its certificate comes from doorlockd, not from this deployment's CA{issued_to}: "
                       f"issue a new one with 'doorlock pki issue-lock {name}' and put its fingerprint "
                       "in the lock file")
    else:
        report.add(WARNING, "certificate-missing", f"lock {lock.name!r}",
                   "has no certificate; add its fingerprint before the lock fetches bundles")
    files[f"locks/{name}.yaml"] = render_yaml(document, "lock")
    return files


def _group_document(dump: DoorlockdDump, pk: int, name: str, lock_names: dict[int, str],
                    per_ruleset: dict[int, list[str]], report: MigrationReport) -> dict:
    group = dump.person_groups[pk]
    linked = [dump.access_groups[ag_pk] for ag_pk in sorted(set(group.access_group_pks))]
    description = f"Imported from doorlockd person group {group.name!r}"
    if linked:
        description += "; access groups: " + ", ".join(repr(access.name) for access in linked)
    document: dict = {"name": name, "description": description}
    if not group.enabled:
        document["enabled"] = False
        report.count("groups disabled")
        report.add(NOTE, "group-disabled", f"person group {group.name!r}",
                   "imported disabled: it grants nothing (as in doorlockd)")
    report.count("groups")

    access = []
    for access_group in linked:
        locks = [lock_names[lock_pk] for lock_pk in sorted(set(access_group.lock_pks))]
        subject = f"access group {access_group.name!r} (linked to person group {group.name!r})"
        if not locks:
            report.add(NOTE, "access-group-without-locks", subject, "lists no locks; grants nothing")
            continue
        schedules = per_ruleset.get(access_group.ruleset_pk, [])
        if not schedules:
            report.add(NOTE, "access-group-empty-ruleset", subject,
                       "its ruleset has no rule that can match; grants nothing (as in doorlockd)")
            continue
        for schedule in schedules:
            access.append({"locks": locks, "schedule": schedule})
            report.count("access rules")
    if access:
        document["access"] = access
    return document


def _person_document(dump: DoorlockdDump, pk: int, usernames: dict[int, str],
                     group_names: dict[int, str], report: MigrationReport) -> tuple[dict, list[str]]:
    person = dump.persons[pk]
    username = usernames[pk]
    subject = f"person {person.name!r} (pk {pk})"
    comments = [f"Imported from doorlockd person pk {pk}."]
    if person.info:
        comments.append(f"doorlockd info: {person.info}")
    if slugify(person.name) and slugify(person.name) != username:
        report.add(NOTE, "username-collision", subject,
                   f"username {slugify(person.name)!r} is taken by an earlier person; named {username!r}")

    name = person.name.strip()
    if not name:
        name = username
        report.add(CHANGED, "name-missing", subject, f"has no name; {username!r} is used as the name")
    document: dict = {"username": username, "name": name}
    if person.email:
        document["email"] = person.email
    if not person.enabled:
        document["enabled"] = False
        report.count("people disabled")
    report.count("people")
    groups = [group_names[group_pk] for group_pk in sorted(set(person.group_pks))]
    document["groups"] = groups
    if not groups and any(key.owner_pk == pk for key in dump.keys.values()):
        report.add(NOTE, "person-without-group", subject,
                   "belongs to no person group, so their keys open nothing (as in doorlockd)")

    keys = []
    for key in sorted((k for k in dump.keys.values() if k.owner_pk == pk), key=lambda k: k.pk):
        if key.hwid is None:
            report.add(SKIPPED, "key-hwid-invalid", f"key pk {key.pk} of {subject}",
                       f"left out: {key.hwid_problem}")
            report.count("keys skipped")
            continue
        entry: dict = {"hwid": key.hwid}
        if key.description:
            entry["description"] = key.description
        if not key.enabled:
            entry["enabled"] = False
            report.count("keys disabled")
        elif not person.enabled:
            report.add(NOTE, "enabled-key-of-disabled-person", f"key pk {key.pk} of {subject}",
                       "is enabled but its owner is disabled; it stays unusable until the person is enabled")
        keys.append(entry)
        report.count("keys")
        metadata = dump.key_metadata.get(key.hwid) or dump.key_metadata.get(key.raw_hwid.strip().lower())
        if metadata is not None and metadata.data:
            comments.append(f"key {key.hwid} metadata: {json.dumps(metadata.data, sort_keys=True)}")
            report.count("key metadata kept as comments")
    if keys:
        document["keys"] = keys
    return document, comments


def _report_unmapped(dump: DoorlockdDump, report: MigrationReport) -> None:
    key_hwids = {key.hwid for key in dump.keys.values() if key.hwid} | {
        key.raw_hwid.strip().lower() for key in dump.keys.values()}
    unknown_hwids = {row.hwid.strip().lower() for row in dump.unknown_keys.values()}
    empty = sum(1 for hwid, metadata in dump.key_metadata.items() if hwid in key_hwids and not metadata.data)
    unknown = sum(1 for hwid in dump.key_metadata if hwid not in key_hwids and hwid in unknown_hwids)
    orphaned = sum(1 for hwid in dump.key_metadata if hwid not in key_hwids and hwid not in unknown_hwids)
    if empty:
        report.add(SKIPPED, "metadata-empty", "doorlockdb.keymetadata",
                   f"{empty} row(s) of keys hold no data ({{}}); nothing to keep")
    if unknown:
        report.add(SKIPPED, "metadata-unknown-key", "doorlockdb.keymetadata",
                   f"{unknown} row(s) describe unknown cards, not keys; with --stats-db their card "
                   "type goes into the receiver database with the unknown keys")
    if orphaned:
        report.add(SKIPPED, "metadata-orphaned", "doorlockdb.keymetadata",
                   f"{orphaned} row(s) belong to no key and no unknown card; left out")
    report.count("access groups", len(dump.access_groups))
    report.count("rulesets", len(dump.rulesets))
    for model, count in sorted(dump.ignored_models.items()):
        report.add(NOTE, "model-ignored", model, f"{count} record(s) not imported: nothing here corresponds to them")
    report.count("rules read", len(dump.rules))
