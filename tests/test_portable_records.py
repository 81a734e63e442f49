"""Records that travel: canonical run ids, compressed records without machine paths, a
migration that changes no number, and per-run locks for sweeps that share a results folder."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data.loading import REPO_ROOT
from bench.runs.identity import (
    LEGACY_ARCHITECTURE_TOKENS,
    architecture_fingerprint,
    architecture_token,
    canonical,
    identity_digest,
)
from bench.runs.records import (
    CorruptRecord,
    load_records,
    portable_data_identity,
    portable_text,
    read_record,
    record_files,
    relative_to_results,
    write_json_atomic,
    write_record,
)
from bench.runs.spec import RunSpec, resolve_config, run_id

REPO = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- canonical ids
@pytest.mark.parametrize("spec, expected", [
    # Records committed under results/ carry these ids (made on this project's CPUs).
    (RunSpec("csq", "fashion-mnist-pairs", 16, 0, "harmonised"), "csq-16b-s0-harmonised-d3af103377"),
    (RunSpec("dpn", "fashion-mnist-pairs", 16, 2, "harmonised"), "dpn-16b-s2-harmonised-02484ed5be"),
    # Made on a GPU image under torch 2.11 as csq-32b-s0-harmonised-1346cf1e0e; the canonical
    # scheme gives it this id on every machine (its migrated record says so).
    (RunSpec("csq", "fashion-mnist", 32, 0, "harmonised", overrides=(("epochs", 60),)),
     "csq-32b-s0-harmonised-a8fe6f3548"),
])
def test_run_ids_of_known_configurations_are_pinned(spec: RunSpec, expected: str) -> None:
    assert run_id(spec, resolve_config(spec)) == expected


def test_canonical_form_takes_plain_values_and_refuses_the_rest() -> None:
    assert canonical({"a": (1, 2.5), "b": np.float64(0.1), "c": np.int64(3), "p": Path("x/y")}) == \
        {"a": [1, 2.5], "b": 0.1, "c": 3, "p": "x/y"}
    assert type(canonical(np.float32(0.5))) is float and type(canonical(np.int8(2))) is int
    with pytest.raises(TypeError, match="config.k: a set has no canonical form"):
        canonical({"k": {1, 2}}, "config")
    with pytest.raises(TypeError, match="no JSON form"):
        canonical(float("nan"))
    # A NumPy scalar hashes as its value, not as whatever NumPy's str prints.
    assert identity_digest({"lr": np.float64(1e-3)}) == identity_digest({"lr": 0.001})


@pytest.mark.skipif(not torch.__version__.startswith("2.14.1"), reason="the tokens hash torch 2.14.1's repr")
def test_legacy_tokens_are_the_repr_digests_of_the_pinned_torch() -> None:
    from bench.errors import UserError
    from bench.network.backbones import BACKBONES, FEATURE_BACKBONES, build_backbone

    seen = set()
    for name in set(BACKBONES) - FEATURE_BACKBONES:  # feature backbones came after the repr scheme
        for channels in (1, 3):
            try:
                with torch.device("meta"):
                    module = build_backbone(name, channels)
            except UserError:
                continue
            legacy = hashlib.sha256(repr(module).encode()).hexdigest()[:12]
            assert architecture_token(name, channels) == legacy
            seen.add(architecture_fingerprint(name, channels))
    assert seen == set(LEGACY_ARCHITECTURE_TOKENS)


def test_the_fingerprint_reads_structure_not_print_format(monkeypatch) -> None:
    import bench.network.backbones

    base = architecture_fingerprint("tiny_cnn", 1)
    # torch rewording its repr changes nothing ...
    monkeypatch.setattr(torch.nn.Conv2d, "extra_repr", lambda self: "worded differently")
    architecture_fingerprint.cache_clear()
    assert architecture_fingerprint("tiny_cnn", 1) == base
    monkeypatch.undo()
    # ... a padding (no parameter shape changes) or a width edited in backbones.py does.
    architecture_fingerprint.cache_clear()

    def no_padding(self, channels: int) -> None:
        bench.network.backbones.SmallCNN.__init__(self, channels, width=8, feature_dim=32)
        for layer in self.modules():
            if isinstance(layer, torch.nn.Conv2d):
                layer.padding = (0, 0)

    monkeypatch.setattr(bench.network.backbones.TinyCNN, "__init__", no_padding)
    try:
        assert architecture_fingerprint("tiny_cnn", 1) != base
        assert architecture_token("tiny_cnn", 1) == architecture_fingerprint("tiny_cnn", 1)
    finally:
        monkeypatch.undo()
        architecture_fingerprint.cache_clear()


# ----------------------------------------------------------------------------- the format
def test_records_are_compact_compressed_and_exact(tmp_path) -> None:
    values = [0.1 + 1e-17 * i for i in range(5)] + [1 / 3, 2.0**-40]
    record = {"schema": 2, "run_id": "r", "status": "complete", "spec": {}, "config": {},
              "metrics": {"mAP": 1 / 3, "per_query_ap": values, "none": None}}
    path = tmp_path / "r.json.gz"
    write_record(path, record)
    text = gzip.decompress(path.read_bytes()).decode()
    assert "\n" not in text and ", " not in text  # compact: one line, no padding
    assert read_record(path) == record  # every float exact
    first = path.read_bytes()
    write_record(path, record)
    assert path.read_bytes() == first  # no timestamp in the file: same record, same bytes


def test_a_truncated_compressed_record_is_corrupt_and_set_aside_by_a_sweep(tmp_path) -> None:
    path = tmp_path / "r.json.gz"
    write_record(path, {"schema": 2, "run_id": "r", "status": "complete", "spec": {}, "config": {},
                        "metrics": {}})
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CorruptRecord, match="r.json.gz"):
        read_record(path)


def test_readers_take_one_file_per_run_during_a_migration(tmp_path) -> None:
    old = {"schema": 1, "run_id": "a", "status": "complete", "spec": {}, "config": {}, "metrics": {}}
    write_json_atomic(tmp_path / "runs" / "a.json", old)
    write_record(tmp_path / "runs" / "a.json.gz", {**old, "schema": 2})
    write_json_atomic(tmp_path / "runs" / "b.json", {**old, "run_id": "b"})
    assert [p.name for p in record_files(tmp_path / "runs")] == ["a.json.gz", "b.json"]
    records, problems = load_records(tmp_path)
    assert not problems and [(r["run_id"], r["schema"]) for r in records] == [("a", 2), ("b", 1)]


def test_paths_and_tracebacks_name_no_folder_of_this_machine(tmp_path) -> None:
    results = tmp_path / "elsewhere" / "results"
    split = results / "splits" / "card-seed0-abc.npz"
    assert relative_to_results(split, results) == "splits/card-seed0-abc.npz"
    assert relative_to_results("/work/results-live/splits/card-seed0-abc.npz") == "splits/card-seed0-abc.npz"
    trace = f'File "{REPO_ROOT}/bench/training/train.py", line 3\nFile "{sys.prefix}/lib/x.py"'
    assert portable_text(trace) == 'File "<repo>/bench/training/train.py", line 3\nFile "<python>/lib/x.py"'


def test_a_private_data_folder_is_named_by_role_and_a_standard_one_kept(tmp_path) -> None:
    """split.data: --data-root or $BENCH_DATA is this machine's folder, a package's is everyone's."""
    standard = "/usr/share/datasets/fashion-mnist"
    private = str(tmp_path / "my copy" / "fashion-mnist")
    assert portable_data_identity(private, [standard]) == "<data-root>"
    assert portable_data_identity(standard, [standard + "/"]) == standard
    assert portable_data_identity(standard + "-old", [standard]) == "<data-root>"  # not under it
    generated = json.dumps({"generator": "pairs", "params": {"pooling": "2x2 mean", "tile": 14},
                            "source": {"root": str(tmp_path / "fm"), "sha256": {"a.gz": "00"}}})
    kept = json.loads(portable_data_identity(generated, [standard]))
    assert kept["source"] == {"root": "<data-root>", "sha256": {"a.gz": "00"}}
    assert kept["params"] == {"pooling": "2x2 mean", "tile": 14}
    synthetic = "synthetic:[('classes', 10), ('noise', 0.5)]"
    assert portable_data_identity(synthetic, [standard]) == synthetic
    assert portable_data_identity(f"{REPO_ROOT}/data/fm", []) == "<repo>/data/fm"


# ----------------------------------------------------------------------------- migration
def _schema_one(results: Path, make_record, count: int = 6) -> list[dict]:
    """Records as schema 1 wrote them: pretty JSON, an absolute split path, a traceback."""
    records = []
    for i in range(count):
        record = make_record("crh" if i % 2 else "csq", 32, i // 2, 0.8 + i / 100)
        record["schema"] = 1
        record["split"] = {**record.get("split", {}), "path": f"/work/results-live/splits/fm-seed0-{i}.npz"}
        spec = record["spec"]
        path = results / "runs" / spec["dataset"] / spec["method"] / f"{record['run_id']}.json"
        write_json_atomic(path, record)
        records.append(record)
    failed = dict(records[0], run_id="csq-32b-s9-native-failedfail", status="failed",
                  traceback=f'File "{REPO_ROOT}/bench/training/train.py", line 1')
    failed.pop("metrics")
    write_json_atomic(results / "runs" / "fashion-mnist" / "csq" / f"{failed['run_id']}.json", failed)
    return records


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_migration_keeps_every_number_and_the_report_and_runs_once(tmp_path, make_record) -> None:
    from bench.cli import main
    from bench.report import generate

    results = tmp_path / "results"
    _schema_one(results, make_record)
    before, _ = load_records(results)
    generate(results, tmp_path / "before")

    assert main(["records", "migrate", "--results", str(results)]) == 0
    after, problems = load_records(results)
    assert not problems and not list(results.rglob("*.json"))
    strip = lambda r: {k: v for k, v in r.items() if k not in ("_path", "schema", "split", "traceback")}  # noqa: E731
    assert [strip(r) for r in after] == [strip(r) for r in before]
    for record in after:
        assert record["schema"] == 2
        text = json.dumps(record)
        assert "/work/" not in text and str(REPO_ROOT) not in text
    paths = {r["split"]["path"] for r in after if "split" in r}
    assert paths == {f"splits/fm-seed0-{i}.npz" for i in range(6)}

    generate(results, tmp_path / "after")
    # the same report, but runs.csv names each record's new file (schema 2 is gzip-compressed)
    after_files, before_files = _snapshot(tmp_path / "after"), _snapshot(tmp_path / "before")
    assert after_files["runs.csv"].count(b".json.gz,") == len(after)
    after_files["runs.csv"] = after_files["runs.csv"].replace(b".json.gz,", b".json,")
    assert after_files == before_files

    stored = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in results.rglob("*") if p.is_file()}
    assert main(["records", "migrate", "--results", str(results)]) == 0  # twice: a no-op
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in results.rglob("*") if p.is_file()} == stored


def test_migration_refuses_a_missing_folder(tmp_path, capsys) -> None:
    from bench.cli import main

    assert main(["records", "migrate", "--results", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope does not exist" in err[0]


def test_a_migration_killed_midway_leaves_every_record_readable(tmp_path, make_record) -> None:
    results = tmp_path / "results"
    template = make_record("csq", 32, 0, 0.8)
    template["metrics"]["per_query_ap"] = [float(v) for v in np.random.default_rng(0).random(20_000)]
    folder = results / "runs" / "fashion-mnist" / "csq"
    count = 60
    for i in range(count):
        write_json_atomic(folder / f"csq-32b-s{i}-native-{i:010d}.json", {**template, "run_id": f"r{i}"})
    command = [sys.executable, "-m", "bench", "records", "migrate", "--results", str(results)]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(folder.glob("*.json.gz"))) < 2:
        assert process.poll() is None and time.monotonic() < deadline, "migration ended too soon to kill"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    records, problems = load_records(results)
    assert not problems and len(records) == count
    assert 0 < len(list(folder.glob("*.json.gz"))) < count  # really stopped midway
    from bench.sweeps.migrate import migrate

    migrate(results)
    assert len(list(folder.glob("*.json.gz"))) == count and not list(folder.glob("*.json"))


# ----------------------------------------------------------------------------- per-run locks
def _planned(tmp_path: Path):
    from bench.sweeps.jobs import RunOptions
    from bench.sweeps.runner import plan_runs

    options = RunOptions(results_dir=tmp_path)
    [run] = plan_runs([RunSpec("csq", "synthetic", 16, 0, "harmonised")], options)
    return run, options


HOLD = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1]); lock.acquire(); print("held", flush=True); time.sleep(600)
"""


def test_a_run_locked_by_another_process_waits_and_a_dead_holder_frees_it(tmp_path) -> None:
    from bench.sweeps.runner import RunClaims, SweepOutcome

    run, options = _planned(tmp_path)
    run.path.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(RunClaims.lock_path(run))],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    claims = RunClaims(options)
    assert not claims.claim(run) and claims.busy == [run]
    left: list = []
    waiter = threading.Thread(target=lambda: left.extend(claims.wait_for_others(SweepOutcome())))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive()  # waits while the other process holds the run
    holder.send_signal(signal.SIGKILL)  # dies without releasing: the kernel drops its lock
    holder.wait()
    waiter.join(timeout=30)
    assert not waiter.is_alive() and left == [run]  # no record: the run is trained here
    assert claims.claim(run)
    claims.release_all()


def test_a_run_finished_by_another_process_is_reported_as_such(tmp_path) -> None:
    from bench.sweeps.runner import RunClaims, SweepOutcome

    run, options = _planned(tmp_path)
    write_record(run.path, {"schema": 2, "run_id": run.run_id, "status": "complete", "spec": {},
                            "config": {}, "metrics": {"mAP": 0.5}})
    claims = RunClaims(options)
    assert not claims.claim(run)  # done since the sweep planned it
    outcome = SweepOutcome()
    assert claims.wait_for_others(outcome) == [] and outcome.elsewhere == [run.run_id]


def test_two_identical_sweeps_at_once_train_each_run_once(tmp_path) -> None:
    results = tmp_path / "results"
    command = [sys.executable, "-m", "bench", "run", "--methods", "csq,dpn", "--bits", "16",
               "--seeds", "0,1", "--dataset", "synthetic", "--epochs", "3", "--device", "cpu",
               "--quiet", "--threads", "1", "--results", str(results)]
    env = {**os.environ, "BENCH_FAST": "1"}
    sweeps = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env) for _ in range(2)]
    outputs = [sweep.communicate(timeout=600) for sweep in sweeps]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], outputs
    trained = sum(len(re.findall(r"^\[\d+/\d+\] done ", out, flags=re.M)) for out, _ in outputs)
    assert trained == 4, outputs  # four runs, each trained by exactly one of the sweeps
    records, problems = load_records(results)
    assert not problems and len(records) == 4 and all(r["status"] == "complete" for r in records)
