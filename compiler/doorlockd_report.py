"""The migration report of a doorlockd import: counts and findings, and their text form.

Every finding has a kind (what happened to the record) and a stable code that tests and tools
can match on (``overnight-imported``, ``inclusive-end``, ``expired``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

__all__ = ["WARNING", "CHANGED", "SKIPPED", "NOTE", "KINDS", "Finding", "MigrationReport", "format_report"]

# Finding kinds, in the order the report prints them.
WARNING = "warning"  # a deliberate difference the admin should look at
CHANGED = "changed"  # imported, but not exactly as doorlockd behaved
SKIPPED = "skipped"  # not imported
NOTE = "note"  # imported as doorlockd behaved; worth knowing
KINDS = (WARNING, CHANGED, SKIPPED, NOTE)


@dataclass(frozen=True)
class Finding:
    """One line of the migration report.

    ``code`` is stable for tests and tools (``overnight-imported``, ``inclusive-end``, ...);
    ``subject`` names the doorlockd record (``rule 6 of ruleset evenings-and-events``).
    """

    kind: str
    code: str
    subject: str
    message: str
    rule_pk: int | None = None


@dataclass
class MigrationReport:
    """The outcome of an import: counts per entity and every finding."""

    counts: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    def add(self, kind: str, code: str, subject: str, message: str, rule_pk: int | None = None) -> None:
        self.findings.append(Finding(kind, code, subject, message, rule_pk))

    def count(self, name: str, amount: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + amount

    def by_code(self, code: str) -> list[Finding]:
        return [finding for finding in self.findings if finding.code == code]


_HEADINGS = {
    WARNING: "Warnings (deliberate differences from doorlockd; check these)",
    CHANGED: "Changed (imported, not exactly as doorlockd behaved)",
    SKIPPED: "Skipped (not imported)",
    NOTE: "Notes (imported as doorlockd behaved)",
}


def _rule_outcomes(report: MigrationReport) -> tuple[int, int, int]:
    """Return how many doorlockd rules were imported exactly, imported changed, and skipped."""
    skipped = {f.rule_pk for f in report.findings if f.kind == SKIPPED and f.rule_pk is not None}
    changed = {f.rule_pk for f in report.findings if f.kind in (CHANGED, WARNING) and f.rule_pk is not None}
    changed -= skipped
    exact = report.counts.get("rules read", 0) - len(changed) - len(skipped)
    return exact, len(changed), len(skipped)


def format_report(report: MigrationReport, dump_path: Path, out_dir: Path, timezone_name: str,
                  stats_lines: Sequence[str] = ()) -> str:
    """Return the migration report as text: counts, then findings grouped by kind."""
    counts = report.counts
    exact_rules, changed_rules, skipped_rules = _rule_outcomes(report)
    lines = [
        f"Imported {dump_path} into {out_dir} (time zone {timezone_name})",
        "",
        f"  people        {counts.get('people', 0):4d}  ({counts.get('people disabled', 0)} disabled)",
        f"  keys          {counts.get('keys', 0):4d}  ({counts.get('keys disabled', 0)} disabled, "
        f"{counts.get('keys skipped', 0)} skipped)",
        f"  groups        {counts.get('groups', 0):4d}  ({counts.get('groups disabled', 0)} disabled), "
        f"{counts.get('access rules', 0)} access rules from {counts.get('access groups', 0)} access groups",
        f"  schedules     {counts.get('schedules', 0):4d}  from {counts.get('rulesets', 0)} rulesets "
        "(a rule limited by after/before gets a schedule of its own)",
        f"  locks         {counts.get('locks', 0):4d}  ({counts.get('locks disabled', 0)} disabled)",
        f"  rules         {counts.get('rules read', 0):4d}  read: {exact_rules} exact, "
        f"{changed_rules} changed, {skipped_rules} skipped",
    ]
    if counts.get("key metadata kept as comments"):
        lines.append(f"  key metadata  {counts['key metadata kept as comments']:4d}  kept as comments in people/")
    lines.extend(f"  {line}" for line in stats_lines)

    for kind in KINDS:
        findings = [finding for finding in report.findings if finding.kind == kind]
        if not findings:
            continue
        lines.extend(["", f"{_HEADINGS[kind]}:"])
        for finding in findings:
            lines.append(f"  - {finding.subject}: {finding.message}")
    lines.extend(["", f"Next: doorlock validate {out_dir}"])
    return "\n".join(lines)
