#!/usr/bin/env bash
# Set up this machine (services, .venv), prepare the exchange, and run the
# four-level demo: documents moving between the Government Office, a
# ministry, Hà Nội, a department, a district of Phú Thọ and a commune.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# The demo gets a database of its own, made fresh each run, so it never
# touches a real exchange's record.
export LIENTHONG_DATABASE_URL=${LIENTHONG_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/lienthong_demo}
db=${LIENTHONG_DATABASE_URL##*/}
psql "${LIENTHONG_DATABASE_URL%/*}/postgres" -q -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" \
     -c "CREATE DATABASE \"$db\"" >/dev/null
rm -rf var/demo-keys
.venv/bin/lienthong init
exec .venv/bin/lienthong demo --keys var/demo-keys "$@"
