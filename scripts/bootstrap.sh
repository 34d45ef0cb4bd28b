#!/usr/bin/env bash
# Install everything peerserve needs on a Debian/Ubuntu machine, as root, into a virtual environment
# (default .venv in the repository; PEERSERVE_VENV overrides). Idempotent: a second run changes nothing.
#   apt: python3, venv, headers, and what scripts/install-solver.sh needs
#   pip: peerserve (editable) with the solver, agent, serving and dev extras, at the versions of
#        scripts/constraints.txt (what the suite last passed with); Triton's server binary from
#        the nvidia-pytriton wheel (--no-deps: only its tritonserver is used); the digits model's weights
#   --test: also what the test suite's real parts need: Docker Engine (docker.io), mmdebstrap (local
#           images without a registry), iproute2 (network namespaces), prometheus (scraped in the
#           cluster tier), chromium + chromium-driver (the cluster page in a real browser),
#           systemd-container (systemd-nspawn boots the system tier's Debian boards)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PEERSERVE_VENV:-.venv}
test_deps=0
for arg in "$@"; do
  case "$arg" in
    --test) test_deps=1 ;;
    -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bootstrap.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done
# pip lists index folders that some machines lack; those warnings are noise here
quiet_pip() { "$@" 2> >(grep -v "^WARNING: Location" >&2); }

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
command -v gcc >/dev/null || need_apt+=(gcc)
if [ "$test_deps" = 1 ]; then
  command -v dockerd >/dev/null || need_apt+=(docker.io)
  command -v mmdebstrap >/dev/null || need_apt+=(mmdebstrap)
  command -v ip >/dev/null || need_apt+=(iproute2)
  command -v avahi-daemon >/dev/null || need_apt+=(avahi-daemon)
  command -v avahi-browse >/dev/null || need_apt+=(avahi-utils)
  command -v dbus-daemon >/dev/null || need_apt+=(dbus)
  command -v shellcheck >/dev/null || need_apt+=(shellcheck)
  command -v systemd-nspawn >/dev/null || need_apt+=(systemd-container)  # the system tier boots boards
  command -v prometheus >/dev/null || need_apt+=(prometheus)
  command -v chromium >/dev/null || need_apt+=(chromium)
  command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
  # Triton's Python-backend stub links the system's libpython of the same minor version
  pyver=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  ldconfig -p | grep -q "libpython$pyver.so.1.0" || need_apt+=("libpython$pyver")
fi
# The tests start private daemons (dockerd, avahi, prometheus) of their own; the packages' system services must not
# start on install (they would listen on every interface of this machine).
if [ "${#need_apt[@]}" -gt 0 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
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
# --no-compile, then compileall on every core: pip byte-compiles what it installs one file after another, as in
# scripts/install.sh (session 27, this machine, the pip cache warm, one A/B: 123.7 s for the main install compiling;
# 84.0 s without, then 31.6 s of compileall on both cores)
quiet_pip "$venv/bin/python" -m pip install -q --no-compile -c scripts/constraints.txt -e ".[solver,agent,dev,serving]"
quiet_pip "$venv/bin/python" -m pip install -q --no-compile --no-deps "nvidia-pytriton==0.7.0"
"$venv/bin/python" scripts/compile_venv.py
# Triton 2.51's Python backend stub needs numpy 1.x (agent/runtime/triton.py); kept apart from the venv's own numpy
# (--no-deps: numpy has none, and pip's check otherwise printed nvidia-pytriton's unused dependencies as 9 ERROR lines)
[ -d "$venv/lib/peerserve-triton-site/numpy" ] ||
  quiet_pip "$venv/bin/python" -m pip install -q --no-deps --target "$venv/lib/peerserve-triton-site" "numpy<2"
"$venv/bin/python" -m agent.digits build
quiet_pip bash scripts/install-solver.sh --python "$venv/bin/python"
echo "bootstrap: ready ($venv/bin/peerserve) in ${SECONDS} s"
