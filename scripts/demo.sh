#!/usr/bin/env bash
# Set up this machine (services, .venv), prepare the exchange, and run the
# four-level demo: documents moving between the Government Office, a
# ministry, Hà Nội, a department, a district of Phú Thọ and a commune; the
# district and the commune connect through the gateway (the axis SDK's
# protocol), the others over AMQP.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# The demo gets a database of its own, made fresh each run, so it never
# touches a real exchange's record.
export LIENTHONG_DATABASE_URL=${LIENTHONG_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/lienthong_demo}
db=${LIENTHONG_DATABASE_URL##*/}
psql "${LIENTHONG_DATABASE_URL%/*}/postgres" -q -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" \
     -c "CREATE DATABASE \"$db\"" >/dev/null
# ... and a RabbitMQ vhost of its own, made fresh too.
vhost=lienthong-demo
api=${LIENTHONG_RABBITMQ_API_URL:-http://guest:guest@127.0.0.1:15672}
curl -fsS -o /dev/null -X DELETE "$api/api/vhosts/$vhost" || true
curl -fsS -o /dev/null -X PUT "$api/api/vhosts/$vhost"
curl -fsS -o /dev/null -X PUT -H 'content-type: application/json' \
     -d '{"configure":".*","write":".*","read":".*"}' "$api/api/permissions/$vhost/guest"
export LIENTHONG_AMQP_URL=${LIENTHONG_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/$vhost}
rm -rf var/demo-keys
.venv/bin/lienthong init
exec .venv/bin/lienthong demo --keys var/demo-keys --via-gateway "$@"
