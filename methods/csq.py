"""CSQ: Central Similarity Quantization (Yuan et al., CVPR 2020).

Each class owns a fixed hash center (Hadamard rows, or well-separated Bernoulli vectors when
there are more than 2K classes); codes are pulled to their center by a bit-wise binary
cross-entropy, plus a quantization term pushing |u| to 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from methods.base import SHARED_SEARCH, HashMethod, Param, Task
from methods.centers import hadamard_centers, multi_label_targets, tie_breaker


def central_similarity_loss(
    u: torch.Tensor, targets: torch.Tensor, lambda_q: float, bit_reduction: str = "mean"
) -> torch.Tensor:
    """BCE between (u+1)/2 and (c+1)/2 per bit, reduced over bits by `bit_reduction` and
    averaged over the batch, plus lambda_q * mean((|u|-1)^2). `u` is tanh of the hash layer's
    output. "mean" over bits is the scale the widely used re-implementation trains with."""
    probabilities = ((u + 1) / 2).clamp(1e-7, 1 - 1e-7)
    per_bit = F.binary_cross_entropy(probabilities, (targets + 1) / 2, reduction="none")
    per_sample = per_bit.sum(dim=1) if bit_reduction == "sum" else per_bit.mean(dim=1)
    center_loss = per_sample.mean()
    quantization = (u.abs() - 1).pow(2).mean()
    return center_loss + lambda_q * quantization


def center_tensors(centers: np.ndarray, rng: np.random.Generator, bits: int,
                   device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The class centers [C, K] and the tie-break code of composed multi-label targets, drawn
    next from `rng` (CSQ's stream), as float32 tensors on `device`."""
    tie = tie_breaker(rng, bits)
    return (torch.as_tensor(centers, dtype=torch.float32, device=device),
            torch.as_tensor(tie, dtype=torch.float32, device=device))


class CSQ(HashMethod):
    name = "csq"
    summary = "Central Similarity Quantization: fixed Hadamard centers, BCE + quantization"
    reference = (
        "Yuan et al., Central Similarity Quantization for Efficient Image and Video Retrieval, CVPR 2020"
    )
    params = {
        "lambda_q": Param(1e-4, "weight of the quantization term",
                          source="DeepHash-pytorch CSQ re-implementation"),
        "bit_reduction": Param("mean", "BCE reduction over bits", choices=("mean", "sum"),
                               source="mean: DeepHash-pytorch (BCELoss default); sum: CSQ paper"),
        "center_tries": Param(1000, "Bernoulli resampling attempts when C > 2K"),
    }
    # Published defaults of the widely used PyTorch re-implementation (baselines.md).
    search_space = {key: SHARED_SEARCH[key] for key in ("lr", "lambda_q")}  # bench tune (shared ranges)
    native = {"optimizer": "rmsprop", "lr": 1e-5, "weight_decay": 1e-5, "batch_size": 64,
              "lr_schedule": "constant"}
    native_source = ("re-implementation (DeepHash-pytorch CSQ): RMSprop lr 1e-5, weight decay 1e-5, "
                     "batch 64; the authors' own code (yuanli2333/Hadamard-Matrix-for-hashing) trains "
                     "with Adam 1e-3 (backbone x0.01), lr x0.7 every 10 epochs, lambda_q 0.05")

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        super().__init__(config, task)
        rng = np.random.default_rng(task.seed)
        centers = hadamard_centers(task.num_classes, task.bits, rng, int(config["center_tries"]))
        self.set_centers(centers, rng)

    def set_centers(self, centers: np.ndarray, rng: np.random.Generator) -> None:
        """Fix the class centers (SHC reuses this loss with its own optimised centers)."""
        self.centers, self.tie_breaker = center_tensors(centers, rng, self.task.bits, self.task.device)

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: Any) -> torch.Tensor:
        targets = multi_label_targets(labels, self.centers, self.tie_breaker)
        return central_similarity_loss(
            torch.tanh(h), targets, float(self.config["lambda_q"]), self.config["bit_reduction"]
        )

    def class_centers(self) -> torch.Tensor:
        return self.centers

    def record(self) -> dict[str, Any]:
        return {"centers": self.centers.to(torch.int8).cpu().tolist()}
