"""One run, executed: the options every executor passes along and the function that turns a
planned run into its record.

Both the planner (`bench.sweeps.runner`) and the executors (`bench.sweeps.parallel`: in-process, joblib
workers, Dask) use these, so they live in a module of their own and neither of those two
imports the other in both directions: runner -> parallel -> jobs, runner -> jobs.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.network.numerics import Numerics, applied, pick_device, resolve
from bench.runs.records import RECORD_SCHEMA, code_version, environment, portable_text
from bench.runs.spec import RunSpec, resolve_config


@dataclass(frozen=True)
class RunOptions:
    """How runs execute (not part of a run's identity)."""

    results_dir: Path
    data_root: str | None = None
    device: str | None = None
    force: bool = False
    progress_bars: bool = True
    num_workers: int = 0
    weights_file: str | None = None
    torch_threads: int | None = None  # None: the path's rule (fast: 1 per run; legacy: cores / jobs)
    onednn: bool = False  # legacy path only: oneDNN kernels (the fast path always uses them)
    fast: bool | None = None  # None: BENCH_FAST (default fast); see bench.network.numerics
    # Where records go under results_dir. `bench tune` keeps its trials in "tuning/runs", apart
    # from the tables: a trial is a normal record, but its searched values would otherwise
    # show up in the report as one variant per trial.
    runs_folder: str = "runs"
    # `bench run --attack`: also evaluate the queries under this attack (bench.evaluation.attack.AttackSpec);
    # its result is stored beside the record, which stays as a run without it writes it.
    attack: Any = None


@dataclass
class PlannedRun:
    spec: RunSpec
    run_id: str
    path: Path


class SweepAborted(RuntimeError):
    """The executor itself broke (a worker process died, the cluster went away): finished
    runs are stored, the rest are not; rerunning the same command resumes."""


def compute_record(run: PlannedRun, options: RunOptions) -> dict[str, Any]:
    """Train one run and return its complete record (status "complete" or "failed").

    Runs in whichever process or cluster worker executes the run; the caller writes the
    record, so records always land in the caller's results directory. A failure (NaN loss,
    exception) becomes a record with status "failed" and the reason, so a sweep goes on.
    Bad input found only here (UserError, e.g. data files missing on a cluster worker) is
    raised: every run would hit it, so the sweep stops with exit code 2."""
    numerics = run_numerics(options)
    with applied(numerics):  # the environment below reports the run's threads and kernels
        return _compute_record(run, options, numerics)


def run_numerics(options: RunOptions) -> Numerics:
    """How this process computes the run (`bench.network.numerics`).

    Fast path: oneDNN at a fixed thread count, 1 unless --threads says otherwise, whatever
    --jobs is, so a spec and seed give the same bits with --jobs 1 and --jobs 2 (oneDNN's
    numbers depend on the thread count; measured: different mAP at 1 and 2 threads).
    Legacy path: PyTorch's native kernels (the same bits at 1 and 2 threads), at --threads
    or this process's thread count (an executor sets its share of the cores), or oneDNN
    with --onednn."""
    return resolve(pick_device(options.device), threads=options.torch_threads,
                   onednn=options.onednn, fast=options.fast)


def _compute_record(run: PlannedRun, options: RunOptions, numerics: Numerics) -> dict[str, Any]:
    from bench.training.train import train_and_evaluate

    # A cluster worker on another machine may not see the caller's results directory; it
    # then keeps the split in memory (its digest still goes into the record).
    splits_home = options.results_dir if Path(options.results_dir).is_dir() else None
    started = time.perf_counter()
    base = {
        "schema": RECORD_SCHEMA,
        "run_id": run.run_id,
        "spec": run.spec.to_dict(),
        "code": code_version(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": os.uname().nodename,
        "pid": os.getpid(),  # the process that trained it (the caller's process wrote it)
    }
    base.update(plugin_fields(run.spec.method))
    try:
        body = train_and_evaluate(
            run.spec, results_dir=splits_home, data_root=options.data_root,
            device=options.device, progress_bars=options.progress_bars,
            num_workers=options.num_workers, weights_file=options.weights_file,
            numerics=numerics, attack=options.attack,
        )
    except UserError:
        raise
    except Exception as error:  # recorded, not raised: one bad run must not stop a sweep
        return failed_record(run, f"{type(error).__name__}: {error}", options, base,
                             traceback.format_exc(limit=8), time.perf_counter() - started)
    record = {**base, **body, "environment": environment(body["device"]), "status": "complete",
              "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    from bench.training.work import work_of

    record["work"] = work_of(record)  # counted work per stage: what the cost claim is graded on
    return record


def plugin_fields(method: str) -> dict[str, Any]:
    """`method_source` (distribution, version, entry point) for a plugin method; nothing for
    a built-in one, whose code version is the repository's commit."""
    from methods import method_source

    source = method_source(method)
    return {} if source.builtin else {"method_source": source.as_record()}


def failed_record(run: PlannedRun, reason: str, options: RunOptions, base: dict[str, Any] | None = None,
                  trace: str = "", seconds: float | None = None) -> dict[str, Any]:
    """A record saying the run failed and why (also used when a worker process dies)."""
    base = base or {"schema": RECORD_SCHEMA, "run_id": run.run_id, "spec": run.spec.to_dict(),
                    "code": code_version(), "host": None, **plugin_fields(run.spec.method)}
    return {
        **base, "status": "failed", "config": resolve_config(run.spec),
        "environment": environment(options.device or "auto"),
        "failure": reason, "traceback": portable_text(trace),
        "timings": {"total": seconds} if seconds is not None else {},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
