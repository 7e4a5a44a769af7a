"""The package's imports only go down: no module reaches itself through other modules'
imports, function-level imports included (a function-level import only hides a cycle)."""

from __future__ import annotations

import ast
import pathlib

import audiolm_jax

PACKAGE = "audiolm_jax"
ROOT = pathlib.Path(audiolm_jax.__file__).parent


def _modules() -> dict[str, pathlib.Path]:
    """Every module of the package: dotted name -> file (a package is its ``__init__``)."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve_relative(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its file. ``from a.b import c``
    imports ``a.b.c`` when that is a module, else ``a.b``; importing ``a.b`` also runs the
    ``__init__`` of ``a`` (a package imports what its ``__init__`` imports)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = (_resolve_relative(name, is_package, node.level, node.module)
                        if node.level else node.module)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in modules else base)
        edges = set()
        for target in targets:
            if target != PACKAGE and not target.startswith(PACKAGE + "."):
                continue
            # The deepest package module named by the import, and the packages above it.
            parts = target.split(".")
            while ".".join(parts) not in modules:
                parts.pop()
            for i in range(2, len(parts) + 1):
                edges.add(".".join(parts[:i]))
        edges.discard(name)
        # A module's own package's __init__ runs before it; not an edge of this module's.
        graph[name] = {e for e in edges if not name.startswith(e + ".")}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module (the cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # recursive: the graph is a few hundred modules at most
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete cycle through the component's first module (for the failure message)."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return component


def test_the_graph_sees_function_level_and_package_imports():
    graph = import_graph()
    # cli.py imports these only inside functions
    assert "audiolm_jax.lm.run" in graph["audiolm_jax.cli"]
    assert "audiolm_jax.export" in graph["audiolm_jax.cli"]
    # `from audiolm_jax.codec import losses` names the module losses, not the package
    assert "audiolm_jax.codec.losses" in graph["audiolm_jax.codec.task"]
    # importing a module runs its packages' __init__ first
    assert {"audiolm_jax.codec", "audiolm_jax.codec.inference"} <= graph["audiolm_jax.cli"]


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e2"}, "e2": set()}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert _a_cycle(graph, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    graph = import_graph()
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles in the package:\n" + "\n".join(
        " -> ".join(_a_cycle(graph, c)) + (f"   (component: {', '.join(c)})"
                                          if len(c) > 2 else "")
        for c in cycles)


# The layers every kind of model shares, and the kinds: the first never import the second.
GENERIC = ("audiolm_jax.errors", "audiolm_jax.workdir", "audiolm_jax.runtime",
           "audiolm_jax.train", "audiolm_jax.export")
MODEL_KINDS = ("audiolm_jax.codec", "audiolm_jax.lm", "audiolm_jax.vqvae")


def _within(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_generic_layers_import_no_model_kind():
    """The training loop, the workdir layer, the runtime and the export serve every kind of
    model through the Task interface, so nothing they import (directly or not) is a kind."""
    graph = import_graph()
    bad = {}
    for module in sorted(m for m in graph if _within(m, GENERIC)):
        seen, todo = set(), [module]
        while todo:
            for target in graph[todo.pop()] - seen:
                seen.add(target)
                todo.append(target)
        kinds = sorted(m for m in seen if _within(m, MODEL_KINDS))
        if kinds:
            bad[module] = kinds
    assert not bad, f"generic modules that reach model code: {bad}"
