#!/usr/bin/env bash
# Install everything peerserve needs on a Debian/Ubuntu machine, as root, into a virtual environment
# (default .venv in the repository; PEERSERVE_VENV overrides). Idempotent: a second run changes nothing.
#   apt: python3, venv, headers, and what scripts/install-solver.sh needs
#   pip: peerserve (editable) with the solver, agent and dev extras
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PEERSERVE_VENV:-.venv}
# pip lists index folders that some machines lack; those warnings are noise here
quiet_pip() { "$@" 2> >(grep -v "^WARNING: Location" >&2); }

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
command -v gcc >/dev/null || need_apt+=(gcc)
if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "bootstrap: apt-get install ${need_apt[*]} python3-dev"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" python3-dev >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "bootstrap: creating virtual environment $venv"
  python3 -m venv "$venv"
fi
venv=$(cd "$venv" && pwd)
quiet_pip "$venv/bin/python" -m pip install -q -e ".[solver,agent,dev]"
quiet_pip bash scripts/install-solver.sh --python "$venv/bin/python"
echo "bootstrap: ready ($venv/bin/peerserve)"
