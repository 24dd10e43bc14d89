#!/usr/bin/env bash
# Run every test against the local RabbitMQ and PostgreSQL (started if needed).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# With no arguments: everything but the tests known to be flaky (pyproject's
# markers say which and why); any arguments are passed to pytest as they are.
if [ $# -eq 0 ]; then
  set -- -m "not known_flaky"
fi
exec .venv/bin/python -m pytest "$@"
