"""The Docker engine, seen through the few calls the sidecar needs.

A thin layer over docker-py's low-level API that returns the typed values of sidecar/core/model.py
and raises only EngineError (with the engine's explanation kept). Nothing here knows
about labels, schedules or archives.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import re
import shlex
import socket
import tarfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import docker
import docker.errors
import docker.types
import docker.utils.socket
import requests

from sidecar.core.errors import ContainerNotFound, EngineError, SidecarError, UnsafeName
from sidecar.core.model import (
    ContainerEvent,
    ContainerInfo,
    ContainerState,
    ExecResult,
    ImageInfo,
    Mount,
    NodeIdentity,
    SwarmNode,
    WORKER_PARENT_ENV,
    WorkerLink,
    WorkerResult,
    WorkerSpec,
)
from sidecar.core.naming import node_name_problem
from sidecar.tarball.streams import IterReader
from sidecar.core.swarm import (
    SERVICE_ID as SERVICE_ID_LABEL,
    ServiceMode,
    SwarmService,
    TaskStatus,
    task_of,
    unseen_on_workers,
    with_service,
)

logger = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
# Every worker container carries this label (value: its purpose), so leftovers of a killed
# sidecar can be found and removed at start-up.
WORKER_LABEL = "backup-sidecar.worker"
REMOVAL_WAIT = 30.0  # seconds to wait for the engine to finish removing an ended worker
WORKER_NAME_PREFIX = "backup-sidecar-worker-"
_OWN_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")
_NO_SHELL = re.compile(r"executable file not found|no such file or directory", re.I)
# Runs "$@" under `timeout` when the container has one: SIGTERM to the command at the
# timeout, SIGKILL 10 s later if it is still there (coreutils' -k; busybox's timeout has no
# -k). Only the command is signalled (--foreground), not its process group: signalling the
# group was seen to make PostgreSQL restart every session ("server process ... terminated by
# signal"); the command's own children end when their output is cut (EXEC_GRACE below).
_UNDER_TIMEOUT = ('t=$0; if command -v timeout >/dev/null 2>&1; then '
                  'if timeout --version >/dev/null 2>&1; then exec timeout --foreground -k 10 "$t" "$@"; fi; '
                  'exec timeout "$t" "$@"; fi; exec "$@"')
# Seconds the sidecar waits past the timeout before cutting the stream itself (the
# container had no `timeout`, or it did not act).
EXEC_GRACE = 20.0


@contextmanager
def _engine_call(what: str, container: str | None = None):
    try:
        yield
    except docker.errors.NotFound as exc:
        raise ContainerNotFound(f"{what}: {container or ''} not found ({_explain(exc)})") from exc
    except docker.errors.DockerException as exc:
        raise EngineError(f"{what}{' ' + container if container else ''}: {_explain(exc)}") from exc
    except OSError as exc:  # socket gone, engine restarting
        raise EngineError(f"{what}: cannot reach the Docker engine ({exc})") from exc


def _explain(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    return str(explanation or exc).strip()


class Engine:
    def __init__(self, base_url: str | None = None, timeout: int = 120):
        with _engine_call("connect to the Docker engine"):
            if base_url:
                self.client = docker.DockerClient(base_url=base_url, timeout=timeout)
            else:
                self.client = docker.from_env(timeout=timeout)
        self.api = self.client.api
        self._manager_cache: tuple[bool, float] | None = None  # (is a manager, when asked)

    def close(self) -> None:
        self.client.close()

    @property
    def is_local(self) -> bool:
        """Whether the engine runs on this machine (a unix socket or a loopback address), so
        that a path of this machine is a path of the engine's host too."""
        url = str(self.api.base_url)
        return url.startswith("http+docker://") or bool(re.match(r"https?://(localhost|127\.0\.0\.1|\[::1\])[:/]", url))

    def ping(self) -> bool:
        with _engine_call("ping the Docker engine"):
            return bool(self.api.ping())

    # --- containers -------------------------------------------------------------
    def list_candidates(self, label: str) -> list[ContainerInfo]:
        """Every container (running or not) that carries `label`, whatever its value."""
        with _engine_call("list containers"):
            rows = self.api.containers(all=True, filters={"label": label})
            seen = {row["Id"] for row in rows}
            # Swarm services labelled in their deploy.labels: their containers carry no
            # backup label, so they are listed through the service (managers only).
            for service_id in self._labelled_services(label):
                rows += [row for row in self.api.containers(all=True, filters={"label": f"{SERVICE_ID_LABEL}={service_id}"})
                         if row["Id"] not in seen]
        return self._with_services([_from_list_row(row) for row in rows])

    def inspect(self, ref: str) -> ContainerInfo:
        with _engine_call("inspect container", ref):
            return _from_inspect(self.api.inspect_container(ref))

    def find_container(self, ref: str) -> ContainerInfo | None:
        """The container with, for a Swarm task on a manager, its service's description."""
        try:
            return self._with_services([self.inspect(ref)])[0]
        except ContainerNotFound:
            return None

    def state(self, container_id: str) -> ContainerState:
        return self.inspect(container_id).state

    def stop(self, container_id: str, timeout: int) -> bool:
        """Stop (SIGTERM, or the image's STOPSIGNAL; SIGKILL after `timeout` seconds).
        Returns True when the engine had to kill it: a container that ignores the signal
        holds this call for the whole timeout, so both ends are logged."""
        logger.info("stop sent", extra={"container": container_id[:12], "stop_timeout": timeout, "phase": "stop"})
        started = time.monotonic()
        with _engine_call("stop container", container_id):
            self.api.stop(container_id, timeout=timeout)
        seconds = time.monotonic() - started
        try:
            state = self.api.inspect_container(container_id)
        except docker.errors.DockerException:  # removed meanwhile: it is stopped, how does not matter
            return False
        # Exit code 137 (128 + SIGKILL) at the end of the timeout: the engine's kill, not the app's own exit.
        killed = (state.get("State") or {}).get("ExitCode") == 137 and seconds >= timeout - 0.5
        if killed:
            logger.warning("container ignored the stop signal: the engine killed it after its stop timeout "
                           "(raise backup.stop-timeout, or check its STOPSIGNAL)",
                           extra={"container": state.get("Name", "").lstrip("/") or container_id[:12],
                                  "stop_timeout": timeout, "seconds": round(seconds, 1), "phase": "stop"})
        return killed

    def start(self, container_id: str) -> None:
        with _engine_call("start container", container_id):
            self.api.start(container_id)

    def pause(self, container_id: str) -> None:
        with _engine_call("pause container", container_id):
            self.api.pause(container_id)

    def unpause(self, container_id: str) -> None:
        with _engine_call("unpause container", container_id):
            self.api.unpause(container_id)

    def exec(self, container_id: str, command: str) -> tuple[int, str]:
        """Run `command` in a running container: through `sh -c` when the image has a
        shell, else split like a shell would and run directly. Returns (exit code, output)."""
        code, output = self._exec(container_id, ["sh", "-c", command])
        if code in (126, 127) and _NO_SHELL.search(output) and "sh" in output:
            logger.info("no shell in the container, running the command directly",
                        extra={"container": container_id[:12]})
            code, output = self._exec(container_id, shlex.split(command))
        return code, output

    def exec_stream(self, container_id: str, argv: list[str], *, user: str | None = None,
                    environment: Mapping[str, str] | None = None, timeout: float = 3600.0,
                    stdin: Iterable[bytes] | None = None, stdout_lines: bool = False,
                    tail_lines: int = 40, fields: Mapping[str, Any] | None = None) -> "ExecStream":
        """Start `argv` in a running container, under `timeout` when the image has one (see
        _UNDER_TIMEOUT; `argv` must then be runnable by `sh`). Its output is never held
        whole: iterate the returned ExecStream for stdout's bytes (or, with `stdout_lines`,
        stdout is logged line by line like stderr), then call `result()`. `environment`
        is given to the process only (never logged, not shown by `docker inspect`)."""
        wrapped = ["sh", "-c", _UNDER_TIMEOUT, str(max(1, int(timeout))), *argv]
        env = [f"{key}={value}" for key, value in (environment or {}).items()]
        with _engine_call("exec in container", container_id):
            exec_id = self.api.exec_create(container_id, wrapped, stdout=True, stderr=True, stdin=stdin is not None,
                                           user=user or "", environment=env or None)["Id"]
            sock = self.api.exec_start(exec_id, socket=True)
        return ExecStream(self, exec_id, sock, timeout, stdin, stdout_lines, tail_lines, dict(fields or {}))

    def run_command(self, container_id: str, command: str, *, user: str | None = None, timeout: float = 3600.0,
                    tail_lines: int = 40, fields: Mapping[str, Any] | None = None) -> ExecResult:
        """A command line (backup.exec.pre/post) through the container's `sh -c`, its output
        logged line by line; without a shell in the image it is split like a shell would
        and run directly (killed only by cutting its stream: logged)."""
        stream = self.exec_stream(container_id, ["sh", "-c", command], user=user, timeout=timeout,
                                  stdout_lines=True, tail_lines=tail_lines, fields=fields)
        result = stream.run()
        said = "\n".join(result.tail)
        # No shell: the engine says so in the output, or (its error going nowhere) says nothing.
        if result.exit_code in (126, 127) and (not said or (_NO_SHELL.search(said) and "sh" in said)):
            logger.info("no shell in the container, running the command directly",
                        extra={"container": container_id[:12]})
            argv = shlex.split(command)
            with _engine_call("exec in container", container_id):
                exec_id = self.api.exec_create(container_id, argv, stdout=True, stderr=True, user=user or "")["Id"]
                sock = self.api.exec_start(exec_id, socket=True)
            result = ExecStream(self, exec_id, sock, timeout, None, True, tail_lines, dict(fields or {})).run()
        return result

    def container_command(self, container_id: str) -> tuple[str, ...]:
        """What the container runs: its entrypoint and command."""
        with _engine_call("inspect container", container_id):
            config = self.api.inspect_container(container_id).get("Config") or {}
        return tuple(config.get("Entrypoint") or ()) + tuple(config.get("Cmd") or ())

    def _exec(self, container_id: str, argv: list[str]) -> tuple[int, str]:
        with _engine_call("exec in container", container_id):
            exec_id = self.api.exec_create(container_id, argv, stdout=True, stderr=True)["Id"]
            try:
                output = self.api.exec_start(exec_id)
            except docker.errors.APIError as exc:
                message = _explain(exc)
                if _NO_SHELL.search(message):
                    return 127, message
                raise
            code = self.api.exec_inspect(exec_id).get("ExitCode")
        text = (output or b"").decode("utf-8", "replace")
        return (code if code is not None else -1), text

    # --- data ---------------------------------------------------------------------
    def read_path(self, container_id: str, path: str) -> Iterator[bytes]:
        """A tar stream of the contents of `path` in the container, members named
        './...' relative to it. Works on running, paused and stopped containers.

        Close the returned generator when stopping early: the engine holds the
        container's lock while it streams, so an abandoned half-read response would block
        every later call on that container (including starting it again)."""
        what = f"read {path} from"
        with _engine_call(what, container_id):
            # encode_stream=False asks for "identity": a gzipped stream costs ten times the read.
            chunks, _stat = self.api.get_archive(container_id, path.rstrip("/") + "/.", chunk_size=CHUNK_SIZE,
                                                 encode_stream=False)
        return _guarded(chunks, what, container_id)

    def save_image(self, image: str) -> Iterator[bytes]:
        """`docker save` of one image as a tar stream (close it when stopping early)."""
        with _engine_call("save image", image):
            chunks = self.api.get_image(image, chunk_size=CHUNK_SIZE)
            # get_image checks the status only when first read: read the first chunk here.
            first = next(chunks, b"")
        return _guarded(_prepend(first, chunks), "save image", image)

    def path_is_empty(self, container_id: str, path: str) -> bool:
        """True when `path` holds nothing but itself; reads only the first members."""
        stream = self.read_path(container_id, path)
        try:
            with tarfile.open(fileobj=IterReader(stream), mode="r|") as tar:
                for member in tar:
                    if member.name not in (".", "./"):
                        return False
            return True
        finally:
            stream.close()

    def put_archive(self, container_id: str, path: str, data: bytes | Iterable[bytes]) -> None:
        with _engine_call("write archive into", container_id):
            ok = self.api.put_archive(container_id, path, data)
        if not ok:
            raise EngineError(f"write archive into {container_id[:12]}:{path}: the engine refused it")

    def run_helper(self, image: str, volumes_from: str, command: list[str]) -> tuple[int, str]:
        """Run a short-lived root container sharing `volumes_from`'s mounts; returns (exit code, logs)."""
        with _engine_call("run helper container from image", image):
            host_config = self.api.create_host_config(volumes_from=[volumes_from], network_mode="none")
            created = self.api.create_container(
                image, entrypoint=command[:1], command=command[1:], user="0",
                host_config=host_config, labels={"backup-sidecar.helper": "true"},
            )
            helper_id = created["Id"]
            try:
                self.api.start(helper_id)
                result = self.api.wait(helper_id)
                logs = self.api.logs(helper_id, stdout=True, stderr=True).decode("utf-8", "replace")
                return int(result.get("StatusCode", -1)), logs
            finally:
                try:
                    # v=True: the helper's image may declare VOLUME (the sidecar's /backups); its
                    # anonymous volume goes with it. Named and shared volumes are never removed.
                    self.api.remove_container(helper_id, force=True, v=True)
                except docker.errors.DockerException as exc:
                    logger.warning("could not remove helper container", extra={"container": helper_id[:12],
                                                                             "error": _explain(exc)})

    # --- worker containers --------------------------------------------------------------
    def run_worker(self, spec: WorkerSpec, on_line: Callable[[str], bool | None] | None = None,
                   on_start: Callable[[WorkerLink], None] | None = None,
                   on_data: Callable[[bytes], None] | None = None) -> WorkerResult:
        """Run `spec` to its end in a short-lived container and remove it (with any anonymous
        volume). Each line of its output goes to `on_line` (returning True: handled, else
        it is logged); an exception from `on_line` (e.g. BackupAborted) stops the worker and
        goes through. `on_start` gets the running worker's WorkerLink (its name, and its
        stdin to send lines to, from any thread). Raises EngineError when the worker cannot
        be created or started; a failing command is a WorkerResult with its exit code and
        last lines. `on_data`: the worker's stdout is data, each of its frames given to it as
        it comes (an exception from it stops the worker too), and only stderr is read as lines."""
        name = WORKER_NAME_PREFIX + uuid.uuid4().hex[:16]
        fields = {"worker": name, "purpose": spec.purpose, "image": spec.image}
        tail: collections.deque[str] = collections.deque(maxlen=spec.tail_lines)
        started = time.monotonic()
        with contextlib.ExitStack() as cleanup:
            # Registered before the container exists: whatever happens from here on (an
            # error, an abort from on_line, SIGTERM turned into an exception) removes it.
            cleanup.callback(self.remove_worker, name)
            with _engine_call("create worker container from image", spec.image):
                self.api.create_container(**_worker_create_args(self.api, name, spec))
                # One connection, attached before the start, carries the worker's output and
                # is its stdin (closed by the engine when the connection drops: stdin_once):
                # a worker exits as soon as this process is gone, whatever killed it
                # (sidecar/worker/__init__.py, watch_parent), and the engine removes it
                # (auto_remove), so nothing holds the volumes it mounts.
                sock = self.api.attach_socket(name, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
                cleanup.callback(_close_quietly, sock)
                exit_code = _ExitCode(self.api, name)  # asked before the start: auto_remove races a later ask
                self.api.start(name)
            logger.debug("worker started", extra=fields)
            if on_start is not None:
                on_start(WorkerLink(name, lambda data: _send(sock, data, name)))
            expired = threading.Event()
            timer = threading.Timer(spec.timeout, self._expire, (name, expired))
            timer.daemon = True
            cleanup.callback(timer.cancel)
            timer.start()
            with _engine_call("follow worker output", name):
                for line in _frame_lines(sock, on_data):
                    tail.append(line)
                    if not (on_line is not None and on_line(line)):
                        logger.info("worker output", extra={**fields, "line": line})
                code = exit_code.get(60)
        seconds = time.monotonic() - started
        result = WorkerResult(name, code, tuple(tail), seconds, expired.is_set())
        logger.debug("worker ended", extra={**fields, "exit_code": code, "seconds": round(seconds, 3)})
        return result

    def remove_worker(self, name: str) -> None:
        """Remove a worker container and its anonymous volumes, whatever its state (logged, never raised)."""
        try:
            self.api.remove_container(name, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                logger.warning("could not remove a worker container", extra={"worker": name, "error": _explain(exc)})
                return
            self._wait_removed(name)  # 409: the engine removes it already (auto_remove)
        except (docker.errors.DockerException, OSError) as exc:
            logger.warning("could not remove a worker container", extra={"worker": name, "error": _explain(exc)})

    def _wait_removed(self, name: str, deadline: float = REMOVAL_WAIT) -> None:
        """Until the engine's own removal of a worker is done (its volumes free again)."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                self.api.inspect_container(name)
            except docker.errors.NotFound:
                return
            except (docker.errors.DockerException, OSError):
                break
            time.sleep(0.05)
        logger.warning("a worker container is still being removed", extra={"worker": name})

    def list_workers(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        """Worker containers (running or not) carrying all of `labels`."""
        filters = [WORKER_LABEL] + [f"{key}={value}" for key, value in labels.items()]
        with _engine_call("list worker containers"):
            rows = self.api.containers(all=True, filters={"label": filters})
        return [_from_list_row(row) for row in rows]

    def _expire(self, name: str, expired: threading.Event) -> None:
        expired.set()
        logger.warning("worker ran past its timeout; killing it", extra={"worker": name})
        try:
            self.api.kill(name)
        except (docker.errors.DockerException, OSError):
            pass

    def image_info(self, image: str) -> ImageInfo:
        with _engine_call("inspect image", image):
            data = self.api.inspect_image(image)
        return ImageInfo(id=data["Id"], tags=tuple(data.get("RepoTags") or ()),
                         digests=tuple(data.get("RepoDigests") or ()))

    def labelled_images(self, label: str) -> list[ImageInfo]:
        """Images that carry `label` (KEY or KEY=VALUE), newest first."""
        with _engine_call("list images", label):
            rows = self.api.images(filters={"label": label, "dangling": False})
        rows.sort(key=lambda row: row.get("Created") or 0, reverse=True)
        return [ImageInfo(id=row["Id"], tags=tuple(row.get("RepoTags") or ()), digests=tuple(row.get("RepoDigests") or ()))
                for row in rows]

    def load_image(self, data: Iterable[bytes]) -> list[str]:
        """`docker load`; returns the engine's status lines (e.g. "Loaded image: app:1")."""
        with _engine_call("load image"):
            lines = []
            for chunk in self.api.load_image(data, quiet=False):
                # docker-py does not check the status of a streamed load: errors come as JSON.
                if "error" in chunk or ("message" in chunk and "stream" not in chunk):
                    raise EngineError(f"load image: {chunk.get('error') or chunk['message']}")
                if chunk.get("stream"):
                    lines.append(chunk["stream"].strip())
            return lines

    def own_container(self) -> ContainerInfo | None:
        """The container this process runs in, if any (found through mountinfo or hostname)."""
        try:
            candidates = own_ids_in_mountinfo(Path("/proc/self/mountinfo").read_text())
        except OSError:
            candidates = []
        try:
            candidates.append(Path("/etc/hostname").read_text().strip())
        except OSError:
            pass
        for ref in candidates:
            if ref and re.fullmatch(r"[0-9a-f]{12,64}", ref):
                found = self.find_container(ref)
                if found:
                    return found
        return None

    def list_containers(self, project: str | None = None, running: bool = True) -> list[ContainerInfo]:
        """Containers (only running and paused ones with `running`), of one Compose
        project when `project` is given."""
        filters: dict[str, Any] = {"label": f"com.docker.compose.project={project}"} if project is not None else {}
        with _engine_call("list containers"):
            rows = self.api.containers(all=not running, filters=filters)
        return [_from_list_row(row) for row in rows]

    # --- swarm: services and tasks ----------------------------------------------------
    def is_swarm_manager(self) -> bool:
        """Whether this engine is a manager of an active swarm (it can read and change
        services). Asked again at most every 30 s."""
        now = time.monotonic()
        cached = self._manager_cache
        if cached is None or now - cached[1] > 30:
            with _engine_call("read the engine's Swarm state"):
                swarm = self.api.info().get("Swarm") or {}
            cached = (swarm.get("LocalNodeState") == "active" and bool(swarm.get("ControlAvailable")), now)
            self._manager_cache = cached
        return cached[0]

    def service(self, service_id: str) -> SwarmService:
        with _engine_call("inspect service", service_id):
            return _service(self.api.inspect_service(service_id))

    def scale_service(self, service_id: str, replicas: int, version: int | None = None) -> SwarmService:
        """Set a replicated service's replica count; with `version`, only if nobody changed
        its spec since (the engine refuses an update out of sequence). Returns the service
        as it is afterwards (its new version)."""
        with _engine_call("scale service", service_id):
            current = _service(self.api.inspect_service(service_id))
            if current.mode is not ServiceMode.REPLICATED:
                raise EngineError(f"scale service {current.name}: it is not a replicated service")
            self.api.update_service(service_id, current.version if version is None else version,
                                    mode=docker.types.ServiceMode("replicated", replicas=replicas),
                                    fetch_current_spec=True)
            return _service(self.api.inspect_service(service_id))

    def service_tasks(self, service_id: str) -> list[TaskStatus]:
        with _engine_call("list tasks of service", service_id):
            rows = self.api.tasks(filters={"service": service_id})
        return [TaskStatus(t.get("ID", ""), t.get("NodeID", ""), t.get("Slot"),
                           str((t.get("Status") or {}).get("State", "")), str(t.get("DesiredState", "")))
                for t in rows]

    def unseen_on_workers(self, label: str) -> list[str]:
        """On a manager: services labelled (`label`) only in their deploy.labels whose tasks run
        on worker nodes, where no sidecar can read those labels (see swarm.unseen_on_workers)."""
        if not self.is_swarm_manager():
            return []
        with _engine_call("list Swarm services"):
            services = self.api.services(filters={"label": label})
        if not services:
            return []
        workers = {n.node_id: n.hostname for n in self.swarm_nodes() if not n.manager}
        found = []
        for raw in services:
            container_labels = ((raw.get("Spec") or {}).get("TaskTemplate") or {}).get("ContainerSpec", {}).get(
                "Labels") or {}
            why = unseen_on_workers(_service(raw), container_labels, workers, self.service_tasks(raw["ID"]))
            if why:
                found.append(why)
        return found

    def service_containers(self, service_id: str) -> list[ContainerInfo]:
        """This node's containers of a Swarm service (running or not): a scale back starts new ones."""
        with _engine_call("list containers of service", service_id):
            rows = self.api.containers(all=True, filters={"label": f"{SERVICE_ID_LABEL}={service_id}"})
        return [_from_list_row(row) for row in rows]

    @contextmanager
    def stand_in(self, image: str, mounts: tuple[Mount, ...], purpose: str = "stand-in") -> Iterator[str]:
        """A created, never started, container with the same mounts at the same paths as a
        container that is gone (a Swarm task removed by a scale to 0): the archive API and
        helpers reach its volumes through it. Removed on the way out; yields its id."""
        name = WORKER_NAME_PREFIX + uuid.uuid4().hex[:16]
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(self.remove_worker, name)  # registered before it exists
            binds = [docker.types.Mount(m.destination, m.source, type=m.kind, read_only=m.read_only,
                                        no_copy=m.kind == "volume") for m in mounts]
            with _engine_call("create a stand-in container from image", image):
                created = self.api.create_container(
                    image=image, name=name, entrypoint=["true"], command=[], network_disabled=True,
                    labels={WORKER_LABEL: purpose}, healthcheck={"test": ["NONE"]},
                    host_config=self.api.create_host_config(mounts=binds, network_mode="none", cap_drop=["ALL"]))
            yield created["Id"]

    def _labelled_services(self, label: str) -> list[str]:
        if not self.is_swarm_manager():
            return []
        return [s["ID"] for s in self.api.services(filters={"label": label})]

    def _with_services(self, containers: list[ContainerInfo]) -> list[ContainerInfo]:
        """Fill in the service of every Swarm task container, when this engine can read
        services (a manager); a service that cannot be read leaves it None."""
        if not any(c.swarm is not None for c in containers):
            return containers
        try:
            if not self.is_swarm_manager():
                return containers
        except EngineError:
            return containers
        services: dict[str, SwarmService | None] = {}
        out = []
        for c in containers:
            if c.swarm is None:
                out.append(c)
                continue
            if c.swarm.service_id not in services:
                try:
                    services[c.swarm.service_id] = self.service(c.swarm.service_id)
                except SidecarError as err:
                    logger.warning("cannot read the Swarm service of a container", extra={
                        "container": c.name, "service": c.swarm.service_name, "error": str(err)})
                    services[c.swarm.service_id] = None
            out.append(dataclasses.replace(c, swarm=with_service(c.swarm, services[c.swarm.service_id])))
        return out

    # --- events -------------------------------------------------------------------
    def events(self, since: float | None = None):
        """A closable iterator of decoded container events."""
        with _engine_call("follow events"):
            return self.api.events(since=since, decode=True, filters={"type": "container"})

    def container_events(self, container_id: str, since: float, until: float | None = None) -> list[ContainerEvent]:
        """What the engine recorded for one container between `since` and `until` (now):
        a finite query, answered from the engine's buffer of recent events."""
        until = time.time() if until is None else until
        with _engine_call("read events of", container_id):
            raw = list(self.api.events(since=f"{since:.9f}", until=f"{until:.9f}", decode=True,
                                       filters={"type": "container", "container": container_id}))
        return [_event(e) for e in raw]

    # --- swarm: this node and the fleet ----------------------------------------------
    def node(self, name: str | None = None) -> NodeIdentity:
        """This engine as a node: its name (`name` when given: BACKUP_NODE_NAME) and its
        place in a swarm. The name is checked: it becomes a folder and a label value."""
        with _engine_call("read the engine's info"):
            info = self.api.info()
        swarm = info.get("Swarm") or {}
        chosen = name if name is not None else str(info.get("Name") or "")
        problem = node_name_problem(chosen)
        if problem is not None:
            where = "BACKUP_NODE_NAME" if name is not None else "the engine's name (docker info: Name)"
            raise UnsafeName(f"{where} {chosen[:300]!r} cannot name this node: {problem}; set BACKUP_NODE_NAME "
                             "to such a name")
        return NodeIdentity(chosen, swarm.get("NodeID") or None, swarm.get("LocalNodeState") == "active",
                            bool(swarm.get("ControlAvailable")))

    def swarm_nodes(self) -> tuple[SwarmNode, ...]:
        """Every node of the swarm as this manager sees it; () when this engine is no
        Swarm manager (only managers can list the nodes)."""
        if not self.is_swarm_manager():
            return ()
        with _engine_call("list the swarm's nodes"):
            rows = self.api.nodes()
        return tuple(_swarm_node(row) for row in rows)


def _swarm_node(row: Mapping[str, Any]) -> SwarmNode:
    description, status, spec = row.get("Description") or {}, row.get("Status") or {}, row.get("Spec") or {}
    return SwarmNode(str(row.get("ID", "")), str(description.get("Hostname", "")), str(status.get("State", "unknown")),
                     str(spec.get("Availability", "active")), row.get("ManagerStatus") is not None)


def _event(raw: Mapping[str, Any]) -> ContainerEvent:
    actor = raw.get("Actor") or {}
    attributes = actor.get("Attributes") or {}
    action = str(raw.get("Action") or raw.get("status") or "")
    stamp = raw.get("timeNano")
    when = stamp / 1e9 if stamp else float(raw.get("time") or 0)
    return ContainerEvent(action.split(":")[0].strip(), str(actor.get("ID") or raw.get("id") or ""), when,
                          attributes.get("signal"))


class ExecStream:
    """A running exec: iterate it for stdout's bytes; stderr (and stdout with
    `stdout_lines`) is logged line by line and its last lines kept for the error message.
    A timer cuts the stream EXEC_GRACE seconds after the timeout. Close it (or use `run`)
    to release the connection."""

    def __init__(self, engine: Engine, exec_id: str, sock, timeout: float, stdin: Iterable[bytes] | None,
                 stdout_lines: bool, tail_lines: int, fields: dict[str, Any]):
        self.engine, self.exec_id, self.sock, self.timeout = engine, exec_id, sock, timeout
        self.stdout_lines, self.fields = stdout_lines, fields
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.stdout_bytes = 0
        self.started = time.monotonic()
        self._expired = threading.Event()
        self._pending = {1: b"", 2: b""}
        self._stdin_error: list[BaseException] = []
        self._timer = threading.Timer(timeout + EXEC_GRACE, self._expire)
        self._timer.daemon = True
        self._timer.start()
        if stdin is not None:
            threading.Thread(target=self._feed, args=(stdin,), daemon=True, name="exec-stdin").start()

    def __iter__(self) -> Iterator[bytes]:
        try:
            for stream, data in docker.utils.socket.frames_iter(self.sock, tty=False):
                if stream == 1 and not self.stdout_lines:
                    self.stdout_bytes += len(data)
                    yield data
                else:
                    self._log_lines(stream, data)
        except (OSError, docker.errors.DockerException) as exc:
            if not self._expired.is_set():
                raise EngineError(f"exec output stream broke ({exc})") from exc
        finally:
            for stream in (1, 2):
                self._log_lines(stream, b"", flush=True)
            self.close()

    def run(self) -> ExecResult:
        """Read it to its end (stdout goes to the log too), then its result."""
        self.stdout_lines = True
        for _ in self:
            pass
        return self.result()

    def result(self) -> ExecResult:
        """Its exit code once the output ended (None: still running, e.g. cut at its timeout)."""
        self.close()
        code = None
        with contextlib.suppress(docker.errors.DockerException, OSError):
            info = self.engine.api.exec_inspect(self.exec_id)
            code = None if info.get("Running") else info.get("ExitCode")
        seconds = time.monotonic() - self.started
        timed_out = self._expired.is_set() or (seconds >= self.timeout and code in (124, 137, 143, None))
        return ExecResult(code, tuple(self.tail), seconds, timed_out, self.stdout_bytes,
                          self._stdin_error[0] if self._stdin_error else None)

    def close(self) -> None:
        self._timer.cancel()
        with contextlib.suppress(OSError):
            self.sock.close()

    def _expire(self) -> None:
        self._expired.set()
        logger.warning("command ran past its timeout; cutting its stream", extra={**self.fields,
                                                                                   "timeout": self.timeout})
        _shutdown(self.sock, socket.SHUT_RDWR)

    def _feed(self, chunks: Iterable[bytes]) -> None:
        """Writes stdin, then half-closes so the command sees its end."""
        raw = getattr(self.sock, "_sock", self.sock)
        try:
            for chunk in chunks:
                raw.sendall(chunk)
        except BaseException as exc:  # the reader side reports it through result()
            self._stdin_error.append(exc)
            _shutdown(self.sock, socket.SHUT_RDWR)
            return
        _shutdown(self.sock, socket.SHUT_WR)

    def _log_lines(self, stream: int, data: bytes, flush: bool = False) -> None:
        pending = self._pending.get(stream, b"") + data
        *complete, pending = pending.split(b"\n")
        if flush and pending:
            complete, pending = [*complete, pending], b""
        self._pending[stream] = pending[-65536:]  # a line without end is cut, not held whole
        for raw in complete:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            self.tail.append(line)
            logger.info("command output", extra={**self.fields, "stream": "stdout" if stream == 1 else "stderr",
                                                  "line": line})


def _shutdown(sock, how: int) -> None:
    raw = getattr(sock, "_sock", sock)
    with contextlib.suppress(OSError, AttributeError):
        raw.shutdown(how)


def _worker_create_args(api, name: str, spec: WorkerSpec) -> dict[str, Any]:
    mounts = [docker.types.Mount(m.target, m.source, type=m.kind, read_only=m.read_only,
                                 no_copy=m.kind == "volume")  # never copy the image's files into a volume
              for m in spec.mounts]
    host_config = api.create_host_config(
        mounts=mounts, network_mode="none", read_only=True, cap_drop=["ALL"], cap_add=list(spec.capabilities),
        auto_remove=True,  # a worker whose sidecar died is removed by the engine once it exits
        security_opt=["no-new-privileges"],
        # Its output is read back through the logs endpoint: a driver that can be read. Not for
        # a worker streaming an archive's data (decrypted): the attach carries it, and no copy
        # of it is written to the engine's disk.
        log_config=docker.types.LogConfig(type="json-file", config={"max-size": "10m", "max-file": "1"})
        if spec.logged else docker.types.LogConfig(type="none"),
    )
    return dict(
        image=spec.image, name=name, entrypoint=list(spec.command[:1]), command=list(spec.command[1:]),
        user=spec.user or "", host_config=host_config, network_disabled=True,
        labels={WORKER_LABEL: spec.purpose, **spec.labels},
        healthcheck={"test": ["NONE"]},  # the image's own healthcheck is the daemon's
        stdin_open=True, environment={WORKER_PARENT_ENV: "stdin"},  # with detach=False: StdinOnce
        **({"hostname": spec.hostname} if spec.hostname else {}),
    )


def _send(sock, data: bytes, name: str) -> None:
    """Bytes to an attached worker's stdin."""
    try:
        getattr(sock, "_sock", sock).sendall(data)
    except OSError as exc:
        raise EngineError(f"write to worker {name}: {exc}") from exc


def _close_quietly(sock) -> None:
    with contextlib.suppress(OSError):
        _shutdown(sock, socket.SHUT_RDWR)
        sock.close()


class _ExitCode:
    """A container's exit code, asked for (condition next-exit) before it starts."""

    def __init__(self, api, name: str):
        self._code: int | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._wait, args=(api, name), daemon=True, name="worker-wait")
        self._thread.start()

    def _wait(self, api, name: str) -> None:
        try:
            self._code = int(api.wait(name, condition="next-exit").get("StatusCode", -1))
        except BaseException as exc:  # noqa: BLE001 - said by get()
            self._error = exc

    def get(self, timeout: float) -> int:
        """-1 when the engine did not say within `timeout` seconds of the output's end."""
        self._thread.join(timeout)
        if self._error is not None or self._code is None:
            return -1
        return self._code


def _frame_lines(sock, on_data: Callable[[bytes], None] | None = None) -> Iterator[str]:
    """Text lines of an attached container's stdout and stderr (each stream's own lines);
    with `on_data`, stdout's frames go to it as they are and only stderr is read as lines."""
    pending = {1: b"", 2: b""}
    try:
        for stream, data in docker.utils.socket.frames_iter(sock, tty=False):
            if stream == 1 and on_data is not None:
                on_data(data)
                continue
            buf = pending.get(stream, b"") + data
            *complete, pending[stream] = buf.split(b"\n")
            for line in complete:
                yield line.decode("utf-8", "replace").rstrip("\r")
    except OSError:
        pass  # the connection ended: the exit code tells how the worker did
    for rest in pending.values():
        if rest:
            yield rest.decode("utf-8", "replace")


def own_ids_in_mountinfo(text: str) -> list[str]:
    """Container ids in what the engine binds over this process's /etc/hostname and friends.
    Only those: on a host, mountinfo also lists other containers' files (their shm, and
    their /etc files while they start) under .../containers/ID/."""
    ids = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] in _OWN_FILES:
            ids += re.findall(r"/containers/([0-9a-f]{64})/", fields[3])
    return ids


def _guarded(chunks: Iterator[bytes], what: str, ref: str) -> Iterator[bytes]:
    """docker-py's stream with our errors. Closing it closes docker-py's generator, whose
    frame holds the only reference to the HTTP response: the connection closes at once and
    the engine releases the container (checked by tests/e2e/test_recovery.py's aborts)."""
    try:
        yield from chunks
    except docker.errors.DockerException as exc:
        raise EngineError(f"{what} {ref[:12]}: {_explain(exc)}") from exc
    except (OSError, requests.RequestException) as exc:
        raise EngineError(f"{what} {ref[:12]}: stream broke ({exc})") from exc
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    try:
        if first:
            yield first
        yield from rest
    finally:
        rest.close()


def _mounts(raw: list[dict[str, Any]] | None) -> tuple[Mount, ...]:
    mounts = []
    for m in raw or []:
        kind = m.get("Type", "")
        read_only = m.get("RW") is False
        if kind == "volume":
            mounts.append(Mount("volume", m.get("Name", ""), m.get("Destination", ""), read_only))
        elif kind == "bind":
            mounts.append(Mount("bind", m.get("Source", ""), m.get("Destination", ""), read_only))
    return tuple(mounts)


def _from_list_row(row: dict[str, Any]) -> ContainerInfo:
    names = row.get("Names") or [row["Id"][:12]]
    return ContainerInfo(
        id=row["Id"],
        name=names[0].lstrip("/"),
        image=row.get("Image", ""),
        image_id=row.get("ImageID", ""),
        state=ContainerState.parse(row.get("State", "")),
        labels=dict(row.get("Labels") or {}),
        mounts=_mounts(row.get("Mounts")),
        swarm=task_of(row.get("Labels") or {}),
    )


def _from_inspect(data: dict[str, Any]) -> ContainerInfo:
    config = data.get("Config") or {}
    state = data.get("State") or {}
    return ContainerInfo(
        id=data["Id"],
        name=data.get("Name", "").lstrip("/") or data["Id"][:12],
        image=config.get("Image", ""),
        image_id=data.get("Image", ""),
        state=ContainerState.parse(state.get("Status", "")),
        labels=dict(config.get("Labels") or {}),
        mounts=_mounts(data.get("Mounts")),
        health=(state.get("Health") or {}).get("Status") or None,
        swarm=task_of(config.get("Labels") or {}),
    )


def _service(data: dict[str, Any]) -> SwarmService:
    spec = data.get("Spec") or {}
    mode = spec.get("Mode") or {}
    template = spec.get("TaskTemplate") or {}
    is_global = "Global" in mode or "GlobalJob" in mode
    replicated = mode.get("Replicated") or {}
    return SwarmService(
        id=data["ID"], name=spec.get("Name", data["ID"][:12]),
        mode=ServiceMode.GLOBAL if is_global else ServiceMode.REPLICATED,
        replicas=None if is_global else int(replicated.get("Replicas", 1)),
        labels=dict(spec.get("Labels") or {}),
        restart_condition=str((template.get("RestartPolicy") or {}).get("Condition") or "any"),
        constraints=tuple((template.get("Placement") or {}).get("Constraints") or ()),
        version=int((data.get("Version") or {}).get("Index", 0)),
        updated_besides_replicas=_besides_mode(spec) != _besides_mode(data.get("PreviousSpec")),
    )


def _besides_mode(spec: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if spec is None else {key: value for key, value in spec.items() if key != "Mode"}
