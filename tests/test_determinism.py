"""Bitwise determinism of the fast path on CPU: the same spec and seed give the same record
(metrics, per-query AP, every epoch's losses and validation mAP, the method's own state),
whether a sweep runs them one after another in its own process (`--jobs 1`) or in two
worker processes (`--jobs 2`), for every registered method. Only what measures time or
names a process may differ. The fast path gets there by fixing the thread count of every
run (oneDNN's numbers depend on it), not by giving up oneDNN."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.network.numerics import FIXED_THREADS, resolve
from bench.runs.records import read_record
from methods import available_methods, get_method

REPO = Path(__file__).resolve().parent.parent
# The sweep runs on the synthetic image card: every method that takes images (a feature-only
# method's repeatability is tested on its document card, e.g. tests/test_mish.py).
METHODS = [m for m in available_methods() if "images" in get_method(m).inputs]
# What may differ between two executions of the same run: clocks and process identity.
VOLATILE = {"timings", "pid", "host", "started_at", "finished_at", "code", "environment"}


def comparable(value: Any) -> Any:
    """A record without its clocks and process identity (keys naming seconds or times)."""
    if isinstance(value, dict):
        return {k: comparable(v) for k, v in value.items()
                if k not in VOLATILE and "seconds" not in k and not k.endswith("_time")
                and k not in ("stage_times", "path")}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def _dump(record: dict) -> str:
    return json.dumps(comparable(record), sort_keys=True)


def sweep(results: Path, jobs: int) -> dict[str, dict]:
    """`bench run` of one spec per method, as its own command, with --jobs `jobs`."""
    command = [sys.executable, "-m", "bench", "run", "--methods", ",".join(METHODS), "--bits", "16",
               "--dataset", "synthetic", "--epochs", "2", "--set", "eval_every=1", "--device", "cpu",
               "--quiet", "--results", str(results), "--jobs", str(jobs)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env={**_environment(), "BENCH_FAST": "1"})
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]
    records = {}
    for path in sorted((results / "runs" / "synthetic").rglob("*.json.gz")):
        record = read_record(path)
        records[record["spec"]["method"]] = record
    assert sorted(records) == METHODS
    return records


def _environment() -> dict[str, str]:
    return dict(os.environ)


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> tuple[dict[str, dict], dict[str, dict]]:
    one = sweep(tmp_path_factory.mktemp("jobs1"), 1)
    two = sweep(tmp_path_factory.mktemp("jobs2"), 2)
    return one, two


def test_every_method_gives_the_same_record_with_jobs_1_and_jobs_2(both) -> None:
    one, two = both
    assert len({r["pid"] for r in two.values()}) == 2  # two worker processes trained them
    assert len({r["pid"] for r in one.values()}) == 1
    differ = [m for m in METHODS if _dump(one[m]) != _dump(two[m])]
    assert differ == [], f"records differ between --jobs 1 and --jobs 2 for: {differ}"
    for method in METHODS:  # and the comparison is not vacuous: real, trained numbers
        epochs = 2 if get_method(method).trains else 0  # LSH, ITQ: fitted in setup, no epoch
        assert one[method]["metrics"]["mAP"] > 0 and len(one[method]["history"]) == epochs
        assert one[method]["metrics"]["per_query_ap"] == two[method]["metrics"]["per_query_ap"]
        assert [h["loss"] for h in one[method]["history"]] == [h["loss"] for h in two[method]["history"]]


def test_the_fast_path_is_what_ran_and_the_record_says_so(both) -> None:
    one, two = both
    for record in [*one.values(), *two.values()]:
        numerics = record["numerics"]
        assert numerics["path"] == "fast" and numerics["threads"] == FIXED_THREADS
        assert numerics["onednn"] and numerics["channels_last"] and numerics["amp"] is None
        assert record["environment"]["torch_threads"] == FIXED_THREADS
        assert record["environment"]["mkldnn"] is True


def test_comparable_drops_only_clocks_and_process_identity() -> None:
    record = {"pid": 1, "timings": {"train": 1.0}, "metrics": {"mAP": 0.5},
              "history": [{"loss": 0.1, "train_seconds": 2.0}], "method": {"stage_times": {"a": 1}}}
    assert comparable(record) == {"metrics": {"mAP": 0.5}, "history": [{"loss": 0.1}], "method": {}}
    changed = {**record, "metrics": {"mAP": 0.5000001}}
    assert comparable(changed) != comparable(record)


def test_cpu_numerics_fall_back_without_cuda() -> None:
    """On CPU the fast path keeps float32 (no bf16 autocast) and blocking copies; on CUDA it
    turns bf16 autocast and non-blocking copies on (resolved without touching a GPU)."""
    cpu = resolve("cpu", fast=True)
    assert cpu.amp is None and cpu.non_blocking is False
    assert isinstance(cpu.autocast(), contextlib.nullcontext)
    legacy = resolve("cpu", fast=False)
    assert not legacy.channels_last and not legacy.fuse_bn and legacy.path == "legacy"


def test_cuda_numerics_use_bf16_autocast_and_non_blocking_copies(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda = resolve("cuda", fast=True)
    assert cuda.amp == "bf16" and cuda.non_blocking and cuda.amp_dtype is torch.bfloat16
    assert resolve("cuda", fast=False).amp is None  # the legacy path stays float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve("cuda", fast=True).amp is None  # a GPU without bf16 trains in float32


# Compares floats with a stored record or another process: also run under AVX2 kernels (Makefile).
pytestmark = pytest.mark.float_sensitive
