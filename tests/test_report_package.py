"""The report package as a whole: no import cycle and no oversized module inside it, the
command writes byte-identical files twice (markdown, html, figures, verdicts.json, runs.csv),
runs.csv is one tidy row per run, and the HTML reads at 1,400 px in a real browser."""

from __future__ import annotations

import ast
import io
import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main

PACKAGE = Path(__file__).resolve().parent.parent / "bench" / "report"
SEEDS = (0, 1)


def cell(make_record, method, bits, mean, *, seeds=SEEDS, spread=0.002, **options):
    return [make_record(method, bits, seed, mean + spread * (seed - 1), **options) for seed in seeds]


def package_imports() -> dict[str, set[str]]:
    """module -> modules of bench.report it imports (anywhere in the file)."""
    modules = {p.stem: p for p in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level:
                targets = [f"bench.report.{node.module or ''}".rstrip(".")]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                if target == "bench.report":
                    found.add("__init__")
                elif target.startswith("bench.report."):
                    found.add(target.split(".")[2])
        graph[name] = found - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if state.get(nxt) is None and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycle_inside_the_report_package():
    graph = package_imports()
    assert "claims" in graph["__init__"] and "stats" in graph["verdicts"]  # the reader sees imports
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    assert all("__init__" not in targets for name, targets in graph.items() if name != "__init__"), \
        "submodules import siblings directly, never through bench.report"


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_of_the_package_is_oversized():
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert len(sizes) >= 8 and all(lines <= 600 for lines in sizes.values()), sizes


def test_empty_results_give_one_line_and_exit_2(tmp_path, capsys):
    assert main(["report", "--results", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no run records under") and "\n" not in err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The command run twice on the same records (a module fixture: figures take seconds)."""
    from conftest import build_record, write_result_files

    make_record = build_record
    records = []
    for bits in (16, 32):
        records += cell(make_record, "crh", bits, 0.70, hook_seconds=0.2)
        records += cell(make_record, "csq", bits, 0.65)
        records += cell(make_record, "classify-then-hash", bits, 0.62)
    records += cell(make_record, "shc", 16, 0.66, stages={"classifier": 5.0, "centers": 1.0})
    records += cell(make_record, "crh", 32, 0.67, settings={"reassign": "never"})
    records += cell(make_record, "crh", 16, 0.69, epochs=20, hook_seconds=0.2)  # no ablation series here
    records.append(make_record("dpn", 16, 0, status="failed"))
    records.append(make_record("dpn", 16, 1, 0.5, results_version=-1))
    base = tmp_path_factory.mktemp("report")
    write_result_files(base / "results", records)
    outputs = []
    for name in ("a", "b"):
        out = base / name
        (out / "figures").mkdir(parents=True)
        (out / "figures" / "stale-from-an-old-report.png").write_bytes(b"old")
        buffer = io.StringIO()
        from contextlib import redirect_stdout

        with redirect_stdout(buffer):
            assert main(["report", "--results", str(base / "results"), "--out", str(out)]) == 0
        outputs.append({p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
                        if p.is_file()})
    return outputs, buffer.getvalue(), records, base / "a"


def test_report_command_writes_identical_files_twice(written):
    (first, second), stdout, records, _ = written
    assert first == second  # markdown, html, verdicts, runs.csv and every PNG byte for byte
    assert "crh-beats-baselines: " in stdout and "runs: " in stdout
    names = set(first)
    assert {"report.md", "report.html", "verdicts.json", "runs.csv", "figures/headline.png"} <= names
    assert "figures/stale-from-an-old-report.png" not in names
    figures = sorted(n for n in names if n.endswith(".png"))
    for prefix in ("curves-", "ablations-", "centers-", "cost-", "validation-"):
        assert any(n.startswith("figures/" + prefix) for n in figures), prefix
    md = first["report.md"].decode()
    assert all(f"]({figure})" in md for figure in figures)
    page = first["report.html"].decode()
    assert page.count('src="data:image/png;base64,') == len(figures)
    assert "src=\"http" not in page and "<link" not in page and "<script" not in page
    assert b"Software" not in b"".join(first[f] for f in figures)  # no matplotlib version stamp
    verdicts = json.loads(first["verdicts.json"])
    assert [v["verdict"] for v in verdicts] and all("comparisons" in v and "regime" in v for v in verdicts)
    ablations = md.split("## CRH ablations", 1)[1].split("\n## ", 1)[0]
    assert ablations.count("\n### ") == 1  # only the table with a series gets a section
    assert "no ablation data, in: " in ablations and "epochs=20" in ablations.rsplit("### ", 1)[1]


def test_runs_csv_is_one_tidy_row_per_run(written):
    (first, _), _, records, _ = written
    frame = pd.read_csv(io.BytesIO(first["runs.csv"]))
    assert len(frame) == len(records) and frame.run_id.is_unique
    assert set(frame.columns) >= {"run_id", "status", "counted", "dataset", "method", "bits", "seed",
                                  "protocol", "metrics.mAP", "config.lr", "timings.train",
                                  "environment.torch", "code.commit", "table", "variant"}
    assert frame.counted.sum() == len(records) - 2
    reasons = dict(zip(frame.run_id, frame.why_not_counted.fillna(""), strict=True))
    failed = next(r["run_id"] for r in records if r.get("status") == "failed")
    older = next(r["run_id"] for r in records if r["code"]["results_version"] == -1)
    assert reasons[failed] == "failed" and reasons[older] == "older code"
    crh = frame[(frame.method == "crh") & (frame.bits == 16) & (frame.seed == 0)].iloc[0]
    source = next(r for r in records if r["run_id"] == crh.run_id)
    assert crh["metrics.mAP"] == pytest.approx(source["metrics"]["mAP"])
    assert crh["timings.method_hooks"] == pytest.approx(0.2)
    # the record's file, relative to the results folder (no machine path)
    assert crh["record_file"] == f"runs/fashion-mnist/crh/{crh.run_id}.json.gz"
    assert not any(c.startswith("metrics.per_query") or c == "metrics.precision_at_radius"
                   for c in frame.columns)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed")
def test_html_reads_at_1400px_with_the_verdicts_above_the_fold(written, tmp_path):
    """Render the page in headless Chromium at 1,400 x 900 and read back its layout."""
    *_, out = written
    probe = ('<script>document.title="layout "+document.documentElement.scrollWidth+" "+'
             'Math.ceil(document.querySelector("table.verdicts").getBoundingClientRect().bottom)</script>')
    page = (out / "report.html").read_text().replace("</body>", probe + "</body>")
    (tmp_path / "probe.html").write_text(page)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             "--window-size=1400,900", f"--user-data-dir={tmp_path / 'profile'}"]
    result = subprocess.run([_chromium(), *flags, "--dump-dom", f"file://{tmp_path / 'probe.html'}"],
                            capture_output=True, text=True, timeout=120, check=False)
    title = result.stdout.split("<title>layout ", 1)[1].split("</title>", 1)[0]
    width, verdicts_bottom = (int(v) for v in title.split())
    assert width <= 1400, f"the page is {width} px wide: it scrolls horizontally at 1,400 px"
    assert verdicts_bottom <= 900, f"the verdict table ends at {verdicts_bottom} px, below the fold"
