#!/usr/bin/env bash
# The full test suite: lint (ruff), types (mypy; strict for solver/ and coordinator_election/), tests
# (pytest: unit, service and, as root, cluster tiers). Expects scripts/bootstrap.sh to have run.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PEERSERVE_VENV:-.venv}
py="$venv/bin/python"

echo "== ruff"
"$py" -m ruff check .
"$py" -m ruff format --check .
echo "== mypy"
"$py" -m mypy
echo "== pytest"
"$py" -m pytest "$@"
