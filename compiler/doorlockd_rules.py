"""Turn doorlockd access rules into weekly windows limited to date ranges.

A doorlockd rule matches when the local weekday is one of its weekdays (no weekdays: never),
the local time of day is within ``time_start``..``time_end`` (both inclusive, either may be
missing) and the instant is within ``after``..``before`` (inclusive). Windows here are
half-open and in whole minutes, so an inclusive end becomes an exclusive end one instant later,
rounded to the nearest minute.

A rule becomes :class:`Piece` objects: its window on its weekdays for the start days that lie
completely inside ``after``..``before``, plus a clipped window for each day the limits cut
through. Every change from doorlockd's behaviour is added to the migration report.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from compiler.doorlockd_dump import DoorlockdDump, Rule
from compiler.doorlockd_report import CHANGED, SKIPPED, WARNING, MigrationReport

__all__ = ["MINUTES_PER_DAY", "Piece", "RuleConverter", "format_minute"]

MINUTES_PER_DAY = 24 * 60


def _round_to_minute(seconds: float) -> int:
    """Round seconds since midnight to the nearest minute (half a minute rounds up)."""
    return int((seconds + 30) // 60)


def _seconds_of(value: time) -> float:
    return value.hour * 3600 + value.minute * 60 + value.second + value.microsecond / 1e6


def format_minute(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _wall_minute(instant: datetime, zone: ZoneInfo) -> tuple[int, float]:
    """Return the local wall-clock minute of ``instant`` (day ordinal * 1440 + minute) and the
    rounding error in seconds."""
    local = instant.astimezone(zone)
    seconds = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
    minute = _round_to_minute(seconds)
    return local.date().toordinal() * MINUTES_PER_DAY + minute, minute * 60 - seconds


def _end_difference(shift: float, shown: str) -> str:
    """Describe moving an exclusive end by ``shift`` seconds (positive: later)."""
    if shift >= 0.5:
        return f"lets in about {shift:.0f} s more than doorlockd"
    if shift <= -0.5:
        return f"ends about {-shift:.0f} s earlier than doorlockd"
    return f"no longer lets in a tap at exactly {shown}"


def _describe_instant(instant: datetime, zone: ZoneInfo) -> str:
    local = instant.astimezone(zone)
    text = local.strftime("%Y-%m-%d %H:%M:%S")
    if local.microsecond:
        text += f".{local.microsecond // 1000:03d}"
    return f"{text} {local.tzname()}"


@dataclass(frozen=True)
class Piece:
    """Windows valid on the start days in ``first``..``last`` (None: open)."""

    first: date | None
    last: date | None
    days: frozenset[int]
    start: int  # minutes after the start day's midnight
    end: int  # exclusive, minutes after the start day's midnight; may exceed 1440


class RuleConverter:
    """Turns doorlockd rules into schedule pieces and records how each one was changed."""

    def __init__(self, dump: DoorlockdDump, zone: ZoneInfo, keep_doorlockd_behaviour: bool,
                 now: datetime, report: MigrationReport) -> None:
        self.dump = dump
        self.zone = zone
        self.keep = keep_doorlockd_behaviour
        self.now = now
        self.report = report

    def subject(self, rule: Rule) -> str:
        ruleset = self.dump.rulesets[rule.ruleset_pk].name
        return f"rule {rule.pk} of ruleset {ruleset!r}"

    def convert(self, rule: Rule) -> list[Piece]:
        subject = self.subject(rule)
        report = self.report

        if not rule.weekdays:
            report.add(SKIPPED, "no-weekdays", subject,
                       "has no weekdays, so doorlockd never matched it; left out", rule.pk)
            return []

        period = self._period(rule, subject)
        if period is None:
            return []
        after, before = period

        window = self._window(rule, subject)
        if window is None:
            return []
        start, end = window

        return self._split(rule, start, end, after, before)

    def _window(self, rule: Rule, subject: str) -> tuple[int, int] | None:
        """Return the rule's daily window as start and exclusive end minutes of its start day."""
        report = self.report
        start = 0 if rule.time_start is None else _round_to_minute(_seconds_of(rule.time_start))
        if rule.time_start is not None and start * 60 != _seconds_of(rule.time_start):
            report.add(CHANGED, "start-rounded", subject,
                       f"time_start {rule.time_start} is not a whole minute; the window starts at "
                       f"{format_minute(start)}", rule.pk)

        overnight = (rule.time_start is not None and rule.time_end is not None
                     and rule.time_start > rule.time_end)
        if rule.time_end is None:
            end = MINUTES_PER_DAY
        elif overnight:
            end = _round_to_minute(_seconds_of(rule.time_end) + 1e-6)
        else:
            # doorlockd lets in a tap at exactly time_end; the exclusive end is one instant later.
            exclusive = _seconds_of(rule.time_end) + 1e-6
            end = _round_to_minute(exclusive)
            report.add(CHANGED, "inclusive-end", subject,
                       f"time_end {rule.time_end} was inclusive in doorlockd; the window ends at "
                       f"{format_minute(end)} (exclusive), which "
                       + _end_difference(end * 60 - exclusive, str(rule.time_end)), rule.pk)

        if overnight:
            written = f"{rule.time_start}-{rule.time_end}"
            if self.keep:
                report.add(WARNING, "overnight-left-out", subject,
                           f"window {written} ends before it starts, so doorlockd never matched it; "
                           "left out (--keep-doorlockd-behaviour)", rule.pk)
                return None
            report.add(WARNING, "overnight-imported", subject,
                       f"window {written} ends before it starts, so doorlockd never matched it; "
                       "imported as written (crossing midnight), which GRANTS access doorlockd "
                       "did not. Run with --keep-doorlockd-behaviour to leave it out", rule.pk)
            end += MINUTES_PER_DAY
            if end - start > MINUTES_PER_DAY:
                end = start + MINUTES_PER_DAY
            if end <= start or end - start == MINUTES_PER_DAY and start != 0:
                report.add(SKIPPED, "window-not-expressible", subject,
                           f"window {written} would be a whole day starting at "
                           f"{format_minute(start)}, which this format cannot write; left out", rule.pk)
                return None
        elif end <= start:
            report.add(SKIPPED, "window-too-short", subject,
                       f"window {rule.time_start}-{rule.time_end} is shorter than a minute; left out", rule.pk)
            return None
        return start, end

    def _period(self, rule: Rule, subject: str) -> tuple[int | None, int | None] | None:
        """Return after/before as wall-clock minutes (before exclusive), or None to drop the rule."""
        report = self.report
        zone = self.zone
        if rule.before is not None and rule.before < self.now:
            report.add(SKIPPED, "expired", subject,
                       f"expired at {_describe_instant(rule.before, zone)} (before the import); left out",
                       rule.pk)
            return None
        if rule.after is not None and rule.before is not None and rule.after > rule.before:
            report.add(SKIPPED, "empty-period", subject,
                       "after is later than before, so doorlockd never matched it; left out", rule.pk)
            return None

        after = before = None
        if rule.after is not None:
            after, error = _wall_minute(rule.after, zone)
            if abs(error) >= 0.001:
                report.add(CHANGED, "after-rounded", subject,
                           f"after {_describe_instant(rule.after, zone)} is rounded to the nearest minute",
                           rule.pk)
        if rule.before is not None:
            # Inclusive in doorlockd: the exclusive end is one instant later.
            before, error = _wall_minute(rule.before + timedelta(microseconds=1), zone)
            report.add(CHANGED, "inclusive-end", subject,
                       f"before {_describe_instant(rule.before, zone)} was inclusive in doorlockd; "
                       "access now ends at the nearest minute (exclusive), which "
                       + _end_difference(error, _describe_instant(rule.before, zone)), rule.pk)
        if after is not None and before is not None and before <= after:
            report.add(SKIPPED, "empty-period", subject,
                       "after..before is shorter than a minute; left out", rule.pk)
            return None
        # NOTE: an instant in the repeated autumn hour becomes a wall-clock time that this format
        # reads as its first occurrence, so such a limit can move by up to an hour.
        return after, before

    def _split(self, rule: Rule, start: int, end: int, after: int | None, before: int | None) -> list[Piece]:
        weekdays = frozenset(rule.weekdays)
        # Start days (as ordinals) whose whole window lies inside after..before.
        first = None if after is None else -((start - after) // MINUTES_PER_DAY)
        last = None if before is None else (before - end) // MINUTES_PER_DAY
        # Narrow the range to days the rule runs on, so that the written dates are its first and last day.
        while first is not None and date.fromordinal(first).weekday() not in weekdays:
            first += 1
        while last is not None and date.fromordinal(last).weekday() not in weekdays:
            last -= 1
        pieces: list[Piece] = []
        if first is None or last is None or first <= last:
            pieces.append(Piece(_from_ordinal(first), _from_ordinal(last), weekdays, start, end))

        # The days whose window the limits cut through get a clipped window of their own.
        candidates: set[int] = set()
        for limit in (after, before):
            if limit is not None:
                day = limit // MINUTES_PER_DAY
                candidates.update((day - 1, day))
        for day in sorted(candidates):
            if date.fromordinal(day).weekday() not in weekdays:
                continue
            if (first is None or day >= first) and (last is None or day <= last):
                continue  # already inside the full-window range
            low = max(day * MINUTES_PER_DAY + start, after if after is not None else -1)
            high = min(day * MINUTES_PER_DAY + end, before if before is not None else day * MINUTES_PER_DAY + end)
            if low >= high:
                continue
            start_day = low // MINUTES_PER_DAY
            clipped_start = low - start_day * MINUTES_PER_DAY
            clipped_end = high - start_day * MINUTES_PER_DAY
            when = date.fromordinal(start_day)
            pieces.append(Piece(when, when, frozenset({when.weekday()}), clipped_start, clipped_end))
        if len(pieces) > 1 and all(piece.first == piece.last for piece in pieces):
            # Days less than a week apart fall on distinct weekdays, so one schedule over the
            # whole span, with each window on its own day's weekday, grants the same times.
            first_day = min(piece.first for piece in pieces)
            last_day = max(piece.last for piece in pieces)
            if (last_day - first_day).days < 7:
                pieces = [Piece(first_day, last_day, frozenset({piece.first.weekday()}), piece.start, piece.end)
                          for piece in pieces]
        if not pieces:
            self.report.add(SKIPPED, "empty-period", self.subject(rule),
                            "none of its weekdays falls inside after..before; left out", rule.pk)
        return pieces


def _from_ordinal(ordinal: int | None) -> date | None:
    return None if ordinal is None else date.fromordinal(ordinal)

