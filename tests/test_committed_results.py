"""The committed report counts only runs whose records are committed: a reader of the
repository can rebuild every number from what it holds."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest

from bench.runs.records import record_stem

REPO = Path(__file__).resolve().parent.parent


def tracked_files() -> list[str]:
    try:
        return subprocess.run(["git", "ls-files", "results"], cwd=REPO, capture_output=True,
                              text=True, check=True, timeout=60).stdout.split()
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout: no way to tell committed records from local ones")


def record_ids(files: list[str]) -> set[str]:
    return {record_stem(Path(name)) for name in files if name.endswith((".json", ".json.gz"))}


def test_every_run_of_the_committed_report_has_a_committed_record() -> None:
    runs = REPO / "reports" / "runs.csv"
    with runs.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows, "reports/runs.csv lists no run"
    tracked = tracked_files()
    missing = sorted({row["run_id"] for row in rows} - record_ids(tracked))
    assert not missing, (f"{len(missing)} runs in reports/runs.csv have no committed record under "
                         f"results/ (first: {missing[:3]}); commit them or regenerate the report")
    # each row names its record's file under results/, and that exact file is tracked
    files = {row["record_file"] for row in rows if "record_file" in row}
    if files:
        untracked = sorted(name for name in files if f"results/{name}" not in set(tracked))
        assert not untracked, (f"{len(untracked)} record files named in reports/runs.csv are not "
                               f"tracked: {untracked[:3]}")


def test_the_v2_multi_label_tuned_table_reruns_from_its_archived_setting(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """`main-table-multi-tuned` ran on the v2 search's values (12 trials at 32 bits, 30 epochs).
    v3's search has the same budget, so it replaces them in bench/tuned/fashion-mnist-multi.yaml;
    the v2 file is kept byte for byte in bench/tuned/v2/, and pointing BENCH_TUNED_DIR there
    plans exactly the committed runs again (same ids: every one listed as done)."""
    import hashlib

    from bench.cli import main
    from bench.runs.records import read_record

    archive = REPO / "bench" / "tuned" / "v2"
    folder = REPO / "results" / "runs" / "fashion-mnist-multi" / "crh"
    provenances = [read_record(path)["config"]["tuned_setting"]
                   for path in folder.glob("crh-32b-s0-tuned-*.json*")]
    v2 = [p for p in provenances if p.get("trials") == 12]  # the v2 search had 12 trials a method
    assert v2, "no committed record of the v2 multi-label tuned table"
    assert hashlib.sha256((archive / "fashion-mnist-multi.yaml").read_bytes()).hexdigest() == v2[0]["sha256"]
    monkeypatch.setenv("BENCH_TUNED_DIR", str(archive))
    code = main(["run", "--experiment", "main-table-multi-tuned", "--methods", "crh,csq,mds", "--dry-run"])
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()
              if line.startswith(("done", "todo"))]
    assert code == 0 and len(listed) == 27 and set(listed) == {"done"}, listed


def test_the_v2_fashion_mnist_table_replans_from_its_archived_setting(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 29: adding methods changed no run id. The v2 `main-table` ran on the Fashion-MNIST
    file of its day (12 trials at 32 bits, 30 epochs, applied at 60 epochs); kept byte for byte
    in bench/tuned/v2/, it plans the committed runs again: the same ids, every one done (a dry
    run lets the budget refusal through and says so)."""
    import hashlib

    from bench.cli import main
    from bench.runs.records import read_record

    archive = REPO / "bench" / "tuned" / "v2" / "fashion-mnist.yaml"
    folder = REPO / "results" / "runs" / "fashion-mnist" / "mds"
    named = {read_record(path)["config"]["tuned_setting"]["sha256"]
             for path in folder.glob("mds-32b-s0-tuned-*.json*")}
    assert hashlib.sha256(archive.read_bytes()).hexdigest() in named
    monkeypatch.setenv("BENCH_TUNED_DIR", str(archive.parent))
    code = main(["run", "--experiment", "main-table", "--methods", "crh,csq,mds", "--dry-run"])
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith(("done", "todo"))]
    assert code == 0 and len(listed) == 45 and set(listed) == {"done"}, listed
    assert "a real run would refuse" in out
