"""Budget curves in the report: the flattening rule on hand-worked numbers (fabricated records
of the stored format, see conftest.build_record)."""

from __future__ import annotations

from bench.report import analyze, build_report
from bench.report.budget import budget_curves

CURVES = {  # method -> epochs -> test mAP (%) of seeds 0, 1, 2
    "crh": {15: (70, 71, 72), 30: (74, 75, 76), 60: (74.5, 75.5, 76.5)},   # +4 (sd 1) rising, then +0.5
    "csq": {15: (60, 61, 62), 30: (60.5, 61.5, 62.5), 60: (60, 61, 62)},   # +0.5, then -0.5: flat from 15
    "dpn": {15: (50, 51, 52), 30: (51.5, 52.5, 53.5), 60: (51.5, 52.5, 53.5)},  # +1.5 > sd 1, then 0
}


def records(make_record, curves):
    return [make_record(method, 32, seed, value / 100, epochs=epochs, protocol="tuned")
            for method, by_epochs in curves.items() for epochs, values in by_epochs.items()
            for seed, value in enumerate(values)]


def test_flattened_at_and_the_chosen_budget_on_hand_worked_numbers(make_record):
    (curve,) = budget_curves(analyze(records(make_record, CURVES)))
    assert curve.budgets == (15, 30, 60) and curve.bits == 32
    crh_first, crh_second = curve.steps["crh"]
    assert round(crh_first.gain, 9) == 4 and round(crh_first.spread, 9) == 1 and not crh_first.flattened
    assert round(crh_second.gain, 9) == 0.5 and crh_second.flattened
    assert curve.flattened_at("crh") == 30 and curve.flattened_at("csq") == 15
    assert curve.flattened_at("dpn") == 30  # a gain between one and two spreads still counts as rising
    assert curve.chosen == 30
    text = build_report(records(make_record, CURVES)).markdown()
    section = text.split("## Budget curves", 1)[1].split("\n## ", 1)[0]
    row = ("| CRH | 71.00 ± 1.00 (n=3) | 75.00 ± 1.00 (n=3) | 75.50 ± 1.00 (n=3) | +4.00 (1.00) ↑ "
           "| +0.50 (1.00) | 30 epochs |")
    assert row in section
    assert "Every method has flattened at 30 epochs" in section
    report = build_report(records(make_record, CURVES))
    (plan,) = [p for name, p in report.figures.items() if name.startswith("budget-")]
    crh = next(s for s in plan.data if s.key == "crh")
    assert [(e, round(m, 9)) for e, m, _, _ in crh.points] == [(15, 71), (30, 75), (60, 75.5)]


def test_a_curve_still_rising_at_the_longest_budget_chooses_nothing(make_record):
    rising = {**CURVES, "hashnet": {15: (50, 51, 52), 30: (55, 56, 57), 60: (60, 61, 62)}}
    (curve,) = budget_curves(analyze(records(make_record, rising)))
    assert curve.flattened_at("hashnet") is None and curve.chosen is None
    section = build_report(records(make_record, rising)).markdown().split("## Budget curves", 1)[1]
    assert "Still rising at the longest budget (60 epochs): HashNet" in section


def test_two_budgets_are_not_a_curve(make_record):
    two = {m: {e: v for e, v in by.items() if e != 60} for m, by in CURVES.items()}
    assert budget_curves(analyze(records(make_record, two))) == []
