"""Hypothesis strategies for valid edXML package models.

Every model these strategies make can be written and read back unchanged:
text is anything XML 1.0 can carry (Vietnamese, markup characters, inner
line breaks, blanks that the model turns into ``None``), agency codes are
well-formed, dates span the years a wire date can hold.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

from hypothesis import strategies as st

from exchange.agency import AgencyCode
from exchange.edxml.model import (
    Attachment,
    Business,
    BusinessDocumentInfo,
    Code,
    DocumentPackage,
    DocumentType,
    Manifest,
    ManifestReference,
    Organization,
    OtherInfo,
    PromulgationInfo,
    Receiver,
    ReplacementInfo,
    ResponseFor,
    SignerInfo,
    StaffInfo,
    StatusPackage,
    TraceHeader,
)
from exchange.status import BusinessDocType, Priority, StatusCode, SteeringType

# Any character XML 1.0 allows, minus control and unassigned code points
# (which include U+FFFE and U+FFFF); tab and line breaks are added back.
_CHARACTERS = st.characters(
    codec="utf-8",
    exclude_categories=("Cc", "Cs", "Cn"),
    include_characters="\t\n\r<>&\"'ĐđăâêôơưẠạếệ",
)

texts = st.text(_CHARACTERS, min_size=1, max_size=24).filter(lambda t: t.strip() != "")
"""Non-blank text (the model strips the edges)."""

optional_texts = st.one_of(st.none(), st.just(""), st.just("  "), texts)
"""Optional text, including blanks, which the model normalises to ``None``."""

agency_codes = st.from_regex(r"\A[0-9]{3}\.[0-9]{2}\.[0-9]{2}\.[A-Z][0-9]{2}\Z").map(
    AgencyCode.parse
)

dates = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31))

timestamps = st.datetimes(
    min_value=datetime(1900, 1, 2),
    max_value=datetime(2100, 12, 30),
    timezones=st.one_of(st.none(), st.just(UTC), st.just(timezone(timedelta(hours=7)))),
)
"""Naive or aware, with microseconds: the model reduces them to wire time."""

# Paper (a paper copy follows): the values senders write.
papers = st.sampled_from(["0", "1", "true", "false"])

amounts = st.one_of(st.none(), st.integers(min_value=0, max_value=10**6))

organizations = st.builds(
    Organization,
    organ_id=agency_codes,
    organization_in_charge=optional_texts,
    organ_name=optional_texts,
    organ_address=optional_texts,
    email=optional_texts,
    telephone=optional_texts,
    fax=optional_texts,
    website=optional_texts,
)

codes = st.builds(Code, code_number=texts, code_notation=texts)

response_fors = st.builds(
    ResponseFor,
    organ_id=agency_codes,
    code=texts,
    promulgation_date=st.none() | dates,
    document_id=optional_texts,
)

staff_infos = st.builds(
    StaffInfo,
    department=optional_texts,
    department_id=optional_texts,
    staff=optional_texts,
    staff_id=optional_texts,
    mobile=optional_texts,
    email=optional_texts,
)

trace_headers = st.builds(TraceHeader, organ_id=agency_codes, timestamp=timestamps)

other_infos = st.builds(
    OtherInfo,
    priority=st.none() | st.sampled_from(Priority),
    sphere_of_promulgation=optional_texts,
    typer_notation=optional_texts,
    promulgation_amount=amounts,
    page_amount=amounts,
    reply_fors=optional_texts,
    direction=st.none() | st.booleans(),
    reference_codes=optional_texts,
    appendixes=st.lists(texts, max_size=3).map(tuple),
)

businesses = st.builds(
    Business,
    document_id=optional_texts,
    doc_type=st.sampled_from(BusinessDocType),
    reason=optional_texts,
    paper=optional_texts,
    document_info=st.none()
    | st.builds(
        BusinessDocumentInfo,
        document_info=optional_texts,
        document_receiver=optional_texts,
        receivers=st.lists(
            st.builds(Receiver, organ_id=agency_codes, receiver_type=optional_texts),
            max_size=3,
        ).map(tuple),
    ),
    replacements=st.lists(
        st.builds(
            ReplacementInfo,
            document_id=texts,
            organ_ids=st.lists(agency_codes, max_size=3).map(tuple),
        ),
        max_size=2,
    ).map(tuple),
    staff=st.none() | staff_infos,
)


@st.composite
def attachments(draw: st.DrawFn, index: int) -> Attachment:
    """One attached file; the ContentId has the ``cid:`` prefix or not."""
    prefix = draw(st.sampled_from(["cid:", ""]))
    file = Attachment.from_bytes(
        draw(st.binary(max_size=64)),
        draw(texts),
        content_type=draw(optional_texts),
        description=draw(optional_texts),
        content_id=f"{prefix}{index}-{draw(st.uuids())}",
    )
    # FieldName and MimeType: what the official edXML library adds.
    return Attachment.model_validate(
        {**file.model_dump(), "field_name": draw(optional_texts), "mime_type": draw(optional_texts)}
    )


@st.composite
def manifests_for(draw: st.DrawFn, files: tuple[Attachment, ...]) -> Manifest | None:
    """A manifest listing some of ``files`` (a reference to a missing file is invalid)."""
    if not files and draw(st.booleans()):
        return None
    listed = draw(st.lists(st.sampled_from(files), unique=True)) if files else []
    references = []
    for file in listed:
        # Senders drop the cid: prefix on one side now and then.
        content_id = file.content_id
        if draw(st.booleans()):
            content_id = (
                content_id.removeprefix("cid:")
                if content_id.startswith("cid:")
                else f"cid:{content_id}"
            )
        references.append(
            ManifestReference(
                content_id=content_id,
                content_type=draw(optional_texts),
                description=draw(optional_texts),
                attachment_name=draw(optional_texts),
            )
        )
    return Manifest(version=draw(optional_texts), references=tuple(references))


@st.composite
def document_packages(draw: st.DrawFn) -> DocumentPackage:
    """A valid document package, from the bare minimum to every element filled."""
    count = draw(st.integers(min_value=0, max_value=3))
    files = tuple(draw(attachments(index)) for index in range(count))
    return DocumentPackage(
        sender=draw(organizations),
        recipients=tuple(draw(st.lists(organizations, min_size=1, max_size=3))),
        document_id=draw(optional_texts),
        code=draw(codes),
        promulgation=draw(
            st.builds(PromulgationInfo, place=optional_texts, promulgation_date=dates)
        ),
        document_type=draw(
            st.none()
            | st.builds(
                DocumentType,
                type=optional_texts,
                type_detail=optional_texts,
                type_name=optional_texts,
            )
        ),
        subject=draw(texts),
        content=draw(optional_texts),
        signer=draw(
            st.none()
            | st.builds(
                SignerInfo,
                competence=optional_texts,
                position=optional_texts,
                full_name=optional_texts,
            )
        ),
        due_date=draw(st.none() | dates),
        other_info=draw(st.none() | other_infos),
        response_for=tuple(draw(st.lists(response_fors, max_size=2))),
        steering_type=draw(st.none() | st.sampled_from(SteeringType)),
        response_for_task=tuple(draw(st.lists(texts, max_size=2))),
        application_type=draw(optional_texts),
        to_places=tuple(draw(st.lists(texts, max_size=3))),
        trace=tuple(draw(st.lists(trace_headers, min_size=1, max_size=3))),
        business=draw(st.none() | businesses),
        trace_paper=draw(st.none() | papers),
        trace_list_id=draw(optional_texts),
        trace_list_version=draw(optional_texts),
        manifest=draw(manifests_for(files)),
        attachments=files,
    )


status_packages = st.builds(
    StatusPackage,
    sender=organizations,
    response_for=response_fors,
    staff=st.none() | staff_infos,
    status_code=st.sampled_from(StatusCode),
    description=optional_texts,
    timestamp=timestamps,
    trace=st.lists(trace_headers, max_size=2).map(tuple),
    trace_paper=st.none() | papers,
    trace_list_id=optional_texts,
    trace_list_version=optional_texts,
)


# -- packages the project's XSDs accept ---------------------------------------------------
#
# The model is as tolerant as the reader (it holds what real packages say);
# schemas/*.xsd ask more of a package (an OrganName, a Place, a SignerInfo,
# ...). These strategies make packages complete enough for the XSDs, so that
# tests can prove that what the writer produces passes the schema check.

small_codes = st.from_regex(r"\A[0-9]{1,2}\Z")
short_texts = st.text(_CHARACTERS, min_size=1, max_size=11).filter(lambda t: t.strip() != "")

optional_short_texts = st.none() | short_texts

complete_organizations = st.builds(
    Organization,
    organ_id=agency_codes,
    organization_in_charge=optional_texts,
    organ_name=texts,
    organ_address=optional_texts,
    email=optional_texts,
    telephone=optional_short_texts,
    fax=optional_short_texts,
    website=optional_texts,
)

complete_response_fors = st.builds(
    ResponseFor, organ_id=agency_codes, code=texts, promulgation_date=dates, document_id=texts
)

complete_staff_infos = st.builds(
    StaffInfo,
    department=optional_texts,
    department_id=optional_texts,
    staff=texts,
    staff_id=optional_texts,
    mobile=optional_short_texts,
    email=optional_texts,
)

complete_businesses = st.builds(
    Business,
    document_id=optional_texts,
    doc_type=st.sampled_from(BusinessDocType),
    reason=optional_texts,
    paper=st.none() | st.sampled_from(["0", "1", "true", "false"]),
    document_info=st.none()
    | st.builds(
        BusinessDocumentInfo,
        document_info=st.none() | small_codes,
        document_receiver=st.none() | small_codes,
        receivers=st.lists(
            st.builds(Receiver, organ_id=agency_codes, receiver_type=small_codes), max_size=3
        ).map(tuple),
    ),
    replacements=st.lists(
        st.builds(
            ReplacementInfo,
            document_id=texts,
            organ_ids=st.lists(agency_codes, min_size=1, max_size=3).map(tuple),
        ),
        max_size=2,
    ).map(tuple),
    staff=st.none() | complete_staff_infos,
)


@st.composite
def complete_document_packages(draw: st.DrawFn) -> DocumentPackage:
    """A document package with everything schemas/edxml-document.xsd requires."""
    package = draw(document_packages())
    files = tuple(
        file.model_copy(update={"content_type": draw(texts)}) if file.content_type is None else file
        for file in package.attachments
    )
    files = tuple(f for f in files if f.encoded) or ()
    return package.model_copy(
        update={
            "sender": draw(complete_organizations),
            "recipients": tuple(draw(st.lists(complete_organizations, min_size=1, max_size=3))),
            "code": draw(st.builds(Code, code_number=short_texts, code_notation=texts)),
            "promulgation": draw(st.builds(PromulgationInfo, place=texts, promulgation_date=dates)),
            "document_type": draw(
                st.builds(
                    DocumentType,
                    type=small_codes,
                    type_detail=st.none() | small_codes,
                    type_name=texts,
                )
            ),
            "signer": draw(
                st.builds(
                    SignerInfo,
                    competence=optional_texts,
                    position=optional_texts,
                    full_name=texts,
                )
            ),
            "other_info": draw(
                st.none()
                | other_infos.map(
                    lambda info: info.model_copy(
                        update={"priority": info.priority or Priority.NORMAL}
                    )
                )
            ),
            "response_for": tuple(draw(st.lists(complete_response_fors, max_size=2))),
            "business": draw(st.none() | complete_businesses),
            "manifest": Manifest(
                version="1.0",
                references=tuple(
                    ManifestReference(
                        content_id=file.content_id,
                        content_type=file.content_type,
                        attachment_name=file.attachment_name,
                    )
                    for file in files
                ),
            ),
            "attachments": files,
        }
    )


@st.composite
def complete_status_packages(draw: st.DrawFn) -> StatusPackage:
    """A status package schemas/edxml-status.xsd accepts."""
    trace = tuple(draw(st.lists(trace_headers, max_size=2)))
    # A TraceHeaderList (where Paper, id and version go) needs a hop.
    paper, label = (st.none() | papers, optional_texts) if trace else (st.none(), st.none())
    return StatusPackage(
        sender=draw(complete_organizations),
        response_for=draw(complete_response_fors),
        staff=draw(st.none() | complete_staff_infos),
        status_code=draw(st.sampled_from(StatusCode)),
        description=draw(optional_texts),
        timestamp=draw(timestamps),
        trace=trace,
        trace_paper=draw(paper),
        trace_list_id=draw(label),
        trace_list_version=draw(label),
    )
