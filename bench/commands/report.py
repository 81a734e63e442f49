"""`python -m bench report`: the reproduction report from the stored run records.

Writes OUT/report.md, OUT/report.html (self-contained, figures inline), OUT/figures/*.png,
OUT/verdicts.json (every claim's graded verdict and comparisons) and OUT/runs.csv (one row per
run), and prints where they are with one line per claim verdict. The report is a pure
function of the records: the same records give byte-identical files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default=None, help="results directory (default: results/)")
    parser.add_argument("--out", default=None, help="report directory (default: reports/)")
    parser.add_argument("--progress", action="store_true",
                        help="print only where the reproduction plan stands (runs recorded, to train, "
                             "waiting for a search per planned experiment; searches not yet written "
                             "into a tuned file); writes nothing")


def execute(args: argparse.Namespace) -> int:
    from bench.commands.progress import plan_state
    from bench.data.loading import REPO_ROOT
    from bench.report import generate
    from bench.runs.records import DEFAULT_RESULTS_DIR

    results = Path(args.results) if args.results else DEFAULT_RESULTS_DIR
    if args.progress:
        return print_progress(results)
    out = Path(args.out) if args.out else REPO_ROOT / "reports"
    progress = plan_state(results) if (results / "runs").is_dir() else None  # none: refused below
    written = generate(results, out, progress=progress)
    print(f"report: {written.markdown} and {written.html} ({len(written.figures)} figures in "
          f"{written.markdown.parent / 'figures'}); runs: {written.runs}")
    for verdict in written.verdicts:
        print(f"  {verdict.id}: {verdict.verdict} — {verdict.summary}")
    return 0


def print_progress(results: Path) -> int:
    """The tables of the report's Reproduction progress section (seconds, where the whole
    report takes minutes)."""
    from bench.commands.progress import plan_state
    from bench.report.progress import experiments_markdown, searches_markdown

    if not (results / "runs").is_dir():
        raise UserError(f"--results {results}: no runs/ folder there to count records in")
    state = plan_state(results)
    print(f"{experiments_markdown(state)}\n\n{searches_markdown(state)}")
    return 0
