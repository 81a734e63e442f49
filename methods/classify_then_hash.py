"""Classify-then-hash: the reference row (issue 17), not a hashing method from a paper.

The shared backbone is trained as a plain classifier: an owned linear head over the backbone
features, softmax cross-entropy (single-label) or per-class BCE (multi-label). The retrieval
code of an image is the ±1 center of its predicted class, with the centers CSQ would use for
the same seed (Hadamard rows, or Bernoulli vectors); a multi-label image gets the center of
its predicted label set (logit > 0, else the top-1 class), composed like CSQ's (sign of the
sum, seeded tie-break). The shared linear hash layer is never used: it receives no gradient
and plays no part in retrieval. A table row for this method says what a hashing loss must beat
on the same backbone, data and protocol to be worth its trouble.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UserError
from methods.base import HARMONISED, SHARED_SEARCH, HashMethod, Param, Task, TrainContext
from methods.centers import (
    bernoulli_centers,
    hadamard_centers,
    min_pairwise_distance,
    multi_label_targets,
    require_distinct_codes,
)
from methods.csq import center_tensors


def classifier_loss(logits: torch.Tensor, labels: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Softmax cross-entropy on the class index (single-label) or the mean per-class binary
    cross-entropy with logits over the batch and classes (multi-label)."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, labels)
    return F.cross_entropy(logits, labels.argmax(dim=1))


def predicted_label_sets(logits: torch.Tensor) -> torch.Tensor:
    """Multi-hot predicted sets [B, C]: every class with logit > 0; a row with none positive
    takes its top-1 class (a code must come from some center)."""
    chosen = (logits > 0).to(logits.dtype)
    top1 = F.one_hot(logits.argmax(dim=1), logits.shape[1]).to(logits.dtype)
    empty = chosen.sum(dim=1, keepdim=True) == 0
    return torch.where(empty, top1, chosen)


def predicted_codes(logits: torch.Tensor, centers: torch.Tensor, tie_breaker: torch.Tensor,
                    multi_label: bool) -> torch.Tensor:
    """±1 codes [B, K]: the predicted class's center, or the CSQ-composed center of the
    predicted label set."""
    if multi_label:
        return multi_label_targets(predicted_label_sets(logits), centers, tie_breaker)
    return centers[logits.argmax(dim=1)]


class ClassifyThenHash(HashMethod):
    name = "classify-then-hash"
    summary = ("reference row (not a published method): backbone + linear classifier, code = "
               "center of the predicted class (hash layer unused)")
    reference = "issue 17: the classify-then-hash floor (no paper)"
    params = {
        "centers": Param("hadamard", "class centers: hadamard = CSQ's rule (rows of [H; -H], "
                         "Bernoulli at >= K/4 bits when C > 2K); bernoulli = i.i.d. ±1 rows "
                         "resampled for >= K/4 bits", choices=("hadamard", "bernoulli"),
                         source="CSQ (Yuan et al., CVPR 2020), as methods/csq.py"),
        "center_tries": Param(1000, "Bernoulli resampling attempts"),
    }
    # Not a published method: its "native" settings are the harmonised ones (issue 17's figure
    # used Adam 1e-3 with cosine annealing, the harmonised optimizer).
    native = dict(HARMONISED)
    native_source = "not a published method (reference row): harmonised settings"
    search_space = {"lr": SHARED_SEARCH["lr"]}
    retrieval_output = ("±1 center of the class predicted by the owned linear classifier on the "
                        "backbone features (multi-label: CSQ-composed center of the predicted set, "
                        "logit > 0, else top-1); the shared hash layer is unused")

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        super().__init__(config, task)
        # Same stream as CSQ's: for one seed, both rows use the same centers and tie-break.
        rng = np.random.default_rng(task.seed)
        tries = int(config["center_tries"])
        if config["centers"] == "hadamard":
            centers = hadamard_centers(task.num_classes, task.bits, rng, tries)
        else:
            centers = bernoulli_centers(task.num_classes, task.bits, rng, task.bits / 4, tries)
        device = task.device if task.device is not None else torch.device("cpu")
        self.centers, self.tie_breaker = center_tensors(centers, rng, task.bits, device)
        self.feature_dim: int | None = None

    @classmethod
    def check(cls, config: dict[str, Any], task: Task) -> None:
        require_distinct_codes("classify-then-hash", task.num_classes, task.bits)
        if int(config["center_tries"]) < 1:
            raise UserError(f"classify-then-hash: center_tries={config['center_tries']} must be >= 1")

    def setup(self, ctx: TrainContext) -> None:
        """The head's input width is the backbone's feature width, known only once the run's
        backbone exists. The loop builds the optimizer after `setup`, so the head created here
        is optimised; it is moved to the device here because the loop moved `owned` before."""
        dim = getattr(ctx.model.backbone, "feature_dim", None)
        if dim is None:
            raise UserError("classify-then-hash: the backbone does not declare feature_dim")
        self.feature_dim = int(dim)
        self.owned["classifier"] = nn.Linear(self.feature_dim, self.task.num_classes).to(ctx.device)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.owned["classifier"](features)

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        assert ctx.batch is not None
        return classifier_loss(self.logits(ctx.batch.features), labels, self.task.multi_label)

    def retrieval_code(self, h: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return predicted_codes(self.logits(features), self.centers, self.tie_breaker,
                               self.task.multi_label)

    def attack_output(self, h: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The predicted center is an argmax (no gradient): the attack pushes the expected
        center under the classifier, probabilities @ centers (sigmoid per class on multi-label
        data), as CgAT's spec for a classifier's code (methods-wave3.md section 7)."""
        logits = self.logits(features)
        weights = torch.sigmoid(logits) if self.task.multi_label else torch.softmax(logits, dim=1)
        return weights @ self.centers

    def class_centers(self) -> torch.Tensor:
        return self.centers

    def record(self) -> dict[str, Any]:
        centers = self.centers.to(torch.int8).cpu().numpy()
        return {
            "reference_row": True,
            "settings_used": {"centers": self.config["centers"], "feature_dim": self.feature_dim,
                              "loss": "binary cross-entropy per class" if self.task.multi_label
                              else "softmax cross-entropy",
                              "hash_layer": "unused (no gradient, not part of retrieval)",
                              "native_source": self.native_source},
            "centers_min_distance": min_pairwise_distance(centers),
            "centers": centers.tolist(),
            "tie_breaker": self.tie_breaker.to(torch.int8).cpu().tolist(),
        }
