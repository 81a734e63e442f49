"""The method API: a method that owns modules gets them optimised, moved, switched between
train and eval mode and checkpointed by the loop, its hooks are called, and retrieval goes
through its declared output. The method below lives only in this test: adding it touches no
file of the loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.runs.spec import RunSpec
from bench.training.train import train_and_evaluate
from methods.base import HashMethod, Param, Task, TrainContext


class OwnsState(HashMethod):
    """BatchNorm on the hash output plus a learnable scale, a step counter, a spy on modes."""

    name = "owns-state-test"
    summary = "test-only method with owned modules"
    params = {"unused": Param(0, "a knob")}
    retrieval_output = "sign(BN(h)) with the owned BatchNorm in eval mode"

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        super().__init__(config, task)
        self.owned["norm"] = nn.BatchNorm1d(task.bits)
        self.owned["scale"] = nn.Linear(1, 1, bias=False)
        nn.init.constant_(self.owned["scale"].weight, 1.0)
        self.owned["frozen"] = nn.Linear(2, 2)  # state that is not optimised
        self.owned["frozen"].requires_grad_(False)
        self.steps_seen = 0
        self.modes_in_loss: set[bool] = set()
        self.modes_in_retrieval: set[bool] = set()
        self.features_seen = 0

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        assert ctx.batch is not None and ctx.batch.h is h
        assert ctx.batch.images.shape[0] == h.shape[0] == len(ctx.batch.indices)
        self.features_seen += int(ctx.batch.features.shape[0])
        self.modes_in_loss.add(self.owned["norm"].training)
        u = torch.tanh(self.owned["norm"](h) * self.owned["scale"].weight[0, 0])
        target = (labels @ torch.ones(labels.shape[1], h.shape[1], device=h.device)).clamp(max=1)
        return ((u - (2 * target - 1)) ** 2).mean() + 0.01 * (labels[:, :1] * u).mean()

    def after_step(self, ctx: TrainContext) -> None:
        self.steps_seen += 1

    def retrieval_code(self, h: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        self.modes_in_retrieval.add(self.owned["norm"].training)
        return self.owned["norm"](h)

    def record(self) -> dict[str, Any]:
        return {"steps_seen": self.steps_seen,
                "scale": float(self.owned["scale"].weight.detach()),
                "running_mean": self.owned["norm"].running_mean.tolist()}


@pytest.fixture
def registered(register_method) -> type[HashMethod]:
    return register_method(OwnsState)


def test_owned_modules_are_trained_checkpointed_and_used_for_retrieval(
    registered: type[HashMethod], tmp_path: Path
) -> None:
    spec = RunSpec(OwnsState.name, "synthetic", 8, protocol="harmonised",
                   overrides=(("batch_size", 32), ("epochs", 2), ("eval_every", 1)))
    body = train_and_evaluate(spec, results_dir=tmp_path, device="cpu", progress_bars=False)
    steps_per_epoch = body["history"][0]
    assert steps_per_epoch["loss"] == steps_per_epoch["loss"]  # finite
    record = body["method"]
    # after_step ran once per optimizer step
    train_size = body["split"]["sizes"]["train"]
    assert record["steps_seen"] == 2 * -(-train_size // 32)  # the partial last batch is a step
    # the owned learnable scale moved: it was in the optimizer
    assert record["scale"] != 1.0
    # BatchNorm statistics were updated in train mode, encoding used eval mode only
    assert any(abs(v) > 1e-6 for v in record["running_mean"])
    api = body["method_api"]
    assert api["retrieval_output"] == OwnsState.retrieval_output
    assert api["owned_modules"]["norm"] == {"type": "BatchNorm1d", "parameters": 16, "trainable": 16}
    assert api["owned_modules"]["frozen"]["trainable"] == 0
    assert api["owned_modules"]["scale"]["trainable"] == 1


def test_modes_and_batch_contents_seen_by_the_method(registered: type[HashMethod], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[OwnsState] = []
    original_init = OwnsState.__init__

    def spy_init(self: OwnsState, config: dict[str, Any], task: Task) -> None:
        original_init(self, config, task)
        seen.append(self)

    monkeypatch.setattr(OwnsState, "__init__", spy_init)
    spec = RunSpec(OwnsState.name, "synthetic", 8, protocol="harmonised",
                   overrides=(("batch_size", 32), ("epochs", 1)))
    body = train_and_evaluate(spec, results_dir=tmp_path, device="cpu", progress_bars=False)
    method = seen[0]
    assert method.modes_in_loss == {True}
    assert method.modes_in_retrieval == {False}
    assert method.features_seen == body["split"]["sizes"]["train"]


def test_retrieval_goes_through_the_declared_output(registered: type[HashMethod], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A method whose retrieval output is constant gives every query the same ranking: the
    query mAP then equals the mean fraction of relevant items, whatever the network learnt."""
    monkeypatch.setattr(OwnsState, "retrieval_code",
                        lambda self, h, features: torch.ones_like(h))
    spec = RunSpec(OwnsState.name, "synthetic", 8, protocol="harmonised",
                   overrides=(("batch_size", 32), ("epochs", 1)))
    body = train_and_evaluate(spec, results_dir=tmp_path, device="cpu", progress_bars=False)
    from bench.data.loading import load_card, open_dataset
    from bench.data.splits import make_split

    card = load_card("synthetic")
    source = open_dataset(card)
    split = make_split(card, source, 0, tmp_path / "splits")
    q = source.labels[split.query].argmax(1)
    db = source.labels[split.database].argmax(1)
    # all tied, stable order by database index: AP of each query over the whole database
    expected = []
    for label in q:
        relevant = (db == label).astype(float)
        hits = np.cumsum(relevant)
        precision = hits / np.arange(1, len(db) + 1)
        expected.append(float((precision * relevant).sum() / relevant.sum()))
    assert body["metrics"]["mAP"] == pytest.approx(np.mean(expected), abs=1e-9)
    assert len(body["metrics"]["per_query_ap"]) == len(split.query)


@pytest.mark.parametrize("items,batch",
                         [(360, 32), (361, 32), (353, 32), (32, 32), (1, 32), (5, 2), (64, 32)])
def test_steps_per_epoch_counts_the_batches_the_loop_yields(items: int, batch: int) -> None:
    """HashNet's continuation and every progress-based schedule divide by this count."""
    from bench.data.loading import TensorSource
    from bench.training.train import iterate_batches, steps_per_epoch

    source = TensorSource(np.zeros((items, 1, 2, 2), dtype=np.uint8),
                          np.eye(2, dtype=np.float32)[np.arange(items) % 2],
                          np.array(["train"] * items), multi_label=False, identity="test")
    yielded = sum(1 for _ in iterate_batches(source, np.arange(items), batch, True, torch.device("cpu")))
    assert steps_per_epoch(items, batch) == yielded


def test_grad_clip_bounds_every_step(registered: type[HashMethod], tmp_path: Path) -> None:
    """With SGD, a clipped step moves the parameters by at most lr x clip: with a tiny clip
    the owned scale stays put, without one it moves."""
    def scale_after(clip: float) -> float:
        spec = RunSpec(OwnsState.name, "synthetic", 8, protocol="harmonised",
                       overrides=(("batch_size", 32), ("epochs", 1), ("grad_clip", clip),
                                  ("lr", 0.1), ("lr_schedule", "constant"), ("optimizer", "sgd"),
                                  ("weight_decay", 0.0)))
        body = train_and_evaluate(spec, results_dir=tmp_path, device="cpu", progress_bars=False)
        assert body["config"]["grad_clip"] == clip
        return body["method"]["scale"]

    steps = -(-360 // 32)
    assert abs(scale_after(1e-9) - 1.0) <= 0.1 * 1e-9 * steps * 1.01 + 1e-7
    assert abs(scale_after(0.0) - 1.0) > 1e-4


class KeyedState(HashMethod):
    """Learnable centers in their own optimizer group (lr x 0.1, no weight decay), a table keyed
    by the batch's dataset indices (built in setup), and a head on the features that only trains:
    the forms IDCH, ICS and MLH use, on the API as it is."""

    name = "keyed-state-test"
    summary = "test-only method with keyed state and its own optimizer group"

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        super().__init__(config, task)
        self.owned["centers"] = nn.Linear(task.bits, task.num_classes, bias=False)
        self.seen: list[np.ndarray] = []

    def setup(self, ctx: TrainContext) -> None:
        features = ctx.model.hash_layer.in_features
        self.owned["head"] = nn.Linear(features, self.task.bits).to(ctx.device)
        self.owned["table"] = nn.Module()
        self.owned["table"].register_buffer("visits", torch.zeros(int(ctx.train_indices.max()) + 1))

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        return [{"params": list(self.owned["centers"].parameters()), "lr": 0.1 * lr,
                 "weight_decay": 0.0},
                {"params": list(self.owned["head"].parameters()), "lr": lr, "weight_decay": weight_decay}]

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        assert ctx.batch is not None
        self.seen.append(np.asarray(ctx.batch.indices))
        self.owned["table"].visits[torch.as_tensor(ctx.batch.indices)] += 1
        logits = self.owned["centers"](torch.tanh(h))
        second = torch.tanh(self.owned["head"](ctx.batch.features))
        mutual = (1 - F.cosine_similarity(torch.tanh(h), second)).mean()
        return F.cross_entropy(logits, labels.argmax(dim=1)) + mutual


def test_own_optimizer_groups_keyed_state_and_a_training_only_branch(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, register_method) -> None:
    register_method(KeyedState)
    import bench.training.train as train

    seen: dict[str, Any] = {}
    real = train.build_optimizer

    def spy(model: Any, config: Any, method: Any = None) -> Any:
        optimizer = real(model, config, method)
        seen["groups"] = [(g["lr"], g["weight_decay"], len(g["params"])) for g in optimizer.param_groups]
        seen["method"] = method
        return optimizer

    monkeypatch.setattr(train, "build_optimizer", spy)
    spec = RunSpec(KeyedState.name, "synthetic", 8, protocol="harmonised",
                   overrides=(("batch_size", 32), ("epochs", 2), ("lr", 0.01),
                              ("lr_schedule", "constant"), ("weight_decay", 0.001)))
    body = train_and_evaluate(spec, results_dir=tmp_path, device="cpu", progress_bars=False)
    # backbone, the method's two groups with their own lr and weight decay, the hash layer last
    groups = seen["groups"]
    assert groups[1] == (0.001, 0.0, 1) and groups[2] == (0.01, 0.001, 2) and groups[-1][:2] == (0.01, 0.001)
    method = seen["method"]
    train_size = body["split"]["sizes"]["train"]
    visited = np.concatenate(method.seen)
    from bench.data.loading import load_card, open_dataset
    from bench.data.splits import make_split

    card = load_card("synthetic")
    split = make_split(card, open_dataset(card), 0, tmp_path / "splits")
    assert len(visited) <= 2 * train_size and set(visited.tolist()) <= set(split.train.tolist())
    visits = method.owned["table"].visits
    assert int(visits.sum()) == len(visited) and int(visits.max()) == 2  # keyed by dataset index
    assert body["method_api"]["owned_modules"]["head"]["trainable"] > 0
    assert body["method_api"]["retrieval_output"] == HashMethod.retrieval_output  # the head only trains


class SeesPixelBox(HashMethod):
    """Reads the pixel box in its loss, the hook a method that perturbs its training images needs."""

    name = "pixel-box-test"
    summary = "test-only method that reads ctx.pixel_box()"

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        super().__init__(config, task)
        self.boxes: list[tuple[torch.Tensor, ...]] = []
        self.outside = 0

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        box = ctx.pixel_box()
        assert box is not None and ctx.batch is not None
        low, high, _ = box
        self.outside += int(((ctx.batch.images < low - 1e-6) | (ctx.batch.images > high + 1e-6)).sum())
        self.boxes.append(box)
        return (torch.tanh(h) - (2 * labels[:, :1] - 1)).pow(2).mean()


def test_the_step_sees_the_pixel_box_of_its_images(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                   register_method) -> None:
    """ctx.pixel_box() is the source's box (synthetic: mean 0.5, std 0.5, so pixels [0, 1] are
    inputs [-1, 1] and one pixel unit is 2 input units), on the run's device, and every training
    image lies inside it."""
    register_method(SeesPixelBox)
    seen: list[SeesPixelBox] = []
    original_init = SeesPixelBox.__init__

    def spy_init(self: SeesPixelBox, config: dict[str, Any], task: Task) -> None:
        original_init(self, config, task)
        seen.append(self)

    monkeypatch.setattr(SeesPixelBox, "__init__", spy_init)
    spec = RunSpec(SeesPixelBox.name, "synthetic", 8, protocol="harmonised",
                   overrides=(("batch_size", 64), ("epochs", 1)))
    train_and_evaluate(spec, results_dir=tmp_path, device="cpu", progress_bars=False)
    method = seen[0]
    assert method.boxes and method.outside == 0
    low, high, per_pixel = method.boxes[0]
    assert low.shape == (1, 1, 1, 1) and low.device.type == "cpu"
    assert float(low) == pytest.approx(-1.0) and float(high) == pytest.approx(1.0)
    assert float(per_pixel) == pytest.approx(2.0)


class LateSelection(HashMethod):
    """Selection may keep only the last epoch's checkpoint (as CgAT keeps only adversarial ones)."""

    name = "late-selection-test"
    summary = "test-only method restricting selection"
    params = {"unused": Param(0, "a knob")}

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        return (torch.tanh(h) ** 2).mean()

    def selectable_from(self) -> int:
        return self.task.epochs


def test_selection_keeps_no_checkpoint_before_the_methods_first_selectable_epoch(
        tmp_path: Path, register_method) -> None:
    """With lr 0 only BatchNorm statistics move, and epoch 3 validates no better than an earlier
    one, so plain selection (a later epoch must be strictly better) would keep epoch 1 or 2;
    this method allows only epoch 3, and the record says so."""
    register_method(LateSelection)
    spec = RunSpec(LateSelection.name, "synthetic", 8, protocol="harmonised",
                   overrides=(("batch_size", 64), ("epochs", 3), ("eval_every", 1), ("lr", 0.0),
                              ("lr_schedule", "constant")))
    body = train_and_evaluate(spec, results_dir=tmp_path, device="cpu", progress_bars=False)
    validated = [e["val_mAP"] for e in body["history"] if "val_mAP" in e]
    assert len(validated) == 3 and max(validated[:2]) >= validated[2]  # plain selection: earlier
    assert body["selection"]["best_epoch"] == 3 and body["selection"]["selectable_from_epoch"] == 3


def test_cgat_selects_from_its_first_adversarial_epoch() -> None:
    from methods.cgat import CgAT, adversarial_start_epoch

    task = Task(bits=16, num_classes=10, multi_label=False, seed=0, epochs=60, device=None)  # type: ignore[arg-type]
    method = CgAT(CgAT.resolve_rules({k: p.default for k, p in CgAT.params.items()}, False), task)
    assert method.selectable_from() == adversarial_start_epoch(100 / 130, 60) + 1 == 47
