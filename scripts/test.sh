#!/usr/bin/env bash
# Run every test against the local RabbitMQ and PostgreSQL (started if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
