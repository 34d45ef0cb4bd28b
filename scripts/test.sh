#!/usr/bin/env bash
# The full test suite: lint (ruff), types (mypy; strict for solver/ and coordinator_election/), tests
# (pytest: the tests marked serial one at a time -- as root the cluster and system tiers, and the service tests that
# need an address, the Docker bridge or a core to themselves -- with the unit tier beside them at the lowest CPU
# priority, then the rest of the service tier; the unit tier and the service tier on two pytest-xdist workers each;
# then a subset of the unit tier under Python 3.10 where a 3.10 interpreter is here, scripts/test-py310.sh). Expects
# scripts/bootstrap.sh to have run.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PEERSERVE_VENV:-.venv}
py="$venv/bin/python"
workers=${PEERSERVE_UNIT_WORKERS:-2}  # the unit tier's pytest-xdist workers (0: in the pytest process itself)
# The same for the service tier's tests not marked serial (0: in the pytest process; a service test that flakes beside
# the other worker gets its module marked serial, as test_connection_cap's timed stalls were).
service_workers=${PEERSERVE_SERVICE_WORKERS:-2}
# Where the unit tier and the service tier's other tests run: beside the serial tests, in one lane at nice 19 (the
# service tests first, while the serial tier runs the cluster tests, which mostly wait; then the unit tier), taking
# only the CPU the serial tests leave while those wait on elections, SWIM periods, boots and stalls; or after them,
# on their own (the service tests, then the unit tier). The unit tier runs beside by default (~8 minutes less on 2
# cores), the service tests after. Beside, they cost either way (docs/test-suite-time.md): in session 26 their
# model servers ran in sessions of their own, at full weight under autogroup scheduling, and the serial tier took
# 23.2 minutes instead of 19.5-20; in session 27, with the servers at the lane's priority (the process runtime's
# keep_priority), the serial tier took 18.2 minutes but the lane 22.9 (the service tests 10.1 of it), and four
# service tests failed: their model servers, starved at nice 19, started too late for the first request (503).
unit_lane=${PEERSERVE_UNIT_LANE:-beside}
service_lane=${PEERSERVE_SERVICE_LANE:-after}
for lane in "PEERSERVE_UNIT_LANE=$unit_lane" "PEERSERVE_SERVICE_LANE=$service_lane"; do
  case "${lane#*=}" in beside | after) ;; *)
    echo "${lane%%=*} must be beside or after, not '${lane#*=}'" >&2
    exit 2
    ;;
  esac
done

# Python 3.10 (JetPack 6): the version-sensitive unit tests (asyncio timeouts and cancellation: agent/aio.py and its
# users; the proxy's reads: the upstream pool's heads and paced bodies, chunked parsing and its loop-turn budget; TLS,
# JSON bounds, TOML settings) in a 3.10 venv of their own, where a 3.10 interpreter is here (none on Debian 12: said
# and skipped). PEERSERVE_PY310_TIER: subset (default), unit (the whole unit tier), off. Not with pytest arguments.
# Its venv is made from the start at the lowest CPU priority (nice 19: pip takes what lint and then the cluster
# tier's first tests, whose timers are seconds, leave; waited for before pytest, it held pytest back ~1 minute),
# and waited for before its own stage.
tier=${PEERSERVE_PY310_TIER:-subset}
py310_pid=""
if [ $# -eq 0 ] && [ "$tier" != off ]; then
  py310_log=$(mktemp)
  py310_extras=""  # empty: test-py310.sh's default, everything (the whole unit tier runs there)
  if [ "$tier" = subset ]; then py310_extras=agent,test; fi
  PEERSERVE_PY310_EXTRAS=$py310_extras nice -n 19 bash scripts/test-py310.sh --prepare >"$py310_log" 2>&1 &
  py310_pid=$!
fi
py310_ready() {
  [ -n "$py310_pid" ] || return 0
  local rc=0
  wait "$py310_pid" || rc=$?
  py310_pid=""
  cat "$py310_log"
  [ "$rc" = 0 ] || echo "py310: preparing the Python 3.10 venv failed ($rc)" >&2
  rm -f "$py310_log"
  return "$rc"
}
lane_pid=""
lane_dir=""
cleanup() {
  if [ -n "$py310_pid" ]; then kill "$py310_pid" 2>/dev/null || true; fi
  if [ -n "$lane_pid" ]; then  # its process group: the pytest runs, their xdist workers and what their tests started
    kill -TERM -- -"$lane_pid" 2>/dev/null || true
    wait "$lane_pid" 2>/dev/null || true
  fi
  rm -f "${py310_log:-}"
  if [ -n "$lane_dir" ]; then rm -rf "$lane_dir"; fi
}
trap cleanup EXIT
# Each stage's header says when it started (minutes:seconds since this script began), so a CI log shows where the
# suite's time goes without a profile.
stage() { printf '== %s (at %d:%02d)\n' "$1" $((SECONDS / 60)) $((SECONDS % 60)); }

stage "ruff"
"$py" -m ruff check .
"$py" -m ruff format --check .
stage "shellcheck"
shellcheck scripts/*.sh .ci/run
stage "mypy"
# mypy's cache outside the checkout where this machine keeps the suite's other caches (root's /var/cache/peerserve,
# as the system tier's board images): a fresh clone's cold check costs ~50 CPU-s here, a warm one ~1 s (it checks
# each file's hash, so another clone's path or a changed file is checked again, not trusted)
mypy_cache=${PEERSERVE_MYPY_CACHE:-}
if [ -z "$mypy_cache" ] && [ "$(id -u)" = 0 ]; then mypy_cache=/var/cache/peerserve/mypy; fi
"$py" -m mypy ${mypy_cache:+--cache-dir "$mypy_cache"}
stage "pytest"
# Every tier runs and reports even when an earlier one failed (a failed serial test used to end the suite there, and
# the tiers running beside it were killed unreported: one CI run showed one tier's failures, the next the others');
# the suite's exit status is the first failure's.
suite_rc=0
failed() { if [ "$suite_rc" = 0 ]; then suite_rc=$1; fi; }
# As root the real parts must be there: a test that needs dockerd fails rather than skips.
if [ "$(id -u)" = 0 ]; then export PEERSERVE_REQUIRE_DOCKER=1; fi
if [ $# -gt 0 ]; then
  "$py" -m pytest "$@"
else
  # The ``serial`` tests one at a time: every cluster and system test (namespaces on one bridge, fixed addresses,
  # booted boards), the service tests on the private Docker Engine (one bridge subnet) and the service modules that
  # mark themselves (a fixed loopback address, or a bound measured on an otherwise idle core; tests/conftest.py).
  # The rest of the service tier: real agents on ports from each worker's own range (the serial tests' own process
  # has a range apart from the workers') with each worker's own cluster token (tests/service/conftest.py), a module
  # to a worker, on $service_workers workers. The unit tier, whose tests share nothing (tmp_path, port 0, no fixed
  # file or address): CPU-bound, on $workers workers. Those that run beside the serial tests (by default the unit
  # tier) run in one lane at nice 19; each one's output is printed at its own stage, so the log reads as one tier
  # after another.
  service_args=(-n "$service_workers" --dist loadfile -m "not serial" tests/service)
  unit_args=(-n "$workers" tests/unit)
  if [ "$service_lane" = beside ] || [ "$unit_lane" = beside ]; then
    lane_dir=$(mktemp -d)
    # lane_run NAME ARGS...: a tier's pytest at nice 19, its output and exit status (with when it ended) to lane_dir
    lane_run() {
      local name=$1 rc=0
      shift
      nice -n 19 "$py" -m pytest "$@" >"$lane_dir/$name.log" 2>&1 || rc=$?
      printf '%s %d:%02d\n' "$rc" $((SECONDS / 60)) $((SECONDS % 60)) >"$lane_dir/$name.rc"
    }
    set -m  # a process group of its own, so that a failure elsewhere ends all of it (cleanup)
    (
      if [ "$service_lane" = beside ]; then lane_run service "${service_args[@]}"; fi
      if [ "$unit_lane" = beside ]; then lane_run unit "${unit_args[@]}"; fi
    ) &
    lane_pid=$!
    set +m
  fi
  "$py" -m pytest -m serial tests/cluster tests/service tests/system || failed $?
  if [ "$service_lane" = after ]; then
    stage "pytest: the service tier's other tests ($service_workers workers)"
    "$py" -m pytest "${service_args[@]}" || failed $?
  fi
  if [ -n "$lane_pid" ]; then
    wait "$lane_pid" || true
    lane_pid=""
  fi
  # lane_report NAME: print a tier that ran beside the serial tests; a failure is the suite's (failed)
  lane_report() {
    local rc ended
    read -r rc ended <"$lane_dir/$1.rc" || { rc=1 ended="?"; }
    cat "$lane_dir/$1.log"
    echo "($1 tier beside the serial tests: ended at $ended, exit status $rc)"
    [ "$rc" = 0 ] || failed "$rc"
  }
  if [ "$service_lane" = beside ]; then
    stage "pytest: the service tier's other tests ($service_workers workers, run beside the serial tests at nice 19)"
    lane_report service
  fi
  if [ "$unit_lane" = beside ]; then
    stage "pytest: the unit tier ($workers workers, run beside the serial tests at nice 19)"
    lane_report unit
  else
    stage "pytest: the unit tier ($workers workers)"
    "$py" -m pytest "${unit_args[@]}" || failed $?
  fi
fi
if [ $# -eq 0 ] && [ "$tier" != off ]; then
  stage "Python 3.10 venv (made while the rest ran)"
  py310_rc=0
  py310_ready || py310_rc=$?
  if [ "$py310_rc" != 0 ]; then
    failed "$py310_rc"
  elif [ "$tier" = unit ]; then
    stage "pytest under Python 3.10 ($tier)"
    bash scripts/test-py310.sh --prepared -n "$workers" tests/unit || failed $?
  else
    stage "pytest under Python 3.10 ($tier)"
    bash scripts/test-py310.sh --prepared -n "$workers" tests/unit/test_aio.py tests/unit/test_lost_cancellation.py \
      tests/unit/test_gather_deadline.py tests/unit/test_upstream_deadline.py tests/unit/test_peer_http.py \
      tests/unit/test_peer_direct.py tests/unit/test_peer_gate.py tests/unit/test_http_chunks.py \
      tests/unit/test_http_half_close.py tests/unit/test_client_answers.py tests/unit/test_agent_config.py \
      tests/unit/test_pin_offloop.py tests/unit/test_upstream_pool.py tests/unit/test_parse_turns.py || failed $?
  fi
fi
if [ "$suite_rc" != 0 ]; then
  stage "failed (exit status $suite_rc: the first failing tier's; every tier's report is above)"
  exit "$suite_rc"
fi
stage "done"
