# Stand-in for python:3.11-slim-bookworm, from Debian packages (see build-offline.sh).
ARG DEBIAN_BASE=mnist-serving-base/debian:bookworm
FROM ${DEBIAN_BASE}
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/*
CMD ["python3"]
