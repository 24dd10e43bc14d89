#!/usr/bin/env bash
# Lint, format and types first (seconds), then every test against the local
# RabbitMQ and PostgreSQL (started if needed). Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# Strict, on exchange/ (pyproject.toml [tool.mypy] packages).
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
