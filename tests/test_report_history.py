"""The v2 -> v3 grade table: each v3 grade beside the v2 grade it replaces, with the claim's
rule change named only where the grade moved, and the counts of what each version graded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_report_verdicts import runs

from bench.errors import UserError
from bench.report import build_report
from bench.report.history import HISTORY_FILE, SECTION, grade_changes, history_numbers, load_history

RESULTS = Path(__file__).resolve().parents[1] / "results"
FIVE_AHEAD = ([0.70, 0.71, 0.69, 0.72, 0.70], [0.60, 0.62, 0.61, 0.60, 0.61])


def history(grades: dict[str, tuple[str, int, int]]) -> dict:
    """A v2 grade file for crh-beats-baselines: card -> (grade, comparisons, tables)."""
    cards = {card: {"grade": g, "comparisons": n, "tables": t, "summary": ""}
             for card, (g, n, t) in grades.items()}
    return {"commit": "abc1234", "claims": {"crh-beats-baselines": {"overall": "mixed", "cards": cards}}}


def supported_records(make_record) -> list[dict]:
    """Five seeds, CRH clearly ahead of CSQ at 16 and 32 bits: v3 grades this 'supported'."""
    records = []
    for bits in (16, 32):
        records += runs(make_record, "crh", bits, FIVE_AHEAD[0])
        records += runs(make_record, "csq", bits, FIVE_AHEAD[1])
    return records


def test_a_changed_grade_names_the_rule_and_the_counts(make_record, claims) -> None:
    report = build_report(supported_records(make_record), claims=claims, published=[],
                          history=history({"fashion-mnist": ("mixed", 7, 3)}))
    (change,) = report.grade_changes
    assert (change.claim, change.card, change.v3, change.v2) == ("crh-beats-baselines", "fashion-mnist",
                                                                 "supported", "mixed")
    assert change.changed
    rule = next(c["v3_change"] for c in claims if c["id"] == "crh-beats-baselines")
    assert change.why.startswith(" ".join(rule.split()).rstrip("."))
    assert "v2 pooled 7 comparisons from 3 tables; v3 grades the 2 cells of fashion-mnist" in change.why
    numbers = history_numbers(report.grade_changes)
    assert numbers["claim.crh-beats-baselines.FM.grade_v2"] == "mixed"
    assert numbers["claim.crh-beats-baselines.FM.change"] == change.why
    markdown = report.markdown()
    assert f"## {SECTION}" in markdown and f"[{SECTION}]" in markdown  # section and its contents link


def test_the_same_grade_says_so_without_a_rule(make_record, claims) -> None:
    report = build_report(supported_records(make_record), claims=claims, published=[],
                          history=history({"fashion-mnist": ("supported", 2, 1)}))
    (change,) = report.grade_changes
    assert not change.changed and change.why.startswith("Same grade.")


def test_a_provisional_v3_grade_of_the_same_name_is_the_same_grade(make_record, claims) -> None:
    """Three seeds, every cell rejecting: v3 reads 'consistent, not significant (provisional)',
    which is what v2 called 'consistent' at fewer than five seeds."""
    records = []
    for bits in (16, 32):
        records += runs(make_record, "crh", bits, FIVE_AHEAD[0][:3])
        records += runs(make_record, "csq", bits, FIVE_AHEAD[1][:3])
    report = build_report(records, claims=claims, published=[],
                          history=history({"fashion-mnist": ("consistent, not significant", 2, 1)}))
    (change,) = report.grade_changes
    assert change.v3 == "consistent, not significant (provisional)" and not change.changed


def test_cards_neither_version_measured_are_left_out(make_record, claims) -> None:
    report = build_report(supported_records(make_record), claims=claims, published=[],
                          history=history({"fashion-mnist": ("mixed", 7, 3),
                                           "fashion-mnist-multi": ("not measurable", 0, 0),
                                           "fashion-mnist-pairs": ("mixed", 4, 1)}))
    cards = [c.card for c in report.grade_changes]
    assert cards == ["fashion-mnist", "fashion-mnist-pairs"]
    pairs = report.grade_changes[1]
    assert pairs.v3 == "not measurable" and "v3 grades no cell" in pairs.why


def test_without_a_history_the_report_is_unchanged(make_record, claims) -> None:
    records = supported_records(make_record)
    plain = build_report(records, claims=claims, published=[])
    assert plain.grade_changes == [] and SECTION not in plain.markdown()
    assert grade_changes(plain.verdicts, None, claims) == []


def test_load_history_refuses_a_malformed_file_and_skips_a_missing_one(tmp_path) -> None:
    assert load_history(tmp_path) is None
    (tmp_path / HISTORY_FILE).write_text(json.dumps({"claims": {"x": {"cards": {"fm": {"grade": "mixed"}}}}}))
    with pytest.raises(UserError, match="not a v2 grade file"):
        load_history(tmp_path)


def test_the_committed_v2_grades_cover_the_claims_and_each_claim_names_its_rule_change(claims) -> None:
    committed = load_history(RESULTS)
    assert committed is not None
    ids = {c["id"] for c in claims}
    assert set(committed["claims"]) == ids
    assert all(" ".join(str(c.get("v3_change", "")).split()).startswith("v3 ") for c in claims)
