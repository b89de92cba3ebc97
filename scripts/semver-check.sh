#!/usr/bin/env bash
# Checks the workspace's public API against the latest release tag (v*) with
# cargo-semver-checks: a breaking change without the version bump semver asks
# for fails. Before the first release there is nothing to compare against, so
# the check is skipped (and cargo-semver-checks, a long compile, not installed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
  # A shallow clone may lack the tags and the tagged commit.
  git fetch --quiet --tags --unshallow
fi
baseline="$(git tag --list 'v*' --sort=-v:refname | head -1)"
if [ -z "$baseline" ]; then
  echo "semver check: SKIPPED, no release exists yet (no v* tag); it runs against the latest v* tag once one does"
  exit 0
fi

if ! command -v cargo-semver-checks >/dev/null; then
  cargo install --locked cargo-semver-checks
fi
echo "semver check against $baseline"
cargo semver-checks --workspace --baseline-rev "$baseline"
