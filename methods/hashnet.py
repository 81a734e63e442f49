"""HashNet: Deep Learning to Hash by Continuation (Cao, Long, Wang and Yu, ICCV 2017).

Codes are u = tanh(beta * h), where the scale beta grows during training (continuation) so the
activation approaches sign(h). The loss is the weighted negative log-likelihood of the pairwise
similarities of the mini-batch, with the pair probability sigma(alpha * <u_i, u_j>):

    l_ij = log(1 + exp(alpha <u_i, u_j>)) - s_ij * alpha <u_i, u_j>

s_ij = 1 when samples i and j share at least one label. Similar and dissimilar pairs are
re-weighted by the inverse of their counts (the paper's w_ij = |S| / |S_1| or |S| / |S_0|,
divided by |S|), so the batch loss is mean(l over similar pairs) + mean(l over dissimilar
pairs); a batch without one of the two kinds simply has that term equal to 0.

Continuation schedules (option `continuation`):
  iteration  the paper's / authors' code: every `beta_every` (200) iterations,
             beta = (1 + gamma * iter) ** 0.5 with gamma = 0.005 (held constant in between);
  epoch      the form of the widely used DeepHash-pytorch re-implementation:
             beta = sqrt(floor(epoch / E) + 1), E = 20 there out of 150 epochs; here E defaults to
             20 scaled to the run's schedule (round(20 * epochs / 150), at least 1), so that beta
             ends at the same value as in that reference schedule; set `beta_epoch_step` to fix E;
  none       beta = 1 throughout (an ablation, not HashNet).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from bench.errors import UserError
from methods.base import SHARED_SEARCH, HashMethod, Param, Task

# Reference epoch schedule of the epoch-form continuation (DeepHash-pytorch HashNet config:
# step_continuation 20, 150 epochs).
REFERENCE_EPOCH_STEP = 20
REFERENCE_EPOCHS = 150


def iteration_beta(iteration: int, gamma: float = 0.005, every: int = 200, power: float = 0.5) -> float:
    """The paper's continuation: beta is reset to (1 + gamma * it) ** power at every multiple `it`
    of `every` iterations (1-based iteration count, as in the authors' code) and held between."""
    last_update = every * (int(iteration) // every)
    return (1.0 + gamma * last_update) ** power


def epoch_beta(epoch: int, step: int) -> float:
    """The re-implementation's continuation: sqrt(floor(epoch / step) + 1), epoch 0-based."""
    return math.sqrt(int(epoch) // max(1, int(step)) + 1)


def default_epoch_step(epochs: int) -> int:
    """E = 20 of a 150-epoch schedule, scaled to `epochs` epochs (at least 1)."""
    return max(1, round(REFERENCE_EPOCH_STEP * int(epochs) / REFERENCE_EPOCHS))


ALPHA_RULE = "10/K"  # thuml/HashNet pytorch/src/train.py: sigmoid_param = 10 / bit


def resolve_alpha(value: Any, bits: int) -> float:
    """alpha as a number: the rule "10/K" (the authors' code) or a positive number."""
    if value == ALPHA_RULE:
        return 10.0 / bits
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        alpha = float("nan")
    if isinstance(value, bool) or not alpha > 0 or not math.isfinite(alpha):
        raise UserError(f"hashnet: alpha={value!r} is not valid; give a positive number or {ALPHA_RULE}")
    return alpha


def hashnet_pair_loss(u: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """Class-balanced pairwise log-likelihood over all pairs i != j of the batch.

    u [B, K] (already tanh(beta * h)), labels [B, C] multi-hot. log(1 + e^x) is computed with
    softplus, so large inner products neither overflow nor lose precision."""
    similar = (labels @ labels.T) > 0
    off_diagonal = ~torch.eye(len(u), dtype=torch.bool, device=u.device)
    positive = similar & off_diagonal
    negative = ~similar & off_diagonal
    inner = alpha * (u @ u.T)
    pair = F.softplus(inner) - similar.to(u.dtype) * inner
    zero = torch.zeros((), dtype=u.dtype, device=u.device)
    positive_term = torch.where(positive, pair, zero).sum() / positive.sum().clamp_min(1)
    negative_term = torch.where(negative, pair, zero).sum() / negative.sum().clamp_min(1)
    return positive_term + negative_term


class HashNet(HashMethod):
    name = "hashnet"
    summary = "HashNet: tanh(beta x) continuation, class-balanced pairwise log-likelihood"
    reference = "Cao, Long, Wang and Yu, HashNet: Deep Learning to Hash by Continuation, ICCV 2017"
    params = {
        "alpha": Param(0.1, "scale of the inner product in the pair sigmoid sigma(alpha <u_i, u_j>)",
                       source="HashNet paper / DeepHash-pytorch config (alpha 0.1); the authors' "
                              "PyTorch code uses 10 / K, the native protocol's value (alpha: 10/K)",
                       rules=(ALPHA_RULE,)),
        "continuation": Param("iteration", "how beta grows: iteration (paper), epoch "
                              "(DeepHash-pytorch form) or none (beta = 1, ablation)",
                              choices=("iteration", "epoch", "none"),
                              source="iteration: HashNet paper and thuml/HashNet; epoch: DeepHash-pytorch"),
        "beta_gamma": Param(0.005, "iteration continuation: beta = (1 + gamma * iter) ** 0.5",
                            source="thuml/HashNet (gamma 0.005, power 0.5)"),
        "beta_every": Param(200, "iteration continuation: update beta every N iterations",
                            source="thuml/HashNet (step_size 200)"),
        "beta_epoch_step": Param(None, "epoch continuation: E in sqrt(floor(epoch / E) + 1); "
                                 "default 20 scaled from 150 epochs to the run's epochs",
                                 source="DeepHash-pytorch (step_continuation 20 of 150 epochs)"),
    }
    # The authors' PyTorch release (github.com/thuml/HashNet, pytorch/src/train.py), whose
    # continuation (iteration form) is this method's default: SGD, momentum 0.9, weight decay
    # 5e-4, backbone lr 3e-4 and hash layer 10x that (3e-3), lr x0.5 every 2000 of 10000
    # iterations (= every 20% of training), two 36-image streams per step (batch 72), pair sigmoid
    # alpha = 10 / K (`sigmoid_param`; 0.625 at 16 bits). The
    # loop's SGD has no Nesterov term (the authors' code sets nesterov=True).
    search_space = {"lr": SHARED_SEARCH["lr"], "alpha": ("log", 0.01, 1.0)}  # bench tune
    native = {"optimizer": "sgd", "lr": 3e-3, "backbone_lr_scale": 0.1, "momentum": 0.9,
              "weight_decay": 5e-4, "batch_size": 72, "lr_schedule": "step", "lr_step_at": 0.2,
              "lr_gamma": 0.5, "alpha": ALPHA_RULE}
    native_source = (
        "authors' PyTorch release thuml/HashNet (the paper's own code, chosen over the RMSprop lr "
        "1e-5 / batch 64 of DeepHash-pytorch because it matches the paper's iteration continuation "
        "and SGD fine-tuning): SGD momentum 0.9 (no Nesterov here), weight decay 5e-4, hash layer "
        "lr 3e-3 = 10x backbone lr 3e-4, lr x0.5 every 20% of training, batch 72 (2 x 36), "
        "alpha = 10 / K"
    )

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        super().__init__(config, task)
        step = config.get("beta_epoch_step")
        self.epoch_step = int(step) if step is not None else default_epoch_step(task.epochs)
        self.alpha = resolve_alpha(config["alpha"], task.bits)
        self.beta = 1.0

    @classmethod
    def resolve_default(cls, key: str, value: Any, task: Task) -> Any:
        return resolve_alpha(value, task.bits) if key == "alpha" else value

    @classmethod
    def check(cls, config: dict[str, Any], task: Task) -> None:
        resolve_alpha(config["alpha"], task.bits)
        step = config.get("beta_epoch_step")
        if step is not None and (not isinstance(step, int) or isinstance(step, bool) or step < 1):
            raise UserError(f"hashnet: beta_epoch_step={step!r} must be a positive integer (or unset)")
        if int(config["beta_every"]) < 1:
            raise UserError(f"hashnet: beta_every={config['beta_every']} must be a positive integer")

    def current_beta(self, step: int, epoch: int) -> float:
        """beta for the 0-based global step `step` in the 0-based epoch `epoch`."""
        form = self.config["continuation"]
        if form == "iteration":
            return iteration_beta(step + 1, float(self.config["beta_gamma"]), int(self.config["beta_every"]))
        if form == "epoch":
            return epoch_beta(epoch, self.epoch_step)
        return 1.0

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: Any) -> torch.Tensor:
        self.beta = self.current_beta(ctx.step, ctx.epoch)
        ctx.log("beta", self.beta)
        u = torch.tanh(self.beta * h)
        return hashnet_pair_loss(u, labels, self.alpha)

    def on_epoch_end(self, epoch: int, codes: Any, labels: Any, ctx: Any) -> dict[str, Any]:
        return {"beta": self.beta}

    def record(self) -> dict[str, Any]:
        return {"continuation": self.config["continuation"], "final_beta": self.beta, "alpha": self.alpha,
                "beta_epoch_step": self.epoch_step if self.config["continuation"] == "epoch" else None}
