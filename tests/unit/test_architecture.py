"""The layering of docs/architecture.md, checked on the source: imports point down only, with no circle.

Every ``import`` counts, also those inside functions (they run sooner or later); only imports under
``if TYPE_CHECKING:`` do not (they never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("device_sim", "provisioner", "local_iot")

#: device_sim's layers, lowest first: a module may import its own layer and those before it.
LAYERS = (
    ("device_sim.fileio",),
    ("device_sim.protocol",),
    ("device_sim.engine",),
    ("device_sim.sinks",),
    ("device_sim.transport",),
    ("device_sim.results",),
    ("device_sim.device",),
    ("device_sim.fleet",),
    ("device_sim.cli", "device_sim.__main__"),
)

#: The command-line layer of each package: the only modules that may import click.
CLI = ("device_sim.cli", "device_sim.__main__", "provisioner.cli", "provisioner.__main__", "local_iot.cli")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


MODULES = _modules()


def _type_checking_only(tree: ast.Module) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skip.update(id(n) for n in ast.walk(child))
    return skip


def _imports(name: str, path: Path) -> Iterator[str]:
    """Absolute names of everything ``name`` imports (a submodule where the imported name is one)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_only(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                yield sub if sub in MODULES else module


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets = set()
        for target in _imports(name, path):
            while target and target not in MODULES:  # ``import a.b.c`` of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


GRAPH = _graph()


def _external(name: str) -> set[str]:
    return {imp.split(".")[0] for imp in _imports(name, MODULES[name])}


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _layer(name: str) -> int | None:
    for index, prefixes in enumerate(LAYERS):
        if _in(name, prefixes):
            return index
    return None


def test_the_import_graph_has_no_circle() -> None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                circle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import circle: " + " -> ".join(circle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_only_the_command_line_layer_imports_click(module: str) -> None:
    if not _in(module, CLI):
        assert "click" not in _external(module), f"{module} imports click: move that code into the cli layer"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("device_sim")))
def test_device_sim_imports_point_down_the_layers(module: str) -> None:
    own = _layer(module)
    if own is None:  # the package's own __init__ (the lazy public face)
        return
    for target in GRAPH[module]:
        if target.startswith("device_sim"):
            layer = _layer(target)
            assert layer is not None and layer <= own, f"{module} (layer {own}) imports {target} (layer {layer})"
        elif target.startswith("provisioner"):
            # the manifest is read in one place; the demo drives the provisioner's command line
            assert module in ("device_sim.fleet.plan", "device_sim.cli.demo"), f"{module} imports {target}"
        elif target.startswith("local_iot"):
            assert module == "device_sim.cli.demo", f"only the demo starts the emulator; {module} imports {target}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.startswith("device_sim")))
def test_the_emulator_and_provisioner_share_only_the_wire_format_and_file_helpers(module: str) -> None:
    for target in GRAPH[module]:
        if target.startswith("device_sim"):
            assert _in(target, ("device_sim.protocol", "device_sim.fileio")), f"{module} imports {target}"
    if module.startswith("provisioner"):
        assert not any(t.startswith("local_iot") for t in GRAPH[module]), f"{module} imports the emulator"


def test_the_checks_see_the_whole_tree() -> None:
    # the rules above are only as good as the graph: it must hold the modules and their edges
    assert "device_sim.fleet.plan" in GRAPH and "provisioner.manifest" in GRAPH["device_sim.fleet.plan"]
    assert "device_sim.protocol" in GRAPH["device_sim.engine.machine"] or any(
        t.startswith("device_sim.protocol") for t in GRAPH["device_sim.engine.machine"]
    )
    assert len(MODULES) > 80
