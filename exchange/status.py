"""The code lists of QCVN 102:2016 and the business-status state machine.

Two vocabularies that must never be mixed:

* business statuses (:class:`StatusCode`), reported by agencies in edXML
  status packages: what became of a document at its recipient;
* transport outcomes (:class:`TransportOutcome`), the exchange's own: what
  the exchange did with a message.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class StatusCode(StrEnum):
    """Business status of a document at a recipient (StatusCode on the wire)."""

    ARRIVED = "01"  # đã đến: the QLVB received it, the clerk has not handled it
    RETURNED = "02"  # từ chối tiếp nhận: rejected, returned to the sender
    ACCEPTED = "03"  # đã tiếp nhận: registered in the book of incoming documents
    ASSIGNED = "04"  # phân công: a leader assigned it
    PROCESSING = "05"  # đang xử lý
    DONE = "06"  # hoàn thành
    RECALL_REQUESTED = "13"  # yêu cầu lấy lại: the sender asks for it back
    RECALL_AGREED = "15"  # đồng ý yêu cầu lấy lại / cập nhật
    RECALL_REFUSED = "16"  # từ chối yêu cầu lấy lại / cập nhật

    @property
    def reported_by_sender(self) -> bool:
        """Whether the document's sender reports this code (to the recipient).

        Every code but 13 goes from the recipient back to the sender.
        """
        return self is StatusCode.RECALL_REQUESTED


class BusinessDocType(StrEnum):
    """What a document package does (BussinessDocType)."""

    NEW = "0"
    REVOCATION = "1"  # thu hồi
    UPDATE = "2"  # cập nhật
    REPLACEMENT = "3"  # thay thế


class Priority(StrEnum):
    """Urgency of a document (OtherInfo/Priority)."""

    NORMAL = "0"
    URGENT = "1"  # khẩn
    VERY_URGENT = "2"  # thượng khẩn
    FLASH = "3"  # hỏa tốc
    FLASH_TIMED = "4"  # hỏa tốc hẹn giờ


class SteeringType(StrEnum):
    """Whether a document directs or reports (SteeringType)."""

    NONE = "0"
    DIRECTIVE = "1"  # chỉ đạo
    DIRECTIVE_REPORT = "2"  # báo cáo việc thực hiện chỉ đạo


class TransportOutcome(StrEnum):
    """What the exchange did with one message (never a business status)."""

    ACCEPTED = "accepted"
    DELIVERED = "delivered"
    REJECTED = "rejected"
    PARKED = "parked"


class MessageKind(StrEnum):
    """What a submitted message turned out to be."""

    DOCUMENT = "document"
    STATUS = "status"
    UNKNOWN = "unknown"  # not (yet) read far enough to tell: unreadable bytes


@dataclass(frozen=True, slots=True)
class DeliveryState:
    """Where one document stands at one recipient, as far as statuses tell.

    ``latest`` is the latest business status of the normal flow (``None``
    before the recipient reported anything); ``recall_pending`` is set while
    a recall request (13) awaits its answer (15 or 16); ``withdrawn`` once a
    recall was agreed.
    """

    latest: StatusCode | None = None
    recall_pending: bool = False
    withdrawn: bool = False

    @property
    def closed(self) -> bool:
        """No further business status is expected."""
        return self.withdrawn or self.latest in (StatusCode.RETURNED, StatusCode.DONE)


class IllegalTransition(ValueError):
    """A status that may not follow the current state; the message says why."""


_S = StatusCode
# The normal flow: which codes may follow which. None is "delivered, nothing
# reported yet". The flow only moves forward (01, 03, 04, 05, 06) and may
# skip steps: a clerk registers at once without 01, a routine document needs
# no leader assignment (04), an automated QLVB reports only 06. Skipping also
# keeps the exchange right when statuses overtake each other on the way (04
# handled before 03 by competing workers): the later one is judged against
# what has arrived, and the earlier one then fits in by its Timestamp.
# 04 and 05 may repeat and alternate (a re-assignment, a progress report);
# a document may be returned (02) at any point before it is done; nothing
# follows 02 or 06 (a resend after 02 is a new delivery).
_FLOW: dict[StatusCode | None, frozenset[StatusCode]] = {
    None: frozenset({_S.ARRIVED, _S.RETURNED, _S.ACCEPTED, _S.ASSIGNED, _S.PROCESSING, _S.DONE}),
    _S.ARRIVED: frozenset({_S.RETURNED, _S.ACCEPTED, _S.ASSIGNED, _S.PROCESSING, _S.DONE}),
    _S.ACCEPTED: frozenset({_S.RETURNED, _S.ASSIGNED, _S.PROCESSING, _S.DONE}),
    _S.ASSIGNED: frozenset({_S.RETURNED, _S.ASSIGNED, _S.PROCESSING, _S.DONE}),
    _S.PROCESSING: frozenset({_S.RETURNED, _S.ASSIGNED, _S.PROCESSING, _S.DONE}),
    _S.RETURNED: frozenset(),
    _S.DONE: frozenset(),
}


def _label(code: StatusCode | None) -> str:
    return "no status yet" if code is None else f"{code.value} ({code.name.lower()})"


def next_state(state: DeliveryState, code: StatusCode) -> DeliveryState:
    """The state after ``code`` is reported, or :class:`IllegalTransition`.

    Recall (13) may be requested while the document is neither returned nor
    withdrawn and no other recall is pending; 15 and 16 answer a pending 13.
    A resend of a returned document is a new delivery, which starts again
    from the empty state.
    """
    if state.withdrawn:
        raise IllegalTransition(f"the document was withdrawn; status {code.value} cannot follow")
    if code is StatusCode.RECALL_REQUESTED:
        if state.recall_pending:
            raise IllegalTransition("a recall request (13) is already waiting for an answer")
        if state.latest is StatusCode.RETURNED:
            raise IllegalTransition("the document was returned (02); there is nothing to recall")
        return DeliveryState(state.latest, recall_pending=True)
    if code in (StatusCode.RECALL_AGREED, StatusCode.RECALL_REFUSED):
        if not state.recall_pending:
            raise IllegalTransition(
                f"status {code.value} answers a recall request (13), and none is pending"
            )
        return DeliveryState(state.latest, withdrawn=code is StatusCode.RECALL_AGREED)
    if code not in _FLOW[state.latest]:
        allowed = ", ".join(sorted(c.value for c in _FLOW[state.latest])) or "nothing"
        raise IllegalTransition(
            f"status {_label(code)} cannot follow {_label(state.latest)}; allowed: {allowed}"
        )
    return DeliveryState(code, recall_pending=state.recall_pending)


def replay(codes: list[StatusCode]) -> DeliveryState:
    """The state after a history of statuses, from a fresh delivery."""
    state = DeliveryState()
    for code in codes:
        state = next_state(state, code)
    return state


# Where each code stands in a document's life, to order statuses that carry
# the same Timestamp (agency systems write whole seconds, and an automated
# QLVB may report arrival and acceptance in the same second).
_LIFE_ORDER: dict[StatusCode, int] = {
    StatusCode.ARRIVED: 0,
    StatusCode.ACCEPTED: 1,
    StatusCode.ASSIGNED: 2,
    StatusCode.PROCESSING: 3,
    StatusCode.DONE: 4,
    StatusCode.RETURNED: 4,
    StatusCode.RECALL_REQUESTED: 5,
    StatusCode.RECALL_AGREED: 6,
    StatusCode.RECALL_REFUSED: 6,
}


def life_order(code: StatusCode) -> int:
    """Where a code stands in a document's life (arrival first, recall answers last)."""
    return _LIFE_ORDER[code]


def replay_timeline(entries: Iterable[tuple[datetime, StatusCode]]) -> DeliveryState:
    """The state after statuses taken in the order they happened, not of arrival.

    Competing workers and network paths may hand statuses over out of order
    (05 before 04); each status carries the reporter's Timestamp, so the
    history is judged in that order. Ties go by the document's life order.
    """
    ordered = sorted(entries, key=lambda entry: (entry[0], _LIFE_ORDER[entry[1]]))
    return replay([code for _, code in ordered])
