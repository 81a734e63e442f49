"""What a method may see of a run, defined below the training loop.

`methods/` sits under `bench/training/train.py`: the loop imports methods, never the reverse. The loop
hands each hook an object that satisfies `TrainContext` (a structural Protocol, so methods and
their tests need nothing from the loop's module); `Task`, `Param` and `Batch` are plain data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Param:
    """One tunable value: its default, what it does, valid choices, and where it comes from."""

    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    source: str = ""
    # Named rules a numeric parameter also accepts as text (HashNet's alpha "10/K"); the method
    # resolves them for the task (`resolve_default`), so a rule is stored, and keyed, as written.
    rules: tuple[str, ...] = ()


@dataclass(frozen=True)
class Task:
    """What a method needs to know about the problem before training starts."""

    bits: int
    num_classes: int
    multi_label: bool
    seed: int
    epochs: int
    device: torch.device
    # A pretrained backbone: methods that measure class similarity on features (HCLM) use it.
    pretrained: bool = False


@dataclass
class Batch:
    """The training step's inputs and the network's outputs, for methods that need more than
    `h` (a momentum encoder needs the images; per-sample weights need the indices; a
    classifier head needs the backbone features)."""

    indices: np.ndarray
    images: torch.Tensor
    labels: torch.Tensor
    features: torch.Tensor
    h: torch.Tensor
    # Unsupervised methods (`HashMethod.supervised = False`): the hash output of each augmented
    # view of the batch, in view order (`views[0] is h`), and the views' images.
    views: tuple[torch.Tensor, ...] = ()
    view_images: tuple[torch.Tensor, ...] = ()


class TrainContext(Protocol):
    """The parts of the running loop a hook may use."""

    config: dict[str, Any]
    task: Task
    device: torch.device
    epoch: int
    step: int
    steps_per_epoch: int
    stage_times: dict[str, float]
    batch: Batch | None
    model: nn.Module  # the shared backbone + hash layer (read it; the loop optimises it)

    @property
    def total_steps(self) -> int: ...

    @property
    def progress(self) -> float: ...

    @property
    def train_indices(self) -> np.ndarray: ...

    def log(self, name: str, value: float | torch.Tensor) -> None: ...

    def new_backbone(self) -> nn.Module: ...

    def new_optimizer(self, backbone: nn.Module, head: nn.Module,
                      epochs: int) -> tuple[torch.optim.Optimizer, Any]:
        """The run's optimizer and lr schedule (its protocol's settings) for another network, with
        the schedule spread over `epochs` (SHC's stage-1 classifier trains as its stage 3)."""
        ...

    def train_batches(
        self, generator: torch.Generator, batch_size: int | None = None
    ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]: ...

    def encode_with(self, module: nn.Module, indices: np.ndarray) -> np.ndarray: ...

    def labels_of(self, indices: np.ndarray) -> np.ndarray:
        """Multi-hot labels [N, C]; raises bench.errors.UserError for an unsupervised method."""
        ...

    def pixel_box(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(low, high, per_pixel), each [1, C, 1, 1] on the run's device: the valid pixel range
        [0, 1] in the normalised inputs `batch.images` holds, and the factor that turns a budget
        in pixel units (e.g. 8/255) into input units; None when the images declare no
        normalisation. For a method that perturbs its training images (adversarial training)."""
        ...

    def augment(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One augmented view of a batch of normalised images (the run's declared augmentation:
        crop, shift, flip, noise, clipped to the source's pixel box), drawn from `generator`
        (default: the run's own augmentation stream, seeded from the run's seed)."""
        ...
