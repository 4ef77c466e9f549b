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
set -eu

EX_CONFIG=64

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
        setting="Docker socket $sock (DOCKER_HOST unset)"
    fi
    if [ ! -e "$sock" ]; then
        fail "$setting: $sock does not exist; expected the Docker socket mounted, e.g. -v /var/run/docker.sock:/var/run/docker.sock"
    fi
    if [ ! -S "$sock" ]; then
        fail "$setting: $sock is not a socket; expected the Docker engine's socket, e.g. -v /var/run/docker.sock:/var/run/docker.sock"
    fi
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
        fail "BACKUP_DIR=$dir is not writable; expected a writable directory (is it mounted read-only?)"
    fi
    rm -f "$probe"
}

preflight() {
    [ "${SIDECAR_SKIP_PREFLIGHT:-0}" = "1" ] && return 0
    check_docker_socket
    check_backup_dir
}

if [ "$#" -eq 0 ]; then
    set -- run
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
