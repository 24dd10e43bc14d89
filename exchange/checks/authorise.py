"""Authorisation: is the sender who it claims to be, and may it send this there?

Pure functions of facts already established: the agency behind the broker
user that published (RabbitMQ validates ``user_id``), the agency named by the
signing certificate, and the package as the signature covers it. Identity is
accepted only when all three name the same agency.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from exchange.agency import AgencyCode, InvalidAgencyCode
from exchange.edxml.model import DocumentPackage, StatusPackage
from exchange.reasons import Reason, Rejection
from exchange.status import StatusCode

Package = DocumentPackage | StatusPackage


@dataclass(frozen=True, slots=True)
class DocumentRef:
    """Which document a status speaks of, and between whom.

    ``sender`` sent the document to ``recipient``; a status travels from the
    recipient to the sender, except a recall request (13), which goes the
    other way.
    """

    sender: AgencyCode
    document_id: str
    recipient: AgencyCode


def recipient_of(routing_key: str) -> AgencyCode:
    """The agency a message was published to, from its routing key."""
    try:
        return AgencyCode.parse(routing_key)
    except InvalidAgencyCode as error:
        raise Rejection.of(Reason.BAD_AGENCY_CODE, str(error), "routing key") from None


def authorise_sender(
    package: Package, *, signer: AgencyCode, publisher: AgencyCode | None
) -> AgencyCode:
    """The sending agency, once the package's From, the signer and the publisher agree."""
    claimed = package.sender.organ_id
    if publisher is None:
        raise Rejection.of(
            Reason.SENDER_MISMATCH,
            "the message was published by a broker user that is not a registered agency",
            "user_id",
        )
    problems = []
    if signer != claimed:
        problems.append(f"From names {claimed} but the certificate that signed is {signer}'s")
    if publisher != claimed:
        problems.append(f"From names {claimed} but the message was published by {publisher}")
    if problems:
        raise Rejection.of(Reason.SENDER_MISMATCH, "; ".join(problems), "From/OrganId")
    return claimed


def authorise_lane(lane: str | None, publisher: AgencyCode | None) -> None:
    """Refuse a lane header that names another agency than the publisher.

    The lane only schedules (a sender's messages wait in the lane its code
    hashes to), but a sender that names other agencies' lanes spreads its
    flood in front of theirs; the header is optional, a false one refused.
    """
    if lane is None or publisher is None or lane == str(publisher):
        return
    raise Rejection.of(
        Reason.SENDER_MISMATCH,
        f"the message names the lane of {lane} but was published by {publisher}; "
        "set x-lienthong-lane to your own agency code, or leave it out",
        "x-lienthong-lane",
    )


def authorise_route(package: Package, recipient: AgencyCode) -> None:
    """Refuse a message whose routing key is not an addressee of the package.

    A document goes only to the agencies in its ``To``; a status only to the
    agency its ``ResponseFor`` names.
    """
    if isinstance(package, DocumentPackage):
        addressees = [to.organ_id for to in package.recipients]
        if recipient not in addressees:
            listed = ", ".join(str(a) for a in addressees)
            raise Rejection.of(
                Reason.NOT_ADDRESSED,
                f"the message was routed to {recipient}, which is not among To ({listed})",
                "To/OrganId",
            )
        return
    addressee = package.response_for.organ_id
    if recipient != addressee:
        raise Rejection.of(
            Reason.NOT_ADDRESSED,
            f"the status was routed to {recipient} but ResponseFor names {addressee}",
            "ResponseFor/OrganId",
        )


def document_ref(package: StatusPackage) -> DocumentRef:
    """The document a status package speaks of, with its sender and recipient."""
    reporter = package.sender.organ_id
    addressee = package.response_for.organ_id
    if package.status_code is StatusCode.RECALL_REQUESTED:
        sender, recipient = reporter, addressee
    else:
        sender, recipient = addressee, reporter
    answered = package.response_for
    document_id = answered.document_id or conventional_document_id(
        sender, answered.promulgation_date, answered.code
    )
    return DocumentRef(sender=sender, document_id=document_id, recipient=recipient)


def conventional_document_id(sender: AgencyCode, promulgated: date | None, code: str) -> str:
    """The DocumentId a package should carry: ``<sender>,<yyyy/MM/dd>,<number>/<notation>``.

    Used to identify a document whose package or status leaves DocumentId out.
    """
    day = promulgated.strftime("%Y/%m/%d") if promulgated else ""
    return f"{sender},{day},{code}"


def document_id_of(package: DocumentPackage) -> str:
    """The identity of a document: its DocumentId, or the conventional one derived from it."""
    if package.document_id:
        return package.document_id
    code = f"{package.code.code_number}/{package.code.code_notation}"
    return conventional_document_id(
        package.sender.organ_id, package.promulgation.promulgation_date, code
    )
