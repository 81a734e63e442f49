"""`python -m bench centers` on a tiny grid: its columns, its distance columns against a brute-force
count over the very centers each generator produced, its files, a generator that cannot be
imported, and bad input."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bench.perf.centers as centers_bench
from bench.cli import main

GRID = {"classes": (5, 40), "bits": (8, 16)}


def brute_force(centers: np.ndarray) -> tuple[int, float, int]:
    rows = [tuple(int(v) for v in row) for row in centers]
    pairs = [sum(a != b for a, b in zip(rows[i], rows[j], strict=True))
             for i in range(len(rows)) for j in range(i + 1, len(rows))]
    duplicates = sum(1 for i in range(len(rows)) if rows[i] in rows[:i])
    return min(pairs), sum(pairs) / len(pairs), duplicates


def test_distance_columns_equal_a_brute_force_count(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[np.ndarray] = []
    real = centers_bench.distance_stats

    def spy(centers: np.ndarray) -> tuple[int, float, int]:
        seen.append(np.array(centers))
        return real(centers)

    monkeypatch.setattr(centers_bench, "distance_stats", spy)
    rows = centers_bench.run_benchmark(GRID["classes"], GRID["bits"], progress=False)
    measured = [row for row in rows if row.min_distance is not None]
    assert len(measured) == len(seen)
    assert {(r.classes, r.bits) for r in measured} == {(c, k) for c in GRID["classes"] for k in GRID["bits"]}
    for row, centers in zip(measured, seen, strict=True):
        assert centers.shape == (row.classes, row.bits) and set(np.unique(centers)) <= {-1, 1}
        lowest, mean, duplicates = brute_force(centers)
        assert row.min_distance == lowest, row
        assert row.mean_distance == pytest.approx(mean, abs=1e-3)
        assert row.duplicates == duplicates
        assert row.reaches_d_star == (lowest >= row.d_star)
        assert row.seconds >= 0
    generators = {row.generator for row in rows}
    assert generators == set(centers_bench.GENERATORS)
    # the generators built to reach d* do, here
    for row in measured:
        if row.generator in ("mds", "shc"):
            assert row.reaches_d_star, row


def test_planted_similarity_is_symmetric_with_unit_diagonal() -> None:
    similarity = centers_bench.planted_similarity(12, np.random.default_rng(0), block=4)
    assert np.allclose(similarity, similarity.T) and np.allclose(np.diag(similarity), 1.0)
    assert (similarity > 0.5).sum() == 12 * 4  # three blocks of four, diagonal included


def test_command_writes_markdown_and_csv(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["centers", "--classes", "5,40", "--bits", "8,16", "--generators", "csq-hadamard,mds,crh",
                 "--out", str(tmp_path), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "centers.csv")
    assert list(table.columns) == list(centers_bench.COLUMNS)
    assert len(table) == 2 * 2 * 3
    assert set(table.generator) == {"csq-hadamard", "mds", "crh"}
    markdown = (tmp_path / "centers.md").read_text()
    assert "| C | K | d* | generator | min | mean | duplicates | min >= d* | seconds | note |" in markdown
    assert markdown.count("\n| 40 | 16 |") == 3 and "| 40 | 16 | 5 | mds |" in printed
    assert f"wrote {tmp_path / 'centers.md'}" in printed


def test_missing_generator_is_listed_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def failing(name: str, *args, **kwargs):
        if name == "methods.hclm":
            raise ImportError("No module named 'methods.hclm'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(centers_bench.importlib, "import_module", failing)
    rows = centers_bench.run_benchmark((5,), (8,), ("hclm", "dpn"), progress=False)
    assert rows[0].generator == "hclm" and rows[0].note.startswith("not available: No module")
    assert rows[0].classes is None and [r.generator for r in rows[1:]] == ["dpn"]


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--classes", "5,x"], "--classes '5,x' is not a comma-separated list of integers"),
    (["--classes", "1"], "--classes '1': every value must be an integer >= 2"),
    (["--classes", "300", "--bits", "8"], "2^8 < 300"),
    (["--generators", "csq,nope"], "unknown generator(s) csq, nope"),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], fragment: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    code = main(["centers", *argv, "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("\n") == 1
    assert not (tmp_path / "centers.csv").exists()
