"""Execute a list of run specs: skip runs that already have a complete record, redo failed or
corrupt ones, never let one failure stop the sweep, and write every record atomically."""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.data import load_card
from bench.errors import UserError
from bench.records import (
    CorruptRecord,
    check_writable,
    code_version,
    environment,
    read_record,
    record_path,
    set_aside,
    write_json_atomic,
)
from bench.spec import RunSpec, resolve_config, run_id
from methods import get_method
from methods.base import Task


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
    torch_threads: int | None = None


@dataclass
class PlannedRun:
    spec: RunSpec
    run_id: str
    path: Path


@dataclass
class SweepOutcome:
    completed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    set_aside: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def plan_runs(specs: list[RunSpec], options: RunOptions) -> list[PlannedRun]:
    """Resolve every spec up front so bad settings are refused before anything trains."""
    planned: dict[Path, PlannedRun] = {}
    for spec in specs:
        card = load_card(spec.dataset)
        config = resolve_config(spec, card)
        method = get_method(spec.method)
        task = Task(bits=spec.bits, num_classes=card.num_classes, multi_label=card.multi_label,
                    seed=spec.seed, epochs=int(config["epochs"]), device=None)  # type: ignore[arg-type]
        method.check(config, task)
        identifier = run_id(spec, config)
        path = record_path(options.results_dir, spec, identifier)
        planned.setdefault(path, PlannedRun(spec, identifier, path))
    return list(planned.values())


def needs_running(run: PlannedRun, options: RunOptions, outcome: SweepOutcome | None = None) -> bool:
    """True unless a complete, readable record exists (corrupt ones are set aside)."""
    if options.force or not run.path.exists():
        return True
    try:
        record = read_record(run.path)
    except CorruptRecord as error:
        moved = set_aside(run.path)
        message = f"corrupt record {error}; moved to {moved} and the run will be redone"
        print(f"warning: {message}", flush=True)
        if outcome is not None:
            outcome.set_aside.append(str(moved))
        return True
    return record.get("status") != "complete"


def compute_record(run: PlannedRun, options: RunOptions) -> dict[str, Any]:
    """Train one run and return its complete record (status "complete" or "failed").

    Runs in whichever process or cluster worker executes the run; the caller writes the
    record, so records always land in the caller's results directory. A failure (NaN loss,
    exception) becomes a record with status "failed" and the reason, so a sweep goes on."""
    from bench.train import train_and_evaluate

    if options.torch_threads:
        import torch

        torch.set_num_threads(options.torch_threads)
    base = {
        "schema": 1,
        "run_id": run.run_id,
        "spec": run.spec.to_dict(),
        "code": code_version(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": os.uname().nodename,
    }
    try:
        body = train_and_evaluate(
            run.spec, results_dir=options.results_dir, data_root=options.data_root,
            device=options.device, progress_bars=options.progress_bars,
            num_workers=options.num_workers, weights_file=options.weights_file,
        )
    except UserError:
        raise
    except Exception as error:  # recorded, not raised: one bad run must not stop a sweep
        return {
            **base, "status": "failed", "config": resolve_config(run.spec),
            "environment": environment(options.device or "auto"),
            "failure": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(limit=8),
        }
    return {**base, **body, "environment": environment(body["device"]), "status": "complete",
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def store(run: PlannedRun, record: dict[str, Any], outcome: SweepOutcome) -> None:
    write_json_atomic(run.path, record)
    if record["status"] == "complete":
        outcome.completed.append(run.run_id)
    else:
        outcome.failed.append((run.run_id, record.get("failure", "unknown")))
        print(f"run {run.spec.label()} failed: {record.get('failure')}", flush=True)


def execute_runs(specs: list[RunSpec], options: RunOptions, jobs: int = 1,
                 backend: str = "local", scheduler: str | None = None) -> SweepOutcome:
    check_writable(options.results_dir)
    outcome = SweepOutcome()
    todo = []
    for run in plan_runs(specs, options):
        if needs_running(run, options, outcome):
            todo.append(run)
        else:
            outcome.skipped.append(run.run_id)
    if todo:
        from bench.parallel import run_all

        for run, record in run_all(todo, options, jobs, backend, scheduler):
            store(run, record, outcome)
    return outcome
