"""MDS: Deep Hashing with Minimal-Distance-Separated Hash Centers (Wang et al., CVPR 2023).

Read from the official code, Wangld5/Center-Hashing (`optimizeAccel.py`, `loss/ourLoss.py`,
`model/Net.py`, `scripts/utils.py`, `scripts/train_CUB.py`); the paper text was not available.

- Centers: `methods.centers.mds_centers`, the l_p-box ADMM generator pushed to the
  Gilbert-Varshamov target d*, assigned to classes in a seeded random order (the official
  code shuffles the rows before use). Fixed during training.
- Output: u = tanh(BN(h)), h the shared hash layer's output and BN an owned BatchNorm1d(K);
  the retrieval code is sign(BN(h)) with BN in eval mode.
- Loss L = L_c + beta L_p + lambda_q L_q:
  L_c = mean over the B x C matrix of the binary cross-entropy between
        p_ij = softmax_j(s cos(u_i, c_j)), s = sqrt(K), and the multi-hot y_ij;
  L_q = mean((|u| - 1)^2);
  L_p = the official pairwise term against a memory bank of a momentum ("key") encoder's
        codes U with their labels Y: over pairs (i in the batch, j in the bank) that share a
        label, the mean of log(1 + exp((1 - cos(u_i, U_j)) / 2)). The batch's own key codes
        are written to the bank first (so a sample meets its own key code). From epoch
        `pair_start_epoch` (0-based; official 9), with beta = 1.
  The key encoder is a copy of the network and of BN (owned, requires_grad False), updated
  after every optimizer step as k <- m k + (1 - m) q, m = 0.9 (parameters only; its BatchNorm
  statistics come from its own train-mode passes, as in the official code). It runs, and
  writes the bank, from the epoch before the term starts: that epoch refreshes every bank
  row the term will read, so earlier passes would be discarded. A run that ends before
  `pair_start_epoch`, or sets `pair_loss: none` or beta = 0, trains without L_p and its record
  says so ("pair_term").
- The official code clips the gradient norm at 5: the native protocol sets the loop's shared
  `grad_clip` setting to 5 (the harmonised protocol, like every other method, clips nothing).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UserError
from methods.base import SHARED_SEARCH, HashMethod, Param, Task, TrainContext, cosine_scale, scale_default
from methods.centers import DEFAULT_PATIENCE, mds_centers, require_distinct_codes

OFFICIAL_GRAD_CLIP = 5.0


def center_bce_loss(u: torch.Tensor, labels: torch.Tensor, centers: torch.Tensor,
                    scale: float) -> torch.Tensor:
    """Mean over [B, C] of BCE(p_ij, y_ij), p_ij = softmax_j(scale cos(u_i, c_j)). Computed in
    float64 so log(1 - p) stays finite when p is within float32 rounding of 1."""
    cosine = F.normalize(u, dim=1) @ F.normalize(centers.to(u.dtype), dim=1).T
    log_p = torch.log_softmax(scale * cosine.double(), dim=1)
    log_not_p = torch.log((-torch.expm1(log_p)).clamp_min(torch.finfo(torch.float64).tiny))
    y = labels.double()
    return -(y * log_p + (1 - y) * log_not_p).mean().to(u.dtype)


def pair_bank_loss(u: torch.Tensor, labels: torch.Tensor, bank_codes: torch.Tensor,
                   bank_labels: torch.Tensor) -> torch.Tensor:
    """Sum over (batch i, bank j) sharing a label of log(1 + exp((1 - cos(u_i, U_j)) / 2)),
    divided by the number of such pairs (0 when there are none)."""
    cosine = F.normalize(u, dim=1) @ F.normalize(bank_codes, dim=1).T
    positive = ((labels @ bank_labels.T) > 0).to(u.dtype)
    terms = F.softplus((1 - cosine) / 2)
    count = positive.sum()
    return (positive * terms).sum() / count.clamp_min(1.0)


class KeyEncoder(nn.Module):
    """The momentum encoder: a copy of the network and of the hash-output BatchNorm."""

    def __init__(self, network: nn.Module, norm: nn.Module) -> None:
        super().__init__()
        self.network = copy.deepcopy(network)
        self.norm = copy.deepcopy(norm)
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.norm(self.network.hash_layer(self.network.features(images))))

    @torch.no_grad()
    def follow(self, network: nn.Module, norm: nn.Module, momentum: float) -> None:
        """k <- m k + (1 - m) q over the parameters (not the BatchNorm statistics)."""
        mine = [*self.network.parameters(), *self.norm.parameters()]
        theirs = [*network.parameters(), *norm.parameters()]
        torch._foreach_mul_(mine, momentum)
        torch._foreach_add_(mine, [p.detach() for p in theirs], alpha=1.0 - momentum)


class MemoryBank(nn.Module):
    """Key codes and labels of every training sample (buffers), addressed by dataset index."""

    def __init__(self, train_indices: np.ndarray, bits: int, num_classes: int,
                 device: torch.device) -> None:
        super().__init__()
        train = torch.as_tensor(np.asarray(train_indices), dtype=torch.long)
        slots = torch.full((int(train.max()) + 1 if len(train) else 1,), -1, dtype=torch.long)
        slots[train] = torch.arange(len(train))
        self.register_buffer("slots", slots.to(device))
        # Unwritten rows have no label, so they are never a positive.
        self.register_buffer("codes", torch.zeros(len(train), bits, device=device))
        self.register_buffer("labels", torch.zeros(len(train), num_classes, device=device))

    @torch.no_grad()
    def write(self, indices: np.ndarray, codes: torch.Tensor, labels: torch.Tensor) -> None:
        rows = self.slots[torch.as_tensor(np.asarray(indices), dtype=torch.long, device=self.slots.device)]
        self.codes[rows] = codes.detach().to(self.codes.dtype)
        self.labels[rows] = labels.to(self.labels.dtype)


class MDS(HashMethod):
    name = "mds"
    summary = "Minimal-Distance-Separated centers (ADMM to the GV target), softmax-BCE + momentum-bank pairs"
    reference = "Wang et al., Deep Hashing with Minimal-Distance-Separated Hash Centers, CVPR 2023"
    params = {
        "lambda_q": Param(1e-4, "weight of the quantization term", source="official code (lambda)"),
        "beta": Param(1.0, "weight of the pairwise memory-bank term", source="official code"),
        "pair_loss": Param("moco", "pairwise term: moco (momentum encoder + memory bank) or none",
                           choices=("moco", "none"), source="moco: official code"),
        "pair_start_epoch": Param(9, "first epoch (0-based) with the pairwise term",
                                  source="official code (epoch_change)"),
        "key_momentum": Param(0.9, "EMA momentum m of the key encoder", source="official code (mome)"),
        "scale": Param(None, "softmax scale of the cosines (default sqrt(K))", source="official code"),
        "mds_sweeps": Param(50, "most Gauss-Seidel sweeps of the center generator",
                            source="official code"),
        "admm_patience": Param(DEFAULT_PATIENCE, "end a center's ADMM after this many outer "
                               "iterations without a change of sign(b), from rho >= 1e-3 (0: the "
                               "official stopping rules only)", source="not in paper"),
    }
    native = {"optimizer": "rmsprop", "lr": 1e-5, "weight_decay": 1e-5, "batch_size": 64,
              "lr_schedule": "constant", "grad_clip": OFFICIAL_GRAD_CLIP}
    native_source = ("official MDS code (Wangld5/Center-Hashing scripts/utils.py): RMSprop lr 1e-5, "
                     "weight decay 1e-5, batch 64, no schedule, grad-norm clip 5")
    # bench tune: lr, lambda_q and scale on the ranges shared with the other methods (R2).
    search_space = {**{key: SHARED_SEARCH[key] for key in ("lr", "lambda_q", "scale")},
                    "beta": ("log", 0.1, 10.0)}
    retrieval_output = "sign(BN(h)), BN the method's BatchNorm1d(K) on the hash layer's output, in eval mode"

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        super().__init__(config, task)
        self.owned["norm"] = nn.BatchNorm1d(task.bits)
        self.centers: torch.Tensor | None = None
        self.center_summary: dict[str, Any] = {}
        self.scale = cosine_scale(config.get("scale"), task.bits, task.num_classes, "sqrt_k")[0]
        self.pair_active, self.pair_status = self._pair_plan()

    def _pair_plan(self) -> tuple[bool, str]:
        start = int(self.config["pair_start_epoch"])
        if self.config["pair_loss"] == "none":
            return False, "off: pair_loss none (variant without the official pairwise term)"
        if float(self.config["beta"]) == 0.0:
            return False, "off: beta = 0"
        if self.task.epochs <= start:
            return False, (f"off: the run has {self.task.epochs} epochs and the term starts at "
                           f"0-based epoch {start}")
        return True, f"momentum encoder + memory bank from 0-based epoch {start}"

    @classmethod
    def resolve_default(cls, key: str, value: Any, task: Task) -> Any:
        return scale_default(key, value, task, "sqrt_k")

    @classmethod
    def check(cls, config: dict[str, Any], task: Task) -> None:
        require_distinct_codes("mds", task.num_classes, task.bits)
        for key in ("lambda_q", "beta"):
            if not float(config[key]) >= 0:
                raise UserError(f"mds: {key}={config[key]!r} must be >= 0")
        if not 0.0 <= float(config["key_momentum"]) <= 1.0:
            raise UserError(f"mds: key_momentum={config['key_momentum']!r} must be in [0, 1]")
        try:
            cosine_scale(config.get("scale"), task.bits, task.num_classes, "sqrt_k")
        except UserError as error:
            raise UserError(f"mds: {error}") from None
        for key in ("pair_start_epoch", "mds_sweeps", "admm_patience"):
            value = config[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UserError(f"mds: {key}={value!r} must be an integer >= 0")

    def set_centers(self, centers: np.ndarray) -> None:
        self.centers = torch.as_tensor(np.asarray(centers), dtype=torch.float32, device=self.task.device)

    def setup(self, ctx: TrainContext) -> None:
        started = time.perf_counter()
        rng = np.random.default_rng(self.task.seed)
        centers, summary = mds_centers(self.task.num_classes, self.task.bits, rng,
                                       max_sweeps=int(self.config["mds_sweeps"]),
                                       patience=int(self.config["admm_patience"]))
        order = rng.permutation(self.task.num_classes)  # class c gets generated row order[c]
        self.set_centers(centers[order])
        self.center_summary = summary
        ctx.stage_times["centers"] = time.perf_counter() - started
        if self.pair_active:
            self.owned["key"] = KeyEncoder(ctx.model, self.owned["norm"]).to(ctx.device)
            self.owned["bank"] = MemoryBank(ctx.train_indices, self.task.bits, self.task.num_classes,
                                            ctx.device)

    def codes(self, h: torch.Tensor) -> torch.Tensor:
        """u = tanh(BN(h))."""
        return torch.tanh(self.owned["norm"](h))

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        u = self.codes(h)
        center = center_bce_loss(u, labels, self.centers, self.scale)
        quantization = (u.abs() - 1).pow(2).mean()
        total = center + float(self.config["lambda_q"]) * quantization
        ctx.log("center", center.detach())
        ctx.log("quantization", quantization.detach())
        start = int(self.config["pair_start_epoch"])
        if self.pair_active and ctx.epoch >= start - 1 and ctx.batch is not None:
            with torch.no_grad():
                self.owned["bank"].write(ctx.batch.indices, self.owned["key"](ctx.batch.images), labels)
            if ctx.epoch >= start:
                bank = self.owned["bank"]
                pair = pair_bank_loss(u, labels, bank.codes, bank.labels)
                total = total + float(self.config["beta"]) * pair
                ctx.log("pair", pair.detach())
        return total

    def after_step(self, ctx: TrainContext) -> None:
        if self.pair_active:
            self.owned["key"].follow(ctx.model, self.owned["norm"], float(self.config["key_momentum"]))

    def retrieval_code(self, h: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.owned["norm"](h)

    def class_centers(self) -> torch.Tensor | None:
        return self.centers

    def record(self) -> dict[str, Any]:
        return {
            "centers": None if self.centers is None else self.centers.to(torch.int8).cpu().tolist(),
            "center_generation": self.center_summary,
            "scale": self.scale,
            "pair_loss": self.config["pair_loss"],
            "pair_term": self.pair_status,
            "grad_norm_clip": {"official": OFFICIAL_GRAD_CLIP,
                               "applied": float(self.config.get("grad_clip") or 0.0)},
        }
