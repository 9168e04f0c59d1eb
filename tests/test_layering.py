"""gpwref's modules form layers: no import circle, the verification suite only behind the CLI, and
kernels that depend on neither the core nor the losses.

Every ``import`` / ``from ... import`` of every gpwref/**/*.py counts, including those inside
functions; relative imports are resolved, and ``from pkg import name`` is an edge to ``pkg.name``
when that is a module (else to ``pkg``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gpwref"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imports(name: str, path: Path):
    """(imported module, imported name or None) for every import statement of one module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                yield target, alias.name


def _edges():
    """module -> {(target module, imported name or None)} inside and outside gpwref."""
    edges = {}
    for name, path in MODULES.items():
        out = set()
        for target, imported in _imports(name, path):
            if imported is not None and f"{target}.{imported}" in MODULES:
                out.add((f"{target}.{imported}", None))
            else:
                out.add((target, imported))
        edges[name] = out
    return edges


EDGES = _edges()


def _internal_graph():
    graph = {}
    for name, out in EDGES.items():
        targets = set()
        for target, _ in out:
            # importing gpwref.a.b runs gpwref.a's __init__ as well, but the edge that matters is the module
            if target in MODULES and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def _find_cycle(graph):
    state = {}
    stack = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_imports_inside_functions():
    # guards the parser itself: gpwref/pipeline.py imports the kernel backends inside a function
    assert "gpwref.kernels.backends" in _internal_graph()["gpwref.pipeline"]


def test_no_import_cycle():
    cycle = _find_cycle(_internal_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_cli_imports_the_verification_suite():
    offenders = sorted(
        f"{name} imports {target}"
        for name, out in EDGES.items()
        for target, _ in out
        if name != "gpwref.cli" and target.split(".")[0] in ("verification", "gpwref_verification")
    )
    assert not offenders, offenders


def test_kernels_import_neither_the_core_nor_the_losses_nor_private_names():
    offenders = []
    for name, out in EDGES.items():
        if not name.startswith("gpwref.kernels"):
            continue
        for target, imported in out:
            if target == "gpwref.core" or target.startswith("gpwref.core.") or target.startswith("gpwref.losses"):
                offenders.append(f"{name} imports {target}")
            elif (target.startswith("gpwref.") and not target.startswith("gpwref.kernels")
                  and imported is not None and imported.startswith("_")):
                offenders.append(f"{name} imports the private {target}.{imported}")
    assert not offenders, offenders
