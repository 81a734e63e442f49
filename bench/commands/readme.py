"""`python -m bench readme`: render README.md from docs/README.template.md and the numbers the
report wrote (reports/numbers.json). `--check` writes nothing and exits 1 naming the first key
whose number differs (0 when the README is what the template renders)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true",
                        help="compare README.md with the rendering; exit 1 on a difference")
    parser.add_argument("--numbers", default=None, help="numbers file (default: reports/numbers.json)")
    parser.add_argument("--template", default=None, help="template (default: docs/README.template.md)")
    parser.add_argument("--readme", default=None, help="README to write or check (default: README.md)")


def execute(args: argparse.Namespace) -> int:
    from bench.data.loading import REPO_ROOT
    from bench.errors import UserError
    from bench.report.readme import first_difference, load_numbers, render

    template_path = Path(args.template) if args.template else REPO_ROOT / "docs" / "README.template.md"
    readme_path = Path(args.readme) if args.readme else REPO_ROOT / "README.md"
    numbers = load_numbers(Path(args.numbers) if args.numbers else REPO_ROOT / "reports" / "numbers.json")
    if not template_path.is_file():
        raise UserError(f"{template_path}: no such template (valid: a markdown file with {{{{key}}}} "
                        "placeholders)")
    template = template_path.read_text()
    if args.check:
        readme = readme_path.read_text() if readme_path.is_file() else ""
        difference = first_difference(template, numbers, readme)
        if difference is None:
            print(f"{readme_path.name}: every number matches {template_path.name} + numbers.json")
            return 0
        print(f"{readme_path.name} differs from its rendering: {difference} "
              "(run `python -m bench readme`)", file=sys.stderr)
        return 1
    readme_path.write_text(render(template, numbers, str(template_path)))
    print(f"wrote {readme_path} from {template_path.name} and numbers.json")
    return 0
