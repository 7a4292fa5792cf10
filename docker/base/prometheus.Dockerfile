# Stand-in for prom/prometheus, from Debian's prometheus package (see build-offline.sh): the
# same entry point, config path, data directory and user as the official image.
ARG DEBIAN_BASE=mnist-serving-base/debian:bookworm
FROM ${DEBIAN_BASE}
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /prometheus \
    && chown nobody:nogroup /prometheus \
    && test -x /bin/prometheus
# hadolint ignore=DL3066
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
