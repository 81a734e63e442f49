"""The closing regression check of `bench run`: each new cell beside the committed runs of the
same configuration, flagged when it lies outside the seeds' spread."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.runs.records import write_record
from bench.sweeps.summary import regression_frame

CONFIG = {"lr": 0.001, "epochs": 60, "tuned_setting": {"path": "bench/tuned/x.yaml"}}


def record(seed: int, value: float, config: dict | None = None, method: str = "crh") -> dict:
    spec = {"dataset": "fashion-mnist", "method": method, "bits": 32, "protocol": "tuned",
            "seed": seed, "split_seed": 0, "pretrained": False, "overrides": {}, "backbone": None}
    return {"schema": 2, "run_id": f"{method}-32b-s{seed}-tuned-x", "status": "complete", "spec": spec,
            "config": dict(config or CONFIG), "metrics": {"mAP": value}}


@pytest.fixture
def committed(tmp_path: Path) -> Path:
    """Three committed seeds: 0.80, 0.81, 0.82 (mean 0.81, seed sd 0.01)."""
    folder = tmp_path / "committed"
    for seed, value in enumerate((0.80, 0.81, 0.82)):
        write_record(folder / "runs" / "fashion-mnist" / "crh" / f"s{seed}.json.gz", record(seed, value))
    return folder


def test_a_new_seed_outside_the_prediction_interval_is_flagged(committed: Path) -> None:
    """Seeds 5 and 6 are new: the reference is one more draw from seeds 0-2, mean 0.81 +- t(0.975,
    2 df) * 0.01 * sqrt(1 + 1/3)."""
    half = 4.302652729749464 * 0.01 * math.sqrt(1 + 1 / 3)  # t by the table
    far, near = 0.81 + 1.1 * half, 0.81 - 0.9 * half
    frame = regression_frame([record(5, far), record(6, near)], committed, same_folder=False)
    assert list(frame["check"]) == ["OUTSIDE the seeds' spread", "within the seeds' spread"]
    assert list(frame["committed_same_seed"]) == [None, None]
    assert frame["n"].tolist() == [3, 3] and frame["mean"].tolist() == pytest.approx([0.81, 0.81])
    assert frame["pi95"][0] == pytest.approx((0.81 - half, 0.81 + half))


def test_a_committed_seed_is_shown_beside_it_and_left_out_of_the_spread(committed: Path) -> None:
    frame = regression_frame([record(0, 0.805)], committed, same_folder=False)
    assert frame["committed_same_seed"][0] == 0.80
    assert frame["n"][0] == 2 and frame["mean"][0] == pytest.approx(0.815)


def test_provenance_does_not_split_a_cell_but_a_setting_does(committed: Path) -> None:
    moved = {**CONFIG, "tuned_setting": {"path": "elsewhere.yaml"}}
    other = {**CONFIG, "lr": 0.002}
    frame = regression_frame([record(0, 0.80, moved), record(0, 0.80, other)], committed, same_folder=False)
    assert frame["n"].tolist() == [2, 0]
    assert frame["check"][1] == "no committed cell for this configuration"


def test_runs_stored_in_the_committed_folder_are_compared_with_the_other_seeds(committed: Path) -> None:
    frame = regression_frame([record(0, 0.80)], committed, same_folder=True)
    assert frame["n"][0] == 2 and frame["committed_same_seed"][0] is None
    assert frame["mean"][0] == pytest.approx(0.815)


def test_a_batch_of_new_seeds_is_not_its_own_reference(committed: Path) -> None:
    """Three seeds of a new setting, just stored in the committed folder: no committed cell."""
    new = {**CONFIG, "lr": 0.003}
    batch = [record(seed, 0.7 + 0.01 * seed, new, method="csq") for seed in range(3)]
    for seed, run in enumerate(batch):
        write_record(committed / "runs" / "fashion-mnist" / "csq" / f"s{seed}.json.gz", run)
    frame = regression_frame(batch, committed, same_folder=True)
    assert set(frame["check"]) == {"no committed cell for this configuration"}


def test_per_seed_splits_of_one_configuration_are_one_cell(tmp_path: Path) -> None:
    """In a per-seed table each seed has its own split seed; the seeds still form one cell
    (a fixed split of another seed would not)."""
    folder = tmp_path / "committed"

    def per_seed(seed: int, value: float) -> dict:
        r = record(seed, value)
        r["spec"].update(split_seed=seed, split_rule="per-seed")
        return r

    for seed, value in enumerate((0.80, 0.81, 0.82)):
        write_record(folder / "runs" / "fashion-mnist" / "crh" / f"s{seed}.json.gz", per_seed(seed, value))
    row = regression_frame([per_seed(3, 0.81)], folder, same_folder=False).iloc[0]
    assert row.n == 3 and row["mean"] == pytest.approx(0.81)
    fixed = record(3, 0.81)
    fixed["spec"]["split_seed"] = 3
    assert regression_frame([fixed], folder, same_folder=False).iloc[0].n == 0


def test_a_bare_run_trains_at_the_budget_of_the_cards_table(capsys) -> None:
    """`bench run --methods crh` on Fashion-MNIST is a cell of main-table (60 epochs), not of
    the card's 30-epoch schedule; --epochs still chooses."""
    from bench.cli import main
    from bench.sweeps.experiments import load_experiment

    table = load_experiment("main-table").settings["epochs"]
    assert main(["run", "--methods", "crh", "--bits", "16", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"[epochs={table}]" in out and f"budget: {table} epochs" in out
    assert main(["run", "--methods", "crh", "--bits", "16", "--epochs", "7", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "[epochs=7]" in out and "budget:" not in out


@pytest.mark.parametrize("table", ["main-table", "main-table-v3"])
def test_a_bare_run_is_seed_0_of_the_cards_table(table: str, capsys, monkeypatch) -> None:
    """The bare command's run is the table's own seed-0 run (same run id), whether the declared
    table splits once (v2) or per seed (v3); --split-seed still chooses."""
    import dataclasses

    import bench.data.loading as loading
    from bench.cli import main

    real = loading.load_card
    monkeypatch.setattr(loading, "load_card",
                        lambda name, *a, **k: dataclasses.replace(real(name, *a, **k), table=table))

    def run_ids(argv: list[str]) -> list[str]:
        assert main(["run", *argv, "--dry-run"]) == 0
        out = capsys.readouterr().out
        return [line.rsplit("/", 1)[-1] for line in out.splitlines() if line.startswith(("todo", "done"))]

    bare = run_ids(["--methods", "crh", "--bits", "32"])
    assert len(bare) == 1
    assert bare == run_ids(["--experiment", table, "--methods", "crh", "--bits", "32", "--seeds", "0"])
    other = "3" if table == "main-table" else "0"
    assert bare != run_ids(["--methods", "crh", "--bits", "32", "--split-seed", other])


def test_the_printed_check_names_the_prediction_interval(committed: Path, capsys) -> None:
    from bench.sweeps.summary import print_regression

    print_regression([record(5, 0.95), record(0, 0.80, {**CONFIG, "lr": 0.5})], committed, same_folder=False)
    out = capsys.readouterr().out
    assert "crh 32b seed 5: mAP 0.9500; committed mean 0.8100 over 3 other seeds" in out
    assert "95% prediction interval [" in out and "OUTSIDE the seeds' spread" in out
    assert "no committed cell for this configuration" in out
