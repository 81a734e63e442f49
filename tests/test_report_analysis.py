"""What counts and how runs are grouped: older, failed, corrupt and incomplete records kept out
and shown, seed sets, tables per setting and split, longer schedules, published numbers, CRH
ablations recognised from configurations, and purity of the report (fabricated records of
the exact stored format, see conftest.build_record)."""

from __future__ import annotations

import json
import math
import random

import pytest

from bench import RESULTS_VERSION
from bench.report import (
    NOT_MEASURABLE,
    analyze,
    build_report,
    evaluate,
    expected_seed_set,
    load_claims,
    load_for_report,
    load_published,
    render_figures,
    schedule_comparisons,
)

SEEDS = (0, 1, 2)


def cell(make_record, method, bits, mean, *, seeds=SEEDS, spread=0.002, **options):
    """Records of one method x bits x settings over seeds, mAP = mean + small seed offsets."""
    return [make_record(method, bits, seed, mean + spread * (seed - 1), **options) for seed in seeds]


def render_markdown(report):
    return report.markdown()


def main_cell(analysis, method, bits):
    (table,) = analysis.main.values()
    return table.cell(method, bits)


def test_older_failed_corrupt_and_incomplete_are_kept_out_and_shown(make_record, write_results, tmp_path):
    records = cell(make_record, "crh", 16, 0.70) + cell(make_record, "csq", 16, 0.60, seeds=(0, 1))
    records.append(make_record("csq", 16, 2, status="failed"))
    older = make_record("dpn", 16, 0, 0.99, results_version=RESULTS_VERSION - 1)
    records.append(older)
    write_results(tmp_path, records, corrupt={"fashion-mnist/crh/half-written.json": '{"run_id": '})
    loaded, problems = load_for_report(tmp_path)
    assert problems == [p for p in problems if str(tmp_path) not in p]  # relative paths only
    report = build_report(loaded, problems)
    analysis = report.analysis
    assert [r["run_id"] for r in analysis.older] == [older["run_id"]]
    assert [r["spec"]["seed"] for r in analysis.failed] == [2]
    assert main_cell(analysis, "dpn", 16) is None  # only from older code
    csq = main_cell(analysis, "csq", 16)
    assert not csq.complete and csq.missing == (2,)
    assert math.isclose(main_cell(analysis, "crh", 16).stat(lambda r: r["metrics"]["mAP"]).mean, 0.70)
    md = render_markdown(report)
    assert "| CSQ | incomplete (2/3 seeds; failed: {2}) |" in md
    assert older["run_id"] in md and "TrainingDiverged" in md
    assert "runs/fashion-mnist/crh/half-written.json" in md
    assert "99.00" not in md.split("## Data quality")[0]  # the older record's number stays out
    claims = {v.id: v for v in report.verdicts}
    assert claims["crh-beats-baselines"].verdict == NOT_MEASURABLE


def test_data_quality_says_where_the_runs_ran(make_record):
    records = cell(make_record, "crh", 16, 0.7) + cell(make_record, "csq", 16, 0.6)
    for record in records[:2]:
        record["environment"].update(cpu="AMD EPYC 7B13", cpu_capability="AVX2")
    markdown = render_markdown(build_report(records, claims=load_claims(), published=load_published()))
    assert "| cpu | AMD EPYC 7B13 | AVX2 | 2.14.1 | 2 | 2 |" in markdown
    assert "| cpu | not recorded | not recorded | 2.14.1 | 2 | 4 |" in markdown


def test_extra_seeds_are_left_out_of_the_means(make_record):
    records = (cell(make_record, "crh", 16, 0.70) + cell(make_record, "csq", 16, 0.60)
               + [make_record("csq", 16, 7, 0.10)])
    analysis = analyze(records)
    csq = main_cell(analysis, "csq", 16)
    assert csq.complete and csq.extra == (7,) and csq.used == SEEDS
    assert math.isclose(csq.stat(lambda r: r["metrics"]["mAP"]).mean, 0.60)
    assert "**Extra seeds**" in render_markdown(build_report(records))


def test_expected_seed_set_is_what_most_cells_have():
    assert expected_seed_set([(0, 1, 2), (0, 1, 2), (0, 1)]) == (0, 1, 2)
    assert expected_seed_set([(0, 1), (0, 1), (0, 1, 2)]) == (0, 1)
    assert expected_seed_set([(0, 1), (0, 1, 2)]) == (0, 1)  # two cells: compare on common seeds
    assert expected_seed_set([(4,)]) == (4,)
    assert expected_seed_set([]) == ()


def test_a_failed_seed_makes_its_cell_incomplete_even_in_a_small_table(make_record):
    records = cell(make_record, "crh", 16, 0.70) + cell(make_record, "csq", 16, 0.6, seeds=(0, 1))
    silent = analyze(records)  # seed 2 of CSQ never ran: the two cells are compared on {0, 1}
    assert main_cell(silent, "csq", 16).complete and main_cell(silent, "crh", 16).extra == (2,)
    failed = analyze(records + [make_record("csq", 16, 2, status="failed")])
    assert not main_cell(failed, "csq", 16).complete
    assert main_cell(failed, "csq", 16).group.failed_seeds == (2,)
    all_failed = build_report(cell(make_record, "crh", 16, 0.7)
                              + [make_record("dpn", 16, s, status="failed") for s in SEEDS])
    assert "| DPN | failed (seeds {0, 1, 2}) |" in render_markdown(all_failed)


def test_different_settings_and_splits_are_separate_tables(make_record):
    records = (cell(make_record, "crh", 16, 0.7) + cell(make_record, "csq", 16, 0.6)
               + cell(make_record, "csq", 16, 0.5, epochs=3)
               + cell(make_record, "csq", 16, 0.4, split_digest="f" * 64))
    analysis = analyze(records)
    assert len(analysis.main) == 3
    labels = sorted(analysis.scope_label(s) for s in analysis.main)
    assert any("epochs=3" in label for label in labels)
    assert all("split " in label for label in labels)  # two digests for one dataset: say which


def test_the_headline_table_prefers_complete_then_tuned_then_more_seeds(make_record):
    def table(protocol, seeds, methods=("crh", "csq")):
        return [r for m in methods for r in cell(make_record, m, 16, 0.6, seeds=seeds, protocol=protocol)]

    # Equally complete: tuned heads the card over harmonised, with as many seeds or fewer,
    # whichever order the records come in.
    for tuned_seeds in (SEEDS, (0, 1)):
        for records in (table("harmonised", SEEDS) + table("tuned", tuned_seeds),
                        table("tuned", tuned_seeds) + table("harmonised", SEEDS)):
            assert analyze(records).primary["fashion-mnist"].protocol == "tuned"
    # Same protocol and completeness, different settings: more seeds per cell lead.
    analysis = analyze(table("harmonised", SEEDS) + [
        r for m in ("crh", "csq")
        for r in cell(make_record, m, 16, 0.6, seeds=range(5), epochs=3, protocol="harmonised")])
    assert dict(analysis.primary["fashion-mnist"].settings).get("epochs") == "3"
    # A tuned table with fewer complete cells does not take the headline.
    analysis = analyze(table("harmonised", SEEDS, methods=("crh", "csq", "dpn")) + table("tuned", range(5)))
    assert analysis.primary["fashion-mnist"].protocol == "harmonised"


def tuned_generation(make_record, lr: float, searched_epochs: int | None, seeds=SEEDS) -> list[dict]:
    """Tuned CRH and CSQ runs at 60 epochs whose tuned lr came from one search; `searched_epochs`
    None is a record from before tuned runs said where their values were searched."""
    records = []
    for method in ("crh", "csq"):
        for record in cell(make_record, method, 16, 0.6, seeds=seeds, protocol="tuned", epochs=60):
            provenance = {"values": {"lr": lr}}
            if searched_epochs is not None:
                provenance["searched_at"] = {"bits": 32, "epochs": searched_epochs}
            record["config"].update(lr=lr, tuned_setting=provenance)
            records.append(record)
    return records


def test_two_searches_of_one_method_are_two_tables_not_one_conflicting_cell(make_record):
    """The v2 search's values (no `searched_at`) and a search at the table's budget give the same
    seeds other configurations: each is its own table, nothing is dropped as a conflict."""
    analysis = analyze(tuned_generation(make_record, 6e-4, None)
                       + tuned_generation(make_record, 2e-3, 60, seeds=(0, 1)))
    assert analysis.conflicts == [] and len(analysis.main) == 2
    searched = [dict(scope.settings).get("search_epochs") for scope in sorted(analysis.main)]
    assert sorted(searched, key=str) == ["60", None]
    # the same search's runs stay one table
    assert len(analyze(tuned_generation(make_record, 2e-3, 60)).main) == 1


def test_the_declared_table_admits_a_search_at_its_own_budget_and_its_split_rule(monkeypatch):
    from bench.report import analysis as module
    from bench.report.groups import Scope

    def scope(**settings) -> Scope:
        return Scope("fashion-mnist", "tuned", tuple(sorted((k, json.dumps(v)) for k, v in settings.items())),
                     "per-seed" if "split" in settings else "5eed5eed5eed")

    monkeypatch.setitem(module._DECLARED, "fashion-mnist", ("tuned", 60, False))
    assert module._is_declared(scope(epochs=60))
    assert module._is_declared(scope(epochs=60, search_epochs=60))
    assert not module._is_declared(scope(epochs=60, search_epochs=30))  # searched at another budget
    assert not module._is_declared(scope(epochs=60, split="per-seed"))
    monkeypatch.setitem(module._DECLARED, "fashion-mnist", ("tuned", 60, True))
    assert module._is_declared(scope(epochs=60, split="per-seed", search_epochs=60))
    assert not module._is_declared(scope(epochs=60))  # the card's table is per-seed now


def test_an_override_equal_to_the_cards_cadence_does_not_split_a_table(make_record):
    """Budget-curve runs set eval_every=5 explicitly; main-table runs get it from the card
    (fashion-mnist: 5). Same runs, same table; another cadence is another table."""
    same = cell(make_record, "crh", 16, 0.7, overrides={"eval_every": 5}, epochs=60)
    plain = [make_record("crh", 16, seed, 0.7, epochs=60) for seed in (3, 4)]
    for record in plain:
        record["config"]["eval_every"] = 5
    analysis = analyze(same + plain)
    assert len(analysis.main) == 1 and main_cell(analysis, "crh", 16).group.seeds == (0, 1, 2, 3, 4)
    other = cell(make_record, "crh", 16, 0.7, overrides={"eval_every": 2}, epochs=60)
    assert len(analyze(same + other).main) == 2


def test_longer_schedule_is_compared_on_common_seeds_only(make_record):
    short = cell(make_record, "crh", 32, 0.70) + cell(make_record, "csq", 32, 0.60)
    long = (cell(make_record, "crh", 32, 0.75, seeds=(0,), epochs=20, overrides={"eval_every": 4})
            + cell(make_record, "csq", 32, 0.58, seeds=(0, 5), epochs=20, overrides={"eval_every": 4}))
    other_lr = cell(make_record, "crh", 32, 0.90, seeds=(0,), epochs=20, overrides={"lr": 1e-3})
    records = short + long + other_lr
    analysis = analyze(records)
    comparisons = schedule_comparisons(analysis)
    assert [(c.method, c.bits, c.seeds) for c in comparisons] == [("crh", 32, (0,)), ("csq", 32, (0,))]
    getter = lambda r: r["metrics"]["mAP"] * 100  # noqa: E731
    crh, csq = comparisons
    # seed 0 of the short CRH cell is 0.70 - 0.002 (the cell helper's seed offset); seed 0 only
    assert crh.mean(crh.short, getter) == pytest.approx(69.8)
    assert crh.gain(getter) == pytest.approx(75 - 0.2 - 69.8)
    assert (crh.epochs(crh.short), crh.epochs(crh.long)) == (10, 20)
    assert csq.gain(getter) == pytest.approx((0.58 - 0.002 - 0.598) * 100)
    markdown = render_markdown(build_report(records, claims=load_claims(), published=load_published()))
    assert "**Longer schedules.**" in markdown
    assert "| CRH | 32 | {0} | 10 → 20 | 69.80 | 74.80 | +5.00 |" in markdown



def test_published_numbers_only_where_the_dataset_matches(make_record):
    rows = load_published()
    crh = [r for r in rows if r["method"] == "crh"]
    assert crh and all(r["value"] is None for r in crh)  # never invented
    assert all(r["source"] and r["backbone"] for r in rows)
    assert {(r["dataset"], r["bits"], r["value"]) for r in rows if r["method"] == "csq"} >= {
        ("imagenet-100", 16, 0.851), ("ms-coco", 64, 0.861), ("nus-wide-21", 32, 0.825)}
    fashion = render_markdown(build_report(cell(make_record, "csq", 16, 0.6)))
    assert "No published numbers for fashion-mnist" in fashion
    coco = render_markdown(build_report(cell(make_record, "csq", 16, 0.75, dataset="ms-coco")
                                        + cell(make_record, "crh", 16, 0.78, dataset="ms-coco")))
    section = coco.split("**Published numbers for this dataset**")[1].split("##")[0]
    assert "| CSQ | 16 | mAP@5000 | 79.60 | 75.00 ± 0.20 (n=3) | -4.60 | ResNet-50 |" in section
    assert "| CRH | 16 | mAP@5000 | not available | 78.00 ± 0.20 (n=3) | – |" in section


def test_ablations_are_recognised_from_configs_and_effective_values(make_record):
    records = cell(make_record, "crh", 32, 0.70)  # default rule: H = 4 at 32 bits, M = 20
    records += cell(make_record, "crh", 32, 0.66, settings={"heads": 1})
    records += cell(make_record, "crh", 32, 0.69, settings={"heads": 8})
    records += cell(make_record, "crh", 32, 0.67, settings={"reassign": "never"})
    records += cell(make_record, "crh", 32, 0.68, settings={"reassign_every": 2, "reassign_warmup": 0})
    records += cell(make_record, "crh", 32, 0.69, settings={"solver": "greedy"})
    records += cell(make_record, "crh", 32, 0.65, settings={"codebook_ratio": 4.0})
    records += cell(make_record, "crh", 32, 0.60, settings={"heads": 2, "margin": 0.3})
    ablations = next(iter(analyze(records).crh.values()))
    labels = {dim: [p.label for p in ablations.reference_panel(dim, 32).points]
              for dim in ("heads", "reassignment", "solver", "codebook_ratio")}
    assert labels["heads"] == ["H=1", "H=4*", "H=8"]
    assert labels["reassignment"] == ["never", "every 1, warm-up 1*", "every 2"]
    assert labels["solver"] == ["greedy", "hungarian*"]
    assert labels["codebook_ratio"] == ["2 (M=20)*", "4 (M=40)"]
    assert [g.variant for g in ablations.unplaced] == [(("heads", "2"), ("margin", "0.3"))]
    md = render_markdown(build_report(records))
    assert "| 32 | defaults | H=1 | 66.00 ± 0.20 (n=3) | {0, 1, 2} |" in md
    assert "CRH runs in no series above" in md


def test_ablation_series_at_fixed_non_default_settings(make_record):
    """The codebook-ratio experiment fixes heads=4: its runs form a series of their own, and a
    repeat of a default setting under another name (heads=4 = the rule's H at 32 bits) is
    recognised by the effective value the run recorded."""
    records = cell(make_record, "crh", 32, 0.70, protocol="harmonised")
    for ratio, value in ((1.0, 0.66), (2.0, 0.69), (4.0, 0.64)):
        records += cell(make_record, "crh", 32, value, protocol="harmonised",
                        settings={"heads": 4, "codebook_ratio": ratio})
    records += cell(make_record, "crh", 32, 0.62, protocol="harmonised", settings={"heads": 1})
    ablations = next(iter(analyze(records).crh.values()))
    ratio = [p for p in ablations.varied("codebook_ratio")]
    assert [(p.context, [q.label for q in p.points]) for p in ratio] == [
        ("heads=4", ["1 (M=10)", "2 (M=20)*", "4 (M=40)"])]
    heads = ablations.reference_panel("heads", 32)
    assert [p.label for p in heads.points] == ["H=1", "H=4", "H=4*"]
    assert not ablations.unplaced
    md = render_markdown(build_report(records))
    assert "| 32 | heads=4 | 4 (M=40) | 64.00 ± 0.20 (n=3) | {0, 1, 2} |" in md


def test_ablation_reference_without_a_default_run(make_record):
    """No default CRH run: the defaults from the method registry are the reference."""
    records = (cell(make_record, "crh", 32, 0.66, settings={"heads": 1})
               + cell(make_record, "crh", 32, 0.70, settings={"heads": 2}))
    ablations = next(iter(analyze(records).crh.values()))
    assert [p.label for p in ablations.reference_panel("heads", 32).points] == ["H=1", "H=2"]
    assert analyze(records).main == {}



def test_few_records_say_what_is_missing(make_record):
    report = build_report(cell(make_record, "csq", 16, 0.6))
    md = render_markdown(report)
    assert "No CRH runs: no ablations." in md
    assert "SHC's stages against CRH's single stage: needs complete SHC and CRH cells" in md
    assert {v.verdict for v in report.verdicts} == {NOT_MEASURABLE}
    only_failed = build_report([make_record("crh", 16, 0, status="failed")])
    assert "No complete runs with default method settings" in render_markdown(only_failed)
    assert not only_failed.figures


def test_sparse_records_do_not_break_the_report(make_record):
    """Records missing optional parts (history, timings, centers, curves) still report."""
    records = cell(make_record, "crh", 16, 0.7) + cell(make_record, "csq", 16, 0.6)
    for record in records:
        for key in ("history", "timings", "centers", "class_similarity", "center_semantics", "method",
                    "selection", "task"):
            record.pop(key, None)
        for key in ("precision_at_radius", "recall_at_radius", "precision_at_n", "pr_at_n"):
            record["metrics"].pop(key)
    records.append({**make_record("dpn", 16, 0, 0.5), "spec": {"method": "dpn"}})
    report = build_report(records)
    md = render_markdown(report)
    assert "spec lacks dataset, method or bits" in md
    # 69.8, 70.0, 70.2: mean 70, sd 0.2, t(0.975, 2) = 4.3027 -> half width 0.497
    assert "| CRH | **70.00 [69.50, 70.50]** |" in md
    assert all(data.startswith(b"\x89PNG") for data in render_figures(report).values())


def test_markdown_is_a_pure_function_of_the_records(make_record):
    records = (cell(make_record, "crh", 16, 0.70) + cell(make_record, "csq", 16, 0.6)
               + cell(make_record, "crh", 16, 0.66, settings={"reassign": "never"})
               + [make_record("dpn", 16, 0, status="failed")])
    first = build_report(records)
    shuffled = list(records)
    random.Random(3).shuffle(shuffled)
    second = build_report(json.loads(json.dumps(shuffled)))
    assert render_markdown(first) == render_markdown(second)
    dumped = [[json.dumps(v.to_dict()) for v in r.verdicts] for r in (first, second)]
    assert dumped[0] == dumped[1]
    assert sorted(first.figures) == sorted(second.figures)


def test_every_run_id_is_listed(make_record):
    records = (cell(make_record, "crh", 16, 0.70) + cell(make_record, "csq", 32, 0.6)
               + cell(make_record, "crh", 16, 0.66, settings={"heads": 1}))
    md = render_markdown(build_report(records))
    appendix = md.split("## Appendix: run ids per cell")[1]
    assert all(f"`{r['run_id']}`" in appendix for r in records)


def test_claims_file_lists_the_papers_claims():
    claims = load_claims()
    ids = [c["id"] for c in claims]
    assert len(ids) == len(set(ids))
    assert {c["check"] for c in claims} == {"beats_baselines", "reassignment_gain", "multi_head",
                                             "center_semantics", "two_stage_cost"}
    gain = next(c for c in claims if c["check"] == "reassignment_gain")
    assert gain["params"]["paper_range"] == [1.76, 3.08]
    assert all(c.get("how") and c.get("source") and c.get("claim") and c["params"].get("paper")
               for c in claims)
    assert all("ResNet-34" in c["paper_regime"] for c in claims)


def test_unknown_check_is_not_measurable(make_record):
    unknown = [{"id": "x", "check": "no_such_check", "claim": "?"}]
    (result,) = evaluate(cell(make_record, "crh", 16, 0.7), unknown)
    assert result.verdict == NOT_MEASURABLE and "unknown check" in result.summary


def test_main_table_header_names_seeds_and_n(make_record):
    records = cell(make_record, "crh", 16, 0.70) + cell(make_record, "csq", 16, 0.60, spread=0.005)
    records += [make_record("crh", 32, 0, 0.7), make_record("csq", 32, 0, 0.6)]
    md = render_markdown(build_report(records))
    assert "expected seeds {0, 1, 2} at 16 bits; {0} at 32 bits per cell" in md
    assert "| method | 16 bits (n=3) | 32 bits (n=1) |" in md
    assert "| CSQ | 60.00 [58.76, 61.24] | 60.00 (one seed; no per-query data) |" in md



def test_a_main_table_names_its_devices_and_a_column_that_mixes_them(make_record):
    """GPU runs are further samples, not copies: each bit length's column says where it ran once
    any GPU run counts, and a column mixing devices is named with the methods on each."""
    records = [*cell(make_record, "crh", 16, 0.7), *cell(make_record, "csq", 16, 0.6),
               *cell(make_record, "crh", 32, 0.75), *cell(make_record, "csq", 32, 0.65)]
    cpu_only = render_markdown(build_report(records, claims=load_claims(), published=load_published()))
    assert "Devices of the counted runs" not in cpu_only
    for record in records:
        if record["spec"]["bits"] == 32 or record["spec"]["method"] == "csq":
            record["environment"].update(device="cuda", gpu="NVIDIA H200")
    markdown = render_markdown(build_report(records, claims=load_claims(), published=load_published()))
    assert ("Devices of the counted runs: 16 bits: **mixed**, CPU for CRH; GPU (NVIDIA H200) for CSQ · "
            "32 bits: GPU (NVIDIA H200).") in markdown


def test_a_column_that_mixes_cpus_is_named_too(make_record):
    """The machine here changes between sittings: a column whose runs trained on two CPUs (or one
    CPU under two instruction sets) is named with the methods on each; one CPU throughout, or
    different CPUs in different columns, is not."""
    records = [*cell(make_record, "crh", 16, 0.7), *cell(make_record, "csq", 16, 0.6),
               *cell(make_record, "crh", 32, 0.75), *cell(make_record, "csq", 32, 0.65)]

    def markdown() -> str:
        return render_markdown(build_report(records, claims=load_claims(), published=load_published()))

    for record in records:
        record["environment"].update(cpu="AMD EPYC", cpu_capability="AVX2" if record["spec"]["bits"] == 16
                                     else "AVX512")
    assert "Devices of the counted runs" not in markdown()
    for record in records:
        if record["spec"]["bits"] == 16 and record["spec"]["method"] == "crh":
            record["environment"].update(cpu="Intel Xeon", cpu_capability="AVX512")
    text = markdown()
    assert ("Devices of the counted runs: 16 bits: **mixed**, CPU (AMD EPYC, AVX2) for CSQ; "
            "CPU (Intel Xeon, AVX512) for CRH · 32 bits: CPU (AMD EPYC, AVX512). "
            "Runs on different CPUs") in text
    assert "GPU runs)" not in text.split("Devices of the counted runs", 1)[1].split("\n", 1)[0]


def test_the_cpus_of_the_counted_runs_are_counted(make_record):
    from bench.report import analyze
    from bench.report.numbers import environment_numbers

    records = [*cell(make_record, "crh", 16, 0.7), *cell(make_record, "csq", 16, 0.6, seeds=(0, 1, 2))]
    for record in records:
        amd = record["spec"]["method"] == "csq"
        record["environment"].update(cpu="AMD EPYC" if amd else "Intel Xeon",
                                     cpu_capability="AVX2" if amd else "AVX512")
    records[0]["environment"].pop("cpu")
    assert environment_numbers(analyze(records))["env.cpu.models"] == (
        "AMD EPYC (AVX2): 3 runs; CPU not recorded (AVX512): 1 run; Intel Xeon (AVX512): 2 runs")


def test_gpu_samples_kept_apart_are_set_beside_their_cpu_twins(make_record):
    """A GPU record kept outside the tables shares its run id with a CPU run; the device check
    pairs them by seed: mean GPU − CPU and its t interval, by hand: differences 0.1, 0.2, 0.3
    points -> mean 0.20, SD 0.10, t(0.975, 2) = 4.303 -> 0.20 ± 0.248."""
    import copy

    records = cell(make_record, "crh", 64, 0.80) + cell(make_record, "mds", 64, 0.81)
    samples = []
    for shift, record in zip((0.001, 0.002, 0.003), records[3:], strict=True):
        twin = copy.deepcopy(record)
        twin["environment"].update(device="cuda", gpu="NVIDIA H200")
        twin["metrics"]["mAP"] += shift
        samples.append(twin)
    orphan = make_record("csq", 64, 0, 0.7)
    orphan["environment"].update(device="cuda", gpu="NVIDIA H200")
    without = render_markdown(build_report(records, claims=load_claims(), published=load_published()))
    assert "Device check" not in without
    report = build_report(records, claims=load_claims(), published=load_published(),
                          gpu_samples=[*samples, orphan])
    markdown = render_markdown(report)
    assert "## Device check" in markdown and "4 GPU record(s)" in markdown
    section = markdown.split("## Device check")[1].split("\n## ")[0]
    (row,) = [line for line in section.splitlines() if line.startswith("| fashion-mnist") and "MDS" in line]
    assert "| MDS | 64 | NVIDIA H200 | 3 | +0.20 [-0.05, +0.45] |" in row
    assert row.endswith("| 0.10 | 0.20 |")  # SD of differences; seed SD of the CPU cell (0.2 points)
    (check,) = report.device_checks
    assert check.method == "mds" and sorted(check.gpu) == [0, 1, 2]


def test_a_later_search_of_the_same_budget_takes_the_cell_once_its_values_are_current(make_record):
    """Runs at two sets of values from searches at one budget (a search re-run after a rule
    change): while the new values have fewer seeds the cell keeps the complete runs; once they
    have as many, it keeps the runs at the values the tuned file applies now and lists the others."""
    from bench.report.tuning import current_tuned

    entry = {"values": {"lr": 2e-3}, "bits": 16, "epochs": 60}
    tuned = {"fashion-mnist": {"dataset": "fashion-mnist", "methods": {"crh": entry, "csq": entry}}}
    old = tuned_generation(make_record, 6e-4, 60)
    for seeds, shown in (((0, 1), 6e-4), (SEEDS, 2e-3)):
        new = tuned_generation(make_record, 2e-3, 60, seeds=seeds)
        analysis = analyze(old + new, current=current_tuned(tuned))
        shown_lr = {(g.method, g.first["config"]["lr"]) for g in analysis.groups}
        assert shown_lr == {("crh", shown), ("csq", shown)}
        assert len(analysis.conflicts) == 2
    records = tuned_generation(make_record, 2e-3, 60) + old  # no tuned file: the order decides nothing
    assert len({g.first["config"]["lr"] for g in analyze(records).groups}) == 1


def test_a_whole_length_of_gpu_twins_is_one_family_with_holm_and_the_methods_order(make_record):
    """Two methods with GPU twins at one length: Holm over their paired p, and Kendall's tau
    between the devices' method means. By hand (df 2, two-sided p = 1 - t / sqrt(t^2 + 2)):
    MDS shifts 0.1/0.2/0.3 points, t = 0.2 / (0.1 / sqrt 3) = 3.464, p = 0.0742; CRH shifts
    1.5/1.6/1.7, t = 27.71, p = 0.0013, Holm 2 x 0.0013 = 0.0026 < .05, MDS's Holm p stays
    0.074: one method of two significant. CPU means CRH 80 < MDS 81, GPU 81.6 > 81.2: the
    order flips, tau = -1."""
    import copy

    from bench.report.devices import device_numbers

    records = cell(make_record, "crh", 64, 0.80) + cell(make_record, "mds", 64, 0.81)
    shifts = {"crh": (0.015, 0.016, 0.017), "mds": (0.001, 0.002, 0.003)}
    samples = []
    for record in records:
        twin = copy.deepcopy(record)
        twin["environment"].update(device="cuda", gpu="NVIDIA H200")
        twin["metrics"]["mAP"] += shifts[record["spec"]["method"]][record["spec"]["seed"]]
        samples.append(twin)
    report = build_report(records, claims=load_claims(), published=load_published(), gpu_samples=samples)
    section = render_markdown(report).split("## Device check")[1].split("\n## ")[0]
    (mds_row,) = [line for line in section.splitlines() if "| MDS | 64 |" in line]
    (crh_row,) = [line for line in section.splitlines() if "| CRH | 64 |" in line]
    assert "| +0.20 [-0.05, +0.45] | 0.074 | 0.074 |" in mds_row
    assert "| +1.60 [+1.35, +1.85] | 0.001 | 0.003 |" in crh_row
    assert ("at 64 bits: 2 methods, mean differences from +0.20 to +1.60 points, 1 of them significant "
            "after Holm; Kendall's tau between the devices' method means -1.00") in section
    numbers = device_numbers(report.device_checks)
    keys = ("methods", "min", "max", "significant", "tau")
    assert {key: numbers[f"device.FM.64.{key}"] for key in keys} == {
        "methods": "2", "min": "+0.20", "max": "+1.60", "significant": "1", "tau": "-1.00"}
