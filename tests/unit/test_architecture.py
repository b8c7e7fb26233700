"""The tree keeps the architecture: no import cycles, and components import only downwards.

Imports are read from the source (ast), so this runs without importing anything. Imports inside
`if TYPE_CHECKING:` are left out: they exist for annotations only and never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "torua": ROOT / "shared" / "torua",
    "torua_coordinator": ROOT / "services" / "coordinator" / "torua_coordinator",
    "torua_node": ROOT / "services" / "node" / "torua_node",
}

# The node's components, lowest first: a component may import those before it, never those after.
# `main` (the composition root) wires them all.
NODE_LAYERS = ["storage", "cypher", "shard", "router", "rag", "node", "main"]


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pkg, path in PACKAGES.items():
        for file in sorted(path.rglob("*.py")):
            parts = list(file.relative_to(path).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([pkg, *parts])] = file
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(module: str, tree: ast.AST) -> set[str]:
    """Modules of the three packages that `module` imports at run time."""
    out: set[str] = set()
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                is_package = MODULES[module].name == "__init__.py"
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            submodules = {f"{base}.{a.name}" for a in node.names} & MODULES.keys()
            out.update(submodules)
            if len(submodules) < len(node.names):  # `from pkg import module` is that module alone
                out.add(base)
        stack.extend(ast.iter_child_nodes(node))
    return {m for m in out if m in MODULES and m != module}


def _graph() -> nx.DiGraph:
    g = nx.DiGraph()
    for module, file in MODULES.items():
        g.add_node(module)
        for target in _imported(module, ast.parse(file.read_text(), str(file))):
            g.add_edge(module, target)
    return g


GRAPH = _graph()


def test_the_import_graph_is_read() -> None:
    # Guards the reader itself: a few edges every version of the tree has.
    assert ("torua_node.main", "torua_node.node.process") in GRAPH.edges or any(
        GRAPH.has_edge("torua_node.main", m) for m in MODULES if m.startswith("torua_node.node.")
    )
    assert GRAPH.has_edge("torua_node.shard.replica", "torua_node.storage.store")
    assert len(MODULES) > 60


def test_no_import_cycles() -> None:
    cycles = [sorted(c) for c in nx.strongly_connected_components(GRAPH) if len(c) > 1]
    assert cycles == [], f"modules importing each other (directly or around a loop): {cycles}"


def _component(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "torua_node" or len(parts) < 2:
        return None
    return parts[1]


@pytest.mark.parametrize("layer", NODE_LAYERS)
def test_node_components_import_only_downwards(layer: str) -> None:
    allowed = set(NODE_LAYERS[: NODE_LAYERS.index(layer) + 1])
    wrong = sorted(
        (src, dst)
        for src, dst in GRAPH.edges
        if _component(src) == layer and _component(dst) not in allowed | {None, "settings"}
    )
    assert wrong == [], f"{layer} imports a component above it: {wrong}"


def test_shared_package_does_not_import_the_services() -> None:
    # torua.cli is the command line: `torua node` / `torua coordinator` start those services.
    wrong = sorted(
        (src, dst)
        for src, dst in GRAPH.edges
        if src.split(".")[0] == "torua" and src != "torua.cli" and dst.split(".")[0] != "torua"
    )
    assert wrong == []


def test_the_router_seam() -> None:
    """Search, retrieval and queries reach the shards only through the ShardClient seam, never
    through the data API facade (which is what made them testable only through whole clusters)."""
    facade = "torua_node.router.api"
    users = sorted(src for src, dst in GRAPH.edges if dst == facade and _component(src) in {"rag", "cypher"})
    assert users == []
