"""The report's tuning section: default and chosen trials are found by their values and run id,
scores come from those records, and the section shows them (fabricated minimal records)."""

from __future__ import annotations

from bench.report import build_report
from bench.report.tuning import tuning_rows


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
