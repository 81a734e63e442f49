"""The committed report counts only runs whose records are committed: a reader of the
repository can rebuild every number from what it holds."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest

from bench.runs.records import record_stem

REPO = Path(__file__).resolve().parent.parent


def tracked_record_ids() -> set[str]:
    try:
        listed = subprocess.run(["git", "ls-files", "results"], cwd=REPO, capture_output=True,
                                text=True, check=True, timeout=60).stdout.split()
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout: no way to tell committed records from local ones")
    return {record_stem(Path(name)) for name in listed if name.endswith((".json", ".json.gz"))}


def test_every_run_of_the_committed_report_has_a_committed_record() -> None:
    runs = REPO / "reports" / "runs.csv"
    with runs.open(newline="") as handle:
        ids = [row["run_id"] for row in csv.DictReader(handle)]
    assert ids, "reports/runs.csv lists no run"
    missing = sorted(set(ids) - tracked_record_ids())
    assert not missing, (f"{len(missing)} runs in reports/runs.csv have no committed record under "
                         f"results/ (first: {missing[:3]}); commit them or regenerate the report")
