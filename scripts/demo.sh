#!/usr/bin/env bash
# Set up this machine (services, .venv, the development PKI), prepare the
# exchange, and run the four-level demo: documents moving between the
# Government Office, a ministry, Hà Nội, a department, a district of Phú Thọ
# and a commune; the district and the commune connect through the gateway
# (the axis SDK's protocol), the others over AMQP with TLS, logging in with
# their certificates.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# The demo gets a database of its own, made fresh each run, so it never
# touches a real exchange's record.
export LIENTHONG_DATABASE_URL=${LIENTHONG_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/lienthong_demo}
db=${LIENTHONG_DATABASE_URL##*/}
psql "${LIENTHONG_DATABASE_URL%/*}/postgres" -q -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" \
     -c "CREATE DATABASE \"$db\"" >/dev/null
# ... and a RabbitMQ vhost of its own, made fresh too (through the management
# API, with the machine's settings); LIENTHONG_AMQP_URL points into it.
LIENTHONG_AMQP_URL=$(.venv/bin/python - lienthong-demo <<'PY'
import asyncio
import sys
from urllib.parse import quote, urlsplit, urlunsplit

from exchange.broker.admin import BrokerAdmin
from exchange.settings import Settings, url_user


async def fresh_vhost(vhost: str) -> None:
    settings = Settings()
    admin = BrokerAdmin.from_settings(settings)
    await admin.delete_vhost(vhost)
    grant = (admin.user, url_user(settings.amqp_url))
    await admin.create_vhost(vhost, description="lienthong demo", grant=grant)
    print(urlunsplit(urlsplit(settings.amqp_url)._replace(path="/" + quote(vhost, safe=""))))


asyncio.run(fresh_vhost(sys.argv[1]))
PY
)
export LIENTHONG_AMQP_URL
# The agencies' certificates come from the development CA, which the broker
# trusts: they log in with them, no password.
pki=${LIENTHONG_DEV_PKI:-/etc/lienthong/tls}
rm -rf var/demo-keys
mkdir -p var/demo-keys
ln -s "$pki/ca.cert.pem" var/demo-keys/ca.cert.pem
ln -s "$pki/ca.key.pem" var/demo-keys/ca.key.pem
.venv/bin/lienthong init
exec .venv/bin/lienthong demo --keys var/demo-keys --via-gateway --certificate-login "$@"
