"""The report as data: blocks rendered to Markdown and to HTML from the same list, and the
figures to draw."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """`row_classes` marks rows for the HTML (e.g. "ref": a reference row set apart)."""

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    row_classes: tuple[str, ...] = ()
    css: str = ""


@dataclass(frozen=True)
class FigureRef:
    name: str
    caption: str


Block = Heading | Paragraph | Bullets | Table | FigureRef


@dataclass
class FigurePlan:
    """A figure to draw: `draw(fig)` fills a matplotlib Figure of `size` inches."""

    name: str
    size: tuple[float, float]
    draw: Callable[[Any], None]
    data: Any = None  # what is drawn, for inspection (tests)


def anchor(text: str) -> str:
    """GitHub-style heading anchor."""
    return re.sub(r"[^\w\- ]", "", text.lower()).strip().replace(" ", "-")


@dataclass
class Doc:
    """Collects blocks and figure plans while the sections are written."""

    blocks: list[Block] = field(default_factory=list)
    figures: dict[str, FigurePlan] = field(default_factory=dict)

    def h(self, level: int, text: str) -> None:
        self.blocks.append(Heading(level, text))

    def p(self, text: str) -> None:
        self.blocks.append(Paragraph(text))

    def bullets(self, items: Iterable[str]) -> None:
        items = tuple(items)
        if items:
            self.blocks.append(Bullets(items))

    def table(self, header: Sequence[Any], rows: Iterable[Sequence[Any]], row_classes: Sequence[str] = (),
              css: str = "") -> None:
        rows = [tuple(str(c) for c in row) for row in rows]
        if rows:
            classes = tuple(row_classes) + ("",) * (len(rows) - len(row_classes))
            self.blocks.append(Table(tuple(str(h) for h in header), tuple(rows), classes, css))

    def figure(self, plan: FigurePlan, caption: str) -> None:
        self.figures[plan.name] = plan
        self.blocks.append(FigureRef(plan.name, caption))
