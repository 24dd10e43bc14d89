"""Agency codes: parsing, the hierarchy, and their mapping onto AMQP topics."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from exchange.agency import AgencyCode, AgencyGroup, InvalidAgencyCode, matches_pattern

digits = st.text(alphabet="0123456789", min_size=1, max_size=1)


@st.composite
def agency_codes(draw: st.DrawFn) -> str:
    """Any well-formed code, with zero groups likely so every level appears."""

    def group(width: int) -> str:
        zero = draw(st.booleans())
        return "0" * width if zero else "".join(draw(digits) for _ in range(width))

    letter = draw(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    return f"{group(3)}.{group(2)}.{group(2)}.{letter}{draw(digits)}{draw(digits)}"


@given(agency_codes())
def test_parse_then_format_gives_the_same_text(text: str) -> None:
    assert str(AgencyCode.parse(text)) == text


@given(agency_codes())
def test_parent_is_one_level_up_until_level_one(text: str) -> None:
    code = AgencyCode.parse(text)
    parent = code.parent
    if code.level == 1:
        assert parent is None
        assert code.ancestors == []
    else:
        assert parent is not None
        assert parent.level < code.level
        assert parent.level1 == code.level1
        assert code.ancestors[0] == parent
        assert code.ancestors[-1] == code.root
        assert parent.is_ancestor_of(code)


@given(agency_codes())
def test_a_code_matches_its_own_subtree_and_every_ancestor_subtree(text: str) -> None:
    code = AgencyCode.parse(text)
    assert matches_pattern(code, code.subtree_pattern)
    assert matches_pattern(code, code.routing_key)
    for ancestor in code.ancestors:
        assert matches_pattern(code, ancestor.subtree_pattern)


@given(agency_codes(), agency_codes())
def test_subtree_pattern_matches_exactly_the_descendants(a: str, b: str) -> None:
    top, other = AgencyCode.parse(a), AgencyCode.parse(b)
    inside = other == top or top.is_ancestor_of(other)
    assert matches_pattern(other, top.subtree_pattern) == inside


@pytest.mark.parametrize(
    ("text", "level", "parent", "pattern"),
    [
        ("000.00.00.G22", 1, None, "*.*.*.G22"),
        ("000.00.00.H26", 1, None, "*.*.*.H26"),
        ("000.00.24.H44", 2, "000.00.00.H44", "*.*.24.H44"),
        ("000.46.24.H44", 3, "000.00.24.H44", "*.46.24.H44"),
        ("001.46.24.H44", 4, "000.46.24.H44", "001.46.24.H44"),
    ],
)
def test_known_codes_have_their_level_parent_and_pattern(
    text: str, level: int, parent: str | None, pattern: str
) -> None:
    code = AgencyCode.parse(text)
    assert code.level == level
    assert (str(code.parent) if code.parent else None) == parent
    assert code.subtree_pattern == pattern
    assert code.routing_key == text


def test_groups_follow_the_letter() -> None:
    assert AgencyCode.parse("000.00.00.G09").group is AgencyGroup.MINISTRY
    assert AgencyCode.parse("000.00.00.H49").group is AgencyGroup.PROVINCE
    assert AgencyCode.parse("000.00.00.Z01").group is AgencyGroup.OTHER


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("28.22.H17", "3 groups"),
        ("", "empty"),
        ("000.00.00.g22", "capitals"),
        ("00.000.00.G22", "group 1"),
        ("000.0.00.G22", "group 2"),
        ("000.00.0a.G22", "group 3"),
        ("000.00.00.GG2", "capital letter and two digits"),
        ("000.00.00.G22 ", "spaces"),
        ("000.00.00.G22.1", "5 groups"),
        ("０００.00.00.G22", "group 1"),
    ],
)
def test_malformed_codes_are_refused_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(InvalidAgencyCode, match=says):
        AgencyCode.parse(text)
    assert not AgencyCode.is_valid(text)


def test_codes_are_pydantic_fields_parsed_and_dumped_as_text() -> None:
    class Holder(BaseModel):
        code: AgencyCode

    holder = Holder.model_validate({"code": "000.00.24.H44"})
    assert holder.code == AgencyCode.parse("000.00.24.H44")
    assert holder.model_dump(mode="json") == {"code": "000.00.24.H44"}
    with pytest.raises(ValidationError, match="3 groups"):
        Holder.model_validate({"code": "28.22.H17"})


def test_codes_sort_by_hierarchy() -> None:
    codes = [AgencyCode.parse(t) for t in ("000.46.24.H44", "000.00.00.H44", "000.00.24.H44")]
    assert [str(c) for c in sorted(codes)] == ["000.00.00.H44", "000.00.24.H44", "000.46.24.H44"]
