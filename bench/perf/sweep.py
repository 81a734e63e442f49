"""Benchmark: wall time of the same 8-run sweep run sequentially, with `--jobs 2` (joblib
worker processes) and on a 2-worker Dask LocalCluster, in one go, with the speed-ups.

Each variant is the real command (`python -m bench run ...`) in a fresh interpreter with a
fresh temporary results directory, so every variant pays the same start-up costs (Python,
torch imports, data) and none reuses another's records. An untimed one-run warm-up first
fills the OS file cache and numba's on-disk cache, so the first variant is not penalised.

The default runs (CSQ on the synthetic dataset: tiny CNN, 12x12 images, `--set batch_size=32`,
200 epochs) are small models that do not use two cores well on their own: a step is too
little work for torch to split over two threads (measured on the 2-core machine: a run with 2
threads is about as fast as with 1; at batch 64 a 2nd thread gives ~1.3x, and small_cnn on
fashion-mnist-mini ~1.65x). Running two such runs side by side is how a sweep of them gets
faster. Every run on the fast path (the default, `bench.network.numerics`) computes with one thread,
whatever `--jobs` is, so `--jobs 1`, `--jobs 2` and Dask must give the same metrics. Control
variants, whose numbers differ by design and are compared apart: `--jobs 1 --threads 2`
(oneDNN splits its reductions by thread count) and `BENCH_FAST=0 --jobs 1 --threads 1`
(the legacy loop: native kernels, unfused encoding). On a machine shared with other work,
every variant slows down: `--wait-idle` waits for a quiet machine before each variant, and
the load average is printed with the results.

    python -m bench.perf.sweep                     # or, once registered: python -m bench perf sweep
    python -m bench.perf.sweep --epochs 10 --dataset fashion-mnist-mini
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]

VARIANTS = ("jobs1", "jobs1-2threads", "legacy-jobs1", "jobsN", "daskN")
# jobs1-2threads only on request: on a shared 2-core machine oneDNN's two spinning OpenMP
# threads are starved by any other process (measured: 1000 s against 88 s for 1 thread).
DEFAULT_VARIANTS = ("jobs1", "legacy-jobs1", "jobsN", "daskN")
# Variants whose numbers differ from the others by design (another thread count or path).
APART = ("jobs1-2threads", "legacy-jobs1")
# Batch 32: each step is too little work for torch to split over two threads (measured on
# the 2-core machine: a run with 2 threads is about as fast as with 1), i.e. runs that do
# not already use both cores; batch 64 gains ~1.3x from a 2nd thread, small_cnn on
# fashion-mnist-mini ~1.65x.
DEFAULT_SETTINGS = ("batch_size=32",)


def variant_flags(name: str, jobs: int) -> tuple[list[str], str]:
    """The flags of one variant and its label, for `jobs` parallel runs."""
    return {
        "jobs1": (["--jobs", "1"], "--jobs 1 (sequential, 1 thread per run)"),
        "jobs1-2threads": (["--jobs", "1", "--threads", "2"], "--jobs 1 --threads 2 (sequential)"),
        "legacy-jobs1": (["--jobs", "1", "--threads", "1"], "BENCH_FAST=0 --jobs 1 --threads 1 (legacy)"),
        "jobsN": (["--jobs", str(jobs)], f"--jobs {jobs} (joblib, {jobs} processes)"),
        "daskN": (["--backend", "dask", "--jobs", str(jobs)], f"--backend dask --jobs {jobs} (LocalCluster)"),
    }[name]


def variant_environment(name: str) -> dict[str, str]:
    return {**os.environ, "BENCH_FAST": "0" if name == "legacy-jobs1" else "1"}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="synthetic", help="dataset card (default synthetic)")
    parser.add_argument("--methods", default="csq", help="comma-separated methods (default csq)")
    parser.add_argument("--bits", default="16,32", help="code lengths (default 16,32)")
    parser.add_argument("--seeds", default="0,1,2,3", help="seeds (default 0,1,2,3: 2x4 = 8 runs)")
    parser.add_argument("--epochs", type=int, default=200, help="epochs per run (default 200)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="parallel runs / LocalCluster workers (default 2)")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                        help=f"which to time, comma-separated (default: {', '.join(DEFAULT_VARIANTS)}; "
                             f"all: {', '.join(VARIANTS)})")
    parser.add_argument("--set", dest="settings", action="append", default=None, metavar="KEY=VALUE",
                        help=f"passed on to every sweep (default: {' '.join(DEFAULT_SETTINGS)})")
    parser.add_argument("--keep", action="store_true", help="keep the temporary results directories")
    parser.add_argument("--wait-idle", type=float, default=None, metavar="LOAD",
                        help="before each variant, wait (up to 10 min) until the 1-minute load average "
                             "is below LOAD: on a shared machine, other work distorts the ratios")


def _count(text: str) -> int:
    return len([part for part in text.split(",") if part.strip()])


def _sweep_command(options: dict[str, Any], results: Path, variant: list[str]) -> list[str]:
    command = [sys.executable, "-m", "bench", "run", "--dataset", options["dataset"],
               "--methods", options["methods"], "--bits", options["bits"], "--seeds", options["seeds"],
               "--epochs", str(options["epochs"]), "--device", "cpu", "--quiet",
               "--results", str(results), *variant]
    for setting in options.get("settings", []):
        command += ["--set", setting]
    return command


def _records(results: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((results / "runs").rglob("*.json"))]


def _children_cpu() -> float:
    """CPU seconds (user + system) of finished child processes and their reaped descendants
    (the sweep's worker processes), which other work on the machine does not inflate much."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _wait_for_load(limit: float, log, patience: float = 600.0) -> None:
    deadline = time.monotonic() + patience
    while os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        log(f"  waiting: 1-min load average {os.getloadavg()[0]:.1f} >= {limit}")
        time.sleep(20)


def sweep_benchmark(dataset: str = "synthetic", methods: str = "csq", bits: str = "16,32",
                    seeds: str = "0,1,2,3", epochs: int = 200, jobs: int = 2,
                    variants: tuple[str, ...] = DEFAULT_VARIANTS,
                    settings: tuple[str, ...] = DEFAULT_SETTINGS,
                    keep: bool = False, wait_idle: float | None = None, log=print) -> dict[str, Any]:
    """Time the same sweep under each variant; return the rows and the speed-ups.

    Raises RuntimeError if a sweep fails or leaves an incomplete record (a benchmark of a
    broken sweep would mean nothing)."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    options = {"dataset": dataset, "methods": methods, "bits": bits, "seeds": seeds, "epochs": epochs,
               "settings": list(settings)}
    expected = _count(methods) * _count(bits) * _count(seeds)
    plan = {name: variant_flags(name, jobs) for name in variants}
    workdir = Path(tempfile.mkdtemp(prefix="bench-perf-sweep-"))
    rows: list[dict[str, Any]] = []
    try:
        warm = _sweep_command({**options, "bits": bits.split(",")[0], "seeds": seeds.split(",")[0],
                               "epochs": 1}, workdir / "warm-up", [])
        subprocess.run(warm, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        for name, (variant, label) in plan.items():
            results = workdir / name
            if wait_idle is not None:
                _wait_for_load(wait_idle, log)
            load_before = os.getloadavg()[0]
            cpu_before = _children_cpu()
            started = time.perf_counter()
            done = subprocess.run(_sweep_command(options, results, variant), cwd=REPO_ROOT,
                                  capture_output=True, text=True, env=variant_environment(name))
            wall = time.perf_counter() - started
            cpu = _children_cpu() - cpu_before
            records = _records(results)
            complete = [r for r in records if r.get("status") == "complete"]
            if done.returncode != 0 or len(complete) != expected:
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                raise RuntimeError(f"sweep {name} failed (exit {done.returncode}, {len(complete)}/"
                                   f"{expected} runs complete): {' | '.join(tail)}")
            rows.append({
                "variant": name, "label": label, "wall_s": wall, "cpu_s": cpu,
                "run_s": sum(float(r["timings"]["total"]) for r in complete),
                "threads": sorted({r["environment"]["torch_threads"] for r in complete}),
                "processes": len({r.get("pid") for r in complete}),
                "load_before": load_before,
                "metrics": {r["run_id"]: r["metrics"] for r in complete},
            })
            log(f"  {name:14s} {wall:7.1f} s  (load average before: {load_before:.1f})")
    finally:
        if keep:
            log(f"results kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    by_name = {row["variant"]: row for row in rows}
    for row in rows:
        for base in ("jobs1", "legacy-jobs1"):
            if base in by_name:
                row[f"speedup_vs_{base}"] = by_name[base]["wall_s"] / row["wall_s"]
    reproducible = [row for row in rows if row["variant"] not in APART]
    reference = reproducible[0]["metrics"] if reproducible else {}
    return {
        "runs": expected, "cores": os.cpu_count(), "dataset": dataset, "methods": methods, "bits": bits,
        "seeds": seeds, "epochs": epochs, "jobs": jobs, "settings": list(settings), "rows": rows,
        "identical_metrics": all(row["metrics"] == reference for row in reproducible),
        "apart_metrics_identical": {name: by_name[name]["metrics"] == reference
                                    for name in APART if name in by_name and reproducible},
        "load_after": os.getloadavg()[0],
    }


def format_report(result: dict[str, Any]) -> str:
    lines = [
        f"sweep: {result['runs']} runs = {result['methods']} x bits {result['bits']} x seeds "
        f"{result['seeds']} on {result['dataset']}, {result['epochs']} epochs, "
        f"{' '.join(result['settings']) or 'no --set'}, cpu; {result['cores']} cores",
        f"{'variant':48s} {'wall s':>7s} {'cpu s':>6s} {'runs s':>7s} {'threads':>7s} {'procs':>5s} "
        f"{'vs jobs 1':>9s} {'vs legacy':>11s}",
    ]
    for row in result["rows"]:
        first = f"{row['speedup_vs_jobs1']:.2f}x" if "speedup_vs_jobs1" in row else "-"
        second = f"{row['speedup_vs_legacy-jobs1']:.2f}x" if "speedup_vs_legacy-jobs1" in row else "-"
        threads = ",".join(map(str, row["threads"]))
        lines.append(f"{row['label']:48s} {row['wall_s']:7.1f} {row['cpu_s']:6.1f} {row['run_s']:7.1f} "
                     f"{threads:>7s} {row['processes']:5d} {first:>9s} {second:>11s}")
    lines.append("wall s: the whole command (start-up, data, all runs, report); cpu s: CPU time of the "
                 "command and its worker processes; runs s: sum of the runs' own timings.total; "
                 "threads: torch threads per run; procs: processes that trained")
    lines.append(f"identical metrics with --jobs 1, --jobs N and Dask (1 thread per run): "
                 f"{'yes' if result['identical_metrics'] else 'NO'}")
    for name, same in result.get("apart_metrics_identical", {}).items():
        lines.append(f"{name} metrics equal to them: {same} (another thread count or path: "
                     "expected to differ in the last bits)")
    loads = ", ".join(f"{row['variant']} {row['load_before']:.1f}" for row in result["rows"])
    lines.append(f"1-min load average before each variant: {loads}; after: {result['load_after']:.1f} "
                 "(other work on the machine slows every variant and blurs the ratios)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from bench.errors import UserError

    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    if args.epochs < 1 or args.jobs < 1:
        raise UserError("--epochs and --jobs must be positive integers")
    print(f"timing {len(variants)} sweeps (each a fresh `python -m bench run` and results dir)...",
          flush=True)
    try:
        result = sweep_benchmark(args.dataset, args.methods, args.bits, args.seeds, args.epochs,
                                 args.jobs, variants, tuple(args.settings or DEFAULT_SETTINGS), args.keep,
                                 args.wait_idle)
    except ValueError as error:
        raise UserError(str(error)) from None
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_report(result))
    return 0 if result["identical_metrics"] else 1


def main(argv: list[str] | None = None) -> int:
    from bench.errors import UserError

    parser = argparse.ArgumentParser(prog="python -m bench.perf.sweep", description=__doc__.splitlines()[0])
    configure(parser)
    try:
        return run(parser.parse_args(argv))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
