"""Check loaded YAML against the JSON Schemas in ``schemas/`` and word the errors for admins.

One :class:`jsonschema.Draft202012Validator` per kind is built once per process and reused for
every file: building a validator resolves references and compiles patterns, which would
dominate the run time of a repository with thousands of people.

The schemas carry an ``x-fix`` keyword next to constraints whose generic message would not tell
a volunteer what to write. jsonschema ignores unknown keywords, so it costs nothing there.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
from pathlib import Path
from typing import Any, Iterator

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from compiler.yaml_loader import LoadedYaml, Mark


def _schema_directory() -> Path:
    """Return where the schemas are: inside the package when installed from a wheel
    (pyproject.toml maps ``schemas/`` to ``compiler/schemas``), next to it in a checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "schemas"
    return installed if installed.is_dir() else package.parent / "schemas"


SCHEMA_DIRECTORY = _schema_directory()
KINDS = ("person", "group", "lock", "schedule")

_TYPE_NAMES = {
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping of fields",
    "null": "empty",
}


def _describe_type(value: Any, written: str | None = None) -> str:
    if written is not None and not isinstance(value, (str, list, dict)) and written != str(value):
        shown = written if written else "nothing"
        return f"{_describe_type(value)} (YAML reads {shown} that way)"
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the number {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def schema_path(kind: str) -> Path:
    return SCHEMA_DIRECTORY / f"{kind}.schema.json"


@functools.lru_cache(maxsize=None)
def validator_for(kind: str) -> Draft202012Validator:
    """Return the compiled validator for ``kind`` (person, group, lock or schedule)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    with open(schema_path(kind), encoding="utf-8") as handle:
        schema = json.load(handle)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(_inline_local_refs(schema), format_checker=Draft202012Validator.FORMAT_CHECKER)


def _inline_local_refs(schema: Any) -> Any:
    """Replace ``{"$ref": "#/$defs/x", ...}`` by a copy of the definition merged with its siblings.

    The result validates the same instances. It saves jsonschema a reference lookup per value:
    about 15% of the validation time of a person file, measured with jsonschema 4.26. The
    schemas have no recursive definitions, so the expansion is finite.
    """
    definitions = schema.get("$defs", {})

    def expand(node: Any) -> Any:
        if isinstance(node, list):
            return [expand(item) for item in node]
        if not isinstance(node, dict):
            return node
        result = {key: expand(value) for key, value in node.items() if key != "$defs"}
        reference = result.pop("$ref", None)
        if reference is not None:
            prefix = "#/$defs/"
            if not reference.startswith(prefix):
                raise ValueError(f"only local references are supported, found {reference!r}")
            target = expand(definitions[reference[len(prefix):]])
            result = {**target, **result}
        return result

    return expand(schema)


def format_path(path: tuple[Any, ...]) -> str:
    """Render a path like ``keys[1].hwid`` for messages; the empty path is the whole file."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "the file"


class SchemaProblem:
    """A schema violation at a position, with what is wrong (``message``) and what to do (``fix``)."""

    __slots__ = ("mark", "message", "fix")

    def __init__(self, mark: Mark, message: str, fix: str = "") -> None:
        self.mark = mark
        self.message = message
        self.fix = fix


def check_schema(kind: str, loaded: LoadedYaml) -> list[SchemaProblem]:
    """Return every schema violation of ``loaded`` as a positioned, reworded problem."""
    validator = validator_for(kind)
    problems: list[SchemaProblem] = []
    for error in validator.iter_errors(loaded.data):
        problems.extend(_reword(kind, error, loaded))
    return problems


def prune_invalid(kind: str, data: Any, max_rounds: int = 8) -> tuple[Any, frozenset[tuple[Any, ...]]] | None:
    """Return a copy of ``data`` without the parts the schema rejects, or None when none is left.

    The result lets the semantic checks run on the valid rest of a file that has schema
    errors, so one typo does not hide the file's other problems. Invalid mapping values are
    removed. Invalid list items are replaced by a placeholder and their paths returned as
    skipped, so that the positions of the other items stay the same. A removal that breaks a
    ``required`` rule removes the enclosing value in the next round. None means the top
    level itself is invalid: not a mapping, a required field missing, or the id invalid.
    """
    validator = validator_for(kind)
    pruned = copy.deepcopy(data)
    skipped: set[tuple[Any, ...]] = set()

    for _ in range(max_rounds):
        errors = [error for error in validator.iter_errors(pruned) if not _is_skipped(tuple(error.absolute_path), skipped)]
        if not errors:
            return pruned, frozenset(skipped)
        for error in errors:
            path = tuple(error.absolute_path)
            if error.validator == "additionalProperties" and isinstance(error.instance, dict):
                allowed = error.schema.get("properties", {})
                for extra in [name for name in error.instance if name not in allowed]:
                    del error.instance[extra]
                continue
            if not path:
                return None
            if len(path) == 1 and path[0] in ("name", "username"):
                return None
            parent = _value_at(pruned, path[:-1])
            if isinstance(parent, dict):
                parent.pop(path[-1], None)
            elif isinstance(parent, list) and isinstance(path[-1], int) and path[-1] < len(parent):
                parent[path[-1]] = {}
                skipped.add(path)
    return None


def _is_skipped(path: tuple[Any, ...], skipped: set[tuple[Any, ...]]) -> bool:
    return any(path[: len(prefix)] == prefix for prefix in skipped)


def _value_at(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _leaf_errors(error: ValidationError) -> Iterator[ValidationError]:
    # Errors from combinators carry the real causes in .context; the schemas use none today,
    # but a future anyOf should still produce precise messages.
    if error.context:
        for child in error.context:
            yield from _leaf_errors(child)
    else:
        yield error


def _reword(kind: str, error: ValidationError, loaded: LoadedYaml) -> Iterator[SchemaProblem]:
    path = tuple(error.absolute_path)
    where = format_path(path)
    keyword = error.validator
    schema = error.schema if isinstance(error.schema, dict) else {}
    fix = schema.get("x-fix", "")
    value = error.instance

    if keyword == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        for extra in sorted(set(value) - set(allowed), key=str):
            close = difflib.get_close_matches(str(extra), allowed, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            yield SchemaProblem(
                loaded.mark(path + (extra,), key=True),
                f"unknown field {extra!r} in {where if path else 'this ' + kind}",
                f"{hint}allowed fields: {', '.join(allowed)}",
            )
        return

    if keyword == "required":
        missing = [name for name in schema.get("required", []) if name not in value]
        for name in missing:
            yield SchemaProblem(
                loaded.mark(path),
                f"missing required field {name!r} in {where if path else 'this ' + kind}",
                f"add '{name}:' with a value",
            )
        return

    if keyword == "type":
        expected = schema.get("type")
        names = expected if isinstance(expected, list) else [expected]
        wanted = " or ".join(_TYPE_NAMES.get(name, name) for name in names)
        if not path:
            message = f"the file must be a mapping of fields for a {kind}, but it is {_describe_type(value)}"
            id_field = "username" if kind == "person" else "name"
            yield SchemaProblem(loaded.mark(path), message,
                                f"write the fields as 'key: value' lines starting with '{id_field}:', without a leading '- '")
            return
        yield SchemaProblem(
            loaded.mark(path),
            f"{where} must be {wanted}, not {_describe_type(value, loaded.texts.get(path))}",
            fix or _type_fix(names),
        )
        return

    if keyword == "enum":
        options = ", ".join(str(option) for option in schema.get("enum", []))
        yield SchemaProblem(loaded.mark(path), f"{where} is {value!r}, which is not one of: {options}", fix)
        return

    if keyword == "pattern" or keyword == "format":
        yield SchemaProblem(loaded.mark(path), f"{where} {value!r} is not valid", fix)
        return

    if keyword in ("minimum", "maximum"):
        bound = schema.get(keyword)
        relation = "at least" if keyword == "minimum" else "at most"
        yield SchemaProblem(
            loaded.mark(path),
            f"{where} is {value!r} but must be {relation} {bound}",
            f"use a value between {schema.get('minimum', '-')} and {schema.get('maximum', '-')}",
        )
        return

    if keyword == "uniqueItems":
        seen: dict[str, int] = {}
        for index, item in enumerate(value):
            token = json.dumps(item, sort_keys=True, default=str)
            if token in seen:
                yield SchemaProblem(
                    loaded.mark(path + (index,)),
                    f"{where} lists {item!r} twice (first as item {seen[token] + 1})",
                    "remove the repeated entry",
                )
            else:
                seen[token] = index
        return

    if keyword == "minItems":
        yield SchemaProblem(loaded.mark(path), f"{where} must not be empty", "list at least one entry")
        return

    if keyword == "minLength":
        yield SchemaProblem(loaded.mark(path), f"{where} must not be empty", "write a value or remove the field")
        return

    for leaf in _leaf_errors(error):
        if leaf is error:
            yield SchemaProblem(loaded.mark(path), f"{where}: {error.message}", fix)
        else:
            yield from _reword(kind, leaf, loaded)


def _type_fix(names: list[str]) -> str:
    if names == ["array"]:
        return "write a list: one '- item' per line, or [a, b] on one line"
    if names == ["object"]:
        return "write the fields as 'key: value' lines, indented under this one"
    if names == ["boolean"]:
        return "write true or false"
    if names == ["string"]:
        return "put the value in quotes"
    if names == ["integer"]:
        return "write a whole number without quotes"
    return ""
