"""Docker, as the sidecar talks to it (adapters).

- `engine`: the engine through the few docker-py calls the sidecar needs (containers,
  volumes, events, exec, worker containers, Swarm services), returning the core's typed
  values and raising EngineError;
- `preflight`: the checks every command makes first (the Docker socket is there and usable,
  BACKUP_DIR is readable and, for commands that write, writable and ours).
"""
