#!/usr/bin/env bash
# Runs the whole fault suite at one scale and prints the table RELIABILITY.md
# holds: one row per scenario, as each test's checker printed it (its
# `FAULT-ROW` line, written only once the test's assertions are about to run).
#
#   scripts/fault-suite.sh [SCALE]
#
# SCALE (default 1) sets JETEVENTS_FAULT_SCALE, which multiplies events and
# faults: per unit, 3 SIGKILLs in each tuned `reliability_kill` run (1 in the
# default-retry run), 1 stream-leader kill in each `reliability_cluster` run,
# 20 partition/heal cycles in `reliability_partition`, 20 pause/resume
# cycles in `reliability_pause`, 100 consumer instance SIGKILLs (plus 2) in
# `reliability_consumer`; toolkit state: 1 leader kill and 3 leader
# partitions under event-store appends and 5 projection-runner SIGKILLs
# over 404 events in `eventstore_faults`, 6 saga-host SIGKILLs and 200
# sagas in `saga_faults`, 50 events per key in `partitioned_order` and
# `partitioned_cluster` (their 3 member kills and 1 leader kill are fixed).
# SCALE=50 gives 150 SIGKILLs per tuned kill run and 50 leader kills per
# cluster run: the long run. The memory test is not scaled (1,000,000
# events).
#
# Backend: as for any test (JETEVENTS_TEST_BACKEND, JETEVENTS_NATS_SERVER_BIN,
# JETEVENTS_NATS_IMAGE, ...). Logs: target/fault-suite/<test>.log. Tests run
# one at a time (--test-threads=1): each kills its own servers, and the rows
# are easier to read in order. Exits non-zero if any test failed; its rows
# are still printed.
set -euo pipefail
scale="${1:-1}"
case "$scale" in
  '' | *[!0-9]* | 0) echo "usage: $0 [SCALE >= 1]" >&2; exit 2 ;;
esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
logs="${CARGO_TARGET_DIR:-target}/fault-suite"
mkdir -p "$logs"

tests=(
  reliability_kill
  reliability_cluster
  publish_cluster
  reliability_network
  reliability_restart
  reliability_consumer
  reliability_partition
  reliability_pause
  reliability_memory
  # Toolkit state under the same faults (issue 23, part 4).
  eventstore_faults
  saga_faults
  partitioned_order
  partitioned_cluster
)
failed=()
for test in "${tests[@]}"; do
  echo "== $test (JETEVENTS_FAULT_SCALE=$scale)" >&2
  start=$SECONDS
  if JETEVENTS_FAULT_SCALE="$scale" cargo test --all-features --test "$test" \
      -- --nocapture --test-threads=1 >"$logs/$test.log" 2>&1; then
    echo "   passed in $((SECONDS - start)) s" >&2
  else
    echo "   FAILED after $((SECONDS - start)) s: see $logs/$test.log" >&2
    failed+=("$test")
  fi
done

echo
echo "JETEVENTS_FAULT_SCALE=$scale, $(date -u +%Y-%m-%d)"
echo
echo "| scenario | ops | faults | acked | lost | unexpected | unknown (stored) | refused | duplicates (ops) |"
echo "|---|---|---|---|---|---|---|---|---|"
for test in "${tests[@]}"; do
  grep -o 'FAULT-ROW | .*' "$logs/$test.log" | sed 's/^FAULT-ROW //; s/$/ |/' || true
done

if ((${#failed[@]})); then
  echo "failed: ${failed[*]}" >&2
  exit 1
fi
