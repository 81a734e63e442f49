"""Where runs execute: in this process, in local worker processes (joblib), or on a Dask
cluster. Workers return records and only the calling process writes them, so records land
in the caller's results directory and no two processes ever write the same file.

- `--jobs 1` (default): one run after another in this process.
- `--jobs N`: N joblib (loky) worker processes. On the fast path every run computes with a
  fixed number of threads (1 unless --threads), so the records do not depend on N; on the
  legacy path (BENCH_FAST=0) the machine's cores are divided between them
  (`threads_per_job`), so N runs of a small model do not fight over the cores.
- `--backend dask`: a `distributed.LocalCluster` of N single-threaded worker processes on
  this machine, or, with `--scheduler ADDRESS`, an existing cluster. A cluster's workers
  need this package and the datasets installed; they decide their own device and threads
  (see docs/report.md, "Sweeps, parallel runs and clusters", for one run
  per GPU).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bench.errors import UserError
from bench.network.numerics import fast_by_default
from bench.sweeps.jobs import PlannedRun, RunOptions, SweepAborted, compute_record, failed_record

BACKENDS = ("local", "dask")


def available_cores() -> int:
    """Cores this process may use (its CPU affinity, e.g. a container's or taskset's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Divide the machine's cores between parallel runs so they do not oversubscribe."""
    return max(1, (cores or available_cores()) // max(1, jobs))


def check_executor(jobs: int, backend: str, scheduler: str | None) -> None:
    """Refuse impossible executor settings before anything is planned or written."""
    fast_by_default()  # a bad BENCH_FAST is refused before anything is planned
    if backend not in BACKENDS:
        raise UserError(f"unknown backend '{backend}'; valid backends: {', '.join(BACKENDS)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise UserError(f"--jobs {jobs}: must be a positive integer")
    if scheduler and backend != "dask":
        raise UserError(f"--scheduler {scheduler} needs --backend dask")
    if backend == "dask":
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise UserError("--backend dask needs dask: pip install 'hashbench[dask]'") from None


def _local_options(options: RunOptions, workers: int) -> RunOptions:
    """What a worker on this machine needs: absolute paths, no progress bars, the path this
    process chose (so a worker cannot pick another from its environment) and, on the legacy
    path, its share of the cores (unless --threads chose one; the fast path's rule is fixed)."""
    fast = fast_by_default() if options.fast is None else options.fast
    return dataclasses.replace(
        options, progress_bars=False, fast=fast,
        torch_threads=options.torch_threads or (None if fast else threads_per_job(workers)),
        results_dir=Path(options.results_dir).resolve(),
        data_root=str(Path(options.data_root).resolve()) if options.data_root else None,
    )


def run_all(todo: list[PlannedRun], options: RunOptions, jobs: int, backend: str,
            scheduler: str | None, claim: Callable[[PlannedRun], bool] | None = None,
            ) -> Iterator[tuple[PlannedRun, dict]]:
    """Yield (run, record) as runs finish, in completion order. `claim(run)` is asked just
    before a run is handed to an executor (False: leave it out; see runner.RunClaims)."""
    check_executor(jobs, backend, scheduler)
    claim = claim or (lambda run: True)
    if backend == "local" and (jobs == 1 or len(todo) == 1):
        for run in todo:
            if claim(run):
                yield run, compute_record(run, options)
        return
    todo = longest_first(todo)
    if backend == "local":
        yield from _run_on_joblib(todo, options, min(jobs, len(todo)), claim)
        return
    claimed = [run for run in todo if claim(run)]
    if claimed:
        yield from _run_on_dask(claimed, options, jobs, scheduler)


def longest_first(todo: list[PlannedRun]) -> list[PlannedRun]:
    """Runs with a larger `epochs` override first, the order otherwise kept. With several
    workers, a mixed-budget sweep (budget curves: 15/30/60 epochs) that reaches its 60-epoch
    runs last ends with idle workers waiting on them; starting the longest first shortens
    that tail (longest-processing-time-first scheduling)."""
    def epochs(run: PlannedRun) -> int:
        value = dict(run.spec.overrides).get("epochs")
        try:
            return int(value) if value is not None else 0
        except (TypeError, ValueError):
            return 0

    return sorted(todo, key=lambda run: -epochs(run))


def _run_on_joblib(todo: list[PlannedRun], options: RunOptions, workers: int,
                   claim: Callable[[PlannedRun], bool]) -> Iterator[tuple[PlannedRun, dict]]:
    from joblib import Parallel, delayed
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    worker_options = _local_options(options, workers)
    parallel = Parallel(n_jobs=workers, backend="loky", return_as="generator_unordered")
    finished = 0
    try:
        # A generator: joblib draws (and so claims) runs only as workers are about to be free.
        for pair in parallel(delayed(_paired_local)(run, worker_options) for run in todo if claim(run)):
            finished += 1
            yield pair
    except TerminatedWorkerError as error:
        # A worker process died (killed, out of memory, a crash in native code): joblib
        # cannot say which run it held, so stop; finished runs are stored, a rerun resumes.
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise SweepAborted(
            f"a worker process died ({first_line}); {len(todo) - finished} runs unfinished; "
            "rerun the same command to continue with them"
        ) from None


def _connect(scheduler: str, timeout: str = "20s"):
    from dask.distributed import Client

    try:
        return Client(scheduler, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as error:
        raise UserError(f"cannot reach Dask scheduler {scheduler}: {error}") from None


def check_scheduler(scheduler: str) -> None:
    """Refuse (UserError) a scheduler address that does not answer, before anything is written."""
    _connect(scheduler).close()


def _run_on_dask(todo: list[PlannedRun], options: RunOptions, jobs: int,
                 scheduler: str | None) -> Iterator[tuple[PlannedRun, dict]]:
    from dask.distributed import Client, LocalCluster, as_completed
    from distributed.client import FutureCancelledError
    from distributed.scheduler import KilledWorker

    cluster = None
    if scheduler:
        client = _connect(scheduler)
        # Each worker machine decides its device and thread count (one run per worker, and
        # a worker per GPU, is the intended layout); --threads still applies if given.
        worker_options = dataclasses.replace(
            options, progress_bars=False, results_dir=Path(options.results_dir).resolve(),
            fast=fast_by_default() if options.fast is None else options.fast)
    else:
        workers = min(jobs, len(todo))
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
        client = Client(cluster)
        worker_options = _local_options(options, workers)
    try:
        futures = {
            client.submit(_paired, run, worker_options, pure=False, key=f"run-{run.run_id}"): run
            for run in todo
        }
        for future in as_completed(futures):
            run = futures[future]
            try:
                yield future.result()
            except KilledWorker as error:
                # The run took down the worker(s) it ran on (e.g. out of memory): a failure
                # of that run, recorded like any other; the sweep goes on.
                yield run, failed_record(run, f"KilledWorker: {error}", options)
            except (OSError, TimeoutError, FutureCancelledError) as error:
                raise SweepAborted(
                    f"lost the Dask cluster ({type(error).__name__}: {error}); finished runs are "
                    "stored; rerun the same command to continue"
                ) from None
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _paired(run: PlannedRun, options: RunOptions) -> tuple[PlannedRun, dict]:
    return run, compute_record(run, options)


_watching: list[int] = []


def _exit_with_parent(poll_seconds: float = 1.0) -> None:
    """In a local worker process: exit as soon as the sweep that started it is gone (e.g.
    SIGKILLed), instead of training on (and holding cores or a GPU) for nobody. Only the
    sweep writes records, so nothing is lost that it would have kept."""
    if _watching:
        return
    parent = os.getppid()
    _watching.append(parent)

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="bench-exit-with-parent", daemon=True).start()


def _paired_local(run: PlannedRun, options: RunOptions) -> tuple[PlannedRun, dict]:
    _exit_with_parent()
    return run, compute_record(run, options)
