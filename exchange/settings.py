"""Every setting of the exchange, read once from the environment (``LIENTHONG_*``)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, NamedTuple, Self
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from cryptography import x509
from cryptography.x509.oid import NameOID
from pydantic import Field, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

# A 20 MB document with a few zipped attachments, base64-encoded (x 4/3),
# stays well under this; anything larger is not a document but an accident.
DEFAULT_MAX_PACKAGE_BYTES = 64 * 1024 * 1024

# RabbitMQ's own limit (max_message_size in deploy/rabbitmq/rabbitmq.conf) is
# this many times max_package_bytes. A package too large for the exchange but
# under the broker's limit reaches a worker, which refuses it
# REJECTED_TOO_LARGE with a receipt that says why; only one past the broker's
# limit is refused by the broker itself (the publisher's channel is closed: a
# client-side error, no receipt). Twice leaves room for that, while bounding
# what a sender can make the broker write to disk per message.
# tests/unit/test_limits.py keeps the file and this rule aligned.
BROKER_MESSAGE_SIZE_FACTOR = 2


def broker_max_message_size(max_package_bytes: int = DEFAULT_MAX_PACKAGE_BYTES) -> int:
    """The ``max_message_size`` RabbitMQ needs for packages of up to ``max_package_bytes``."""
    return BROKER_MESSAGE_SIZE_FACTOR * max_package_bytes


# The deepest element of a real edXML package (ReplacementInfo/OrganIdList/
# OrganId inside TraceHeaderList, or a Signature's X509 data) sits about 9
# levels down; 40 leaves room for extensions and refuses nesting attacks.
DEFAULT_MAX_DEPTH = 40


# See Settings.db_connect_timeout.
DEFAULT_DB_CONNECT_TIMEOUT_S = 10.0


class ParserLimits(BaseSettings):
    """Bounds on what the XML parser accepts, before any other check runs."""

    model_config = SettingsConfigDict(env_prefix="LIENTHONG_", extra="ignore")

    max_package_bytes: int = Field(DEFAULT_MAX_PACKAGE_BYTES, gt=0)
    max_depth: int = Field(DEFAULT_MAX_DEPTH, gt=2)


# Settings that carry a password. Each can also be read from a file named by
# LIENTHONG_<NAME>_FILE (a Docker or systemd secret), so that the password is
# neither on a command line nor in the environment of every process.
SECRET_SETTINGS = (
    "amqp_url",
    "database_url",
    "owner_database_url",
    "rabbitmq_api_url",
    "replay_amqp_url",
)

ENV_PREFIX = "LIENTHONG_"


# The machine's settings file, read after the environment and ./.env: where a
# host's operator (or scripts/setup.sh on a development machine) writes what
# every lienthong process on it shares. LIENTHONG_SETTINGS_FILE names another.
MACHINE_SETTINGS_FILE = Path("/etc/lienthong/lienthong.env")


def machine_settings_file() -> Path:
    """The machine's settings file: ``LIENTHONG_SETTINGS_FILE``, or the default one."""
    return Path(os.environ.get(f"{ENV_PREFIX}SETTINGS_FILE") or MACHINE_SETTINGS_FILE)


class SettingsError(ValueError):
    """The settings contradict each other or a secret file cannot be read."""


class SecretFiles(PydanticBaseSettingsSource):
    """``LIENTHONG_<NAME>_FILE``: a secret setting read from that file (final newline dropped)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """One field's value from its file, if ``LIENTHONG_<NAME>_FILE`` is set."""
        variable = f"{ENV_PREFIX}{field_name.upper()}_FILE"
        path = os.environ.get(variable)
        if field_name not in SECRET_SETTINGS or not path:
            return None, field_name, False
        if os.environ.get(f"{ENV_PREFIX}{field_name.upper()}") is not None:
            raise SettingsError(
                f"{ENV_PREFIX}{field_name.upper()} and {variable} are both set; keep one"
            )
        try:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n"), field_name, False
        except OSError as error:
            raise SettingsError(f"{variable}: cannot read {path}: {error.strerror}") from None

    def __call__(self) -> dict[str, Any]:
        """The values of every secret setting given as a file."""
        values = {}
        for name, field in self.settings_cls.model_fields.items():
            value, _, _ = self.get_field_value(field, name)
            if value is not None:
                values[name] = value
        return values


class Settings(ParserLimits):
    """Settings of the exchange; each can be set as ``LIENTHONG_<NAME>``.

    Read, first found first: the command's options, the environment,
    ``LIENTHONG_<NAME>_FILE`` for the secret ones (:data:`SECRET_SETTINGS`),
    a ``.env`` file in the working directory, the machine's settings file
    (:func:`machine_settings_file`), the defaults below.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", env_file=".env", env_file_encoding="utf-8"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Options, environment, secret files, ``.env``, the machine's file, in that order."""
        machine = DotEnvSettingsSource(settings_cls, env_file=machine_settings_file())
        return (init_settings, env_settings, SecretFiles(settings_cls), dotenv_settings, machine)

    # The broker, over TLS: aio-pika's URL, whose query names the CA that
    # verifies the broker and the client certificate presented to it
    # (``?cafile=...&certfile=...&keyfile=...``, plus ``auth=external`` to log
    # in as the certificate's subject instead of a password). The broker's
    # certificate and host name are always checked. The nodes of a RabbitMQ
    # cluster are a list of hosts, amqps://mq1:5671,mq2:5671,mq3:5671/vhost?...
    # (the same user, vhost and query for every node; see amqp_addresses):
    # each process connects to a node that answers and moves to the next one
    # when its node goes; list every node, so that any one can be away.
    amqp_url: str = "amqps://localhost:5671/"
    # RabbitMQ's management HTTP API (plugin rabbitmq_management), used to
    # create agency users and their permissions, and by the audit: HTTPS, as
    # an operator user of its own (it can create broker users).
    rabbitmq_api_url: str = "https://localhost:15671"
    # CA certificates that verify the management API's server certificate;
    # unset: the system's trust store.
    rabbitmq_api_ca: Path | None = None
    # libpq's URL syntax. Several hosts (``postgresql://u:p@db1:5432,db2:5432/
    # lienthong?target_session_attrs=read-write``) are tried in order, each
    # new connection, so after a failover the pool reconnects to whichever
    # one is the writable primary then (docs/operations.md).
    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    # Seconds one host of LIENTHONG_DATABASE_URL has to take a new connection
    # (TCP, TLS, login) before the next host is tried. A primary whose machine
    # is gone does not refuse, it never answers; without a bound per host the
    # whole attempt would be spent on it and the standby never tried. A login
    # takes milliseconds on a LAN: 10 s leaves room for a loaded server.
    db_connect_timeout: float = Field(DEFAULT_DB_CONNECT_TIMEOUT_S, gt=0)
    # The schema owner's URL, used only by `lienthong init` to apply the
    # migrations (and grant the groups lienthong_worker and lienthong_gateway
    # their rights); every other process works as the role of database_url,
    # which off this host must not be able to change the schema
    # (docs/operations.md, "Database roles"). Unset: init migrates as the
    # role of database_url (development, one superuser for everything).
    owner_database_url: str | None = None
    # Connections per worker process: one per message handled concurrently,
    # each holding its transaction until the commit.
    db_pool_size: int = Field(10, ge=1)
    # PEM file (or directory of PEM files) of the certification authorities
    # whose agency certificates the exchange trusts.
    trust: Path | None = None
    # Directory of the CAs' certificate revocation lists (*.crl, *.crl.pem);
    # unset: the directory of the trust anchors (LIENTHONG_TRUST itself if it
    # is a directory, else the one holding it).
    crl_dir: Path | None = None
    # Seconds between two reloads of the revocation lists by a running
    # worker (SIGHUP reloads them, and the trust anchors, at once).
    crl_reload_s: float = Field(300.0, gt=0)
    # Seconds a revocation list is still used after its nextUpdate, while a
    # new one is on its way; after that its CA's certificates are refused
    # (REJECTED_CRL_STALE).
    crl_grace_s: float = Field(3600.0, ge=0)
    # Messages a worker holds unacknowledged at once. They wait for a database
    # connection (db_pool_size) and the broker's confirms; a few more than the
    # pool keeps both busy, many more only grows memory and redeliveries.
    prefetch: int = Field(32, ge=1)
    # Package bytes a worker process handles at once (all its workers
    # together): a message waits before its checks until its size fits, so
    # the parse trees, copies and hashes of large packages stay bounded by
    # this, not by the prefetch (32 packages of 60 MiB would be 2 GiB of
    # bodies and several times that in parse trees). A package larger than
    # the budget is handled alone. Size it as the memory a process may spend
    # on handling divided by about 4 (the parse tree and the copies of a
    # package take 2 to 4 times its bytes), and at least max_package_bytes so
    # that the largest package accepted does not wait for an empty worker.
    # The bodies the broker has handed over (prefetch) wait outside it.
    handling_bytes: int = Field(256 * 1024 * 1024, gt=0)
    # Seconds a status package's Timestamp may differ from when the exchange
    # received it; beyond, it is refused (REJECTED_BAD_TIMESTAMP): a status
    # dated far in the future or the past would reorder a document's
    # timeline (statuses are judged in Timestamp order). One day leaves room
    # for a QLVB that reports late or whose clock is off by hours.
    status_timestamp_skew_s: float = Field(86400.0, gt=0)
    # Group commits a worker writes at the same time, each on its own pooled
    # connection (see ledger.GroupCommit): more lets a message that arrives
    # while a group is written start the next one at once.
    group_commits: int = Field(3, ge=1)
    # Package bytes, in MiB, whose examination a worker remembers
    # (pipeline.CheckCache): the same package sent to many recipients is
    # parsed, validated and verified once per worker process, not once per
    # recipient. What is held is the parsed package, 1 to 2 times its bytes
    # (measured: 2.0 for 10 KB packages, 1.1 for 100 KB). 0: off.
    check_memory_mb: int = Field(8, ge=0)
    # Broker users of the exchange itself (besides the one in amqp_url) whose
    # messages may carry an original sender in headers: the replay tool's
    # user, other workers' users. Never an agency's user.
    exchange_users: list[str] = Field(default_factory=list)
    # The broker user the replay tool publishes as (`lienthong replay run`):
    # one of its own, so the record and the broker's logs tell a replayed
    # message from a worker's retry. Its user is trusted by the workers like
    # exchange_users (its messages carry the original sender in headers);
    # the workers need only its name, so on their hosts it can be given
    # without a password. Unset: the replay tool uses amqp_url.
    replay_amqp_url: str = ""

    # -- anchored history (lienthong audit --seal, docs/security.md) ----------
    # The exchange's sealing key (PEM) and its certificate(s): the chains'
    # heads are signed with the key, and `audit --verify-chain` checks the
    # seals against the certificates in seal_cert (several for a rollover).
    # The key lives on the exchange's hosts, never in the database, so whoever
    # administers PostgreSQL cannot write a seal.
    seal_key: Path | None = None
    seal_cert: Path | None = None
    # Seconds between two seals written by the workers (one of them, under a
    # database lock; every process holding seal_key takes part). What a
    # superuser rewrote is found from the first seal after the rewrite, and a
    # rewrite before it is pinned down to one interval: an hour costs 24 rows
    # a day. 0: only `lienthong audit --seal` seals (a cron job or a timer).
    # The verification reports the last seal older than twice this.
    seal_interval_s: float = Field(3600.0, ge=0)
    # Months of the record kept in the database (messages and events are
    # partitioned by month, UTC): `lienthong retention run` exports then
    # detaches the older months, and the audit verifies the chains from
    # where they ended. Unset: keep everything. Size it from the disk (each
    # month's size is in docs/performance.md) and how long an auditor must
    # query the record online; an export can be loaded back for an inquiry.
    retention_months: int | None = Field(None, ge=1)
    # An RFC 3161 time-stamp authority: each seal's payload is time-stamped
    # by it, so the time of the heads is proved by a third party too. Unset:
    # seals carry the exchange's own clock only. tsa_cert: the authority's
    # certificate or the CA that issued it (PEM), to verify its tokens.
    tsa_url: str = ""
    tsa_cert: Path | None = None
    # Seconds to wait for the authority; a seal is refused rather than
    # written without the token the settings ask for.
    tsa_timeout_s: float = Field(10.0, gt=0)

    # Fault injection for the crash-safety tests only, e.g.
    # "after_commit=0.01": the worker SIGKILLs itself at that point.
    fault_kill: str = ""
    # Port of a worker process's Prometheus endpoint (``lienthong worker
    # --metrics-port``); several processes on one host need one port each.
    # 0: no endpoint.
    metrics_port: int = Field(9108, ge=0, le=65535)
    # Address the worker's Prometheus endpoint binds to: loopback, so that
    # only a scraper on the same host (or a proxy) reads it; "0.0.0.0" for a
    # Prometheus on another host, behind a firewall.
    metrics_host: str = "127.0.0.1"
    # A directory holding every XSD of exchange/schemas/ (a schema under
    # test); unset: the package's own.
    schema_dir: Path | None = None
    # Logs: "json", "text", or "auto" (JSON unless stderr is a terminal).
    log_format: str = Field("auto", pattern="^(auto|json|text)$")
    # Seconds a starting worker waits for RabbitMQ and PostgreSQL to answer
    # (started together, the worker is often up first), trying again with a
    # log line each time; then it exits with status 2. 0: fail at once.
    startup_wait: float = Field(60.0, ge=0)

    # -- receipts (docs/security.md, "Signed receipts") -----------------------
    # The exchange's own key (PEM) and certificate (PEM, intermediates after
    # it) that sign every receipt; the certificate carries the receipt-signing
    # ExtendedKeyUsage (`lienthong keys issue-exchange`). ECDSA P-256: a
    # signature costs tens of microseconds per receipt. A worker without
    # them does not start, unless unsigned_receipts says so.
    receipt_key: Path | None = None
    receipt_cert: Path | None = None
    # Development only: let workers without a receipt key start and send
    # unsigned receipts (they prove nothing to a third party).
    unsigned_receipts: bool = False

    # -- limits per agency (docs/operations.md, "Limits per agency") ---------
    # Applied to every agency's broker user by `lienthong agency add/set/enable`
    # and again to all of them by `lienthong init`, so a change here reaches
    # every agency from this one place.
    # Connections one agency's broker user may hold open at once, over all its
    # QLVB processes: a QLVB uses one or two (publish, consume); a handful of
    # servers behind a load balancer a few more. Each connection costs the
    # broker about 100 KB and a process; 10 leaves room for a failover while
    # refusing a reconnect loop that leaks connections.
    agency_max_connections: int = Field(10, ge=1)
    # Channels over all of that user's connections: the client library opens
    # two per connection (publish with confirms, consume); 32 is generous.
    agency_max_channels: int = Field(32, ge=1)
    # Bytes an agency's inbox may hold unread (a RabbitMQ policy, applied by
    # `lienthong init`): a few days of its usual inflow, and at least several
    # times max_package_bytes. Beyond it the broker refuses new deliveries
    # (overflow reject-publish); the worker tells the sender the document
    # waits (TRANSIENT_QUEUE_FULL) and keeps it (docs/operations.md).
    inbox_max_bytes: int = Field(1024 * 1024 * 1024, gt=0)
    # The same for an agency's status queue (receipts of about 2 KB, and the
    # statuses its recipients report): 256 MiB is over 100,000 receipts.
    status_max_bytes: int = Field(256 * 1024 * 1024, gt=0)
    # Messages per second one agency may publish, sustained (a token bucket
    # shared by every worker, kept in PostgreSQL); past it, messages are
    # refused REJECTED_QUOTA with a receipt and the sender sends them again
    # later. `lienthong agency set CODE --rate R --burst B` overrides it for
    # one agency. Size the rate at a few times the agency's busiest hour
    # (a ministry sends a few thousand messages a day; 20/s is 72,000 an
    # hour) and the burst at its largest mailing: one document to n
    # recipients is n messages published at once (every province: 63).
    quota_rate_per_s: float = Field(20.0, gt=0)
    quota_burst: int = Field(2000, ge=1)
    # Messages of one sender a worker handles at once from lienthong.work;
    # more of the same sender meanwhile are moved to lienthong.work.bulk,
    # which the workers read beside the work queue, so a flood from one
    # agency waits there instead of in front of everyone else's documents
    # (docs/performance.md, "Fairness"). A quarter of the prefetch keeps four
    # senders busy at once; 0: no moving (one first-come, first-served queue).
    fair_share: int = Field(8, ge=0)
    # Messages a worker holds at once from each lane (topology.LANES lanes,
    # one per hash of the sender's code): a flooding sender's lane gives a
    # worker this many, every other lane its own beside them, so the other
    # agencies' documents are handled next to the flood, not after it
    # (docs/performance.md, "Fairness"). A flood alone keeps this many busy
    # in each worker.
    lane_prefetch: int = Field(8, ge=1)
    # Broker connections a worker process reads the lanes over, the lanes
    # dealt out among them. The broker sends a connection's messages one
    # after another, so a large message delays every lane of its connection
    # by the time it takes to send it (60 MiB: about half a second); with a
    # connection per lane, a junk flood delays only its own lane.
    lane_connections: int = Field(16, ge=1, le=16)

    # -- the gateway (`lienthong gateway`, docs/gateway.md) -------------------
    # Where the VXP adapter protocol is served, and under which path (the SDK
    # appends /sendEdoc, /getEdoc, ... to the endpoint it is configured with).
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(8280, ge=0, le=65535)
    gateway_base_path: str = "/XrdAdapter/adapter"
    # CA certificates the gateway checks signatures against before replying;
    # unset: LIENTHONG_TRUST.
    gateway_trust: Path | None = None
    # Directory of agency keys (CODE.key.pem, CODE.cert.pem) the gateway signs
    # unsigned packages with, for the agency that sends them; unset: it signs
    # nothing and refuses unsigned packages.
    gateway_keys: Path | None = None
    # TLS: both set, or neither.
    gateway_tls_cert: Path | None = None
    gateway_tls_key: Path | None = None
    # How long an item handed out by getReceivedEdocList is kept off the other
    # pollers' lists; unconfirmed, it is listed again afterwards.
    gateway_lease_s: float = Field(300.0, gt=0)
    # Items one getReceivedEdocList or getSentEdocList returns at most.
    gateway_list_limit: int = Field(500, ge=1)
    # Broker users of gateways, read by the workers: only their messages may
    # name, in a header, the agency they publish for.
    gateway_users: list[str] = Field(default_factory=list)
    # The gateway process's Prometheus endpoint (``lienthong gateway
    # --metrics-port``; 0: none), on loopback unless told otherwise: put a
    # Prometheus or a proxy on the host, or give the address it scrapes.
    gateway_metrics_port: int = Field(9128, ge=0, le=65535)
    gateway_metrics_host: str = "127.0.0.1"

    @property
    def trusted_broker_users(self) -> frozenset[str]:
        """The broker users of the exchange itself, never an agency's.

        The workers' (``amqp_url``), ``exchange_users``, the replay tool's
        (``replay_amqp_url``), ``gateway_users``, and the management API's:
        each may do what no agency may (carry an original sender, act for
        agencies, create users).
        """
        return frozenset(
            {
                url_user(self.amqp_url),
                url_user(self.rabbitmq_api_url),
                *self.exchange_users,
                *([url_user(self.replay_amqp_url)] if self.replay_amqp_url else []),
                *self.gateway_users,
            }
        )

    @field_validator("amqp_url", "replay_amqp_url")
    @classmethod
    def _every_broker_address_readable(cls, url: str) -> str:
        """A list of hosts with an empty host or a port that is not a number is refused."""
        if url:
            amqp_addresses(url)
        return url

    @model_validator(mode="after")
    def _refuse_clear_text_off_the_host(self) -> Self:
        """Refuse credentials or documents sent in clear to another host (see docs/security.md)."""
        problem = transport_problem(self)
        if problem is not None:
            raise ValueError(problem)
        return self


# Database roles that are superusers on a stock PostgreSQL; a URL cannot say
# more about the role than its name.
SUPERUSER_ROLES = frozenset({"postgres"})


def url_user(url: str) -> str:
    """The user an AMQP or management API URL logs in as (RabbitMQ's ``guest`` when none).

    An AMQP URL with ``auth=external`` logs in as the subject of its client
    certificate (``certfile``), as :func:`certificate_login` writes it.
    """
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    if query.get("auth", [""])[-1].lower() == "external" and query.get("certfile"):
        path = Path(query["certfile"][-1])
        try:
            return certificate_login(x509.load_pem_x509_certificate(path.read_bytes()))
        except (OSError, ValueError) as error:
            raise SettingsError(f"cannot read the client certificate {path}: {error}") from None
    return unquote(parts.username or "guest")


# The attribute names RabbitMQ writes in the user name it derives from a
# client certificate (rabbit_cert_info:format_rdn); other attributes appear
# as their dotted OID.
_RABBITMQ_ATTRIBUTE_NAMES = {
    NameOID.SURNAME: "SN",
    NameOID.GIVEN_NAME: "GIVENNAME",
    NameOID.INITIALS: "INITIALS",
    NameOID.GENERATION_QUALIFIER: "GENERATIONQUALIFIER",
    NameOID.COMMON_NAME: "CN",
    NameOID.LOCALITY_NAME: "L",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.TITLE: "TITLE",
    NameOID.COUNTRY_NAME: "C",
    NameOID.SERIAL_NUMBER: "SERIALNUMBER",
    NameOID.PSEUDONYM: "PSEUDONYM",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.EMAIL_ADDRESS: "EMAILADDRESS",
    NameOID.STREET_ADDRESS: "STREET",
    NameOID.USER_ID: "UID",
}
# Characters RabbitMQ escapes with a backslash anywhere in a value.
_RDN_SPECIALS = frozenset('"+,;<>\\')


def certificate_login(certificate: x509.Certificate) -> str:
    """The RabbitMQ user a client certificate logs in as with ``auth=external``.

    The broker is configured with ``ssl_cert_login_from = distinguished_name``
    (deploy/rabbitmq/rabbitmq.conf): the user is the certificate's subject,
    last attribute first, written the way RabbitMQ writes it, e.g.
    ``UID=000.00.00.G22,CN=V\\C4\\83n ph\\C3\\B2ng Ch\\C3\\ADnh ph\\E1\\BB\\A7,C=VN``:
    RFC 4514, with every byte of a non-ASCII character's UTF-8 as ``\\XX``.
    The subject, not the common name, because it carries the agency code:
    two communes with the same name have different codes.
    """
    return ",".join(
        "+".join(_rabbitmq_attribute(attribute) for attribute in rdn)
        for rdn in reversed(list(certificate.subject.rdns))
    )


def _rabbitmq_attribute(attribute: x509.NameAttribute[str | bytes]) -> str:
    name = _RABBITMQ_ATTRIBUTE_NAMES.get(attribute.oid, attribute.oid.dotted_string)
    value = attribute.value
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return f"{name}={_rabbitmq_escape(text)}"


def _rabbitmq_escape(value: str) -> str:
    """A value as rabbit_cert_info:escape_rdn_value writes it."""
    out = []
    for index, char in enumerate(value):
        if index == 0 and char in " #":
            out.append("\\" + char)
        elif char == " " and index == len(value) - 1:
            out.append("\\ ")
        elif char in _RDN_SPECIALS:
            out.append("\\" + char)
        elif ord(char) < 32 or ord(char) >= 126:
            out.append("".join(f"\\{byte:02X}" for byte in char.encode("utf-8")))
        else:
            out.append(char)
    return "".join(out)


def amqp_addresses(url: str) -> tuple[str, ...]:
    """The one-node URLs of an AMQP URL that names one broker or the nodes of a cluster.

    ``amqps://user:pw@mq1:5671,mq2,[fd00::3]:5671/vhost?cafile=ca.pem`` (the
    multi-host form of libpq and MongoDB URLs) gives
    ``amqps://user:pw@mq1:5671/vhost?cafile=ca.pem``,
    ``amqps://user:pw@mq2/vhost?cafile=ca.pem`` and the third: the same user,
    vhost and query on every node, as a RabbitMQ cluster shares its users,
    vhosts and certificates' authority. A URL of one host gives itself.
    Raises ``ValueError`` naming the fault for an empty host or a port that
    is not a number from 1 to 65535.
    """
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if "," not in hosts:
        _check_port(url, hosts)
        return (url,)
    addresses = []
    for host in hosts.split(","):
        host = host.strip()
        if not host or host.startswith(":"):
            raise ValueError(
                f"the list of broker hosts {hosts!r} has an empty host; write "
                "host1:port,host2:port,... with no empty entry"
            )
        _check_port(url, host)
        addresses.append(urlunsplit(parts._replace(netloc=f"{userinfo}{at}{host}")))
    return tuple(addresses)


def _check_port(url: str, host: str) -> None:
    """Refuse ``host:port`` whose port is not a TCP port, naming it (never the password)."""
    try:
        _port = urlsplit(f"{urlsplit(url).scheme}://{host}").port  # reading it checks it
    except ValueError:
        raise ValueError(
            f"the broker address {host!r} has no valid port; write host or host:port "
            "(a port from 1 to 65535), several separated by commas"
        ) from None


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is this machine: ``localhost``, a loopback address, or a socket path."""
    if not host or host.startswith("/") or host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


# PostgreSQL's port when a URL names none.
DEFAULT_DATABASE_PORT = 5432


class DatabaseHost(NamedTuple):
    """One server a PostgreSQL URL lists: a host name, an address or a socket directory."""

    host: str
    port: int

    def __str__(self) -> str:
        """``host:port``, an IPv6 address in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def database_hosts(url: str) -> list[DatabaseHost]:
    """Every server ``url`` lists, in the order a connection tries them (libpq's syntax).

    The hosts are in the URL's authority (``db1:5432,db2:5433``, ``[::1]``),
    or else in its ``host`` parameter (``?host=db1,db2&port=5432,5433``,
    one port for all or one each; a directory is a Unix socket). A host
    without a port gets 5432, no host at all ``localhost``. Raises
    :class:`ValueError` for a port that is not a number or ports that do
    not match the hosts.
    """
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    hostlist = parts.netloc.rpartition("@")[2]
    specs: list[tuple[str, str]] = []
    if hostlist:
        for spec in hostlist.split(","):
            if spec.startswith("["):
                host, _, rest = spec[1:].partition("]")
                port = rest.removeprefix(":")
            else:
                host, _, port = spec.partition(":")
            specs.append((unquote(host), port))
    else:
        hosts = ",".join(query.get("host", [])).split(",")
        ports = ",".join(query.get("port", [])).split(",")
        if len(ports) == 1:
            ports = ports * len(hosts)
        if len(ports) != len(hosts):
            raise ValueError(f"{len(hosts)} hosts but {len(ports)} ports in the database URL")
        specs = list(zip(hosts, ports, strict=True))
    listed = []
    for host, port in specs:
        if port and not port.isdigit():
            raise ValueError(f"port {port!r} of database host {host!r} is not a number")
        listed.append(DatabaseHost(host or "localhost", int(port or DEFAULT_DATABASE_PORT)))
    return listed


def transport_problem(settings: Settings) -> str | None:
    """What is unsafe in how ``settings`` reach RabbitMQ and PostgreSQL, or ``None``.

    Off this host, AMQP must be ``amqps://``; each database URL (the
    processes' and the owner's) must carry ``sslmode=verify-full`` and must
    not log in as the superuser without a password (or client certificate);
    the management API must be HTTPS and not ``guest``. On loopback
    everything is allowed (development).
    """
    for name, url in (
        ("AMQP_URL", settings.amqp_url),
        ("REPLAY_AMQP_URL", settings.replay_amqp_url),
    ):
        # Every node of a cluster: a client moves to any of them.
        for address in amqp_addresses(url) if url else ():
            amqp = urlsplit(address)
            if amqp.scheme == "amqp" and not is_loopback(amqp.hostname):
                return (
                    f"LIENTHONG_{name}: plain amqp:// to {amqp.hostname} sends passwords and "
                    "documents in clear; use amqps:// off this host"
                )
            no_verify = parse_qs(amqp.query).get("no_verify_ssl", ["0"])[-1] != "0"
            if no_verify and not is_loopback(amqp.hostname):
                return (
                    f"LIENTHONG_{name}: no_verify_ssl to {amqp.hostname} would accept any "
                    "server as the broker; give the CA that issued its certificate (cafile=...)"
                )
    databases = {"LIENTHONG_DATABASE_URL": settings.database_url}
    if settings.owner_database_url is not None:
        databases["LIENTHONG_OWNER_DATABASE_URL"] = settings.owner_database_url
    for variable, database_url in databases.items():
        if (problem := _database_problem(variable, database_url)) is not None:
            return problem
    api = urlsplit(settings.rabbitmq_api_url)
    if api.hostname and not is_loopback(api.hostname):
        if api.scheme != "https":
            return (
                f"LIENTHONG_RABBITMQ_API_URL: the management API at {api.hostname} must be "
                "reached over https:// (its credentials create broker users)"
            )
        if unquote(api.username or "guest") == "guest":
            return (
                f"LIENTHONG_RABBITMQ_API_URL: the management API at {api.hostname} must be "
                "reached with its own credentials, never guest"
            )
    return None


def remote_database_hosts(url: str) -> list[str]:
    """The hosts ``url`` lists that are not this machine (a socket directory is local).

    Raises :class:`ValueError` as :func:`database_hosts` does.
    """
    return [h.host for h in database_hosts(url) if not is_loopback(h.host)]


def _database_problem(name: str, url: str) -> str | None:
    """What is unsafe in the database URL of setting ``name``, or ``None``."""
    database = urlsplit(url)
    query = parse_qs(database.query)
    # Every host the URL lists (a standby becomes the primary one day).
    try:
        remote = remote_database_hosts(url)
    except ValueError as error:
        return f"{name}: {error}"
    if not remote:
        return None
    host = ", ".join(remote)
    if query.get("sslmode") != ["verify-full"]:
        return (
            f"{name}: the database at {host} needs sslmode=verify-full "
            "(TLS with the server's certificate and host name checked)"
        )
    user = unquote(database.username or "") or next(iter(query.get("user", [])), "")
    password = database.password or query.get("password") or query.get("sslcert")
    if (not user or user in SUPERUSER_ROLES) and not password:
        return (
            f"{name}: logging in to {host} as superuser "
            f"{user or '(unnamed)'!r} without a password is refused; use a role of "
            "the exchange with a password or a client certificate"
        )
    return None
