#!/usr/bin/env bash
# A Docker engine for the compose test (and for people on a bare Debian 12 machine).
#   docker/engine.sh install   docker.io 26, docker-buildx and docker-compose 2 from Debian's
#                              trixie suite (pinned to those packages alone), and debootstrap
#   docker/engine.sh start     start dockerd unless an engine already answers; prints
#                              `started`, `running` (someone else's) or `unavailable`
#   docker/engine.sh stop      stop the dockerd that `start` started
# The engine keeps its data in MNIST_SERVING_DOCKER_ROOT (default /var/lib/mnist-serving-docker);
# the compose test removes the images it builds, and `stop` prunes the build cache.
set -euo pipefail
root="${MNIST_SERVING_DOCKER_ROOT:-/var/lib/mnist-serving-docker}"
pidfile=/run/mnist-serving-dockerd.pid
log="${MNIST_SERVING_DOCKER_LOG:-/var/log/mnist-serving-dockerd.log}"

install() {
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    docker buildx version >/dev/null 2>&1 || missing+=(docker-buildx)
    docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
    if [ ${#missing[@]} -gt 0 ]; then
        # Bookworm's docker.io (20.10) has no buildx; trixie's has, with BuildKit.
        cat >/etc/apt/sources.list.d/mnist-serving-trixie.sources <<'SOURCES'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
        cat >/etc/apt/preferences.d/mnist-serving-trixie <<'PIN'
Package: *
Pin: release n=trixie
Pin-Priority: 100

Package: docker.io docker-buildx docker-compose
Pin: release n=trixie
Pin-Priority: 990
PIN
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t trixie docker.io docker-buildx docker-compose
    fi
    if ! command -v debootstrap >/dev/null; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
    fi
}

start() {
    if docker info >/dev/null 2>&1; then echo running; return; fi
    if ! command -v dockerd >/dev/null || [ "$(id -u)" != 0 ]; then echo unavailable; return; fi
    mkdir -p "$root"
    nohup dockerd --data-root "$root" --pidfile "$pidfile" >"$log" 2>&1 &
    for _ in $(seq 120); do
        if docker info >/dev/null 2>&1; then echo started; return; fi
        sleep 0.5
    done
    echo "engine.sh: dockerd did not answer within 60 s; see $log" >&2
    echo unavailable
}

stop() {
    [ -f "$pidfile" ] || return 0
    docker builder prune -af >/dev/null 2>&1 || true
    local pid
    pid="$(cat "$pidfile")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 60); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.5
    done
    kill -9 "$pid" 2>/dev/null || true
}

case "${1:-}" in
install | start | stop) "$1" ;;
*)
    echo "usage: docker/engine.sh install|start|stop" >&2
    exit 2
    ;;
esac
