"""`python -m bench check`: the CI regression gate."""

from __future__ import annotations

import argparse

from bench.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", default=None)


def execute(args: argparse.Namespace) -> int:
    raise UserError("bench check is not implemented yet")
