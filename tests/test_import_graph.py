"""The direction of the arrows: read every import in bench/ and methods/ (module level, inside
functions and under TYPE_CHECKING alike) and fail on any cycle, and on methods/ importing any
part of bench/ other than its error type."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "methods")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """Project modules a file imports: `import a.b`, `from a.b import c` (c itself when it is a
    module), and relative imports resolved against the file's package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [stem] + [f"{stem}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            # the deepest project module the name refers to
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != this:
                found.add(name)
    return found


def import_graph() -> nx.DiGraph:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    known = {module_name(p) for p in files}
    graph = nx.DiGraph()
    for path in files:
        source = module_name(path)
        graph.add_node(source)
        for target in imported_modules(path, known):
            graph.add_edge(source, target)
    return graph


def test_parser_sees_a_planted_cycle(tmp_path: Path) -> None:
    """The checker itself: a two-module loop written on disk is found."""
    (tmp_path / "a.py").write_text("from b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    import a\n")
    known = {"a", "b"}
    graph = nx.DiGraph()
    for name in known:
        path = tmp_path / f"{name}.py"
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                target = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                graph.add_edge(name, target)
    assert list(nx.simple_cycles(graph))


def test_no_import_cycle_in_bench_or_methods() -> None:
    graph = import_graph()
    assert graph.number_of_edges() > 20  # the parser really read the imports
    assert graph.has_edge("bench.train", "methods")
    cycles = sorted(sorted(c) for c in nx.simple_cycles(graph) if len(c) > 1)
    # A package importing its own submodule in __init__ and that submodule importing a sibling
    # through the package name is not a loop in practice; none exist today, so none are allowed.
    assert cycles == [], f"import cycles: {cycles}"


@pytest.mark.parametrize("module", ["bench.train", "bench.runner", "bench.parallel", "bench.spec"])
def test_methods_never_import_the_harness(module: str) -> None:
    graph = import_graph()
    for node in graph.nodes:
        if node == "methods" or node.startswith("methods."):
            assert not nx.has_path(graph, node, module), f"{node} reaches {module}"


def test_methods_import_only_the_error_type_from_bench() -> None:
    graph = import_graph()
    allowed = {"bench", "bench.errors"}
    for node in graph.nodes:
        if node == "methods" or node.startswith("methods."):
            bench_targets = {t for t in graph.successors(node) if t == "bench" or t.startswith("bench.")}
            assert bench_targets <= allowed, f"{node} imports {bench_targets - allowed}"
