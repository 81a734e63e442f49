"""Sweeps that scale out: `--jobs N` through joblib worker processes, `--backend dask` on a
LocalCluster it starts or on an existing cluster (`--scheduler ADDRESS`), records written
only by the calling process into its results directory, and the same metrics whichever way
the runs were executed. Real processes and a real 2-worker Dask cluster, no mocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.network.numerics import FIXED_THREADS
from bench.runs.records import read_record

REPO = Path(__file__).resolve().parent.parent
SPECS = ["--methods", "csq", "--bits", "16,32", "--dataset", "synthetic", "--epochs", "1",
         "--device", "cpu", "--quiet"]


def sweep(results: Path, *extra: str, subprocess_pid: list[int] | None = None) -> dict[str, dict]:
    """`bench run` through its real entry point, in this process (the caller) or, given
    `subprocess_pid`, as a command of its own; the runs go to whatever executor the flags
    choose. Returns the records it left, by run id."""
    argv = ["run", *SPECS, "--results", str(results), *extra]
    if subprocess_pid is None:
        assert main(argv) == 0
    else:
        command = subprocess.Popen([sys.executable, "-m", "bench", *argv], cwd=REPO,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = command.communicate(timeout=300)
        assert command.returncode == 0, err + out
        subprocess_pid.append(command.pid)
    folder = results / "runs" / "synthetic" / "csq"
    leftovers = [p.name for p in folder.iterdir() if not p.name.endswith((".json.gz", ".lock"))]
    assert not leftovers  # no temp files (the per-run lock files stay, empty and unlocked)
    records = {r["run_id"]: r for r in (read_record(p) for p in sorted(folder.glob("*.json.gz")))}
    assert len(records) == 2 and all(r["status"] == "complete" for r in records.values())
    return records


def metrics_of(records: dict[str, dict]) -> dict[str, dict]:
    return {run_id: record["metrics"] for run_id, record in records.items()}


def losses_of(records: dict[str, dict]) -> dict[str, list[float]]:
    """Every epoch's mean loss: equal bit for bit only if every step computed the same."""
    return {run_id: [h["loss"] for h in record["history"]] for run_id, record in records.items()}


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    """The reference: the same two runs one after another in the command's own process
    (--jobs 1; its own process so that the OpenMP setting the command makes before loading
    torch applies, as it does for users)."""
    pid: list[int] = []
    records = sweep(tmp_path_factory.mktemp("jobs1"), subprocess_pid=pid)
    assert {r["pid"] for r in records.values()} == set(pid)  # trained by the sweep itself
    return records


def test_jobs_two_uses_worker_processes_and_matches_jobs_one(tmp_path, sequential, capsys):
    records = sweep(tmp_path / "results", "--jobs", "2")
    pids = {r["pid"] for r in records.values()}
    assert len(pids) == 2 and os.getpid() not in pids  # two worker processes trained them
    assert "2 completed, 0 skipped" in capsys.readouterr().out
    # Determinism: identical metrics, and the same training bit for bit, whether run
    # sequentially or in parallel: every run computes with the same fixed thread count.
    for record in [*records.values(), *sequential.values()]:
        assert record["environment"]["torch_threads"] == FIXED_THREADS
        assert record["numerics"]["threads"] == FIXED_THREADS and record["numerics"]["path"] == "fast"
    assert metrics_of(records) == metrics_of(sequential)
    assert losses_of(records) == losses_of(sequential)
    assert {r["split"]["digest"] for r in records.values()} == {
        r["split"]["digest"] for r in sequential.values()}


def test_same_spec_and_seed_twice_is_identical(tmp_path, sequential):
    again = sweep(tmp_path / "results", "--threads", "1")  # in this process, one thread
    assert json.dumps(metrics_of(again), sort_keys=True) == json.dumps(metrics_of(sequential), sort_keys=True)
    assert losses_of(again) == losses_of(sequential)  # the whole trajectory, not just the metrics


def test_existing_dask_cluster_via_scheduler_address(tmp_path, sequential):
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        worker_pids = set(client.run(os.getpid).values())
        assert len(worker_pids) == 2
        records = sweep(tmp_path / "results", "--scheduler", cluster.scheduler_address, "--threads", "1")
    pids = {r["pid"] for r in records.values()}
    assert pids <= worker_pids and os.getpid() not in pids  # trained on the cluster's workers
    # Records (and splits) in the caller's results dir; the record names the split relative to it.
    paths = [r["split"]["path"] for r in records.values()]
    assert all(p.startswith("splits/") and (tmp_path / "results" / p).is_file() for p in paths)
    assert metrics_of(records) == metrics_of(sequential)
    assert losses_of(records) == losses_of(sequential)


def test_dask_without_address_starts_a_local_cluster(tmp_path, sequential, capsys):
    records = sweep(tmp_path / "results", "--backend", "dask", "--jobs", "2")
    pids = {r["pid"] for r in records.values()}
    assert len(pids) == 2 and os.getpid() not in pids  # the cluster's two worker processes
    assert {r["environment"]["torch_threads"] for r in records.values()} == {FIXED_THREADS}
    assert metrics_of(records) == metrics_of(sequential)
    assert losses_of(records) == losses_of(sequential)
    assert "Traceback" not in capsys.readouterr().err


def test_legacy_path_divides_the_cores_and_keeps_native_kernels(tmp_path):
    """BENCH_FAST=0 is the loop as it was: native kernels, cores / jobs threads per worker."""
    from bench.sweeps.parallel import threads_per_job

    command = [sys.executable, "-m", "bench", "run", *SPECS, "--results", str(tmp_path), "--jobs", "2"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "BENCH_FAST": "0"})
    assert done.returncode == 0, done.stderr + done.stdout
    records = [read_record(p) for p in sorted((tmp_path / "runs" / "synthetic" / "csq").glob("*.json.gz"))]
    assert len(records) == 2
    for record in records:
        assert record["numerics"]["path"] == "legacy" and record["numerics"]["onednn"] is False
        assert record["environment"]["torch_threads"] == threads_per_job(2)
        assert record["environment"]["mkldnn"] is False


def test_bad_bench_fast_value_is_refused(tmp_path):
    command = [sys.executable, "-m", "bench", "run", *SPECS, "--results", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "BENCH_FAST": "maybe"})
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: BENCH_FAST='maybe' is not valid; use 1 (fast path, "
                                   "default) or 0 (legacy path)")


def test_parallel_sweeps_start_the_longest_runs_first():
    from bench.runs.spec import RunSpec
    from bench.sweeps.jobs import PlannedRun
    from bench.sweeps.parallel import longest_first

    def planned(name: str, epochs: int | None) -> PlannedRun:
        overrides = (("epochs", epochs),) if epochs is not None else ()
        spec = RunSpec(method="csq", dataset="synthetic", bits=16, overrides=overrides)
        return PlannedRun(spec=spec, run_id=name, path=Path(name))

    runs = [planned("a15", 15), planned("b", None), planned("c60", 60), planned("d30", 30),
            planned("e60", 60), planned("f15", 15)]
    assert [r.run_id for r in longest_first(runs)] == ["c60", "e60", "d30", "a15", "f15", "b"]
