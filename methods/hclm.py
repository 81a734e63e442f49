"""sHCLM: hash-consistent large-margin proxies (Morgado, Li, Pereira, Saberian and Vasconcelos,
"Deep Hashing with Hash-Consistent Large Margin Proxy Embeddings", IJCV 2020, arXiv 2007.13912).

Fixed proxies, built once in `setup` (all seeded):
1. Tammes: C points on the sphere of radius sqrt(K) with a large minimum pairwise distance. The
   paper uses a barrier method; here: projected Adam on a log-sum-exp soft maximum of the
   pairwise cosines (its temperature annealed from 5 to 500), each step re-projected onto the
   sphere, keeping the iterate with the largest true minimum distance.
2. ITQ: a rotation R minimising ||sign(VR) - VR||_F^2 by alternating B = sign(VR) and the
   orthogonal Procrustes solution (scipy), started from R = I so it can only improve on no
   rotation.
3. sign -> W in {-1,+1}^{C x K}; duplicate rows (possible when 2^K is not much above C) are
   repaired by flipping their least confident bits, and counted.
4. Semantic assignment (sHCLM): rows are given to classes by greedy pairwise swaps, from a
   random assignment, each time taking the swap that lowers sum_{i != j} s_ij (1 - w_i.w_j / K)
   most, until no swap lowers it. Single-label s_ij = exp(-|u_i - u_j|^2 / (2 kappa^2)) from
   class means u (kappa = the mean distance between class means). The paper's u are
   pretrained backbone features. `similarity_features: auto` (default) resolves, when the run's
   configuration is built, to `backbone` when the run is pretrained (the paper's choice: the
   features of the run's backbone before training) and to `pixels` otherwise (random features
   from scratch mean nothing; the class means of the training images, average-pooled to at
   most 16 x 16 per channel, unaugmented, stand in); the record keeps the resolved value.
   Multi-label s_ij = Dice co-occurrence of tags i and j in the
   training labels, 2 n_ij / (n_i + n_j).
Loss: nu = tanh(h), logits = nu W^T (no scale, no margin, no quantization). Single-label:
softmax cross-entropy. Multi-label: balanced BCE over tags, positive weight 1 - f_k and
negative weight f_k (f_k the tag's training frequency; the spec fixes the positive weight,
the negative one is this project's reading of "balanced": both sides of a tag weigh
f_k (1 - f_k) in expectation; `bce_negative_weight: one` keeps negatives at 1). Optional
all-triplets margin term on nu, off by default (lambda_triplet = 0). The paper gives no
training settings: runs use the harmonised ones.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import orthogonal_procrustes
from torch import nn

from bench.errors import UserError
from methods.base import HARMONISED, SHARED_SEARCH, HashMethod, Param, Task, TrainContext
from methods.centers import argmin_near_tie, distance_summary, require_distinct_codes

_SEED_TAG = 0x48434C4D  # "HCLM"


# ----------------------------------------------------------------------------- proxies
def tammes_points(num: int, dim: int, rng: np.random.Generator, steps: int = 400,
                  lr: float = 0.05) -> tuple[np.ndarray, dict[str, Any]]:
    """`num` unit vectors in R^dim with a large minimum pairwise distance (see module doc).
    Returns the points [num, dim] and the minimum distance at the random start and at the end."""
    x = rng.standard_normal((num, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    diagonal = np.diag_indices(num)

    def min_distance(points: np.ndarray) -> float:
        if num < 2:
            return 2.0
        cos = points @ points.T
        cos[diagonal] = -np.inf
        return float(np.sqrt(max(0.0, 2 - 2 * cos.max())))

    start = min_distance(x)
    best, best_x = -1.0, x
    m, v = np.zeros_like(x), np.zeros_like(x)
    betas = np.geomspace(5.0, 500.0, steps)
    for step in range(steps if num > 1 else 0):
        cos = x @ x.T
        cos[diagonal] = -np.inf  # exp(-inf) = 0: a point is not its own neighbour
        top = cos.max()
        current = float(np.sqrt(max(0.0, 2 - 2 * top)))  # this iterate's true minimum distance
        if current > best:
            best, best_x = current, x
        cos -= top
        cos *= betas[step]
        weights = np.exp(cos, out=cos)
        weights /= weights.sum()
        grad = 2 * weights @ x  # d/dx of the soft maximum (1/beta) log sum exp(beta cos_ij)
        grad -= (grad * x).sum(axis=1, keepdims=True) * x  # tangent to the sphere
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad**2
        rate = lr * 0.5 * (1 + np.cos(np.pi * step / steps)) + 1e-4
        x = x - rate * (m / (1 - 0.9 ** (step + 1))) / (np.sqrt(v / (1 - 0.999 ** (step + 1))) + 1e-12)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if min_distance(x) > best:
        best, best_x = min_distance(x), x
    return best_x, {"optimiser": "projected Adam on an annealed log-sum-exp soft max of cosines",
                    "steps": steps, "start_min_distance_unit": start, "min_distance_unit": best}


def itq_rotation(v: np.ndarray, iterations: int = 50) -> tuple[np.ndarray, dict[str, float]]:
    """ITQ (Gong and Lazebnik): alternate B = sign(VR) and R = argmin_R ||B - VR|| over
    orthogonal R (scipy's orthogonal Procrustes), from R = I. Errors are ||sign(VR) - VR||_F^2."""
    rotation = np.eye(v.shape[1])
    before = quantization_error(v)
    for _ in range(iterations):
        codes = np.where(v @ rotation >= 0, 1.0, -1.0)
        rotation, _ = orthogonal_procrustes(v, codes)
    return rotation, {"iterations": iterations, "error_no_rotation": before,
                      "error_rotated": quantization_error(v @ rotation)}


def quantization_error(v: np.ndarray) -> float:
    return float(((np.where(v >= 0, 1.0, -1.0) - v) ** 2).sum())


def distinct_signs(v: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """sign(v) as int8 rows, with repeated rows repaired: a later copy flips its least
    confident bit (smallest |v|) that gives a new row, else becomes a random unused row.
    Returns the codes and how many rows were repaired. Needs 2^K >= C."""
    codes = np.where(v >= 0, 1, -1).astype(np.int8)
    seen: set[bytes] = set()
    repaired = 0
    for row in range(len(codes)):
        key = codes[row].tobytes()
        if key in seen:
            repaired += 1
            for bit in np.argsort(np.abs(v[row])):
                trial = codes[row].copy()
                trial[bit] = -trial[bit]
                if trial.tobytes() not in seen:
                    codes[row] = trial
                    break
            else:
                while codes[row].tobytes() in seen:
                    codes[row] = np.where(rng.random(codes.shape[1]) < 0.5, 1, -1)
            key = codes[row].tobytes()
        seen.add(key)
    return codes, repaired


def assignment_objective(similarity: np.ndarray, codes: np.ndarray, perm: np.ndarray) -> float:
    """sum_{i != j} s_ij (1 - w_perm(i) . w_perm(j) / K) with s symmetrised."""
    s = _symmetric(similarity)
    w = codes[perm].astype(np.float64)
    return float((s * (1 - w @ w.T / codes.shape[1])).sum())


def _symmetric(similarity: np.ndarray) -> np.ndarray:
    s = np.asarray(similarity, dtype=np.float64)
    s = (s + s.T) / 2
    np.fill_diagonal(s, 0.0)
    return s


def swap_deltas(s: np.ndarray, m: np.ndarray, sm: np.ndarray,
                pair_term: np.ndarray | None = None) -> np.ndarray:
    """[C, C] change of the objective when classes a and b exchange proxies, all pairs at
    once. With S symmetric (zero diagonal), M_ij = w_perm(i).w_perm(j)/K and SM = S M:
    delta_ab = -2 (SM_ab + SM_ba - SM_aa - SM_bb) + 4 s_ab (1 - M_ab).
    `pair_term` is 4 S (1 - M) when the caller keeps it up to date."""
    diagonal = np.diag(sm)
    deltas = sm + sm.T
    deltas -= diagonal[:, None]
    deltas -= diagonal[None, :]
    deltas *= -2
    deltas += 4 * s * (1 - m) if pair_term is None else pair_term
    return deltas


def greedy_assignment(similarity: np.ndarray, codes: np.ndarray, rng: np.random.Generator,
                      max_swaps: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """sHCLM's assignment: perm[i] is the proxy row of class i. From a random permutation,
    apply the best improving swap until none improves (steepest descent over all C(C-1)/2
    swaps; S M is updated by a rank-one term per swap and recomputed before stopping)."""
    s = _symmetric(similarity)
    num, bits = codes.shape
    gram = codes.astype(np.float64) @ codes.T.astype(np.float64) / bits
    perm = rng.permutation(num)
    m = gram[np.ix_(perm, perm)]
    sm = s @ m
    start = assignment_objective(s, codes, perm)
    budget = 50 * num if max_swaps is None else int(max_swaps)
    tolerance = 1e-9 * max(1.0, float(np.abs(s).sum()))
    swaps, converged = 0, num < 2
    diagonal = np.diag_indices(num)
    pair_term = 4 * s * (1 - m)  # changes only in the two rows and columns a swap touches
    while swaps < budget and num >= 2:
        deltas = swap_deltas(s, m, sm, pair_term)  # symmetric: (a, b), (b, a) are one swap
        deltas[diagonal] = np.inf
        index = argmin_near_tie(deltas)  # near-ties: lowest (a, b), the same on every CPU
        if not deltas.flat[index] < -tolerance:
            exact = s @ m
            if np.allclose(exact, sm):
                converged = True
                break
            sm = exact  # drift from the rank-one updates: check again on exact values
            continue
        a, b = divmod(index, num)
        sm += np.outer(s[:, a] - s[:, b], m[b] - m[a])  # columns j of M change at rows a, b
        perm[[a, b]] = perm[[b, a]]
        m[[a, b]] = m[[b, a]]
        m[:, [a, b]] = m[:, [b, a]]
        sm[:, [a, b]] = s @ m[:, [a, b]]  # the swapped columns themselves, exactly
        pair_term[[a, b]] = 4 * s[[a, b]] * (1 - m[[a, b]])
        pair_term[:, [a, b]] = 4 * s[:, [a, b]] * (1 - m[:, [a, b]])
        swaps += 1
    return perm, {"objective_random_start": start, "objective": assignment_objective(s, codes, perm),
                  "swaps": swaps, "max_swaps": budget, "converged": converged}


def hclm_proxies(num_classes: int, bits: int, rng: np.random.Generator,
                 similarity: np.ndarray | None = None, tammes_steps: int = 400,
                 itq_iterations: int = 50) -> tuple[np.ndarray, dict[str, Any]]:
    """The proxy matrix W [C, K] (int8 ±1) and a summary (Tammes, ITQ, repairs, assignment,
    achieved minimum / mean Hamming distance, seconds). Without `similarity`, classes keep the
    Tammes order (a random assignment: the points are exchangeable)."""
    require_distinct_codes("hclm", num_classes, bits, "proxies")
    started = time.perf_counter()
    points, tammes = tammes_points(num_classes, bits, rng, tammes_steps)
    v = points * np.sqrt(bits)  # the sphere of radius sqrt(K), where the ±1 codes lie
    rotation, itq = itq_rotation(v, itq_iterations)
    codes, repaired = distinct_signs(v @ rotation, rng)
    summary: dict[str, Any] = {"tammes": tammes, "itq": itq, "repaired_duplicate_rows": repaired}
    if similarity is not None:
        perm, summary["assignment"] = greedy_assignment(similarity, codes, rng)
        codes = codes[perm]
    else:
        summary["assignment"] = "none (Tammes order)"
    summary.update(**distance_summary(codes), seconds=time.perf_counter() - started)
    return codes, summary


# ----------------------------------------------------------------------------- similarity
def gaussian_class_similarity(features: np.ndarray, labels: np.ndarray,
                              kappa: float | None = None) -> tuple[np.ndarray, float]:
    """exp(-|u_i - u_j|^2 / (2 kappa^2)) from class means u; kappa defaults to the mean
    distance between distinct class means. Classes without samples get similarity 0."""
    labels = np.asarray(labels, dtype=np.float64)
    counts = labels.sum(axis=0)
    means = labels.T @ np.asarray(features, dtype=np.float64) / np.maximum(counts, 1)[:, None]
    squared = np.maximum(((means[:, None, :] - means[None, :, :]) ** 2).sum(axis=2), 0.0)
    present = counts > 0
    off = ~np.eye(len(means), dtype=bool) & present[:, None] & present[None, :]
    if kappa is None:
        kappa = float(np.sqrt(squared[off]).mean()) if off.any() else 1.0
        kappa = kappa if kappa > 0 else 1.0
    similarity = np.exp(-squared / (2 * kappa**2)) * (present[:, None] & present[None, :])
    return similarity, float(kappa)


def dice_similarity(labels: np.ndarray) -> np.ndarray:
    """Dice co-occurrence of tags: 2 n_ij / (n_i + n_j), n_ij = samples with both tags."""
    labels = np.asarray(labels, dtype=np.float64)
    both = labels.T @ labels
    counts = np.diag(both)
    total = counts[:, None] + counts[None, :]
    return np.where(total > 0, 2 * both / np.maximum(total, 1e-12), 0.0)


# ----------------------------------------------------------------------------- losses
def hclm_single_label_loss(nu: torch.Tensor, proxies: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of logits nu W^T against the class index."""
    return F.cross_entropy(nu @ proxies.T, labels.argmax(dim=1))


def hclm_multi_label_loss(nu: torch.Tensor, proxies: torch.Tensor, labels: torch.Tensor,
                          frequency: torch.Tensor, negative_weight: str = "freq") -> torch.Tensor:
    """Balanced BCE over tags on logits nu W^T: positive weight 1 - f_k, negative weight f_k
    (or 1), mean over samples and tags."""
    logits = nu @ proxies.T
    negative = frequency if negative_weight == "freq" else torch.ones_like(frequency)
    per_tag = -((1 - frequency) * labels * F.logsigmoid(logits)
                + negative * (1 - labels) * F.logsigmoid(-logits))
    return per_tag.mean()


def triplet_loss(nu: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """All-triplets margin loss on nu: mean over (a, p, n) with p != a sharing a label with a
    and n sharing none of max(0, d(a, p) - d(a, n) + margin), d = |nu_a - nu_b|^2 / (4K)
    (the normalised Hamming distance for ±1 codes). Zero when the batch has no triplet."""
    distance = torch.cdist(nu, nu).pow(2) / (4 * nu.shape[1])  # [B, B]
    shares = (labels @ labels.T) > 0
    positive = shares & ~torch.eye(len(nu), dtype=torch.bool, device=nu.device)
    negative = ~shares
    valid = positive[:, :, None] & negative[:, None, :]  # [a, p, n]
    hinge = torch.relu(distance[:, :, None] - distance[:, None, :] + margin)
    count = valid.sum()
    return (hinge * valid).sum() / count.clamp_min(1)


def resolve_features(value: str, pretrained: bool) -> str:
    """`auto` -> backbone for a pretrained run, pixels otherwise; other values unchanged."""
    return ("backbone" if pretrained else "pixels") if value == "auto" else value


def resolve_feature_rules(config: dict[str, Any], pretrained: bool) -> dict[str, Any]:
    """`resolve_rules` of a method with a `similarity_features` setting (HCLM, CIMON): `auto`
    fixed to what the run uses, so the run id and the record carry it."""
    return {**config, "similarity_features": resolve_features(config["similarity_features"], pretrained)}


class InputFeatures(nn.Module):
    """The `pixels` features: images average-pooled to at most 16 x 16 per channel and
    flattened; a feature-vector card's inputs (e.g. TF-IDF rows) as they are."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(16), nn.Flatten())
        self.saw_images = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.saw_images = x.dim() == 4
        return self.pool(x) if self.saw_images else x


class HCLM(HashMethod):
    name = "hclm"
    summary = ("sHCLM: fixed Tammes + ITQ ±1 proxies assigned by class similarity; CE (or "
               "balanced BCE) on tanh(h) W^T")
    reference = ("Morgado, Li, Pereira, Saberian and Vasconcelos, Deep Hashing with Hash-Consistent "
                 "Large Margin Proxy Embeddings, IJCV 2020 (arXiv 2007.13912)")
    _paper = "arXiv 2007.13912"
    params = {
        "assignment": Param("semantic", "semantic: greedy swaps on class similarity (sHCLM); "
                            "random: Tammes order (HCLM)", choices=("semantic", "random"),
                            source=_paper),
        "similarity_features": Param("auto", "single-label class means from: pixels (training "
                                     "images, pooled to <= 16x16) or backbone (features before "
                                     "training); auto: backbone when pretrained, else pixels",
                                     choices=("auto", "pixels", "backbone"),
                                     source="paper: pretrained features; pixels from scratch is "
                                            "a stand-in (not in paper)"),
        "kappa": Param(None, "Gaussian similarity width (None: mean distance between class means)",
                       source=_paper),
        "bce_negative_weight": Param("freq", "multi-label BCE weight of negatives: freq = f_k, one = 1",
                                     choices=("freq", "one"),
                                     source="positive weight 1 - f_k: spec; negative: project choice"),
        "lambda_triplet": Param(0.0, "weight of the optional triplet term", source=_paper + " (off)"),
        "triplet_margin": Param(0.25, "triplet margin in normalised Hamming units",
                                source="not in paper"),
        "tammes_steps": Param(400, "Tammes optimiser steps", source="not in paper"),
        "itq_iterations": Param(50, "ITQ iterations", source="ITQ (Gong and Lazebnik) default"),
    }
    native = dict(HARMONISED)
    native_source = "not in paper: harmonised settings"
    search_space = {"lr": SHARED_SEARCH["lr"]}
    retrieval_output = "sign(h) (= sign(tanh h)), h = the shared linear hash layer's output"

    @classmethod
    def resolve_rules(cls, config: dict[str, Any], pretrained: bool) -> dict[str, Any]:
        return resolve_feature_rules(config, pretrained)

    @classmethod
    def check(cls, config: dict[str, Any], task: Task) -> None:
        require_distinct_codes("hclm", task.num_classes, task.bits, "proxies")
        kappa = config["kappa"]
        if kappa is not None and not float(kappa) > 0:
            raise UserError(f"hclm: kappa={kappa} is invalid; valid: > 0, or unset (mean distance)")
        for key, lowest in (("lambda_triplet", 0.0), ("triplet_margin", 0.0)):
            if not float(config[key]) >= lowest:
                raise UserError(f"hclm: {key}={config[key]} is invalid; valid: >= {lowest:g}")
        for key in ("tammes_steps", "itq_iterations"):
            if int(config[key]) < 1:
                raise UserError(f"hclm: {key}={config[key]} is invalid; valid: an integer >= 1")

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        super().__init__(config, task)
        self.device = task.device if task.device is not None else torch.device("cpu")
        self.proxies: torch.Tensor | None = None
        self.frequency: torch.Tensor | None = None
        self.similarity: np.ndarray | None = None
        self.similarity_measure = ""
        self.kappa: float | None = None
        self.proxy_summary: dict[str, Any] = {}

    def class_similarity(self, ctx: TrainContext) -> np.ndarray:
        """s_ij from the training split (see the module docstring for what stands in)."""
        indices = ctx.train_indices
        labels = ctx.labels_of(indices)
        if self.task.multi_label:
            self.similarity_measure = "Dice co-occurrence of tags (train split)"
            return dice_similarity(labels)
        if resolve_features(self.config["similarity_features"], self.task.pretrained) == "backbone":
            features = ctx.encode_with(ctx.model.backbone, indices)
            what = "backbone features before training"
        else:
            inputs = InputFeatures()
            features = ctx.encode_with(inputs, indices)
            what = ("training images average-pooled to 16x16 per channel" if inputs.saw_images
                    else "training inputs (feature vectors, as they are)")
        kappa = None if self.config["kappa"] is None else float(self.config["kappa"])
        similarity, self.kappa = gaussian_class_similarity(features, labels, kappa)
        self.similarity_measure = f"exp(-|u_i-u_j|^2/(2 kappa^2)), u = class means of {what}"
        return similarity

    def setup(self, ctx: TrainContext) -> None:
        started = time.perf_counter()
        self.similarity = self.class_similarity(ctx)
        ctx.stage_times["similarity"] = time.perf_counter() - started
        started = time.perf_counter()
        rng = np.random.default_rng([self.task.seed, _SEED_TAG])
        semantic = self.config["assignment"] == "semantic"
        codes, self.proxy_summary = hclm_proxies(
            self.task.num_classes, self.task.bits, rng, self.similarity if semantic else None,
            int(self.config["tammes_steps"]), int(self.config["itq_iterations"]))
        if not semantic:
            self.proxy_summary["objective"] = assignment_objective(
                self.similarity, codes, np.arange(len(codes)))
        ctx.stage_times["proxies"] = time.perf_counter() - started
        self.proxies = torch.as_tensor(codes, dtype=torch.float32, device=self.device)
        frequency = ctx.labels_of(ctx.train_indices).mean(axis=0)
        self.frequency = torch.as_tensor(frequency, dtype=torch.float32, device=self.device)

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        if self.proxies is None or self.frequency is None:
            raise RuntimeError("hclm: setup() builds the proxies before the first step")
        nu = torch.tanh(h)
        if self.task.multi_label:
            main = hclm_multi_label_loss(nu, self.proxies, labels, self.frequency,
                                         self.config["bce_negative_weight"])
        else:
            main = hclm_single_label_loss(nu, self.proxies, labels)
        weight = float(self.config["lambda_triplet"])
        if weight == 0:
            return main
        triplet = triplet_loss(nu, labels, float(self.config["triplet_margin"]))
        ctx.log("proxy", main.detach())
        ctx.log("triplet", triplet.detach())
        return main + weight * triplet

    def class_centers(self) -> torch.Tensor | None:
        return self.proxies

    def record(self) -> dict[str, Any]:
        keys = ("assignment", "similarity_features", "kappa", "bce_negative_weight",
                "lambda_triplet", "triplet_margin", "tammes_steps", "itq_iterations")
        return {
            "settings_used": {**{k: self.config[k] for k in keys}, "kappa_resolved": self.kappa,
                              "loss": ("balanced BCE over tags" if self.task.multi_label
                                       else "softmax cross-entropy") + " on tanh(h) W^T",
                              "native_source": self.native_source},
            "similarity": {"measure": self.similarity_measure,
                           "matrix": None if self.similarity is None
                           else self.similarity.tolist()},  # full precision: the swap search follows it
            "proxies_summary": self.proxy_summary,
            "tag_frequency": None if self.frequency is None else self.frequency.cpu().tolist(),
            "proxies": None if self.proxies is None else self.proxies.to(torch.int8).cpu().tolist(),
        }
