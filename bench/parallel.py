"""Where runs execute: in this process, in local worker processes (joblib), or on a Dask
cluster. Workers return records and only the calling process writes them, so records land
in the caller's results directory and no two processes ever write the same file."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

from bench.errors import UserError
from bench.runner import PlannedRun, RunOptions, compute_record

BACKENDS = ("local", "dask")


def threads_per_job(jobs: int) -> int:
    """Divide the machine's cores between parallel runs so they do not oversubscribe."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def run_all(todo: list[PlannedRun], options: RunOptions, jobs: int, backend: str,
            scheduler: str | None) -> Iterator[tuple[PlannedRun, dict]]:
    if backend not in BACKENDS:
        raise UserError(f"unknown backend '{backend}'; valid backends: {', '.join(BACKENDS)}")
    if jobs < 1:
        raise UserError(f"--jobs {jobs}: must be a positive integer")
    if backend == "local" and (jobs == 1 or len(todo) == 1):
        for run in todo:
            yield run, compute_record(run, options)
        return
    from joblib import Parallel, delayed

    if backend == "local":
        worker_options = dataclasses.replace(
            options, progress_bars=False, torch_threads=threads_per_job(jobs)
        )
        parallel = Parallel(n_jobs=jobs, backend="loky", return_as="generator_unordered")
        yield from parallel(delayed(_paired)(run, worker_options) for run in todo)
        return
    yield from _run_on_dask(todo, options, jobs, scheduler)


def _run_on_dask(todo: list[PlannedRun], options: RunOptions, jobs: int,
                 scheduler: str | None) -> Iterator[tuple[PlannedRun, dict]]:
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise UserError("--backend dask needs dask: pip install 'hashbench[dask]'") from None
    cluster = None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as error:
            raise UserError(f"cannot reach Dask scheduler {scheduler}: {error}") from None
        threads = None  # each worker machine decides; one run per worker (GPU) is the intent
    else:
        cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
        threads = threads_per_job(jobs)
    worker_options = dataclasses.replace(options, progress_bars=False, torch_threads=threads,
                                         results_dir=options.results_dir.resolve())
    try:
        futures = [client.submit(_paired, run, worker_options, pure=False,
                                 key=f"run-{run.run_id}") for run in todo]
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _paired(run: PlannedRun, options: RunOptions) -> tuple[PlannedRun, dict]:
    return run, compute_record(run, options)
