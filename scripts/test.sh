#!/usr/bin/env bash
# The full test suite: lint (ruff), types (mypy; strict for solver/ and coordinator_election/), tests
# (pytest: unit, service and, as root, cluster tiers; then a subset of the unit tier under Python 3.10 where a 3.10
# interpreter is here, scripts/test-py310.sh). Expects scripts/bootstrap.sh to have run.
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
# Python 3.10 (JetPack 6): the version-sensitive unit tests (asyncio timeouts and cancellation, TLS, HTTP parsing,
# JSON bounds, TOML settings) in a 3.10 venv of their own, where a 3.10 interpreter is here (none on Debian 12: said
# and skipped). PEERSERVE_PY310_TIER: subset (default), unit (the whole unit tier), off. Not with pytest arguments.
tier=${PEERSERVE_PY310_TIER:-subset}
if [ $# -eq 0 ] && [ "$tier" != off ]; then
  echo "== pytest under Python 3.10 ($tier)"
  if [ "$tier" = unit ]; then
    bash scripts/test-py310.sh tests/unit
  else
    bash scripts/test-py310.sh tests/unit/test_aio.py tests/unit/test_lost_cancellation.py \
      tests/unit/test_gather_deadline.py tests/unit/test_upstream_deadline.py tests/unit/test_peer_http.py \
      tests/unit/test_peer_direct.py tests/unit/test_peer_gate.py tests/unit/test_http_chunks.py \
      tests/unit/test_http_half_close.py tests/unit/test_client_answers.py tests/unit/test_agent_config.py \
      tests/unit/test_pin_offloop.py
  fi
fi
