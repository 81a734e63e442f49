"""`python -m bench records migrate`: rewrite stored records into the current format.

Schema-1 records (`<id>.json`, pretty-printed, with the absolute path of the machine that
made them) become schema 2 (`<id>.json.gz`, compact and compressed, paths relative to the
results folder), without retraining; run ids and every number stay as they are (see
bench.sweeps.migrate for what changes and why it is safe to interrupt). A second run is a no-op.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    actions.required = True
    migrate = actions.add_parser("migrate", help="rewrite schema-1 records as schema 2 (no retraining)",
                                 description="Rewrite schema-1 records as schema 2 (no retraining).")
    migrate.add_argument("--results", default=None, help="results directory (default: results/)")
    migrate.add_argument("--dry-run", action="store_true", help="say what would change; write nothing")


def execute(args: argparse.Namespace) -> int:
    from bench.errors import UserError
    from bench.runs.records import DEFAULT_RESULTS_DIR
    from bench.sweeps.migrate import migrate

    results = Path(args.results) if args.results else DEFAULT_RESULTS_DIR
    if not results.is_dir():
        raise UserError(f"results directory {results} does not exist; pass --results DIR")
    report = migrate(results, dry_run=args.dry_run)
    for old, new in report.mapped_ids:
        print(f"  id mapped: {old} -> {new}")
    for path in report.unreadable:
        print(f"  unreadable, left as it is: {path}")
    print(("would be: " if args.dry_run else "") + report.summary())
    return 0
