"""README.md rendered from docs/README.template.md and reports/numbers.json: every `{{key}}`
is replaced by the value the report computed, so the README's numbers come from the records.
The pages under docs/ are rendered the same way, docs/templates/<page>.md -> docs/<page>.md, and
so is results/README.md (the records' own page: wall times, plan, transfer checks), from
docs/templates/results/README.md; `pages` is the one place that pairs every template with the
file it renders.

`render` is pure; `first_difference` names where a README differs from its rendering (what
`python -m bench readme --check` reports)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench.errors import UserError

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}")


README_TEMPLATE = Path("docs") / "README.template.md"
PAGE_TEMPLATES = Path("docs") / "templates"
RESULTS_TEMPLATE = PAGE_TEMPLATES / "results" / "README.md"


def pages(root: Path) -> list[tuple[Path, Path]]:
    """Every (template, rendered file) pair under `root`: README.md from docs/README.template.md,
    then docs/<page>.md from each docs/templates/<page>.md, sorted by name, then results/README.md
    when its template exists."""
    root = Path(root)
    pairs = [(root / README_TEMPLATE, root / "README.md")]
    pairs += [(template, root / "docs" / template.name)
              for template in sorted((root / PAGE_TEMPLATES).glob("*.md"))]
    if (root / RESULTS_TEMPLATE).is_file():
        pairs.append((root / RESULTS_TEMPLATE, root / "results" / "README.md"))
    return pairs


def load_numbers(path: Path) -> dict[str, str]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such file (run `python -m bench report` first)") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object of key -> value")
    return {str(k): str(v) for k, v in data.items()}


def render(template: str, numbers: dict[str, str], where: str = "template") -> str:
    """The template with every placeholder filled; an unknown key is bad input."""
    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in numbers:
            raise UserError(f"{where}: unknown key '{key}' (not in numbers.json; keys look like "
                            f"'{next(iter(numbers), 'table.FM.crh.32')}')")
        return numbers[key]

    return PLACEHOLDER.sub(fill, template)


def first_difference(template: str, numbers: dict[str, str], readme: str) -> str | None:
    """None when the README equals the rendering; else a line naming the first differing key
    (or the first differing line when the difference is in the text)."""
    rendered = render(template, numbers)
    if rendered == readme:
        return None
    template_lines, readme_lines = template.splitlines(), readme.splitlines()
    for number, (line, actual) in enumerate(zip(template_lines, readme_lines, strict=False), start=1):
        expected = render(line, numbers)
        if expected == actual:
            continue
        for match in PLACEHOLDER.finditer(line):
            key = match.group(1)
            prefix = render(line[:match.start()], numbers)
            value = numbers[key]
            if actual[len(prefix):len(prefix) + len(value)] != value or not actual.startswith(prefix):
                return f"line {number}: key '{key}' is '{value}' in numbers.json, the README differs"
        return f"line {number}: text differs from the template"
    shorter = min(len(template_lines), len(readme_lines))
    return f"line {shorter + 1}: the README and the template differ in length"
