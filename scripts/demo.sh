#!/usr/bin/env bash
# The demo: starts a NATS server (the pinned binary, JetStream on a temp store),
# two instances of the demo consumer in one group, and the producer; shows the
# load shared between them, one event retried and one dead-lettered; then shuts
# everything down cleanly.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
count="${1:-20}"

nats_bin="$(./nats/install-nats-server.sh | tail -1)"
cargo build --quiet --examples

work="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

"$nats_bin" -js -a 127.0.0.1 -p "$port" -sd "$work/store" >"$work/server.log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
export NATS_URL="nats://127.0.0.1:$port"
for _ in $(seq 1 50); do
  grep -q "Server is ready" "$work/server.log" && break
  sleep 0.1
done
echo "== nats-server $("$nats_bin" --version | awk '{print $2}') on $NATS_URL"

# The producer creates the stream; start it first so the consumers find it.
echo "== producer: $count events"
./target/debug/examples/producer "$count" 0 | tail -n 3

for instance in a b; do
  ./target/debug/examples/consumer billing "$instance" >"$work/consumer-$instance.log" 2>&1 &
  pids+=("$!")
  consumer_pids+=("$!")
done

# Every event ends handled or dead-lettered; wait for that (bounded).
expected_outcomes="$count"
deadline=$((SECONDS + 60))
while :; do
  done_count=$(cat "$work"/consumer-*.log | grep -cE '^(handled|dead-lettered) ' || true)
  [ "$done_count" -ge "$expected_outcomes" ] && break
  if [ $SECONDS -ge $deadline ]; then
    echo "demo: timed out waiting for the consumers" >&2
    tail -n 20 "$work"/consumer-*.log >&2
    exit 1
  fi
  sleep 0.2
done

# Graceful shutdown: SIGTERM, the runner drains in-flight work and exits 0.
for pid in "${consumer_pids[@]}"; do kill -TERM "$pid"; done
for pid in "${consumer_pids[@]}"; do wait "$pid"; done

for instance in a b; do
  log="$work/consumer-$instance.log"
  echo "== consumer $instance: $(grep -c '^handled ' "$log" || true) handled, $(grep -c '^retrying ' "$log" || true) retried, $(grep -c '^dead-lettered ' "$log" || true) dead-lettered"
  grep -E '^(retrying|dead-lettered|handled .*(flaky|poison))' "$log" | sed "s/^/   /" || true
done
echo "== dead-letter stream"
./target/debug/examples/consumer --list-dead-letters | sed "s/^/   /"
echo "== demo finished cleanly"
