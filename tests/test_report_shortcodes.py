"""The report's short-codes section (issue 29, RSLH's claim measured without RSLH): lengths below
16 bits get a section of their own, with the loss from 16 bits paired by seed; a report without
them has no such section."""

from __future__ import annotations

import pytest

from bench.report import build_report
from bench.report.document import Bullets, FigureRef, Heading, Table

SEEDS = (0, 1, 2)


def cells(make_record, method: str, values: dict[int, tuple[float, ...]]) -> list[dict]:
    """Records of one method: bits -> its mAP at seeds 0, 1, 2."""
    return [make_record(method, bits, seed, value)
            for bits, per_seed in values.items() for seed, value in zip(SEEDS, per_seed, strict=True)]


def section_blocks(report) -> list:
    blocks = report.blocks
    start = next(i for i, b in enumerate(blocks) if isinstance(b, Heading) and b.text == "Short codes")
    end = next(i for i, b in enumerate(blocks) if i > start and isinstance(b, Heading) and b.level <= 2)
    return blocks[start:end]


def test_short_lengths_get_their_section_with_the_paired_loss_from_16_bits(make_record) -> None:
    # CRH loses 10, 12 and 14 points at the three seeds: mean -12, sample sd 2, t(2) half-width
    # 4.303 * 2 / sqrt(3) = 4.97 (the unpaired cells' own spread would be far wider).
    records = cells(make_record, "crh", {8: (0.60, 0.64, 0.68), 12: (0.70, 0.71, 0.72),
                                          16: (0.70, 0.76, 0.82), 32: (0.80, 0.80, 0.80)})
    records += cells(make_record, "csq", {8: (0.50, 0.50, 0.50), 16: (0.70, 0.70, 0.70)})
    records += cells(make_record, "dpn", {16: (0.75, 0.75, 0.75)})  # no short cell: named, no row
    report = build_report(records)
    blocks = section_blocks(report)
    table = next(b for b in blocks if isinstance(b, Table))
    assert table.header[0] == "method" and table.header[1].startswith("8 bits (n=3)")
    assert table.header[-1] == "8 − 16 bits (paired)"
    rows = {row[0]: row for row in table.rows}
    half = 4.3027 * 2 / 3 ** 0.5  # t(0.975, 2) * sd / sqrt(n)
    assert rows["CRH"][-1] == f"-12.00 [{-12 - half:+.2f}, {-12 + half:+.2f}]"
    assert rows["CSQ"][-1] == "-20.00 [-20.00, -20.00]"
    assert rows["CSQ"][2] == "not run"  # CSQ has no 12-bit cell
    assert rows["CRH"][1].startswith("**64.00")  # best at 8 bits
    assert table.rows[-1][0] == "*chance (random codes)*" and "DPN" not in rows
    notes = next(b for b in blocks if isinstance(b, Bullets))
    assert "not run below 16 bits: DPN." in notes.items[-1]
    figure = next(b for b in blocks if isinstance(b, FigureRef))
    plan = report.figures[figure.name]
    (_, bits, series) = plan.data[0]
    assert bits == (8, 12, 16, 32)
    crh = next(s for s in series if s.key == "crh")
    assert [p[0] for p in crh.points] == [8, 12, 16, 32] and crh.points[0][1] == pytest.approx(64.0)
    assert "[Short codes](#short-codes)" in report.markdown()


def test_an_incomplete_short_cell_neither_opens_the_section_nor_gets_a_loss(make_record) -> None:
    records = cells(make_record, "crh", {16: (0.70, 0.76, 0.82)})
    records += [make_record("crh", 8, 0, 0.60), make_record("csq", 8, 1, 0.50)]  # each 1 of 2 seeds
    report = build_report(records)
    assert "Short codes" not in report.markdown()
    records += [make_record("csq", 8, seed, 0.5) for seed in (0, 2)]  # CSQ and DPN: 3 seeds
    records += cells(make_record, "dpn", {8: (0.5, 0.5, 0.5)})
    rows = {row[0]: row for row in next(b for b in section_blocks(build_report(records))
                                         if isinstance(b, Table)).rows}
    assert rows["CRH"][1].startswith("incomplete (1/3 seeds") and rows["CRH"][-1] == "–"
