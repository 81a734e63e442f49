"""Execute a list of run specs: skip runs that already have a complete record, redo failed or
corrupt ones, never let one failure stop the sweep, and write every record atomically.

The order of a sweep, so that bad input is refused before anything is written or trained:
  1. plan: resolve every spec and let each method check its settings (UserError, exit 2);
  2. check the results directory is writable and where executors are (UserError);
  3. read existing records: complete ones are skipped, failed ones redone, corrupt ones noted;
  4. in this process, open each dataset still needed and save its split once (missing or
     malformed data files: UserError, before any run starts; one writer per split file);
  5. set corrupt records aside (renamed, never deleted) and run the rest, in this process,
     in local worker processes or on a Dask cluster (`bench.sweeps.parallel`). Workers only
     compute; this process writes every record, atomically, as each run finishes, so a
     sweep killed at any moment leaves complete records or none, and a rerun resumes.
  6. Before a run starts, this process takes the run's lock (`RunClaims`): two sweeps on one
     results folder (two terminals, two cluster jobs) never train the same run. A sweep that
     meets a run locked by another skips it, and at its end waits for that lock: the run is
     then done by the other sweep (reported so) or, if that sweep died, trained here.
Exit codes of `bench run`: 0 every run complete, 1 some runs failed (recorded, with the
reason), 2 bad input (nothing trained, nothing stored changed).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.data.loading import load_card
from bench.errors import UserError
from bench.runs.records import (
    CorruptRecord,
    check_writable,
    legacy_path,
    read_record,
    record_files,
    record_path,
    record_stem,
    set_aside,
    stored_path,
    write_bytes_atomic,
    write_record,
)
from bench.runs.spec import RunSpec, resolve_config, run_id
from bench.sweeps.jobs import PlannedRun, RunOptions, SweepAborted, compute_record, failed_record
from bench.sweeps.parallel import check_executor, check_scheduler, run_all
from methods import get_method
from methods.base import Task

__all__ = ["PlannedRun", "RunOptions", "SweepAborted", "SweepOutcome", "compute_record",
           "execute_runs", "failed_record", "plan_runs", "run_state"]


@dataclass
class SweepOutcome:
    completed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)  # finished by another process meanwhile
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
        if stored_path(path) is None and not options.force:
            path = stored_under_other_id(path, identifier) or path
            identifier = record_stem(path)
        planned.setdefault(path, PlannedRun(spec, identifier, path))
    return list(planned.values())


def stored_under_other_id(path: Path, identifier: str) -> Path | None:
    """The record of this very run stored under an id an older scheme gave it, if any.

    Run ids once hashed torch's repr of the backbone, which torch words differently between
    releases, so runs made under another torch (a GPU image's 2.11) carry another id than the
    same run gets now. `bench records migrate` writes the id the canonical scheme gives into
    such a record (`identity.run_id`) and keeps its file name and stored id; this finds it."""
    prefix = identifier.rsplit("-", 1)[0]
    for candidate in record_files(path.parent):
        if not candidate.name.startswith(prefix + "-"):
            continue
        try:
            record = read_record(candidate)
        except CorruptRecord:
            continue
        if (record.get("identity") or {}).get("run_id") == identifier:
            return candidate
    return None


RunState = str  # "todo" (no record), "done", "failed" (redone), "corrupt" (set aside, redone),
# "attack" (record stored, attack result missing: trained again for the attack only)


def run_state(run: PlannedRun, options: RunOptions) -> tuple[RunState, str]:
    """The state of a run's record and, for a corrupt one, why; reads, never writes."""
    path = stored_path(run.path)
    if path is None:
        return "todo", ""
    try:
        record = read_record(path)
    except CorruptRecord as error:
        return "corrupt", str(error)
    if record.get("status") != "complete":
        return "failed", str(record.get("failure", "unknown"))
    if options.attack is not None and not attack_result_path(run, options).exists():
        return "attack", "record stored; the attack needs the model, so the run trains again"
    return "done", ""


def attack_result_path(run: PlannedRun, options: RunOptions) -> Path:
    from bench.evaluation.attack import attack_path

    return attack_path(options.results_dir, run.spec.dataset, run.spec.method, run.run_id,
                       options.attack)


def needs_running(run: PlannedRun, options: RunOptions, outcome: SweepOutcome | None = None) -> bool:
    """True unless a complete, readable record exists (a corrupt one is set aside: renamed,
    never deleted, and reported with its path on stderr)."""
    state, why = run_state(run, options)
    if state == "corrupt":
        moved = set_aside(stored_path(run.path) or run.path)
        print(f"warning: corrupt record {why}; moved to {moved}; its run will be redone",
              file=sys.stderr, flush=True)
        if outcome is not None:
            outcome.set_aside.append(str(moved))
    return options.force or state != "done"


def prepare_data(todo: list[PlannedRun], options: RunOptions) -> None:
    """Open every dataset the remaining runs need and save each split once, here.

    Missing or malformed data files are refused (UserError) before any run starts, and split
    files get one writer instead of several workers racing to create the same file."""
    from bench.data.loading import open_dataset
    from bench.data.splits import make_split

    needed: dict[str, set[int]] = {}
    for run in todo:
        needed.setdefault(run.spec.dataset, set()).add(run.spec.split_seed)
    for dataset, seeds in needed.items():
        card = load_card(dataset)
        source = open_dataset(card, options.data_root)
        for seed in sorted(seeds):
            make_split(card, source, seed, Path(options.results_dir) / "splits")
        del source


def store(run: PlannedRun, record: dict[str, Any], outcome: SweepOutcome, total: int = 0,
          options: RunOptions | None = None) -> None:
    """Write one finished run's record (only the sweep's own process calls this), and its
    attack result beside it; a complete stored record is kept as it is when the run was
    trained again only for an attack (the result notes whether the rerun reproduced it)."""
    attack = record.pop("attack_result", None)
    try:
        kept = _keep_stored(run, record, attack, options)
        if kept is None:
            write_record(run.path, record)
            if run.path.name.endswith(".gz"):
                legacy_path(run.path).unlink(missing_ok=True)  # a redone run's schema-1 file
        if attack is not None and options is not None:
            attack["record_reproduced"] = kept if kept is not None else True
            write_bytes_atomic(attack_result_path(run, options),
                               (json.dumps(attack, sort_keys=True, indent=1) + "\n").encode())
    except OSError as error:  # e.g. the disk filled up mid-sweep: stop, keep what is stored
        raise SweepAborted(f"cannot write {run.path}: {error.strerror or error}") from None
    done = len(outcome.completed) + len(outcome.failed) + 1
    counter = f"[{done}/{total}] " if total else ""
    if record["status"] == "complete":
        outcome.completed.append(run.run_id)
        seconds = record.get("timings", {}).get("total")
        took = f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
        metrics = record["metrics"]
        extra = metrics.get("precision_at_k")  # a card's second headline metric (document cards)
        also = f", P@{extra['k']} {extra['value']:.4f}" if isinstance(extra, dict) else ""
        print(f"{counter}done {run.spec.label()}: mAP {metrics['mAP']:.4f}{also}{took}", flush=True)
    else:
        outcome.failed.append((run.run_id, record.get("failure", "unknown")))
        print(f"{counter}FAILED {run.spec.label()}: {record.get('failure')}", flush=True)


def _keep_stored(run: PlannedRun, record: dict[str, Any], attack: dict[str, Any] | None,
                 options: RunOptions | None) -> bool | None:
    """For an attack-only rerun of a run whose complete record is stored (and no --force):
    whether the rerun reproduced its mAP (the stored record is kept); else None (write)."""
    if attack is None or options is None or options.force or record.get("status") != "complete":
        return None
    path = stored_path(run.path)
    if path is None:
        return None
    try:
        stored = read_record(path)
    except CorruptRecord:
        return None
    if stored.get("status") != "complete":
        return None
    return bool(abs(float(stored["metrics"]["mAP"]) - float(record["metrics"]["mAP"])) <= 1e-9)


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
        from bench.training.train import pick_device

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
    claims = RunClaims(options)
    try:
        while todo and not outcome.aborted:
            try:
                for run, record in run_all(todo, options, jobs, backend, scheduler, claim=claims.claim):
                    store(run, record, outcome, len(todo), options)
                    claims.release(run)
            except SweepAborted as error:
                outcome.aborted = str(error)
            todo = claims.wait_for_others(outcome)
    finally:
        claims.release_all()
    return outcome


class RunClaims:
    """Per-run locks for sweeps that share a results folder.

    A lock is a `filelock.FileLock` on `.<run id>.lock` beside the record, taken by the
    sweep's own process before the run is handed to a worker and released once its record
    is written. On POSIX it is an fcntl lock, which the kernel drops when its process dies,
    so a killed sweep leaves no lock that blocks anyone (the empty file stays; it is
    ignored by git and by every reader). Runs are claimed lazily, as workers become free,
    so two sweeps started together share the work instead of one taking all of it."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.held: dict[Path, Any] = {}
        self.busy: list[PlannedRun] = []

    @staticmethod
    def lock_path(run: PlannedRun) -> Path:
        return run.path.with_name(f".{record_stem(run.path)}.lock")

    def _lock(self, run: PlannedRun) -> Any:
        from filelock import FileLock

        return FileLock(self.lock_path(run), thread_local=False)

    def claim(self, run: PlannedRun) -> bool:
        """Take the run's lock if it is free and the run still needs training; otherwise
        note it for `wait_for_others` and return False."""
        from filelock import Timeout

        lock = self._lock(run)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            self.busy.append(run)
            return False
        if not self.options.force and run_state(run, self.options)[0] == "done":
            lock.release()  # finished by another sweep since this one planned
            self.busy.append(run)
            return False
        self.held[run.path] = lock
        return True

    def release(self, run: PlannedRun) -> None:
        lock = self.held.pop(run.path, None)
        if lock is not None:
            lock.release()

    def release_all(self) -> None:
        for lock in self.held.values():
            lock.release()
        self.held.clear()

    def wait_for_others(self, outcome: SweepOutcome) -> list[PlannedRun]:
        """Wait for each run another process held; return those it left without a complete
        record (that process died or failed), to be run here."""
        busy, self.busy = self.busy, []
        if busy:
            print(f"waiting for {len(busy)} runs another process is training", flush=True)
        left = []
        for run in busy:
            with self._lock(run):  # blocks until the other process is done or gone
                state = run_state(run, self.options)[0]
            if state == "done":
                outcome.elsewhere.append(run.run_id)
                print(f"done by another process: {run.spec.label()}", flush=True)
            else:
                left.append(run)
        return left
