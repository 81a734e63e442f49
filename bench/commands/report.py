"""`python -m bench report`: the reproduction report from the stored run records.

Writes OUT/report.md, OUT/report.html (self-contained, figures inline), OUT/figures/*.png,
OUT/verdicts.json (every claim's graded verdict and comparisons) and OUT/runs.csv (one row per
run), and prints where they are with one line per claim verdict. The report is a pure
function of the records: the same records give byte-identical files.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default=None, help="results directory (default: results/)")
    parser.add_argument("--out", default=None, help="report directory (default: reports/)")


def execute(args: argparse.Namespace) -> int:
    from bench.data.loading import REPO_ROOT
    from bench.report import generate
    from bench.runs.records import DEFAULT_RESULTS_DIR

    results = Path(args.results) if args.results else DEFAULT_RESULTS_DIR
    out = Path(args.out) if args.out else REPO_ROOT / "reports"
    written = generate(results, out)
    print(f"report: {written.markdown} and {written.html} ({len(written.figures)} figures in "
          f"{written.markdown.parent / 'figures'}); runs: {written.runs}")
    for verdict in written.verdicts:
        print(f"  {verdict.id}: {verdict.verdict} — {verdict.summary}")
    return 0
