"""Rankings: a card's primary tuned table beside its other tuned tables at the same budget,
each rank with a seed-bootstrap interval, ranked on the methods both tables have."""

from __future__ import annotations

from bench.report import build_report
from bench.report.analysis import analyze
from bench.report.ranking import Ranked, column_ranks, ranked_methods

SEEDS = (0, 1, 2, 3, 4)
# mAP in points per seed. The primary table (split digest "a") has 5 seeds per cell, so it is
# the card's primary; the other (split "b") has 3. CRH leads clearly here and trails there.
PRIMARY = {"crh": (82, 83, 82, 84, 83), "mds": (80, 81, 80, 82, 81), "csq": (70, 71, 70, 72, 71),
           "classify-then-hash": (90, 90, 90, 90, 90)}
OTHER = {"crh": (78, 79, 78), "mds": (81, 82, 81), "csq": (71, 70, 72), "dpn": (60, 61, 60)}


def records(make_record) -> list[dict]:
    out = []
    for method, values in PRIMARY.items():
        out += [make_record(method, 32, s, v / 100, protocol="tuned", epochs=60, split_digest="a" * 64)
                for s, v in zip(SEEDS, values, strict=True)]
    for method, values in OTHER.items():
        out += [make_record(method, 32, s, v / 100, protocol="tuned", epochs=60, split_digest="b" * 64)
                for s, v in zip(SEEDS, values, strict=False)]
    return out


def test_ranks_are_by_mean_on_the_shared_methods_with_intervals(make_record) -> None:
    analysis = analyze(records(make_record))
    primary = analysis.main[analysis.primary["fashion-mnist"]]
    other = next(t for s, t in analysis.main.items() if s != primary.scope)
    # the floor is a reference row, never ranked; DPN is in one table only
    assert ranked_methods(primary, 32) == {"crh", "mds", "csq"}
    shared = ranked_methods(primary, 32) & ranked_methods(other, 32)
    here = {r.method: r for r in column_ranks(primary, 32, shared)}
    there = {r.method: r for r in column_ranks(other, 32, shared)}
    assert [here[m].rank for m in ("crh", "mds", "csq")] == [1, 2, 3]
    assert [there[m].rank for m in ("mds", "crh", "csq")] == [1, 2, 3]
    assert here["crh"].mean == 82.8  # hand-worked: (82 + 83 + 82 + 84 + 83) / 5
    # every seed orders the primary's methods the same way: every resample does too
    assert all((r.low, r.high) == (r.rank, r.rank) for r in here.values())


def test_an_interval_covers_the_ranks_resamples_give() -> None:
    # two methods with crossing seeds: either can come first in a resample
    from bench.report.ranking import _ranks

    assert list(_ranks([[1.0, 3.0], [2.0, 2.0]])[:, 0]) == [2, 1]
    assert Ranked("a", 1.0, 1, 1, 2).text() == "1 [1–2]"
    assert Ranked("a", 1.0, 1, None, None).text() == "1"
    assert Ranked("a", 1.0, 1, 1, 1).apart_from(Ranked("b", 1.0, 2, 2, 3))
    assert not Ranked("a", 1.0, 1, 1, 2).apart_from(Ranked("b", 1.0, 2, 2, 3))


def test_near_ties_share_the_better_rank() -> None:
    """Means a rounding error apart (another CPU's summation order) tie instead of ordering."""
    from bench.report.ranking import _ranks

    ranks = _ranks([80.0, 80.0 + 1e-12, 79.0])
    assert list(ranks) == [1, 1, 3]


def test_the_report_shows_the_ranking_and_the_moves(make_record, claims) -> None:
    markdown = build_report(records(make_record), claims=claims, published=[]).markdown()
    assert "#### Ranking beside fashion-mnist · tuned protocol · epochs=60" in markdown
    lines = markdown.splitlines()
    section = lines[next(i for i, line in enumerate(lines) if line.startswith("#### Ranking beside")):]
    assert next(row for row in section if row.startswith("| CRH |")).startswith("| CRH | 1 [1] | 2 [")
    assert "CRH at 32 bits: 2 there, 1 here (intervals apart)" in markdown
    assert "DPN" not in next(line for line in section if line.startswith("Moves:"))


def test_no_ranking_without_a_second_tuned_table_at_the_budget(make_record, claims) -> None:
    only_primary = [r for r in records(make_record) if r["split"]["digest"] == "a" * 64]
    assert "Ranking beside" not in build_report(only_primary, claims=claims, published=[]).markdown()
    other_budget = [r for r in records(make_record) if r["split"]["digest"] == "a" * 64]
    other_budget += [make_record("crh", 32, s, 0.7, protocol="tuned", epochs=30, split_digest="b" * 64)
                     for s in SEEDS[:3]]
    other_budget += [make_record("mds", 32, s, 0.8, protocol="tuned", epochs=30, split_digest="b" * 64)
                     for s in SEEDS[:3]]
    assert "Ranking beside" not in build_report(other_budget, claims=claims, published=[]).markdown()


def test_numbers_carry_each_rank_here_and_there(make_record, claims) -> None:
    from bench.report.numbers import report_numbers

    report = build_report(records(make_record), claims=claims, published=[])
    numbers = report_numbers(report.analysis, report.verdicts)
    ranks = {k: v for k, v in numbers.items() if k.startswith("rank.FM.")}
    # one other table (its setting slug names it), three shared methods, here and there each
    assert len(ranks) == 6
    (crh_here,) = [k for k in ranks if k.endswith(".crh.32.here")]
    assert ranks[crh_here] == "1 [1]" and ranks[crh_here.replace(".here", ".there")].startswith("2 [")
    assert not any(".dpn." in k or ".floor." in k for k in ranks)
