#!/usr/bin/env bash
# Install the peerserve agent on this board (a Jetson with JetPack 5/6, or any Debian/Ubuntu host), as root.
#
#   install.sh [--token TOKEN] [--node-id ID] [--interface IFACE] [--runtime docker|process]
#              [--catalogue FILE] [--source DIR] [--no-start] [--dry-run]
#   install.sh --uninstall [--purge]
#
# What it does (idempotent: a second run changes nothing):
#   1. checks prerequisites and says what is missing: Python >= 3.10, Docker Engine (runtime docker),
#      the NVIDIA container runtime (on a Jetson);
#   2. installs peerserve with its solver stack into /opt/peerserve/venv (the same path as the README's
#      bootstrap: scripts/install-solver.sh builds Ipopt's PyNumero extension against Debian's ASL);
#   3. writes /etc/peerserve/peerserve.toml (mode 600: it holds the cluster token) and a copy of the
#      example catalogue; the first node generates the token and prints it: pass it to the others;
#   4. installs and enables the systemd unit peerserve-agent.service (and jtop.service on a Jetson).
#
# Options:
#   --token TOKEN      the cluster token (>= 16 characters) printed by the first node's install
#   --node-id ID       this node's id, one DNS label (default: the short host name)
#   --interface IFACE  interface (or address) for mDNS and the API (default: the default route's)
#   --runtime R        docker (default on a Jetson or wherever Docker runs) or process
#   --catalogue FILE   model catalogue to install (default: the built-in example)
#   --source DIR       the peerserve source tree to install (default: this script's repository)
#   --no-start         write everything but start and enable nothing (images, chroots, CI)
#   --dry-run          print what would be done, change nothing
#   --uninstall        stop and remove the service and /opt/peerserve; keeps config and data
#   --purge            with --uninstall: also remove /etc/peerserve and /var/lib/peerserve
set -euo pipefail

prefix=/opt/peerserve
etc=/etc/peerserve
data=/var/lib/peerserve
unit=/etc/systemd/system/peerserve-agent.service
source_dir=$(cd "$(dirname "$0")/.." && pwd)
token="" node_id="" interface="" runtime="" catalogue=""
no_start=0 dry_run=0 uninstall=0 purge=0
changed=0

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --token) token="${2:?--token needs a value}"; shift 2 ;;
    --node-id) node_id="${2:?--node-id needs a value}"; shift 2 ;;
    --interface) interface="${2:?--interface needs a value}"; shift 2 ;;
    --runtime) runtime="${2:?--runtime needs a value}"; shift 2 ;;
    --catalogue) catalogue="${2:?--catalogue needs a value}"; shift 2 ;;
    --source) source_dir="${2:?--source needs a value}"; shift 2 ;;
    --no-start) no_start=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option $1" ;;
  esac
done

# Run a command, or print it under --dry-run; every change goes through here.
act() {
  changed=1
  if [ "$dry_run" = 1 ]; then
    echo "would run: $*"
  else
    "$@"
  fi
}

# Write a file only when its content differs (mode applied either way).
put_file() {
  local path=$1 mode=$2 content=$3
  if [ -f "$path" ] && [ "$(cat "$path")" = "$content" ]; then
    [ "$(stat -c %a "$path")" = "$mode" ] || act chmod "$mode" "$path"
    return 0
  fi
  changed=1
  if [ "$dry_run" = 1 ]; then
    echo "would write $path (mode $mode)"
    return 0
  fi
  install -d -m 755 "$(dirname "$path")"
  (umask 077 && printf '%s\n' "$content" > "$path.tmp")
  chmod "$mode" "$path.tmp"
  mv "$path.tmp" "$path"
}

have_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null; }

is_jetson() { [ -f /etc/nv_tegra_release ] || grep -qi jetson /proc/device-tree/model 2>/dev/null; }

if [ "$(id -u)" != 0 ] && [ "$dry_run" = 0 ]; then
  die "run as root (sudo $0 ...), or try --dry-run"
fi

# -- uninstall ---------------------------------------------------------------------------------------
if [ "$uninstall" = 1 ]; then
  if [ -f "$unit" ]; then
    if have_systemd && [ "$no_start" = 0 ]; then
      act systemctl disable --now peerserve-agent.service || true
    fi
    act rm -f "$unit"
    if have_systemd && [ "$no_start" = 0 ]; then act systemctl daemon-reload; fi
  fi
  [ -e "$prefix" ] && act rm -rf "$prefix"
  if [ "$purge" = 1 ]; then
    [ -e "$etc" ] && act rm -rf "$etc"
    [ -e "$data" ] && act rm -rf "$data"
  else
    say "kept $etc and $data (remove them with --uninstall --purge)"
  fi
  say "uninstalled"
  exit 0
fi

# -- 1. prerequisites ----------------------------------------------------------------------------------
missing=()
py=$(command -v python3 || true)
if [ -z "$py" ]; then
  missing+=("python3 >= 3.10 (apt-get install python3 python3-venv)")
elif ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  missing+=("python3 >= 3.10 (found $("$py" --version 2>&1); JetPack 6 ships 3.10)")
fi
if [ -z "$runtime" ]; then
  if is_jetson || command -v docker >/dev/null; then runtime=docker; else runtime=process; fi
fi
case "$runtime" in docker|process) ;; *) die "--runtime must be docker or process" ;; esac
if [ "$runtime" = docker ]; then
  command -v docker >/dev/null || missing+=("Docker Engine (apt-get install docker.io, or Docker's own packages)")
  if is_jetson && ! command -v nvidia-container-runtime >/dev/null; then
    missing+=("NVIDIA container runtime (apt-get install nvidia-container-toolkit; part of JetPack)")
  fi
fi
if [ "${#missing[@]}" -gt 0 ]; then
  for m in "${missing[@]}"; do echo "install.sh: missing: $m" >&2; done
  die "install the missing prerequisites, then run this again"
fi
[ -f "$source_dir/pyproject.toml" ] || die "no peerserve source tree at $source_dir (use --source DIR)"

# -- 2. the software -----------------------------------------------------------------------------------
if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
  act apt-get update -qq
  act env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv python3-dev
fi
if [ ! -x "$prefix/venv/bin/python" ]; then
  act install -d -m 755 "$prefix"
  act "$py" -m venv "$prefix/venv"
fi
want_version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$source_dir/pyproject.toml" | head -n 1)
have_version=$("$prefix/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("peerserve"))' 2>/dev/null || true)
if [ "$have_version" != "$want_version" ] || [ "$dry_run" = 1 ]; then
  act "$prefix/venv/bin/python" -m pip install -q "${source_dir}[solver,agent]"
fi
if [ "$dry_run" = 1 ]; then
  echo "would run: bash $source_dir/scripts/install-solver.sh --python $prefix/venv/bin/python"
elif ! ls "$prefix"/venv/share/pyomo/lib/libpynumero_ASL.* >/dev/null 2>&1; then
  changed=1
  bash "$source_dir/scripts/install-solver.sh" --python "$prefix/venv/bin/python"
fi
if is_jetson && ! "$prefix/venv/bin/python" -c 'import jtop' 2>/dev/null; then
  act "$prefix/venv/bin/python" -m pip install -q jetson-stats
fi

# -- 3. configuration ------------------------------------------------------------------------------------
config="$etc/peerserve.toml"
if [ -f "$config" ]; then
  existing_token=$(sed -n 's/^cluster_token = "\(.*\)"/\1/p' "$config")
  [ -n "$token" ] || token=$existing_token
  [ -n "$node_id" ] || node_id=$(sed -n 's/^node_id = "\(.*\)"/\1/p' "$config")
  [ -n "$interface" ] || interface=$(sed -n 's/^interface = "\(.*\)"/\1/p' "$config")
fi
new_token=0
if [ -z "$token" ]; then
  token=$("$py" -c 'import secrets; print(secrets.token_urlsafe(24))')
  new_token=1
fi
[ "${#token}" -ge 16 ] || die "--token must be at least 16 characters"
if [ -z "$node_id" ]; then
  node_id=$(hostname -s | tr -c 'A-Za-z0-9_\n-' '-' | cut -c1-63)
fi
if [ -z "$interface" ]; then
  interface=$(ip -o route show default 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1)}' | head -n 1)
  [ -n "$interface" ] || interface=all
fi
address=""
if [ "$interface" != all ]; then
  address=$(ip -o -4 addr show dev "$interface" 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')
fi
gpu=false
if is_jetson && [ "$runtime" = docker ]; then gpu=true; fi
if [ -n "$catalogue" ]; then
  [ -f "$catalogue" ] || die "no catalogue file $catalogue"
  put_file "$etc/catalogue.toml" 644 "$(cat "$catalogue")"
elif [ ! -f "$etc/catalogue.toml" ]; then
  put_file "$etc/catalogue.toml" 644 "$(cat "$source_dir/agent/data/catalogue.toml")"
fi
put_file "$config" 600 "# peerserve agent settings (see: peerserve agent --help); written by scripts/install.sh
node_id = \"$node_id\"
host = \"0.0.0.0\"
port = 8400
advertise_address = \"$address\"
interface = \"$interface\"
data_dir = \"$data\"
catalogue = \"$etc/catalogue.toml\"
runtime = \"$runtime\"
docker_gpu = $gpu
cluster_token = \"$token\""
[ -d "$data" ] || act install -d -m 700 "$data"

# -- 4. the service --------------------------------------------------------------------------------------
put_file "$unit" 644 "[Unit]
Description=peerserve agent (ML model serving on edge boards)
Documentation=file://$prefix/README.md
After=network-online.target docker.service
Wants=network-online.target

[Service]
ExecStart=$prefix/venv/bin/peerserve agent --config $config
Restart=on-failure
RestartSec=2
TimeoutStopSec=20
Environment=PYTHONUNBUFFERED=1

[Install]
WantedBy=multi-user.target"
if [ "$no_start" = 0 ] && have_systemd; then
  act systemctl daemon-reload
  systemctl is-enabled --quiet peerserve-agent.service 2>/dev/null || act systemctl enable peerserve-agent.service
  if [ "$changed" = 1 ] || ! systemctl is-active --quiet peerserve-agent.service; then
    act systemctl restart peerserve-agent.service
  fi
  if is_jetson && systemctl list-unit-files jtop.service >/dev/null 2>&1; then
    systemctl is-active --quiet jtop.service || act systemctl enable --now jtop.service
  fi
elif [ "$no_start" = 0 ]; then
  say "no systemd here: start the agent with $prefix/venv/bin/peerserve agent --config $config"
fi

if [ "$new_token" = 1 ]; then
  say "generated the cluster token; install the other nodes with:  --token $token"
fi
if [ "$changed" = 0 ]; then
  say "nothing to change: peerserve $want_version is installed as node $node_id"
else
  say "installed peerserve $want_version as node $node_id (runtime $runtime, interface $interface)"
fi
