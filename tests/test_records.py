"""Run records survive crashes: atomic writes, corrupt files detected and set aside, a sweep
killed with SIGKILL resumes with only the unfinished runs, failed runs are recorded with
their reason and the sweep goes on (exit code 1)."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.errors import UserError
from bench.runs.records import (
    CorruptRecord,
    check_writable,
    load_records,
    read_record,
    set_aside,
    write_json_atomic,
)

REPO = Path(__file__).resolve().parent.parent
SWEEP = ["--dataset", "synthetic", "--epochs", "2", "--device", "cpu", "--quiet", "--threads", "1"]


def bench_run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", "run", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def a_record(status: str = "complete") -> dict:
    record = {"schema": 1, "run_id": "csq-16b-s0-native-0123456789", "status": status,
              "spec": {"method": "csq", "dataset": "synthetic", "bits": 16}, "config": {"lr": 1e-3}}
    if status == "complete":
        record["metrics"] = {"mAP": 0.5, "nan_metric": float("nan")}
    else:
        record["failure"] = "TrainingDiverged: loss became nan"
    return record


# ----------------------------------------------------------------------------- atomic writes
def test_write_is_atomic_and_readable(tmp_path):
    path = tmp_path / "runs" / "a.json"
    write_json_atomic(path, a_record())
    data = read_record(path)
    assert data["metrics"]["mAP"] == 0.5
    assert data["metrics"]["nan_metric"] is None  # JSON has no NaN: stored as null
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600


def test_failed_write_keeps_the_old_record(tmp_path):
    path = tmp_path / "a.json"
    write_json_atomic(path, a_record())
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_json_atomic(path, {**a_record(), "bad": object()})  # not serialisable
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


# ----------------------------------------------------------------------------- corrupt records
@pytest.mark.parametrize("content, why", [
    (b"", "Expecting value"),
    (b'{"schema": 1, "run_id": "x", "status": "comp', "Unterminated string"),
    (b"\xff\xfe\x00garbage", "decode"),
    (b"[1, 2, 3]", "not a run record"),
    (b'{"schema": 1}', "missing run_id, status, spec, config"),
    (b'{"schema": 1, "run_id": "x", "status": "done", "spec": {}, "config": {}}', "unknown status"),
    (b'{"schema": 1, "run_id": "x", "status": "complete", "spec": {}, "config": {}}', "without metrics"),
])
def test_corrupt_records_are_named_with_their_path(tmp_path, content, why):
    path = tmp_path / "r.json"
    path.write_bytes(content)
    with pytest.raises(CorruptRecord) as error:
        read_record(path)
    assert str(path) in str(error.value) and why in str(error.value)


def test_truncated_record_is_corrupt(tmp_path):
    path = tmp_path / "r.json"
    write_json_atomic(path, a_record())
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(CorruptRecord, match=re.escape(str(path))):
        read_record(path)


def test_set_aside_renames_and_never_overwrites(tmp_path):
    path = tmp_path / "r.json"
    first = set_aside(_write(path, "one"))
    second = set_aside(_write(path, "two"))
    assert first.name == "r.json.corrupt" and second.name == "r.json.corrupt.1"
    assert first.read_text() == "one" and second.read_text() == "two"
    assert not path.exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_load_records_reports_corrupt_files_and_ignores_set_aside_and_temp(tmp_path):
    runs = tmp_path / "runs" / "synthetic" / "csq"
    write_json_atomic(runs / "good.json", a_record())
    write_json_atomic(runs / "failed.json", a_record("failed"))
    (runs / "bad.json").write_text("{")
    (runs / "old.json.corrupt").write_text("{")
    (runs / ".x.json.abc.tmp").write_text("{")  # what a SIGKILL mid-write can leave
    records, problems = load_records(tmp_path)
    assert sorted(r["status"] for r in records) == ["complete", "failed"]
    assert len(problems) == 1 and str(runs / "bad.json") in problems[0]
    complete, _ = load_records(tmp_path, include_failed=False)
    assert [r["status"] for r in complete] == ["complete"]


@pytest.mark.parametrize("blocker", ["", "runs", "splits"])
def test_results_directory_blocked_by_a_file(tmp_path, blocker):
    results = tmp_path / "results"
    if blocker:
        results.mkdir()
    (results / blocker if blocker else results).write_text("not a folder")
    with pytest.raises(UserError, match="is not writable"):
        check_writable(results)


# ----------------------------------------------------------------------------- resume after SIGKILL
def test_sigkilled_sweep_resumes_only_unfinished_runs(tmp_path):
    results = tmp_path / "results"
    runs = results / "runs" / "synthetic" / "csq"
    args = ["--methods", "csq", "--bits", "16,32,64", "--seeds", "0,1", *SWEEP, "--results", str(results)]
    sweep = subprocess.Popen([sys.executable, "-m", "bench", "run", *args, "--jobs", "2"], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(runs.glob("*.json.gz")):
        assert sweep.poll() is None, sweep.stderr.read().decode()
        assert time.monotonic() < deadline, "no record appeared within 120 s"
        time.sleep(0.02)
    sweep.send_signal(signal.SIGKILL)  # mid-sweep: some runs done, others in the workers
    sweep.wait()
    sweep.stderr.close()
    time.sleep(2)  # orphaned workers, if any, must not write anything
    survived = sorted(runs.glob("*.json.gz"))
    assert 1 <= len(survived) < 6
    for path in survived:  # never half a record; strict JSON (no NaN); trained elsewhere
        record = json.loads(gzip.decompress(path.read_bytes()), parse_constant=_no_constants)
        assert read_record(path)["status"] == "complete" and record["pid"] != sweep.pid

    # Truncate one finished record as a crash of a non-atomic writer would have.
    victim = survived[0]
    truncated = victim.read_bytes()[:100]
    victim.write_bytes(truncated)
    untouched = {p: p.read_bytes() for p in survived[1:]}

    rerun = bench_run(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert f"corrupt record {victim}" in rerun.stderr  # reported with its path
    aside = victim.with_name(victim.name + ".corrupt")
    assert aside.read_bytes() == truncated  # set aside, not deleted
    redone = 6 - len(untouched)
    assert f"{redone} completed, {len(untouched)} skipped" in rerun.stdout
    assert f"corrupt record set aside: {aside}" in rerun.stdout
    final = sorted(runs.glob("*.json.gz"))
    assert len(final) == 6 and all(read_record(p)["status"] == "complete" for p in final)
    assert all(p.read_bytes() == content for p, content in untouched.items())  # skipped, not redone


# ----------------------------------------------------------------------------- failures
def test_failed_runs_are_recorded_and_the_sweep_goes_on(tmp_path):
    experiment = tmp_path / "diverge.yaml"
    experiment.write_text(
        "name: diverge\n"
        "dataset: synthetic\n"
        "methods: [csq]\n"
        "bits: [16]\n"
        "settings: {epochs: 2}\n"
        "grid:\n"
        "  - {lambda_q: 1e300}              # loss becomes inf at the first step\n"
        "  - {optimizer: sgd, momentum: -1} # torch raises building the optimizer\n"
        "  - {}                             # a healthy run after both failures\n"
    )
    results = tmp_path / "results"
    args = ["--experiment", str(experiment), "--device", "cpu", "--quiet", "--threads", "1",
            "--results", str(results)]
    first = bench_run(*args)
    assert first.returncode == 1, first.stderr  # 1: some runs failed
    assert "1 completed, 0 skipped (record exists), 2 failed" in first.stdout
    assert "2 runs failed (exit code 1)" in first.stderr and "Traceback" not in first.stderr
    records, problems = load_records(results)
    assert not problems
    by_status: dict[str, list[dict]] = {}
    for record in records:
        by_status.setdefault(record["status"], []).append(record)
    assert len(by_status["complete"]) == 1 and len(by_status["failed"]) == 2
    reasons = {record["spec"]["overrides"].get("optimizer", "adam"): record["failure"]
               for record in by_status["failed"]}
    assert reasons["adam"].startswith("TrainingDiverged: loss became inf at epoch 1")
    assert reasons["sgd"].startswith("ValueError:") and "momentum" in reasons["sgd"]
    for record in by_status["failed"]:
        assert f"failed {record['run_id']}: {record['failure']}" in first.stdout  # the report
        assert record["config"]["epochs"] == 2 and "Traceback" in record["traceback"]

    again = bench_run(*args)  # failed runs are retried, the complete one is kept
    assert again.returncode == 1
    assert "0 completed, 1 skipped (record exists), 2 failed" in again.stdout
    dry = bench_run(*args, "--dry-run")
    states = sorted(line.split()[0] for line in dry.stdout.splitlines()
                    if not line.startswith("protocol:"))  # the note naming the card's protocol
    assert dry.returncode == 0 and states == ["done", "failed", "failed"]


def _no_constants(name: str) -> None:
    pytest.fail(f"{name} in a record: not strict JSON")


@pytest.mark.parametrize("torch_of_record, config_change, taken", [
    ("2.11.0+cu130", {}, True),            # the same run, made under the GPU image's torch
    ("2.14.1+cu130", {}, False),           # the legacy tokens' torch: another id is a real change
    ("2.11.0+cu130", {"lr": 0.5}, False),  # another torch and another configuration: another run
])
def test_a_migrated_record_made_under_another_torch_counts_as_this_run(tmp_path, torch_of_record,
                                                                      config_change, taken):
    from bench.runs.records import record_path
    from bench.runs.spec import RunSpec, resolve_config, run_id
    from bench.sweeps.jobs import RunOptions
    from bench.sweeps.migrate import migrate
    from bench.sweeps.runner import plan_runs

    spec = RunSpec(method="csq", dataset="synthetic", bits=16, seed=0, protocol="harmonised")
    config = resolve_config(spec)
    own_path = record_path(tmp_path, spec, run_id(spec, config))
    other_id = f"csq-16b-s0-harmonised-{'f' * 10}"
    legacy = own_path.with_name(f"{other_id}.json")  # schema 1, as the GPU machine wrote it
    record = {"schema": 1, "run_id": other_id, "status": "complete", "spec": spec.to_dict(),
              "config": {**json.loads(json.dumps(config)), **config_change},
              "environment": {"torch": torch_of_record}, "metrics": {"mAP": 0.5}}
    write_json_atomic(legacy, record)
    [before] = plan_runs([spec], RunOptions(results_dir=tmp_path))
    assert before.path == own_path  # an unmigrated record is not guessed at

    report = migrate(tmp_path)
    assert bool(report.mapped_ids) == torch_of_record.startswith("2.11")  # its own canonical id
    [planned] = plan_runs([spec], RunOptions(results_dir=tmp_path))

    assert planned.path == (legacy.with_name(f"{other_id}.json.gz") if taken else own_path)
    assert planned.run_id == (other_id if taken else own_path.name.removesuffix(".json.gz"))
