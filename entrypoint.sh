#!/bin/sh
# Container entrypoint of backup-sidecar.
#
#   (no args) | run ...     exec `backup-sidecar run ...`
#   backup|list|plan|restore|restore-image|restore-stack|check|prune|sync|healthcheck|version ...   exec `backup-sidecar ...`
#   -h | --help | --option ...                          exec `backup-sidecar ...`
#   any other program (sh, ls, ...)                     exec it as is
#
# The CLI is exec'd, so it is PID 1 and gets `docker stop`'s SIGTERM itself. The CLI checks the
# Docker socket and BACKUP_DIR before every command (sidecar/docker/preflight.py: one source of the
# checks and their messages, for the image and the CLI run on the host alike);
# SIDECAR_SKIP_PREFLIGHT=1 skips them.
#
# The image runs as uid/gid SIDECAR_UID (10001). It reaches the Docker socket through the
# socket's group (Compose: group_add) or a socket proxy (DOCKER_HOST=tcp://...). Started as
# root (`--user 0`), this script gives BACKUP_DIR's files to SIDECAR_UID (a volume written
# by an older image that ran as root), then runs itself again as SIDECAR_UID with the
# socket's group: nothing of the sidecar runs as root. SIDECAR_UID=0 keeps root (not advised).
set -eu

EX_CONFIG=64
SIDECAR_UID=${SIDECAR_UID:-10001}

fail() {
    # One line: the setting, its value, what is expected.
    printf 'backup-sidecar: %s\n' "$*" >&2
    exit "$EX_CONFIG"
}

# The path of the engine's unix socket, or nothing for a remote engine.
socket_path() {
    host=${DOCKER_HOST:-unix:///var/run/docker.sock}
    case "$host" in
        unix://*) printf '%s\n' "${host#unix://}" ;;
    esac
}

# Started as root: BACKUP_DIR's files to SIDECAR_UID, then this script again as that uid,
# with the Docker socket's group (no capabilities kept).
drop_root() {
    command -v setpriv >/dev/null 2>&1 || fail "started as root, but setpriv (util-linux) is missing to drop to uid $SIDECAR_UID; run as uid $SIDECAR_UID, or set SIDECAR_UID=0"
    # Without CAP_SETUID and CAP_CHOWN (cap_drop: ALL) setpriv cannot switch users: say so rather than fail obscurely.
    setpriv --reuid="$SIDECAR_UID" true 2>/dev/null || fail "started as root without the capabilities to drop to uid $SIDECAR_UID (cap_drop?); run as uid $SIDECAR_UID (the image's user), or as root with the default capabilities"
    dir=${BACKUP_DIR:-/backups}
    if [ -d "$dir" ]; then
        moved=$(find "$dir" -xdev -name lost+found -prune -o ! -uid "$SIDECAR_UID" -print \
            -exec chown -h "$SIDECAR_UID:$SIDECAR_UID" {} + | wc -l)
        [ "$moved" -eq 0 ] || printf 'backup-sidecar: gave %s entries of BACKUP_DIR=%s to uid %s\n' "$moved" "$dir" "$SIDECAR_UID" >&2
    fi
    groups=--clear-groups
    sock=$(socket_path)
    if [ -n "$sock" ] && [ -S "$sock" ]; then
        groups="--groups=$(stat -c %g "$sock")"
    fi
    exec setpriv --reuid="$SIDECAR_UID" --regid="$SIDECAR_UID" "$groups" --inh-caps=-all -- "$0" "$@"
}

if [ "$#" -eq 0 ]; then
    set -- run
fi

if [ "$(id -u)" = 0 ] && [ "$SIDECAR_UID" != 0 ]; then
    drop_root "$@"
fi

case "$1" in
    run|backup|list|plan|restore|restore-image|restore-stack|check|prune|sync|healthcheck|version|-*)
        exec backup-sidecar "$@"
        ;;
    *)
        if command -v "$1" >/dev/null 2>&1; then
            exec "$@"
        fi
        # Not a program: let the CLI report the unknown command.
        exec backup-sidecar "$@"
        ;;
esac
