#!/bin/sh
# Entry point of PostgreSQL in deploy/compose.yaml: `postgres-start.sh primary`
# or `postgres-start.sh standby`. Puts the TLS files in place for the postgres
# user, makes the standby's data folder with pg_basebackup from the primary
# on its first start, then starts the image's own entry point (which drops
# to postgres). On the primary, the image's first start runs
# postgres-init.sh (roles, TLS-only access).
set -eu
role="$1"
tls=/var/lib/postgresql/tls
install -d -m 0700 -o postgres -g postgres "$tls"
install -m 0644 -o postgres -g postgres /run/secrets/ca.pem "$tls/ca.pem"
install -m 0644 -o postgres -g postgres /run/secrets/postgres_tls_cert "$tls/cert.pem"
install -m 0600 -o postgres -g postgres /run/secrets/postgres_tls_key "$tls/key.pem"

if [ "$role" = standby ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    install -d -m 0700 -o postgres -g postgres "$PGDATA"
    # -R writes primary_conninfo (with these TLS settings) and standby.signal;
    # the slot keeps on the primary the WAL this standby has not received.
    PGPASSWORD="$(cat /run/secrets/postgres_replication_password)" \
    PGSSLMODE=verify-full PGSSLROOTCERT="$tls/ca.pem" PGAPPNAME=standby_1 \
        gosu postgres pg_basebackup --host=postgres-primary --username=replicator \
        --pgdata="$PGDATA" --wal-method=stream --write-recovery-conf \
        --create-slot --slot=standby_1 --checkpoint=fast
fi

# Synchronous replication is set by postgres-init.sh with ALTER SYSTEM (not
# here), so that a promoted standby can turn it off (docs/operations.md).
exec docker-entrypoint.sh postgres \
    -c ssl=on \
    -c ssl_cert_file="$tls/cert.pem" \
    -c ssl_key_file="$tls/key.pem" \
    -c ssl_ca_file="$tls/ca.pem" \
    -c wal_keep_size=1GB
