#!/usr/bin/env bash
# Makes a docker engine answer and builds the local NATS image from the pinned
# binary, for the test harness's docker backend.
#
#   nats/docker-engine.sh start NATS_SERVER_BIN   # prints "started" if it started dockerd
#   nats/docker-engine.sh stop                    # stops the dockerd that `start` started
#
# When no engine answers and we are root, it installs Debian's docker.io and runs
# `dockerd --bridge=none --iptables=false` in the background: these machines have
# no registry and no bridge networking, so containers use host networking on
# 127.0.0.1 and the image is imported from the binary, not pulled.
set -euo pipefail

IMAGE="${JETEVENTS_NATS_IMAGE:-jetevents/nats:2.15.1}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state="$root/.tools/dockerd"

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

start() {
  local nats_bin="$1"
  if ! engine_answers; then
    if [ "$(id -u)" != 0 ]; then
      echo "no docker engine answers and we are not root: docker backend unavailable" >&2
      return 1
    fi
    if ! command -v dockerd >/dev/null 2>&1; then
      echo "installing docker.io (Debian) for dockerd" >&2
      if ! DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io >/dev/null 2>&1; then
        apt-get update >/dev/null 2>&1
        DEBIAN_FRONTEND=noninteractive apt-get install -y docker.io >/dev/null
      fi
    fi
    mkdir -p "$state"
    echo "starting dockerd (--bridge=none --iptables=false)" >&2
    nohup dockerd --bridge=none --iptables=false --pidfile "$state/dockerd.pid" \
      >"$state/dockerd.log" 2>&1 &
    for _ in $(seq 1 60); do
      engine_answers && break
      sleep 0.5
    done
    if ! engine_answers; then
      echo "dockerd did not answer; log:" >&2
      tail -20 "$state/dockerd.log" >&2
      return 1
    fi
    touch "$state/started-by-us"
    echo started
  fi
  if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "building $IMAGE from $nats_bin with docker import" >&2
    local dir
    dir="$(mktemp -d)"
    cp "$nats_bin" "$dir/nats-server"
    # The server needs a writable /tmp for its store; an empty folder gives one.
    mkdir -p "$dir/tmp" && chmod 1777 "$dir/tmp"
    tar -C "$dir" -c nats-server tmp | docker import -c 'ENTRYPOINT ["/nats-server"]' - "$IMAGE" >/dev/null
    rm -rf "$dir"
  fi
}

stop() {
  # Containers the harness left (a test process killed hard) go first.
  if engine_answers; then
    docker ps -aq --filter label=jetevents-testcontainers | xargs -r docker rm -f >/dev/null 2>&1 || true
  fi
  if [ -f "$state/started-by-us" ] && [ -f "$state/dockerd.pid" ]; then
    local pid
    pid="$(cat "$state/dockerd.pid")"
    echo "stopping the dockerd we started (pid $pid)" >&2
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    rm -f "$state/started-by-us"
  fi
}

case "${1:-}" in
  start) start "${2:?path of nats-server}" ;;
  stop) stop ;;
  *) echo "usage: $0 start NATS_SERVER_BIN | stop" >&2; exit 2 ;;
esac
