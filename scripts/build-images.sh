#!/usr/bin/env bash
# Build peerserve's local images with no registry, against the Docker Engine in DOCKER_HOST (or the
# default socket):
#   peerserve/python-base:<codename>  a minimal Debian root file system with python3 (mmdebstrap from the
#                                      machine's own apt sources, cached in $PEERSERVE_CACHE), docker import
#   peerserve/modelserver:latest      the stand-in TF-Serving REST server (images/modelserver/Dockerfile)
# Idempotent: an existing base image or cached root file system is reused. Needs root for mmdebstrap. Several may
# run at once (the Docker cluster test's engines): scripts/rootfs-cache.sh fills the cache under a lock.
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${PEERSERVE_CACHE:-/var/cache/peerserve}
# shellcheck source=/dev/null
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
base="peerserve/python-base:$codename"
rootfs="$cache/python-rootfs-$codename.tar"

if ! docker image inspect "$base" >/dev/null 2>&1; then
  bash scripts/rootfs-cache.sh "$cache" "$codename"  # safe when several engines build at once
  echo "build-images: importing $base"
  docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' "$rootfs" "$base" >/dev/null
fi
if [ ! -f agent/data/models/digits.json ]; then
  "${PEERSERVE_VENV:-.venv}/bin/python" -m agent.digits build  # the stand-in image carries the digits weights
fi
echo "build-images: building peerserve/modelserver:latest"
docker build -q --build-arg "BASE=$base" -f images/modelserver/Dockerfile -t peerserve/modelserver:latest . >/dev/null
echo "build-images: done"
