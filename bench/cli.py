"""Command-line entry: `python -m bench <command> ...`.

Each command lives in `bench/commands/<name>.py` with `configure(parser)` and
`execute(args) -> int`. Command modules import heavy libraries (torch, pandas) inside
`execute`, so `--help` and argument errors stay instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from bench.errors import UserError

COMMANDS: dict[str, str] = {
    "run": "Train and evaluate methods x bits x seeds (skips runs that already have a record).",
    "tune": "Search each method's lr and main knobs, equal trials, on validation only; commit them.",
    "report": "Turn stored run records into tables, figures and claim verdicts.",
    "check": "CI regression gate: a small fast subset compared with a committed baseline.",
    "list": "Show methods, datasets, backbones and experiments.",
    "evaluate": "Evaluate retrieval for codes produced anywhere (.npy files).",
    "perf": "Benchmarks that print a figure next to its comparison.",
    "readme": "Render README.md and docs/*.md from templates and reports/numbers.json (--check: compare).",
    "centers": "Center generators only (no training): min/mean Hamming distance, GV bound, time.",
    "records": "Maintain stored records: `records migrate` rewrites old ones in the current format.",
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bench", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name, summary in COMMANDS.items():
        sub = subparsers.add_parser(name, help=summary, description=summary)
        module = importlib.import_module(f"bench.commands.{name}")
        module.configure(sub)
        sub.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args._module.execute(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return UserError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
