"""The report keeps the unsupervised regime apart (issue 31): its runs form their own table with
chance and a supervised reference row, never a card's primary table, never in a claim's family;
a report without such runs is unchanged."""

from __future__ import annotations

from bench.report import build_report, claims_frame, evaluate
from bench.report.document import Heading, Table

SEEDS = (0, 1, 2)
REGIME = {"supervised": False, "training_labels": "none", "trains": True,
          "selection": "last epoch", "evaluation": "the card's labels"}


def unsupervised(make_record, method: str, bits: int, mean: float) -> list[dict]:
    records = []
    for seed in SEEDS:
        record = make_record(method, bits, seed, mean + 0.002 * seed, protocol="harmonised", epochs=60)
        record["regime"] = dict(REGIME, trains=method == "cimon")
        record["selection"]["rule"] = "last epoch"
        if method == "cimon":
            record["method_api"] = {"reconstruction": {"features": "pixels for VGG"}}
            record["config"]["similarity_features"] = "pixels"  # as resolved from scratch
        records.append(record)
    return records


def supervised(make_record, method: str, bits: int, mean: float) -> list[dict]:
    return [make_record(method, bits, seed, mean + 0.002 * seed) for seed in SEEDS]


def table_after(report, heading: str) -> Table:
    blocks = report.blocks
    start = next(i for i, b in enumerate(blocks) if isinstance(b, Heading) and heading in b.text)
    return next(b for b in blocks[start:] if isinstance(b, Table))


def test_unsupervised_runs_stand_apart(make_record, claims) -> None:
    plain = supervised(make_record, "crh", 16, 0.80) + supervised(make_record, "csq", 16, 0.75)
    apart = []
    for bits in (16, 32, 64):  # more complete cells than the supervised table: still not primary
        apart += unsupervised(make_record, "lsh", bits, 0.30) + unsupervised(make_record, "itq", bits, 0.40)
        apart += unsupervised(make_record, "cimon", bits, 0.45)
    report = build_report(plain + apart, claims=claims)
    analysis = report.analysis
    assert len(analysis.main) == 1 and len(analysis.unsupervised) == 1
    (scope,) = analysis.unsupervised
    assert scope.unsupervised and analysis.primary["fashion-mnist"] != scope
    assert "regime=unsupervised" in analysis.scope_label(scope)
    frame = claims_frame(analysis)
    assert set(frame.method) == {"crh", "csq"}  # no claim sees them
    graded = [v.to_dict() for v in evaluate(plain + apart, claims)]
    assert graded == [v.to_dict() for v in evaluate(plain, claims)]

    table = table_after(report, "Unsupervised regime")
    rows = {row[0]: row for row in table.rows}
    assert list(rows)[:3] == ["CIMON (reconstruction)", "ITQ", "LSH"]
    assert rows["CIMON (reconstruction)"][1].startswith("**45.20")  # best at 16 bits, bold
    reference = next(r for r in table.rows if r[0].startswith("*supervised reference"))
    assert reference[1].startswith("CRH: 80.20") and reference[2] == "not measured"
    assert table.rows[-1][0] == "*chance (random codes)*" and table.row_classes[-2:] == ("ref", "ref")
    markdown = report.markdown()
    assert "[Unsupervised regime](#" in markdown and "Selection: last epoch." in markdown
    # The supervised main table holds none of them.
    main = table_after(report, "Main comparison")
    assert not any(row[0].startswith(("LSH", "ITQ", "CIMON")) for row in main.rows)


def test_a_report_without_unsupervised_runs_does_not_mention_them(make_record) -> None:
    report = build_report(supervised(make_record, "crh", 16, 0.8))
    assert not report.analysis.unsupervised and "Unsupervised" not in report.markdown()


def with_precision(records: list[dict], value: float, base_rate: float) -> list[dict]:
    """Give records the card's precision@100 and a precision-by-radius curve whose last point (the
    whole database) is the relevant share `base_rate`."""
    for record in records:
        seed = record["spec"]["seed"]
        record["metrics"]["precision_at_k"] = {"k": 100, "value": value + 0.01 * seed}
        record["metrics"]["precision_at_radius"] = [0.9] * record["spec"]["bits"] + [base_rate]
    return records


def test_a_card_with_precision_at_k_gets_it_beside_map(make_record) -> None:
    """A document card declares P@100 as its second headline metric: the unsupervised table gets a
    P@100 table (mean over seeds, chance = the relevant share of the database), the supervised
    table a P@100 block, and numbers.json a `.p_at_k` key per cell."""
    from bench.report.numbers import table_numbers

    apart = with_precision(unsupervised(make_record, "lsh", 16, 0.30), 0.40, 0.05)
    apart += with_precision(unsupervised(make_record, "itq", 16, 0.35), 0.50, 0.05)
    plain = with_precision(supervised(make_record, "csq", 16, 0.80), 0.70, 0.05)
    report = build_report(plain + apart)
    markdown = report.markdown()
    assert "**P@100** (the card's second headline metric)" in markdown and "**P@100**" in markdown
    blocks = report.blocks
    start = next(i for i, b in enumerate(blocks)
                 if isinstance(b, Heading) and "Unsupervised regime" in b.text)
    tables = [b for b in blocks[start:] if isinstance(b, Table)]
    rows = {row[0]: row for row in tables[1].rows}  # the second table is P@100
    # ITQ: values 0.50, 0.51, 0.52 -> 51.00 percent; LSH 41.00; chance 5.00; CSQ the reference.
    assert rows["ITQ"][1].startswith("**51.00 [") and rows["LSH"][1].startswith("41.00 [")
    assert rows["*chance (random codes)*"][1] == "5.00"
    reference = next(r for r in tables[1].rows if r[0].startswith("*supervised reference"))
    assert reference[1].startswith("CSQ: 71.00 [")
    numbers = table_numbers(report.analysis)
    assert numbers["table.FM.unsupervised.itq.16.p_at_k"] == "51.00 ± 1.00 (3)"
    assert numbers["table.FM.unsupervised.lsh.16"].startswith("30.20 ± 0.20 (3)")
    assert numbers["table.FM.csq.16.p_at_k"] == "71.00 ± 1.00 (3)"
    assert numbers["table.FM.unsupervised.chance.16.p_at_k"] == "5.00"
    assert numbers["table.FM.unsupervised.reference.16"].startswith("CSQ: 80.20 [")
    assert numbers["table.FM.unsupervised.reference.16.p_at_k"].startswith("CSQ: 71.00 [")
