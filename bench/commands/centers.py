"""`python -m bench centers`: every center generator on C x K grids, no training."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.errors import UserError


def _int_list(text: str, what: str, lowest: int) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--{what} {text!r} is not a comma-separated list of integers") from None
    if not values or any(v < lowest for v in values):
        raise UserError(f"--{what} {text!r}: every value must be an integer >= {lowest}")
    return values


def configure(parser: argparse.ArgumentParser) -> None:
    from bench.perf.centers import BITS, CLASSES, GENERATORS

    parser.add_argument("--classes", default=",".join(map(str, CLASSES)),
                        help="numbers of classes C, comma-separated (default %(default)s)")
    parser.add_argument("--bits", default=",".join(map(str, BITS)),
                        help="code lengths K, comma-separated (default %(default)s)")
    parser.add_argument("--generators", default=",".join(GENERATORS),
                        help="generators, comma-separated (default: all: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every generator (default 0)")
    parser.add_argument("--out", default=None,
                        help="folder for centers.md and centers.csv (default: reports/)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def execute(args: argparse.Namespace) -> int:
    import time

    from bench.perf.centers import DEFAULT_OUT, machine_header, run_benchmark, to_markdown, write_outputs

    classes = _int_list(args.classes, "classes", 2)
    bits = _int_list(args.bits, "bits", 1)
    too_small = [(c, k) for c in classes for k in bits if 2**k < c]
    if too_small:
        c, k = too_small[0]
        raise UserError(f"--classes {c} with --bits {k}: 2^{k} < {c}, no {c} distinct {k}-bit centers "
                        f"exist; use K >= {max(c - 1, 1).bit_length()}")
    generators = [g.strip() for g in args.generators.split(",") if g.strip()]
    started = time.perf_counter()
    rows = run_benchmark(classes, bits, generators, args.seed, progress=not args.quiet)
    header = machine_header(time.perf_counter() - started, args.seed)
    print(to_markdown(rows, header))
    markdown, table = write_outputs(rows, header, Path(args.out) if args.out else DEFAULT_OUT)
    print(f"wrote {markdown} and {table}")
    return 0
