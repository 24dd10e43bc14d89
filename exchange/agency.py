"""Agency identifiers (mã định danh) of QCVN 102:2016: ``DDD.DD.DD.LNN``.

Read right to left: ``LNN`` is the level-1 unit (a letter and two digits),
then level 2 (two digits), level 3 (two digits) and level 4 (three digits).
A group of zeros means "not at this level". A code's parent is the code with
its leftmost non-zero group zeroed.

The dots make a code an AMQP topic routing key of four words, so the
hierarchy maps onto topic bindings: ``*.*.*.H26`` is everything under Hà Nội.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from functools import total_ordering
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import core_schema

_CODE = re.compile(r"([0-9]{3})\.([0-9]{2})\.([0-9]{2})\.([A-Z][0-9]{2})")

# Width of each numeric group, from level 4 (leftmost) to level 2.
_WIDTHS = (3, 2, 2)


class AgencyGroup(Enum):
    """The family of a level-1 unit, named by the letter of its code."""

    PARTY = "A"  # Đảng
    PRESIDENT_OFFICE = "B"  # Văn phòng Chủ tịch nước
    NATIONAL_ASSEMBLY = "C"  # Quốc hội
    SUPREME_COURT = "D"  # Tòa án nhân dân tối cao
    SUPREME_PROCURACY = "E"  # Viện kiểm sát nhân dân tối cao
    STATE_AUDIT = "F"  # Kiểm toán nhà nước
    MINISTRY = "G"  # bộ, cơ quan ngang bộ, cơ quan thuộc Chính phủ
    PROVINCE = "H"  # Ủy ban nhân dân tỉnh, thành phố
    SOCIO_POLITICAL = "I"  # tổ chức chính trị - xã hội trung ương
    SOCIAL_PROFESSIONAL = "J"  # tổ chức xã hội, xã hội - nghề nghiệp
    PROVINCIAL_COUNCIL = "K"  # Hội đồng nhân dân tỉnh
    OTHER = "?"  # a letter the regulation does not list (yet)

    @classmethod
    def of_letter(cls, letter: str) -> AgencyGroup:
        """The group for a level-1 letter; ``OTHER`` for an unlisted letter."""
        try:
            return cls(letter)
        except ValueError:
            return cls.OTHER


class InvalidAgencyCode(ValueError):
    """A string that is not a QCVN 102:2016 agency code; the message says why."""


def _explain(text: str) -> str:
    """Say, for a clerk, what is wrong with a string that is not a code."""
    if not text:
        return "the agency code is empty"
    if text != text.strip():
        return f"the agency code {text!r} has spaces around it"
    groups = text.split(".")
    if len(groups) != 4:
        return (
            f"the agency code {text!r} has {len(groups)} group{'s' if len(groups) > 1 else ''}; "
            "it needs 4, "
            "written DDD.DD.DD.LNN (for example 000.00.00.G22)"
        )
    for position, (group, width) in enumerate(zip(groups[:3], _WIDTHS, strict=True), 1):
        if len(group) != width or not group.isascii() or not group.isdigit():
            return (
                f"group {position} of the agency code {text!r} is {group!r}; "
                f"it must be {width} digits"
            )
    last = groups[3]
    if len(last) == 3 and last[0].isascii() and last[0].islower():
        return f"the agency code {text!r} must be written in capitals ({text.upper()!r})"
    return (
        f"the last group of the agency code {text!r} is {last!r}; "
        "it must be a capital letter and two digits (for example G22)"
    )


@total_ordering
@dataclass(frozen=True, slots=True)
class AgencyCode:
    """One agency identifier; build it with :meth:`parse`."""

    level4: str
    level3: str
    level2: str
    level1: str

    @classmethod
    def parse(cls, text: str) -> AgencyCode:
        """Parse ``DDD.DD.DD.LNN``, raising :class:`InvalidAgencyCode` with the reason."""
        if not isinstance(text, str):
            raise InvalidAgencyCode(f"an agency code must be text, not {type(text).__name__}")
        match = _CODE.fullmatch(text)
        if match is None:
            raise InvalidAgencyCode(_explain(text))
        return cls(*match.groups())

    @classmethod
    def is_valid(cls, text: str) -> bool:
        """Whether ``text`` is a well-formed code."""
        return isinstance(text, str) and _CODE.fullmatch(text) is not None

    def __str__(self) -> str:
        return f"{self.level4}.{self.level3}.{self.level2}.{self.level1}"

    def __repr__(self) -> str:
        return f"AgencyCode('{self}')"

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, AgencyCode):
            return NotImplemented
        # Sort by the hierarchy: level 1 first, then down the tree.
        return self._key() < other._key()

    def _key(self) -> tuple[str, str, str, str]:
        return (self.level1, self.level2, self.level3, self.level4)

    @property
    def _numeric(self) -> tuple[str, str, str]:
        return (self.level4, self.level3, self.level2)

    @property
    def level(self) -> int:
        """1 for a level-1 unit (a ministry, a province) down to 4; the leftmost non-zero group."""
        for index, group in enumerate(self._numeric):
            if int(group):
                return 4 - index
        return 1

    @property
    def group(self) -> AgencyGroup:
        """The family of the level-1 unit this agency belongs to."""
        return AgencyGroup.of_letter(self.level1[0])

    @property
    def parent(self) -> AgencyCode | None:
        """The code with the leftmost non-zero group zeroed; ``None`` at level 1."""
        groups = list(self._numeric)
        for index, group in enumerate(groups):
            if int(group):
                groups[index] = "0" * len(group)
                return AgencyCode(groups[0], groups[1], groups[2], self.level1)
        return None

    @property
    def ancestors(self) -> list[AgencyCode]:
        """Parent, grandparent, ... up to the level-1 unit, nearest first."""
        chain: list[AgencyCode] = []
        node = self.parent
        while node is not None:
            chain.append(node)
            node = node.parent
        return chain

    @property
    def root(self) -> AgencyCode:
        """The level-1 unit this agency belongs to (itself at level 1)."""
        return AgencyCode("000", "00", "00", self.level1)

    def is_ancestor_of(self, other: AgencyCode) -> bool:
        """Whether ``other`` lies strictly below this agency in the hierarchy."""
        return self in other.ancestors

    @property
    def routing_key(self) -> str:
        """The AMQP routing key addressing exactly this agency."""
        return str(self)

    @property
    def subtree_pattern(self) -> str:
        """The AMQP topic pattern matching this agency and every agency below it.

        The groups left of this agency's own level are wildcards:
        ``000.00.00.H26`` gives ``*.*.*.H26``, ``000.00.24.H44`` gives ``*.*.24.H44``.
        """
        wildcards = 4 - self.level
        words = ["*"] * wildcards + [*self._numeric, self.level1][wildcards:]
        return ".".join(words)

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[Any], handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        """Let pydantic models hold codes: parsed from text, dumped as text."""

        def from_text(value: Any) -> AgencyCode:
            if isinstance(value, AgencyCode):
                return value
            try:
                return cls.parse(value)
            except InvalidAgencyCode as error:
                raise ValueError(str(error)) from None

        return core_schema.no_info_plain_validator_function(
            from_text,
            json_schema_input_schema=core_schema.str_schema(pattern=_CODE.pattern),
            serialization=core_schema.to_string_ser_schema(),
        )


def matches_pattern(code: AgencyCode, pattern: str) -> bool:
    """Whether a topic pattern of four words (``*`` or a literal) matches ``code``.

    Mirrors RabbitMQ's topic matching for the patterns the exchange binds,
    so that authorisation and the broker agree on who receives what.
    """
    words = pattern.split(".")
    if len(words) != 4:
        return False
    return all(w in ("*", v) for w, v in zip(words, str(code).split("."), strict=True))
