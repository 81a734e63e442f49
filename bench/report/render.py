"""Markdown and a self-contained HTML page from the same blocks (figures inline as base64, no
scripts, no external resources). The page is laid out to read without horizontal scrolling
at 1,400 px, with the verdict table above the fold."""

from __future__ import annotations

import base64
import html
import re
from collections import Counter
from collections.abc import Sequence

from bench.report.document import Block, Bullets, FigureRef, Heading, Paragraph, Table, anchor
from bench.report.util import md_escape
from bench.report.verdicts import GRADES


def render_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            out += [block.text, ""]
        elif isinstance(block, Bullets):
            out += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Table):
            out.append("| " + " | ".join(md_escape(h) for h in block.header) + " |")
            out.append("|" + "|".join("---" for _ in block.header) + "|")
            out += ["| " + " | ".join(md_escape(c).replace("\n", " ") for c in row) + " |"
                    for row in block.rows]
            out.append("")
        elif isinstance(block, FigureRef):
            out += [f"![{block.caption}](figures/{block.name}.png)", ""]
    return "\n".join(out).rstrip() + "\n"


_INLINE = [
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*([^*]+)\*(?![\w*])"), r"<em>\1</em>"),
    (re.compile(r"\[([^\]]+)\]\((#[^)\s]+)\)"), r'<a href="\2">\1</a>'),
]

_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1240px;margin:1.2em auto;
padding:0 1.2em;color:#1f2328;line-height:1.4;overflow-wrap:break-word}
h1{font-size:1.5em;margin:.2em 0 .3em}
table{border-collapse:collapse;margin:.5em 0 1.1em;font-size:.86em;max-width:100%}
th,td{border:1px solid #d0d7de;padding:.2em .5em;text-align:left;vertical-align:top}
th{background:#f6f8fa}
tr.ref td{background:#f4f4f4;color:#444;font-style:italic}
tr.ref-first td{border-top:3px double #8c959f}
td.grade{font-weight:600;white-space:nowrap}
td.g-supported{background:#dafbe1}td.g-consistent{background:#eef6e8}td.g-mixed{background:#fff4d1}
td.g-contradicted{background:#ffe0e0}td.g-not-measurable{background:#eeeeee}
table.verdicts{font-size:.9em;width:100%}table.verdicts td:first-child{min-width:16em}
code{background:#f6f8fa;padding:0 .25em;border-radius:3px;font-size:.92em}
img{max-width:100%;height:auto;border:1px solid #eee}
figure{margin:.8em 0}figcaption{font-size:.85em;color:#57606a}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.5em}
p.lead{margin:.2em 0 .5em;font-size:.92em;color:#3d444d}
"""


def _inline_html(text: str) -> str:
    escaped = html.escape(text, quote=False)
    for pattern, replacement in _INLINE:
        escaped = pattern.sub(replacement, escaped)
    return escaped


def _grade_class(text: str) -> str:
    """A cell that is a grade, or starts with one (e.g. "mixed (provisional) · IUT p 0.96")."""
    plain = text.replace("*", "")
    grade = next((g for g in sorted(GRADES, key=len, reverse=True)
                  if plain == g or plain.startswith((g + " ", g + " ·"))), None)
    if grade is None:
        return ""
    slug = grade.split(",")[0].replace(" ", "-")
    # a bare grade is set bold on one line; a grade with its figures wraps like text
    return f' class="grade g-{slug}"' if plain == grade else f' class="g-{slug}"'


def _table_html(block: Table) -> str:
    head = "".join(f"<th>{_inline_html(h)}</th>" for h in block.header)
    rows = []
    previous = ""
    for row, css in zip(block.rows, block.row_classes or ("",) * len(block.rows), strict=True):
        classes = css + (" ref-first" if css == "ref" and previous != "ref" else "")
        attr = f' class="{classes.strip()}"' if classes.strip() else ""
        cells = "".join(f"<td{_grade_class(c)}>{_inline_html(c)}</td>" for c in row)
        rows.append(f"<tr{attr}>{cells}</tr>")
        previous = css
    css_attr = f' class="{block.css}"' if block.css else ""
    return f"<table{css_attr}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render_html(blocks: Sequence[Block], images: dict[str, bytes]) -> str:
    """One self-contained page: the same blocks as the Markdown, images inline as base64."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           "<title>hashbench reproduction report</title>", f"<style>{_CSS.strip()}</style>", "</head>",
           "<body>"]
    used: Counter[str] = Counter()
    first_paragraph = True
    for block in blocks:
        if isinstance(block, Heading):
            level, ident = block.level, anchor(block.text)
            used[ident] += 1
            if used[ident] > 1:  # repeated headings get -1, -2, ... as on GitHub
                ident = f"{ident}-{used[ident] - 1}"
            out.append(f'<h{level} id="{ident}">{_inline_html(block.text)}</h{level}>')
        elif isinstance(block, Paragraph):
            css = ' class="lead"' if first_paragraph else ""
            first_paragraph = False
            out.append(f"<p{css}>{_inline_html(block.text)}</p>")
        elif isinstance(block, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Table):
            out.append(_table_html(block))
        elif isinstance(block, FigureRef):
            data = base64.b64encode(images.get(block.name, b"")).decode("ascii")
            caption = _inline_html(block.caption)
            out.append(f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{caption}</figcaption></figure>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"
