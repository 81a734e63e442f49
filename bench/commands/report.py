"""`python -m bench report`: tables (and, later, figures) from the stored run records."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default=None, help="results directory (default: results/)")
    parser.add_argument("--out", default=None, help="report directory (default: reports/)")


def execute(args: argparse.Namespace) -> int:
    from bench.records import DEFAULT_RESULTS_DIR
    from bench.summary import print_summary

    print_summary(Path(args.results) if args.results else DEFAULT_RESULTS_DIR)
    return 0
