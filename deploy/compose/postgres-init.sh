#!/bin/sh
# Run once by the postgres image on the primary's first start (mounted into
# /docker-entrypoint-initdb.d/ by deploy/compose.yaml): the exchange's role,
# which owns its database (`lienthong init` migrates as that role; no
# superuser needed), the standby's replication role, and access from other
# containers over TLS only.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set=replication_password="$(cat /run/secrets/postgres_replication_password)" \
    --set=lienthong_password="$(cat /run/secrets/postgres_lienthong_password)" <<'SQL'
CREATE ROLE replicator WITH REPLICATION LOGIN PASSWORD :'replication_password';
CREATE ROLE lienthong WITH LOGIN PASSWORD :'lienthong_password';
ALTER DATABASE lienthong OWNER TO lienthong;
ALTER SCHEMA public OWNER TO lienthong;
-- A commit returns once a standby holds it, so a failover loses no recorded
-- message (a worker acknowledges a message to RabbitMQ only after its
-- commit). With no standby, commits wait and messages stay in their queues;
-- ALTER SYSTEM (postgresql.auto.conf), so that it can be turned off on a
-- promoted standby left alone (docs/operations.md, "When a component fails").
ALTER SYSTEM SET synchronous_standby_names = '*';
SQL
# The image allows every host with a password, TLS or not: TLS only, and
# replication for the standby's role.
sed -i 's/^host all all all /hostssl all all all /' "$PGDATA/pg_hba.conf"
echo 'hostssl replication replicator all scram-sha-256' >> "$PGDATA/pg_hba.conf"
