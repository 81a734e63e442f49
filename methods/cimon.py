"""CIMON (Luo et al., "CIMON: Towards High-quality Hash Codes", IJCAI 2021), in the unsupervised
regime (issue 31): a **reconstruction**. Only the abstract could be read and no code was found;
the pieces below follow shared/specs/methods-wave3.md section 8, and every constant the sources
leave open is a `reconstruction:` parameter.

Setup (no label is read; `supervised = False`):
1. Frozen features F of the training split. The paper uses a pretrained VGG; here
   `similarity_features: auto` resolves to `backbone` for a pretrained run (the run's backbone
   before training, e.g. loaded with `bench run --weights FILE`) and to `pixels` otherwise: the
   flattened normalised training images minus their mean stand in for the VGG features (as
   HCLM's pixel stand-in). Results on pixels test the regime, not the paper.
2. S0 = cosine similarities of F, all training pairs.
3. k-means on the unit-normalised F (scipy's kmeans2, k-means++ start, seeded; k = the card's
   class count unless `clusters` says otherwise: a number every method knows, no label read).
4. A two-component 1-D Gaussian mixture fitted by EM to the off-diagonal cosines (a seeded
   sample of pairs): r_ij = posterior of the high-mean ("similar") component.
5. Targets and weights per pair: same-cluster pairs are similar (target 1, weight r) when
   r >= `confidence`, dissimilar (target `dissimilar_target`, weight 1 - r) when 1 - r >=
   `confidence`, else unused (weight 0); cross-cluster pairs are dissimilar with weight 1;
   an image and itself (its two views): target 1, weight 1.
S and the weights are keyed by dataset index (int8 targets, float16 weights).

Loss on the two augmented views of a batch (`views = 2`, from the loop's seeded augmentation),
u = tanh(h): sum_ij W_ij (cos(u1_i, u2_j) - T_ij)^2 / B^2 + `lambda_contrast` x NT-Xent over the
2B views (the other view of the same image is the positive, temperature `temperature`).
Retrieval: sign(h) of the unaugmented image. Runs use the harmonised optimizer (no training
settings were obtained).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.cluster.vq import kmeans2
from torch import nn

from bench.errors import UserError
from methods.base import HARMONISED, SHARED_SEARCH, HashMethod, Param, Task, TrainContext
from methods.hclm import resolve_feature_rules, resolve_features

_SEED_TAG = 0x43494D4E  # "CIMN"
DISSIMILAR, UNUSED, SIMILAR = -1, 0, 1  # pair kinds as stored


# ----------------------------------------------------------------------------- similarity
def cosine_matrix(features: np.ndarray) -> torch.Tensor:
    """[N, N] cosine similarities (float32, torch on the CPU: deterministic at one thread)."""
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    x = F.normalize(x, dim=1)
    return x @ x.T


def fit_two_gaussians(values: np.ndarray, iterations: int = 100) -> dict[str, float]:
    """EM for a two-component 1-D Gaussian mixture; component 1 has the higher mean. Starts from
    the 25th and 75th percentiles, the sample's standard deviation and equal weights."""
    x = np.asarray(values, dtype=np.float64)
    mean = np.percentile(x, [25.0, 75.0])
    std = np.full(2, max(float(x.std()), 1e-6))
    weight = np.array([0.5, 0.5])
    for _ in range(iterations):
        log_density = (np.log(weight) - np.log(std) - 0.5 * ((x[:, None] - mean) / std) ** 2)
        log_density -= log_density.max(axis=1, keepdims=True)
        resp = np.exp(log_density)
        resp /= resp.sum(axis=1, keepdims=True)
        mass = np.maximum(resp.sum(axis=0), 1e-12)
        weight = mass / len(x)
        mean = (resp * x[:, None]).sum(axis=0) / mass
        std = np.sqrt(np.maximum((resp * (x[:, None] - mean) ** 2).sum(axis=0) / mass, 1e-12))
    order = np.argsort(mean)
    return {"weight_low": float(weight[order[0]]), "mean_low": float(mean[order[0]]),
            "std_low": float(std[order[0]]), "weight_high": float(weight[order[1]]),
            "mean_high": float(mean[order[1]]), "std_high": float(std[order[1]])}


def similar_posterior(cosines: torch.Tensor, gmm: dict[str, float]) -> torch.Tensor:
    """P(high component | cosine) for every entry."""
    def log_part(side: str) -> torch.Tensor:
        mean, std = gmm[f"mean_{side}"], gmm[f"std_{side}"]
        return (math.log(gmm[f"weight_{side}"]) - math.log(std)
                - 0.5 * ((cosines.double() - mean) / std) ** 2)

    return torch.sigmoid(log_part("high") - log_part("low")).float()


def pair_targets(cosines: torch.Tensor, clusters: np.ndarray, gmm: dict[str, float],
                 confidence: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(kinds int8 [N, N] in {SIMILAR, DISSIMILAR, UNUSED}, weights float32 [N, N]) as the
    module docstring's step 5 defines them."""
    posterior = similar_posterior(cosines, gmm)
    labels = torch.as_tensor(np.asarray(clusters))
    same = labels[:, None] == labels[None, :]
    similar = same & (posterior >= confidence)
    dissimilar_here = same & (1 - posterior >= confidence)
    kinds = torch.full(cosines.shape, UNUSED, dtype=torch.int8)
    weights = torch.zeros(cosines.shape, dtype=torch.float32)
    kinds[similar] = SIMILAR
    weights[similar] = posterior[similar]
    kinds[dissimilar_here] = DISSIMILAR
    weights[dissimilar_here] = 1 - posterior[dissimilar_here]
    kinds[~same] = DISSIMILAR
    weights[~same] = 1.0
    diagonal = torch.arange(len(cosines))
    kinds[diagonal, diagonal] = SIMILAR
    weights[diagonal, diagonal] = 1.0
    return kinds, weights


# ----------------------------------------------------------------------------- loss
def nt_xent(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over 2B vectors: each view's positive is the other view of its image, every
    other vector of the batch a negative; mean over the 2B anchors."""
    z = F.normalize(torch.cat([first, second]), dim=1)
    logits = z @ z.T / temperature
    count = len(first)
    logits = logits.masked_fill(torch.eye(2 * count, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(count, 2 * count), torch.arange(count)]).to(z.device)
    return F.cross_entropy(logits, positives)


def similarity_loss(first: torch.Tensor, second: torch.Tensor, targets: torch.Tensor,
                    weights: torch.Tensor) -> torch.Tensor:
    """sum_ij W_ij (cos(first_i, second_j) - T_ij)^2 / B^2."""
    cosines = F.normalize(first, dim=1) @ F.normalize(second, dim=1).T
    return (weights * (cosines - targets) ** 2).sum() / len(first) ** 2


def cimon_loss(u1: torch.Tensor, u2: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
               temperature: float, lambda_contrast: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, similarity term, NT-Xent term) for the two views' continuous codes."""
    similarity = similarity_loss(u1, u2, targets, weights)
    contrast = nt_xent(u1, u2, temperature)
    return similarity + lambda_contrast * contrast, similarity, contrast


class CIMON(HashMethod):
    name = "cimon"
    summary = ("reconstruction, unsupervised: weighted MSE of cross-view code cosines to a refined "
               "feature similarity (k-means, two-Gaussian confident pairs) + NT-Xent between views")
    reference = "Luo, Chen, Gao, Zhao, Wu and Ye, CIMON: Towards High-quality Hash Codes, IJCAI 2021"
    supervised = False
    views = 2
    reconstructed = {
        "setting": "abstract only; the pieces follow shared/specs/methods-wave3.md section 8",
        "features": "pixels (flattened, centred) stand in for pretrained VGG features from scratch",
        "pair weights": "same-cluster pairs weighted by the mixture posterior of their side; "
                        "cross-cluster pairs weight 1; unconfident pairs weight 0",
    }
    _guess = "reconstruction: "
    params = {
        "similarity_features": Param("auto", "frozen features for S: pixels (flattened, centred), "
                                     "backbone (features before training), auto: backbone when "
                                     "pretrained, else pixels", choices=("auto", "pixels", "backbone"),
                                     source=_guess + "paper: pretrained VGG; pixels stand in from scratch"),
        "clusters": Param(None, "k of k-means (None: the card's class count)",
                          source=_guess + "k not obtained; the class count"),
        "kmeans_iterations": Param(50, "k-means iterations", source=_guess + "not obtained"),
        "confidence": Param(0.9, "mixture posterior a same-cluster pair needs to be used",
                            source=_guess + "threshold not obtained"),
        "dissimilar_target": Param(0.0, "code-cosine target of dissimilar pairs",
                                   source=_guess + "0 (orthogonal codes); -1 cannot hold for many "
                                                   "clusters in few bits"),
        "temperature": Param(0.5, "NT-Xent temperature", source=_guess + "SimCLR's common 0.5"),
        "lambda_contrast": Param(1.0, "weight of the NT-Xent term", source=_guess + "equal weights"),
        "gmm_pairs": Param(200000, "pairs sampled for the mixture fit", source=_guess + "sample size"),
        "gmm_iterations": Param(100, "EM iterations of the mixture fit", source=_guess + "not obtained"),
    }
    native = dict(HARMONISED)
    native_source = "no training settings obtained: harmonised"
    search_space = {"lr": SHARED_SEARCH["lr"]}
    retrieval_output = "sign(h) of the unaugmented image, h = the shared linear hash layer's output"

    @classmethod
    def resolve_rules(cls, config: dict[str, Any], pretrained: bool) -> dict[str, Any]:
        return resolve_feature_rules(config, pretrained)

    @classmethod
    def check(cls, config: dict[str, Any], task: Task) -> None:
        clusters = config["clusters"]
        if clusters is not None and (isinstance(clusters, bool) or not isinstance(clusters, int)
                                     or clusters < 2):
            raise UserError(f"cimon: clusters={clusters!r} is invalid; valid: an integer >= 2, or unset")
        if not 0.5 <= float(config["confidence"]) < 1:
            raise UserError(f"cimon: confidence={config['confidence']} is invalid; valid: 0.5 <= c < 1")
        if not float(config["temperature"]) > 0:
            raise UserError(f"cimon: temperature={config['temperature']} is invalid; valid: > 0")
        if not -1 <= float(config["dissimilar_target"]) <= 1:
            raise UserError(f"cimon: dissimilar_target={config['dissimilar_target']} is invalid; "
                            f"valid: -1 to 1")
        for key in ("kmeans_iterations", "gmm_pairs", "gmm_iterations"):
            if int(config[key]) < 1:
                raise UserError(f"cimon: {key}={config[key]} is invalid; valid: an integer >= 1")

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        super().__init__(config, task)
        self.kinds: torch.Tensor | None = None
        self.weights: torch.Tensor | None = None
        self.positions: np.ndarray | None = None
        self.summary_: dict[str, Any] = {}

    def features(self, ctx: TrainContext) -> tuple[np.ndarray, str]:
        indices = ctx.train_indices
        if resolve_features(self.config["similarity_features"], self.task.pretrained) == "backbone":
            return ctx.encode_with(ctx.model.backbone, indices), "backbone features before training"
        pixels = ctx.encode_with(nn.Flatten(), indices).astype(np.float64)
        return pixels - pixels.mean(axis=0), "flattened normalised training images minus their mean"

    def setup(self, ctx: TrainContext) -> None:
        started = time.perf_counter()
        features, what = self.features(ctx)
        rng = np.random.default_rng([self.task.seed, _SEED_TAG])
        cosines = cosine_matrix(features)
        count = len(cosines)
        k = int(self.config["clusters"] or self.task.num_classes)
        unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
        _, clusters = kmeans2(unit, k, iter=int(self.config["kmeans_iterations"]), minit="++",
                              rng=np.random.default_rng([self.task.seed, _SEED_TAG, 1]))
        pairs = min(int(self.config["gmm_pairs"]), count * (count - 1) // 2)
        rows = rng.integers(0, count, size=pairs)
        cols = (rows + rng.integers(1, count, size=pairs)) % count  # never the diagonal
        gmm = fit_two_gaussians(cosines[rows, cols].numpy(), int(self.config["gmm_iterations"]))
        kinds, weights = pair_targets(cosines, clusters, gmm, float(self.config["confidence"]))
        del cosines
        self.kinds, self.weights = kinds, weights.half()
        self.positions = np.full(int(ctx.train_indices.max()) + 1, -1, dtype=np.int64)
        self.positions[ctx.train_indices] = np.arange(count)
        off = count * (count - 1)
        self.summary_ = {
            "features": what, "feature_dim": int(features.shape[1]), "clusters": k,
            "cluster_sizes": np.bincount(clusters, minlength=k).tolist(), "mixture": gmm,
            "pairs": {"similar": float(((kinds == SIMILAR).sum() - count) / off),
                      "dissimilar": float((kinds == DISSIMILAR).sum() / off),
                      "unused": float((kinds == UNUSED).sum() / off)},
            "seconds": time.perf_counter() - started,
        }
        ctx.stage_times["similarity"] = self.summary_["seconds"]

    def batch_targets(self, indices: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.kinds is None or self.weights is None or self.positions is None:
            raise RuntimeError("cimon: setup() builds the pair targets before the first step")
        rows = torch.as_tensor(self.positions[np.asarray(indices)])
        if (rows < 0).any():
            raise RuntimeError("cimon: a training batch holds an item outside the training split")
        kinds = self.kinds[rows][:, rows]
        dissimilar = float(self.config["dissimilar_target"])
        targets = torch.where(kinds == SIMILAR, 1.0, torch.where(kinds == DISSIMILAR, dissimilar, 0.0))
        return targets.to(device), self.weights[rows][:, rows].float().to(device)

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        assert ctx.batch is not None and len(ctx.batch.views) == 2, "cimon trains on two views"
        targets, weights = self.batch_targets(ctx.batch.indices, h.device)
        u1, u2 = (torch.tanh(view) for view in ctx.batch.views)
        total, similarity, contrast = cimon_loss(u1, u2, targets, weights, float(self.config["temperature"]),
                                                 float(self.config["lambda_contrast"]))
        ctx.log("similarity", similarity.detach())
        ctx.log("contrast", contrast.detach())
        return total

    def record(self) -> dict[str, Any]:
        keys = ("similarity_features", "clusters", "confidence", "dissimilar_target", "temperature",
                "lambda_contrast", "kmeans_iterations", "gmm_pairs", "gmm_iterations")
        return {"settings_used": {**{k: self.config[k] for k in keys},
                                  "native_source": self.native_source},
                "similarity": self.summary_}
