"""Variant rows: a baseline with one of its own settings changed is shown under its table with
its paired difference from the row it varies, keyed in numbers.json, and never compared."""

from __future__ import annotations

from bench.report import build_report
from bench.report.numbers import report_numbers

SEEDS = (0, 1, 2)
DEFAULT = {16: (0.58, 0.60, 0.57), 32: (0.77, 0.78, 0.76)}
ALPHA = {16: (0.75, 0.77, 0.74), 32: (0.76, 0.79, 0.75)}


def table_records(make_record) -> list[dict]:
    records = []
    for bits in (16, 32):
        for seed in SEEDS:
            records.append(make_record("csq", bits, seed, 0.8, protocol="harmonised"))
            records.append(make_record("hashnet", bits, seed, DEFAULT[bits][seed], protocol="harmonised"))
            records.append(make_record("hashnet", bits, seed, ALPHA[bits][seed], protocol="harmonised",
                                       settings={"alpha": "10/K"}))
    return records


def test_a_variant_row_is_shown_with_its_paired_difference_and_keys(make_record, claims) -> None:
    report = build_report(table_records(make_record), claims=claims, published=[])
    markdown = report.markdown()
    assert "*Variant rows*" in markdown
    line = next(row for row in markdown.splitlines() if row.startswith("| HashNet | alpha=10/K | 16 |"))
    # hand-worked: mean of (0.75, 0.77, 0.74) = 75.33 %; paired differences 17, 17, 17 points
    assert "75.33" in line and "+17.00" in line
    numbers = report_numbers(report.analysis, report.verdicts)
    key = "table.FM.hashnet.alpha-10-k"
    assert numbers[f"{key}.16.mean"] == "75.33" and numbers[f"{key}.16.diff"] == "+17.00"
    assert numbers[f"{key}.32.diff"] == "-0.33"  # (-1, +1, -1) / 3 points
    # the table's HashNet row is the default configuration alone
    assert numbers["table.FM.hashnet.16.mean"] == "58.33"
    # never a comparison: no verdict compares the variant
    assert not any("alpha" in c.where or "10/K" in c.what for v in report.verdicts for c in v.comparisons)


def test_without_variants_there_is_no_section(make_record, claims) -> None:
    records = [r for r in table_records(make_record) if "alpha" not in r["spec"]["overrides"]]
    assert "*Variant rows*" not in build_report(records, claims=claims, published=[]).markdown()
