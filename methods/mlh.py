"""MLH: mutual learning between a strong center branch and a weak pairwise branch (arXiv
2510.07703), as a reconstruction.

The paper's text could not be read; what follows is third-party summaries plus this file's
reading (shared/specs/methods-wave3.md, section 2). Two hash branches share the backbone:

- the center branch (evaluated): u_c = tanh(h), h the shared linear hash layer's output;
- the pairwise branch: u_p = tanh(W f + b), an owned Linear(feature_dim -> K) on the backbone
  features f; it only trains (retrieval is sign(h)).

Centers are fixed: the l_p-box ADMM centers pushed to the Gilbert-Varshamov target, as MDS
builds them (`methods.centers.mds_centers`, seeded, rows in a seeded random class order).

    L_C = C x mean over [B, C] of BCE(P_nc, y_nc),  P_nc = softmax_c(s cos(u_c,n, center_c)),
          s = sqrt(K)  (MDS's center loss, summed over classes)
    L_P = mean over in-batch pairs i != j of softplus(theta_ij) - S_ij theta_ij,
          theta_ij = u_p,i . u_p,j / 2, S_ij = [y_i . y_j > 0]  (DPSH's pairwise likelihood)
    L_M = mean_n (1 - cos(u_c,n, u_p,n))  (gradients into both branches)
    L   = 4 L_C + L_P + L_M

Multi-label data: L_C's BCE over every class and L_P's "share a label" similarity (declared).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UserError
from methods.base import (
    HARMONISED,
    SHARED_SEARCH,
    HashMethod,
    Param,
    Task,
    TrainContext,
    cosine_scale,
    scale_default,
)
from methods.centers import DEFAULT_PATIENCE, mds_centers, require_distinct_codes
from methods.mds import center_bce_loss

_SUMMARY = "third-party summaries of arXiv 2510.07703 (arxivlens: lambda1 = 4, lambda2 = lambda3 = 1)"


def center_branch_loss(u: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor,
                       scale: float) -> torch.Tensor:
    """L_C: the sum over classes (mean over samples) of BCE(softmax_c(s cos(u, c)), y)."""
    return centers.shape[0] * center_bce_loss(u, labels, centers, scale)


def pairwise_likelihood_loss(u: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_P: mean over ordered in-batch pairs i != j of softplus(theta) - S theta, with
    theta = u_i . u_j / 2 and S = 1 when the two samples share a label."""
    count = u.shape[0]
    if count < 2:
        return u.sum() * 0.0
    theta = 0.5 * (u @ u.T)
    similar = ((labels @ labels.T) > 0).to(u.dtype)
    off = ~torch.eye(count, dtype=torch.bool, device=u.device)
    return (F.softplus(theta) - similar * theta)[off].mean()


def mutual_loss(u_center: torch.Tensor, u_pair: torch.Tensor) -> torch.Tensor:
    """L_M: mean over samples of 1 - cos(u_c, u_p)."""
    return (1 - F.cosine_similarity(u_center, u_pair, dim=1)).mean()


class MLH(HashMethod):
    name = "mlh"
    summary = ("MLH (reconstruction): center branch (evaluated) + pairwise branch on the same "
               "backbone, mutual learning")
    reference = ("Ma, Li and Weng, Mutual Learning for Hashing: Unlocking Strong Hash Functions from "
                 "Weak Supervision, arXiv 2510.07703 (2025)")
    params = {
        "scale": Param(None, "softmax scale s of the center branch's cosines: a number, sqrt_k or "
                       "adacos; None: sqrt_k", source="reconstruction: MDS's center loss (the "
                       "summaries name MDS-style centers and loss)"),
        "center_weight": Param(4.0, "weight of the center-branch loss L_C",
                               source=f"reconstruction: {_SUMMARY} (L = 4 L_C + L_P + L_M)"),
        "pair_weight": Param(1.0, "weight of the pairwise-branch loss L_P",
                             source=f"reconstruction: {_SUMMARY}"),
        "mutual_weight": Param(1.0, "weight of the mutual term L_M = mean(1 - cos(u_c, u_p))",
                               source=f"reconstruction: {_SUMMARY}"),
        "mds_sweeps": Param(50, "most Gauss-Seidel sweeps of the center generator",
                            source="official MDS code (Wangld5/Center-Hashing)"),
        "admm_patience": Param(DEFAULT_PATIENCE, "end a center's ADMM after this many outer "
                               "iterations without a change of sign(b) (0: official rules only)",
                               source="not in paper (as mds)"),
    }
    reconstructed = {
        "pairwise loss": "L_P in DPSH's form (theta = u_i u_j / 2) over in-batch pairs; the paper's "
                         "pairwise loss is not readable",
        "mutual loss": "L_M = mean(1 - cos(u_c, u_p)) with gradients into both branches",
        "pairwise head": "one owned Linear(feature_dim -> K) on the shared backbone's features; "
                         "mixture-of-heads (MoH) left out, as the summaries' 'without MoH' row",
        "training settings": "none published: harmonised",
    }
    # bench tune: the knobs MLH shares with the other methods (lr; the cosine scale of CRH,
    # OrthoHash and MDS), on the shared ranges (R2).
    search_space = {key: SHARED_SEARCH[key] for key in ("lr", "scale")}
    native = dict(HARMONISED)
    native_source = "not in the summaries: harmonised settings"
    retrieval_output = ("sign(h), h = the shared linear hash layer's output (the center branch; the "
                        "pairwise branch's head only trains)")

    @classmethod
    def resolve_default(cls, key: str, value: Any, task: Task) -> Any:
        return scale_default(key, value, task, "sqrt_k")

    @classmethod
    def check(cls, config: dict[str, Any], task: Task) -> None:
        require_distinct_codes("mlh", task.num_classes, task.bits)
        try:
            cosine_scale(config.get("scale"), task.bits, task.num_classes, "sqrt_k")
        except UserError as error:
            raise UserError(f"mlh: {error}") from None
        for key in ("center_weight", "pair_weight", "mutual_weight"):
            if not float(config[key]) >= 0:
                raise UserError(f"mlh: {key}={config[key]!r} must be >= 0")

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        super().__init__(config, task)
        self.scale = cosine_scale(config.get("scale"), task.bits, task.num_classes, "sqrt_k")[0]
        self.centers: torch.Tensor | None = None
        self.center_summary: dict[str, Any] = {}

    def setup(self, ctx: TrainContext) -> None:
        started = time.perf_counter()
        rng = np.random.default_rng(self.task.seed)
        centers, summary = mds_centers(self.task.num_classes, self.task.bits, rng,
                                       max_sweeps=int(self.config["mds_sweeps"]),
                                       patience=int(self.config["admm_patience"]))
        order = rng.permutation(self.task.num_classes)  # class c gets generated row order[c]
        self.centers = torch.as_tensor(centers[order], dtype=torch.float32, device=ctx.device)
        self.center_summary = summary
        ctx.stage_times["centers"] = time.perf_counter() - started
        features = ctx.model.hash_layer.in_features
        self.owned["pair_head"] = nn.Linear(features, self.task.bits).to(ctx.device)

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        assert ctx.batch is not None and self.centers is not None
        u_center = torch.tanh(h)
        u_pair = torch.tanh(self.owned["pair_head"](ctx.batch.features))
        center = center_branch_loss(u_center, labels, self.centers, self.scale)
        pair = pairwise_likelihood_loss(u_pair, labels)
        mutual = mutual_loss(u_center, u_pair)
        ctx.log("center", center.detach())
        ctx.log("pair", pair.detach())
        ctx.log("mutual", mutual.detach())
        return (float(self.config["center_weight"]) * center + float(self.config["pair_weight"]) * pair
                + float(self.config["mutual_weight"]) * mutual)

    def class_centers(self) -> torch.Tensor | None:
        return self.centers

    def record(self) -> dict[str, Any]:
        return {
            "centers": None if self.centers is None else self.centers.to(torch.int8).cpu().tolist(),
            "center_generation": self.center_summary,
            "scale": self.scale,
            "multi_label_rule": "L_C: BCE over every class; L_P: a pair is similar when it shares a "
                                "label (declared)",
        }
