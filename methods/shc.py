"""SHC: Deep Hashing with Semantic Hash Centers (Chen, Liu, Zhou, Ma, Chen and Zhang,
arXiv 2507.08404, ACM TOIS 2025). A three-stage pipeline; stages 1-2 run in `setup`:

0. Start. The official pipeline first pushes CSQ's centers to the distance bound with the MDS
   generator: `methods.centers.mds_centers` (Hadamard rows, random balanced rows beyond 2K,
   then l_p-box ADMM sweeps) towards d_min = d*, the Gilbert-Varshamov target
   `gilbert_varshamov_target` (the smallest d with sum_{j<d} binom(K, j) >= 2^K / C; SHC's
   official d_min). Where the generator falls short of d* (it has not at C <= 555, K >= 16 on
   seed 0) d_min is relaxed to what it reached, and the record says so; a `min_distance` set
   by hand that the generator cannot reach is refused.
1. Class similarity. A classifier (a fresh backbone of the run's kind + a linear head; softmax
   cross-entropy, or per-class BCE for multi-label data; its own Adam optimizer) is trained on
   the training split, on one CPU thread whatever the run's thread count (a float32 head with
   few output rows otherwise changes bits between thread counts, and with them the centers).
   For every training sample, the softmax over classes with the sample's own class(es) masked
   out is added to the row of its (each of its) true class(es). The C x C sum P is
   symmetrised, (P + P^T) / 2, every row's off-diagonal entries are centred and scaled into
   [-1, 1] (`row_normalisation`: `centre_maxabs` subtracts the row mean and divides by the
   largest absolute deviation; `minmax` maps the row's min..max onto -1..1), and the diagonal
   is set to 1.
2. Semantic centers. H in {-1,+1}^{C x K} minimising ||S - (1/K) H H^T||_F^2 subject to every
   pair of rows being at least d_min bits apart, found by steepest-descent single-bit flips
   from the stage-0 centers: each step takes the flip with the most negative objective change
   (near-ties within 1e-9 go to the lowest row, then bit: `argmin_near_tie`) among those that
   keep every pairwise distance >= d_min (all C x K flips scored at once, kept up to date
   after each flip in O(C K)), until no flip improves or `max_flips` is spent.
3. Hash network. CSQ's loss against the fixed optimised centers (this class is a CSQ).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UserError
from methods.base import HashMethod, Param, Task, TrainContext
from methods.centers import (
    DEFAULT_PATIENCE,
    argmin_near_tie,
    gilbert_varshamov_target,
    hamming_distances,
    mds_centers,
    min_pairwise_distance,
)
from methods.csq import CSQ

NORMALISATIONS = ("centre_maxabs", "minmax")
CLASSIFIER_THREADS = 1  # stage 1's thread count, whatever the run's (see the module docstring)


# ----------------------------------------------------------------------------- stage 1
@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run a block at a fixed torch CPU thread count, restoring the previous one after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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

    The same steps as recomputing `flip_deltas` and `blocked_flips` before every flip (the
    tests check it), in O(C K) per flip: S~H, G'H (G' = HH^T off the diagonal, integers), the
    pairwise distances, the "tight" pairs (<= d_min apart) and their sums T H are updated for
    the one changed row and column. Returns the centers (int8) and a summary: objective
    before/after, flips made, whether a local minimum was reached (no improving feasible flip)
    and the achieved minimum and mean distance."""
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
    sym = np.asarray(similarity, dtype=np.float64)
    sym = (sym + sym.T) / 2
    np.fill_diagonal(sym, 0.0)
    gram = h @ h.T
    np.fill_diagonal(gram, 0)
    s_h, g_h = sym @ h, gram @ h
    distances = (bits - h @ h.T) // 2
    np.fill_diagonal(distances, bits + 1)
    tight = distances <= min_distance
    tight_count = tight.sum(axis=1)
    tight_h = tight.astype(np.int64) @ h
    constant = 8.0 * (count - 1) / bits**2
    flips = 0
    converged = False
    while flips < budget:
        deltas = (8.0 / bits) * h * (s_h - g_h / bits) + constant
        deltas[tight_count[:, None] - h * tight_h > 0] = np.inf  # a tight partner differs there
        index = argmin_near_tie(deltas)  # near-ties: lowest (row, bit), the same on every CPU
        if not deltas.flat[index] < -1e-12:
            converged = True
            break
        row, bit = divmod(index, bits)
        old_row = h[row].copy()
        old_bit = old_row[bit]
        column = h[:, bit].copy()
        change = -2 * old_bit * column  # new - old of G[row, j], j != row
        change[row] = 0
        old_gram = gram[:, row].copy()
        gram[row, :] += change
        gram[:, row] += change
        h[row, bit] = -old_bit
        s_h[:, bit] -= 2 * old_bit * sym[:, row]
        g_h += gram[:, row, None] * h[row] - old_gram[:, None] * old_row
        g_h[row] += change @ h
        step = old_bit * column  # distances to the flipped row: +1 where the bits were equal
        step[row] = 0
        distances[row, :] += step
        distances[:, row] += step
        was = tight[row].copy()
        now = distances[row] <= min_distance
        tight[row, :] = now
        tight[:, row] = now
        tight_count += now.astype(np.int64) - was
        tight_count[row] = now.sum()
        tight_h += now[:, None] * h[row] - was[:, None] * old_row
        tight_h[row] = now.astype(np.int64) @ h
        flips += 1
    summary = {
        "objective_before": before, "objective_after": center_objective(similarity, h),
        "flips": flips, "max_flips": budget, "converged": converged,
        "min_distance_required": int(min_distance), "start_min_distance": int(start_distance),
        "achieved_min_distance": int(min_pairwise_distance(h)),
        "achieved_mean_distance": round(_mean_distance(h), 4),
    }
    return h.astype(np.int8), summary


def _mean_distance(centers: np.ndarray) -> float:
    distances = hamming_distances(centers, centers)
    upper = distances[np.triu_indices(len(centers), k=1)]
    return float(upper.mean()) if upper.size else 0.0


def plotkin_limit(bits: int, distance: int) -> int | None:
    """Most codewords of K bits pairwise >= d apart when 2d > K (Plotkin: 2 floor(d / (2d - K)));
    None when the bound says nothing (2d <= K)."""
    return 2 * (distance // (2 * distance - bits)) if 2 * distance > bits else None


def resolve_min_distance(task: Task, config: dict[str, Any]) -> tuple[int, str]:
    """d_min and how it was chosen; refuses infeasible settings."""
    if 2**task.bits < task.num_classes:
        raise UserError(
            f"shc: {task.num_classes} classes cannot get distinct {task.bits}-bit centers "
            f"(2^{task.bits} < {task.num_classes}); use more bits"
        )
    chosen = config.get("min_distance")
    if chosen is None:
        return gilbert_varshamov_target(task.num_classes, task.bits), "gilbert-varshamov d*"
    chosen = int(chosen)
    if not 1 <= chosen <= task.bits:
        raise UserError(f"shc: min_distance={chosen} must be between 1 and bits={task.bits}")
    limit = plotkin_limit(task.bits, chosen)
    if limit is not None and task.num_classes > limit:
        raise UserError(
            f"shc: min_distance={chosen} is impossible for {task.num_classes} centers of {task.bits} "
            f"bits (Plotkin: at most {limit} codewords); use at most {task.bits // 2}"
        )
    return chosen, "set"


def start_centers(task: Task, config: dict[str, Any], min_distance: int) -> tuple[np.ndarray, dict[str, Any]]:
    """Stage 0: MDS centers pushed towards d_min (seeded by the run's seed). Returns the
    centers and the generator's summary; see `SHC.setup` for what happens when it falls short."""
    rng = np.random.default_rng(task.seed)
    return mds_centers(task.num_classes, task.bits, rng, target=min_distance,
                       max_sweeps=int(config["mds_sweeps"]), patience=int(config["admm_patience"]))


# ----------------------------------------------------------------------------- the method
class SHC(CSQ):
    name = "shc"
    summary = "Semantic Hash Centers: MDS start at d*, classifier similarity -> optimised centers -> CSQ loss"
    reference = (
        "Chen, Liu, Zhou, Ma, Chen and Zhang, Deep Hashing with Semantic Hash Centers for Image "
        "Retrieval, ACM TOIS 2025 (arXiv 2507.08404)"
    )
    params = {
        **{key: value for key, value in CSQ.params.items() if key != "center_tries"},
        "classifier_epochs": Param(5, "stage 1: epochs of classifier training on the train split"),
        "classifier_lr": Param(1e-3, "stage 1: Adam learning rate of the classifier"),
        "row_normalisation": Param("centre_maxabs", "stage 1: how each similarity row is put into "
                                   "[-1, 1]", choices=NORMALISATIONS),
        "min_distance": Param(None, "stages 0/2: minimum pairwise Hamming distance d_min (default: "
                              "the Gilbert-Varshamov target d*, SHC's official d_min)"),
        "max_flips": Param(None, "stage 2: bit-flip budget (default 10 * C * K)"),
        "mds_sweeps": Param(50, "stage 0: most Gauss-Seidel sweeps of the MDS generator",
                            source="official MDS code"),
        "admm_patience": Param(DEFAULT_PATIENCE, "stage 0: end a center's ADMM after this many "
                               "outer iterations without a change of sign(b), from rho >= 1e-3 "
                               "(0: the official stopping rules only)", source="not in paper"),
    }
    # Stage 3 is CSQ training against fixed centers; it uses the CSQ re-implementation's settings.
    native = dict(CSQ.native)
    native_source = ("stage 3 trains as CSQ: " + CSQ.native_source + " (the SHC paper's own stage-3 "
                     "optimizer is not reproduced here); stage 1: Adam lr 1e-3, 5 epochs")

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        HashMethod.__init__(self, config, task)  # not CSQ's: the centers come from setup
        self.min_distance, self.min_distance_rule = resolve_min_distance(task, config)
        self.centers: torch.Tensor | None = None
        self.similarity: np.ndarray | None = None
        self.start_summary: dict[str, Any] = {}
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
        for key in ("mds_sweeps", "admm_patience"):
            value = config[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UserError(f"shc: {key}={value!r} must be an integer >= 0")
        resolve_min_distance(task, config)

    # -- stage 0
    def push_start(self) -> np.ndarray:
        """MDS centers at d_min; d_min relaxed to the achieved distance when the default d* is
        not reached, refused when a hand-set min_distance is not."""
        start, summary = start_centers(self.task, self.config, self.min_distance)
        self.start_summary = summary
        if not summary["reached"] and self.task.num_classes > 1:
            achieved = int(summary["achieved_min_distance"])
            if self.min_distance_rule == "set" or achieved < 1:
                raise UserError(
                    f"shc: the MDS stage reached only {achieved} bits of min_distance="
                    f"{self.min_distance} ({self.task.num_classes} classes, {self.task.bits} bits); "
                    f"lower min_distance or use more bits"
                )
            self.min_distance_rule += f", relaxed from {self.min_distance} to the MDS stage's {achieved}"
            self.min_distance = achieved
        return start

    # -- stage 1
    def train_classifier(self, ctx: TrainContext) -> tuple[np.ndarray, np.ndarray]:
        """Train backbone + linear head on the training split; return (logits, labels) of the
        training split, encoded without augmentation. Runs on CLASSIFIER_THREADS threads."""
        with torch_threads(CLASSIFIER_THREADS):
            return self._train_classifier(ctx)

    def _train_classifier(self, ctx: TrainContext) -> tuple[np.ndarray, np.ndarray]:
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
                                   "train_accuracy": accuracy, "threads": CLASSIFIER_THREADS,
                                   "accuracy_kind": "bit-wise" if self.task.multi_label else "top-1"}
        return logits, labels

    def setup(self, ctx: TrainContext) -> None:
        started = time.perf_counter()
        start = self.push_start()
        ctx.stage_times["mds_start"] = time.perf_counter() - started

        started = time.perf_counter()
        logits, labels = self.train_classifier(ctx)
        self.similarity = normalise_similarity(masked_softmax_sums(logits, labels),
                                               self.config["row_normalisation"])
        ctx.stage_times["classifier"] = time.perf_counter() - started

        started = time.perf_counter()
        centers, summary = optimise_centers(self.similarity, start, self.min_distance,
                                            self.config.get("max_flips"))
        self.set_centers(centers, np.random.default_rng(self.task.seed))
        ctx.stage_times["centers"] = time.perf_counter() - started
        self.stage_summary = {**summary, "d_star": gilbert_varshamov_target(self.task.num_classes,
                                                                           self.task.bits),
                              "min_distance_rule": self.min_distance_rule,
                              "start": "mds l_p-box ADMM centers", "mds": self.start_summary}

    def record(self) -> dict[str, Any]:
        # Full precision (JSON floats round-trip exactly): stage 2 is a greedy search whose
        # path a 6-digit rounding can change, and the record must let anyone redo it.
        similarity = None if self.similarity is None else self.similarity.tolist()
        return {
            **(super().record() if self.centers is not None else {}),
            "similarity": {"measure": "classifier softmax with own class masked, summed per class, "
                                      f"symmetrised, rows {self.config['row_normalisation']}",
                           "matrix": similarity},
            "classifier": self.classifier_summary,
            "center_optimisation": self.stage_summary,
        }
