"""Where the reproduction plan stands (bench.commands.progress counts, bench.report.progress
renders): each planned experiment's runs counted as recorded (a complete record under the id
the run would train with now), to train, or waiting for a search (a tuned run with no tuned
entry at its budget)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main
from bench.commands.progress import experiment_progress
from bench.report import build_report
from bench.report.progress import SECTION, PlanState, Progress, progress_numbers
from bench.tuning.unwritten import Unwritten

FAST = ["--device", "cpu", "--quiet"]

EXPERIMENT = """name: progress-test
dataset: synthetic
methods: [{method}]
bits: [16, 32]
seeds: [0, 1]
protocol: tuned
settings: {{epochs: 1}}
"""


def experiment(tmp_path: Path, method: str = "csq") -> str:
    path = tmp_path / f"progress-{method}.yaml"
    path.write_text(EXPERIMENT.format(method=method))
    return str(path)


def test_runs_are_recorded_to_train_or_waiting(tmp_path: Path, one_thread, tuned_csq: Path) -> None:
    """csq is tuned at 16 bits only (conftest's tuned_csq): of 2 lengths x 2 seeds, the 16-bit
    seed 0 is trained here, the 16-bit seed 1 is still to train, and both 32-bit runs wait for a
    search. Once the tuned value changes, the stored run is no longer the run the plan asks for."""
    results = tmp_path / "results"
    assert main(["run", "--methods", "csq", "--bits", "16", "--seeds", "0", "--protocol", "tuned",
                 "--dataset", "synthetic", "--epochs", "1", "--results", str(results), *FAST]) == 0
    path = experiment(tmp_path)
    counted = experiment_progress("1", path, results)
    assert counted == Progress("1", path, ("synthetic",), runs=4, recorded=1, to_train=1, waiting=2)

    tuned_csq.write_text(tuned_csq.read_text().replace("lr: 0.0005", "lr: 0.0007"))
    again = experiment_progress("1", path, results)
    assert (again.recorded, again.to_train, again.waiting) == (0, 2, 2)


def test_a_tuned_experiment_without_any_tuned_values_waits_whole(tmp_path: Path, tuned_csq: Path) -> None:
    """dpn has no entry in the synthetic card's tuned file at all: `bench run` refuses the
    experiment, and progress counts all four of its runs as waiting instead of failing."""
    path = experiment(tmp_path, "dpn")
    counted = experiment_progress("2", path, tmp_path / "results")
    assert (counted.runs, counted.recorded, counted.to_train, counted.waiting) == (4, 0, 0, 4)


def test_the_section_and_numbers_need_a_recorded_run() -> None:
    none_yet = [Progress("3", "a", ("synthetic",), 4, 0, 4, 0)]
    some = [*none_yet, Progress("4", "b", ("synthetic",), 6, 2, 1, 3)]
    search = Unwritten("synthetic", "csq", 16, 1, "synthetic-csq-16b-1e-abcdef", 7, "2026-12-06 08:00")
    assert progress_numbers(PlanState(tuple(none_yet), (search,))) == {}
    numbers = progress_numbers(PlanState(tuple(some), (search,)))
    assert numbers["progress.b.recorded"] == "2" and numbers["progress.b.waiting"] == "3"
    assert "| 4 | `b` | synthetic | 6 | 2 | 1 | 3 |" in numbers["progress.table"]
    assert "|  | **all** |  | 10 | 2 | 5 | 3 |" in numbers["progress.table"]
    assert (numbers["progress.all.runs"], numbers["progress.all.to_train"]) == ("10", "5")
    assert numbers["progress.searches.count"] == "1"
    assert "| synthetic | csq | 16 bits, 1 epochs | `synthetic-csq-16b-1e-abcdef` | 7 | 2026-12-06 08:00 |" \
        in numbers["progress.searches.table"]
    assert "every search" in progress_numbers(PlanState(tuple(some)))["progress.searches.table"].lower()
    headings = lambda report: [b.text for b in report.blocks if type(b).__name__ == "Heading"]  # noqa: E731
    assert SECTION not in headings(build_report([], progress=PlanState(tuple(none_yet))))
    assert SECTION in headings(build_report([], progress=PlanState(tuple(some))))


def test_report_progress_prints_the_plan_and_refuses_a_missing_folder(
        tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch, tuned_csq: Path) -> None:
    import bench.commands.progress as progress

    monkeypatch.setattr(progress, "PLAN", (("1", experiment(tmp_path)),))
    (tmp_path / "results" / "runs").mkdir(parents=True)
    assert main(["report", "--progress", "--results", str(tmp_path / "results")]) == 0
    out = capsys.readouterr().out
    assert "| runs | recorded | to train | waiting for a search |" in out
    assert "| synthetic | 4 | 0 | 2 | 2 |" in out
    assert "Every search that has run is written" in out  # no results/tuning/ there
    assert main(["report", "--progress", "--results", str(tmp_path / "nowhere")]) == 2
    assert "no runs/ folder" in capsys.readouterr().err


def test_make_reproduce_v3_runs_the_plan_the_report_counts() -> None:
    """`make reproduce-v3` and the Reproduction progress section name the same experiments, in
    the same order, and every one of them exists."""
    import re

    from bench.commands.progress import PLAN
    from bench.sweeps.experiments import load_experiment

    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    block = re.search(r"^V3_EXPERIMENTS := (.*?)\nreproduce-v3:", makefile, re.S | re.M)
    assert block is not None
    assert block.group(1).replace("\\", " ").split() == [name for _, name in PLAN]
    assert all(load_experiment(name).name == name for _, name in PLAN)
