# backup-sidecar: label-driven backups of Docker volumes.
#
#   docker build -t backup-sidecar .
#   docker build --build-arg BASE_IMAGE=backup-sidecar-test/python-base:bookworm -t backup-sidecar:test .
#
# Any base with python3 >= 3.11 and the venv module works: the official
# python:3.12-slim (default), or Debian bookworm with python3-venv (python 3.11).
#
# Two stages: `builder` makes the virtualenv (pip, setuptools and wheel live and die
# there); the final stage is the base plus the runtime packages, that venv without its
# installers, and the entrypoint. It runs as uid/gid 10001 (`sidecar`; Debian's `backup`
# user is uid 34), not root: docs/how-to/security.md says how it reaches the Docker
# socket (the socket's group, or a proxy) and what still runs as root (worker containers).
ARG BASE_IMAGE=python:3.12-slim

# --- builder: the venv ------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder

# pip settings for the build only (not kept in the image): set these when pip
# must use a mirror. HTTP(S)_PROXY / NO_PROXY are Docker's predefined build args.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG PIP_DEFAULT_TIMEOUT
# Optional extras of the project installed into the image (comma separated,
# unknown names are ignored).
ARG EXTRAS=s3,metrics

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

# Debian's system python refuses `pip install` (PEP 668): use a venv.
# The dependency layer depends on pyproject.toml only, so editing sidecar/
# reinstalls just the project itself (no download). /opt/deps is the same venv without
# its installers, for the final stage (its scripts and pyvenv.cfg name /opt/venv, where it
# lands); its own pip removes itself last.
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
    /opt/venv/bin/pip check; \
    rm -f /tmp/requirements.txt; \
    cp -a /opt/venv /opt/deps; \
    /opt/deps/bin/python -m pip uninstall -y -q setuptools wheel pip; \
    find /opt/deps -maxdepth 4 -name 'distutils-precedence.pth' -delete

# The project itself last, into a folder of its own (/opt/app, laid out like the venv):
# a code change rebuilds only this layer and the final stage's small copy of it.
# README.md is the package's readme (pyproject); the glob keeps the build
# working in a tree that has none yet.
COPY pyproject.toml README.md* ./
COPY sidecar ./sidecar
RUN set -eu; \
    /opt/venv/bin/pip install --no-deps --no-build-isolation --prefix /opt/app /src; \
    site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib", vars={"base": "/opt/app"}))'); \
    PYTHONPATH="$site" /opt/deps/bin/python -c 'import sidecar.cli, sidecar.worker, sidecar.tarball.extract'

# --- the image --------------------------------------------------------------------------
FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
# The user the sidecar runs as (and the owner of /backups in the image): fixed numbers, so
# a host folder mounted at /backups can be given to it with `chown 10001:10001`.
ARG APP_UID=10001

LABEL org.opencontainers.image.title="backup-sidecar" \
      org.opencontainers.image.description="Label-driven backup sidecar for Docker Compose stacks: scheduled, checksummed, compressed volume archives." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"

# Runtime packages, one list (the only apt-get of the image). Worker containers run from
# this image (sidecar/worker): GNU tar and gzip (essential in Debian) piped to zstd (about
# 1 MB). apt's lists and caches go in the same layer (they would weigh 80 MB).
# rclone (Debian's package, 56 MiB installed) drives rclone destinations (BACKUP_DESTINATIONS);
# --build-arg WITH_RCLONE=false leaves it out (S3 and a mounted disk need no rclone).
# restic (Debian's package, 0.14) writes and reads BACKUP_FORMAT=restic repositories, in the
# sidecar and in its worker containers (sidecar/store/restic.py).
ARG WITH_RCLONE=true
RUN set -eu; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        zstd \
        restic \
        $(if [ "$WITH_RCLONE" = true ]; then echo rclone; fi) \
        ; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log; \
    tar --version | head -n 1 | grep -q 'GNU tar'; gzip --version >/dev/null; zstd --version; restic version; \
    if [ "$WITH_RCLONE" = true ]; then rclone version | head -n 1; fi

# The backup volume belongs to the sidecar's user (a new volume takes this owner and mode;
# archives and state are 0600/0700 inside it). The home folder is for tools that want one.
RUN set -eu; \
    groupadd --system --gid "$APP_UID" sidecar; \
    useradd --system --uid "$APP_UID" --gid "$APP_UID" --home-dir /home/sidecar --create-home \
        --shell /usr/sbin/nologin sidecar; \
    chmod 0700 /home/sidecar; \
    install -d -o "$APP_UID" -g "$APP_UID" -m 0700 /backups

COPY --from=builder /opt/deps /opt/venv
COPY --from=builder /opt/app/ /opt/venv/
COPY entrypoint.sh /usr/local/bin/entrypoint.sh
# The mode from the build context may have lost its x bit (a checkout on Windows, a tarball).
RUN chmod 0755 /usr/local/bin/entrypoint.sh

# A sidecar run on the host (no BACKUP_WORKER_IMAGE) finds its worker image by this label
# (sidecar/readers/worker.py: IMAGE_LABEL), the newest first. Here, late: the layers above keep their cache.
LABEL backup-sidecar.image="sidecar"

ENV PATH=/opt/venv/bin:$PATH \
    BACKUP_DIR=/backups \
    HOME=/home/sidecar \
    SIDECAR_UID=${APP_UID} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
VOLUME /backups
USER ${APP_UID}:${APP_UID}
WORKDIR /

# The entrypoint validates settings, then execs the CLI, so the Python daemon
# is PID 1 and receives SIGTERM from `docker stop` directly.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s CMD ["backup-sidecar", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["run"]
