"""Shared by the reference rows that hash the inputs with a fitted linear map and never train
(`lsh`, `itq`): the API's no-training form (`trains = False`, `encodes_inputs = True`).

`setup` reads the training split's inputs, flattened (normalised pixels, or a card's feature
vectors), unaugmented and without labels, subtracts their mean and asks the subclass for a
[D, K] projection (`fit`). The retrieval code of any item is sign((x - mean) W), computed in
float32 with autocast off. Mean and projection are buffers of an owned module, so the loop moves
them to the run's device and keeps them with the selected (fitted) method.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from bench.errors import UserError
from methods.base import HARMONISED, HashMethod, Task, TrainContext


class _Projection(nn.Module):
    def __init__(self, mean: np.ndarray, weights: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float32))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return (inputs.flatten(1) - self.mean) @ self.weights


class FittedProjection(HashMethod):
    """Base class (no `name`: not a method itself). Subclasses implement `fit`."""

    supervised = False
    trains = False
    encodes_inputs = True
    native = dict(HARMONISED)
    native_source = "no gradient training: optimizer settings unused"
    retrieval_output = "sign((x - mean) W), x = the flattened inputs, W fitted on the training inputs"

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        super().__init__(config, task)
        self.input_dim: int | None = None
        self.fit_summary: dict[str, Any] = {}

    def fit(self, centred: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        """The projection W [D, K] from the centred training inputs [N, D] (float64), and what
        the record keeps about the fit."""
        raise NotImplementedError

    def setup(self, ctx: TrainContext) -> None:
        inputs = np.asarray(ctx.encode_with(nn.Flatten(), ctx.train_indices), dtype=np.float64)
        self.input_dim = int(inputs.shape[1])
        if self.task.bits > min(inputs.shape):
            raise UserError(f"{self.name}: {self.task.bits} bits need at least {self.task.bits} input "
                            f"dimensions and training items; the inputs are {inputs.shape[0]} x "
                            f"{inputs.shape[1]}")
        mean = inputs.mean(axis=0)
        rng = np.random.default_rng([self.task.seed, _seed_word(self.name)])
        weights, self.fit_summary = self.fit(inputs - mean, rng)
        self.owned["projection"] = _Projection(mean, weights).to(ctx.device)

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        raise RuntimeError(f"{self.name} does not train (trains = False): the loop never asks its loss")

    def encode_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(inputs.device.type, enabled=False):
            return self.owned["projection"](inputs.float())

    def record(self) -> dict[str, Any]:
        return {"settings_used": {**{k: self.config[k] for k in self.params},
                                  "inputs": "training inputs flattened, minus their mean",
                                  "input_dim": self.input_dim},
                "fit": self.fit_summary}


def _seed_word(name: str) -> int:
    return int.from_bytes(name.encode()[:4].ljust(4, b"\0"), "big")
