#!/usr/bin/env bash
# The test command: installs what the suite needs on a fresh Debian machine
# (Debian packages when run as root, a virtualenv with the Python packages),
# then runs pytest. Real pools (loop-mounted btrfs, a zfs-fuse pool, overlayfs
# mounts) are made and removed by the test fixtures themselves.
# Arguments are passed to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
  need=()
  command -v mkfs.btrfs >/dev/null || need+=(btrfs-progs)
  command -v zfs-fuse >/dev/null || need+=(zfs-fuse)
  command -v setfattr >/dev/null || need+=(attr)
  command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
  command -v systemd-analyze >/dev/null || need+=(systemd)
  command -v curl >/dev/null || need+=(curl)
  command -v ip >/dev/null || need+=(iproute2)
  command -v openssl >/dev/null || need+=(openssl)
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing Debian packages: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
else
  echo "not root: btrfs, ZFS and overlayfs tests will be skipped (each says why)"
fi

scripts/venv.sh test
rc=0
.venv/bin/python -m pytest "$@" || rc=$?
if [ "$rc" = 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"
