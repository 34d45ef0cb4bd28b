#!/usr/bin/env bash
# Fill build-images.sh's root-file-system cache: scripts/rootfs-cache.sh CACHE CODENAME makes sure that
# CACHE/python-rootfs-CODENAME.tar holds a complete python3 root file system (mmdebstrap from the machine's own apt
# sources); an existing non-empty one is reused. Needs root for mmdebstrap.
#
# Safe for concurrent builders: the Docker cluster test starts its engines at once and each runs build-images.sh,
# so on an empty cache (a fresh machine) several fill it together. The check, the build and the rename run under
# flock on CACHE/.rootfs.lock and the check is made again inside the lock (the first builder builds, the others
# wait and reuse its file); the build writes a mktemp file of its own in CACHE and only a complete build is renamed
# over the cache file, so the cache is never a partial file or a mix of writers.
#
# PEERSERVE_ROOTFS_BUILDER is for tests/unit/test_rootfs_cache.py ONLY: an executable run as
# `$PEERSERVE_ROOTFS_BUILDER CODENAME OUT.tar` in mmdebstrap's place (the unit test has no apt sources or time for
# a real root file system). Leave it unset everywhere else.
set -euo pipefail
cache=$1
codename=$2
rootfs="$cache/python-rootfs-$codename.tar"

[ -s "$rootfs" ] && exit 0
mkdir -p "$cache"
exec 9>>"$cache/.rootfs.lock"
flock 9  # released when this script exits
[ -s "$rootfs" ] && exit 0  # another builder filled it while this one waited
partial=$(mktemp -p "$cache" --suffix=.tar "partial-$codename.XXXXXX")
trap 'rm -f "$partial"' EXIT  # a failed or interrupted build leaves nothing behind
if [ -n "${PEERSERVE_ROOTFS_BUILDER:-}" ]; then
  "$PEERSERVE_ROOTFS_BUILDER" "$codename" "$partial"
else
  command -v mmdebstrap >/dev/null || { echo "build-images: mmdebstrap is missing (apt-get install mmdebstrap)" >&2; exit 1; }
  echo "build-images: creating a python3 root file system for $codename (mmdebstrap, ~30 s)"
  mmdebstrap --quiet --variant=essential --include=python3-minimal,libpython3-stdlib --mode=root --format=tar \
    "$codename" "$partial"
fi
chmod 0644 "$partial"  # mktemp makes it 0600; the cache file was always world-readable
mv "$partial" "$rootfs"
