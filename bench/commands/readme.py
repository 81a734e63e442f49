"""`python -m bench readme`: render README.md from docs/README.template.md, every page
docs/<page>.md from docs/templates/<page>.md, and results/README.md (`bench.report.readme.pages`),
with the numbers the report wrote (reports/numbers.json). `--check` writes nothing and exits 1
naming the first file and key whose number differs (0 when every file is what its template
renders). `--template` or `--readme` renders or checks that one file instead."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true",
                        help="compare README.md, docs/*.md and results/README.md with their renderings; "
                             "exit 1 on a difference")
    parser.add_argument("--numbers", default=None, help="numbers file (default: reports/numbers.json)")
    parser.add_argument("--template", default=None,
                        help="one template (default: every page: docs/README.template.md, "
                             "docs/templates/*.md, docs/templates/results/README.md)")
    parser.add_argument("--readme", default=None,
                        help="one file to write or check (default: README.md with --template, "
                             "else every page)")


def execute(args: argparse.Namespace) -> int:
    from bench.data.loading import REPO_ROOT
    from bench.errors import UserError
    from bench.report.readme import README_TEMPLATE, load_numbers, pages

    numbers = load_numbers(Path(args.numbers) if args.numbers else REPO_ROOT / "reports" / "numbers.json")
    if args.template or args.readme:
        pairs = [(Path(args.template) if args.template else REPO_ROOT / README_TEMPLATE,
                  Path(args.readme) if args.readme else REPO_ROOT / "README.md")]
    else:
        pairs = pages(REPO_ROOT)
    for template_path, _ in pairs:
        if not template_path.is_file():
            raise UserError(f"{template_path}: no such template (valid: a markdown file with {{{{key}}}} "
                            "placeholders)")
    status = 0
    for template_path, readme_path in pairs:
        status = max(status, _one(template_path, readme_path, numbers, args.check))
    return status


def _shown(path: Path) -> str:
    """The path relative to the working directory when it is under it (docs/templates/x.md)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _one(template_path: Path, readme_path: Path, numbers: dict[str, str], check: bool) -> int:
    from bench.report.readme import first_difference, render

    template = template_path.read_text()
    if check:
        readme = readme_path.read_text() if readme_path.is_file() else ""
        difference = first_difference(template, numbers, readme)
        if difference is None:
            print(f"{_shown(readme_path)}: every number matches {_shown(template_path)} + numbers.json")
            return 0
        print(f"{_shown(readme_path)} differs from its rendering: {difference} "
              "(run `python -m bench readme`)", file=sys.stderr)
        return 1
    readme_path.write_text(render(template, numbers, str(template_path)))
    print(f"wrote {_shown(readme_path)} from {_shown(template_path)} and numbers.json")
    return 0
