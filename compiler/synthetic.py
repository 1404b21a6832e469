"""Write large synthetic access repositories for tests and benchmarks.

:func:`generate_organisation` writes people, groups, locks and schedules as YAML in the same
layout as a real access repository. The output depends only on the arguments: the same seed
gives byte-identical files, so benchmark figures can be compared across runs and machines.

The organisation is valid (``doorlock validate`` reports no errors) and exercises what the
compiler has to handle: locks in several time zones (with and without daylight saving), an
overnight window, date ranges, closed days, an ``always`` schedule, office mode, break-glass
keys, disabled and expired people, disabled keys and keys with their own validity.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TIME_ZONES = ("Europe/Amsterdam", "America/New_York", "Asia/Tokyo", "Australia/Sydney", "UTC")

_FIRST_NAMES = ("Anna", "Bram", "Chen", "Daan", "Eva", "Fatima", "Gert", "Hanna", "Ivo", "Julia", "Kees",
                "Lotte", "Mohammed", "Noor", "Olaf", "Priya", "Quinn", "Rosa", "Sam", "Tyrone", "Uma",
                "Victor", "Wim", "Xena", "Yara", "Zoe")
_LAST_NAMES = ("Jansen", "de Vries", "Bakker", "Visser", "Smit", "Meijer", "Mulder", "Bos", "Peters",
               "Hendriks", "Dekker", "Brouwer", "Patel", "Nguyen", "Martinez", "Jackson", "Raman", "Kok")

# name -> YAML body after the name line; the same set in every organisation.
_SCHEDULES = {
    "always": "description: Open at all times\nalways: true\n",
    "office-hours": (
        "description: Weekdays during office hours\n"
        "windows:\n"
        "  - days: [mon, tue, wed, thu, fri]\n"
        "    start: \"08:00\"\n"
        "    end: \"18:00\"\n"
        "closed:\n"
        "  - date: 2026-12-25\n"
        "    note: Christmas Day\n"
        "  - date: 2026-12-26\n"
        "    note: Boxing Day\n"
        "  - from: 2026-12-31\n"
        "    until: 2027-01-01\n"
        "    note: turn of the year\n"
    ),
    "evenings": (
        "description: Evenings, with a Friday night that ends on Saturday\n"
        "windows:\n"
        "  - days: [mon, tue, wed, thu]\n"
        "    start: \"18:00\"\n"
        "    end: \"23:00\"\n"
        "  - days: [fri]\n"
        "    start: \"18:00\"\n"
        "    end: \"02:00\"\n"
    ),
    "weekend": (
        "description: Saturdays and Sundays during the season\n"
        "windows:\n"
        "  - days: [sat, sun]\n"
        "    start: \"10:00\"\n"
        "    end: \"24:00\"\n"
        "date_ranges:\n"
        "  - from: 2026-09-01\n"
        "    until: 2027-06-30\n"
    ),
}


@dataclass(frozen=True)
class Organisation:
    """What :func:`generate_organisation` wrote."""

    directory: Path
    people: int
    keys: int
    groups: int
    locks: int
    schedules: int


def _hwid_factory(rng: random.Random):
    seen: set[int] = set()

    def next_hwid() -> str:
        while True:
            value = rng.getrandbits(48)
            if value not in seen:
                seen.add(value)
                break
        raw = b"\x04" + value.to_bytes(6, "big")
        return ":".join(f"{byte:02x}" for byte in raw)

    return next_hwid


def _fingerprint(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def generate_organisation(
    directory: str | Path,
    people: int = 100,
    keys_per_person: int = 2,
    groups: int = 10,
    locks: int = 5,
    seed: int = 0,
    time_zones: tuple[str, ...] = DEFAULT_TIME_ZONES,
) -> Organisation:
    """Write a valid synthetic access repository into ``directory`` and return its counts.

    ``directory`` is created when missing; existing files with the same names are replaced.
    Every lock is reached by at least one group, and every person is in one to three groups.
    """
    if people < 1 or groups < 1 or locks < 1 or keys_per_person < 0:
        raise ValueError("people, groups and locks must be at least 1, keys_per_person at least 0")

    rng = random.Random(seed)
    root = Path(directory)
    for sub in ("people", "groups", "locks", "schedules"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    next_hwid = _hwid_factory(rng)

    for name, body in _SCHEDULES.items():
        (root / "schedules" / f"{name}.yaml").write_text(f"name: {name}\n{body}", encoding="utf-8")

    lock_names = [f"door-{index:04d}" for index in range(locks)]
    break_glass = next_hwid()
    for index, name in enumerate(lock_names):
        zone = time_zones[index % len(time_zones)]
        text = (
            f"name: {name}\n"
            f"description: Synthetic door {index}\n"
            f"timezone: {zone}\n"
            f"certificate:\n  sha256: \"{_fingerprint(rng)}\"\n"
            f"bundle:\n  valid_days: {rng.choice((3, 7, 14))}\n  last_seen_precision: 3600\n"
        )
        if index % 10 == 0:
            text += f"break_glass:\n  - hwid: \"{break_glass}\"\n    description: key safe\n"
        (root / "locks" / f"{name}.yaml").write_text(text, encoding="utf-8")

    group_names = [f"group-{index:03d}" for index in range(groups)]
    schedule_names = list(_SCHEDULES)
    for index, name in enumerate(group_names):
        # Lock i belongs to group i mod groups, so that no lock is left unreached.
        own = lock_names[index::groups]
        extra = rng.sample(lock_names, k=min(len(lock_names), rng.randint(1, 4)))
        rules = [(sorted(set(own)), schedule_names[index % len(schedule_names)], False)] if own else []
        rules.append((sorted(set(extra)), rng.choice(schedule_names), index % 7 == 3))
        text = f"name: {name}\ndescription: Synthetic group {index}\naccess:\n"
        for rule_locks, schedule, office in rules:
            text += f"  - locks: [{', '.join(rule_locks)}]\n    schedule: {schedule}\n"
            if office:
                text += "    office_mode: true\n"
        (root / "groups" / f"{name}.yaml").write_text(text, encoding="utf-8")

    key_count = 0
    for index in range(people):
        username = f"user{index:06d}"
        first = rng.choice(_FIRST_NAMES)
        last = rng.choice(_LAST_NAMES)
        member_groups = rng.sample(group_names, k=min(len(group_names), rng.randint(1, 3)))
        lines = [
            f"username: {username}",
            f"name: {first} {last}",
            f"email: {username}@example.org",
        ]
        if index % 50 == 7:
            lines.append("enabled: false")
        if index % 20 == 3:
            lines.append("valid_from: 2025-01-01")
            lines.append("valid_until: 2026-06-30")
        elif index % 20 == 4:
            lines.append("valid_from: 2026-12-10")
        lines.append(f"groups: [{', '.join(member_groups)}]")
        if keys_per_person:
            lines.append("keys:")
        for key_index in range(keys_per_person):
            lines.append(f"  - hwid: \"{next_hwid()}\"")
            lines.append(f"    description: synthetic key {key_index}")
            if (index + key_index) % 25 == 5:
                lines.append("    enabled: false")
            if (index + key_index) % 30 == 11:
                lines.append("    valid_until: 2027-03-31")
            key_count += 1
        (root / "people" / f"{username}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    return Organisation(root, people, key_count, groups, locks, len(_SCHEDULES))
