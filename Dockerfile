# The lienthong image: one image for every process of the exchange (the
# one-shot `init`, workers, the gateway, the operators' commands), chosen by
# its arguments: `docker run IMAGE worker`, `IMAGE gateway`, `IMAGE audit`.
# Used by deploy/compose.yaml and deploy/k8s/; checked offline by
# tests/unit/test_deploy_files.py (hadolint, and what is copied exists).
FROM python:3.11-slim

# No .pyc written at run time (the root filesystem is read-only in
# deploy/k8s/), logs straight to the container's output, no pip cache kept.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A user of its own: the exchange needs no privilege inside the container.
# A fixed uid, so that a Kubernetes securityContext and host file
# permissions can name it.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/lienthong \
        --create-home --shell /usr/sbin/nologin lienthong

# The project from the repository, without its test dependencies: the
# package, its XSDs, receipt schema and migrations (package data), and what
# pyproject.toml's metadata reads (README.md, LICENSE). The wheels it needs
# (lxml, cryptography, asyncpg, uvloop) are binary: no compiler in the image.
COPY pyproject.toml README.md LICENSE /src/
COPY exchange /src/exchange
RUN pip install /src && rm -rf /src

USER 10001:10001
WORKDIR /var/lib/lienthong
# 8280: the gateway (LIENTHONG_GATEWAY_PORT); 9108: a worker's metrics
# (LIENTHONG_METRICS_PORT); 9128: the gateway's metrics.
EXPOSE 8280 9108 9128
ENTRYPOINT ["lienthong"]
CMD ["--help"]
