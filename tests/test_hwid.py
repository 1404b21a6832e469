"""Hardware id normalisation: every accepted spelling of the same bytes meets on one form."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lockclient.hwid import ACCEPTED_LENGTHS, InvalidHardwareId, format_hwid, normalize_hwid


def _usable(raw: bytes) -> bool:
    return not (len(raw) == 4 and raw[0] == 0x08)


identifiers = st.sampled_from(ACCEPTED_LENGTHS).flatmap(
    lambda length: st.binary(min_size=length, max_size=length)
).filter(_usable)


@st.composite
def spellings(draw, raw: bytes) -> str:
    """One way an admin might type ``raw``: any case per digit, one separator kind or none."""
    separator = draw(st.sampled_from(["", ":", "-", " "]))
    pairs = []
    for byte in raw:
        pair = f"{byte:02x}"
        pairs.append("".join(draw(st.sampled_from([char.lower(), char.upper()])) for char in pair))
    padding = draw(st.sampled_from(["", " ", "\t", "\n"]))
    return padding + separator.join(pairs) + padding


@settings(max_examples=200)
@given(data=st.data(), raw=identifiers)
def test_spellings_normalise_to_one_form(data, raw):
    first = data.draw(spellings(raw))
    second = data.draw(spellings(raw))

    assert normalize_hwid(first) == normalize_hwid(second)
    assert normalize_hwid(first) == format_hwid(raw)


@settings(max_examples=200)
@given(raw=identifiers)
def test_canonical_form_round_trips(raw):
    canonical = format_hwid(raw)

    assert normalize_hwid(canonical) == canonical
    assert bytes.fromhex(canonical.replace(":", "")) == raw
    assert canonical == canonical.lower()


@settings(max_examples=100)
@given(raw=st.binary(min_size=1, max_size=16).filter(lambda raw: len(raw) not in ACCEPTED_LENGTHS))
def test_other_lengths_rejected(raw):
    with pytest.raises(InvalidHardwareId, match="bytes long"):
        normalize_hwid(raw.hex())


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("04:a2:3b:4", "odd number of hex digits"),
        ("4a23b4c", "odd number of hex digits"),
        ("04:a2:3b:4g", "not a hex digit"),
        ("0x04a23b4c", "not a hex digit"),
        ("04.a2.3b.4c", "not a hex digit"),
        ("04:a2:3b", "3 bytes long"),
        ("04:a2:3b:4c:5d", "5 bytes long"),
        ("04:a2:3b:4c:5d:6e:7f:80:91:a2:b3", "11 bytes long"),
        ("08:a2:3b:4c", "random UID"),
        ("08A23B4C", "random UID"),
        ("04:a2-3b:4c", "separators in the wrong places"),
        ("04a2:3b4c", "separators in the wrong places"),
        ("04::a2:3b:4c", "separators in the wrong places"),
        (":04:a2:3b:4c", "separators in the wrong places"),
    ],
)
def test_invalid_spellings_rejected(text, reason):
    with pytest.raises(InvalidHardwareId, match=reason):
        normalize_hwid(text)


@pytest.mark.parametrize("value", [None, 4123456, 4.5, b"\x04\xa2\x3b\x4c"])
def test_non_text_rejected(value):
    with pytest.raises(InvalidHardwareId, match="must be a string"):
        normalize_hwid(value)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("04A23B4C5D6E7F", "04:a2:3b:4c:5d:6e:7f"),
        ("04-a2-3b-4c-5d-6e-7f", "04:a2:3b:4c:5d:6e:7f"),
        ("a3:5f:10:c2", "a3:5f:10:c2"),
        ("01 2E 44 55 66 77 88 99", "01:2e:44:55:66:77:88:99"),
        ("04112233445566778899", "04:11:22:33:44:55:66:77:88:99"),
        ("09:a2:3b:4c", "09:a2:3b:4c"),
        ("08:a2:3b:4c:5d:6e:7f", "08:a2:3b:4c:5d:6e:7f"),
    ],
)
def test_accepted_spellings(text, canonical):
    assert normalize_hwid(text) == canonical
