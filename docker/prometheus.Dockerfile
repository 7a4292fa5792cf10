# Prometheus for the compose `monitoring` profile, with deploy/prometheus/prometheus.yml.
# PROMETHEUS_BASE: the official image, a mirror's copy, or the offline stand-in from
# docker/base/build-offline.sh (Debian's prometheus, same entry point and paths).
ARG PROMETHEUS_BASE=prom/prometheus:v3.4.1
FROM ${PROMETHEUS_BASE}
COPY deploy/prometheus/prometheus.yml /etc/prometheus/prometheus.yml
