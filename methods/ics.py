"""ICS: instance-weighted central similarity for multi-label hashing (arXiv 2108.05274), with
the weight step of the public LSCSH code (Mahiro2211/LSCSH, which carries it).

ICS's paper text could not be read beyond its abstract; the mechanism and its constants come
from LSCSH's `train.py`, `Loss.py` and `options.py` (shared/specs/methods-wave3.md, section 3).
A multi-label sample's target is a per-instance weighted mix of its labels' hash centers:

    c_bar_n = sum_k w_nk c_k      (real; w_n on the simplex over the sample's positive labels)
    L = mean_n sum_bits BCE((c_bar_n + 1)/2, (u_n + 1)/2) + lambda_q mean((|u| - 1)^2)
        + lambda_r mean_n sum_k w_nk ln w_nk,          u = tanh(h)

Every step first moves the batch's weights (u detached): one gradient step of size eta on the
batch-mean loss above, then the Euclidean projection of each row onto the simplex of its
positive labels, written back to an owned table keyed by dataset index (initialised to
y / |y|_1); then the network takes its step with those weights fixed. The centers are CSQ's
(Hadamard rows, or separated Bernoulli rows when C > 2K, from CSQ's seed). Single-label data
keeps w = 1 on the one label: ICS is then CSQ with a summed BCE.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UserError
from methods.base import SHARED_SEARCH, HashMethod, Param, Task, TrainContext
from methods.centers import hadamard_centers

_LSCSH = "Mahiro2211/LSCSH"


def simplex_projection(values: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Row-wise Euclidean projection onto {w >= 0, sum w = 1, w = 0 off `support`} (the sort-based
    rule of Held, Wolfe and Crowder / Duchi et al.). A row without support becomes all zero."""
    support = support.bool()
    masked = torch.where(support, values, torch.full_like(values, -math.inf))
    ordered, _ = torch.sort(masked, dim=1, descending=True)
    finite = torch.isfinite(ordered)
    cumulative = torch.cumsum(torch.where(finite, ordered, torch.zeros_like(ordered)), dim=1)
    ranks = torch.arange(1, values.shape[1] + 1, device=values.device, dtype=values.dtype)
    condition = finite & (ordered - (cumulative - 1) / ranks > 0)
    count = condition.sum(dim=1, keepdim=True).clamp_min(1)  # the largest rank that meets it
    threshold = (cumulative.gather(1, count - 1) - 1) / count.to(values.dtype)
    projected = torch.clamp(values - threshold, min=0.0)
    return torch.where(support, projected, torch.zeros_like(projected))


def weighted_entropy_term(weights: torch.Tensor) -> torch.Tensor:
    """mean_n sum_k w ln w with 0 ln 0 = 0 (and no gradient at w = 0, as LSCSH's NaN-to-zero)."""
    safe = torch.log(weights.clamp_min(torch.finfo(weights.dtype).tiny))
    return torch.where(weights > 0, weights * safe, torch.zeros_like(weights)).sum(dim=1).mean()


def ics_loss(h: torch.Tensor, weights: torch.Tensor, centers: torch.Tensor, lambda_q: float,
             lambda_r: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss above for hash outputs h [B, K], weights [B, C] (zero off the sample's labels)
    and centers [C, K] in {-1, +1}. (u + 1)/2 = sigmoid(2h) exactly, so the BCE is taken on the
    logits 2h: no clamping where tanh saturates."""
    targets = (weights @ centers + 1) / 2  # (c_bar + 1) / 2, in [0, 1]
    center = F.binary_cross_entropy_with_logits(2 * h, targets, reduction="none").sum(dim=1).mean()
    quantization = (torch.tanh(h).abs() - 1).pow(2).mean()
    regulariser = weighted_entropy_term(weights)
    total = center + lambda_q * quantization + lambda_r * regulariser
    return total, {"center": center, "quantization": quantization, "weight_regulariser": regulariser}


class InstanceWeights(nn.Module):
    """w_n of every training sample [N, C] (buffers), addressed by dataset index."""

    def __init__(self, train_indices: np.ndarray, labels: np.ndarray, device: torch.device) -> None:
        super().__init__()
        train = torch.as_tensor(np.asarray(train_indices), dtype=torch.long)
        slots = torch.full((int(train.max()) + 1 if len(train) else 1,), -1, dtype=torch.long)
        slots[train] = torch.arange(len(train))
        positive = torch.as_tensor(np.asarray(labels) > 0, dtype=torch.float32)
        start = positive / positive.sum(dim=1, keepdim=True).clamp_min(1.0)  # y / |y|_1
        self.register_buffer("slots", slots.to(device))
        self.register_buffer("weights", start.to(device))
        self.register_buffer("support", positive.to(device))

    def rows(self, indices: np.ndarray) -> torch.Tensor:
        return self.slots[torch.as_tensor(np.asarray(indices), dtype=torch.long, device=self.slots.device)]

    def summary(self) -> dict[str, Any]:
        """Entropy of the weights over the samples with two or more labels (0 = one label takes
        everything, ln q = uniform over q labels) and how far they moved from y / |y|_1."""
        multi = self.support.sum(dim=1) >= 2
        w = self.weights[multi]
        if not len(w):
            return {"multi_label_samples": 0}
        entropy = -weighted_entropy_term(w)
        start = self.support[multi] / self.support[multi].sum(dim=1, keepdim=True)
        return {"multi_label_samples": int(multi.sum()), "mean_entropy": round(float(entropy), 6),
                "mean_uniform_entropy": round(float(torch.log(self.support[multi].sum(dim=1)).mean()), 6),
                "mean_abs_change": round(float((w - start).abs().sum(dim=1).mean()), 6)}


class ICS(HashMethod):
    name = "ics"
    summary = ("ICS: per-instance weighted mix of label centers (projected-gradient weights, max-"
               "entropy regulariser) + CSQ-style BCE")
    reference = ("Zhang, Peng et al., Instance-weighted Central Similarity for Multi-label Image "
                 "Retrieval, arXiv 2108.05274 (2021)")
    params = {
        "lambda_q": Param(0.05, "weight of the quantization term mean((|u| - 1)^2)",
                          source=f"{_LSCSH} options.py (lambda_Q)"),
        "lambda_r": Param(0.001, "weight of the weight regulariser mean_n sum_k w ln w",
                          source=f"{_LSCSH} options.py (lambda_R)"),
        "eta": Param(0.1, "step size of the weight step (projected gradient)",
                     source=f"{_LSCSH} options.py (eta)"),
        "projection": Param("exact", "weight projection: exact = Euclidean projection onto the "
                            "simplex of the sample's positive labels",
                            choices=("exact",),
                            source="deviation: LSCSH's simplexPro projects only the entries still "
                                   "> 0, sorted ascending, leaving negative entries in place; the "
                                   "exact projection is the paper's stated constraint"),
        "center_tries": Param(1000, "Bernoulli resampling attempts when C > 2K",
                              source="methods/csq.py (CSQ's centers)"),
    }
    reconstructed = {
        "method text": "ICS's paper text is not readable; the weight step, its constants and the "
                       "loss are LSCSH's, which carries the ICS mechanism",
    }
    # bench tune: the knobs ICS shares with the other methods, on the shared ranges (R2).
    search_space = {key: SHARED_SEARCH[key] for key in ("lr", "lambda_q")}
    native = {"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-5, "backbone_lr_scale": 0.01,
              "batch_size": 32, "lr_schedule": "cosine", "lr_min": 0.0}
    native_source = (f"{_LSCSH} train.py / options.py / network.py: Adam lr 1e-4, weight decay 1e-5, "
                     "backbone lr x0.01, batch 32; deviation: LSCSH multiplies lr by 0.7 every 10 "
                     "epochs, a schedule this suite does not have, so cosine over the run instead")
    retrieval_output = "sign(h), h = the shared linear hash layer's output"

    @classmethod
    def check(cls, config: dict[str, Any], task: Task) -> None:
        for key in ("lambda_q", "lambda_r", "eta"):
            if not float(config[key]) >= 0:
                raise UserError(f"ics: {key}={config[key]!r} must be >= 0 (default "
                                f"{cls.params[key].default})")

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        super().__init__(config, task)
        rng = np.random.default_rng(task.seed)  # CSQ's stream: the same centers as csq
        centers = hadamard_centers(task.num_classes, task.bits, rng, int(config["center_tries"]))
        self.centers = torch.as_tensor(centers, dtype=torch.float32, device=task.device)
        self.steps = 0

    def setup(self, ctx: TrainContext) -> None:
        indices = ctx.train_indices
        self.owned["weights"] = InstanceWeights(indices, ctx.labels_of(indices), ctx.device)

    def weight_step(self, h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """One projected-gradient step on the batch's weights with u detached; writes them back
        and returns them."""
        table: InstanceWeights = self.owned["weights"]
        weights = table.weights[rows].clone().requires_grad_(True)
        loss, _ = ics_loss(h.detach(), weights, self.centers, float(self.config["lambda_q"]),
                           float(self.config["lambda_r"]))
        (gradient,) = torch.autograd.grad(loss, weights)
        moved = simplex_projection(weights.detach() - float(self.config["eta"]) * gradient,
                                   table.support[rows])
        table.weights[rows] = moved
        return moved

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        assert ctx.batch is not None
        rows = self.owned["weights"].rows(ctx.batch.indices)
        weights = self.weight_step(h, rows) if self.owned.training else self.owned["weights"].weights[rows]
        total, parts = ics_loss(h, weights, self.centers, float(self.config["lambda_q"]),
                                float(self.config["lambda_r"]))
        for key, value in parts.items():
            ctx.log(key, value.detach())
        self.steps += 1
        return total

    def on_epoch_end(self, epoch: int, codes: torch.Tensor | None, labels: torch.Tensor | None,
                     ctx: TrainContext) -> dict[str, Any]:
        return {"weights": self.owned["weights"].summary()}

    def class_centers(self) -> torch.Tensor:
        return self.centers

    def record(self) -> dict[str, Any]:
        weights = self.owned["weights"].summary() if "weights" in self.owned else {}
        return {
            "centers": self.centers.to(torch.int8).cpu().tolist(),
            "weights": weights,
            "multi_label_rule": "per-instance weighted mix of the labels' centers (the paper's rule); "
                                "single-label data: the label's center",
            "schedule_note": "LSCSH decays lr x0.7 every 10 epochs; the native protocol here is cosine",
        }
