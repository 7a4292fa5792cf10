# The load balancer in front of the server replicas: HAProxy with deploy/haproxy/haproxy.cfg.
# LB_BASE: the official haproxy image (2.6 or newer), a mirror's copy, or the offline
# stand-in from docker/base/build-offline.sh (Debian's haproxy 2.6).
ARG LB_BASE=haproxy:2.6
FROM ${LB_BASE}
COPY deploy/haproxy/haproxy.cfg /etc/mnist-serving/haproxy.cfg
# Both the official image and Debian's package create `haproxy`, with different uids.
# hadolint ignore=DL3066
USER haproxy
ENV LB_SERVER_NAME=server \
    LB_GRPC_PORT=50051 \
    LB_HTTP_PORT=8080 \
    LB_CHECK_PORT=8000 \
    LB_MAX_REPLICAS=32 \
    LB_HEAD_TIMEOUT=10s \
    LB_MAX_BODY=16777216
EXPOSE 50051 8080 8404
STOPSIGNAL SIGUSR1
ENTRYPOINT ["haproxy", "-W", "-db", "-f", "/etc/mnist-serving/haproxy.cfg"]
