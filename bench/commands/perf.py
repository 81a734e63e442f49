"""`python -m bench perf <benchmark>`: benchmarks that print a figure next to its comparison.

Each benchmark is a module of `bench/perf/` with `configure(parser)` (its own flags: every
benchmark gets its own sub-parser, so two may use the same flag name with different defaults)
and `run(args) -> int`. To add one: write `bench/perf/x.py` and add it to BENCHMARKS.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS: dict[str, str] = {
    "run": "Wall-time breakdown of one real run, legacy path vs fast path vs a bare PyTorch loop.",
    "evaluator": "mAP@k + tie-aware mAP + PR by radius vs the per-query loop and faiss top-k search.",
    "loop": "Images/second of the shared training loop against a bare PyTorch loop (same model, data, loss).",
    "sweep": "Wall time of one 8-run sweep with --jobs 1, --jobs 2 and a 2-worker Dask LocalCluster.",
    "cost": "Isolated wall time of SHC against CRH: sequential ABAB pairs, load recorded, log-ratio tests.",
}


def _module(name: str):
    return importlib.import_module(f"bench.perf.{name}")


def configure(parser: argparse.ArgumentParser) -> None:
    subparsers = parser.add_subparsers(dest="benchmark", metavar="sub-benchmark")
    subparsers.required = True
    for name, summary in BENCHMARKS.items():
        sub = subparsers.add_parser(name, help=summary, description=summary)
        _module(name).configure(sub)


def execute(args: argparse.Namespace) -> int:
    return _module(args.benchmark).run(args)
