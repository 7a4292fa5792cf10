#!/usr/bin/env bash
# Builds stand-ins for the public base images from Debian packages alone, for sites (and CI)
# that cannot reach Docker Hub. Needs root, debootstrap and a Docker engine; reaches only a
# Debian mirror (DEBIAN_MIRROR). Idempotent: images that exist are kept (FORCE=1 rebuilds).
#
#   mnist-serving-base/debian:bookworm      debootstrap --variant=minbase, imported
#   mnist-serving-base/python:3.11-bookworm  Debian's python3 (3.11) with venv and pip
#   mnist-serving-base/haproxy:2.6-bookworm  Debian's haproxy (the load balancer)
#   mnist-serving-base/prometheus:bookworm   Debian's prometheus (monitoring profile)
#
# The project's Dockerfiles rely only on what these share with the official images: a
# `python3` that can make a venv, `useradd`, `haproxy` and `prometheus` on PATH.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
prefix="${MNIST_SERVING_BASE_PREFIX:-mnist-serving-base}"

have() { [ -z "${FORCE:-}" ] && docker image inspect "$1" >/dev/null 2>&1; }

if ! have "$prefix/debian:$suite"; then
    command -v debootstrap >/dev/null || { echo "build-offline: debootstrap is not installed" >&2; exit 2; }
    rootfs="$(mktemp -d /var/tmp/mnist-serving-rootfs.XXXXXX)"
    trap 'rm -rf "$rootfs"' EXIT
    echo "build-offline: debootstrap $suite from $mirror"
    debootstrap --variant=minbase --include=ca-certificates "$suite" "$rootfs" "$mirror" >/dev/null
    printf 'deb %s %s main\ndeb %s %s-updates main\n' "$mirror" "$suite" "$mirror" "$suite" \
        >"$rootfs/etc/apt/sources.list"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    tar -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["bash"]' \
        - "$prefix/debian:$suite" >/dev/null
    echo "build-offline: $prefix/debian:$suite"
fi

for spec in python:3.11-bookworm haproxy:2.6-bookworm prometheus:bookworm; do
    name="${spec%%:*}"
    if ! have "$prefix/$spec"; then
        docker build --quiet --build-arg "DEBIAN_BASE=$prefix/debian:$suite" \
            -f "$here/$name.Dockerfile" -t "$prefix/$spec" "$here" >/dev/null
        echo "build-offline: $prefix/$spec"
    fi
done
