"""The shared training loop end to end on the synthetic dataset, and its helper functions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.runs.records import read_record
from bench.runs.spec import RunSpec
from bench.training.train import (
    center_semantics,
    class_feature_similarity,
    iterate_batches,
    train_and_evaluate,
)


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
    records = list((tmp_path / "runs" / "synthetic" / "csq").glob("*.json.gz"))
    assert len(records) == 1
    record = read_record(records[0])
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
    from bench.data.loading import load_card, open_dataset

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


# ----------------------------------------------------------------------------- numerics (issue 15)
def run_with(results: Path, numerics, **overrides) -> dict:
    spec = RunSpec("csq", "synthetic", 16, seed=0, protocol="harmonised",
                   overrides=tuple(sorted(overrides.items())))
    return train_and_evaluate(spec, results_dir=results, device="cpu", progress_bars=False,
                              numerics=numerics)


def test_record_names_its_numerics_and_the_legacy_path_still_runs(tmp_path: Path) -> None:
    from bench.network.numerics import resolve

    fast = run_with(tmp_path, resolve("cpu", fast=True), epochs=2)
    legacy = run_with(tmp_path, resolve("cpu", threads=1, fast=False), epochs=2)
    assert fast["numerics"] == {
        "path": "fast", "device": "cpu", "threads": 1, "onednn": True, "channels_last": True,
        "amp": None, "cached_images": True, "fuse_bn": True, "inference_mode": True,
        "encode_batch": 128, "non_blocking": False}
    assert legacy["numerics"]["path"] == "legacy" and not legacy["numerics"]["onednn"]
    for body in (fast, legacy):
        assert body["metrics"]["mAP"] > 0.2 and 0 <= body["timings"]["validation_encode"] \
            <= body["timings"]["validation"]
    assert torch.get_num_threads() >= 1 and torch.backends.mkldnn.enabled  # restored afterwards


def test_pre_normalised_images_change_no_bit(tmp_path: Path) -> None:
    """The image cache holds exactly what per-batch normalisation computes: the whole record
    is the same with and without it."""
    from bench.network.numerics import resolve

    cached = run_with(tmp_path, resolve("cpu", fast=True), epochs=2, eval_every=1)
    uncached = run_with(tmp_path, resolve("cpu", fast=True, cached_images=False), epochs=2, eval_every=1)
    assert cached["metrics"] == uncached["metrics"]
    assert [h["loss"] for h in cached["history"]] == [h["loss"] for h in uncached["history"]]


def test_image_cache_returns_the_sources_own_batches() -> None:
    from bench.data.loading import load_card, open_dataset
    from bench.network.numerics import ImageCache, resolve

    source = open_dataset(load_card("synthetic"))
    assert ImageCache.usable(source)
    cache = ImageCache(source, np.array([5, 3, 9, 3]), torch.device("cpu"), resolve("cpu", fast=True))
    expected = torch.stack([source.batch(np.array([i]), False)[0] for i in (9, 3, 5)])  # one by one
    assert torch.equal(cache.take(np.array([9, 3, 5])), expected)
    assert cache.take(np.array([9, 4])) is None  # 4 was never cached: the caller gathers it


def test_folded_encoding_matches_the_trained_network_and_leaves_it_alone() -> None:
    from bench.data.loading import load_card, open_dataset
    from bench.network.backbones import HashNetwork, build_backbone
    from bench.network.numerics import resolve
    from bench.training.train import encode

    source = open_dataset(load_card("synthetic"))
    torch.manual_seed(0)
    model = HashNetwork(build_backbone("tiny_cnn", 1), 16)
    model.train()
    for _ in range(3):  # give BatchNorm non-trivial running statistics
        model(source.batch(np.arange(64), True))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = encode(model, source, np.arange(100), torch.device("cpu"), numerics=resolve("cpu", fast=True))
    plain = encode(model, source, np.arange(100), torch.device("cpu"), numerics=resolve("cpu", fast=False))
    model.eval()
    with torch.no_grad():  # the literal definition: eval-mode network, one image batch
        literal = model(source.batch(np.arange(100), False)).numpy()
    assert np.allclose(plain, literal, rtol=0, atol=1e-6)
    assert np.allclose(fast, literal, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_rewritten_tuned_file_does_not_make_the_code_dirty(tmp_path, monkeypatch) -> None:
    """`bench tune --commit` rewrites bench/tuned/ while it runs; the records' `dirty` says
    whether the code differs from the commit, and the tuned file is data with its own sha256."""
    import subprocess

    import bench.runs.records as records

    for path in ("bench/tuned/card.yaml", "bench/loop.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("a: 1\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    monkeypatch.setattr(records, "REPO_ROOT", tmp_path)

    def dirty() -> bool:
        records._GIT_CACHE.clear()
        return records.code_version()["dirty"]

    monkeypatch.setattr(records, "_GIT_CACHE", {})
    (tmp_path / "bench/tuned/card.yaml").write_text("a: 2\n")
    assert dirty() is False
    (tmp_path / "bench/loop.py").write_text("a: 2\n")
    assert dirty() is True
