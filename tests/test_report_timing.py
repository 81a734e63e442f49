"""The report reads `bench perf cost` files: re-graded from their pairs, shown beside the cost
claim's counted-work grade and in numbers.json, never changing the grade."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench.report import build_report, render_markdown
from bench.report.timing import NOT_MEASURED, load_timing, timing_details, timing_numbers

SHC = [20.0, 21.0, 19.5, 20.5, 22.0, 20.0]
CRH = [10.0, 10.5, 10.0, 9.8, 11.0, 10.1]


def cost_file(folder: Path, name: str = "cost-box-2026-12-04.json", stale_grade: str = "") -> Path:
    pairs = [{"pair": i, "counted": True, "shc_seconds": a, "crh_seconds": b}
             for i, (a, b) in enumerate(zip(SHC, CRH, strict=True))]
    pairs.append({"pair": 6, "counted": False, "shc_seconds": 99.0, "crh_seconds": 1.0,
                  "why_not_counted": "shc started at load 1.70 > 0.5"})
    data = {"benchmark": "perf cost", "dataset": "fashion-mnist", "bits": 32, "epochs": 60,
            "host_cpu": "Test CPU", "threads": 1, "date": "2026-12-04T00:00:00Z", "pairs": pairs,
            "grade": {"verdict": stale_grade or "whatever was stored"}}
    path = folder / "perf" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_files_are_regraded_from_their_pairs(tmp_path: Path) -> None:
    """The stored grade is ignored: the uncounted pair (x99) must not enter the ratio."""
    cost_file(tmp_path, stale_grade="equivalent within 5 %")
    (tmp_path / "perf" / "cost-junk.json").write_text("{not json")
    (tmp_path / "perf" / "cost-other.json").write_text(json.dumps({"benchmark": "centers"}))
    files, problems = load_timing(tmp_path)
    assert [f["_file"] for f in files] == ["perf/cost-box-2026-12-04.json"]
    assert sorted(problems) == ["perf/cost-junk.json: unreadable (JSONDecodeError)",
                                "perf/cost-other.json: not a `bench perf cost` result"]
    details = timing_details(files, problems)
    (graded,) = details["files"]
    expected = math.exp(np.mean(np.log(np.array(SHC) / np.array(CRH))))
    assert graded["ratio_geometric_mean"] == pytest.approx(expected)
    assert graded["pairs_counted"] == 6 and graded["pairs_run"] == 7
    assert graded["verdict"] == "SHC costs more (ratio above 1.05)"
    assert str(tmp_path) not in json.dumps(details)  # names relative to the results folder
    numbers = timing_numbers(details)
    assert numbers["timing.ratio"] == f"{expected:.3f}"
    assert numbers["timing.pairs"] == "6"


def test_no_files_say_not_measured(tmp_path: Path) -> None:
    details = timing_details(*load_timing(tmp_path))
    assert details == {"measured": False, "summary": NOT_MEASURED, "files": []}
    assert timing_numbers(details)["timing.ratio"] == "not measured"


def test_the_cost_claim_shows_timing_without_changing_its_grade(tmp_path: Path, make_record, claims) -> None:
    records = [make_record(method, 32, seed, 0.8) for method in ("crh", "shc") for seed in range(3)]
    plain = build_report(records, claims=claims)
    timing = timing_details(*load_timing(cost_file(tmp_path).parents[1]))
    timed = build_report(records, claims=claims, timing=timing)
    cost_plain = next(v for v in plain.verdicts if "cost" in v.id)
    cost_timed = next(v for v in timed.verdicts if "cost" in v.id)
    assert cost_timed.label == cost_plain.label
    assert dict(cost_timed.details)["timing"]["measured"]
    assert not dict(cost_plain.details)["timing"]["measured"]
    markdown = render_markdown(timed.blocks)
    assert "*Isolated timing (secondary, not graded):* fashion-mnist 32 bits" in markdown
    assert "Isolated timing (secondary figure of the cost claim)" in markdown
    assert "perf/cost-box-2026-12-04.json" in markdown
    assert "Not measured" in render_markdown(plain.blocks)
