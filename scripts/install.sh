#!/usr/bin/env bash
# Install container-snapd on a host (run as root), or remove it again.
#
#   scripts/install.sh                 install or upgrade (idempotent)
#   scripts/install.sh --uninstall     remove what the install put in place
#
# What lands where (under --prefix, default /):
#   /opt/container-snapd/                    its own virtualenv (bin/snapd), docs, install manifest
#   /etc/systemd/system/container-snapd.{service,socket}
#   /etc/systemd/system/container-snapd.service.d/50-pools.conf
#                                            ReadWritePaths= for the configured pool roots
#   /etc/container-snapd/config.toml         commented defaults; never overwritten once there
#   /usr/share/bash-completion/completions/snapd
#   group container-snapd                    may connect to the API socket
# The state directory (/var/lib/container-snapd, made by systemd) and every
# snapshot are never touched, by install or uninstall.  The config file is
# removed by --uninstall only if it is still exactly as installed.
#
# Options:
#   --prefix DIR     install into DIR as if it were / (for tests and image
#                    builds): no systemctl, and the group is only added when
#                    DIR/etc/group exists (groupadd --prefix)
#   --uninstall      remove the files listed in the install manifest
#   --python PY      interpreter for the virtualenv (default python3, >= 3.11)
#   --pip-args ARGS  extra arguments for `pip install` (e.g. "--no-deps")
#   --no-systemctl   do not run systemctl (implied by --prefix)
#   --enable         also `systemctl enable --now container-snapd.socket`
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=/
PYTHON=python3
PIP_ARGS=""
UNINSTALL=0
SYSTEMCTL=1
ENABLE=0
GROUP=container-snapd

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) ROOT=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) ROOT=${1#*=}; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --python) PYTHON=${2:?}; shift 2 ;;
    --pip-args) PIP_ARGS=${2-}; shift 2 ;;
    --pip-args=*) PIP_ARGS=${1#*=}; shift ;;
    --no-systemctl) SYSTEMCTL=0; shift ;;
    --enable) ENABLE=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

ROOT=$(mkdir -p "$ROOT" && cd "$ROOT" && pwd)
if [ "$ROOT" != / ]; then
  SYSTEMCTL=0
  R=$ROOT
else
  R=""
  [ "$(id -u)" = 0 ] || die "run as root (or give --prefix DIR)"
fi
command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ] || SYSTEMCTL=0

OPT=$R/opt/container-snapd
VENV=$OPT
SHARE=$OPT/share/container-snapd
MANIFEST=$SHARE/install-manifest
UNITDIR=$R/etc/systemd/system
DROPIN=$UNITDIR/container-snapd.service.d
CONFDIR=$R/etc/container-snapd
CONFIG=$CONFDIR/config.toml
COMPLETION=$R/usr/share/bash-completion/completions/snapd

digest() { sha256sum "$1" | cut -d' ' -f1; }

# -- uninstall -------------------------------------------------------------------------

if [ "$UNINSTALL" = 1 ]; then
  [ -f "$MANIFEST" ] || die "nothing to uninstall: $MANIFEST not found"
  manifest=$(cat "$MANIFEST")
  if [ "$SYSTEMCTL" = 1 ]; then
    systemctl disable --now container-snapd.socket container-snapd.service >/dev/null 2>&1 || true
  fi
  # manifest lines: "file SHA256 PATH" (PATH relative to the root), "dir PATH", "group NAME"
  while read -r kind a b; do
    case "$kind" in
      file)
        p=$R/$b
        if [ "$b" = etc/container-snapd/config.toml ] && [ -f "$p" ] && [ "$(digest "$p")" != "$a" ]; then
          say "keeping $p: it was changed after installation"
          continue
        fi
        rm -f "$p" ;;
      group)
        if [ "$R" = "" ] || [ -f "$R/etc/group" ]; then
          members=$(grep "^$a:" "$R/etc/group" 2>/dev/null | cut -d: -f4 || true)
          if [ -n "$members" ]; then
            say "keeping group $a: it has members ($members)"
          else
            groupdel ${R:+--prefix "$R"} "$a" 2>/dev/null || true
          fi
        fi ;;
    esac
  done <<< "$manifest"
  rm -rf "$VENV"
  # directories the install created, deepest first, only if now empty
  { grep '^dir ' <<< "$manifest" || true; } | cut -d' ' -f2- | LC_ALL=C sort -r | while read -r d; do
    rmdir "$R/$d" 2>/dev/null || true
  done
  [ "$SYSTEMCTL" = 1 ] && systemctl daemon-reload || true
  say "removed container-snapd (state directory and snapshots left in place)"
  exit 0
fi

# -- install ---------------------------------------------------------------------------

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || die "$PYTHON is older than Python 3.11"

NEW_MANIFEST=$(mktemp)
trap 'rm -f "$NEW_MANIFEST"' EXIT
CHANGED=0

# Directories that did not exist before are recorded, so --uninstall can
# remove them again (when empty); ones that existed (etc/systemd/system) stay.
mkdirs() {
  local d rel
  for d in "$@"; do
    rel=${d#"$R"/}
    local parts="" part
    IFS=/ read -ra segs <<< "$rel"
    for part in "${segs[@]}"; do
      parts=${parts:+$parts/}$part
      if [ ! -d "$R/$parts" ]; then
        mkdir -m 0755 "$R/$parts"
        echo "dir $parts" >> "$NEW_MANIFEST"
      elif [ -f "$MANIFEST" ] && grep -qxF "dir $parts" "$MANIFEST"; then
        echo "dir $parts" >> "$NEW_MANIFEST"
      fi
    done
  done
}

# put SRC DEST MODE: copy when different; record in the manifest
put() {
  local src=$1 dest=$2 mode=$3
  if [ ! -f "$dest" ] || ! cmp -s "$src" "$dest"; then
    install -m "$mode" "$src" "$dest"
    CHANGED=1
    say "installed ${dest#"$R"}"
  fi
  echo "file $(digest "$dest") ${dest#"$R"/}" >> "$NEW_MANIFEST"
}

mkdirs "$OPT" "$SHARE" "$UNITDIR" "$DROPIN" "$CONFDIR" "$(dirname "$COMPLETION")" \
  "$OPT/share/doc/container-snapd"

# 1. the virtualenv, rebuilt only when the source changed
STAMP=$SHARE/source-digest
src_digest=$(cd "$SRC" && { echo pyproject.toml; echo README.md; find snapd backends -type f -name '*.py'; } \
  | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -d' ' -f1)
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
  rm -f "$STAMP"
fi
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$src_digest" ] || [ ! -x "$VENV/bin/snapd" ]; then
  build=$(mktemp -d)
  cp -r "$SRC/pyproject.toml" "$SRC/README.md" "$SRC/snapd" "$SRC/backends" "$build/"
  find "$build" -name __pycache__ -prune -exec rm -rf {} +
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade $PIP_ARGS "$build"
  rm -rf "$build"
  echo "$src_digest" > "$STAMP"
  CHANGED=1
  say "installed the package into ${VENV#"$R"}"
fi
put "$SRC/README.md" "$OPT/share/doc/container-snapd/README.md" 0644
[ -f "$SRC/systemd/zfs-host-mounts.conf" ] && put "$SRC/systemd/zfs-host-mounts.conf" "$OPT/share/doc/container-snapd/zfs-host-mounts.conf" 0644

# 2. the config file: commented defaults, only if there is none
if [ ! -f "$CONFIG" ]; then
  tmp=$(mktemp)
  cat > "$tmp" <<'EOF'
# container-snapd configuration (snapd serve --config /etc/container-snapd/config.toml).
# Every key is optional; the values shown are the defaults.  Flags given to
# `snapd serve` win over this file.  After a change: systemctl reload container-snapd
# (log settings) or systemctl restart container-snapd (everything else).

# Unix socket for host tooling and the CLI.  With socket activation
# (container-snapd.socket) systemd creates it instead.
#socket = "/run/container-snapd/api.sock"

# TCP listeners, "HOST:PORT" (bearer tokens); none by default.
#listen = ["127.0.0.1:7070"]

# Where the SQLite store lives.
#state_dir = "/var/lib/container-snapd"

# Pools, "BACKEND:ROOT": overlay, btrfs, zfs or auto (zfs for a dataset name,
# btrfs for a directory on btrfs, overlay for any other directory).
# Directory roots must also be writable for the service: scripts/install.sh
# writes them into container-snapd.service.d/50-pools.conf.
#pools = ["zfs:tank/containers", "auto:/var/lib/containers"]

# debug, info, warning or error.
#log_level = "info"

# Log lines as "kv" (logfmt: key=value) or "json".
#log_format = "kv"
EOF
  install -m 0644 "$tmp" "$CONFIG"
  rm -f "$tmp"
  echo "file $(digest "$CONFIG") ${CONFIG#"$R"/}" >> "$NEW_MANIFEST"
  CHANGED=1
  say "installed ${CONFIG#"$R"}"
elif [ -f "$MANIFEST" ] && grep -q " etc/container-snapd/config.toml$" "$MANIFEST"; then
  grep " etc/container-snapd/config.toml$" "$MANIFEST" >> "$NEW_MANIFEST"  # keep ownership of it
fi

# 3. unit files and the pools drop-in
put "$SRC/systemd/container-snapd.service" "$UNITDIR/container-snapd.service" 0644
put "$SRC/systemd/container-snapd.socket" "$UNITDIR/container-snapd.socket" 0644
tmp=$(mktemp)
{
  echo "# Written by scripts/install.sh from the pools in /etc/container-snapd/config.toml:"
  echo "# the service sees the file system read-only except these pool roots."
  echo "# Rerun install.sh (or edit this file) after changing pools, then systemctl daemon-reload."
  echo "[Service]"
  "$PYTHON" - "$CONFIG" <<'EOF'
import sys, tomllib
try:
    with open(sys.argv[1], "rb") as f:
        pools = tomllib.load(f).get("pools", [])
except (OSError, tomllib.TOMLDecodeError):
    pools = []
for spec in pools if isinstance(pools, list) else []:
    _, _, root = str(spec).partition(":")
    if root.startswith("/"):
        print(f"ReadWritePaths=-{root}")
EOF
} > "$tmp"
put "$tmp" "$DROPIN/50-pools.conf" 0644
rm -f "$tmp"

# 4. bash completion (generated from the installed CLI when possible)
tmp=$(mktemp)
if "$VENV/bin/python" -m snapd.cli.completion > "$tmp" 2>/dev/null; then
  put "$tmp" "$COMPLETION" 0644
elif [ -f "$SRC/completion/snapd.bash" ]; then
  put "$SRC/completion/snapd.bash" "$COMPLETION" 0644
fi
rm -f "$tmp"

# 5. the group allowed on the socket
if [ "$R" = "" ] || [ -f "$R/etc/group" ]; then
  if [ "$R" = "" ]; then has_group() { getent group "$GROUP" >/dev/null; }
  else has_group() { grep -q "^$GROUP:" "$R/etc/group"; }; fi
  if ! has_group; then
    groupadd --system ${R:+--prefix "$R"} "$GROUP"
    echo "group $GROUP" >> "$NEW_MANIFEST"
    CHANGED=1
    say "added group $GROUP"
  elif [ -f "$MANIFEST" ] && grep -qxF "group $GROUP" "$MANIFEST"; then
    echo "group $GROUP" >> "$NEW_MANIFEST"
  fi
else
  say "skipping group $GROUP: $R/etc/group does not exist"
fi

# 6. the manifest (sorted, so an unchanged install rewrites nothing)
sorted=$(mktemp)
LC_ALL=C sort -u "$NEW_MANIFEST" > "$sorted"
if [ ! -f "$MANIFEST" ] || ! cmp -s "$sorted" "$MANIFEST"; then
  install -m 0644 "$sorted" "$MANIFEST"
fi
rm -f "$sorted"

if [ "$SYSTEMCTL" = 1 ]; then
  [ "$CHANGED" = 1 ] && systemctl daemon-reload
  if [ "$ENABLE" = 1 ]; then
    systemctl enable --now container-snapd.socket
  fi
  say "done; start with: systemctl enable --now container-snapd.socket container-snapd.service"
else
  say "done (root $ROOT; systemctl not run)"
fi
