"""The database roles of the exchange: who may change the schema, who only works in it.

Migration 0012 grants the group roles :data:`WORKER_GROUP` and
:data:`GATEWAY_GROUP` what workers and gateways need, nothing more; the
schema and every table belong to the role that applies the migrations (the
owner, ``lienthong init`` with ``LIENTHONG_OWNER_DATABASE_URL``). Login roles
of workers and gateways are members of a group (:func:`create_login`).

:func:`role_powers` reads what the role a process logged in as may do to the
schema, so that a worker started as a superuser or as the owner says so
(:func:`judge_role`): refused off this host, a warning on loopback, where
development runs everything as one superuser.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from exchange.settings import remote_database_hosts
from exchange.store.db import Connection

WORKER_GROUP = "lienthong_worker"
"""The group (NOLOGIN) whose members may do a worker's work: append to the record, keep state."""

GATEWAY_GROUP = "lienthong_gateway"
"""The group (NOLOGIN) whose members may do a gateway's work: its mailbox and submissions."""

OWNER_ROLE = "lienthong_owner"
"""The name the documented set-up gives the schema's owner (any role that migrates is the owner)."""

GROUPS = {"worker": WORKER_GROUP, "gateway": GATEWAY_GROUP}
"""``--group`` of ``lienthong init --create-login``: the group a login role joins."""


class PrivilegedRoleError(RuntimeError):
    """A process would work on a database off this host as a role that can change its schema."""


class LoginExistsError(RuntimeError):
    """The login role to create exists already."""


@dataclass(frozen=True, slots=True)
class RolePowers:
    """What the session's role may do to the exchange's schema beyond its work."""

    role: str
    schema: str
    superuser: bool
    # The schema's tables it owns, directly or as a member of their owner.
    owned_tables: tuple[str, ...]
    owns_schema: bool
    # May create tables (or anything) in the schema.
    creates: bool

    @property
    def can_change_schema(self) -> bool:
        """Whether the role may create, alter, drop or truncate in the schema, or more."""
        return self.superuser or self.owns_schema or self.creates or bool(self.owned_tables)

    def explain(self) -> str:
        """Why the role can change the schema, in one clause (empty when it cannot)."""
        if self.superuser:
            return f"role {self.role!r} is a superuser"
        reasons = []
        if self.owned_tables:
            shown = ", ".join(self.owned_tables[:3])
            more = f" and {len(self.owned_tables) - 3} more" if len(self.owned_tables) > 3 else ""
            reasons.append(f"owns tables {shown}{more}")
        if self.owns_schema:
            reasons.append(f"owns schema {self.schema}")
        if self.creates:
            reasons.append(f"may create in schema {self.schema}")
        return f"role {self.role!r} " + " and ".join(reasons) if reasons else ""


_POWERS = """
SELECT current_user AS role, n.nspname AS schema, r.rolsuper AS superuser,
       pg_has_role(n.nspowner, 'MEMBER') AS owns_schema,
       has_schema_privilege(n.oid, 'CREATE') AS creates,
       array(
           SELECT c.relname::text FROM pg_class c
           WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p')
             AND pg_has_role(c.relowner, 'MEMBER')
           ORDER BY c.relname
       ) AS owned_tables
FROM pg_namespace n, pg_roles r
WHERE n.nspname = current_schema() AND r.rolname = current_user
"""


async def role_powers(conn: Connection) -> RolePowers:
    """What the role of ``conn`` may do to the schema the exchange's tables are in."""
    row = await conn.fetchrow(_POWERS)
    if row is None:
        # No schema on the search path: nothing to change, nothing to work in.
        role = await conn.fetchval("SELECT current_user")
        return RolePowers(str(role), "", False, (), False, False)
    return RolePowers(
        role=row["role"],
        schema=row["schema"],
        superuser=row["superuser"],
        owned_tables=tuple(row["owned_tables"]),
        owns_schema=row["owns_schema"],
        creates=row["creates"],
    )


def judge_role(powers: RolePowers, database_url: str, process: str) -> str | None:
    """Refuse a ``process`` working off this host as a role that can change the schema.

    Raises :class:`PrivilegedRoleError` when the database is on another
    host; returns a warning for the log when it is on this one (development
    runs everything as one superuser); ``None`` when the role is fit.
    """
    if not powers.can_change_schema:
        return None
    try:
        remote = remote_database_hosts(database_url)
    except ValueError:
        remote = []  # the settings refused such a URL already
    what = (
        f"the {process} works on the database at {', '.join(remote) or 'this host'} as a "
        f"role that can change its schema: {powers.explain()}"
    )
    todo = (
        f"give it a login role in {GROUPS.get(process, WORKER_GROUP)} "
        f"(`lienthong init --create-login NAME --group {process}`, docs/operations.md)"
    )
    if remote:
        raise PrivilegedRoleError(f"{what}; refused off this host: {todo}")
    return f"{what}; allowed on this host only (development): {todo}"


def login_url(database_url: str, role: str, password: str) -> str:
    """``database_url`` logging in as ``role`` with ``password`` (same hosts, database, options)."""
    parts = urlsplit(database_url)
    hosts = parts.netloc.rpartition("@")[2]
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{hosts}"
    return urlunsplit(parts._replace(netloc=netloc))


def database_name(database_url: str) -> str:
    """The database a URL names (PostgreSQL's default: the user's name)."""
    parts = urlsplit(database_url)
    return unquote(parts.path[1:]) or unquote(parts.username or "") or "postgres"


async def create_login(conn: Connection, name: str, group: str, password: str) -> None:
    """Create the login role ``name`` with ``password``, member of ``group`` (and of nothing else).

    Needs a superuser, or a role with CREATEROLE (and, from PostgreSQL 16,
    ADMIN OPTION on ``group``). :class:`LoginExistsError` if ``name`` exists.
    """
    if await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
        raise LoginExistsError(f"database role {name!r} exists already")
    # A utility statement takes no parameters: the server quotes the values.
    statement = await conn.fetchval(
        "SELECT format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
        "NOREPLICATION NOBYPASSRLS PASSWORD %L IN ROLE %I', $1::text, $2::text, $3::text)",
        name,
        password,
        group,
    )
    await conn.execute(statement)


_PLAIN_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


def quote_ident(name: str) -> str:
    """``name`` as an SQL identifier: as it is when plain, else in double quotes."""
    if _PLAIN_IDENTIFIER.fullmatch(name):
        return name
    return '"' + name.replace('"', '""') + '"'


def create_login_sql(name: str, group: str) -> str:
    """The statement that makes login role ``name`` in ``group`` (its password left to fill in)."""
    return f"CREATE ROLE {quote_ident(name)} LOGIN PASSWORD 'CHANGE-ME' IN ROLE {group};"


def roles_sql(database: str, *, login: str | None = None, group: str = WORKER_GROUP) -> str:
    """The SQL a superuser runs once to set up the roles (``lienthong init --roles-sql``).

    The owner (:data:`OWNER_ROLE`), the two groups, the database owned by
    the owner, and optionally one login role in ``group``. Passwords are
    left for the operator to fill in.
    """
    lines = [
        "-- Run as a superuser (psql -v ON_ERROR_STOP=1 -f roles.sql), once per cluster;",
        "-- replace each CHANGE-ME by a password of its own.",
        f"CREATE ROLE {OWNER_ROLE} LOGIN PASSWORD 'CHANGE-ME';",
        f"CREATE ROLE {WORKER_GROUP} NOLOGIN;",
        f"CREATE ROLE {GATEWAY_GROUP} NOLOGIN;",
        f"CREATE DATABASE {quote_ident(database)} OWNER {OWNER_ROLE};",
        f"\\connect {quote_ident(database)}",
        "-- PostgreSQL 14 and earlier let every role create in schema public: not here.",
        f"ALTER SCHEMA public OWNER TO {OWNER_ROLE};",
        "REVOKE CREATE ON SCHEMA public FROM PUBLIC;",
    ]
    if login is not None:
        lines.append(create_login_sql(login, group))
    lines.append(
        f"-- Then, as {OWNER_ROLE}: LIENTHONG_OWNER_DATABASE_URL=postgresql://{OWNER_ROLE}:...@HOST/"
        f"{database}?sslmode=verify-full lienthong init"
    )
    return "\n".join(lines) + "\n"
