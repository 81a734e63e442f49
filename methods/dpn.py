"""DPN: Deep Polarized Network (Fan, Ng, Ju, Zhang and Chan, IJCAI 2020).

Every class owns a random target vector t in {-1,+1}^K (each bit +1 with probability 0.5).
The bit-wise polarization loss max(0, m - u_k * t_k) pushes every output bit beyond the margin
m on the side of its target bit. A multi-label sample is pulled towards each of its classes'
targets, and the per-class hinges are averaged (the paper's formulation); a single
majority-vote target per sample (CSQ's multi-label center) is available as an option.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from methods.base import SHARED_SEARCH, HashMethod, Param, Task
from methods.centers import bernoulli_centers, multi_label_targets, tie_breaker


def polarization_loss(h: torch.Tensor, targets: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over bits and samples of max(0, m - h * t); `targets` is [B, K] in {-1, +1}."""
    return torch.relu(margin - h * targets).mean()


def per_class_polarization_loss(h: torch.Tensor, labels: torch.Tensor, class_targets: torch.Tensor,
                                margin: float) -> torch.Tensor:
    """DPN's multi-label polarization loss.

    For sample n with positive classes P_n: (1/|P_n|) * sum_{c in P_n} mean_k max(0, m - h_nk t_ck),
    then averaged over the samples that have at least one label. For a single-label batch this
    equals `polarization_loss` against each sample's own target.

    h [B, K] real outputs, labels [B, C] multi-hot, class_targets [C, K] in {-1, +1}.
    """
    hinge = torch.relu(margin - h[:, None, :] * class_targets[None, :, :]).mean(dim=2)  # [B, C]
    counts = labels.sum(dim=1)
    per_sample = (labels * hinge).sum(dim=1) / counts.clamp_min(1.0)
    labelled = (counts > 0).sum().clamp_min(1)
    return per_sample.sum() / labelled


class DPN(HashMethod):
    name = "dpn"
    summary = "Deep Polarized Network: random per-class ±1 targets, bit-wise polarization hinge"
    reference = (
        "Fan, Ng, Ju, Zhang and Chan, Deep Polarized Network for Supervised Learning of Accurate "
        "Binary Hashing Codes, IJCAI 2020"
    )
    params = {
        "margin": Param(1.0, "polarization margin m of max(0, m - u * t)", source="DPN paper, m = 1"),
        "multi_label": Param(
            "per_class", "multi-label target: hinge to every positive class's target, averaged "
            "(per_class), or one majority-vote target per sample (majority: CSQ-style sign of the "
            "sum with a seeded tie-break vector)",
            choices=("per_class", "majority"),
            source="per_class: DPN paper; majority: the simplification in DeepHash-pytorch's DPN",
        ),
    }
    # DPN's original training settings as listed in shared/specs/baselines.md: SGD, lr 1e-4,
    # momentum 0.9, weight decay 5e-4, batch 256, learning rate x0.1 at half of training.
    # bench tune. DPN's margin is a hinge margin on u * t, not the cosine margin of CRH/OrthoHash.
    search_space = {"lr": SHARED_SEARCH["lr"], "margin": ("log", 0.1, 4.0)}
    native = {"optimizer": "sgd", "lr": 1e-4, "momentum": 0.9, "weight_decay": 5e-4,
              "batch_size": 256, "lr_schedule": "step", "lr_step_at": 0.5, "lr_gamma": 0.1}
    native_source = ("DPN original settings (Fan et al., IJCAI 2020; baselines.md): SGD lr 1e-4, "
                     "momentum 0.9, weight decay 5e-4, batch 256, lr x0.1 at half of training")

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        super().__init__(config, task)
        rng = np.random.default_rng(task.seed)
        # One Bernoulli(0.5) draw per class and bit, seeded by the run's seed.
        targets = bernoulli_centers(task.num_classes, task.bits, rng)
        self.targets = torch.as_tensor(targets, dtype=torch.float32, device=task.device)
        tie = tie_breaker(rng, task.bits)
        self.tie_breaker = torch.as_tensor(tie, dtype=torch.float32, device=task.device)

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: Any) -> torch.Tensor:
        margin = float(self.config["margin"])
        if self.config["multi_label"] == "majority":
            targets = multi_label_targets(labels, self.targets, self.tie_breaker)
            return polarization_loss(h, targets, margin)
        return per_class_polarization_loss(h, labels, self.targets, margin)

    def class_centers(self) -> torch.Tensor:
        return self.targets

    def record(self) -> dict[str, Any]:
        return {"targets": self.targets.to(torch.int8).cpu().tolist(),
                "multi_label": self.config["multi_label"]}
