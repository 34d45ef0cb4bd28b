#!/usr/bin/env bash
# The unit tier (or the given pytest arguments) under Python 3.10, JetPack 6's Python, in a venv of its own
# (default .venv310; PEERSERVE_PY310_VENV overrides), installed as scripts/bootstrap.sh installs .venv (the
# constraints file has 3.10 lines), when a 3.10 interpreter is here: $PEERSERVE_PY310, python3.10 on PATH
# (Ubuntu 22.04's python3, JetPack 6), or pyenv's 3.10. Debian 12 ships no 3.10 and nothing fetches one: with none
# found it says so and exits 0 (PEERSERVE_REQUIRE_PY310=1: exits 1). Expects scripts/bootstrap.sh to have run
# (apt packages, the solver's build tools). Usage: test-py310.sh [--prepare | --prepared] [pytest args...]
# (default: tests/unit). --prepare: make and install the venv, run nothing; --prepared: run in the venv a
# --prepare made, installing nothing (scripts/test.sh makes it while lint runs). PyNumero's ASL library does
# not link Python: one built in .venv (scripts/bootstrap.sh) is copied rather than built again.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PEERSERVE_PY310_VENV:-.venv310}
# The extras the venv installs: everything by default (the whole unit tier runs there); scripts/test.sh's subset asks
# for "agent,test" only (its modules import no solver, client model or dev tool): 53 s to make here, where the
# whole set took ~3.5 min and held pytest up ~2 min after lint and types were done.
extras=${PEERSERVE_PY310_EXTRAS:-solver,agent,dev,serving}
install=1
run=1
case "${1:-}" in
  --prepare) run=0; shift ;;
  --prepared) install=0; shift ;;
esac

is_310() { [ -n "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' 2>/dev/null; }
py310=""
pyenv_root=$(pyenv root 2>/dev/null || true)
for candidate in "${PEERSERVE_PY310:-}" "$(command -v python3.10 || true)" "${pyenv_root:-/nonexistent}"/versions/3.10*/bin/python3.10; do
  if is_310 "$candidate"; then py310=$candidate; break; fi
done
if [ -z "$py310" ]; then
  echo "py310: no Python 3.10 interpreter here (PEERSERVE_PY310, python3.10, pyenv): not tested under 3.10"
  [ "${PEERSERVE_REQUIRE_PY310:-0}" = 1 ] && exit 1
  exit 0
fi
echo "py310: $("$py310" -V) ($py310)"
quiet_pip() { "$@" 2> >(grep -v "^WARNING: Location" >&2); }
if [ "$install" = 1 ]; then
  if ! is_310 "$venv/bin/python"; then
    rm -rf "$venv"
    "$py310" -m venv "$venv"
  fi
  venv=$(cd "$venv" && pwd)  # install-solver.sh works in a folder of its own
  quiet_pip "$venv/bin/python" -m pip install -q -c scripts/constraints.txt -e ".[$extras]"
  case ",$extras," in
    *,solver,*)
      built=${PEERSERVE_VENV:-.venv}/share/pyomo
      if ! ls "$venv"/share/pyomo/lib/libpynumero_ASL.* >/dev/null 2>&1 && ls "$built"/lib/libpynumero_ASL.* >/dev/null 2>&1
      then
        mkdir -p "$venv/share" && cp -a "$built" "$venv/share/"
      fi
      quiet_pip bash scripts/install-solver.sh --no-apt --python "$venv/bin/python"
      ;;
  esac
  case ",$extras," in
    *,serving,*) [ -f agent/data/models/digits.json ] || "$venv/bin/python" -m agent.digits build ;;
  esac
elif ! is_310 "$venv/bin/python"; then
  echo "py310: no venv in $venv (run test-py310.sh --prepare first)" >&2
  exit 1
fi
[ "$run" = 1 ] || exit 0
[ $# -gt 0 ] || set -- tests/unit
"$venv/bin/python" -m pytest -q -p no:cacheprovider "$@"
