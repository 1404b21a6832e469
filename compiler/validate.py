"""Semantic checks of an access repository: everything a JSON Schema cannot express.

:func:`validate_repository` takes the model objects built from the files, registers
them in the :class:`AccessRepository` and reports:

- errors: duplicate ids (usernames, group, lock and schedule names), references to unknown
  groups, locks and schedules, and one hardware id on two keys (break-glass keys included).
  Also an unknown IANA time zone, a window of zero length, an end date before its start
  date, a schedule that is never open, and a certificate file that cannot be read or does
  not match the fingerprint.
- warnings: a lock that no rule of an enabled group reaches, an enabled lock without a
  certificate (the receiver cannot identify it), an enabled person in no group, a file name
  that differs from the id inside, and a certificate that expires within 30 days.
"""

from __future__ import annotations

import difflib
import functools
import zoneinfo
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from compiler.model import AccessRepository, AccessRule, Lock, Person, Schedule, Source
from compiler.problems import ERROR, WARNING, Problem
from lockclient.config import DEFAULT_MAX_BUNDLE_VALIDITY_DAYS as LOCK_DEFAULT_MAX_VALIDITY_DAYS

if TYPE_CHECKING:
    from compiler.loader import LoadedFile, LoadState

CERTIFICATE_WARNING_DAYS = 30

# Names in the tz database that are not zones an admin should write: 'localtime' is the
# machine's own setting and 'posixrules' a template.
_NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})


@functools.lru_cache(maxsize=1)
def known_time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) - _NOT_ZONES


def is_time_zone(name: str) -> bool:
    """Return True when ``name`` is an IANA time zone that zoneinfo can load here."""
    return name in known_time_zones()


class _Reporter:
    """Append positioned problems for one repository to the load state."""

    def __init__(self, state: LoadState) -> None:
        self.state = state

    def source(self, entity_source: Source, path: tuple[Any, ...] = (), key: bool = False) -> Source:
        file = self.state.files.get(entity_source.file)
        if file is None or not path:
            return entity_source
        return file.source(path, key=key)

    def add(self, severity: str, source: Source, message: str, fix: str = "") -> None:
        file = self.state.files.get(source.file)
        if severity == WARNING and file is not None and file.partial:
            # Built from the valid rest of a file with schema errors: a warning such as
            # "in no group" may only echo one of those errors.
            return
        self.state.problems.append(Problem(source.file, source.line, source.column, severity, message, fix))

    def error(self, source: Source, message: str, fix: str = "") -> None:
        self.add(ERROR, source, message, fix)

    def warning(self, source: Source, message: str, fix: str = "") -> None:
        self.add(WARNING, source, message, fix)


def validate_repository(
    repository: AccessRepository,
    entities: list[tuple[LoadedFile, Any]],
    state: LoadState,
    now: datetime | None = None,
) -> None:
    """Register ``entities`` in ``repository`` and append every semantic problem to ``state``."""
    report = _Reporter(state)
    now = now or datetime.now(timezone.utc)

    _register(repository, entities, report)

    for person in repository.people.values():
        _check_person(person, report)
    for schedule in repository.schedules.values():
        _check_schedule(schedule, report)
    for lock in repository.locks.values():
        _check_lock(lock, repository.root, now, report)

    _check_references(repository, state.broken_ids, report)
    _check_hardware_ids(repository, report)
    _check_shared_certificates(repository, report)
    # A group file that failed to load may be the one that reaches a lock.
    if not state.broken_ids["group"]:
        _check_unreached_locks(repository, report)


# -- ids -----------------------------------------------------------------------------------------

_ID_FIELDS = {"person": "username", "group": "name", "lock": "name", "schedule": "name"}
_KIND_WORDS = {"person": "username", "group": "group name", "lock": "lock name", "schedule": "schedule name"}


def _register(repository: AccessRepository, entities: list[tuple[LoadedFile, Any]], report: _Reporter) -> None:
    tables: dict[str, dict[str, Any]] = {
        "person": repository.people,
        "group": repository.groups,
        "lock": repository.locks,
        "schedule": repository.schedules,
    }
    for file, entity in entities:
        id_field = _ID_FIELDS[file.kind]
        identifier = getattr(entity, id_field)
        table = tables[file.kind]

        if identifier in table:
            first = table[identifier].source
            report.error(
                entity.source,
                f"{_KIND_WORDS[file.kind]} {identifier!r} is already used in {first}",
                f"give one of them another {id_field}, or merge the two files",
            )
            continue
        table[identifier] = entity

        stem = Path(file.relative).stem
        if stem != identifier:
            report.warning(
                entity.source,
                f"file name {Path(file.relative).name!r} does not match the {id_field} {identifier!r}",
                f"rename the file to {identifier}{Path(file.relative).suffix} so it is easy to find",
            )


# -- single entities -----------------------------------------------------------------------------


def _check_validity(report: _Reporter, owner: Source, path: tuple[Any, ...], valid_from, valid_until, what: str) -> None:
    if valid_from is not None and valid_until is not None and valid_until < valid_from:
        report.error(
            report.source(owner, path + ("valid_until",)),
            f"{what} valid_until {valid_until.isoformat()} is before valid_from {valid_from.isoformat()}",
            "swap the dates or correct the year (valid_until is the last valid day, inclusive)",
        )


def _check_person(person: Person, report: _Reporter) -> None:
    _check_validity(report, person.source, (), person.valid_from, person.valid_until, "membership")

    file = report.state.files.get(person.source.file)
    key_paths = _key_paths(file)
    for key in person.keys:
        path = key_paths.get(key.source, ())
        _check_validity(report, person.source, path, key.valid_from, key.valid_until, f"key {key.hwid}")

    if person.enabled and not person.groups:
        report.warning(
            person.source,
            f"person {person.username!r} is in no group, so their keys open nothing",
            "add 'groups: [...]', or set 'enabled: false' if that is intended",
        )


def _key_paths(file: LoadedFile | None) -> dict[Source, tuple[Any, ...]]:
    """Map each key's source back to its YAML path (``("keys", index)``)."""
    if file is None or not isinstance(file.data, dict):
        return {}
    keys = file.data.get("keys") or []
    return {file.source(("keys", index)): ("keys", index) for index in range(len(keys))}


def _check_schedule(schedule: Schedule, report: _Reporter) -> None:
    file = report.state.files.get(schedule.source.file)
    window_paths = {}
    if file is not None:
        for index in range(len(file.data.get("windows") or [])):
            window_paths[file.source(("windows", index))] = ("windows", index)

    if schedule.always and schedule.windows:
        report.error(
            report.source(schedule.source, ("always",)),
            f"schedule {schedule.name!r} has 'always: true' and windows",
            "remove the windows (always means every day 00:00-24:00) or remove 'always'",
        )
    if not schedule.always and not schedule.windows:
        report.error(
            schedule.source,
            f"schedule {schedule.name!r} has no windows and is never open",
            "add 'windows:' with days, start and end, or 'always: true'",
        )

    for window in schedule.windows:
        if window.start == window.end:
            path = window_paths.get(window.source, ())
            report.error(
                report.source(schedule.source, path + ("end",)),
                f"window from {_clock(window.start)} to {_clock(window.end)} has zero length",
                "use 00:00 to 24:00 for a whole day, or correct the start or end time",
            )

    for field_name, ranges in (("date_ranges", schedule.date_ranges), ("closed", schedule.closed)):
        raw = (file.data.get(field_name) or []) if file is not None else []
        for index, item in enumerate(ranges):
            if item.first is not None and item.last is not None and item.last < item.first:
                report.error(
                    report.source(schedule.source, _range_path(raw, field_name, item, index)),
                    f"{field_name} range ends {item.last.isoformat()} before it starts {item.first.isoformat()}",
                    "swap 'from' and 'until' or correct the year",
                )


def _range_path(raw: list, field_name: str, item, index: int) -> tuple[Any, ...]:
    # Ranges that failed to parse were dropped, so the model index may lag the YAML index.
    # Look the range up by its dates instead.
    for raw_index, raw_item in enumerate(raw):
        if isinstance(raw_item, dict) and raw_item.get("until") == item.last.isoformat() and raw_item.get("from") == (
            item.first.isoformat() if item.first else None
        ):
            return (field_name, raw_index, "until")
    return (field_name, index)


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _check_lock(lock: Lock, root: Path, now: datetime, report: _Reporter) -> None:
    if not is_time_zone(lock.timezone):
        report.error(
            report.source(lock.source, ("timezone",)),
            f"unknown time zone {lock.timezone!r}",
            "use an IANA time zone name such as Europe/Amsterdam or America/New_York "
            "(see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones)",
        )

    seen: dict[str, Source] = {}
    for key in lock.break_glass:
        if key.hwid in seen:
            report.error(
                key.source,
                f"break-glass key {key.hwid} is listed twice for lock {lock.name!r} (first at {seen[key.hwid]})",
                "remove the repeated entry",
            )
        else:
            seen[key.hwid] = key.source

    if lock.certificate_sha256 is None and lock.enabled:
        # The receiver and the bundle server identify a lock only by its certificate's
        # fingerprint, so without one its statistics pushes are rejected (403).
        report.warning(
            lock.source,
            f"lock {lock.name!r} has no 'certificate:', so the receiver cannot identify it and "
            "refuses its statistics (403)",
            f"run 'doorlock pki issue-lock {lock.name}' where the CA key is and paste the 'certificate:' "
            "lines it prints into this file",
        )
    if lock.certificate_file is not None:
        _check_certificate_file(lock, root, now, report)

    if lock.valid_days > LOCK_DEFAULT_MAX_VALIDITY_DAYS:
        report.warning(
            report.source(lock.source, ("bundle", "valid_days")),
            f"lock {lock.name!r} gets bundles valid for {lock.valid_days} days, but a lock rejects bundles "
            f"valid longer than its max_bundle_validity_days ({LOCK_DEFAULT_MAX_VALIDITY_DAYS} unless raised)",
            f"set max_bundle_validity_days = {lock.valid_days} or more in the lock's configuration, "
            f"or lower valid_days to {LOCK_DEFAULT_MAX_VALIDITY_DAYS}",
        )


def _check_certificate_file(lock: Lock, root: Path, now: datetime, report: _Reporter) -> None:
    where = report.source(lock.source, ("certificate", "file"))
    relative = lock.certificate_file
    root_resolved = root.resolve()
    path = (root / relative).resolve()
    if path != root_resolved and root_resolved not in path.parents:
        report.error(where, f"certificate file {relative!r} is outside the access repository",
                     "keep certificates inside the repository, e.g. certs/<lock>.pem")
        return

    try:
        data = path.read_bytes()
    except OSError as error:
        report.error(where, f"cannot read certificate file {relative!r}: {error.strerror}",
                     "commit the certificate's PEM file at that path or remove 'file:'")
        return
    try:
        if b"-----BEGIN" in data:
            certificate = x509.load_pem_x509_certificate(data)
        else:
            certificate = x509.load_der_x509_certificate(data)
    except ValueError:
        report.error(where, f"certificate file {relative!r} is not an X.509 certificate in PEM or DER",
                     "export the lock's certificate (not its private key) as PEM")
        return

    fingerprint = certificate.fingerprint(hashes.SHA256()).hex()
    if lock.certificate_sha256 is not None and fingerprint != lock.certificate_sha256:
        report.error(
            report.source(lock.source, ("certificate", "sha256")),
            f"certificate sha256 {lock.certificate_sha256} does not match {relative!r}, whose fingerprint is {fingerprint}",
            "update 'sha256' to the fingerprint of the certificate the lock uses",
        )

    expires = certificate.not_valid_after_utc
    if expires <= now:
        report.warning(where, f"certificate {relative!r} of lock {lock.name!r} expired on {expires:%Y-%m-%d %H:%M} UTC",
                       f"renew it ('doorlock pki renew {relative}' where the CA key is) and paste the new 'sha256'; "
                       f"see docs/hosting.md")
    elif expires - now <= timedelta(days=CERTIFICATE_WARNING_DAYS):
        report.warning(where, f"certificate {relative!r} of lock {lock.name!r} expires on {expires:%Y-%m-%d %H:%M} UTC, "
                       f"within {CERTIFICATE_WARNING_DAYS} days",
                       f"renew it before then ('doorlock pki renew {relative}' where the CA key is) and paste the "
                       f"new 'sha256'; docs/hosting.md explains renewal without downtime")

    names = [attribute.value for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names and lock.name not in names:
        report.warning(where, f"certificate {relative!r} is issued to {names[0]!r}, not to lock {lock.name!r}",
                       "check that the file belongs to this lock")


# -- across entities -----------------------------------------------------------------------------


def _list_path(file: LoadedFile | None, path: tuple[Any, ...], value: Any) -> tuple[Any, ...]:
    """Return the YAML path of ``value`` in the list at ``path``, or ``path`` when not found.

    Model lists can be shorter than the YAML lists (invalid items are left out), so a model
    index is not a YAML index.
    """
    values = file.value_at(path) if file is not None else None
    if isinstance(values, list):
        for index, item in enumerate(values):
            if item == value:
                return path + (index,)
    return path


def _rule_path(file: LoadedFile | None, rule: AccessRule) -> tuple[Any, ...]:
    rules = file.value_at(("access",)) if file is not None else None
    for index in range(len(rules) if isinstance(rules, list) else 0):
        if file.source(("access", index)) == rule.source:
            return ("access", index)
    return ()


def _check_references(repository: AccessRepository, broken_ids: dict[str, set[str]], report: _Reporter) -> None:
    for person in repository.people.values():
        file = report.state.files.get(person.source.file)
        for group_name in person.groups:
            if group_name in repository.groups or group_name in broken_ids["group"]:
                continue
            report.error(
                report.source(person.source, _list_path(file, ("groups",), group_name)),
                f"unknown group {group_name!r}",
                _suggest(group_name, repository.groups, "groups"),
            )

    for group in repository.groups.values():
        file = report.state.files.get(group.source.file)
        for rule in group.access:
            rule_path = _rule_path(file, rule)
            for lock_name in rule.locks:
                if lock_name in repository.locks or lock_name in broken_ids["lock"]:
                    continue
                report.error(
                    report.source(rule.source, _list_path(file, rule_path + ("locks",), lock_name)),
                    f"unknown lock {lock_name!r}",
                    _suggest(lock_name, repository.locks, "locks"),
                )
            if rule.schedule not in repository.schedules and rule.schedule not in broken_ids["schedule"]:
                report.error(
                    report.source(rule.source, rule_path + ("schedule",)),
                    f"unknown schedule {rule.schedule!r}",
                    _suggest(rule.schedule, repository.schedules, "schedules"),
                )


def _suggest(name: str, known: dict[str, Any], directory: str) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    if close:
        return f"did you mean {close[0]!r}? Otherwise add {directory}/{name}.yaml"
    return f"add {directory}/{name}.yaml or correct the name"


def _check_hardware_ids(repository: AccessRepository, report: _Reporter) -> None:
    owners: dict[str, tuple[Source, str]] = {}

    for person in sorted(repository.people.values(), key=lambda item: item.source.file):
        for key in person.keys:
            place = f"key of person {person.username!r}"
            _claim(owners, key.hwid, key.source, place, report)

    # A break-glass key may open several locks (one key safe for the fire brigade), so the
    # same id on several locks is one key. It must not also be a person's key.
    break_glass_owner: dict[str, tuple[Source, str]] = {}
    for lock in sorted(repository.locks.values(), key=lambda item: item.source.file):
        for key in lock.break_glass:
            if key.hwid in break_glass_owner:
                continue
            break_glass_owner[key.hwid] = (key.source, f"break-glass key of lock {lock.name!r}")
            _claim(owners, key.hwid, key.source, f"break-glass key of lock {lock.name!r}", report)


def _claim(owners: dict[str, tuple[Source, str]], hwid: str, source: Source, place: str, report: _Reporter) -> None:
    if hwid not in owners:
        owners[hwid] = (source, place)
        return
    first_source, first_place = owners[hwid]
    report.error(
        report.source(source),
        f"hardware id {hwid} of this {place} is already used by the {first_place} at {first_source}",
        "one card belongs to one key: remove the old entry or correct the id",
    )


def _check_shared_certificates(repository: AccessRepository, report: _Reporter) -> None:
    # The receiver identifies a lock by its certificate fingerprint, so two locks with one
    # certificate could write each other's statistics. The receiver rejects both locks, and so
    # does this check.
    first_lock: dict[str, Lock] = {}
    for lock in sorted(repository.locks.values(), key=lambda item: item.source.file):
        if lock.certificate_sha256 is None:
            continue
        other = first_lock.setdefault(lock.certificate_sha256, lock)
        if other is lock:
            continue
        report.error(
            report.source(lock.source, ("certificate", "sha256")),
            f"lock {lock.name!r} has the same certificate sha256 as lock {other.name!r} at {other.source}",
            f"give each lock its own certificate: run 'doorlock pki issue-lock {lock.name}' and paste "
            "the 'certificate:' lines it prints",
        )


def _check_unreached_locks(repository: AccessRepository, report: _Reporter) -> None:
    reached: set[str] = set()
    for group in repository.groups.values():
        if not group.enabled:
            continue
        for rule in group.access:
            reached.update(rule.locks)

    for lock in repository.locks.values():
        if lock.enabled and lock.name not in reached:
            report.warning(
                lock.source,
                f"no access rule of an enabled group lists lock {lock.name!r}, so only break-glass keys open it",
                "add the lock to a group's access rule, or set 'enabled: false'",
            )

