"""Problems found in an access repository and the formats that report them.

A :class:`Problem` names the file (relative to the repository root), the 1-based line and
column (0 when the problem concerns a whole file), the severity, what is wrong and how to fix
it. Reports list every problem sorted by file, line and column, so that an admin can work
through them from top to bottom.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Iterable

from compiler.model import Source

ERROR = "error"
WARNING = "warning"
SEVERITIES = (ERROR, WARNING)
FORMATS = ("text", "json", "github")


@dataclass(frozen=True)
class Problem:
    """One error or warning at a place in the access repository."""

    file: str
    line: int
    column: int
    severity: str
    message: str
    fix: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    @property
    def is_error(self) -> bool:
        return self.severity == ERROR

    @property
    def sort_key(self) -> tuple[str, int, int, int, str]:
        return (self.file, self.line, self.column, SEVERITIES.index(self.severity), self.message)

    def location(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.column or 1}"
        return self.file


def error_at(source: Source, message: str, fix: str = "") -> Problem:
    return Problem(source.file, source.line, source.column, ERROR, message, fix)


def warning_at(source: Source, message: str, fix: str = "") -> Problem:
    return Problem(source.file, source.line, source.column, WARNING, message, fix)


def sort_problems(problems: Iterable[Problem]) -> list[Problem]:
    """Return ``problems`` sorted by file, line and column, without exact duplicates."""
    return sorted(set(problems), key=lambda problem: problem.sort_key)


def has_errors(problems: Iterable[Problem]) -> bool:
    return any(problem.is_error for problem in problems)


def _displayed_file(problem: Problem, prefix: str) -> str:
    if not prefix or prefix == ".":
        return problem.file
    return os.path.normpath(os.path.join(prefix, problem.file)).replace(os.sep, "/")


def format_text(problems: list[Problem], prefix: str = "") -> str:
    """Render ``file:line:column: severity: message`` lines, each followed by its fix."""
    lines = []
    for problem in problems:
        shown = Problem(_displayed_file(problem, prefix), problem.line, problem.column,
                        problem.severity, problem.message, problem.fix)
        lines.append(f"{shown.location()}: {problem.severity}: {problem.message}")
        if problem.fix:
            lines.append(f"    fix: {problem.fix}")
    errors = sum(problem.is_error for problem in problems)
    warnings = len(problems) - errors
    lines.append(f"{errors} error{'s' if errors != 1 else ''}, {warnings} warning{'s' if warnings != 1 else ''}")
    return "\n".join(lines) + "\n"


def format_json(problems: list[Problem], prefix: str = "") -> str:
    """Render one JSON object: ``problems`` (list), ``errors`` and ``warnings`` (counts)."""
    items = []
    for problem in problems:
        item = asdict(problem)
        item["file"] = _displayed_file(problem, prefix)
        items.append(item)
    errors = sum(problem.is_error for problem in problems)
    document = {"problems": items, "errors": errors, "warnings": len(problems) - errors}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _escape_github_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_github_property(text: str) -> str:
    return _escape_github_data(text).replace(":", "%3A").replace(",", "%2C")


def format_github(problems: list[Problem], prefix: str = "") -> str:
    """Render GitHub Actions workflow commands (``::error file=…,line=…,col=…::message``)."""
    lines = []
    for problem in problems:
        properties = [f"file={_escape_github_property(_displayed_file(problem, prefix))}"]
        if problem.line:
            properties.append(f"line={problem.line}")
            properties.append(f"col={problem.column or 1}")
        message = problem.message if not problem.fix else f"{problem.message}\nfix: {problem.fix}"
        lines.append(f"::{problem.severity} {','.join(properties)}::{_escape_github_data(message)}")
    return "".join(line + "\n" for line in lines)


def format_problems(problems: list[Problem], output_format: str, prefix: str = "") -> str:
    if output_format == "json":
        return format_json(problems, prefix)
    if output_format == "github":
        return format_github(problems, prefix)
    if output_format == "text":
        return format_text(problems, prefix)
    raise ValueError(f"unknown output format {output_format!r}; expected one of {FORMATS}")
