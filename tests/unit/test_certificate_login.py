"""The broker user a client certificate logs in as, written the way RabbitMQ writes it.

RabbitMQ derives the user of a certificate login (``ssl_cert_login_from =
distinguished_name``) from the subject; the exchange must write the same
string to provision that user and to check ``user_id``. The expected values
are what RabbitMQ 3.10 logged for these subjects
("user '...' authenticated"); tests/integration/test_tls.py logs in with
such certificates.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from exchange.pki import create_ca, issue_agency_certificate
from exchange.settings import certificate_login


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory):
    return create_ca(tmp_path_factory.mktemp("ca"))


def test_a_vietnamese_name_is_written_byte_by_byte_as_rabbitmq_does(ca) -> None:
    credential = issue_agency_certificate(
        ca,
        "000.00.00.G22",
        common_name="Văn phòng Chính phủ",
        organization="Văn phòng Chính phủ (lienthong demo)",
    )
    assert certificate_login(credential.certificate) == (
        "UID=000.00.00.G22,CN=V\\C4\\83n ph\\C3\\B2ng Ch\\C3\\ADnh ph\\E1\\BB\\A7,"
        "O=V\\C4\\83n ph\\C3\\B2ng Ch\\C3\\ADnh ph\\E1\\BB\\A7 (lienthong demo),C=VN"
    )


def test_the_subject_is_written_last_attribute_first(ca) -> None:
    credential = issue_agency_certificate(ca, "000.00.00.G22", common_name="Agency 000.00.00.G22")
    assert certificate_login(credential.certificate) == (
        "UID=000.00.00.G22,CN=Agency 000.00.00.G22,O=Agency 000.00.00.G22,C=VN"
    )


@pytest.mark.parametrize(
    ("value", "written"),
    [
        (
            "Sở Nội vụ, Hà Nội",
            "S\\E1\\BB\\9F N\\E1\\BB\\99i v\\E1\\BB\\A5\\, H\\C3\\A0 N\\E1\\BB\\99i",
        ),
        ('a+b;c<d>e"f\\g', 'a\\+b\\;c\\<d\\>e\\"f\\\\g'),
        ("#1 ", "\\#1\\ "),
        (" lead", "\\ lead"),
        ("tilde~", "tilde\\7E"),
    ],
)
def test_special_characters_are_escaped(value: str, written: str, tmp_path: Path) -> None:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, value)])

    class Holder:
        pass

    holder = Holder()
    holder.subject = subject  # type: ignore[attr-defined]
    assert certificate_login(holder) == f"CN={written}"  # type: ignore[arg-type]
