"""The report reads `bench run --attack` results: matched to their records by run id, shown per
main table and attack beside the clean mAP (mean ± sd over the attacked seeds, n), in a
figure and in numbers.json; a row without a result reads "not attacked"."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.evaluation.attack import AttackSpec
from bench.report import build_report, load_for_report, render_markdown, write_report
from bench.report.attacks import NOT_ATTACKED, attack_numbers, attack_views, load_attacks
from methods.cgat import base_settings
from methods.crh import CRH
from methods.csq import CSQ

SPEC = AttackSpec(target="center", steps=20)
ATTACKED = {("crh", 0): 0.41, ("crh", 1): 0.47, ("crh", 2): 0.38, ("csq", 0): 0.22, ("csq", 1): 0.30,
            ("cgat", 0): 0.55, ("cgat", 1): 0.61, ("cgat", 2): 0.58}


def attack_file(results: Path, record: dict[str, Any], adversarial: float, spec: AttackSpec = SPEC,
                **extra: Any) -> Path:
    spec_of = record["spec"]
    path = (results / "attacks" / spec_of["dataset"] / spec_of["method"]
            / f"{record['run_id']}.{spec.attack_id}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"attack": asdict(spec), "attack_id": spec.attack_id, "clean_mAP": record["metrics"]["mAP"],
            "adversarial_mAP": adversarial, "bits_flipped_mean": 3.0, "record_reproduced": True, **extra}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def results(tmp_path: Path, make_record, write_results) -> Path:
    """A harmonised Fashion-MNIST table (CRH, CSQ, DPN at 32 bits, seeds 0-2) and CgAT around
    CRH beside it; CRH and CgAT attacked on every seed, CSQ on two, DPN on none."""
    records = []
    for method in ("crh", "csq", "dpn"):
        for seed in range(3):
            records.append(make_record(method, 32, seed, 0.78 + 0.01 * seed, protocol="harmonised"))
    crh_settings = base_settings(CRH, {})
    for seed in range(3):
        records.append(make_record("cgat", 32, seed, 0.75 + 0.01 * seed, protocol="harmonised",
                                   settings={"base": "crh", "base_settings": crh_settings}))
    write_results(tmp_path, records)
    for record in records:
        key = (record["spec"]["method"], record["spec"]["seed"])
        if key in ATTACKED:
            attack_file(tmp_path, record, ATTACKED[key])
    return tmp_path


def report_of(results: Path):
    records, problems = load_for_report(results)
    attacks, attack_problems = load_attacks(results)
    return build_report(records, problems + attack_problems, attacks=attacks), attacks, attack_problems


def test_files_are_read_with_relative_names_and_bad_ones_become_problems(results: Path) -> None:
    folder = results / "attacks" / "fashion-mnist" / "csq"
    (folder / "junk.center-0000000000.json").write_text("{not json")
    (folder / "other.json").write_text(json.dumps({"attack_id": "center-x", "clean_mAP": 0.5}))
    attacks, problems = load_attacks(results)
    assert len(attacks) == len(ATTACKED)
    assert all(not a["_file"].startswith("/") and a["_file"].startswith("attacks/fashion-mnist/")
               for a in attacks)
    assert problems == ["attacks/fashion-mnist/csq/junk.center-0000000000.json: unreadable (JSONDecodeError)",
                        "attacks/fashion-mnist/csq/other.json: not an attack result (`bench run --attack`: "
                        "attack_id, clean_mAP, adversarial_mAP, named <run id>.<attack id>.json)"]
    crh = [a for a in attacks if a["_file"].startswith("attacks/fashion-mnist/crh/")]
    assert all(a["_run_id"].startswith("crh-32b-s") and "." not in a["_run_id"] for a in crh)
    assert load_attacks(results / "nowhere") == ([], [])


def test_the_view_pairs_clean_and_attacked_by_seed(results: Path) -> None:
    report, attacks, _ = report_of(results)
    (view,) = report.attack_views
    assert view.attack_id == SPEC.attack_id and view.bits == (32,)
    rows = {row.label: row for row in view.rows}
    assert set(rows) == {"CRH", "CSQ", "CgAT (base=crh)"}
    crh = rows["CRH"]
    expected = np.mean([ATTACKED["crh", s] for s in range(3)]) * 100
    assert crh.attacked_stat.mean == pytest.approx(expected)
    spread = np.std([ATTACKED["crh", s] * 100 for s in range(3)], ddof=1)
    assert crh.attacked_stat.std == pytest.approx(spread)
    assert crh.clean_stat.mean == pytest.approx(np.mean([78, 79, 80]))
    csq = rows["CSQ"]
    assert csq.seeds == (0, 1) and csq.clean_stat.mean == pytest.approx(78.5)  # the attacked seeds only
    assert csq.attacked_stat.mean == pytest.approx(26.0)
    assert [(label, bits) for _, label, bits in view.missing] == [("DPN", 32)]


def test_a_missing_attack_file_makes_the_cell_not_attacked(results: Path) -> None:
    crh_files = sorted((results / "attacks" / "fashion-mnist" / "crh").glob("*.json"))
    for path in crh_files:
        path.unlink()
    report, _, _ = report_of(results)
    (view,) = report.attack_views
    assert {label for _, label, _ in view.missing} == {"CRH", "DPN"}
    numbers = attack_numbers(report.analysis, report.attack_views)
    prefix = next(k for k in numbers if k.endswith(".crh.32")).rsplit(".crh.32", 1)[0]
    assert numbers[f"{prefix}.crh.32"] == numbers[f"{prefix}.crh.32.clean"] == NOT_ATTACKED
    markdown = render_markdown(report.blocks)
    assert "| CRH | 32 | – | not attacked | – | 0 |" in markdown


def test_section_figure_and_numbers(results: Path, tmp_path: Path) -> None:
    report, _, _ = report_of(results)
    markdown = render_markdown(report.blocks)
    assert "## Under attack" in markdown and "[Under attack](#under-attack)" in markdown
    assert f"Attack `{SPEC.attack_id}`: center: eps 0.031373, step 0.0039216, 20 steps" in markdown
    (name,) = [n for n in report.figures if n.startswith("attack-")]
    (panel,) = report.figures[name].data
    assert panel[0] == "32 bits" and [label for label, _, _ in panel[1]] == ["CRH", "CSQ", "CgAT (base=crh)"]
    from bench.report.figures import render_figure

    assert render_figure(report.figures[name]).startswith(b"\x89PNG")
    numbers = attack_numbers(report.analysis, report.attack_views)
    keys = {k.split(SPEC.attack_id + ".", 1)[1]: v for k, v in numbers.items()}
    attacked = [ATTACKED["crh", s] * 100 for s in range(3)]
    assert keys["crh.32"] == f"{np.mean(attacked):.2f} ± {np.std(attacked, ddof=1):.2f} (3)"
    assert keys["crh.32.clean"] == "79.00 ± 1.00 (3)"
    assert keys["csq.32"] == "26.00 ± 5.66 (2)"
    assert keys["cgat.base-crh.32"].endswith("(3)") and keys["dpn.32"] == NOT_ATTACKED
    assert all(k.startswith(f"attack.FM.{SPEC.attack_id}.") for k in numbers)  # the primary table: no setting
    out = tmp_path / "out"
    write_report(report, out, images={})
    written = json.loads((out / "numbers.json").read_text())
    assert {k: written[k] for k in numbers} == numbers
    assert str(results) not in (out / "report.md").read_text() + json.dumps(written)  # relative paths


def test_a_rerun_that_did_not_reproduce_its_record_is_named(results: Path, make_record) -> None:
    record = make_record("dpn", 32, 1, 0.79, protocol="harmonised")
    attack_file(results, record, 0.3, record_reproduced=False, clean_mAP=0.7)
    report, _, _ = report_of(results)
    (view,) = report.attack_views
    dpn = next(row for row in view.rows if row.label == "DPN")
    assert dpn.not_reproduced == (1,) and dpn.clean_stat.mean == pytest.approx(70.0)
    assert "DPN at 32 bits: the attack rerun did not reproduce the stored record (seeds {1})" in \
        render_markdown(report.blocks)


def test_without_attack_results_the_report_has_no_such_section(results: Path) -> None:
    records, problems = load_for_report(results)
    report = build_report(records, problems)
    assert report.attack_views == [] and "Under attack" not in render_markdown(report.blocks)


def test_attacks_on_runs_outside_the_main_tables_are_named(results: Path, make_record, write_results) -> None:
    old = make_record("csq", 32, 0, 0.7, protocol="harmonised", results_version=0)
    write_results(results, [old])
    attack_file(results, old, 0.1)
    records, problems = load_for_report(results)
    attacks, _ = load_attacks(results)
    report = build_report(records, problems, attacks=attacks)
    views, unmatched = attack_views(report.analysis, attacks)
    assert unmatched == [f"attacks/fashion-mnist/csq/{old['run_id']}.{SPEC.attack_id}.json"]
    assert "1 attack result(s) match no counted run" in render_markdown(report.blocks)
    assert len(views) == 1


def test_csq_base_settings_make_no_variant(make_record) -> None:
    """CgAT around its default base with the settings the run resolved is the method's main row."""
    from bench.report.groups import variant_of

    record = make_record("cgat", 32, 0, 0.7, protocol="harmonised",
                         settings={"base_settings": base_settings(CSQ, {})})
    assert variant_of(record) == ()


def test_rows_of_another_table_do_not_take_the_cards_headline(make_record, monkeypatch) -> None:
    """A card that names a tuned 60-epoch table as its primary keeps it: a harmonised 60-epoch
    table with one more complete cell (say CgAT, run there beside its bases) stays 'also
    measured'; a card that names no table keeps the most-complete rule."""
    import bench.report.analysis as module
    from bench.report.analysis import analyze

    monkeypatch.setitem(module._DECLARED, "fashion-mnist", ("tuned", 60, False))  # as main-table

    def table(protocol: str, methods: tuple[str, ...], dataset: str = "fashion-mnist") -> list[dict]:
        return [make_record(m, 32, s, 0.8, protocol=protocol, epochs=60, dataset=dataset)
                for m in methods for s in range(2)]

    records = table("tuned", ("crh", "csq")) + table("harmonised", ("crh", "csq", "dpn"))
    analysis = analyze(records)
    assert max(sum(c.complete for c in t.cells.values()) for t in analysis.main.values()) == 3
    (scope,) = [s for s in analysis.main if s.protocol == "tuned"]
    assert analysis.primary["fashion-mnist"] == scope
    synthetic = table("tuned", ("crh", "csq"), "synthetic") + table("harmonised", ("crh", "csq", "dpn"),
                                                                     "synthetic")
    analysis = analyze(synthetic)
    assert analysis.primary["synthetic"].protocol == "harmonised"


def test_a_wrapper_is_named_by_its_base_even_at_the_default() -> None:
    """CgAT's base is part of its name (label_keys): its default row reads 'CgAT (base=csq)',
    not a bare 'CgAT' beside 'CgAT (base=crh)'; a method without label keys keeps its name."""
    import json

    from bench.report.attacks import variant_label

    assert variant_label("cgat", "harmonised", ()) == "CgAT (base=csq)"
    assert variant_label("cgat", "harmonised", (("base", json.dumps("crh")),)) == "CgAT (base=crh)"
    assert variant_label("csq", "harmonised", ()) == "CSQ"
