"""An independent evaluator of doorlockd's documented access semantics, over the dump's JSON.

It reads the raw ``manage.py dumpdata`` records itself (it shares no code with the importer)
and decides "would doorlockd open lock L for hardware id H at instant t?":

- the lock is enabled;
- the key is enabled and its owner (person) is enabled;
- the owner is in an enabled person group that is linked to an access group listing the lock;
- at least one rule of that access group's ruleset matches, where a rule matches when every
  condition it has holds:
  * the local weekday is one of its weekdays (a rule without weekdays never matches);
  * the local time of day is >= ``time_start`` and <= ``time_end`` (both inclusive, either
    may be missing; a start later than the end therefore never matches);
  * the instant is >= ``after`` and <= ``before`` (both inclusive, either may be missing).

Local means the lock's time zone, given to the constructor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, time
from pathlib import Path
from zoneinfo import ZoneInfo

WEEKDAY_FIELDS = (
    "weekdays_monday", "weekdays_tuesday", "weekdays_wednesday", "weekdays_thursday",
    "weekdays_friday", "weekdays_saturday", "weekdays_sunday",
)


@dataclass(frozen=True)
class ReferenceRule:
    pk: int
    weekdays: frozenset[int]
    time_start: time | None
    time_end: time | None
    after: datetime | None
    before: datetime | None

    def matches(self, instant: datetime, zone: ZoneInfo) -> bool:
        local = instant.astimezone(zone)
        if local.weekday() not in self.weekdays:
            return False
        time_of_day = local.time().replace(tzinfo=None)
        if self.time_start is not None and time_of_day < self.time_start:
            return False
        if self.time_end is not None and time_of_day > self.time_end:
            return False
        if self.after is not None and instant < self.after:
            return False
        if self.before is not None and instant > self.before:
            return False
        return True


def _instant(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text.replace("Z", "+00:00"))


def _time(text: str | None) -> time | None:
    return None if text is None else time.fromisoformat(text)


class DoorlockdReference:
    """doorlockd's decision for every (lock, hwid, instant), computed from the dump's records."""

    def __init__(self, records: list[dict], timezone: str) -> None:
        self.zone = ZoneInfo(timezone)
        by_model: dict[str, dict[int, dict]] = {}
        for record in records:
            by_model.setdefault(record["model"], {})[record["pk"]] = record["fields"]
        self.models = by_model

        self.rules: dict[int, ReferenceRule] = {}
        self.rules_of_ruleset: dict[int, list[ReferenceRule]] = {}
        for pk, fields in sorted(by_model.get("doorlockdb.accessrule", {}).items()):
            rule = ReferenceRule(
                pk=pk,
                weekdays=frozenset(day for day, name in enumerate(WEEKDAY_FIELDS) if fields[name]),
                time_start=_time(fields["time_start"]),
                time_end=_time(fields["time_end"]),
                after=_instant(fields["after"]),
                before=_instant(fields["before"]),
            )
            self.rules[pk] = rule
            self.rules_of_ruleset.setdefault(fields["parent"], []).append(rule)

        self._cache: dict[tuple[str, str], list[ReferenceRule]] = {}

    @classmethod
    def from_file(cls, path: str | Path, timezone: str) -> "DoorlockdReference":
        return cls(json.loads(Path(path).read_text(encoding="utf-8")), timezone)

    def lock_names(self) -> list[str]:
        return [fields["name"] for _, fields in sorted(self.models.get("doorlockdb.lock", {}).items())]

    def key_hwids(self) -> list[str]:
        return [fields["hwid"] for _, fields in sorted(self.models.get("doorlockdb.key", {}).items())]

    def unknown_hwids(self) -> list[str]:
        return [fields["hwid"] for _, fields in sorted(self.models.get("doorlockdb.logunknownkey", {}).items())]

    def candidate_rules(self, lock_name: str, hwid: str) -> list[ReferenceRule]:
        """Return the rules that can let ``hwid`` in at ``lock_name`` (before looking at time)."""
        cache_key = (lock_name, hwid)
        if cache_key not in self._cache:
            self._cache[cache_key] = self._find_rules(lock_name, hwid)
        return self._cache[cache_key]

    def _find_rules(self, lock_name: str, hwid: str) -> list[ReferenceRule]:
        locks = self.models.get("doorlockdb.lock", {})
        lock_pk = next((pk for pk, fields in locks.items() if fields["name"] == lock_name), None)
        if lock_pk is None or not locks[lock_pk]["is_enabled"]:
            return []
        key = next((fields for fields in self.models.get("doorlockdb.key", {}).values()
                    if fields["hwid"].lower() == hwid.lower()), None)
        if key is None or not key["is_enabled"]:
            return []
        owner = self.models["doorlockdb.person"][key["owner"]]
        if not owner["is_enabled"]:
            return []

        rules: dict[int, ReferenceRule] = {}
        for group_pk in owner["personsgroup"]:
            person_group = self.models["doorlockdb.persongroup"][group_pk]
            if not person_group["is_enabled"]:
                continue
            for access_group_pk in person_group["access_groups"]:
                access_group = self.models["doorlockdb.accessgroup"][access_group_pk]
                if lock_pk not in access_group["locks"]:
                    continue
                for rule in self.rules_of_ruleset.get(access_group["rules"], []):
                    rules[rule.pk] = rule
        return [rules[pk] for pk in sorted(rules)]

    def matching_rules(self, lock_name: str, hwid: str, instant: datetime) -> list[ReferenceRule]:
        return [rule for rule in self.candidate_rules(lock_name, hwid) if rule.matches(instant, self.zone)]

    def allowed(self, lock_name: str, hwid: str, instant: datetime) -> bool:
        return bool(self.matching_rules(lock_name, hwid, instant))
