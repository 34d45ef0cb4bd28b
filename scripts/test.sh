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
echo "== shellcheck"
shellcheck scripts/*.sh .ci/run
echo "== mypy"
"$py" -m mypy
echo "== pytest"
# As root the real parts must be there: a test that needs dockerd fails rather than skips.
if [ "$(id -u)" = 0 ]; then export PEERSERVE_REQUIRE_DOCKER=1; fi
"$py" -m pytest "$@"
