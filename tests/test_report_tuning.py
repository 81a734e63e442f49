"""The report's tuning section: default and chosen trials are found by their values and run id,
scores come from those records, and the section shows them (fabricated minimal records)."""

from __future__ import annotations

from bench.report import build_report
from bench.report.tuning import transfer_numbers, transfer_rows, transfer_verdict, tuning_rows


def trial(run_id: str, lr: float, lambda_q: float, val: float, test: float, seed: int = 0,
          epochs: int = 30) -> dict:
    return {"run_id": run_id, "status": "complete",
            "spec": {"dataset": "fashion-mnist", "method": "csq", "bits": 32, "seed": seed,
                     "protocol": "harmonised", "overrides": {"lr": lr, "lambda_q": lambda_q}},
            "config": {"lr": lr, "lambda_q": lambda_q, "epochs": epochs},
            "selection": {"best_val_mAP": val}, "metrics": {"mAP": test}}


SETTING = {"fashion-mnist": {"dataset": "fashion-mnist", "methods": {"csq": {
    "values": {"lr": 0.002, "lambda_q": 0.01}, "best_run_id": "best", "trials": 3, "bits": 32,
    "seed": 0, "epochs": 30, "search_space": {"lr": ["log", 1e-4, 3e-3], "lambda_q": ["log", 1e-5, 1e-1]}}}}}


def test_rows_take_the_default_trial_by_its_values_and_the_chosen_one_by_run_id():
    trials = [trial("other", 0.0005, 0.05, 0.70, 0.71),
              trial("default-other-seed", 1e-3, 1e-4, 0.10, 0.10, seed=1),  # not the study's seed
              # the same default values searched at another budget: another study's trial 0
              trial("default-60-epochs", 1e-3, 1e-4, 0.20, 0.20, epochs=60),
              trial("default", 1e-3, 1e-4, 0.75, 0.74),  # CSQ's harmonised default: lr 1e-3, lambda_q 1e-4
              trial("best", 0.002, 0.01, 0.80, 0.78)]
    (row,) = tuning_rows(trials, SETTING)
    assert (row["val_default"], row["val_tuned"]) == (0.75, 0.80)
    assert (row["test_default"], row["test_tuned"]) == (0.74, 0.78)
    assert row["found"] and row["trials"] == 3


def test_section_shows_gains_and_says_when_scores_are_missing():
    trials = [trial("default", 1e-3, 1e-4, 0.75, 0.74), trial("best", 0.002, 0.01, 0.80, 0.78)]
    text = build_report([], trials=trials, tuned=SETTING).markdown()
    section = text.split("## Tuning", 1)[1].split("\n## ", 1)[0]
    row = ("| CSQ | 2: lambda_q, lr | lambda_q=0.01, lr=0.002 | 75.00 | 80.00 | +5.00 | 74.00 | 78.00 "
           "| +4.00 |")
    assert row in section
    text = build_report([], trials=trials[:1], tuned=SETTING).markdown()
    assert "No trial record for the chosen run of csq" in text
    assert "No tuned setting" in build_report([]).markdown()


def check(means: list[list[float]], gap: float, spread: float, holds: bool, best: int) -> dict:
    """A transfer verdict as bench.tuning.transfer writes it (trials 7, 2, 9: chosen first)."""
    return {"within_spread": holds, "gap": gap, "spread": spread, "best": best, "seeds": [0, 1],
            "configurations": [{"trial": t, "val_mAP": m, "mean": sum(m) / 2}
                               for t, m in zip((7, 2, 9), means, strict=True)]}


def transfer_setting(with_own_64: bool) -> dict:
    searched = {**SETTING["fashion-mnist"]["methods"]["csq"], "epochs": 60, "transfer": {
        16: check([[0.70, 0.72], [0.70, 0.70], [0.69, 0.69]], 0.0, 0.01, True, 0),
        64: check([[0.80, 0.80], [0.82, 0.84], [0.79, 0.79]], 0.03, 0.012, False, 1)}}
    entries = [searched] + ([{**searched, "bits": 64, "transfer": {}}] if with_own_64 else [])
    return {"fashion-mnist": {"dataset": "fashion-mnist", "methods": {"csq": entries}}}


def test_transfer_rows_read_the_chosen_and_best_means_and_say_where_a_search_is_owed():
    rows = transfer_rows(transfer_setting(with_own_64=False))
    assert [(r["target"], r["holds"]) for r in rows] == [(16, True), (64, False)]
    at_64 = rows[1]
    # chosen = first configuration's mean, best = the configuration the verdict names (index 1)
    assert (at_64["chosen"], at_64["best"]) == (0.80, 0.83)
    assert (at_64["chosen_trial"], at_64["best_trial"]) == (7, 2)
    assert transfer_verdict(at_64) == "does not hold: own search at 64 bits pending"
    owned = transfer_rows(transfer_setting(with_own_64=True))[1]
    assert transfer_verdict(owned) == "does not hold: own search at 64 bits done"


def test_transfer_numbers_and_section_print_points():
    setting = transfer_setting(with_own_64=False)
    numbers = transfer_numbers(setting)
    key = "transfer.FM.32b-60e.csq.64"
    assert (numbers[f"{key}.chosen"], numbers[f"{key}.best"]) == ("80.00", "83.00")
    assert (numbers[f"{key}.gap"], numbers[f"{key}.spread"]) == ("3.00", "1.20")
    table = numbers["transfer.FM.32b-60e.table"].splitlines()
    assert len(table) == 4
    assert table[3].startswith("| CSQ | 32 bits, 60 epochs | 64 bits | 80.00 (trial 7) | 83.00 (trial 2)")
    text = build_report([], tuned=setting).markdown()
    section = text.split("### Transfer checks", 1)[1].split("\n## ", 1)[0]
    row_16 = "| CSQ | 32 bits, 60 epochs | 16 bits | 71.00 (trial 7) | 71.00 (trial 7) | 0.00 | 1.00 | holds"
    assert row_16 in section
    assert "no more than the pooled seed standard deviation" in section  # the rule is stated


def test_each_cards_transfer_table_is_headed_by_its_card():
    setting = transfer_setting(with_own_64=False)
    multi = {**setting["fashion-mnist"], "dataset": "fashion-mnist-multi"}
    text = build_report([], tuned={**setting, "fashion-mnist-multi": multi}).markdown()
    section = text.split("### Transfer checks", 1)[1].split("\n## ", 1)[0]
    # each card's heading sits right above its own table (both tables hold the same rows)
    parts = section.split("#### ")
    assert [part.split("\n", 1)[0] for part in parts[1:]] == ["fashion-mnist", "fashion-mnist-multi"]
    assert all("| CSQ | 32 bits, 60 epochs | 16 bits" in part for part in parts[1:])
    # results/README.md quotes every card's checks at once, each table under its card's line
    both = transfer_numbers({**setting, "fashion-mnist-multi": multi})["transfer.tables"].split("\n\n")
    assert [both[0], both[2]] == ["fashion-mnist, searched at 32 bits and 60 epochs:",
                                  "fashion-mnist-multi, searched at 32 bits and 60 epochs:"]
    assert both[1].startswith("| method |") and both[3].startswith("| method |")


def test_no_transfer_check_no_section():
    assert "Transfer checks" not in build_report([], tuned=SETTING).markdown()
    assert transfer_numbers(SETTING) == {}


def test_a_widened_round_is_named_above_its_table():
    trials = [trial("default", 1e-3, 1e-4, 0.75, 0.74), trial("best", 0.002, 0.01, 0.80, 0.78)]
    widened = {**SETTING["fashion-mnist"], "widened": {"32b-30e": {
        "ranges": {"lr": ["log", 1e-4, 0.03]}, "trials": 3, "after": "csq lr 0.0029 at the high edge"}}}
    report = build_report([], trials=trials, tuned={"fashion-mnist": widened})
    section = report.markdown().split("## Tuning")[1]
    assert ("A widened round (after an edge hit: csq lr 0.0029 at the high edge): lr on [0.0001, 0.03] for "
            "every method searched here, 3 trials each") in section
    other = {**widened, "widened": {"16b-30e": widened["widened"]["32b-30e"]}}  # another round
    assert "widened round" not in build_report([], trials=trials, tuned={"fashion-mnist": other}).markdown()


def test_the_default_trial_resolves_rule_defaults_for_the_cards_classes():
    """CRH's default scale is a rule, sqrt(2) ln(C - 1): on the 100-class card its trial 0 ran
    s = sqrt(2) ln 99, not the 10-class value, and the report must find that trial."""
    import math

    def crh(run_id: str, scale: float, val: float) -> dict:
        config = {"lr": 1e-3, "margin": 0.2, "scale": scale, "lambda_q": 0.1, "epochs": 30}
        return {"run_id": run_id, "status": "complete", "config": config,
                "spec": {"dataset": "fashion-mnist-pairs", "method": "crh", "bits": 32, "seed": 0},
                "selection": {"best_val_mAP": val}, "metrics": {"mAP": val}}

    space = {"lr": ["log", 1e-4, 1e-2], "margin": ["float", 0.0, 1.0], "scale": ["log", 1.0, 16.0],
             "lambda_q": ["log", 1e-5, 1.0]}
    setting = {"fashion-mnist-pairs": {"methods": {"crh": {
        "values": {"lr": 0.006}, "best_run_id": "best", "trials": 24, "bits": 32, "seed": 0, "epochs": 30,
        "search_space": space}}}}
    trials = [crh("ten-class-scale", math.sqrt(2) * math.log(9), 0.40),
              crh("default", math.sqrt(2) * math.log(99), 0.53), crh("best", 6.0, 0.60)]
    (row,) = tuning_rows(trials, setting)
    assert (row["val_default"], row["val_tuned"]) == (0.53, 0.60)
    # A widened study inherits the narrow one's trial 0 (lambda_q clamped to the narrow edge):
    # the entry's stored default_point names it, though the wider range would clamp elsewhere.
    clamped = crh("clamped", math.sqrt(2) * math.log(99), 0.50)
    clamped["config"]["lambda_q"] = 1e-5
    setting["fashion-mnist-pairs"]["methods"]["crh"]["default_point"] = {
        "lr": 1e-3, "margin": 0.2, "scale": math.sqrt(2) * math.log(99), "lambda_q": 1e-5}
    (row,) = tuning_rows([*trials, clamped], setting)
    assert row["val_default"] == 0.50


def test_section_marks_a_carried_choice_and_a_retired_search():
    """A 16-bit entry whose chosen trial is one of its carried ones says so; once a newer 32-bit
    entry's check holds at 16 bits, the 16-bit row is marked retired (its values no longer apply)."""
    base = SETTING["fashion-mnist"]["methods"]["csq"]
    own = {**base, "bits": 16, "best_trial": 5, "carried": {"from": "s32", "trials": [4, 5, 6]},
           "date": "2026-12-05T00:00:00Z"}
    checked = {**base, "date": "2026-12-04T00:00:00Z", "transfer": {16: {"within_spread": False}}}
    setting = {"fashion-mnist": {"dataset": "fashion-mnist", "methods": {"csq": [own, checked]}}}
    (row16, row32) = tuning_rows([], setting)
    assert row16["chosen_carried"] and not row16["retired"] and not row32["chosen_carried"]
    section = build_report([], trials=[], tuned=setting).markdown().split("## Tuning", 1)[1]
    assert "| CSQ | 2: lambda_q, lr | lambda_q=0.01, lr=0.002 (carried) |" in section
    newer = {**checked, "date": "2026-12-06T00:00:00Z", "transfer": {16: {"within_spread": True}}}
    setting["fashion-mnist"]["methods"]["csq"] = [own, newer]
    assert tuning_rows([], setting)[0]["retired"]
    assert "| CSQ (retired) |" in build_report([], trials=[], tuned=setting).markdown()
