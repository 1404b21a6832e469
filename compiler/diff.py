"""Compare the effective access of two revisions of an access repository.

A reviewer of a pull request needs to see what the change does to who can open which door and
when, not which YAML lines moved. This module loads both sides into the resolved model and
compares:

1. per person: locks gained and lost, changed hours, keys added, removed, disabled or
   re-enabled, key and membership validity;
2. per lock: added, removed, enabled or disabled, settings, break-glass keys, lockdown;
3. per schedule: closed days, when the schedule is in use;
4. the signers document (which signing keys locks accept).

Sensitive changes are collected separately so the Markdown output can put them first: a new
break-glass key, an always-open grant on a lock, a raised offline validity (``valid_days``),
a changed signers document, and lockdown switched on or off.

Changes that only touch formatting, comments, descriptions or names produce no entries, so
the output reads "no change in access".
"""

from __future__ import annotations

import base64
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from compiler.access_view import (
    Grant,
    access_hours,
    describe_access,
    describe_closed,
    describe_key,
    describe_validity,
    grants_by_person_and_lock,
    is_always_open,
)
from compiler.model import AccessRepository, Key, Lock, Person

log = logging.getLogger(__name__)

SIGNERS_FILE = "signers.json"


@dataclass(frozen=True)
class Change:
    """One change in access, in plain words."""

    kind: str  # e.g. grant-added, schedule-changed, key-disabled, lockdown-switched
    subject: str  # the username, lock name or schedule name the change belongs to
    text: str
    before: str | None = None
    after: str | None = None


@dataclass
class AccessSide:
    """One side of the comparison: a loaded repository and its signers document bytes."""

    label: str
    repository: AccessRepository
    signers: bytes | None = None


@dataclass
class AccessDiff:
    base: str
    head: str
    sensitive: list[Change] = field(default_factory=list)
    people: dict[str, list[Change]] = field(default_factory=dict)
    locks: dict[str, list[Change]] = field(default_factory=dict)
    schedules: dict[str, list[Change]] = field(default_factory=dict)
    signers: list[Change] = field(default_factory=list)

    @property
    def no_change(self) -> bool:
        return not (self.sensitive or self.people or self.locks or self.schedules or self.signers)

    def add(self, section: dict[str, list[Change]], change: Change) -> None:
        section.setdefault(change.subject, []).append(change)

    def to_json(self) -> dict:
        def entries(section: dict[str, list[Change]]) -> dict:
            return {name: [asdict(c) for c in section[name]] for name in sorted(section)}

        return {
            "base": self.base,
            "head": self.head,
            "no_change_in_access": self.no_change,
            "sensitive": [asdict(c) for c in self.sensitive],
            "people": entries(self.people),
            "locks": entries(self.locks),
            "schedules": entries(self.schedules),
            "signers": [asdict(c) for c in self.signers],
        }


def diff_access(base: AccessSide, head: AccessSide) -> AccessDiff:
    """Compare two loaded sides and return every change in access."""
    result = AccessDiff(base=base.label, head=head.label)
    base_grants = grants_by_person_and_lock(base.repository)
    head_grants = grants_by_person_and_lock(head.repository)

    _diff_people(result, base.repository, head.repository)
    _diff_grants(result, base_grants, head_grants)
    _diff_all_keys(result, base.repository, head.repository)
    _flag_always_open(result, base.repository, head.repository, base_grants, head_grants)
    _diff_locks(result, base.repository, head.repository)
    _diff_schedules(result, base_grants, head_grants, base.repository, head.repository)
    _diff_signers(result, base.signers, head.signers)
    return result


# People and keys -------------------------------------------------------------------------


def _diff_people(result: AccessDiff, base: AccessRepository, head: AccessRepository) -> None:
    for username in sorted(set(base.people) | set(head.people)):
        before = base.people.get(username)
        after = head.people.get(username)
        if before is None:
            # The membership limits every grant listed below it, so a reviewer needs it here.
            details = [] if after.enabled else ["disabled"]
            validity = describe_validity(after.valid_from, after.valid_until)
            if validity:
                details.append(f"membership {validity}")
            state = f" ({', '.join(details)})" if details else ""
            result.add(result.people, Change("person-added", username, f"{username}: new person{state}"))
        elif after is None:
            result.add(result.people, Change("person-removed", username, f"{username}: removed"))
        else:
            _diff_person_settings(result, before, after)


def _diff_all_keys(result: AccessDiff, base: AccessRepository, head: AccessRepository) -> None:
    for username in sorted(set(base.people) | set(head.people)):
        _diff_keys(result, username, base.people.get(username), head.people.get(username))


def _diff_person_settings(result: AccessDiff, before: Person, after: Person) -> None:
    username = after.username
    if before.enabled != after.enabled:
        kind = "person-enabled" if after.enabled else "person-disabled"
        word = "enabled" if after.enabled else "disabled: loses all access"
        result.add(result.people, Change(kind, username, f"{username}: {word}"))

    old = describe_validity(before.valid_from, before.valid_until) or "no limit"
    new = describe_validity(after.valid_from, after.valid_until) or "no limit"
    if old != new:
        result.add(result.people, Change(
            "membership-validity-changed", username, f"{username}: membership {old} → {new}", old, new,
        ))


def _diff_keys(result: AccessDiff, username: str, before: Person | None, after: Person | None) -> None:
    old_keys = {k.hwid: k for k in before.keys} if before else {}
    new_keys = {k.hwid: k for k in after.keys} if after else {}

    for hwid in sorted(set(old_keys) | set(new_keys)):
        old = old_keys.get(hwid)
        new = new_keys.get(hwid)
        if old is None:
            result.add(result.people, Change("key-added", username, f"{username}: key added {describe_key(new)}"))
        elif new is None:
            result.add(result.people, Change("key-removed", username, f"{username}: key removed {describe_key(old)}"))
        else:
            _diff_key(result, username, old, new)


def _diff_key(result: AccessDiff, username: str, old: Key, new: Key) -> None:
    label = f"{new.hwid}" + (f" ({new.description})" if new.description else "")
    if old.enabled and not new.enabled:
        result.add(result.people, Change("key-disabled", username, f"{username}: key disabled {label}"))
    elif new.enabled and not old.enabled:
        result.add(result.people, Change("key-enabled", username, f"{username}: key enabled again {label}"))

    old_validity = describe_validity(old.valid_from, old.valid_until) or "no limit"
    new_validity = describe_validity(new.valid_from, new.valid_until) or "no limit"
    if old_validity != new_validity:
        result.add(result.people, Change(
            "key-validity-changed", username,
            f"{username}: key {label} {old_validity} → {new_validity}", old_validity, new_validity,
        ))


# Grants ---------------------------------------------------------------------------------


def _diff_grants(
    result: AccessDiff,
    base: dict[tuple[str, str], list[Grant]],
    head: dict[tuple[str, str], list[Grant]],
) -> None:
    gained: dict[str, list[str]] = {}
    lost: dict[str, list[str]] = {}
    changed: dict[str, list[str]] = {}

    for username, lock in sorted(set(base) | set(head)):
        old = base.get((username, lock), [])
        new = head.get((username, lock), [])
        if old == new:
            continue
        if not old:
            text = f"{username}: gains {lock}, {describe_access(new)}"
            result.add(result.people, Change("grant-added", username, text, None, access_hours(new)))
            gained.setdefault(lock, []).append(username)
        elif not new:
            text = f"{username}: loses {lock} (was {describe_access(old)})"
            result.add(result.people, Change("grant-removed", username, text, access_hours(old), None))
            lost.setdefault(lock, []).append(username)
        elif access_hours(old) != access_hours(new):
            text = f"{username}: {lock}, {access_hours(old)} → {access_hours(new)}"
            result.add(result.people, Change("schedule-changed", username, text, access_hours(old), access_hours(new)))
            changed.setdefault(lock, []).append(username)
        elif describe_access(old) != describe_access(new):
            # Same hours, other rules: access is unchanged, but the reason for it moved (another
            # group, or a schedule whose change an always-open grant hides).
            text = (f"{username}: {lock}, same hours ({access_hours(new)}), other rules: "
                    f"{describe_access(old)} → {describe_access(new)}")
            result.add(result.people, Change("grant-route-changed", username, text, describe_access(old), describe_access(new)))

    for lock, names in sorted(gained.items()):
        result.add(result.locks, Change("people-gained", lock, f"{lock}: access granted to {_names(names)}"))
    for lock, names in sorted(lost.items()):
        result.add(result.locks, Change("people-lost", lock, f"{lock}: access removed from {_names(names)}"))
    for lock, names in sorted(changed.items()):
        result.add(result.locks, Change("hours-changed", lock, f"{lock}: hours changed for {_names(names)}"))


def _names(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    if len(names) > limit:
        shown += f" and {len(names) - limit} more"
    return f"{len(names)} {'person' if len(names) == 1 else 'people'}: {shown}"


def _flag_always_open(
    result: AccessDiff,
    base_repo: AccessRepository,
    head_repo: AccessRepository,
    base: dict[tuple[str, str], list[Grant]],
    head: dict[tuple[str, str], list[Grant]],
) -> None:
    """Flag every lock on which an always-open grant appears through a new rule or a new member."""
    old_rules = _always_open_rules(base_repo)
    new_rules = _always_open_rules(head_repo) - old_rules
    for group, lock in sorted(new_rules):
        members = sorted(u for (u, l), grants in head.items() if l == lock and any(g.group == group for g in grants))
        who = _names(members) if members else "no members yet"
        result.sensitive.append(Change(
            "always-open-granted", lock, f"{lock}: group {group} can now open it at any time ({who})",
        ))

    gained = []
    for (username, lock), grants in head.items():
        if not any(g.always_open for g in grants):
            continue
        if any((g.group, lock) in new_rules for g in grants):
            continue  # already reported with the new rule
        if any(g.always_open for g in base.get((username, lock), [])):
            continue
        gained.append((lock, username, ", ".join(sorted({g.group for g in grants if g.always_open}))))
    for lock, username, groups in sorted(gained):
        result.sensitive.append(Change(
            "always-open-granted", lock, f"{lock}: {username} can now open it at any time (via {groups})",
        ))


def _always_open_rules(repository: AccessRepository) -> set[tuple[str, str]]:
    """Return (group, lock) pairs of enabled groups whose rule grants an always-open schedule."""
    pairs = set()
    for group in repository.groups.values():
        if not group.enabled:
            continue
        for rule in group.access:
            schedule = repository.schedules.get(rule.schedule)
            if schedule is None or not is_always_open(schedule):
                continue
            for lock in rule.locks:
                if lock in repository.locks and repository.locks[lock].enabled:
                    pairs.add((group.name, lock))
    return pairs


# Locks ----------------------------------------------------------------------------------


def _diff_locks(result: AccessDiff, base: AccessRepository, head: AccessRepository) -> None:
    for name in sorted(set(base.locks) | set(head.locks)):
        before = base.locks.get(name)
        after = head.locks.get(name)
        if before is None:
            _lock_added(result, after)
        elif after is None:
            result.add(result.locks, Change("lock-removed", name, f"{name}: lock removed"))
        else:
            _diff_lock(result, before, after)


def _days(count: int) -> str:
    return f"{count} day" if count == 1 else f"{count} days"


def _lock_added(result: AccessDiff, lock: Lock) -> None:
    state = "" if lock.enabled else ", disabled"
    text = f"{lock.name}: new lock ({lock.timezone}, bundles valid {_days(lock.valid_days)} offline{state})"
    result.add(result.locks, Change("lock-added", lock.name, text))
    if lock.lockdown:
        _lock_change(result, lock.name, "lockdown-switched", f"{lock.name}: new lock starts in lockdown", sensitive=True)
    for key in lock.break_glass:
        text = f"{lock.name}: new break-glass key {_break_glass_label(key)}"
        _lock_change(result, lock.name, "break-glass-added", text, sensitive=True)


def _diff_lock(result: AccessDiff, before: Lock, after: Lock) -> None:
    name = after.name
    if before.enabled != after.enabled:
        word = "enabled" if after.enabled else "disabled: no bundle, nobody opens it"
        _lock_change(result, name, "lock-enabled" if after.enabled else "lock-disabled", f"{name}: {word}")

    if before.lockdown != after.lockdown:
        word = "switched ON: only break-glass keys open" if after.lockdown else "switched off"
        _lock_change(result, name, "lockdown-switched", f"{name}: lockdown {word}", sensitive=True,
                     before=str(before.lockdown).lower(), after=str(after.lockdown).lower())

    if before.valid_days != after.valid_days:
        raised = after.valid_days > before.valid_days
        text = f"{name}: offline validity {'raised' if raised else 'lowered'} {before.valid_days} → {_days(after.valid_days)}"
        _lock_change(result, name, "valid-days-changed", text, sensitive=raised,
                     before=str(before.valid_days), after=str(after.valid_days))

    settings = [
        ("timezone", "time zone", before.timezone, after.timezone),
        ("unlock-seconds", "unlock time (seconds)", before.unlock_seconds, after.unlock_seconds),
        ("last-seen-precision", "last-seen precision (seconds)", before.last_seen_precision, after.last_seen_precision),
        ("certificate", "certificate SHA-256", before.certificate_sha256, after.certificate_sha256),
    ]
    for kind, label, old, new in settings:
        if old != new:
            _lock_change(result, name, f"{kind}-changed", f"{name}: {label} {old} → {new}", before=str(old), after=str(new))

    old_keys = {k.hwid: k for k in before.break_glass}
    new_keys = {k.hwid: k for k in after.break_glass}
    for hwid in sorted(set(new_keys) - set(old_keys)):
        text = f"{name}: new break-glass key {_break_glass_label(new_keys[hwid])}"
        _lock_change(result, name, "break-glass-added", text, sensitive=True)
    for hwid in sorted(set(old_keys) - set(new_keys)):
        text = f"{name}: break-glass key removed {_break_glass_label(old_keys[hwid])}"
        _lock_change(result, name, "break-glass-removed", text)


def _break_glass_label(key) -> str:
    return key.hwid + (f" ({key.description})" if key.description else "")


def _lock_change(
    result: AccessDiff, lock: str, kind: str, text: str, sensitive: bool = False,
    before: str | None = None, after: str | None = None,
) -> None:
    change = Change(kind, lock, text, before, after)
    result.add(result.locks, change)
    if sensitive:
        result.sensitive.append(change)


# Schedules ------------------------------------------------------------------------------


def _diff_schedules(
    result: AccessDiff,
    base_grants: dict[tuple[str, str], list[Grant]],
    head_grants: dict[tuple[str, str], list[Grant]],
    base: AccessRepository,
    head: AccessRepository,
) -> None:
    """Report changed closed days once per schedule instead of once per person."""
    in_use = {g.schedule for grants in head_grants.values() for g in grants}
    in_use |= {g.schedule for grants in base_grants.values() for g in grants}

    for name in sorted(in_use):
        before = base.schedules.get(name)
        after = head.schedules.get(name)
        if before is None or after is None:
            continue
        old_days = set(describe_closed(before).split(", ")) - {""}
        new_days = set(describe_closed(after).split(", ")) - {""}
        if old_days == new_days:
            continue
        users = _schedule_users(head_grants, name) or _schedule_users(base_grants, name)
        for closed in sorted(new_days - old_days):
            result.add(result.schedules, Change(
                "closed-days-added", name, f"{name}: closed {closed} (affects {users})", None, closed,
            ))
        for closed in sorted(old_days - new_days):
            result.add(result.schedules, Change(
                "closed-days-removed", name, f"{name}: no longer closed {closed} (affects {users})", closed, None,
            ))


def _schedule_users(grants: dict[tuple[str, str], list[Grant]], schedule: str) -> str:
    people = {u for (u, _), gs in grants.items() if any(g.schedule == schedule for g in gs)}
    locks = sorted({l for (_, l), gs in grants.items() if any(g.schedule == schedule for g in gs)})
    if not people:
        return ""
    return f"{len(people)} {'person' if len(people) == 1 else 'people'} at {', '.join(locks)}"


# Signers --------------------------------------------------------------------------------


def _diff_signers(result: AccessDiff, before: bytes | None, after: bytes | None) -> None:
    if before == after:
        return
    old_ids = _signer_ids(before)
    new_ids = _signer_ids(after)
    details = []
    if after is None:
        details.append("signers.json removed")
    elif before is None:
        details.append("signers.json added")
    if old_ids is not None and new_ids is not None:
        details += [f"signing key added {keyid[:16]}…" for keyid in sorted(new_ids - old_ids)]
        details += [f"signing key removed {keyid[:16]}…" for keyid in sorted(old_ids - new_ids)]
    if not details:
        details.append("signers.json re-signed (same signing keys)")
    for detail in details:
        change = Change("signers-changed", SIGNERS_FILE, f"signing keys: {detail}")
        result.signers.append(change)
        result.sensitive.append(change)


def _signer_ids(data: bytes | None) -> set[str] | None:
    """Return the key ids a signers document lists, without verifying it, or None if unreadable.

    A missing document (``data`` is None) lists no ids. The diff only describes the change for
    a reviewer, and the lock verifies the document itself.
    """
    if data is None:
        return set()
    try:
        envelope = json.loads(data)
        payload = json.loads(base64.b64decode(envelope["payload"]))
        return {str(entry["keyid"]) for entry in payload["signers"]}
    except (ValueError, KeyError, TypeError):
        log.warning("signers.json could not be read; reporting it as changed without details")
        return None


def read_signers(root: Path) -> bytes | None:
    path = root / SIGNERS_FILE
    return path.read_bytes() if path.is_file() else None


# Markdown -------------------------------------------------------------------------------

# GitHub rejects comments over 65,536 characters, so stay well below it and state what was cut.
MARKDOWN_LIMIT = 60_000
_MARKDOWN_SPECIAL = str.maketrans({c: "\\" + c for c in "\\`*[]<>|#"})
# An underscore starts or ends emphasis only next to a non-alphanumeric character: john_doe
# stays as it is, _draft_ is escaped.
_EDGE_UNDERSCORE = re.compile(r"(?<![^\W_])_|_(?![^\W_])")


def _escape(text: str) -> str:
    """Escape what Markdown would read as markup. :func:`_tildes` handles tildes per line."""
    return _EDGE_UNDERSCORE.sub(r"\\_", text.translate(_MARKDOWN_SPECIAL))


def _tildes(line: str) -> str:
    """Escape tildes only in a line with two or more, the least that can strike text through.

    ``HEAD~1`` in a heading stays readable in a terminal, but ``HEAD~2 → HEAD~1`` is escaped.
    """
    return line.replace("~", "\\~") if line.count("~") >= 2 else line


def format_markdown(diff: AccessDiff, limit: int = MARKDOWN_LIMIT) -> str:
    """Render the diff as Markdown for a pull-request comment, sensitive changes first."""
    lines = [f"## Access changes: {_escape(diff.base)} → {_escape(diff.head)}", ""]
    if diff.no_change:
        lines.append("**No change in access.** Only formatting, comments, descriptions or names changed.")
        return "\n".join(lines) + "\n"

    if diff.sensitive:
        lines += ["> [!WARNING]", "> **Sensitive changes: review with care**", ">"]
        lines += [f"> - {_escape(change.text)}" for change in diff.sensitive]
        lines.append("")

    sections = [("People", diff.people), ("Locks", diff.locks), ("Schedules", diff.schedules)]
    for title, section in sections:
        if not section:
            continue
        lines += [f"### {title}", ""]
        for subject in sorted(section):
            lines.append(f"**{_escape(subject)}**")
            lines += [f"- {_escape(_strip_subject(change))}" for change in section[subject]]
            lines.append("")
    if diff.signers:
        lines += ["### Signing keys", ""]
        lines += [f"- {_escape(change.text)}" for change in diff.signers]
        lines.append("")

    text = "\n".join(_tildes(line) for line in lines)
    if len(text) > limit:
        cut = text.rfind("\n", 0, limit)
        text = text[:cut] + "\n\n*…the diff is too long for one comment; run `doorlock diff` locally for the rest.*"
    return text.rstrip("\n") + "\n"


def _strip_subject(change: Change) -> str:
    """Drop the ``subject: `` prefix that the section heading already shows."""
    prefix = f"{change.subject}: "
    return change.text[len(prefix):] if change.text.startswith(prefix) else change.text
