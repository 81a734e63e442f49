"""The shared training loop end to end on the synthetic dataset, and its helper functions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.spec import RunSpec
from bench.train import center_semantics, class_feature_similarity, iterate_batches, train_and_evaluate


def run_csq(results: Path, seed: int = 0, **overrides) -> dict:
    spec = RunSpec("csq", "synthetic", 16, seed=seed, protocol="harmonised",
                   overrides=tuple(sorted(overrides.items())))
    return train_and_evaluate(spec, results_dir=results, device="cpu", progress_bars=False)


def test_same_seed_same_metrics_and_selection_on_validation(tmp_path: Path) -> None:
    first = run_csq(tmp_path / "a", epochs=4, eval_every=1, batch_size=32)
    second = run_csq(tmp_path / "b", epochs=4, eval_every=1, batch_size=32)
    assert first["metrics"]["mAP"] == second["metrics"]["mAP"]
    assert first["metrics"]["precision_at_radius"] == second["metrics"]["precision_at_radius"]
    # The selected epoch is the best by validation mAP (earliest on ties), never by query mAP.
    val = [entry["val_mAP"] for entry in first["history"]]
    assert first["selection"]["best_epoch"] == int(np.argmax(val)) + 1
    assert first["selection"]["best_val_mAP"] == max(val)
    assert first["split"]["digest"] == second["split"]["digest"]
    assert first["metrics"]["mAP"] > 0.3  # trained: well above chance (~0.17) on 6 classes


def test_different_seed_changes_initialisation(tmp_path: Path) -> None:
    a = run_csq(tmp_path, seed=0, epochs=1)
    b = run_csq(tmp_path, seed=1, epochs=1)
    assert a["history"][0]["loss"] != b["history"][0]["loss"]
    assert a["split"]["digest"] == b["split"]["digest"]  # the split has its own seed


def test_record_holds_spec_config_timings_and_centers(tmp_path: Path) -> None:
    body = run_csq(tmp_path, epochs=2)
    assert body["config"]["epochs"] == 2 and body["spec"]["protocol"] == "harmonised"
    for key in ("train", "encode", "evaluate", "validation", "total"):
        assert body["timings"][key] >= 0
    centers = np.array(body["centers"])
    assert centers.shape == (6, 16) and set(np.unique(centers)) == {-1, 1}
    similarity = np.array(body["class_similarity"]["matrix"])
    assert similarity.shape == (6, 6) and np.allclose(np.diag(similarity), 1, atol=1e-5)
    assert set(body["center_semantics"]) == {"pearson", "spearman"}


def test_cli_run_writes_record_and_skips_it_next_time(tmp_path: Path, capsys) -> None:
    argv = ["run", "--methods", "csq", "--bits", "8", "--dataset", "synthetic", "--epochs", "1",
            "--results", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    records = list((tmp_path / "runs" / "synthetic" / "csq").glob("*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["status"] == "complete" and record["spec"]["bits"] == 8
    assert {"commit", "dirty", "results_version"} <= set(record["code"])
    assert record["environment"]["torch"] == torch.__version__
    assert record["environment"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["environment"]["cpu"]
    before = records[0].stat().st_mtime_ns
    capsys.readouterr()
    assert main(argv) == 0
    assert "1 skipped" in capsys.readouterr().out
    assert records[0].stat().st_mtime_ns == before


def test_class_feature_similarity_matches_literal_means() -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(30, 5))
    labels = np.zeros((30, 3))
    labels[np.arange(30), np.arange(30) % 3] = 1
    labels[0, 1] = 1  # one multi-label sample weighs 1/2 in each class
    got = class_feature_similarity(features, labels)
    means = []
    for c in range(3):
        w = labels[:, c] / labels.sum(1)
        means.append((w[:, None] * features).sum(0) / w.sum())
    means = np.array(means)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    assert np.allclose(got, means @ means.T)


def test_center_semantics_detects_agreement() -> None:
    centers = np.array([[1, 1, 1, 1], [1, 1, 1, -1], [-1, -1, -1, 1], [-1, -1, -1, -1]])
    agreeing = np.array([[1, .9, .1, 0], [.9, 1, 0, .1], [.1, 0, 1, .8], [0, .1, .8, 1]])
    scores = center_semantics(centers, agreeing)
    assert scores["spearman"] > 0.9 and scores["pearson"] > 0.9
    assert center_semantics(centers, -agreeing)["pearson"] < -0.8


def test_iterate_batches_drops_a_trailing_single_image_in_training() -> None:
    from bench.data import load_card, open_dataset

    source = open_dataset(load_card("synthetic"))
    indices = np.arange(9)
    train_sizes = [len(i) for i, _, _ in iterate_batches(source, indices, 4, True, torch.device("cpu"))]
    eval_sizes = [len(i) for i, _, _ in iterate_batches(source, indices, 4, False, torch.device("cpu"))]
    assert train_sizes == [4, 4] and eval_sizes == [4, 4, 1]


@pytest.mark.parametrize("flag", [["--bits", "0"], ["--bits", "16,x"], ["--epochs", "0"]])
def test_bad_numbers_exit_2(tmp_path: Path, capsys, flag) -> None:
    argv = ["run", "--methods", "csq", "--dataset", "synthetic", "--results", str(tmp_path), *flag]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1
