"""What a hashing method is to the training loop.

A method is one small class: its parameters (with defaults and their sources), the training
settings its paper used ("native" protocol), its loss, and optional hooks. The loop in
`bench/train.py` never changes when a method is added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

if TYPE_CHECKING:
    from bench.train import TrainContext


@dataclass(frozen=True)
class Param:
    """One tunable value: its default, what it does, valid choices, and where it comes from."""

    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    source: str = ""


@dataclass(frozen=True)
class Task:
    """What a method needs to know about the problem before training starts."""

    bits: int
    num_classes: int
    multi_label: bool
    seed: int
    epochs: int
    device: torch.device


# Training settings every method has. A method's `native` dict replaces some of these with
# its paper's values; the "harmonised" protocol replaces them with one shared set.
TRAINING_PARAMS: dict[str, Param] = {
    "optimizer": Param("adam", "optimizer", choices=("adam", "sgd", "rmsprop")),
    "lr": Param(1e-3, "learning rate of the hash layer"),
    "backbone_lr_scale": Param(1.0, "backbone learning rate as a fraction of lr"),
    "weight_decay": Param(1e-5, "L2 weight decay"),
    "momentum": Param(0.9, "momentum (sgd, rmsprop)"),
    "beta1": Param(0.9, "Adam beta1"),
    "beta2": Param(0.999, "Adam beta2"),
    "lr_schedule": Param("cosine", "learning-rate schedule", choices=("constant", "step", "cosine")),
    "lr_min": Param(0.0, "final learning rate of the cosine schedule"),
    "lr_step_at": Param(0.5, "step schedule: fraction of training at which lr is multiplied"),
    "lr_gamma": Param(0.1, "step schedule: multiplier"),
    "epochs": Param(None, "training epochs (default: the dataset card's schedule)"),
    "batch_size": Param(128, "training batch size"),
    "eval_every": Param(None, "validate every N epochs for model selection (default: card)"),
}

# The "harmonised" protocol: one optimizer and schedule for every method, so that
# differences between methods can be attributed to their losses.
HARMONISED: dict[str, Any] = {
    "optimizer": "adam",
    "lr": 1e-3,
    "backbone_lr_scale": 1.0,
    "weight_decay": 1e-5,
    "beta1": 0.9,
    "beta2": 0.999,
    "lr_schedule": "cosine",
    "lr_min": 1e-6,
    "batch_size": 128,
}


class HashMethod:
    """Base class. Subclasses set the ClassVars and implement `loss`; hooks are optional."""

    name: ClassVar[str]
    summary: ClassVar[str]
    reference: ClassVar[str] = ""
    params: ClassVar[dict[str, Param]] = {}
    native: ClassVar[dict[str, Any]] = {}
    native_source: ClassVar[str] = ""
    # Set to True to receive the sign codes and labels of every training sample seen in the
    # epoch at `on_epoch_end` (collected during the training pass: no extra forward pass).
    collects_codes: ClassVar[bool] = False

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        self.config = config
        self.task = task

    @classmethod
    def check(cls, config: dict[str, Any], task: Task) -> None:
        """Refuse impossible settings before any training (raise bench.errors.UserError)."""

    def setup(self, ctx: TrainContext) -> None:
        """Before the first epoch (e.g. build centers; SHC trains its classifier here)."""

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        """Scalar loss of a batch. `h` is the hash layer's real output [B, K]; `labels` is the
        multi-hot float matrix [B, C]. Components may be logged with `ctx.log(name, value)`."""
        raise NotImplementedError

    def on_epoch_end(
        self, epoch: int, codes: torch.Tensor | None, labels: torch.Tensor | None, ctx: TrainContext
    ) -> dict[str, Any] | None:
        """After each epoch; what it returns is stored in that epoch's history entry."""
        return None

    def class_centers(self) -> torch.Tensor | None:
        """The ±1 target code of each class [C, K], for center-based methods (else None)."""
        return None

    def record(self) -> dict[str, Any]:
        """Extra method state to keep in the run record (histories, final centers...)."""
        return {}
