"""The system of record: PostgreSQL schema (versioned migrations) and queries.

``migrate(pool)`` brings the schema up to date; :mod:`exchange.store.queries`
holds every query, each an async function taking a connection so the caller
owns the transaction; :mod:`exchange.store.records` the rows as values.
"""

from exchange.store.db import Connection, Pool, connect, create_pool
from exchange.store.migrate import ChangedMigrationError, MigrationError, migrate

__all__ = [
    "ChangedMigrationError",
    "Connection",
    "MigrationError",
    "Pool",
    "connect",
    "create_pool",
    "migrate",
]
