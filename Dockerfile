# backup-sidecar: label-driven backups of Docker volumes.
#
#   docker build -t backup-sidecar .
#   docker build --build-arg BASE_IMAGE=backup-sidecar-test/python-base:bookworm -t backup-sidecar:test .
#
# Any base with python3 >= 3.11 and the venv module works: the official
# python:3.12-slim (default), or Debian bookworm with python3-venv (python 3.11).
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

# pip settings for the build only (not kept in the image): set these when pip
# must use a mirror. HTTP(S)_PROXY / NO_PROXY are Docker's predefined build args.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_DEFAULT_TIMEOUT
# Optional extras of the project installed into the image (comma separated,
# unknown names are ignored).
ARG EXTRAS=s3,metrics
ARG VERSION=0.1.0

LABEL org.opencontainers.image.title="backup-sidecar" \
      org.opencontainers.image.description="Label-driven backup sidecar for Docker Compose stacks: scheduled, checksummed, compressed volume archives." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# Debian's system python refuses `pip install` (PEP 668): use a venv.
# The dependency layer depends on pyproject.toml only, so editing sidecar/
# reinstalls just the project itself (no download).
# Worker containers run from this image (sidecar/worker): GNU tar and gzip (essential in
# Debian) piped to zstd (about 1 MB). Installed first: this layer changes only when the list
# does. apt's lists and caches go in the same layer (they would weigh 80 MB).
# rclone (Debian's package, 56 MiB installed) drives rclone destinations (BACKUP_DESTINATIONS);
# --build-arg WITH_RCLONE=false leaves it out (S3 and a mounted disk need no rclone).
ARG WITH_RCLONE=true
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends zstd \
        $(if [ "$WITH_RCLONE" = true ]; then echo rclone; fi); \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log; \
    tar --version | head -n 1 | grep -q 'GNU tar'; gzip --version >/dev/null; zstd --version; \
    if [ "$WITH_RCLONE" = true ]; then rclone version | head -n 1; fi

WORKDIR /src
COPY pyproject.toml ./
RUN set -eu; \
    python3 -m venv /opt/venv; \
    if [ -z "${PIP_CERT:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then \
        export PIP_CERT=/etc/ssl/certs/ca-certificates.crt; \
    fi; \
    /opt/venv/bin/python -c 'import os, tomllib; \
p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
opt = p.get("optional-dependencies", {}); \
extras = [e.strip() for e in os.environ.get("EXTRAS", "").split(",") if e.strip()]; \
print("\n".join(list(p.get("dependencies", [])) + [r for e in extras for r in opt.get(e, [])]))' \
        > /tmp/requirements.txt; \
    cat /tmp/requirements.txt; \
    /opt/venv/bin/pip install "setuptools>=61" wheel -r /tmp/requirements.txt; \
    rm -f /tmp/requirements.txt

COPY entrypoint.sh /usr/local/bin/entrypoint.sh
RUN chmod 0755 /usr/local/bin/entrypoint.sh

ENV PATH=/opt/venv/bin:$PATH \
    BACKUP_DIR=/backups \
    PYTHONUNBUFFERED=1
VOLUME /backups

# The entrypoint validates settings, then execs the CLI, so the Python daemon
# is PID 1 and receives SIGTERM from `docker stop` directly.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s CMD ["backup-sidecar", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["run"]

# The project itself last: a code change rebuilds only this layer (no download).
# README.md is the package's readme (pyproject); the glob keeps the build
# working in a tree that has none yet.
COPY pyproject.toml README.md* ./
COPY sidecar ./sidecar
RUN set -eu; \
    /opt/venv/bin/pip install --no-deps --no-build-isolation /src; \
    /opt/venv/bin/pip check; \
    rm -rf /src/build /src/*.egg-info
WORKDIR /
