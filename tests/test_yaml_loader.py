"""Safe YAML loading: positions for every value, and every hazard rejected with its place."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler.yaml_loader import MAX_EXPANDED_NODES, MAX_FILE_BYTES, Mark, YamlError, load_yaml_bytes, load_yaml_file


def test_values_keep_line_and_column():
    loaded = load_yaml_bytes(b"username: alice\nkeys:\n  - hwid: '04:a2:3b:4c'\n    enabled: false\n")

    assert loaded.data == {"username": "alice", "keys": [{"hwid": "04:a2:3b:4c", "enabled": False}]}
    assert loaded.marks[("username",)] == Mark(1, 11)
    assert loaded.marks[("keys", 0)] == Mark(3, 5)
    assert loaded.marks[("keys", 0, "enabled")] == Mark(4, 14)
    assert loaded.key_marks[("keys", 0, "enabled")] == Mark(4, 5)


def test_mark_falls_back_to_parent():
    loaded = load_yaml_bytes(b"name: x\nbundle:\n  valid_days: 3\n")

    assert loaded.mark(("bundle", "missing")) == Mark(3, 3)
    assert loaded.mark(("nothing", "here")) == Mark(1, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("start: 18:00", "18:00"),  # YAML 1.1 would read the sexagesimal number 1080
        ("start: 9:30", "9:30"),
        ("hwid: 12:34:56:78", "12:34:56:78"),
        ("day: 2026-12-31", "2026-12-31"),  # stays text for the schema; the loader parses it
        ("at: 2026-12-31 10:00:00", "2026-12-31 10:00:00"),
    ],
)
def test_times_and_dates_stay_text(text, expected):
    assert list(load_yaml_bytes(text.encode()).data.values()) == [expected]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v: 7", 7),
        ("v: 0x10", 16),
        ("v: 010", 8),
        ("v: 1_000", 1000),
        ("v: -3", -3),
        ("v: 1.5", 1.5),
        ("v: yes", True),
        ("v: Off", False),
        ("v: ~", None),
        ("v:", None),
        ("v: 'yes'", "yes"),
    ],
)
def test_plain_scalars(text, expected):
    assert load_yaml_bytes(text.encode()).data == {"v": expected}


def test_octal_number_remembers_written_text():
    loaded = load_yaml_bytes(b"hwid: 04123456\n")

    assert loaded.data == {"hwid": 0o4123456}
    assert loaded.texts[("hwid",)] == "04123456"


def test_empty_document_is_none():
    assert load_yaml_bytes(b"# only a comment\n").data is None


def test_byte_order_mark_accepted():
    assert load_yaml_bytes(b"\xef\xbb\xbfname: x\n").data == {"name": "x"}


def _error(raw: bytes) -> YamlError:
    with pytest.raises(YamlError) as caught:
        load_yaml_bytes(raw)
    return caught.value


def test_duplicate_key_rejected():
    error = _error(b"name: a\nenabled: true\nname: b\n")

    assert (error.line, error.column) == (3, 1)
    assert "duplicate key 'name'" in error.message
    assert "first at line 1" in error.message


def test_duplicate_key_in_nested_mapping_rejected():
    error = _error(b"name: a\nbundle:\n  valid_days: 3\n  valid_days: 4\n")

    assert (error.line, error.column) == (4, 3)
    assert "duplicate key 'valid_days'" in error.message


def test_same_key_in_sibling_mappings_allowed():
    loaded = load_yaml_bytes(b"keys:\n  - hwid: a\n  - hwid: b\n")

    assert loaded.data == {"keys": [{"hwid": "a"}, {"hwid": "b"}]}


def test_tab_in_indentation_rejected():
    error = _error(b"name: a\nkeys:\n  \t- hwid: x\n")

    assert (error.line, error.column) == (3, 3)
    assert "tab character in indentation" in error.message


def test_tab_inside_value_allowed():
    assert load_yaml_bytes(b"description: 'a\tb'\n").data == {"description": "a\tb"}


def test_invalid_utf8_rejected_with_position():
    error = _error(b"name: a\ndescription: caf\xe9\n")

    assert (error.line, error.column) == (2, 17)
    assert "not valid UTF-8" in error.message
    assert "0xe9" in error.message


def test_alias_bomb_rejected():
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for previous, name in zip("abcdefg", "bcdefgh"):
        lines.append(f"{name}: &{name} [{','.join(['*' + previous] * 9)}]")
    error = _error("\n".join(lines).encode())

    assert f"more than {MAX_EXPANDED_NODES} values" in error.message
    assert error.line > 0


def test_recursive_alias_rejected():
    error = _error(b"a: &a [*a]\n")

    assert "refers to itself" in error.message


def test_deep_nesting_rejected():
    error = _error(("a: " + "[" * 40 + "]" * 40 + "\n").encode())

    assert "nested more than" in error.message


def test_small_alias_allowed():
    loaded = load_yaml_bytes(b"a: &days [mon, tue]\nb: *days\n")

    assert loaded.data == {"a": ["mon", "tue"], "b": ["mon", "tue"]}


def test_merge_key_rejected():
    error = _error(b"base: &base {x: 1}\nother:\n  <<: *base\n")

    assert (error.line, error.column) == (3, 3)
    assert "merge keys" in error.message


@pytest.mark.parametrize("text", ["x: !!python/object:os.system ls\n", "x: !custom 1\n", "x: !!binary aGk=\n"])
def test_tags_rejected(text):
    error = _error(text.encode())

    assert "tag" in error.message
    assert error.line == 1


def test_syntax_error_has_position_and_fix():
    error = _error(b"name: a\ndescription: Board: all doors\n")

    assert (error.line, error.column) == (2, 19)
    assert "invalid YAML" in error.message
    assert "quotes" in error.fix


def test_multiple_documents_rejected():
    error = _error(b"name: a\n---\nname: b\n")

    assert "invalid YAML" in error.message
    assert error.line == 2


def test_complex_key_rejected():
    error = _error(b"? [a, b]\n: 1\n")

    assert "mapping key" in error.message


def test_oversized_file_rejected(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# " + b"x" * MAX_FILE_BYTES + b"\n")

    with pytest.raises(YamlError, match="larger than"):
        load_yaml_file(path)


yaml_like_text = st.text(alphabet=st.sampled_from(list("ab09:-[]{}&*!|>'\"#,? \n\t%@`<=\u00e9")), max_size=120)


@settings(max_examples=300)
@given(text=yaml_like_text)
def test_arbitrary_text_loads_or_raises_yaml_error(text):
    try:
        loaded = load_yaml_bytes(text.encode("utf-8"))
    except YamlError as error:
        assert error.message
        assert error.line >= 0
    else:
        assert () in loaded.marks or loaded.data is None


@settings(max_examples=200)
@given(raw=st.binary(max_size=80))
def test_arbitrary_bytes_load_or_raise_yaml_error(raw):
    try:
        load_yaml_bytes(raw)
    except YamlError as error:
        assert error.message
