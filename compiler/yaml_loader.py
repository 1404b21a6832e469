"""Safe YAML loading that remembers where every value was written.

Access files come from pull requests, so the loader treats them as untrusted text:

1. the bytes must be UTF-8 (a byte-order mark is allowed) and at most ``MAX_FILE_BYTES`` long;
2. indentation must not contain tabs (YAML forbids them, and editors show them differently);
3. the text is composed into a node graph with PyYAML's safe loader (the libyaml parser when
   it is available): no Python objects can be constructed;
4. the graph is converted to plain values (dict, list, str, int, float, bool, None). Duplicate
   keys, merge keys and tags are rejected. The size after alias expansion and the nesting
   depth are capped, which stops "billion laughs" documents and recursive aliases.

Every value keeps a :class:`Mark` (1-based line and column) under its path, a tuple of mapping
keys and list indexes, the same shape as ``jsonschema``'s ``absolute_path``.

Dates and times of day stay strings (``"2026-12-31"``, ``"18:00"``): YAML 1.1 would otherwise
turn ``18:00`` into the sexagesimal integer 1080 and dates into ``datetime.date`` values that a
JSON Schema cannot check. The model loader parses them with positioned errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import yaml

try:
    from yaml import CSafeLoader as _SafeLoader
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml import SafeLoader as _SafeLoader  # type: ignore[assignment]

# An access file describes one person, group, lock or schedule. These caps are far above any
# real file and far below what would hurt a CI runner.
MAX_FILE_BYTES = 1_000_000
MAX_EXPANDED_NODES = 100_000
MAX_DEPTH = 32

YamlPath = tuple[Any, ...]

_STR_TAG = "tag:yaml.org,2002:str"
_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_NULL_TAG = "tag:yaml.org,2002:null"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"

_LEADING_WHITESPACE = re.compile(r"^[ \t]*")


class Mark(NamedTuple):
    """A 1-based line and column in a YAML file."""

    line: int
    column: int


class YamlError(ValueError):
    """A file that cannot be loaded; ``line`` and ``column`` are 1-based (0 when unknown)."""

    def __init__(self, message: str, line: int = 0, column: int = 0, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.fix = fix


@dataclass
class LoadedYaml:
    """The plain value of a YAML document plus the position of every value and mapping key."""

    data: Any
    marks: dict[YamlPath, Mark] = field(default_factory=dict)
    key_marks: dict[YamlPath, Mark] = field(default_factory=dict)
    # The text as written of every scalar that did not load as a string (04123456 loads as
    # the octal number 1091374), so that messages can quote what the admin typed.
    texts: dict[YamlPath, str] = field(default_factory=dict)

    def mark(self, path: YamlPath, key: bool = False) -> Mark:
        """Return the position of ``path`` (of its key when ``key``), or of its nearest parent."""
        table = self.key_marks if key else self.marks
        path = tuple(path)
        while path:
            if path in table:
                return table[path]
            if key and path in self.marks:
                return self.marks[path]
            path = path[:-1]
        return self.marks.get((), Mark(1, 1))


def load_yaml_bytes(raw: bytes) -> LoadedYaml:
    """Load one YAML document from ``raw`` or raise :class:`YamlError` with its position."""
    text = _decode(raw)
    _reject_tabs_in_indentation(text)
    node = _compose(text)
    if node is None:
        return LoadedYaml(data=None, marks={(): Mark(1, 1)})
    return _Converter().convert_document(node)


def load_yaml_file(path) -> LoadedYaml:
    """Read and load ``path``; a file larger than ``MAX_FILE_BYTES`` is rejected unread."""
    with open(path, "rb") as handle:
        raw = handle.read(MAX_FILE_BYTES + 1)
    if len(raw) > MAX_FILE_BYTES:
        raise YamlError(
            f"file is larger than {MAX_FILE_BYTES} bytes",
            fix="an access file describes one entity and stays small: split it or remove generated content",
        )
    return load_yaml_bytes(raw)


def _decode(raw: bytes) -> str:
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        before = raw[: error.start]
        line = before.count(b"\n") + 1
        column = len(before) - (before.rfind(b"\n") + 1) + 1
        raise YamlError(
            f"file is not valid UTF-8: byte 0x{raw[error.start]:02x} cannot be decoded",
            line,
            column,
            fix="save the file as UTF-8 (most editors offer 'Save with encoding')",
        ) from None


def _reject_tabs_in_indentation(text: str) -> None:
    if "\t" not in text:
        return
    for number, line in enumerate(text.split("\n"), start=1):
        indentation = _LEADING_WHITESPACE.match(line).group(0)
        if "\t" in indentation:
            raise YamlError(
                "tab character in indentation",
                number,
                indentation.index("\t") + 1,
                fix="indent with spaces only (YAML does not allow tabs there)",
            )


def _compose(text: str) -> yaml.Node | None:
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = error.problem or "invalid YAML"
        if error.context:
            problem = f"{error.context}: {problem}" if mark is error.context_mark else f"{problem} ({error.context})"
        raise YamlError(
            f"invalid YAML: {problem}",
            mark.line + 1 if mark else 0,
            mark.column + 1 if mark else 0,
            fix=_syntax_fix(problem),
        ) from None
    except yaml.YAMLError as error:
        raise YamlError(f"invalid YAML: {error}", fix="check the file's syntax") from None
    finally:
        loader.dispose()
    return node


def _syntax_fix(problem: str) -> str:
    if "mapping values are not allowed" in problem:
        return "put the value in quotes when it contains ': ', e.g. description: \"Board: all doors\""
    if "found character" in problem and "cannot start any token" in problem:
        return "put the value in quotes when it starts with a special character such as '@', '`' or '%'"
    if "could not find expected ':'" in problem or "expected <block end>" in problem:
        return "check the indentation: fields of one mapping must start in the same column"
    return "check indentation, colons and quoting near this position"


def _mark_of(node: yaml.Node) -> Mark:
    start = node.start_mark
    return Mark(start.line + 1, start.column + 1)


class _Converter:
    """Turn a composed node graph into plain values, counting nodes as aliases expand."""

    def __init__(self) -> None:
        self.marks: dict[YamlPath, Mark] = {}
        self.key_marks: dict[YamlPath, Mark] = {}
        self.texts: dict[YamlPath, str] = {}
        self.expanded = 0

    def convert_document(self, node: yaml.Node) -> LoadedYaml:
        data = self.convert(node, ())
        return LoadedYaml(data=data, marks=self.marks, key_marks=self.key_marks, texts=self.texts)

    def convert(self, node: yaml.Node, path: YamlPath) -> Any:
        self.expanded += 1
        if len(path) > MAX_DEPTH:
            mark = _mark_of(node)
            raise YamlError(
                f"values are nested more than {MAX_DEPTH} levels deep (or an alias refers to itself)",
                mark.line,
                mark.column,
                fix="access files nest a few levels at most: check the indentation and the aliases",
            )
        if self.expanded > MAX_EXPANDED_NODES:
            mark = _mark_of(node)
            raise YamlError(
                f"document expands to more than {MAX_EXPANDED_NODES} values (anchors and aliases "
                "repeat content)",
                mark.line,
                mark.column,
                fix="write the values out instead of nesting aliases",
            )
        self.marks[path] = _mark_of(node)

        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                raise self._tag_error(node)
            return [self.convert(item, path + (index,)) for index, item in enumerate(node.value)]
        value = self._scalar(node)
        if not isinstance(value, str):
            self.texts[path] = node.value
        return value

    def _mapping(self, node: yaml.MappingNode, path: YamlPath) -> dict[Any, Any]:
        if node.tag != _MAP_TAG:
            raise self._tag_error(node)
        result: dict[Any, Any] = {}
        first_seen: dict[Any, Mark] = {}
        for key_node, value_node in node.value:
            key_mark = _mark_of(key_node)
            if key_node.tag == _MERGE_TAG:
                raise YamlError(
                    "merge keys ('<<') are not supported",
                    key_mark.line,
                    key_mark.column,
                    fix="write the keys out in this mapping",
                )
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlError(
                    "a mapping key must be a plain value, not a list or mapping",
                    key_mark.line,
                    key_mark.column,
                    fix="use a simple name as the key",
                )
            key = self._scalar(key_node)
            if not isinstance(key, str):
                # A key such as 'yes' or '1' loads as a boolean or number. Its written text is
                # used instead, so that schema errors name the key as the admin typed it.
                key = key_node.value
            if key in first_seen:
                first = first_seen[key]
                raise YamlError(
                    f"duplicate key {key!r} in one mapping (first at line {first.line}); "
                    "YAML would silently keep only the last value",
                    key_mark.line,
                    key_mark.column,
                    fix=f"remove one of the two {key!r} entries",
                )
            first_seen[key] = key_mark
            self.key_marks[path + (key,)] = key_mark
            result[key] = self.convert(value_node, path + (key,))
        return result

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        tag = node.tag
        text = node.value
        if tag == _STR_TAG or tag == _TIMESTAMP_TAG:
            return text
        if tag == _NULL_TAG:
            return None
        if tag == _BOOL_TAG:
            return text.lower() in ("yes", "true", "on", "y")
        if tag == _INT_TAG:
            if ":" in text:
                return text  # YAML 1.1 sexagesimal: "18:00" is a time of day, not 1080
            return _construct_int(text)
        if tag == _FLOAT_TAG:
            if ":" in text:
                return text
            return _construct_float(text)
        raise self._tag_error(node)

    @staticmethod
    def _tag_error(node: yaml.Node) -> YamlError:
        mark = _mark_of(node)
        return YamlError(
            f"unsupported YAML tag {node.tag!r}",
            mark.line,
            mark.column,
            fix="remove the '!' tag: access files use plain strings, numbers, lists and mappings",
        )


def _construct_int(text: str) -> int:
    value = text.replace("_", "")
    sign = 1
    if value[:1] in "+-":
        sign = -1 if value[0] == "-" else 1
        value = value[1:]
    if value == "0":
        return 0
    if value.startswith("0b"):
        return sign * int(value[2:], 2)
    if value.startswith("0x"):
        return sign * int(value[2:], 16)
    if value.startswith("0"):
        return sign * int(value, 8)
    return sign * int(value)


def _construct_float(text: str) -> float:
    value = text.replace("_", "").lower()
    if value in (".inf", "+.inf"):
        return float("inf")
    if value == "-.inf":
        return float("-inf")
    if value == ".nan":
        return float("nan")
    return float(value)
