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
    assert graph.has_edge("bench.training.train", "methods")
    cycles = sorted(sorted(c) for c in nx.simple_cycles(graph) if len(c) > 1)
    # A package importing its own submodule in __init__ and that submodule importing a sibling
    # through the package name is not a loop in practice; none exist today, so none are allowed.
    assert cycles == [], f"import cycles: {cycles}"


@pytest.mark.parametrize("module", ["bench.training.train", "bench.sweeps.runner",
                                    "bench.sweeps.parallel", "bench.runs.spec"])
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


# The stages of a run, lowest first: a module may import its own package and any package of a
# lower rank, never a higher one (README, Architecture). Top-level modules (cli, errors,
# __main__) and `methods` have their own rules above.
PACKAGE_RANKS = {
    "methods": 0, "bench.errors": 0, "bench": 0,
    "bench.data": 1, "bench.evaluation": 1,
    "bench.network": 2,
    "bench.runs": 3,
    "bench.training": 4,
    "bench.sweeps": 5,
    "bench.tuning": 6, "bench.perf": 6,
    "bench.report": 7,
    "bench.commands": 8, "bench.cli": 9, "bench.__main__": 10,
}
SAME_RANK_ALLOWED = {("bench.evaluation", "bench.data")}  # the evaluator reads card labels


def package_of(module: str) -> str:
    """The ranked package a module belongs to (its longest prefix in PACKAGE_RANKS)."""
    parts = module.split(".")
    for length in range(len(parts), 0, -1):
        prefix = ".".join(parts[:length])
        if prefix in PACKAGE_RANKS:
            return prefix
    raise AssertionError(f"{module} belongs to no ranked package: add it to PACKAGE_RANKS")


def upward_imports(graph: nx.DiGraph) -> list[str]:
    wrong = []
    for source, target in graph.edges:
        here, there = package_of(source), package_of(target)
        if here == there or (here, there) in SAME_RANK_ALLOWED:
            continue
        if PACKAGE_RANKS[there] >= PACKAGE_RANKS[here] and there not in ("bench", "bench.errors"):
            wrong.append(f"{source} ({here}, rank {PACKAGE_RANKS[here]}) imports {target} "
                         f"({there}, rank {PACKAGE_RANKS[there]})")
    return sorted(wrong)


def test_imports_point_down_the_stages() -> None:
    graph = import_graph()
    assert {package_of(node) for node in graph.nodes} >= {
        "bench.data", "bench.evaluation", "bench.network", "bench.runs", "bench.training",
        "bench.sweeps", "bench.tuning", "bench.report", "bench.commands", "bench.perf"}
    assert upward_imports(graph) == []


def test_an_upward_import_is_caught() -> None:
    """The checker itself: the loop importing a sweep module (rank 4 -> 5) is reported."""
    graph = import_graph()
    graph.add_edge("bench.training.train", "bench.sweeps.runner")
    assert upward_imports(graph) == [
        "bench.training.train (bench.training, rank 4) imports bench.sweeps.runner (bench.sweeps, rank 5)"]


def test_few_modules_sit_directly_under_bench() -> None:
    loose = sorted(p.name for p in (ROOT / "bench").glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "cli.py", "errors.py"]


def test_the_readme_names_only_packages_that_exist() -> None:
    """The README's architecture table lists the ranked packages: each must exist, and each
    ranked package must be listed, so the table cannot drift from the code."""
    import re

    text = (ROOT / "docs" / "README.template.md").read_text()
    start = text.index("\n## Architecture")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end != -1 else len(text)]
    named = set(re.findall(r"`(bench/[a-z_]+)/`", section))
    assert named, "the architecture table names no package"
    for folder in named:
        assert (ROOT / folder / "__init__.py").is_file(), f"README names {folder}/, which does not exist"
    ranked = {name.replace(".", "/") for name in PACKAGE_RANKS
              if name.count(".") == 1 and (ROOT / name.replace(".", "/")).is_dir()}
    assert ranked <= named, f"packages missing from the README table: {sorted(ranked - named)}"
