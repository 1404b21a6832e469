"""Load and check a doorlockd export (``manage.py dumpdata doorlockdb``).

doorlockd is a Django backend; its export is a JSON list of ``{"model", "pk", "fields"}``
records. This module turns that list into typed records and checks it before anything is
converted, in this order:

1. the file is UTF-8 JSON holding a list of records;
2. every record of a model the importer reads has its fields with the right types;
3. no two records of one model share a primary key;
4. every foreign key and many-to-many entry points to a record that exists;
5. no two keys share a hardware id (after normalisation).

Every problem names the file, the line of the record, the model, the primary key and the
field. :func:`load_dump` collects all problems and raises :class:`DumpInvalid` once, so an
admin sees everything that needs fixing in one run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, time
from pathlib import Path
from typing import Any

from lockclient.hwid import InvalidHardwareId, normalize_hwid

__all__ = [
    "DumpInvalid", "DumpProblem", "DoorlockdDump", "Person", "PersonGroup", "AccessGroup",
    "Ruleset", "Rule", "Lock", "Key", "KeyMetadata", "LastSeen", "UnknownKey", "load_dump",
]

APP = "doorlockdb"
WEEKDAY_FIELDS = (
    "weekdays_monday", "weekdays_tuesday", "weekdays_wednesday", "weekdays_thursday",
    "weekdays_friday", "weekdays_saturday", "weekdays_sunday",
)

# Field kinds: "str", "str?" (nullable), "bool", "int", "fk", "fk?" (nullable foreign key),
# "m2m" (list of primary keys), "datetime?", "time?", "json-text".
_FIELDS: dict[str, dict[str, str]] = {
    "person": {"name": "str", "email": "str?", "info": "str", "is_enabled": "bool", "personsgroup": "m2m"},
    "persongroup": {"name": "str", "is_enabled": "bool", "access_groups": "m2m"},
    "accessgroup": {"name": "str", "rules": "fk", "locks": "m2m"},
    "accessruleset": {"name": "str"},
    "accessrule": {
        "parent": "fk", "after": "datetime?", "before": "datetime?",
        **{name: "bool" for name in WEEKDAY_FIELDS},
        "time_start": "time?", "time_end": "time?",
    },
    "lock": {"name": "str", "description": "str", "is_enabled": "bool", "certificate": "str?"},
    "key": {"hwid": "str", "owner": "fk", "description": "str", "is_enabled": "bool"},
    "keymetadata": {"hwid": "str", "meta_data_json": "json-text"},
    "logkeylastseen": {
        "lock": "fk?", "counter": "int", "last_seen_start": "datetime?", "last_seen_end": "datetime?",
    },
    "logunknownkey": {
        "hwid": "str", "lock": "fk?", "counter": "int", "created_at": "datetime?",
        "updated_at": "datetime?", "last_seen": "datetime?",
    },
}

# The model each foreign key or many-to-many field points to.
_TARGETS: dict[tuple[str, str], str] = {
    ("person", "personsgroup"): "persongroup",
    ("persongroup", "access_groups"): "accessgroup",
    ("accessgroup", "rules"): "accessruleset",
    ("accessgroup", "locks"): "lock",
    ("accessrule", "parent"): "accessruleset",
    ("key", "owner"): "person",
    ("logkeylastseen", "lock"): "lock",
    ("logunknownkey", "lock"): "lock",
}

# Some doorlockd fields were added in later versions; a dump from an older backend lacks them.
_OPTIONAL_FIELDS = {("person", "info"), ("lock", "certificate"), ("lock", "description")}


@dataclass(frozen=True)
class DumpProblem:
    """One thing wrong with the dump, located by record line, model, primary key and field."""

    file: str
    line: int
    message: str
    fix: str = ""
    model: str = ""
    pk: Any = None
    field: str = ""

    def __str__(self) -> str:
        place = f"{self.file}:{self.line}" if self.line else self.file
        subject = ""
        if self.model:
            subject = f"{APP}.{self.model} pk {self.pk!r}"
            if self.field:
                subject += f" field {self.field}"
            subject += ": "
        text = f"{place}: {subject}{self.message}"
        return f"{text}; {self.fix}" if self.fix else text


class DumpInvalid(Exception):
    """The dump cannot be imported; ``problems`` lists every reason."""

    def __init__(self, problems: list[DumpProblem]) -> None:
        self.problems = problems
        lines = [str(problem) for problem in problems]
        super().__init__(f"{len(problems)} problem(s) in the doorlockd dump:\n" + "\n".join(lines))


@dataclass(frozen=True)
class Person:
    pk: int
    name: str
    email: str | None
    info: str
    enabled: bool
    group_pks: tuple[int, ...]


@dataclass(frozen=True)
class PersonGroup:
    pk: int
    name: str
    enabled: bool
    access_group_pks: tuple[int, ...]


@dataclass(frozen=True)
class AccessGroup:
    pk: int
    name: str
    ruleset_pk: int
    lock_pks: tuple[int, ...]


@dataclass(frozen=True)
class Ruleset:
    pk: int
    name: str


@dataclass(frozen=True)
class Rule:
    """One doorlockd access rule; ``weekdays`` uses Python numbering (Monday = 0)."""

    pk: int
    ruleset_pk: int
    weekdays: tuple[int, ...]
    time_start: time | None
    time_end: time | None
    after: datetime | None  # aware, UTC
    before: datetime | None  # aware, UTC


@dataclass(frozen=True)
class Lock:
    pk: int
    name: str
    description: str
    enabled: bool
    certificate: str | None


@dataclass(frozen=True)
class Key:
    """A doorlockd key. ``hwid`` is canonical, or None when ``hwid_problem`` explains why it is unusable."""

    pk: int
    raw_hwid: str
    hwid: str | None
    hwid_problem: str | None
    owner_pk: int
    description: str
    enabled: bool


@dataclass(frozen=True)
class KeyMetadata:
    pk: int
    hwid: str
    data: dict


@dataclass(frozen=True)
class LastSeen:
    """A keys-last-seen row; doorlockd uses the key's primary key as the row's primary key."""

    key_pk: int
    lock_pk: int | None
    counter: int
    start: datetime | None
    end: datetime | None


@dataclass(frozen=True)
class UnknownKey:
    pk: int
    hwid: str
    lock_pk: int | None
    counter: int
    created_at: datetime | None
    last_seen: datetime | None


@dataclass
class DoorlockdDump:
    """A checked doorlockd export, every model keyed by primary key."""

    path: Path
    persons: dict[int, Person] = field(default_factory=dict)
    person_groups: dict[int, PersonGroup] = field(default_factory=dict)
    access_groups: dict[int, AccessGroup] = field(default_factory=dict)
    rulesets: dict[int, Ruleset] = field(default_factory=dict)
    rules: dict[int, Rule] = field(default_factory=dict)
    locks: dict[int, Lock] = field(default_factory=dict)
    keys: dict[int, Key] = field(default_factory=dict)
    key_metadata: dict[str, KeyMetadata] = field(default_factory=dict)  # by lowercase hwid
    last_seen: dict[int, LastSeen] = field(default_factory=dict)
    unknown_keys: dict[int, UnknownKey] = field(default_factory=dict)
    # Models the importer does not read (e.g. synclockkeys), with their record counts.
    ignored_models: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Record:
    line: int
    model: str  # without the app label
    pk: Any
    fields: dict


def load_dump(path: str | Path) -> DoorlockdDump:
    """Read and check the dump at ``path``; raise :class:`DumpInvalid` listing every problem."""
    path = Path(path)
    records = _read_records(path)

    problems: list[DumpProblem] = []
    dump = DoorlockdDump(path=path)
    typed: dict[str, dict[int, tuple[_Record, dict]]] = {model: {} for model in _FIELDS}
    # Records that are there but have problems of their own: a reference to one of them is not
    # reported again as a reference to a missing record.
    unreadable: dict[str, set] = {model: set() for model in _FIELDS}
    for record in records:
        if record.model not in _FIELDS:
            label = f"{APP}.{record.model}" if "." not in record.model else record.model
            dump.ignored_models[label] = dump.ignored_models.get(label, 0) + 1
            continue
        values = _check_fields(path, record, problems)
        if values is None:
            unreadable[record.model].add(record.pk)
            continue
        previous = typed[record.model].get(record.pk)
        if previous is not None:
            problems.append(_problem(
                path, record, f"primary key is used twice (also on line {previous[0].line})",
                "remove one of the two records or export the database again",
            ))
            continue
        typed[record.model][record.pk] = (record, values)

    if not any(typed.values()) and not problems:
        problems.append(DumpProblem(
            str(path), 0, f"no {APP} records found",
            f"export with `manage.py dumpdata {APP} --indent 2 > dump.json`",
        ))
    _check_references(path, typed, unreadable, problems)
    _build(dump, typed)
    _check_hwids(path, typed, dump, problems)

    if problems:
        raise DumpInvalid(problems)
    return dump


def _read_records(path: Path) -> list[_Record]:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DumpInvalid([DumpProblem(str(path), 0, f"cannot read the file: {error.strerror}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DumpInvalid([DumpProblem(
            str(path), 0, f"not UTF-8 text (invalid byte at offset {error.start})",
            "export again with `manage.py dumpdata doorlockdb`, which writes UTF-8 JSON",
        )]) from None

    decoder = json.JSONDecoder()
    position = _skip_whitespace(text, 0)
    try:
        if position >= len(text) or text[position] != "[":
            # Let json report what is there instead of a list.
            value, _ = decoder.raw_decode(text, position)
            raise DumpInvalid([DumpProblem(
                str(path), _line_of(text, position),
                f"the dump must be a JSON list of records, found {type(value).__name__}",
                "export with `manage.py dumpdata doorlockdb`",
            )])
        records = []
        position = _skip_whitespace(text, position + 1)
        if position < len(text) and text[position] == "]":
            return []
        while True:
            start = position
            value, position = decoder.raw_decode(text, position)
            records.append(_to_record(path, _line_of(text, start), value))
            position = _skip_whitespace(text, position)
            if position < len(text) and text[position] == ",":
                position = _skip_whitespace(text, position + 1)
                continue
            if position < len(text) and text[position] == "]":
                break
            raise json.JSONDecodeError("Expecting ',' or ']'", text, position)
        position = _skip_whitespace(text, position + 1)
        if position != len(text):
            raise json.JSONDecodeError("Extra data", text, position)
    except json.JSONDecodeError as error:
        raise DumpInvalid([DumpProblem(
            str(path), error.lineno, f"not valid JSON: {error.msg} (column {error.colno})",
            "give the file written by `manage.py dumpdata doorlockdb`, unchanged",
        )]) from None
    return records


def _skip_whitespace(text: str, position: int) -> int:
    while position < len(text) and text[position] in " \t\r\n":
        position += 1
    return position


def _line_of(text: str, position: int) -> int:
    return text.count("\n", 0, position) + 1


def _to_record(path: Path, line: int, value: Any) -> _Record:
    fix = 'each record is {"model": "doorlockdb.<name>", "pk": <key>, "fields": {...}}'
    if not isinstance(value, dict):
        raise DumpInvalid([DumpProblem(str(path), line, f"record is a {type(value).__name__}, not an object", fix)])
    model = value.get("model")
    if not isinstance(model, str) or not model:
        raise DumpInvalid([DumpProblem(str(path), line, "record has no \"model\"", fix)])
    if "fields" not in value or not isinstance(value["fields"], dict):
        raise DumpInvalid([DumpProblem(str(path), line, f"{model} record has no \"fields\" object", fix)])
    if "pk" not in value:
        raise DumpInvalid([DumpProblem(str(path), line, f"{model} record has no \"pk\"", fix)])
    app, _, name = model.partition(".")
    short = name if app == APP else model
    return _Record(line=line, model=short, pk=value["pk"], fields=value["fields"])


def _problem(path: Path, record: _Record, message: str, fix: str = "", field_name: str = "") -> DumpProblem:
    return DumpProblem(str(path), record.line, message, fix, record.model, record.pk, field_name)


def _check_fields(path: Path, record: _Record, problems: list[DumpProblem]) -> dict | None:
    """Return the record's typed field values, or None after adding its problems."""
    found: list[DumpProblem] = []
    if not isinstance(record.pk, int) or isinstance(record.pk, bool):
        found.append(_problem(path, record, f"primary key must be an integer, got {record.pk!r}"))

    values: dict[str, Any] = {}
    for name, kind in _FIELDS[record.model].items():
        if name not in record.fields:
            if (record.model, name) in _OPTIONAL_FIELDS:
                values[name] = None if kind.endswith("?") else ""
                continue
            found.append(_problem(
                path, record, "field is missing",
                "export again with `manage.py dumpdata doorlockdb` from a complete database", name,
            ))
            continue
        try:
            values[name] = _convert(kind, record.fields[name])
        except ValueError as error:
            found.append(_problem(path, record, str(error), "", name))

    problems.extend(found)
    return None if found else values


def _convert(kind: str, value: Any) -> Any:
    nullable = kind.endswith("?")
    base = kind.rstrip("?")
    if value is None:
        if nullable:
            return None
        raise ValueError("is null but must have a value")

    if base == "str":
        if not isinstance(value, str):
            raise ValueError(f"must be a string, got {value!r}")
        return value
    if base == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value
    if base in ("int", "fk"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"must be an integer, got {value!r}")
        return value
    if base == "m2m":
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ValueError(f"must be a list of primary keys (integers), got {value!r}")
        return tuple(value)
    if base == "datetime":
        return _parse_datetime(value)
    if base == "time":
        return _parse_time(value)
    if base == "json-text":
        if not isinstance(value, str):
            raise ValueError(f"must be JSON text in a string, got {value!r}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"is not valid JSON text: {error.msg}") from None
        return parsed if isinstance(parsed, dict) else {}
    raise AssertionError(f"unknown field kind {kind}")


def _parse_datetime(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError(f"must be an ISO 8601 date and time, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not an ISO 8601 date and time such as 2026-11-20T08:00:00Z") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone; doorlockd writes UTC times ending in Z")
    return parsed


def _parse_time(value: Any) -> time:
    if not isinstance(value, str):
        raise ValueError(f"must be a time of day HH:MM:SS, got {value!r}")
    try:
        parsed = time.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a time of day such as 09:00:00") from None
    if parsed.tzinfo is not None:
        raise ValueError(f"{value!r} carries a time zone; doorlockd times of day are local")
    return parsed


def _check_references(path: Path, typed: dict, unreadable: dict, problems: list[DumpProblem]) -> None:
    for (model, field_name), target in _TARGETS.items():
        for pk, (record, values) in sorted(typed[model].items()):
            value = values[field_name]
            referenced = value if isinstance(value, tuple) else (value,)
            for target_pk in referenced:
                if target_pk is not None and target_pk in unreadable[target]:
                    continue  # the target's own problem is reported already
                if target_pk is not None and target_pk not in typed[target]:
                    problems.append(_problem(
                        path, record, f"points to {APP}.{target} pk {target_pk}, which does not exist",
                        f"export the whole app (`manage.py dumpdata {APP}`) so that every referenced "
                        f"{target} is included", field_name,
                    ))
    # A keys-last-seen row shares its primary key with its key.
    for pk, (record, _) in sorted(typed["logkeylastseen"].items()):
        if pk not in typed["key"] and pk not in unreadable["key"]:
            problems.append(_problem(
                path, record, f"belongs to {APP}.key pk {pk}, which does not exist",
                "remove the row or export the whole app again", "pk",
            ))


def _check_hwids(path: Path, typed: dict, dump: DoorlockdDump, problems: list[DumpProblem]) -> None:
    owners: dict[str, int] = {}
    for pk, key in sorted(dump.keys.items()):
        # An unusable hwid is compared in doorlockd's own form (lowercase).
        comparable = key.hwid or key.raw_hwid.strip().lower()
        if comparable in owners:
            record = typed["key"][pk][0]
            problems.append(_problem(
                path, record, f"hardware id {key.raw_hwid!r} is also used by {APP}.key pk {owners[comparable]}",
                "a card can belong to one key only: remove or correct one of the two keys", "hwid",
            ))
            continue
        owners[comparable] = pk


def _build(dump: DoorlockdDump, typed: dict) -> None:
    def rows(model: str):
        return ((pk, values) for pk, (_, values) in sorted(typed[model].items()))

    for pk, v in rows("person"):
        dump.persons[pk] = Person(pk, v["name"], v["email"], v["info"] or "", v["is_enabled"], v["personsgroup"])
    for pk, v in rows("persongroup"):
        dump.person_groups[pk] = PersonGroup(pk, v["name"], v["is_enabled"], v["access_groups"])
    for pk, v in rows("accessgroup"):
        dump.access_groups[pk] = AccessGroup(pk, v["name"], v["rules"], v["locks"])
    for pk, v in rows("accessruleset"):
        dump.rulesets[pk] = Ruleset(pk, v["name"])
    for pk, v in rows("accessrule"):
        weekdays = tuple(day for day, name in enumerate(WEEKDAY_FIELDS) if v[name])
        dump.rules[pk] = Rule(pk, v["parent"], weekdays, v["time_start"], v["time_end"], v["after"], v["before"])
    for pk, v in rows("lock"):
        dump.locks[pk] = Lock(pk, v["name"], v["description"] or "", v["is_enabled"], v["certificate"])
    for pk, v in rows("key"):
        try:
            hwid, problem = normalize_hwid(v["hwid"]), None
        except InvalidHardwareId as error:
            hwid, problem = None, str(error)
        dump.keys[pk] = Key(pk, v["hwid"], hwid, problem, v["owner"], v["description"], v["is_enabled"])
    for pk, v in rows("keymetadata"):
        dump.key_metadata[v["hwid"].strip().lower()] = KeyMetadata(pk, v["hwid"], v["meta_data_json"])
    for pk, v in rows("logkeylastseen"):
        dump.last_seen[pk] = LastSeen(pk, v["lock"], v["counter"], v["last_seen_start"], v["last_seen_end"])
    for pk, v in rows("logunknownkey"):
        dump.unknown_keys[pk] = UnknownKey(pk, v["hwid"], v["lock"], v["counter"], v["created_at"], v["last_seen"])
