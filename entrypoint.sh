#!/bin/sh
# Container entrypoint of backup-sidecar.
#
#   (no args) | run ...     check the settings, then exec `backup-sidecar run ...`
#   backup|list|plan|restore|restore-image|prune|sync|healthcheck|version ...   exec `backup-sidecar ...`
#   -h | --help | --option ...                          exec `backup-sidecar ...`
#   any other program (sh, ls, ...)                     exec it as is
#
# The CLI is exec'd, so it is PID 1 and gets `docker stop`'s SIGTERM itself.
# Set SIDECAR_SKIP_PREFLIGHT=1 to skip the checks below.
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

check_docker_socket() {
    if [ -n "${DOCKER_HOST:-}" ]; then
        case "$DOCKER_HOST" in
            unix://*) sock=${DOCKER_HOST#unix://} ;;
            tcp://?*|ssh://?*|http://?*|https://?*) return 0 ;;  # remote engine: the daemon will tell
            *) fail "DOCKER_HOST=$DOCKER_HOST is not supported; expected unix:///path/to/docker.sock, tcp://HOST:PORT or ssh://USER@HOST" ;;
        esac
        setting="DOCKER_HOST=$DOCKER_HOST"
    else
        sock=/var/run/docker.sock
        setting="DOCKER_HOST unset (default unix://$sock)"
    fi
    if [ ! -e "$sock" ]; then
        fail "$setting: $sock does not exist; expected the Docker socket mounted, e.g. -v /var/run/docker.sock:/var/run/docker.sock"
    fi
    if [ ! -S "$sock" ]; then
        fail "$setting: $sock is not a socket; expected the Docker engine's socket, e.g. -v /var/run/docker.sock:/var/run/docker.sock"
    fi
    if [ ! -r "$sock" ] || [ ! -w "$sock" ]; then
        gid=$(stat -c %g "$sock")
        fail "$setting: uid $(id -u) (groups $(id -G | tr ' ' ,)) may not use it (owner $(stat -c %u:%g "$sock"), mode $(stat -c %a "$sock")); expected the socket's group on the container: Compose 'group_add: [\"$gid\"]' (docker run --group-add $gid), or DOCKER_HOST=tcp://PROXY:2375 through a socket proxy (README: Security)"
    fi
}

# The path of the engine's unix socket, or nothing for a remote engine.
socket_path() {
    host=${DOCKER_HOST:-unix:///var/run/docker.sock}
    case "$host" in
        unix://*) printf '%s\n' "${host#unix://}" ;;
    esac
}

check_backup_dir() {
    dir=${BACKUP_DIR:-/backups}
    [ -n "$dir" ] || fail "BACKUP_DIR is empty; expected a writable directory such as /backups"
    if [ ! -d "$dir" ]; then
        [ -e "$dir" ] && fail "BACKUP_DIR=$dir is not a directory; expected a writable directory (mount a volume or host folder there)"
        mkdir -p "$dir" 2>/dev/null || fail "BACKUP_DIR=$dir does not exist and cannot be created; expected a writable directory (mount a volume or host folder there)"
    fi
    probe="$dir/.backup-sidecar-write-test.$$"
    if ! ( : >"$probe" ) 2>/dev/null; then
        [ "$(stat -c %u "$dir")" != "$(id -u)" ] && fail "$(not_ours "$dir")"
        fail "BACKUP_DIR=$dir is not writable; expected a writable directory (is it mounted read-only?)"
    fi
    rm -f "$probe"
    # Archives and folders an older image wrote as root (0600/0700): unreadable to this uid.
    stranger=$(find "$dir" -mindepth 1 -maxdepth 4 -name lost+found -prune -o \
        \( ! -readable -o -type d ! -writable \) -print -quit 2>/dev/null || true)
    [ -z "$stranger" ] || fail "$(not_ours "$stranger")"
}

not_ours() {
    printf 'BACKUP_DIR: %s belongs to uid %s (mode %s) and the sidecar runs as uid %s; expected the backup volume to be its own (an older image ran as root): hand it over once with `chown -R %s:%s FOLDER` on the host, or `docker run --rm --user 0 -v VOLUME_OR_FOLDER:%s IMAGE true` (started as root, the entrypoint gives BACKUP_DIR to uid %s, then drops to it)' \
        "$1" "$(stat -c %u "$1")" "$(stat -c %a "$1")" "$(id -u)" "$SIDECAR_UID" "$SIDECAR_UID" "${BACKUP_DIR:-/backups}" "$SIDECAR_UID"
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

preflight() {
    [ "${SIDECAR_SKIP_PREFLIGHT:-0}" = "1" ] && return 0
    check_docker_socket
    check_backup_dir
}

if [ "$#" -eq 0 ]; then
    set -- run
fi

if [ "$(id -u)" = 0 ] && [ "$SIDECAR_UID" != 0 ]; then
    drop_root "$@"
fi

case "$1" in
    run)
        preflight
        exec backup-sidecar "$@"
        ;;
    backup|list|plan|restore|restore-image|prune|sync|healthcheck|version|-*)
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
