#!/usr/bin/env bash
# The test command: installs what the tests need, then runs format, lint, the
# release checks (docs, dependencies, semver, publish dry runs) and every test of
# the workspace (doc tests included) against real NATS servers.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

nats_bin="$(./nats/install-nats-server.sh | tail -1)"
export JETEVENTS_NATS_SERVER_BIN="$nats_bin"

# The gateway's browser test drives Debian's headless Chromium.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing chromium (Debian) for the gateway's browser test" >&2
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null 2>&1; then
      apt-get update >/dev/null 2>&1
      DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null
    fi
  else
    echo "WARNING: no chromium and not root: the gateway's browser test will fail" >&2
  fi
fi

cleanup() { ./nats/docker-engine.sh stop || true; }
trap cleanup EXIT

if ./nats/docker-engine.sh start "$nats_bin"; then
  # No registry here: use the image imported from the pinned binary, on host
  # networking bound to 127.0.0.1.
  export JETEVENTS_NATS_IMAGE="${JETEVENTS_NATS_IMAGE:-jetevents/nats:2.15.1}"
  export JETEVENTS_DOCKER_NETWORK="${JETEVENTS_DOCKER_NETWORK:-host}"
  export JETEVENTS_REQUIRE_DOCKER=1
else
  echo "WARNING: no docker engine: tests run on the nats-server binary backend only" >&2
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
if ! command -v cargo-deny >/dev/null; then
  cargo install --locked cargo-deny --version 0.20.2
fi
# Licences, duplicate and banned crates, sources; no advisories, which would fetch
# the advisory database.
cargo deny check licenses bans sources
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --all-features --no-deps
./scripts/semver-check.sh
# Packages every crate in dependency order and builds each from its package;
# --workspace lets jetevents resolve the unpublished harness from the workspace;
# --allow-dirty lets a local run check the working tree as it is.
# cargo unpacks the packages it verifies under $CARGO_HOME/registry/src/-<hash>/, the
# hash naming the target directory, and reuses an unpacked crate it finds there: a
# second run from the same path would build the previous run's sources, so drop them.
rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/jetevents*
cargo publish --dry-run --workspace --allow-dirty
cargo test --workspace --all-features --no-fail-fast
