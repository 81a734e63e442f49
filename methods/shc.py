"""SHC: Deep Hashing with Semantic Hash Centers (Chen, Liu, Zhou, Ma, Chen and Zhang,
arXiv 2507.08404, ACM TOIS 2025). A three-stage pipeline; stages 1-2 run in `setup`:

1. Class similarity. A classifier (a fresh backbone of the run's kind + a linear head; softmax
   cross-entropy, or per-class BCE for multi-label data; its own Adam optimizer) is trained on
   the training split. For every training sample, the softmax over classes with the sample's own
   class(es) masked out is added to the row of its (each of its) true class(es). The C x C sum
   P is symmetrised, (P + P^T) / 2, every row's off-diagonal entries are centred and scaled
   into [-1, 1] (`row_normalisation`: `centre_maxabs` subtracts the row mean and divides by the
   largest absolute deviation; `minmax` maps the row's min..max onto -1..1), and the diagonal is
   set to 1.
2. Semantic centers. H in {-1,+1}^{C x K} minimising ||S - (1/K) H H^T||_F^2 subject to every
   pair of rows being at least d_min bits apart, found by steepest-descent single-bit flips
   from the CSQ centers (Hadamard rows): each step takes the flip with the most negative
   objective change among those that keep every pairwise distance >= d_min, computed for all
   C x K flips at once, until no flip improves or `max_flips` is spent.
   d_min (unless set) is the Gilbert-Varshamov distance for C codewords of length K: the largest
   d with 2^K / sum_{i<d} binom(K, i) >= C, i.e. the largest distance for which the GV bound
   guarantees that a code of C words exists. The run is refused when that is < 1 (2^K < C) or
   when the start set cannot meet d_min.
3. Hash network. CSQ's loss against the fixed optimised centers (this class is a CSQ).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UserError
from methods.base import Param, Task, TrainContext
from methods.centers import bernoulli_centers, hadamard_centers, hamming_distances, min_pairwise_distance
from methods.csq import CSQ

NORMALISATIONS = ("centre_maxabs", "minmax")


# ----------------------------------------------------------------------------- stage 1
def gilbert_varshamov_distance(num_codes: int, bits: int) -> int:
    """Largest d in 1..K with 2^K >= C * sum_{i<d} binom(K, i) (exact integers); 0 if none,
    i.e. when even d = 1 (C distinct words) is impossible because 2^K < C."""
    best = 0
    volume = 0  # sum_{i<d} binom(K, i)
    for d in range(1, bits + 1):
        volume += math.comb(bits, d - 1)
        if 2**bits >= num_codes * volume:
            best = d
        else:
            break
    return best


def masked_softmax_sums(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """P [C, C]: row c sums, over the samples of class c, the softmax over classes with the
    sample's own (positive) classes masked out. A sample positive for every class (nothing
    left to spread over) or for none adds nothing."""
    logits = np.asarray(logits, dtype=np.float64)
    positive = np.asarray(labels) > 0
    masked = np.where(positive, -np.inf, logits)
    usable = (~positive).any(axis=1) & positive.any(axis=1)
    masked[~usable] = 0.0
    masked = masked - masked.max(axis=1, keepdims=True)
    weights = np.exp(masked)
    probabilities = weights / weights.sum(axis=1, keepdims=True)
    probabilities[~usable] = 0.0
    return positive.T.astype(np.float64) @ probabilities


def normalise_similarity(sums: np.ndarray, normalisation: str = "centre_maxabs") -> np.ndarray:
    """Symmetrise P, centre and scale each row's off-diagonal entries into [-1, 1], diagonal 1."""
    if normalisation not in NORMALISATIONS:
        raise UserError(f"unknown row_normalisation '{normalisation}'; valid: {', '.join(NORMALISATIONS)}")
    symmetric = (np.asarray(sums, dtype=np.float64) + np.asarray(sums, dtype=np.float64).T) / 2
    count = len(symmetric)
    similarity = np.eye(count)
    off = ~np.eye(count, dtype=bool)
    for row in range(count):
        values = symmetric[row, off[row]]
        if values.size == 0:
            continue
        if normalisation == "centre_maxabs":
            centred = values - values.mean()
            scale = np.abs(centred).max()
            scaled = centred / scale if scale > 0 else np.zeros_like(centred)
        else:
            low, high = values.min(), values.max()
            scaled = 2 * (values - low) / (high - low) - 1 if high > low else np.zeros_like(values)
        similarity[row, off[row]] = scaled
    return similarity


# ----------------------------------------------------------------------------- stage 2
def center_objective(similarity: np.ndarray, centers: np.ndarray) -> float:
    """||S - (1/K) H H^T||_F^2."""
    centers = np.asarray(centers, dtype=np.float64)
    gram = centers @ centers.T / centers.shape[1]
    return float(((np.asarray(similarity, dtype=np.float64) - gram) ** 2).sum())


def flip_deltas(similarity: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Objective change [C, K] of flipping each single bit h_ik.

    With R = S - G/K (G = H H^T) and its symmetric part R~, flipping h_ik changes G_ij and G_ji
    by -2 h_ik h_jk for every j != i, so the change is
        (8 / K) h_ik sum_{j != i} R~_ij h_jk + 8 (C - 1) / K^2.
    (The antisymmetric part of S adds a constant to the objective and never changes deltas.)"""
    h = np.asarray(centers, dtype=np.float64)
    count, bits = h.shape
    s = np.asarray(similarity, dtype=np.float64)
    residual = (s + s.T) / 2 - h @ h.T / bits
    np.fill_diagonal(residual, 0.0)
    return (8.0 / bits) * h * (residual @ h) + 8.0 * (count - 1) / bits**2


def blocked_flips(centers: np.ndarray, min_distance: int) -> np.ndarray:
    """[C, K] True where flipping h_ik would bring some pair below `min_distance` bits: a
    partner j already at distance <= d_min that differs from row i at bit k."""
    h = np.asarray(centers, dtype=np.int64)
    distances = hamming_distances(h, h)
    tight = distances <= min_distance
    np.fill_diagonal(tight, False)
    tight = tight.astype(np.int64)
    differing = (tight.sum(axis=1, keepdims=True) - h * (tight @ h)) // 2  # tight partners with h_jk != h_ik
    return differing > 0


def optimise_centers(similarity: np.ndarray, start: np.ndarray, min_distance: int,
                     max_flips: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Steepest-descent bit flips on ||S - HH^T/K||^2 keeping every pair >= min_distance apart.

    Returns the centers (int8) and a summary: objective before/after, flips made, whether a
    local minimum was reached (no improving feasible flip) and the achieved minimum distance."""
    h = np.array(start, dtype=np.int64)
    count, bits = h.shape
    start_distance = min_pairwise_distance(h)
    if count > 1 and start_distance < min_distance:
        raise UserError(
            f"shc: the start centers are only {start_distance} bits apart, below d_min={min_distance} "
            f"({count} classes, {bits} bits); lower min_distance or use more bits"
        )
    budget = 10 * count * bits if max_flips is None else int(max_flips)
    before = center_objective(similarity, h)
    flips = 0
    converged = False
    while flips < budget:
        deltas = flip_deltas(similarity, h)
        deltas[blocked_flips(h, min_distance)] = np.inf
        index = int(np.argmin(deltas))
        if not deltas.flat[index] < -1e-12:
            converged = True
            break
        row, bit = divmod(index, bits)
        h[row, bit] = -h[row, bit]
        flips += 1
    summary = {
        "objective_before": before, "objective_after": center_objective(similarity, h),
        "flips": flips, "max_flips": budget, "converged": converged,
        "min_distance_required": int(min_distance), "start_min_distance": int(start_distance),
        "achieved_min_distance": int(min_pairwise_distance(h)),
    }
    return h.astype(np.int8), summary


def start_centers(task: Task, config: dict[str, Any], min_distance: int) -> tuple[np.ndarray, str]:
    """The CSQ centers CSQ would use for this task (same seed); if they miss d_min (only possible
    with the Bernoulli fallback, C > 2K or K not a power of two), Bernoulli sets resampled for
    d_min. Raises UserError when neither meets d_min."""
    rng = np.random.default_rng(task.seed)
    tries = int(config["center_tries"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        centers = hadamard_centers(task.num_classes, task.bits, rng, tries)
        if task.num_classes < 2 or min_pairwise_distance(centers) >= min_distance:
            return centers, "csq"
        centers = bernoulli_centers(task.num_classes, task.bits, rng, min_distance, tries)
    if min_pairwise_distance(centers) >= min_distance:
        return centers, "bernoulli resampled for d_min"
    raise UserError(
        f"shc: found no start set of {task.num_classes} centers of {task.bits} bits at least "
        f"{min_distance} bits apart (CSQ centers, then {tries} Bernoulli draws); lower "
        f"min_distance or use more bits"
    )


def resolve_min_distance(task: Task, config: dict[str, Any]) -> tuple[int, str]:
    """d_min and how it was chosen; refuses infeasible settings."""
    bound = gilbert_varshamov_distance(task.num_classes, task.bits)
    if bound < 1:
        raise UserError(
            f"shc: {task.num_classes} classes cannot get distinct {task.bits}-bit centers "
            f"(2^{task.bits} < {task.num_classes}); use more bits"
        )
    chosen = config.get("min_distance")
    if chosen is None:
        return bound, "gilbert-varshamov"
    chosen = int(chosen)
    if not 1 <= chosen <= task.bits:
        raise UserError(f"shc: min_distance={chosen} must be between 1 and bits={task.bits}")
    return chosen, "set"


# ----------------------------------------------------------------------------- the method
class SHC(CSQ):
    name = "shc"
    summary = "Semantic Hash Centers: classifier similarity -> optimised centers -> CSQ loss"
    reference = (
        "Chen, Liu, Zhou, Ma, Chen and Zhang, Deep Hashing with Semantic Hash Centers for Image "
        "Retrieval, ACM TOIS 2025 (arXiv 2507.08404)"
    )
    params = {
        **CSQ.params,
        "classifier_epochs": Param(5, "stage 1: epochs of classifier training on the train split"),
        "classifier_lr": Param(1e-3, "stage 1: Adam learning rate of the classifier"),
        "row_normalisation": Param("centre_maxabs", "stage 1: how each similarity row is put into "
                                   "[-1, 1]", choices=NORMALISATIONS),
        "min_distance": Param(None, "stage 2: minimum pairwise Hamming distance d_min "
                              "(default: Gilbert-Varshamov bound for C codewords of K bits)"),
        "max_flips": Param(None, "stage 2: bit-flip budget (default 10 * C * K)"),
    }
    # Stage 3 is CSQ training against fixed centers; it uses the CSQ re-implementation's settings.
    native = dict(CSQ.native)
    native_source = ("stage 3 trains as CSQ: " + CSQ.native_source + " (the SHC paper's own stage-3 "
                     "optimizer is not reproduced here); stage 1: Adam lr 1e-3, 5 epochs")

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        super().__init__(config, task)
        self.min_distance, self.min_distance_rule = resolve_min_distance(task, config)
        start, origin = start_centers(task, config, self.min_distance)
        self.set_centers(start, np.random.default_rng(task.seed))
        self.start_origin = origin
        self.similarity: np.ndarray | None = None
        self.stage_summary: dict[str, Any] = {}
        self.classifier_summary: dict[str, Any] = {}

    @classmethod
    def check(cls, config: dict[str, Any], task: Task) -> None:
        if int(config["classifier_epochs"]) < 1:
            raise UserError(f"shc: classifier_epochs={config['classifier_epochs']} must be >= 1")
        for key, lowest in (("max_flips", 0), ("min_distance", 1)):
            value = config.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < lowest):
                raise UserError(f"shc: {key}={value!r} must be an integer >= {lowest} (or unset)")
        min_distance, _ = resolve_min_distance(task, config)
        start_centers(task, config, min_distance)

    # -- stage 1
    def train_classifier(self, ctx: TrainContext) -> tuple[np.ndarray, np.ndarray]:
        """Train backbone + linear head on the training split; return (logits, labels) of the
        training split, encoded without augmentation."""
        backbone = ctx.new_backbone()
        classifier = nn.Sequential(backbone, nn.Linear(backbone.feature_dim, self.task.num_classes))
        classifier = classifier.to(ctx.device)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=float(self.config["classifier_lr"]))
        generator = torch.Generator().manual_seed(self.task.seed)
        losses = []
        for _ in range(int(self.config["classifier_epochs"])):
            classifier.train()
            epoch_losses = []
            for _, images, labels in ctx.train_batches(generator):
                logits = classifier(images)
                if self.task.multi_label:
                    loss = F.binary_cross_entropy_with_logits(logits, labels)
                else:
                    loss = F.cross_entropy(logits, labels.argmax(dim=1))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                epoch_losses.append(float(loss.detach()))
            losses.append(float(np.mean(epoch_losses)) if epoch_losses else float("nan"))
        indices = ctx.train_indices
        logits = ctx.encode_with(classifier, indices)
        labels = ctx.labels_of(indices)
        if self.task.multi_label:
            accuracy = float(((logits > 0) == (labels > 0)).mean())
        else:
            accuracy = float((logits.argmax(axis=1) == labels.argmax(axis=1)).mean())
        self.classifier_summary = {"epochs": len(losses), "loss_per_epoch": losses,
                                   "train_accuracy": accuracy,
                                   "accuracy_kind": "bit-wise" if self.task.multi_label else "top-1"}
        return logits, labels

    def setup(self, ctx: TrainContext) -> None:
        started = time.perf_counter()
        logits, labels = self.train_classifier(ctx)
        self.similarity = normalise_similarity(masked_softmax_sums(logits, labels),
                                               self.config["row_normalisation"])
        ctx.stage_times["classifier"] = time.perf_counter() - started

        started = time.perf_counter()
        max_flips = self.config.get("max_flips")
        centers, summary = optimise_centers(self.similarity, self.centers.cpu().numpy(),
                                            self.min_distance, max_flips)
        self.set_centers(centers, np.random.default_rng(self.task.seed))
        ctx.stage_times["centers"] = time.perf_counter() - started
        self.stage_summary = {**summary, "min_distance_rule": self.min_distance_rule,
                              "start": self.start_origin}

    def record(self) -> dict[str, Any]:
        similarity = None if self.similarity is None else self.similarity.round(6).tolist()
        return {
            **super().record(),
            "similarity": {"measure": "classifier softmax with own class masked, summed per class, "
                                      f"symmetrised, rows {self.config['row_normalisation']}",
                           "matrix": similarity},
            "classifier": self.classifier_summary,
            "center_optimisation": self.stage_summary,
        }
