"""'Centers reflect class similarity': judged against a similarity the judged run did not
produce (another seed's features, or a declared ground truth), with a permutation test."""

from __future__ import annotations

import numpy as np
import pytest

from bench.report import CONSISTENT, CONTRADICTED, NOT_MEASURABLE, SUPPORTED, analyze, claims_frame, evaluate
from bench.report.stats import center_similarity

CLASSES = 10


def shared_centers(bits: int = 32) -> np.ndarray:
    return np.where(np.random.default_rng(7).random((CLASSES, bits)) < 0.5, 1, -1)


def noise(seed: int) -> np.ndarray:
    m = np.random.default_rng(100 + seed).random((CLASSES, CLASSES))
    m = (m + m.T) / 2
    np.fill_diagonal(m, 1.0)
    return m


def crh_runs(make_record, seeds, similarity_of, method="crh", settings=None):
    """CRH records with the same centers; run s stores class_similarity = similarity_of(s)."""
    centers = shared_centers()
    records = []
    for seed in seeds:
        record = make_record(method, 32, seed, 0.7, settings=settings)
        record["centers"] = centers.tolist()
        record["class_similarity"]["matrix"] = similarity_of(seed, centers).round(6).tolist()
        records.append(record)
    return records


def aligned(seed, centers):
    return center_similarity(centers) + 0.01 * noise(seed)


def reversed_(seed, centers):
    return -center_similarity(centers) + 0.01 * noise(seed)


def semantics(records, claims=None):
    return {v.id: v for v in evaluate(records, claims)}["centers-semantic"]


@pytest.mark.parametrize("seeds, similarity, grade", [
    (range(5), aligned, SUPPORTED),
    (range(3), aligned, CONSISTENT),
    (range(5), reversed_, CONTRADICTED),
    (range(1), aligned, NOT_MEASURABLE),  # one run, no ground truth: nothing independent
])
def test_centers_claim_grades(make_record, seeds, similarity, grade):
    result = semantics(crh_runs(make_record, seeds, similarity))
    assert result.verdict == grade, result.summary
    if grade != NOT_MEASURABLE:
        (comparison,) = result.comparisons
        assert comparison.unit == "Spearman ρ" and "permutation" in comparison.interval
        assert abs(comparison.a) > 0.9 and abs(comparison.b) < 0.1  # observed vs the null mean
    else:
        assert any("no independent class similarity" in note for note in result.notes)


def test_a_run_is_never_judged_against_its_own_similarity(make_record):
    """Seed 0 stores a similarity that matches the centers exactly, the others store noise:
    seed 0 is judged against seed 1's noise, and seed 4 (cyclically) against seed 0's."""
    from bench.report.semantics import semantics_of_cell

    records = crh_runs(make_record, range(5), lambda s, c: aligned(s, c) if s == 0 else noise(s))
    frame = claims_frame(analyze(records))
    cell = semantics_of_cell(frame, frame, "CRH")
    assert cell.seeds == (0, 1, 2, 3, 4)
    assert cell.sources == ("seed 0 ← seed 1", "seed 1 ← seed 2", "seed 2 ← seed 3", "seed 3 ← seed 4",
                            "seed 4 ← seed 0")
    assert abs(cell.result.per_run[0]) < 0.5 and cell.result.per_run[4] > 0.95


def test_ground_truth_in_the_record_is_used_and_named(make_record):
    records = crh_runs(make_record, range(5), lambda s, c: noise(s))
    for record in records:
        record["task"]["ground_truth_similarity"] = {"matrix": center_similarity(shared_centers()).tolist(),
                                                     "measure": "pairs sharing a component"}
    result = semantics(records)
    assert result.verdict == SUPPORTED
    assert any("ground truth stored in the record (pairs sharing a component)" in n for n in result.notes)


def test_ground_truth_declared_by_the_card_is_used(make_record, monkeypatch):
    import bench.report.semantics as semantics_module

    truth = center_similarity(shared_centers())
    monkeypatch.setattr(semantics_module, "card_info",
                        lambda dataset: {"ground_truth": truth, "ground_truth_measure": "by construction"})
    result = semantics(crh_runs(make_record, range(1), lambda s, c: noise(s)))  # one run suffices now
    assert any("declared by the card (by construction)" in n for n in result.notes)
    assert result.comparisons[0].a > 0.9 and not result.comparisons[0].counted  # one run: listed only


def test_contrasts_are_listed_not_counted(make_record):
    records = crh_runs(make_record, range(5), aligned)
    records += crh_runs(make_record, range(5), aligned, method="csq")  # equidistant Hadamard in reality
    for record in records[5:]:
        from scipy.linalg import hadamard

        record["centers"] = hadamard(32)[:CLASSES].tolist()
    result = semantics(records)
    assert len(result.comparisons) == 1
    assert any("contrast (not counted), CSQ ρ = undefined" in n for n in result.notes)


def test_centers_section_tests_every_center_method_and_never(make_record):
    from bench.report import build_report

    records = crh_runs(make_record, range(3), aligned)
    records += crh_runs(make_record, range(3), aligned, settings={"reassign": "never"})
    records += crh_runs(make_record, range(3), reversed_, method="shc")
    markdown = build_report(records).markdown()
    section = markdown.split("## Hash centers")[1].split("\n## ")[0]
    assert "| 32 | CRH | 1.000" in section or "| 32 | CRH | 0.99" in section
    assert "| 32 | CRH, reassign=never |" in section
    assert "| 32 | SHC | -" in section  # judged against SHC's other seeds: reversed
    frame = claims_frame(analyze(records))
    assert set(frame.method) == {"crh", "shc"}


@pytest.mark.parametrize("pretrained, variant", [(False, ()), (True, (("similarity_features", '"pixels"'),))])
def test_a_rule_valued_default_is_compared_as_resolved(pretrained: bool, variant: tuple) -> None:
    """HCLM's default `auto` means pixels from scratch and backbone features when pretrained:
    a from-scratch run on pixels is the main row, a pretrained run on pixels is a variant."""
    from bench.report.groups import method_defaults, variant_of

    config = {**method_defaults("hclm", "harmonised"), "similarity_features": "pixels"}
    record = {"spec": {"method": "hclm", "protocol": "harmonised", "pretrained": pretrained},
              "config": config}
    assert variant_of(record) == variant
