"""The layers point one way: pure core <- adapters <- actions <- cli.

Checked over the import graph of the package's own source (ast, no import is run):
  - every module of `sidecar` belongs to exactly one layer, mostly by its package (a new
    module goes into the package of its layer);
  - a module imports our modules of its own layer or lower ones only;
  - no import of our modules inside a function or class (a lazy import hides a cycle);
  - the core talks to no engine and no network;
  - no import cycle at all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "sidecar"

CORE, ADAPTERS, ACTIONS, CLI = 0, 1, 2, 3
LAYER_NAMES = {CORE: "core", ADAPTERS: "adapters", ACTIONS: "actions", CLI: "cli"}

# A package's layer is its folder's (the folders are the layers: docs/architecture.md); the one
# exception, the mirror's pure diff kept beside its worker, is listed by module.
# Longest prefix wins. The top of `sidecar/` holds the command line alone.
LAYERS = {
    "sidecar": CORE,  # the package's docstring and __version__
    "sidecar.core": CORE,
    "sidecar.mirror.diff": CORE,  # the staging mirror's change detection, beside its reader and worker
    "sidecar.docker": ADAPTERS,  # the Docker engine, the preflight checks
    "sidecar.tarball": ADAPTERS,  # the archive file: tar writer, checked extractor, age, streams
    "sidecar.store": ADAPTERS,  # the backup volume, its JSON state, the restic repository
    "sidecar.readers": ADAPTERS,  # how a volume's bytes reach an archive, and back (unpack)
    "sidecar.mirror": ADAPTERS,  # the staging mirror: its reader and its worker pass
    "sidecar.worker": ADAPTERS,  # runs inside worker containers
    "sidecar.destinations": ADAPTERS,
    "sidecar.notify": ADAPTERS,
    "sidecar.pings": ADAPTERS,
    "sidecar.telemetry": ADAPTERS,  # metrics, logging set-up
    "sidecar.actions": ACTIONS,
    "sidecar.cli": CLI,
    "sidecar.doctables": CLI,  # a maintainer's tool: writes the reference tables in docs/
    "sidecar.__main__": CLI,
}

# What the pure core must not use: it decides, the adapters talk.
CORE_FORBIDDEN = ("docker", "boto3", "botocore", "s3transfer", "requests", "urllib3", "prometheus_client",
                  "socket", "http", "urllib.request", "subprocess")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> int | None:
    best = None
    for prefix, layer in LAYERS.items():
        if module == prefix or (prefix != "sidecar" and module.startswith(prefix + ".")):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, layer)
    return best[1] if best else None


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """Absolute names of what a `from ... import ...` brings in (modules or their attributes)."""
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        if not is_package:
            parts = parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def _imports(module: str, path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported module, line, at top level) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    top_level = {id(n) for n in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` blocks count as top level
        if isinstance(node, ast.If):
            top_level.update(id(n) for n in node.body)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = _resolve(module, is_package, node)
        else:
            continue
        for name in names:
            target = name
            while target and target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known:
                found.append((target, node.lineno, id(node) in top_level))
            elif not name.startswith("sidecar"):
                found.append((name, node.lineno, id(node) in top_level))
    return sorted(set(found), key=lambda item: (item[1], item[0]))


MODULES = _modules()
GRAPH = {m: _imports(m, p, set(MODULES)) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    unplaced = [m for m in MODULES if _layer(m) is None]
    assert not unplaced, f"place these modules in a layer in {__file__}: {unplaced}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    mine = _layer(module)
    wrong = [f"line {line}: {target} ({LAYER_NAMES[_layer(target)]})"
             for target, line, _ in GRAPH[module]
             if target in MODULES and _layer(target) is not None and mine is not None and _layer(target) > mine]
    assert not wrong, f"{module} ({LAYER_NAMES.get(mine)}) imports a higher layer: {wrong}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_lazy_imports_of_our_modules(module):
    lazy = [f"line {line}: {target}" for target, line, top in GRAPH[module] if target in MODULES and not top]
    assert not lazy, f"{module} imports our modules inside a function: {lazy}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) == CORE))
def test_core_talks_to_no_engine_and_no_network(module):
    bad = [f"line {line}: {name}" for name, line, _ in GRAPH[module]
           if name not in MODULES and any(name == f or name.startswith(f + ".") for f in CORE_FORBIDDEN)]
    assert not bad, f"core module {module} uses {bad}"


def _packages_of(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def test_no_import_cycles():
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py first: a package's __init__ is
    an edge too (a reader outside sidecar/readers/ would make the registry import itself)."""
    edges = {m: {p for t, _, _ in GRAPH[m] if t in MODULES for p in _packages_of(t) | {t}
                 if p in MODULES and p != m and p not in _packages_of(m)}
             for m in MODULES}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt])
                return True
            if nxt not in state and visit(nxt, stack + [node]):
                return True
        state[node] = 2
        return False

    for m in sorted(MODULES):
        if m not in state and visit(m, []):
            break
    assert not cycle, f"import cycle: {' -> '.join(cycle)}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_says_what_it_owns(module):
    assert ast.get_docstring(ast.parse(MODULES[module].read_text())), f"{module} has no docstring"


def test_the_graph_is_real():
    """The graph is real: a known import of today's code is found with its line."""
    targets = {t for t, _, _ in GRAPH["sidecar.cli"]}
    assert "sidecar.core.settings" in targets and "sidecar.docker.engine" in targets
