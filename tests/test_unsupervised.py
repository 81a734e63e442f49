"""The unsupervised regime (issue 31, shared/specs/methods-wave3.md section 8) on real runs of the
one loop: what an unsupervised method sees (no labels, augmented views, no class centers), how
its checkpoint is chosen, what its record says, and that the training labels cannot reach its
numbers: corrupting them leaves its record's metrics bitwise identical, while a supervised
method's change. The evaluator still scores against the card's labels."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import bench.training.train as train
from bench.data.loading import load_card
from bench.errors import UserError
from bench.runs.spec import RunSpec
from bench.training.regime import Augmentation, augmentation_generator
from bench.training.train import train_and_evaluate
from methods.base import HashMethod, Task, TrainContext

SMALL = {"batch_size": 32, "epochs": 2, "eval_every": 1}


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Tiny runs: one torch thread keeps a shared 2-core machine fast."""


def run(tmp_path: Path, method: str, **overrides: Any) -> dict[str, Any]:
    settings = {**SMALL, **overrides}
    spec = RunSpec(method, "synthetic", 16, protocol="harmonised", overrides=tuple(sorted(settings.items())))
    return train_and_evaluate(spec, results_dir=tmp_path, device="cpu", progress_bars=False)


class Watcher(HashMethod):
    """A test-only unsupervised method that records what the loop hands it."""

    name = "unsupervised-watcher-test"
    summary = "test-only unsupervised method"
    supervised = False
    views = 2
    collects_codes = True

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        super().__init__(config, task)
        self.label_shapes: set[tuple[int, ...]] = set()
        self.view_counts: set[int] = set()
        self.refused = ""
        self.epoch_labels: list[tuple[int, ...]] = []
        self.views_differ = False

    def setup(self, ctx: TrainContext) -> None:
        try:
            ctx.labels_of(ctx.train_indices)
        except UserError as error:
            self.refused = str(error)

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        assert ctx.batch is not None
        self.label_shapes.add(tuple(labels.shape[1:]))
        self.label_shapes.add(tuple(ctx.batch.labels.shape[1:]))
        self.view_counts.add(len(ctx.batch.views))
        first, second = ctx.batch.views
        assert first is h and first.shape == second.shape == (len(ctx.batch.indices), h.shape[1])
        self.views_differ |= not torch.equal(ctx.batch.view_images[0], ctx.batch.view_images[1])
        return (torch.tanh(first) - torch.tanh(second)).pow(2).mean() - 0.01 * torch.tanh(h).abs().mean()

    def on_epoch_end(self, epoch: int, codes: Any, labels: Any, ctx: TrainContext) -> None:
        self.epoch_labels.append(tuple(labels.shape))

    def record(self) -> dict[str, Any]:
        return {"label_shapes": sorted(self.label_shapes), "view_counts": sorted(self.view_counts),
                "refused": self.refused, "epoch_labels": self.epoch_labels,
                "views_differ": self.views_differ}


@pytest.fixture
def watcher(register_method) -> type[HashMethod]:
    return register_method(Watcher)


# ----------------------------------------------------------------------------- the guard
def test_an_unsupervised_method_gets_no_labels_and_two_views(watcher: type[HashMethod],
                                                             tmp_path: Path) -> None:
    body = run(tmp_path, watcher.name)
    seen = body["method"]
    assert seen["label_shapes"] == [(0,)]  # loss and ctx.batch: [B, 0]
    assert "unsupervised" in seen["refused"] and "labels_of" in seen["refused"]
    assert seen["view_counts"] == [2] and seen["views_differ"]
    train_size = body["split"]["sizes"]["train"]
    assert seen["epoch_labels"] == [(train_size, 0)] * 2
    # Its record says what training saw; the evaluator scored it against the card's labels.
    regime = body["regime"]
    assert regime["supervised"] is False and regime["views"] == 2 and "none" in regime["training_labels"]
    assert regime["augmentation"]["noise"] == load_card("synthetic").augmentation["noise"]
    assert body["metrics"]["num_queries"] == body["split"]["sizes"]["query"]


def test_class_centers_are_refused(watcher: type[HashMethod], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Watcher, "class_centers", lambda self: torch.ones(6, 16))
    with pytest.raises(UserError, match="class_centers"):
        run(tmp_path, watcher.name)


def test_last_epoch_is_selected_unless_the_card_declares_validation(
        watcher: type[HashMethod], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_evaluate, real_load = train.evaluate_retrieval, train.load_card
    fakes: list[float] = []

    def evaluate(query: Any, db: Any, query_labels: Any, db_labels: Any, *args: Any, **kwargs: Any):
        result = real_evaluate(query, db, query_labels, db_labels, *args, **kwargs)
        return {**result, "mAP": fakes.pop(0)} if fakes and not kwargs.get("per_query") else result

    monkeypatch.setattr(train, "evaluate_retrieval", evaluate)
    fakes[:] = [0.9, 0.1, 0.2]
    body = run(tmp_path / "a", watcher.name, epochs=3)
    assert body["selection"]["best_epoch"] == 3 and body["selection"]["best_val_mAP"] == 0.2
    assert body["selection"]["rule"].startswith("last epoch")
    assert [h["val_mAP"] for h in body["history"]] == [0.9, 0.1, 0.2]  # still computed, not used

    monkeypatch.setattr(train, "load_card", lambda name: dataclasses.replace(
        real_load(name), unsupervised_selection="validation"))
    fakes[:] = [0.9, 0.1, 0.2]
    body = run(tmp_path / "b", watcher.name, epochs=3)
    assert body["selection"]["best_epoch"] == 1 and "rule" not in body["selection"]


# ----------------------------------------------------------------------------- labels cannot reach it
def corrupted_training_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give every training item a random label for the whole of training (setup, batches, the
    epoch hooks), and the true labels back before the query set is scored: only what training
    could read changes. The split is drawn, and hashed, with the true labels."""
    real_split, real_evaluate = train.make_split, train._encode_and_evaluate
    saved: dict[str, Any] = {}

    def make_split(card: Any, source: Any, *args: Any, **kwargs: Any):
        split = real_split(card, source, *args, **kwargs)
        labels = source.labels.copy()
        rng = np.random.default_rng(12345)
        labels[split.train] = np.eye(labels.shape[1], dtype=labels.dtype)[
            rng.integers(0, labels.shape[1], len(split.train))]
        saved["source"], saved["labels"] = source, source.labels
        source.labels = labels
        return split

    def encode_and_evaluate(run_: Any, *args: Any, **kwargs: Any):
        saved["source"].labels = saved["labels"]
        return real_evaluate(run_, *args, **kwargs)

    monkeypatch.setattr(train, "make_split", make_split)
    monkeypatch.setattr(train, "_encode_and_evaluate", encode_and_evaluate)


@pytest.mark.parametrize("method,supervised", [("cimon", False), ("itq", False), ("csq", True)])
def test_training_labels_cannot_reach_an_unsupervised_run(method: str, supervised: bool, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    clean = run(tmp_path / "clean", method)
    with monkeypatch.context() as patch:
        corrupted_training_labels(patch)
        noisy = run(tmp_path / "noisy", method)
    assert clean["split"]["digest"] == noisy["split"]["digest"]
    losses = [[h["loss"] for h in body["history"]] for body in (clean, noisy)]
    if supervised:  # the test has teeth: a supervised method trains on what it is given
        assert clean["metrics"]["mAP"] != noisy["metrics"]["mAP"] and losses[0] != losses[1]
    else:
        assert clean["metrics"] == noisy["metrics"] and losses[0] == losses[1]


# ----------------------------------------------------------------------------- the augmentation
def images(count: int = 4, size: int = 6) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    pixels = torch.rand(count, 1, size, size, generator=torch.Generator().manual_seed(3))
    mean, std = torch.full((1, 1, 1, 1), 0.5), torch.full((1, 1, 1, 1), 0.5)
    return (pixels - mean) / std, ((0 - mean) / std, (1 - mean) / std, 1 / std)


def test_augmentation_is_seeded_and_stays_in_the_pixel_box() -> None:
    batch, box = images(8, 12)
    augment = Augmentation(noise=0.3)
    first = augment(batch, augmentation_generator(7), box)
    again = augment(batch, augmentation_generator(7), box)
    other = augment(batch, augmentation_generator(8), box)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.shape == batch.shape and first.min() >= -1 and first.max() <= 1
    assert (first == 1).any() or (first == -1).any()  # strong noise reaches the box and is clipped


def test_augmentation_geometry_by_hand() -> None:
    """With the crop at the whole image and no noise: a flip is an exact mirror, and a shift of d
    pixels moves every pixel by d, filling with pixel value 0 (normalised: -1)."""
    batch, box = images()
    flipped = Augmentation(crop_area=(1.0, 1.0), shift=0, flip=1.0, noise=0.0)(
        batch, torch.Generator().manual_seed(0), box)
    assert torch.allclose(flipped, batch.flip(-1), atol=1e-6)
    generator = torch.Generator().manual_seed(5)
    shifted = Augmentation(crop_area=(1.0, 1.0), shift=2, flip=0.0, noise=0.0)(batch, generator, box)
    # Replay the draws the augmentation made (same order) to know each image's shift.
    replay = torch.Generator().manual_seed(5)
    for shape in ((4,), (4, 2), (4,)):
        torch.rand(shape, generator=replay, dtype=torch.float64)
    shifts = torch.randint(-2, 3, (4, 2), generator=replay)
    for i, (dx, dy) in enumerate(shifts.tolist()):
        expected = torch.full_like(batch[i], -1.0)
        size = batch.shape[-1]
        ys, xs = slice(max(0, -dy), size - max(0, dy)), slice(max(0, -dx), size - max(0, dx))
        expected[:, ys, xs] = batch[i][:, max(0, dy):size + min(0, dy), max(0, dx):size + min(0, dx)]
        assert torch.allclose(shifted[i], expected, atol=1e-5), (i, dx, dy)


def test_a_card_may_change_the_views_and_a_bad_one_is_refused() -> None:
    card = load_card("synthetic")
    assert Augmentation.of_card(card) == Augmentation(crop_area=(1.0, 1.0), shift=0, flip=0.0, noise=0.1)
    assert Augmentation.of_card(load_card("fashion-mnist")) == Augmentation()
    for bad in ({"blur": 1}, {"crop_area": [0.0, 1.0]}, {"flip": 2}, {"shift": -1}):
        with pytest.raises(UserError, match="augmentation"):
            Augmentation.of_card(dataclasses.replace(card, augmentation=bad))
