#!/usr/bin/env bash
# Install the placement solver's numerical stack into a Python environment:
#   apt: libamplsolver-dev g++ cmake make (Debian's AMPL solver library, to build PyNumero's ASL extension)
#   pip: pyomo, cyipopt-wheels (bundles Ipopt 3.14), highspy, scipy, numpy
#   build: Pyomo's PyNumero ASL library, into <env>/share/pyomo (found there by `import solver`)
# Idempotent: installed packages and an existing build are kept. Used by scripts/bootstrap.sh and
# scripts/install.sh (Jetson). Usage: install-solver.sh [--python PATH] [--no-apt]
set -euo pipefail

python=python3
use_apt=1
while [ $# -gt 0 ]; do
  case "$1" in
    --python) python="$2"; shift 2 ;;
    --no-apt) use_apt=0; shift ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-solver.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

apt_packages=(libamplsolver-dev g++ cmake make)
if [ "$use_apt" = 1 ]; then
  missing=()
  for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-solver: apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

"$python" -m pip install -q "pyomo>=6.7" "cyipopt-wheels==1.7.0.dev0" "highspy>=1.7" "scipy>=1.10" "numpy>=1.24"

prefix=$("$python" -c 'import sys; print(sys.prefix)')
pyomo_dir="$prefix/share/pyomo"
if ls "$pyomo_dir"/lib/libpynumero_ASL.* >/dev/null 2>&1; then
  echo "install-solver: PyNumero ASL library already built in $pyomo_dir"
else
  multiarch=$(gcc -print-multiarch)
  mkdir -p "$pyomo_dir"
  echo "install-solver: building PyNumero ASL library into $pyomo_dir"
  (cd "$(mktemp -d)" && PYOMO_CONFIG_DIR="$pyomo_dir" "$python" -m pyomo.contrib.pynumero.build \
     -DASL_INCLUDE_DIR=/usr/include/ampl-netlib-solvers \
     -DASL_LIBRARY="/usr/lib/$multiarch/libamplsolver.so" >/dev/null)
fi
"$python" - <<'PY'
import solver  # sets PYOMO_CONFIG_DIR to the environment's build
import pyomo.environ as pyo
assert pyo.SolverFactory("cyipopt").available(exception_flag=False), "Ipopt via PyNumero is not available"
from pyomo.contrib.appsi.solvers.highs import Highs
assert Highs().available(), "HiGHS is not available"
print("install-solver: Ipopt (cyipopt + PyNumero ASL) and HiGHS are ready")
PY
