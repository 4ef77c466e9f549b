"""A fake Docker engine for the actions tier: the Engine methods the actions call, over
containers held in memory whose mounts are folders of a temporary directory. Reads are
real tar streams of those folders, writes unpack real tar streams into them. Every call
is recorded in `calls`; faults are injected with `fail`.

    engine = FakeEngine()
    app = engine.add_container("app", labels={...}, mounts={"/data": tmp_path / "data"})
    engine.fail("stop", EngineError("no"))                 # every stop fails
    engine.fail("read_path", EngineError("gone"), after_bytes=10_000)  # the stream breaks midway

Mounts are named volumes called after their folder's name.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from sidecar.core.errors import ContainerNotFound, EngineError, UnsafeName
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
from sidecar.core.swarm import ServiceMode, SwarmService, TaskStatus, task_of, with_service

REPO = Path(__file__).resolve().parents[2]

CHUNK = 4096


@dataclass
class FakeContainer:
    info: ContainerInfo
    folders: dict[str, Path]  # mount destination -> folder standing for the volume
    exec_results: dict[str, tuple[int, str]] = field(default_factory=dict)  # command -> (code, output)
    env: dict[str, str] = field(default_factory=dict)  # its configured environment
    bin: Path | None = None  # exec_stream: stand-in tools, first on PATH
    command: tuple[str, ...] = ()  # its entrypoint and command


@dataclass
class _Fault:
    error: BaseException
    times: int | None  # None: always
    after_bytes: int = 0  # read_path/save_image: bytes streamed before it breaks


class FakeEngine:
    def __init__(self) -> None:
        self.containers: dict[str, FakeContainer] = {}
        self.images: dict[str, tuple[ImageInfo, bytes]] = {}
        self.image_labels: dict[str, dict[str, str]] = {}  # image id -> its labels (labelled_images)
        self.loaded: list[bytes] = []
        self.calls: list[tuple] = []
        self.event_queue: list[dict] = []
        self.own: ContainerInfo | None = None  # the container the sidecar runs in (own_container)
        self._faults: dict[str, _Fault] = {}
        self._seq = 0
        self.worker_images: set[str] = set()  # images a worker can run from (others: "no such image")
        self.workers_run: list[WorkerSpec] = []
        self.leftover_workers: list[ContainerInfo] = []  # what list_workers finds
        self._volumes: dict[str, Path] = {}  # volume name -> its folder, once a worker mounted it
        self._running: dict[str, subprocess.Popen] = {}  # worker name -> its process (remove_worker kills it)
        self.is_local = True  # BACKUP_DIR of a host process is a path of the engine's host
        self.log: list[ContainerEvent] = []  # what the engine's event log holds (container_events)
        self.on_stop = None  # called with the container id inside stop (e.g. someone else's stop meanwhile)
        self.health_after: dict[str, int] = {}  # container id -> inspects until its healthcheck says healthy
        self.exec_options: list[dict] = []  # run_command/exec_stream: what each was given
        self.manager = False  # a Swarm manager: services can be read and scaled
        self.services: dict[str, SwarmService] = {}
        self.unseen: list[str] = []  # unseen_on_workers: what a manager reports
        self._scaled_away: dict[str, list[FakeContainer]] = {}  # service id -> its removed task containers
        self.on_scale = None  # called with (service id, replicas) after a scale (e.g. someone else's update)
        self.tasks_linger = 0  # service_tasks calls that still show a scaled-down task running
        self.identity = NodeIdentity("fake-node")  # node(): a single host unless a test makes it a swarm node
        self.fleet: list[SwarmNode] = []  # swarm_nodes() when identity.manager

    # --- building the world ---------------------------------------------------------------
    def add_container(self, name: str, labels: Mapping[str, str] | None = None,
                      mounts: Mapping[str, Path] | None = None, state: ContainerState = ContainerState.RUNNING,
                      image: str = "busybox:latest", image_id: str = "sha256:" + "b" * 64) -> ContainerInfo:
        if image not in self.images:  # pullable (has a digest): not exported unless backup.image=always
            self.add_image(image, digests=(f"{image.split(':')[0]}@sha256:" + "d" * 64,), image_id=image_id)
        self._seq += 1
        cid = f"{self._seq:02d}".ljust(64, "c")
        folders = {dest: Path(folder) for dest, folder in (mounts or {}).items()}
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        info = ContainerInfo(cid, name, image, image_id, state, dict(labels or {}),
                             tuple(Mount("volume", folder.name, dest) for dest, folder in folders.items()))
        self.containers[cid] = FakeContainer(info, folders)
        return info

    def add_service(self, name: str, replicas: int | None = 1, labels: Mapping[str, str] | None = None,
                    restart: str = "any", constraints: tuple[str, ...] = ()) -> SwarmService:
        """A Swarm service (replicas None: global). Its containers: add_task."""
        sid = f"svc{len(self.services) + 1}".ljust(25, "s")
        mode = ServiceMode.GLOBAL if replicas is None else ServiceMode.REPLICATED
        service = SwarmService(sid, name, mode, replicas, dict(labels or {}), restart, constraints, version=10)
        self.services[sid] = service
        return service

    def add_task(self, service: SwarmService, slot: int | None, labels: Mapping[str, str] | None = None,
                 mounts: Mapping[str, Path] | None = None, stack: str | None = None) -> ContainerInfo:
        """A task container of `service` (slot None: a global task on this node)."""
        middle = str(slot) if slot is not None else "node1id"
        swarm_labels = {"com.docker.swarm.service.id": service.id, "com.docker.swarm.service.name": service.name,
                        "com.docker.swarm.task.id": f"task{slot}", "com.docker.swarm.node.id": "node1id",
                        "com.docker.swarm.task.name": f"{service.name}.{middle}.task{slot}"}
        if stack:
            swarm_labels["com.docker.stack.namespace"] = stack
        info = self.add_container(f"{service.name}.{middle}.task{slot}", {**swarm_labels, **(labels or {})}, mounts)
        c = self.containers[info.id]
        c.info = replace(info, swarm=task_of(c.info.labels))
        return c.info

    def _task_containers(self, service_id: str) -> list[FakeContainer]:
        return [c for c in self.containers.values() if c.info.swarm and c.info.swarm.service_id == service_id]

    def _with_service(self, info: ContainerInfo) -> ContainerInfo:
        if info.swarm is None or not self.manager or info.swarm.service_id not in self.services:
            return info
        return replace(info, swarm=with_service(info.swarm, self.services[info.swarm.service_id]))

    def fail(self, method: str, error: BaseException, times: int | None = None, after_bytes: int = 0) -> None:
        """Make `method` raise `error` (the next `times` calls, or always)."""
        self._faults[method] = _Fault(error, times, after_bytes)

    def set_state(self, container_id: str, state: ContainerState) -> None:
        c = self._get(container_id)
        c.info = replace(c.info, state=state)

    def record(self, container_id: str, *actions: str, signal: str | None = None) -> None:
        """Append events to the engine's log (a kill carries `signal`)."""
        for action in actions:
            self.log.append(ContainerEvent(action, container_id, time.time(), signal if action == "kill" else None))

    def someone_stops(self, container_id: str) -> None:
        """`docker stop` by someone else: its events, and the container exited."""
        self.record(container_id, "kill", signal="15")
        if self._get(container_id).info.state is ContainerState.RUNNING:
            self.record(container_id, "die")
        self.record(container_id, "stop")
        self.set_state(container_id, ContainerState.EXITED)

    def remove(self, container_id: str) -> None:
        self.record(container_id, "destroy")
        del self.containers[self._get(container_id).info.id]

    def names(self, method: str) -> list[tuple]:
        """The recorded calls of one method."""
        return [call for call in self.calls if call[0] == method]

    # --- internals ------------------------------------------------------------------------
    def _call(self, method: str, *args) -> _Fault | None:
        self.calls.append((method, *args))
        fault = self._faults.get(method)
        if fault is None:
            return None
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                del self._faults[method]
        if fault.after_bytes:
            return fault  # raised midway by the stream
        raise fault.error

    def _purpose_fault(self, purpose: str) -> None:
        """`fail("worker:PURPOSE", ...)`: only workers of that purpose fail (not recorded as a call)."""
        fault = self._faults.get(f"worker:{purpose}")
        if fault is None:
            return
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                del self._faults[f"worker:{purpose}"]
        raise fault.error

    def _get(self, ref: str) -> FakeContainer:
        for c in self.containers.values():
            if ref in (c.info.id, c.info.name) or (len(ref) >= 12 and c.info.id.startswith(ref)):
                return c
        raise ContainerNotFound(f"inspect container: {ref} not found")

    def _folder(self, container_id: str, path: str) -> Path:
        c = self._get(container_id)
        try:
            return c.folders[path.rstrip("/") or "/"]
        except KeyError:
            raise EngineError(f"{path}: no such mount in {c.info.name}") from None

    # --- containers -----------------------------------------------------------------------
    def ping(self) -> bool:
        self._call("ping")
        return True

    def close(self) -> None:
        pass

    def list_candidates(self, label: str) -> list[ContainerInfo]:
        self._call("list_candidates", label)
        labelled = {sid for sid, s in self.services.items() if label in s.labels} if self.manager else set()
        return [self._with_service(c.info) for c in self.containers.values()
                if label in c.info.labels or (c.info.swarm and c.info.swarm.service_id in labelled)]

    def inspect(self, ref: str) -> ContainerInfo:
        self._call("inspect", ref)
        c = self._get(ref)
        left = self.health_after.get(c.info.id)
        if left is not None and c.info.health == "starting":  # healthy after that many looks
            self.health_after[c.info.id] = left - 1
            if left <= 1:
                c.info = replace(c.info, health="healthy")
        return c.info

    def find_container(self, ref: str) -> ContainerInfo | None:
        try:
            return self._with_service(self.inspect(ref))
        except ContainerNotFound:
            return None

    # --- swarm ----------------------------------------------------------------------------
    def is_swarm_manager(self) -> bool:
        return self.manager

    def unseen_on_workers(self, label: str) -> list[str]:
        return list(self.unseen)

    def service(self, service_id: str) -> SwarmService:
        self._call("service", service_id)
        if not self.manager:
            raise EngineError("inspect service: This node is not a swarm manager.")
        try:
            return self.services[service_id]
        except KeyError:
            raise ContainerNotFound(f"inspect service: {service_id} not found") from None

    def scale_service(self, service_id: str, replicas: int, version: int | None = None) -> SwarmService:
        self._call("scale_service", service_id, replicas)
        service = self.service(service_id)
        if version is not None and version != service.version:
            raise EngineError(f"scale service {service.name}: update out of sequence")
        self.services[service_id] = service = replace(service, replicas=replicas, version=service.version + 1)
        # As Swarm does: a scale to 0 removes the task containers (their volumes stay); a
        # scale back starts new ones (new ids).
        if replicas == 0:
            for c in self._task_containers(service_id):
                self._scaled_away.setdefault(service_id, []).append(c)
                del self.containers[c.info.id]
        else:
            for old in self._scaled_away.pop(service_id, []):
                self._seq += 1
                cid = f"{self._seq:02d}".ljust(64, "c")
                self.containers[cid] = replace(old, info=replace(old.info, id=cid, state=ContainerState.RUNNING))
        if self.on_scale is not None:  # someone else's change just after ours: not in what we were told
            self.on_scale(service_id, replicas)
        return service

    def service_containers(self, service_id: str) -> list[ContainerInfo]:
        self._call("service_containers", service_id)
        return [c.info for c in self._task_containers(service_id)]

    @contextlib.contextmanager
    def stand_in(self, image: str, mounts, purpose: str = "stand-in"):
        """A container with the same folders as the one whose mounts these are."""
        self._call("stand_in", image)
        known = list(self.containers.values()) + [c for gone in self._scaled_away.values() for c in gone]
        source = next(c for c in known if c.info.mounts == tuple(mounts))
        info = self.add_container("stand-in", {"backup-sidecar.worker": purpose}, dict(source.folders),
                                  state=ContainerState.CREATED)
        try:
            yield info.id
        finally:
            self.containers.pop(info.id, None)

    def someone_scales(self, service_id: str, replicas: int) -> None:
        """`docker service scale` by someone else."""
        service = self.services[service_id]
        self.services[service_id] = replace(service, replicas=replicas, version=service.version + 1,
                                            updated_besides_replicas=False)

    def someone_updates(self, service_id: str) -> None:
        """`docker service update --image ...` by someone else: the replica count kept."""
        service = self.services[service_id]
        self.services[service_id] = replace(service, version=service.version + 1, updated_besides_replicas=True)

    def service_tasks(self, service_id: str) -> list[TaskStatus]:
        self._call("service_tasks", service_id)
        linger = self.tasks_linger > 0
        self.tasks_linger -= 1
        tasks = self._task_containers(service_id) + self._scaled_away.get(service_id, [])
        return [TaskStatus(f"t{i}", "node1id", c.info.swarm.slot if c.info.swarm else None,
                           "running" if (c.info.id in self.containers and c.info.state is ContainerState.RUNNING)
                           or linger else "shutdown",
                           "running" if self.services[service_id].replicas else "shutdown")
                for i, c in enumerate(tasks)]

    def state(self, container_id: str) -> ContainerState:
        self._call("state", container_id)
        return self._get(container_id).info.state

    def stop(self, container_id: str, timeout: int) -> bool:
        self._call("stop", container_id, timeout)
        cid = self._get(container_id).info.id
        if self._get(cid).info.state is not ContainerState.RUNNING:  # the engine's 304: no events
            return False
        self.record(cid, "kill", signal="15")
        if self.on_stop is not None:  # while the stop is in flight
            self.on_stop(cid)
        if self._get(cid).info.state is ContainerState.RUNNING:
            self.record(cid, "die")
        self.record(cid, "stop")
        self.set_state(cid, ContainerState.EXITED)
        return False

    def start(self, container_id: str) -> None:
        self._call("start", container_id)
        self.record(self._get(container_id).info.id, "start")
        self.set_state(container_id, ContainerState.RUNNING)
        if container_id in self.health_after:
            c = self._get(container_id)
            c.info = replace(c.info, health="starting")

    def pause(self, container_id: str) -> None:
        self._call("pause", container_id)
        self.record(self._get(container_id).info.id, "pause")
        self.set_state(container_id, ContainerState.PAUSED)

    def unpause(self, container_id: str) -> None:
        self._call("unpause", container_id)
        self.record(self._get(container_id).info.id, "unpause")
        self.set_state(container_id, ContainerState.RUNNING)

    def list_containers(self, project: str | None = None, running: bool = True) -> list[ContainerInfo]:
        self._call("list_containers", project, running)
        return [c.info for c in self.containers.values()
                if (project is None or c.info.compose_project == project)
                and (not running or c.info.state in (ContainerState.RUNNING, ContainerState.PAUSED))]

    def container_events(self, container_id: str, since: float, until: float | None = None) -> list[ContainerEvent]:
        self._call("container_events", container_id)
        return [e for e in self.log if e.container_id == container_id and e.time >= since
                and (until is None or e.time <= until)]

    def run_command(self, container_id: str, command: str, *, user=None, timeout: float = 3600.0,
                    tail_lines: int = 40, fields=None) -> ExecResult:
        """Engine.run_command: recorded as an "exec" call; its options in `exec_options`."""
        self.exec_options.append({"command": command, "user": user, "timeout": timeout})
        code, output = self.exec(container_id, command)
        lines = tuple(output.splitlines()[-tail_lines:])
        timed_out = code == 137 and "timeout" in output
        return ExecResult(code, lines, 0.01, timed_out)

    def exec_stream(self, container_id: str, argv: list[str], *, user=None, environment=None,
                    timeout: float = 3600.0, stdin=None, stdout_lines: bool = False, tail_lines: int = 40,
                    fields=None) -> "FakeExecStream":
        """Engine.exec_stream, run as a real local process: the container's `env` plus
        `environment`, its `bin` folder first on PATH (tests put stand-in tools there)."""
        self._call("exec_stream", container_id, tuple(argv))
        c = self._get(container_id)
        if c.info.state is not ContainerState.RUNNING:
            raise EngineError(f"exec in container {container_id[:12]}: container is not running")
        env = {"PATH": f"{c.bin}:{_basics(c.bin)}", **c.env, **(environment or {})}
        self.exec_options.append({"argv": tuple(argv), "user": user, "timeout": timeout,
                                  "environment": dict(environment or {})})
        return FakeExecStream(argv, env, timeout, stdin, stdout_lines, tail_lines)

    def container_command(self, container_id: str) -> tuple[str, ...]:
        self._call("container_command", container_id)
        return tuple(self._get(container_id).command)

    def exec(self, container_id: str, command: str) -> tuple[int, str]:
        self._call("exec", container_id, command)
        c = self._get(container_id)
        if c.info.state is not ContainerState.RUNNING:
            raise EngineError(f"exec in container {container_id[:12]}: container is not running")
        return c.exec_results.get(command, (0, ""))

    # --- data -----------------------------------------------------------------------------
    def read_path(self, container_id: str, path: str) -> Iterator[bytes]:
        fault = self._call("read_path", container_id, path)
        folder = self._folder(container_id, path)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            tar.add(folder, arcname=".")
        return self._chunks(buf.getvalue(), fault, f"read {path} from {container_id[:12]}")

    def _chunks(self, data: bytes, fault: _Fault | None, what: str) -> Iterator[bytes]:
        for start in range(0, len(data), CHUNK):
            if fault is not None and start >= fault.after_bytes:
                raise fault.error
            yield data[start:start + CHUNK]
        self.calls.append(("stream_end", what))

    def put_archive(self, container_id: str, path: str, data: bytes | Iterable[bytes]) -> None:
        self._call("put_archive", container_id, path)
        raw = data if isinstance(data, bytes) else b"".join(data)
        c = self._get(container_id)
        folder = c.folders.get(path.rstrip("/") or "/")
        if folder is None:  # e.g. the volume root's own entry, unpacked into the mount's parent
            return
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            tar.extractall(folder, filter="fully_trusted")

    def path_is_empty(self, container_id: str, path: str) -> bool:
        self._call("path_is_empty", container_id, path)
        return not any(self._folder(container_id, path).iterdir())

    def run_helper(self, image: str, volumes_from: str, command: list[str]) -> tuple[int, str]:
        """Understands the one helper the sidecar runs: emptying a folder ($1 of `sh -c`)."""
        self._call("run_helper", image, volumes_from, tuple(command))
        folder = self._folder(volumes_from, command[-1])
        for entry in folder.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        return 0, ""

    # --- worker containers: run as a host process with the mounts' folders in place of their paths
    def run_worker(self, spec: WorkerSpec, on_line=None, on_start=None, on_data=None) -> WorkerResult:
        """The worker's command as a host process; its stdin is the "attach" (WORKER_PARENT_ENV),
        written through the WorkerLink `on_start` gets; `fail("worker:PURPOSE:LINE", ...)`
        makes sending LINE (e.g. "go") fail: the engine gone while the worker waits. With
        `on_data`, stdout is data (read in pieces, as frames come) and stderr the lines."""
        self._call("run_worker", spec)
        self._purpose_fault(spec.purpose)
        if spec.image not in self.worker_images:
            raise EngineError(f"create worker container from image {spec.image}: No such image")
        self.workers_run.append(spec)
        name = f"fake-worker-{len(self.workers_run)}"
        argv = [sys.executable if spec.command[0] == "python" else spec.command[0]]
        argv += [self._host_path(arg, spec) for arg in spec.command[1:]]
        env = {**os.environ, "PYTHONPATH": str(REPO), WORKER_PARENT_ENV: "stdin"}
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE if on_data is not None else subprocess.STDOUT, env=env)
        self._running[name] = proc
        tail: list[str] = []
        data_failed: list[BaseException] = []

        def read_data() -> None:
            try:
                while chunk := proc.stdout.read1(65536):
                    on_data(chunk)
            except BaseException as exc:  # noqa: BLE001 - raised by the caller's thread, as the engine's would
                data_failed.append(exc)
                proc.kill()

        reader = threading.Thread(target=read_data, daemon=True) if on_data is not None else None
        try:
            if on_start is not None:
                on_start(WorkerLink(name, lambda data: self._send(proc, spec.purpose, data)))
            if reader is not None:
                reader.start()
            for raw in (proc.stderr if on_data is not None else proc.stdout):
                line = raw.decode("utf-8", "replace").rstrip("\n")
                tail.append(line)
                if on_line is not None:
                    on_line(line)
            if reader is not None:
                reader.join()
                if data_failed:
                    raise data_failed[0]
        finally:
            if proc.poll() is None:
                proc.kill()
            code = proc.wait()
            with contextlib.suppress(OSError):
                proc.stdin.close()
            self._running.pop(name, None)
        return WorkerResult(name, code, tuple(tail[-spec.tail_lines:]), time.monotonic() - started)

    def _send(self, proc: subprocess.Popen, purpose: str, data: bytes) -> None:
        self._purpose_fault(f"{purpose}:{data.decode('utf-8', 'replace').strip()}")
        try:
            proc.stdin.write(data)
            proc.stdin.flush()
        except (OSError, ValueError) as exc:
            raise EngineError(f"write to worker: {exc}") from exc

    def _host_path(self, arg: str, spec: WorkerSpec) -> str:
        prefix, eq, value = arg.rpartition("=") if arg.startswith("--") else ("", "", arg)
        for m in sorted(spec.mounts, key=lambda m: len(m.target), reverse=True):
            if value == m.target or value.startswith(m.target + "/"):
                return prefix + eq + str(self._mount_source(m.kind, m.source)) + value[len(m.target):]
        return arg

    def _mount_source(self, kind: str, source: str) -> Path:
        if kind == "bind":
            return Path(source)
        for c in self.containers.values():
            for folder in c.folders.values():
                if folder.name == source:
                    self._volumes[source] = folder
                    return folder
        if source in self._volumes:  # a volume outlives its containers (a service scaled to 0)
            return self._volumes[source]
        raise EngineError(f"no volume {source}")

    def list_workers(self, labels):
        self._call("list_workers", dict(labels))
        return [w for w in self.leftover_workers if all(w.labels.get(k) == v for k, v in labels.items())]

    def running_workers(self) -> list[str]:
        """Worker processes still running (a restore must leave none)."""
        return [name for name, proc in self._running.items() if proc.poll() is None]

    def remove_worker(self, name: str) -> None:
        self._call("remove_worker", name)
        running = self._running.get(name)
        if running is not None and running.poll() is None:
            running.kill()
        self.leftover_workers = [w for w in self.leftover_workers if w.name != name]

    def own_container(self) -> ContainerInfo | None:
        self._call("own_container")
        return self.own

    def events(self, since: float | None = None):
        self._call("events", since)
        return iter(list(self.event_queue))

    # --- swarm: this node and the fleet -----------------------------------------------------
    def node(self, name: str | None = None) -> NodeIdentity:
        """`self.identity` (a single host named "fake-node" unless a test changes it), named
        `name` when given, checked like the real engine's."""
        self._call("node", name)
        chosen = name if name is not None else self.identity.name
        problem = node_name_problem(chosen)
        if problem is not None:
            raise UnsafeName(f"node name {chosen!r}: {problem}")
        return replace(self.identity, name=chosen)

    def swarm_nodes(self) -> tuple[SwarmNode, ...]:
        self._call("swarm_nodes")
        return tuple(self.fleet) if self.identity.manager else ()

    # --- images ---------------------------------------------------------------------------
    def add_image(self, reference: str, digests: tuple[str, ...] = (), data: bytes = b"",
                  image_id: str | None = None, labels: Mapping[str, str] | None = None) -> ImageInfo:
        info = ImageInfo(image_id or "sha256:" + f"{len(self.images) + 1:x}".rjust(64, "0"), (reference,), digests)
        self.image_labels[info.id] = dict(labels or {})
        self.images[reference] = (info, data or _one_file_tar("manifest.json", b"[]"))
        self.images[info.id] = self.images[reference]
        return info

    def labelled_images(self, label: str) -> list[ImageInfo]:
        """Images added with `labels` holding `label` (KEY=VALUE), the last added first."""
        self._call("labelled_images", label)
        key, _, value = label.partition("=")
        found = [info for ref, (info, _) in self.images.items() if ref == info.tags[0]
                 and self.image_labels.get(info.id, {}).get(key) == value]
        return found[::-1]

    def image_info(self, image: str) -> ImageInfo:
        self._call("image_info", image)
        if image not in self.images:
            raise EngineError(f"inspect image {image}: No such image")
        return self.images[image][0]

    def save_image(self, image: str) -> Iterator[bytes]:
        fault = self._call("save_image", image)
        return self._chunks(self.images[image][1], fault, f"save image {image}")

    def load_image(self, data: Iterable[bytes]) -> list[str]:
        self._call("load_image")
        self.loaded.append(b"".join(data))
        return ["Loaded image: fake"]


def _one_file_tar(name: str, content: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def _basics(bin_folder: Path | None) -> Path:
    """A folder beside the stand-in tools with only what their scripts use from the host:
    the container sees no tool of the host (a host's pg_dumpall must not answer)."""
    folder = (bin_folder or Path(os.environ.get("TMPDIR", "/tmp"))).parent / "basics"
    folder.mkdir(exist_ok=True)
    for tool in ("sh", "cat", "sleep", "timeout", "head", "wc"):
        link = folder / tool
        if not link.exists() and shutil.which(tool):
            link.symlink_to(shutil.which(tool))
    return folder


class FakeExecStream:
    """ExecStream over a local process: stdout's bytes by iteration, stderr kept as tail."""

    def __init__(self, argv, env, timeout, stdin, stdout_lines, tail_lines):
        self.started = time.monotonic()
        self.timeout, self.stdout_lines = timeout, stdout_lines
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.stdout_bytes = 0
        self._ended = False
        self.proc = subprocess.Popen(["timeout", "-s", "KILL", str(max(1, int(timeout))), *argv], env=env,
                                     stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._stdin_error: list[BaseException] = []
        self._err = threading.Thread(target=self._read_err, daemon=True)
        self._err.start()
        if stdin is not None:
            threading.Thread(target=self._feed, args=(stdin,), daemon=True).start()

    def _feed(self, chunks) -> None:
        try:
            for chunk in chunks:
                self.proc.stdin.write(chunk)
        except BaseException as exc:
            self._stdin_error.append(exc)
        finally:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            self.tail.append(line.decode("utf-8", "replace").rstrip("\n"))

    def __iter__(self):
        while True:
            chunk = self.proc.stdout.read1(65536)
            if not chunk:
                self._ended = True
                break
            if self.stdout_lines:
                self.tail.extend(chunk.decode("utf-8", "replace").splitlines())
            else:
                self.stdout_bytes += len(chunk)
                yield chunk

    def run(self) -> ExecResult:
        self.stdout_lines = True
        for _ in self:
            pass
        return self.result()

    def result(self) -> ExecResult:
        code = self.proc.wait()
        self._err.join(5)
        seconds = time.monotonic() - self.started
        timed_out = code in (124, 137, -9) and seconds >= self.timeout
        return ExecResult(code, tuple(self.tail), seconds, timed_out, self.stdout_bytes,
                          self._stdin_error[0] if self._stdin_error else None)

    def close(self) -> None:
        """As the engine's: a stream closed before its end leaves the command without output."""
        if not self._ended and self.proc.poll() is None:
            self.proc.kill()
