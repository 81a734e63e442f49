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
   cross-entropy, or per-class BCE for multi-label data under `multi_label: csq_sum`) is trained
   on the training split with the run's own optimizer and schedule (the official code trains it
   as it trains stage 3) for `classifier_epochs` (default: the stage-3 epochs, the official 1:1
   ratio), on one CPU thread whatever the run's thread count (a float32 head with few output
   rows otherwise changes bits between thread counts, and with them the centers).
   For every training sample, the softmax over classes with the sample's own class(es) masked
   out is added to the row of its (each of its) true class(es). The C x C sum P is
   symmetrised, (P + P^T) / 2, and every row is centred and scaled into [-1, 1]
   (`row_normalisation`: `official` subtracts the mean of the whole row, its zero diagonal
   included, and divides by the row's largest absolute deviation, as the official code does;
   `centre_maxabs` does the same over the off-diagonal entries only; `minmax` maps the
   off-diagonal min..max onto -1..1); the diagonal is then set to 1.
   Multi-label data (`multi_label`): `argmax` (official, `label2center`) treats a sample as its
   first positive class in stages 1 and 3; `csq_sum` credits every positive class and trains
   towards CSQ's sign-of-sum center.
2. Semantic centers. H in {-1,+1}^{C x K} minimising ||S - (1/K) H H^T||_F^2 subject to every
   pair of rows being at least d_min bits apart, found by steepest-descent single-bit flips
   from the stage-0 centers: each step takes the flip with the most negative objective change
   (near-ties within 1e-9 go to the lowest row, then bit: `argmin_near_tie`) among those that
   keep every pairwise distance >= d_min (all C x K flips scored at once, kept up to date
   after each flip in O(C K)), until no flip improves or `max_flips` is spent.
3. Hash network. CSQ's loss against the fixed optimised centers (this class is a CSQ), with
   SHC's own optimizer under the native protocol (RMSprop 1e-4, weight decay 1e-5, cosine to
   1e-7, batch 64: the official run.py / train.py).
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
    require_distinct_codes,
)
from methods.csq import CSQ

NORMALISATIONS = ("official", "centre_maxabs", "minmax")
MULTI_LABEL_RULES = ("argmax", "csq_sum")
_OFFICIAL = "official SHC code (cc752424640/Deep-Hashing-with-Semantic-Hash-Centers-for-Image-Retrieval)"
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


def argmax_labels(labels: np.ndarray) -> np.ndarray:
    """The official multi-label rule: each sample as its first positive class (one-hot); a
    sample without a label stays empty."""
    labels = np.asarray(labels)
    one_hot = np.zeros_like(labels)
    rows = np.flatnonzero((labels > 0).any(axis=1))
    one_hot[rows, (labels[rows] > 0).argmax(axis=1)] = 1
    return one_hot


def normalise_similarity(sums: np.ndarray, normalisation: str = "official") -> np.ndarray:
    """Symmetrise P, centre and scale each row into [-1, 1], then set the diagonal to 1.
    `official` takes the row's mean and largest deviation over the whole row (its zero
    diagonal included); the two alternatives over the off-diagonal entries only."""
    if normalisation not in NORMALISATIONS:
        raise UserError(f"unknown row_normalisation '{normalisation}'; valid: {', '.join(NORMALISATIONS)}")
    symmetric = (np.asarray(sums, dtype=np.float64) + np.asarray(sums, dtype=np.float64).T) / 2
    count = len(symmetric)
    similarity = np.eye(count)
    off = ~np.eye(count, dtype=bool)
    for row in range(count):
        if normalisation == "official":
            centred = symmetric[row] - symmetric[row].mean()
            scale = np.abs(centred).max()
            similarity[row] = centred / scale if scale > 0 else np.zeros_like(centred)
            similarity[row, row] = 1.0
            continue
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
    require_distinct_codes("shc", task.num_classes, task.bits)
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
        "classifier_epochs": Param(None, "stage 1: classifier epochs (None: the stage-3 epochs, "
                                   "the official 1:1 ratio); optimizer and schedule are the run's",
                                   source=_OFFICIAL + ": classify_epoch = epochs, same optimizer"),
        "row_normalisation": Param("official", "stage 1: how each similarity row is put into "
                                   "[-1, 1]", choices=NORMALISATIONS,
                                   source=_OFFICIAL + " (GenerateSimilarityMatrix.py)"),
        "multi_label": Param("csq_sum", "multi-label rule: argmax = first positive class in stages "
                             "1 and 3 (official); csq_sum = every positive class, CSQ's sign-of-sum "
                             "center", choices=MULTI_LABEL_RULES,
                             source="deviation: the official code uses the argmax class (native "
                                    "sets it); csq_sum treats multi-label data as CSQ and the "
                                    "other center methods here do"),
        "min_distance": Param(None, "stages 0/2: minimum pairwise Hamming distance d_min (default: "
                              "the Gilbert-Varshamov target d*, SHC's official d_min)"),
        "max_flips": Param(None, "stage 2: bit-flip budget (default 10 * C * K)",
                           source="deviation: the official stage 2 runs 30 x 3 ADMM-like sweeps and "
                                  "keeps the lowest objective; here steepest single-bit flips "
                                  "(objective / C^2 recorded on the official scale)"),
        "mds_sweeps": Param(50, "stage 0: most Gauss-Seidel sweeps of the MDS generator",
                            source="official MDS code"),
        "admm_patience": Param(DEFAULT_PATIENCE, "stage 0: end a center's ADMM after this many "
                               "outer iterations without a change of sign(b), from rho >= 1e-3 "
                               "(0: the official stopping rules only)", source="not in paper"),
    }
    # search_space: CSQ's (lr and lambda_q), inherited.
    native = {"optimizer": "rmsprop", "lr": 1e-4, "weight_decay": 1e-5, "lr_schedule": "cosine",
              "lr_min": 1e-7, "batch_size": 64, "multi_label": "argmax"}
    native_source = (_OFFICIAL + ", run.py / train.py: RMSprop lr 1e-4, weight decay 1e-5, cosine "
                     "to 1e-7 over the epochs (100 in the paper; the card's schedule here), batch 64; "
                     "stage 1 the same optimizer for as many epochs; multi-label: argmax class")

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
        epochs = config.get("classifier_epochs")
        if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1):
            raise UserError(f"shc: classifier_epochs={epochs!r} must be an integer >= 1 (or unset: "
                            f"the stage-3 epochs)")
        if config.get("multi_label", "csq_sum") not in MULTI_LABEL_RULES:
            raise UserError(f"shc: multi_label={config.get('multi_label')!r} is not valid; choose from "
                            f"{', '.join(MULTI_LABEL_RULES)}")
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

    # -- multi-label rule
    @property
    def multi_label_rule(self) -> str | None:
        """The rule in force (None on single-label data, where both rules agree)."""
        return str(self.config.get("multi_label", "csq_sum")) if self.task.multi_label else None

    def rule_labels(self, labels: np.ndarray) -> np.ndarray:
        return argmax_labels(labels) if self.multi_label_rule == "argmax" else np.asarray(labels)

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: Any) -> torch.Tensor:
        if self.multi_label_rule == "argmax":
            first = F.one_hot(labels.argmax(dim=1), labels.shape[1]).to(labels.dtype)
            labels = first * (labels > 0).any(dim=1, keepdim=True)
        return super().loss(h, labels, ctx)

    @property
    def classifier_epochs(self) -> int:
        chosen = self.config.get("classifier_epochs")
        return int(self.task.epochs if chosen is None else chosen)

    # -- stage 1
    def train_classifier(self, ctx: TrainContext) -> tuple[np.ndarray, np.ndarray]:
        """Train backbone + linear head on the training split; return (logits, labels) of the
        training split, encoded without augmentation. Runs on CLASSIFIER_THREADS threads."""
        with torch_threads(CLASSIFIER_THREADS):
            return self._train_classifier(ctx)

    def _train_classifier(self, ctx: TrainContext) -> tuple[np.ndarray, np.ndarray]:
        backbone = ctx.new_backbone()
        head = nn.Linear(backbone.feature_dim, self.task.num_classes).to(ctx.device)
        classifier = nn.Sequential(backbone, head)
        epochs = self.classifier_epochs
        optimizer, scheduler = ctx.new_optimizer(backbone, head, epochs)
        per_class = self.multi_label_rule == "csq_sum"  # BCE per class; else softmax CE
        generator = torch.Generator().manual_seed(self.task.seed)
        losses, steps = [], 0
        for _ in range(epochs):
            classifier.train()
            epoch_losses = []
            for _, images, labels in ctx.train_batches(generator):
                logits = classifier(images)
                if per_class:
                    loss = F.binary_cross_entropy_with_logits(logits, labels)
                else:  # argmax(labels): the class itself, or the official rule's first positive
                    loss = F.cross_entropy(logits, labels.argmax(dim=1))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                epoch_losses.append(float(loss.detach()))
            scheduler.step()
            losses.append(float(np.mean(epoch_losses)) if epoch_losses else float("nan"))
        indices = ctx.train_indices
        logits = ctx.encode_with(classifier, indices)
        labels = self.rule_labels(ctx.labels_of(indices))
        if per_class:
            accuracy = float(((logits > 0) == (labels > 0)).mean())
        else:
            accuracy = float((logits.argmax(axis=1) == labels.argmax(axis=1)).mean())
        self.classifier_summary = {"epochs": len(losses), "steps": steps,
                                   "epoch_rule": ("set" if self.config.get("classifier_epochs") is not None
                                                  else "stage-3 epochs (official 1:1)"),
                                   "optimizer": str(optimizer.__class__.__name__).lower(),
                                   "lr": float(self.config["lr"]),
                                   "lr_schedule": self.config["lr_schedule"],
                                   "multi_label_rule": self.multi_label_rule,
                                   "loss_per_epoch": losses,
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
        pairs = float(self.task.num_classes) ** 2
        summary["objective_per_c2_before"] = summary["objective_before"] / pairs  # official scale
        summary["objective_per_c2_after"] = summary["objective_after"] / pairs
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
            "multi_label_rule": self.multi_label_rule,
            "center_optimisation": self.stage_summary,
        }
