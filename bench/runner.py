"""Execute a list of run specs: skip runs that already have a complete record, redo failed or
corrupt ones, never let one failure stop the sweep, and write every record atomically.

The order of a sweep, so that bad input is refused before anything is written or trained:
  1. plan: resolve every spec and let each method check its settings (UserError, exit 2);
  2. check the results directory is writable and where executors are (UserError);
  3. read existing records: complete ones are skipped, failed ones redone, corrupt ones noted;
  4. in this process, open each dataset still needed and save its split once (missing or
     malformed data files: UserError, before any run starts; one writer per split file);
  5. set corrupt records aside (renamed, never deleted) and run the rest, in this process,
     in local worker processes or on a Dask cluster (`bench.parallel`). Workers only
     compute; this process writes every record, atomically, as each run finishes, so a
     sweep killed at any moment leaves complete records or none, and a rerun resumes.
Exit codes of `bench run`: 0 every run complete, 1 some runs failed (recorded, with the
reason), 2 bad input (nothing trained, nothing stored changed).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.data import load_card
from bench.errors import UserError
from bench.jobs import PlannedRun, RunOptions, SweepAborted, compute_record, failed_record
from bench.parallel import check_executor, check_scheduler, run_all
from bench.records import (
    CorruptRecord,
    check_writable,
    read_record,
    record_path,
    set_aside,
    write_json_atomic,
)
from bench.spec import RunSpec, config_identity, resolve_config, run_id
from methods import get_method
from methods.base import Task

__all__ = ["PlannedRun", "RunOptions", "SweepAborted", "SweepOutcome", "compute_record",
           "execute_runs", "failed_record", "plan_runs", "run_state"]


@dataclass
class SweepOutcome:
    completed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    set_aside: list[str] = field(default_factory=list)
    aborted: str = ""

    @property
    def exit_code(self) -> int:
        """0: every run has a complete record; 1: some runs failed or did not finish."""
        return 1 if self.failed or self.aborted else 0


def plan_runs(specs: list[RunSpec], options: RunOptions) -> list[PlannedRun]:
    """Resolve every spec up front so bad settings are refused before anything trains."""
    planned: dict[Path, PlannedRun] = {}
    for spec in specs:
        card = load_card(spec.dataset)
        config = resolve_config(spec, card)
        method = get_method(spec.method)
        task = Task(bits=spec.bits, num_classes=card.num_classes, multi_label=card.multi_label,
                    seed=spec.seed, epochs=int(config["epochs"]), device=None,  # type: ignore[arg-type]
                    pretrained=spec.pretrained)
        method.check(config, task)
        identifier = run_id(spec, config)
        path = record_path(options.results_dir, spec, identifier, options.runs_folder)
        if not path.exists():
            path = made_under_other_torch(path, spec, config) or path
            identifier = path.stem
        planned.setdefault(path, PlannedRun(spec, identifier, path))
    return list(planned.values())


def _identity(config: dict[str, Any]) -> str:
    """The identifying configuration as stored JSON gives it back (tuples read as lists)."""
    return json.dumps(json.loads(json.dumps(config_identity(config), default=str)), sort_keys=True)


def made_under_other_torch(path: Path, spec: RunSpec, config: dict[str, Any]) -> Path | None:
    """The record of this very run made under another torch version, if one is stored.

    A run id hashes the backbone's module repr, and torch's repr wording differs between
    versions: a GPU machine's image (torch 2.11) gives the same network another id than the
    pinned torch here. A stored record with this run's spec and resolved configuration, made
    under a different torch, is this run: without this, a sweep would train it again beside
    its record. Under the same torch a different id means a real change (an edited
    architecture), so that record is not taken."""
    import torch

    prefix = path.stem.rsplit("-", 1)[0]
    wanted_spec, wanted_config = spec.to_dict(), _identity(config)
    for candidate in sorted(path.parent.glob(f"{prefix}-*.json")):
        try:
            record = read_record(candidate)
        except CorruptRecord:
            continue
        environment = record.get("environment") or {}
        if (record.get("status") == "complete" and environment.get("torch") not in (None, torch.__version__)
                and record.get("spec") == wanted_spec
                and _identity(record.get("config") or {}) == wanted_config):
            return candidate
    return None


RunState = str  # "todo" (no record), "done", "failed" (redone), "corrupt" (set aside, redone)


def run_state(run: PlannedRun, options: RunOptions) -> tuple[RunState, str]:
    """The state of a run's record and, for a corrupt one, why; reads, never writes."""
    if not run.path.exists():
        return "todo", ""
    try:
        record = read_record(run.path)
    except CorruptRecord as error:
        return "corrupt", str(error)
    if record.get("status") != "complete":
        return "failed", str(record.get("failure", "unknown"))
    return "done", ""


def needs_running(run: PlannedRun, options: RunOptions, outcome: SweepOutcome | None = None) -> bool:
    """True unless a complete, readable record exists (a corrupt one is set aside: renamed,
    never deleted, and reported with its path on stderr)."""
    state, why = run_state(run, options)
    if state == "corrupt":
        moved = set_aside(run.path)
        print(f"warning: corrupt record {why}; moved to {moved}; its run will be redone",
              file=sys.stderr, flush=True)
        if outcome is not None:
            outcome.set_aside.append(str(moved))
    return options.force or state != "done"


def prepare_data(todo: list[PlannedRun], options: RunOptions) -> None:
    """Open every dataset the remaining runs need and save each split once, here.

    Missing or malformed data files are refused (UserError) before any run starts, and split
    files get one writer instead of several workers racing to create the same file."""
    from bench.data import open_dataset
    from bench.splits import make_split

    needed: dict[str, set[int]] = {}
    for run in todo:
        needed.setdefault(run.spec.dataset, set()).add(run.spec.split_seed)
    for dataset, seeds in needed.items():
        card = load_card(dataset)
        source = open_dataset(card, options.data_root)
        for seed in sorted(seeds):
            make_split(card, source, seed, Path(options.results_dir) / "splits")
        del source


def store(run: PlannedRun, record: dict[str, Any], outcome: SweepOutcome, total: int = 0) -> None:
    """Write one finished run's record (only the sweep's own process calls this)."""
    try:
        write_json_atomic(run.path, record)
    except OSError as error:  # e.g. the disk filled up mid-sweep: stop, keep what is stored
        raise SweepAborted(f"cannot write {run.path}: {error.strerror or error}") from None
    done = len(outcome.completed) + len(outcome.failed) + 1
    counter = f"[{done}/{total}] " if total else ""
    if record["status"] == "complete":
        outcome.completed.append(run.run_id)
        seconds = record.get("timings", {}).get("total")
        took = f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
        print(f"{counter}done {run.spec.label()}: mAP {record['metrics']['mAP']:.4f}{took}", flush=True)
    else:
        outcome.failed.append((run.run_id, record.get("failure", "unknown")))
        print(f"{counter}FAILED {run.spec.label()}: {record.get('failure')}", flush=True)


def execute_runs(specs: list[RunSpec], options: RunOptions, jobs: int = 1,
                 backend: str = "local", scheduler: str | None = None) -> SweepOutcome:
    check_executor(jobs, backend, scheduler)
    planned = plan_runs(specs, options)
    check_writable(options.results_dir)
    outcome = SweepOutcome()
    states = {run.path: run_state(run, options)[0] for run in planned}
    pending = [run for run in planned if options.force or states[run.path] != "done"]
    if pending and not (backend == "dask" and scheduler):
        # Runs execute on this machine: check its device and data now.
        from bench.train import pick_device

        pick_device(options.device)
        prepare_data(pending, options)
    elif pending:
        # A remote cluster's workers have their own GPUs and data, which this machine may
        # lack. Once the scheduler answers, and if this machine has the data, save the splits
        # once here, for workers that share the results directory to read.
        check_scheduler(scheduler)
        try:
            prepare_data(pending, options)
        except UserError:
            pass
    todo = []
    for run in planned:
        if needs_running(run, options, outcome):
            todo.append(run)
        else:
            outcome.skipped.append(run.run_id)
    if todo:
        try:
            for run, record in run_all(todo, options, jobs, backend, scheduler):
                store(run, record, outcome, len(todo))
        except SweepAborted as error:
            outcome.aborted = str(error)
    return outcome
