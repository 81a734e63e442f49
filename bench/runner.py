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

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Iterator
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
    onednn: bool = False  # oneDNN CPU kernels: faster multi-threaded, thread-count-dependent numbers


@dataclass
class PlannedRun:
    spec: RunSpec
    run_id: str
    path: Path


class SweepAborted(RuntimeError):
    """The executor itself broke (a worker process died, the cluster went away): finished
    runs are stored, the rest are not; rerunning the same command resumes."""


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
                    seed=spec.seed, epochs=int(config["epochs"]), device=None)  # type: ignore[arg-type]
        method.check(config, task)
        identifier = run_id(spec, config)
        path = record_path(options.results_dir, spec, identifier)
        planned.setdefault(path, PlannedRun(spec, identifier, path))
    return list(planned.values())


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


def compute_record(run: PlannedRun, options: RunOptions) -> dict[str, Any]:
    """Train one run and return its complete record (status "complete" or "failed").

    Runs in whichever process or cluster worker executes the run; the caller writes the
    record, so records always land in the caller's results directory. A failure (NaN loss,
    exception) becomes a record with status "failed" and the reason, so a sweep goes on.
    Bad input found only here (UserError, e.g. data files missing on a cluster worker) is
    raised: every run would hit it, so the sweep stops with exit code 2."""
    with _numerics(options):
        return _compute_record(run, options)


@contextlib.contextmanager
def _numerics(options: RunOptions) -> Iterator[None]:
    """The run's torch thread count and CPU kernels, restored afterwards (a sequential sweep
    runs in the caller's process).

    oneDNN (mkldnn) CPU kernels split reductions by thread count, so with them the same spec
    and seed give slightly different numbers with 1 and 2 threads, and so with --jobs 1 and
    --jobs 2 (seen: different mAP after 3 epochs of small_cnn on fashion-mnist-mini). Unless
    --onednn asks for them, runs use PyTorch's native CPU kernels, whose results were the same
    bit for bit at 1 and 2 threads (tiny_cnn, small_cnn); they are up to ~1.6x slower at 2
    threads per run, and as fast at 1 thread (what each run gets with --jobs 2 on 2 cores)."""
    import torch

    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    if options.torch_threads:
        torch.set_num_threads(options.torch_threads)
    torch.backends.mkldnn.enabled = bool(options.onednn)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = onednn


def _compute_record(run: PlannedRun, options: RunOptions) -> dict[str, Any]:
    from bench.train import train_and_evaluate

    # A cluster worker on another machine may not see the caller's results directory; it
    # then keeps the split in memory (its digest still goes into the record).
    splits_home = options.results_dir if Path(options.results_dir).is_dir() else None
    started = time.perf_counter()
    base = {
        "schema": 1,
        "run_id": run.run_id,
        "spec": run.spec.to_dict(),
        "code": code_version(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": os.uname().nodename,
        "pid": os.getpid(),  # the process that trained it (the caller's process wrote it)
    }
    try:
        body = train_and_evaluate(
            run.spec, results_dir=splits_home, data_root=options.data_root,
            device=options.device, progress_bars=options.progress_bars,
            num_workers=options.num_workers, weights_file=options.weights_file,
        )
    except UserError:
        raise
    except Exception as error:  # recorded, not raised: one bad run must not stop a sweep
        return failed_record(run, f"{type(error).__name__}: {error}", options, base,
                             traceback.format_exc(limit=8), time.perf_counter() - started)
    return {**base, **body, "environment": environment(body["device"]), "status": "complete",
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def failed_record(run: PlannedRun, reason: str, options: RunOptions, base: dict[str, Any] | None = None,
                  trace: str = "", seconds: float | None = None) -> dict[str, Any]:
    """A record saying the run failed and why (also used when a worker process dies)."""
    base = base or {"schema": 1, "run_id": run.run_id, "spec": run.spec.to_dict(),
                    "code": code_version(), "host": None}
    return {
        **base, "status": "failed", "config": resolve_config(run.spec),
        "environment": environment(options.device or "auto"),
        "failure": reason, "traceback": trace,
        "timings": {"total": seconds} if seconds is not None else {},
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


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
    from bench.parallel import check_executor, run_all

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
        from bench.parallel import check_scheduler

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
