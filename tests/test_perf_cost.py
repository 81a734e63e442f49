"""`bench perf cost`: ABAB order, load gating and the log-ratio tests, on a fake trainer (no
training; the real command is a benchmark, run by hand)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from bench.perf.cost import MARGIN, grade, measure, schedule


def test_schedule_is_abab() -> None:
    assert schedule(3) == [(0, "shc"), (0, "crh"), (1, "shc"), (1, "crh"), (2, "shc"), (2, "crh")]


def fake(times: dict[str, list[float]]):
    calls: list[str] = []

    def train(method: str) -> dict:
        calls.append(method)
        return {"seconds": times[method][len([c for c in calls if c == method]) - 1], "stages": {}}

    return train, calls


def test_a_busy_machine_drops_the_pair_but_keeps_it_in_the_file() -> None:
    train, calls = fake({"shc": [20.0, 21.0, 22.0], "crh": [10.0, 10.0, 11.0]})
    loads = iter([0.1, 0.1, 0.1, 0.1, 1.7, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    rows = measure(3, train, max_load=0.5, load=lambda: next(loads))
    assert calls == ["shc", "crh"] * 3
    assert [r["counted"] for r in rows] == [True, False, True]
    assert "shc started at load 1.70" in rows[1]["why_not_counted"]
    assert rows[1]["shc_seconds"] == 21.0


def test_grade_tests_the_log_ratios() -> None:
    """Six pairs with SHC about twice as slow: one-sided t of log-ratios against log 1.05 (by
    scipy here, literally) rejects; the geometric mean ratio is exp(mean log-ratio)."""
    shc = [20.0, 21.0, 19.5, 20.5, 22.0, 20.0]
    crh = [10.0, 10.5, 10.0, 9.8, 11.0, 10.1]
    pairs = [{"counted": True, "shc_seconds": a, "crh_seconds": b} for a, b in zip(shc, crh, strict=True)]
    result = grade(pairs)
    logs = np.log(np.array(shc) / np.array(crh))
    assert result["ratio_geometric_mean"] == pytest.approx(math.exp(logs.mean()))
    expected = stats.ttest_1samp(logs, math.log(MARGIN), alternative="greater").pvalue
    assert result["p_costs_more"] == pytest.approx(expected)
    assert result["verdict"] == "SHC costs more (ratio above 1.05)"
    low, high = result["ratio_ci90"]
    half = stats.t.ppf(0.95, 5) * logs.std(ddof=1) / math.sqrt(6)
    assert (low, high) == pytest.approx((math.exp(logs.mean() - half), math.exp(logs.mean() + half)))


def test_equal_times_are_equivalent_by_tost() -> None:
    shc = [10.0, 10.1, 9.9, 10.05, 9.95, 10.0]
    crh = [10.02, 10.05, 9.92, 10.0, 10.0, 9.98]
    pairs = [{"counted": True, "shc_seconds": a, "crh_seconds": b} for a, b in zip(shc, crh, strict=True)]
    result = grade(pairs)
    logs = np.log(np.array(shc) / np.array(crh))
    bound = math.log(MARGIN)
    tost = max(stats.ttest_1samp(logs, -bound, alternative="greater").pvalue,
               stats.ttest_1samp(logs, bound, alternative="less").pvalue)
    assert result["p_equivalent_tost"] == pytest.approx(tost)
    assert result["verdict"] == "equivalent within 5 %"


def test_too_few_counted_pairs_is_not_measurable() -> None:
    pairs = [{"counted": True, "shc_seconds": 2.0, "crh_seconds": 1.0},
             {"counted": False, "shc_seconds": 2.0, "crh_seconds": 1.0}]
    assert grade(pairs)["verdict"].startswith("not measurable")
