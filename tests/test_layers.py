"""The package's layers depend in one direction (docs/architecture.md): every import of every
module, read with ``ast`` (function-local and ``TYPE_CHECKING`` ones included), goes to a module
of the same or a lower layer, and no set of modules imports itself round."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import prunekit

SRC = Path(prunekit.__file__).parent

#: The layers, lowest first: a module may import its own layer and the layers below. A module
#: is placed by its longest listed prefix (``prunekit.data`` covers ``prunekit.data.tasks``);
#: the root package's own ``__init__`` is named exactly (it covers nothing else).
LAYERS: list[tuple[str, ...]] = [
    # 0: leaves: pure maths, data, evaluation and model adapters
    ("prunekit._version", "prunekit.errors", "prunekit.files", "prunekit.patterns",
     "prunekit.masks", "prunekit.allocation", "prunekit.hessian", "prunekit.obs",
     "prunekit.curvature", "prunekit.quant",
     "prunekit.data", "prunekit.eval", "prunekit.models", "prunekit.analysis",
     "prunekit.analysis.kernels", "prunekit.analysis.ntk", "prunekit.analysis.masks"),
    # 1: the methods (layer-wise, whole-network, quantizers), checkpoint formats, training
    ("prunekit.methods", "prunekit.formats", "prunekit.training"),
    # 2: what the user asked for, checked once; the block pipeline; reports
    ("prunekit.plan", "prunekit.preflight", "prunekit.pipeline", "prunekit.distributed",
     "prunekit.report", "prunekit.network", "prunekit.analysis.grid"),
    # 3: running a plan in memory or streamed, saving it, and the studies built on that
    ("prunekit.run", "prunekit.output", "prunekit.streaming", "prunekit.analysis.pareto",
     "prunekit.analysis.classifiers", "prunekit.analysis.study"),
    # 4: the public face
    ("prunekit.api", "prunekit"),
    # 5: the command line (and ``python -m prunekit``)
    ("prunekit.cli", "prunekit.__main__"),
]


def layer_of(module: str, layers=LAYERS) -> int:
    best, rank = "", None
    for i, names in enumerate(layers):
        for name in names:
            covers = module == name or ("." in name and module.startswith(name + "."))
            if covers and len(name) > len(best):
                best, rank = name, i
    if rank is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to "
                             "docs/architecture.md)")
    return rank


def modules(src: Path = SRC, package: str = "prunekit") -> dict[str, tuple[ast.Module, bool]]:
    """{dotted name: (its parsed source, is a package __init__)} of every module under src."""
    out = {}
    for path in sorted(src.rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join([package, *(parts[:-1] if is_package else parts)])
        out[name] = (ast.parse(path.read_text(), str(path)), is_package)
    return out


def function_local_imports(tree: ast.Module) -> set[int]:
    """ids of the import nodes inside a function body."""
    return {id(node) for fn in ast.walk(tree)
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))}


def imported(name: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names an import statement of module ``name`` may load (a ``from X import y``
    may load ``X.y`` if it is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def import_graph(mods: dict[str, tuple[ast.Module, bool]]) -> dict[str, set[str]]:
    """{module: the modules of the package it imports}. Importing ``a.b.c`` from outside
    package ``a.b`` also runs ``a.b``'s ``__init__``: that edge is added too (the root package
    excepted: every module is inside it)."""
    root = next(iter(mods)).split(".")[0]
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, (tree, is_package) in mods.items():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in imported(name, is_package, node):
                if target.split(".")[0] != root:
                    continue
                while target not in mods and "." in target:
                    target = target.rsplit(".", 1)[0]
                parts = target.split(".")
                for i in range(2, len(parts) + 1):  # the packages above it, then it
                    dep = ".".join(parts[:i])
                    inside = name == dep or name.startswith(dep + ".")
                    if dep in mods and dep != name and (dep == target or not inside):
                        graph[name].add(dep)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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


def upward(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """Every import of a module from a higher layer than its own."""
    return [f"{m} (layer {layer_of(m, layers)}) imports {d} (layer {layer_of(d, layers)})"
            for m in sorted(graph) for d in sorted(graph[m])
            if layer_of(d, layers) > layer_of(m, layers)]


@pytest.fixture(scope="module")
def package():
    mods = modules()
    return mods, import_graph(mods)


def test_the_walk_sees_the_package(package):
    mods, graph = package
    assert len(mods) > 60 and "prunekit.streaming.job" in mods and "prunekit.cli" in mods
    assert "prunekit.plan" in graph["prunekit.run"]
    assert "prunekit.methods" in graph["prunekit.plan"]  # via prunekit.methods.base as well


def test_no_import_cycles(package):
    assert cycles(package[1]) == []


def test_every_import_goes_down_the_layers(package):
    assert upward(package[1]) == []


def test_function_local_imports_are_optional_dependencies_with_a_reason(package):
    """An import inside a function only for an optional dependency, with a comment saying so;
    never one of the package's own modules."""
    mods, _ = package
    problems = []
    for name, (tree, _) in mods.items():
        path = SRC.joinpath(*name.split(".")[1:])
        path = path / "__init__.py" if mods[name][1] else path.with_suffix(".py")
        lines = path.read_text().splitlines()
        local = function_local_imports(tree)
        for node in ast.walk(tree):
            if id(node) not in local:
                continue
            targets = imported(name, mods[name][1], node)
            if any(t.split(".")[0] == "prunekit" for t in targets):
                problems.append(f"{name}:{node.lineno} imports {targets[0]} inside a function")
            elif "#" not in lines[node.lineno - 1] and "#" not in lines[node.lineno - 2]:
                problems.append(f"{name}:{node.lineno} local import of {targets[0]} has no "
                                "comment saying why")
    assert problems == []


def test_no_module_is_over_600_lines_and_api_is_thin():
    sizes = {p.relative_to(SRC).as_posix(): len(p.read_text().splitlines())
             for p in SRC.rglob("*.py")}
    assert {p: n for p, n in sizes.items() if n > 600} == {}
    assert sizes["api.py"] <= 300


# The checks themselves, on a synthetic package: they must fail where they should.

SYNTHETIC = {
    "pkg/__init__.py": "from .face import run\n",
    "pkg/leaf.py": "import math\n",
    "pkg/mid/__init__.py": "",
    "pkg/mid/method.py": "from ..leaf import math\n",
    "pkg/face.py": "from .mid.method import math\n\ndef run():\n    pass\n",
}
SYNTHETIC_LAYERS = [("pkg.leaf",), ("pkg.mid",), ("pkg.face", "pkg")]


def synthetic(tmp_path: Path, extra: dict[str, str]) -> dict[str, set[str]]:
    for rel, text in {**SYNTHETIC, **extra}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return import_graph(modules(tmp_path / "pkg", "pkg"))


def test_a_clean_synthetic_graph_passes(tmp_path):
    graph = synthetic(tmp_path, {})
    assert graph["pkg.face"] == {"pkg.mid", "pkg.mid.method"}  # the package __init__ runs too
    assert cycles(graph) == [] and upward(graph, SYNTHETIC_LAYERS) == []


def test_an_upward_import_inside_a_function_fails(tmp_path):
    """The hidden kind: a leaf importing the face inside a function, as models/loaders.py once
    imported api.load."""
    graph = synthetic(tmp_path, {"pkg/leaf.py": "def f():\n    from .face import run\n"})
    assert upward(graph, SYNTHETIC_LAYERS) == ["pkg.leaf (layer 0) imports pkg.face (layer 2)"]
    assert cycles(graph) == [["pkg.face", "pkg.leaf", "pkg.mid.method"]]


def test_a_cycle_within_one_layer_fails(tmp_path):
    graph = synthetic(tmp_path, {"pkg/mid/other.py": "from . import method\n",
                                 "pkg/mid/method.py": "from .other import x\n"})
    assert upward(graph, SYNTHETIC_LAYERS) == []
    assert cycles(graph) == [["pkg.mid.method", "pkg.mid.other"]]


def test_an_unplaced_module_is_named(tmp_path):
    graph = synthetic(tmp_path, {"pkg/stray.py": "from .leaf import math\n"})
    with pytest.raises(AssertionError, match="pkg.stray is in no layer"):
        upward(graph, SYNTHETIC_LAYERS)
