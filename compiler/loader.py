"""Load an access repository (a directory of YAML files) into :class:`AccessRepository`.

The steps, each of which only adds problems and never stops at the first one:

1. find the files: ``people/``, ``groups/``, ``locks/`` and ``schedules/`` hold one entity per
   ``*.yaml`` file (sub-directories allowed);
2. load each file safely (:mod:`compiler.yaml_loader`) and check it against its JSON Schema;
3. turn each file into a model object, normalising hardware ids, fingerprints, dates and
   times of day. A file with schema errors is built from the parts the schema accepts, so
   that its other problems are reported too;
4. run the semantic checks across files (:mod:`compiler.validate`).

``check_repository`` returns every problem; ``load_repository`` returns the model only when
there is no error and raises :class:`AccessInvalid` otherwise. Warnings never block loading.
"""

from __future__ import annotations

import gc
import logging
import os
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Callable

from compiler.model import (
    WEEKDAYS,
    AccessRepository,
    AccessRule,
    BreakGlassKey,
    DateRange,
    Group,
    Key,
    Lock,
    Person,
    Schedule,
    Source,
    Window,
    DEFAULT_LAST_SEEN_PRECISION,
    DEFAULT_UNLOCK_SECONDS,
    DEFAULT_VALID_DAYS,
)
from compiler.problems import ERROR, WARNING, Problem, has_errors, sort_problems
from compiler.schema_check import check_schema, prune_invalid
from compiler.yaml_loader import LoadedYaml, YamlError, load_yaml_file
from lockclient.hwid import InvalidHardwareId, is_random_uid, normalize_hwid

log = logging.getLogger(__name__)

# directory -> (schema kind, id field)
KIND_DIRECTORIES: dict[str, tuple[str, str]] = {
    "people": ("person", "username"),
    "groups": ("group", "name"),
    "locks": ("lock", "name"),
    "schedules": ("schedule", "name"),
}
YAML_SUFFIXES = (".yaml", ".yml")


class AccessInvalid(Exception):
    """The access repository has errors; ``problems`` lists all of them (warnings included)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        errors = [problem for problem in problems if problem.severity == ERROR]
        first = errors[0] if errors else None
        summary = f"{len(errors)} error(s) in the access repository"
        if first is not None:
            summary += f"; first: {first.location()}: {first.message}"
        super().__init__(summary)


@dataclass
class CheckResult:
    """The outcome of :func:`check_repository`: the model when error-free, and every problem."""

    repository: AccessRepository | None
    problems: list[Problem]

    @property
    def errors(self) -> list[Problem]:
        return [problem for problem in self.problems if problem.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [problem for problem in self.problems if problem.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class LoadedFile:
    """One access file after loading: where it is, what kind, its YAML and positions."""

    kind: str
    relative: str
    yaml: LoadedYaml
    # The data the model is built from: the YAML's data, or for a file with schema errors the
    # valid rest of it (``partial``), with the paths of list items left out (``skipped``).
    data: Any = None
    partial: bool = False
    skipped: frozenset[tuple[Any, ...]] = frozenset()

    def items(self, path: tuple[Any, ...], values: list) -> list[tuple[int, Any]]:
        """Return ``(index, item)`` for the items of the list at ``path`` that were not left out."""
        if not self.skipped:
            return list(enumerate(values))
        return [(index, item) for index, item in enumerate(values) if path + (index,) not in self.skipped]

    def value_at(self, path: tuple[Any, ...]) -> Any:
        """Return the value at ``path`` in :attr:`data`, or None when there is none."""
        value = self.data
        for part in path:
            try:
                value = value[part]
            except (KeyError, IndexError, TypeError):
                return None
        return value

    def source(self, path: tuple[Any, ...] = (), key: bool = False) -> Source:
        mark = self.yaml.mark(path, key=key)
        return Source(self.relative, mark.line, mark.column)


@dataclass
class LoadState:
    """Accumulated results of loading: the loaded files, the problems, and ids of broken files."""

    root: Path
    problems: list[Problem] = field(default_factory=list)
    files: dict[str, LoadedFile] = field(default_factory=dict)
    # Ids written in files that failed the schema: references to them are not reported as
    # unknown, because the file's own errors already explain them.
    broken_ids: dict[str, set[str]] = field(default_factory=lambda: {kind: set() for kind, _ in KIND_DIRECTORIES.values()})

    def error(self, file: LoadedFile, path: tuple[Any, ...], message: str, fix: str = "", key: bool = False) -> None:
        source = file.source(path, key=key)
        self.problems.append(Problem(source.file, source.line, source.column, ERROR, message, fix))

    def warning(self, file: LoadedFile, path: tuple[Any, ...], message: str, fix: str = "") -> None:
        source = file.source(path)
        self.problems.append(Problem(source.file, source.line, source.column, WARNING, message, fix))


def check_repository(path: str | Path, *, now: datetime | None = None) -> CheckResult:
    """Load and validate the access repository at ``path`` and return every problem found.

    ``now`` (timezone-aware; default: the current time) is the reference for warnings about
    certificates that expire soon.
    """
    # Loading allocates hundreds of thousands of small objects that all stay alive, so the
    # cyclic garbage collector would scan them again and again for nothing: pausing it cuts
    # about a third of the CPU time on 10,000 people (bench/validate.py).
    collector_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _check_repository(path, now)
    finally:
        if collector_was_enabled:
            gc.enable()


def _check_repository(path: str | Path, now: datetime | None) -> CheckResult:
    from compiler.validate import validate_repository

    root = Path(path)
    state = LoadState(root=root)
    repository = AccessRepository(root=root)

    if not root.is_dir():
        state.problems.append(Problem(str(path), 0, 0, ERROR, "access repository not found: not a directory",
                                      "pass the directory that contains people/, groups/, locks/ and schedules/"))
        return CheckResult(None, sort_problems(state.problems))

    try:
        entities = _load_entities(state)
    except OSError as error:
        # A directory that cannot be listed; files that cannot be read are reported one by one.
        state.problems.append(Problem(str(error.filename or path), 0, 0, ERROR,
                                      f"cannot read the access repository: {error.strerror}",
                                      "check the permissions of the directory"))
        return CheckResult(None, sort_problems(state.problems))
    validate_repository(repository, entities, state, now=now)

    problems = sort_problems(state.problems)
    if has_errors(problems):
        return CheckResult(None, problems)
    return CheckResult(repository, problems)


def load_repository(path: str | Path, *, now: datetime | None = None) -> AccessRepository:
    """Return the validated model of the access repository at ``path``.

    Raises :class:`AccessInvalid` (with every problem) when the repository has an error.
    """
    result = check_repository(path, now=now)
    if result.repository is None:
        raise AccessInvalid(result.problems)
    for problem in result.warnings:
        log.warning("%s: %s", problem.location(), problem.message)
    return result.repository


# -- step 1 and 2: find, load and schema-check files -------------------------------------------


def discover_files(root: Path) -> tuple[list[tuple[str, Path]], list[Problem]]:
    """Return ``(kind, path)`` for every access file under ``root``, plus warnings about stray files."""
    found: list[tuple[str, Path]] = []
    problems: list[Problem] = []
    any_directory = False
    for directory, (kind, _) in KIND_DIRECTORIES.items():
        base = root / directory
        if not base.is_dir():
            continue
        any_directory = True
        found.extend((kind, path) for path in _yaml_files_under(base))

    if not any_directory:
        problems.append(Problem(".", 0, 0, ERROR,
                                "no access files found: none of people/, groups/, locks/, schedules/ exists",
                                "pass the directory of the access repository (e.g. 'doorlock validate access')"))
    for stray in sorted(root.glob("*")):
        if stray.suffix in YAML_SUFFIXES and stray.is_file():
            problems.append(Problem(stray.name, 0, 0, WARNING,
                                    "YAML file at the top of the repository is not read",
                                    "move it into people/, groups/, locks/ or schedules/"))
    return found, problems


def _yaml_files_under(base: Path) -> list[Path]:
    """Return the regular ``*.yaml``/``*.yml`` files under ``base``, sorted, skipping dot names.

    Symbolic links to directories are not followed, so a link cannot pull in files from
    outside the repository or loop.
    """
    paths: list[Path] = []
    pending = [base]
    while pending:
        directory = pending.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append(Path(entry.path))
                elif entry.name.endswith(YAML_SUFFIXES) and entry.is_file():
                    paths.append(Path(entry.path))
    return sorted(paths)


def _load_entities(state: LoadState) -> list[tuple[LoadedFile, Any]]:
    """Load every file and return each one that could be built with its model object."""
    files, problems = discover_files(state.root)
    state.problems.extend(problems)

    entities: list[tuple[LoadedFile, Any]] = []
    for kind, path in files:
        relative = path.relative_to(state.root).as_posix()
        try:
            loaded = load_yaml_file(path)
        except YamlError as error:
            state.problems.append(Problem(relative, error.line, error.column, ERROR, error.message, error.fix))
            # The id cannot be read, so assume it matches the file name. References to it
            # are then not reported as unknown on top of this error.
            state.broken_ids[kind].add(path.stem)
            continue
        except OSError as error:
            state.problems.append(Problem(relative, 0, 0, ERROR, f"cannot read file: {error.strerror}",
                                          "check the file's permissions"))
            continue

        file = LoadedFile(kind, relative, loaded, data=loaded.data)
        state.files[relative] = file
        schema_problems = check_schema(kind, loaded)
        if schema_problems:
            for problem in schema_problems:
                state.problems.append(Problem(relative, problem.mark.line, problem.mark.column, ERROR,
                                              problem.message, problem.fix))
            _remember_broken_id(state, file)
            pruned = prune_invalid(kind, loaded.data)
            if pruned is None:
                continue
            file.data, file.skipped = pruned
            file.partial = True

        entity = BUILDERS[kind](state, file)
        entities.append((file, entity))
    return entities


def _remember_broken_id(state: LoadState, file: LoadedFile) -> None:
    id_field = "username" if file.kind == "person" else "name"
    data = file.yaml.data
    if isinstance(data, dict) and isinstance(data.get(id_field), str):
        state.broken_ids[file.kind].add(data[id_field])


# -- step 3: build model objects from data the schema accepts -----------------------------------


def parse_date(state: LoadState, file: LoadedFile, path: tuple[Any, ...], value: str | None) -> date | None:
    """Parse a schema-checked ``YYYY-MM-DD`` string; report impossible dates such as 2026-02-30."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        state.error(file, path, f"{value!r} is not a calendar date", "check the month and the day, e.g. 2026-02-28")
        return None


def parse_time_of_day(text: str) -> int:
    """Return minutes since midnight for a schema-checked ``H:MM``/``HH:MM`` (``24:00`` = 1440)."""
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)


def normalize_key_hwid(state: LoadState, file: LoadedFile, path: tuple[Any, ...], text: str) -> str | None:
    try:
        return normalize_hwid(text)
    except InvalidHardwareId as error:
        state.error(file, path, str(error), hwid_fix(text))
        return None


def hwid_fix(text: str) -> str:
    """Return the fix line for a hardware id that :func:`normalize_hwid` rejected, matching its reason."""
    try:
        raw = bytes.fromhex("".join(c for c in str(text) if not c.isspace() and c not in ":-"))
    except ValueError:
        raw = b""
    if is_random_uid(raw):
        return "enrol another card or fob whose UID stays the same on every tap; remove this key"
    return "copy the UID again from the reader or the card's label"


def normalize_fingerprint(text: str) -> str:
    """Return a SHA-256 fingerprint as 64 lowercase hex digits without colons."""
    return text.replace(":", "").lower()


def _build_key(state: LoadState, file: LoadedFile, path: tuple[Any, ...], data: dict) -> Key | None:
    hwid = normalize_key_hwid(state, file, path + ("hwid",), data["hwid"])
    valid_from = parse_date(state, file, path + ("valid_from",), data.get("valid_from"))
    valid_until = parse_date(state, file, path + ("valid_until",), data.get("valid_until"))
    if hwid is None:
        return None
    return Key(
        hwid=hwid,
        description=data.get("description", ""),
        enabled=data.get("enabled", True),
        valid_from=valid_from,
        valid_until=valid_until,
        source=file.source(path),
    )


def build_person(state: LoadState, file: LoadedFile) -> Person:
    data = file.data
    keys = []
    for index, key_data in file.items(("keys",), data.get("keys", [])):
        key = _build_key(state, file, ("keys", index), key_data)
        if key is not None:
            keys.append(key)
    return Person(
        username=data["username"],
        name=data["name"],
        email=data.get("email"),
        enabled=data.get("enabled", True),
        valid_from=parse_date(state, file, ("valid_from",), data.get("valid_from")),
        valid_until=parse_date(state, file, ("valid_until",), data.get("valid_until")),
        groups=tuple(name for _, name in file.items(("groups",), data.get("groups", []))),
        keys=tuple(keys),
        source=file.source(("username",)),
    )


def build_group(state: LoadState, file: LoadedFile) -> Group:
    data = file.data
    rules = tuple(
        AccessRule(
            locks=tuple(name for _, name in file.items(("access", index, "locks"), rule["locks"])),
            schedule=rule["schedule"],
            office_mode=rule.get("office_mode", False),
            source=file.source(("access", index)),
        )
        for index, rule in file.items(("access",), data.get("access", []))
    )
    return Group(
        name=data["name"],
        description=data.get("description", ""),
        enabled=data.get("enabled", True),
        access=rules,
        source=file.source(("name",)),
    )


def build_lock(state: LoadState, file: LoadedFile) -> Lock:
    data = file.data
    certificate = data.get("certificate") or {}
    bundle = data.get("bundle") or {}

    break_glass = []
    for index, item in file.items(("break_glass",), data.get("break_glass", [])):
        hwid = normalize_key_hwid(state, file, ("break_glass", index, "hwid"), item["hwid"])
        if hwid is not None:
            break_glass.append(BreakGlassKey(hwid, item.get("description", ""), file.source(("break_glass", index))))

    fingerprint = certificate.get("sha256")
    return Lock(
        name=data["name"],
        timezone=data["timezone"],
        description=data.get("description", ""),
        enabled=data.get("enabled", True),
        certificate_sha256=normalize_fingerprint(fingerprint) if fingerprint is not None else None,
        certificate_file=certificate.get("file"),
        valid_days=bundle.get("valid_days", DEFAULT_VALID_DAYS),
        last_seen_precision=bundle.get("last_seen_precision", DEFAULT_LAST_SEEN_PRECISION),
        unlock_seconds=bundle.get("unlock_seconds", DEFAULT_UNLOCK_SECONDS),
        lockdown=data.get("lockdown", False),
        break_glass=tuple(break_glass),
        source=file.source(("name",)),
    )


def _build_range(state: LoadState, file: LoadedFile, path: tuple[Any, ...], item: Any) -> DateRange | None:
    if isinstance(item, str):
        day = parse_date(state, file, path, item)
        return DateRange(day, day) if day is not None else None

    note = item.get("note", "")
    if "date" in item:
        if "from" in item or "until" in item:
            state.error(file, path, "a closed entry has 'date' and 'from'/'until'",
                        "use 'date' for one day or 'from' and 'until' for a range, not both")
            return None
        day = parse_date(state, file, path + ("date",), item["date"])
        return DateRange(day, day, note) if day is not None else None

    if "from" not in item and "until" not in item:
        state.error(file, path, "a date range needs 'from', 'until' or both",
                    "add 'from: YYYY-MM-DD' and/or 'until: YYYY-MM-DD'")
        return None
    first = parse_date(state, file, path + ("from",), item.get("from"))
    last = parse_date(state, file, path + ("until",), item.get("until"))
    return DateRange(first, last, note)


def build_schedule(state: LoadState, file: LoadedFile) -> Schedule:
    data = file.data
    windows = tuple(
        Window(
            days=frozenset(WEEKDAYS.index(day) for _, day in file.items(("windows", index, "days"), window["days"])),
            start=parse_time_of_day(window["start"]),
            end=parse_time_of_day(window["end"]),
            source=file.source(("windows", index)),
        )
        for index, window in file.items(("windows",), data.get("windows", []))
    )
    date_ranges = tuple(
        item for item in (
            _build_range(state, file, ("date_ranges", index), raw)
            for index, raw in file.items(("date_ranges",), data.get("date_ranges", []))
        ) if item is not None
    )
    closed = tuple(
        item for item in (
            _build_range(state, file, ("closed", index), raw)
            for index, raw in file.items(("closed",), data.get("closed", []))
        ) if item is not None
    )
    return Schedule(
        name=data["name"],
        description=data.get("description", ""),
        always=data.get("always", False),
        windows=windows,
        date_ranges=date_ranges,
        closed=closed,
        source=file.source(("name",)),
    )


BUILDERS: dict[str, Callable[[LoadState, LoadedFile], Any]] = {
    "person": build_person,
    "group": build_group,
    "lock": build_lock,
    "schedule": build_schedule,
}
