"""Write access repository files as YAML: deterministic, block style, every string safe.

Ids and day names are written plain and every other string is double-quoted. Characters that
YAML forbids or would fold are written as escapes, so any text reads back unchanged.
"""

from __future__ import annotations

import re
from datetime import date

__all__ = ["render_yaml"]

_PLAIN = re.compile(r"^[a-z][a-z0-9._-]*$")
_PLAIN_KEYS = {"name", "username", "schedule", "groups", "locks", "days"}
# YAML 1.1 reads these plain words as booleans or null.
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def _scalar(value, key: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        if key in _PLAIN_KEYS and _PLAIN.match(value) and value not in _YAML_WORDS:
            return value
        return _double_quoted(value)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _double_quoted(text: str) -> str:
    out = []
    for char in text:
        code = ord(char)
        if char == '"':
            out.append('\\"')
        elif char == "\\":
            out.append("\\\\")
        elif char == "\n":
            out.append("\\n")
        elif char == "\t":
            out.append("\\t")
        elif not _yaml_printable(code) or code in (0x85, 0x2028, 0x2029):
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _yaml_printable(code: int) -> bool:
    return (code in (0x09, 0x85) or 0x20 <= code <= 0x7E or 0xA0 <= code <= 0xD7FF
            or 0xE000 <= code <= 0xFFFD and code != 0xFEFF or code >= 0x10000)


def _comment(text: str) -> str:
    # A comment ends at the first line break, so every whitespace run (str.split() includes NEL,
    # LS and PS) becomes one space. Characters YAML forbids in any file are written as escapes.
    words = " ".join(text.split())
    return "# " + "".join(char if _yaml_printable(ord(char)) else f"\\u{ord(char):04x}" for char in words)


def _emit(value, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for key, item in value.items():
        if isinstance(item, dict):
            lines.append(f"{pad}{key}:")
            _emit(item, indent + 2, lines)
        elif isinstance(item, list) and item and all(isinstance(entry, dict) for entry in item):
            lines.append(f"{pad}{key}:")
            for entry in item:
                nested: list[str] = []
                _emit(entry, indent + 4, nested)
                nested[0] = f"{pad}  - " + nested[0][indent + 4:]
                lines.extend(nested)
        elif isinstance(item, list):
            lines.append(f"{pad}{key}: [" + ", ".join(_scalar(entry, key) for entry in item) + "]")
        else:
            lines.append(f"{pad}{key}: {_scalar(item, key)}")


def render_yaml(document: dict, kind: str, comments: list[str] = ()) -> bytes:
    """Write one access file: schema hint, comments, then the mapping in block style."""
    lines = [f"# yaml-language-server: $schema=../../schemas/{kind}.schema.json"]
    lines.extend(_comment(text) for text in comments)
    _emit(document, 0, lines)
    return ("\n".join(lines) + "\n").encode("utf-8")

