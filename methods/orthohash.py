"""OrthoHash: one cosine-similarity objective (Hoe, Ng, Yang, Chan, Kheng and Yeung, "One Loss
for All: Deep Hashing with a Single Cosine Similarity based Learning Objective", NeurIPS 2021).

Every class owns a fixed ±1 target o_c (never learned): i.i.d. Bernoulli(0.5) rows by default,
or "maxhd" rows (sequential rejection sampling for a large minimum Hamming distance), or
Hadamard rows (the supplement's ablation). The hash layer's output goes through an owned
BatchNorm1d(K) (the paper's "OrthoCos+BN": bit balance), v = BN(h), and the loss is a softmax
cross-entropy over the classes of s (cos(v, o_c) - m [c positive]): the margin is taken off
every positive class's cosine before scaling; multi-label targets are y / |y|_1 (the paper's
"label smoothing"; the simplified public repository trains COCO on the argmax label instead,
which this file does not copy). There is no quantization term: the claim is that the cosine
objective alone yields good codes. Retrieval codes are sign(BN(h)) with BN in eval mode.
Facts and defaults: shared/specs/methods-wave2.md (official code kamwoh/orthohash, its
supplement Table 1, and the authors' CISiPLab/cisip-FIRe "orthocos").
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.errors import UserError
from methods.base import SHARED_SEARCH, HashMethod, Param, Task, TrainContext, cosine_scale, scale_default
from methods.centers import bernoulli_centers, distance_summary, hadamard_centers, require_distinct_codes

CODEBOOKS = ("bernoulli", "maxhd", "hadamard")
RELEASED_CODE_SCALE = 8.0  # kamwoh/orthohash hard-codes s = 8 for every bit length
_SEED_TAG = 0x4F48  # "OH": keeps the target stream apart from other users of task.seed
_BLOCK = 4096  # candidate rows drawn per block by the MaxHD sampler


# ----------------------------------------------------------------------------- targets
def maxhd_targets(num_classes: int, bits: int, rng: np.random.Generator, start: float = 0.61,
                  floor: float = 0.2, patience: int = 10_000) -> tuple[np.ndarray, dict[str, Any]]:
    """OrthoHash's "maxhd" codebook: draw uniform ±1 rows one after another and accept a row
    only if its normalised Hamming distance d/K to every accepted row is >= t. t starts at
    `start` and drops by 0.01 after `patience` consecutive rejections; going below `floor`
    fails with a UserError. Thresholds are kept in hundredths (integers, no float drift).

    Candidates are drawn in blocks and their distance to the accepted rows is kept as a
    running minimum, so the sequential rule costs a few matrix products per block."""
    t = int(round(start * 100))
    lowest = int(round(floor * 100))
    accepted = np.empty((num_classes, bits), dtype=np.int8)
    count, rejections, total_rejections, drawn, lowerings = 0, 0, 0, 0, []
    started = time.perf_counter()
    while count < num_classes:
        block = np.where(rng.random((_BLOCK, bits)) < 0.5, 1, -1).astype(np.int8)
        drawn += _BLOCK
        floats = block.astype(np.float32)  # exact for these small integers, and BLAS-fast
        nearest = (np.rint((bits - floats @ accepted[:count].T.astype(np.float32)) / 2).min(axis=1)
                   if count else np.full(_BLOCK, bits, dtype=np.float32))
        pos = 0
        while pos < _BLOCK and count < num_classes:
            window = min(_BLOCK, pos + patience - rejections)
            passing = np.flatnonzero(100 * nearest[pos:window] >= t * bits)
            if passing.size:  # accept the first passing candidate
                index = pos + int(passing[0])
                total_rejections += index - pos
                accepted[count] = block[index]
                count += 1
                rejections = 0
                nearest = np.minimum(nearest, np.rint((bits - floats @ floats[index]) / 2))
                pos = index + 1
            elif pos + patience - rejections <= _BLOCK:
                total_rejections += window - pos
                pos, rejections = window, 0
                t -= 1  # `patience` consecutive rejections: lower the threshold
                lowerings.append(count)
                if t < lowest:
                    raise UserError(
                        f"orthohash: codebook=maxhd placed only {count} of {num_classes} {bits}-bit "
                        f"targets at normalised distance >= maxhd_floor={floor}; valid: a lower "
                        f"maxhd_floor (0..{start}), more bits, or codebook=bernoulli or hadamard"
                    )
            else:
                total_rejections += _BLOCK - pos
                rejections += _BLOCK - pos
                pos = _BLOCK
    summary = {
        "kind": "maxhd", "start_threshold": start, "floor": floor, "patience": patience,
        "final_threshold": t / 100, "threshold_lowerings": len(lowerings),
        "rejections": total_rejections, "candidates_drawn": drawn,
        "seconds": time.perf_counter() - started,
    }
    return accepted, summary


def orthohash_targets(num_classes: int, bits: int, kind: str, rng: np.random.Generator,
                      **maxhd: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """OrthoHash's fixed class targets [C, K] (int8 ±1) and a summary with the achieved minimum
    and mean pairwise Hamming distance (for the centers benchmark). `kind` is one of CODEBOOKS;
    `maxhd` passes start / floor / patience to `maxhd_targets`."""
    started = time.perf_counter()
    if kind == "bernoulli":
        targets, summary = bernoulli_centers(num_classes, bits, rng), {"kind": kind}
    elif kind == "maxhd":
        targets, summary = maxhd_targets(num_classes, bits, rng, **maxhd)
    elif kind == "hadamard":
        targets = hadamard_centers(num_classes, bits, rng)
        rows = bits & (bits - 1) == 0 and 2 * bits >= num_classes
        summary = {"kind": kind, "rule": "rows of [H_K; -H_K]" if rows
                   else "CSQ fallback: Bernoulli resampled for >= K/4 bits (C > 2K or K not a power of 2)"}
    else:
        raise UserError(f"orthohash: codebook={kind!r} is not valid; choose from {', '.join(CODEBOOKS)}")
    summary.update(**distance_summary(targets), seconds=time.perf_counter() - started)
    return targets.astype(np.int8), summary


@functools.lru_cache(maxsize=8)
def _cached_targets(num_classes: int, bits: int, kind: str, seed: int, start: float, floor: float,
                    patience: int) -> tuple[np.ndarray, dict[str, Any]]:
    """`check` and `__init__` draw the same targets; a slow MaxHD draw happens once."""
    rng = np.random.default_rng([seed, _SEED_TAG])
    extra = {"start": start, "floor": floor, "patience": patience} if kind == "maxhd" else {}
    targets, summary = orthohash_targets(num_classes, bits, kind, rng, **extra)
    targets.setflags(write=False)
    return targets, summary


# ----------------------------------------------------------------------------- loss
def orthohash_loss(v: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor, margin: float,
                   scale: float) -> torch.Tensor:
    """Cosine-margin softmax cross-entropy: logits_c = s (cos(v, o_c) - m y_c), target
    distribution y / |y|_1 (one-hot for single-label data), mean over the samples that have a
    label (an unlabelled sample has no target)."""
    cosine = F.normalize(v, dim=1) @ F.normalize(targets, dim=1).T  # [B, C]
    logits = scale * (cosine - margin * labels)
    counts = labels.sum(dim=1, keepdim=True)
    per_sample = -(labels / counts.clamp_min(1.0) * F.log_softmax(logits, dim=1)).sum(dim=1)
    return per_sample.sum() / (counts > 0).sum().clamp_min(1)


def resolve_settings(config: dict[str, Any], task: Task) -> dict[str, Any]:
    """Concrete margin, scale and codebook settings; refuses impossible values in one line."""
    margin = float(config["margin"])
    if not margin >= 0:
        raise UserError(f"orthohash: margin={config['margin']} is invalid; valid: m >= 0 (paper: 0.2)")
    try:
        scale, rule = cosine_scale(config["scale"], task.bits, task.num_classes, "sqrt_k")
    except UserError as error:
        raise UserError(f"orthohash: {error} (sqrt(K) = {math.sqrt(task.bits):g})") from None
    start, floor = float(config["maxhd_start"]), float(config["maxhd_floor"])
    patience = int(config["maxhd_patience"])
    if not 0 < start <= 1:
        raise UserError(f"orthohash: maxhd_start={start} is invalid; valid: 0 < start <= 1 (paper: 0.61)")
    if not 0 <= floor <= start:
        raise UserError(f"orthohash: maxhd_floor={floor} is invalid; valid: 0 <= floor <= "
                        f"maxhd_start={start} (paper: 0.2)")
    if patience < 1:
        raise UserError(f"orthohash: maxhd_patience={patience} is invalid; valid: >= 1 (paper: 10000)")
    return {"codebook": config["codebook"], "margin": margin, "scale": scale, "scale_rule": rule,
            "released_code_scale": RELEASED_CODE_SCALE, "maxhd_start": start, "maxhd_floor": floor,
            "maxhd_patience": patience, "quantization": "none"}


class OrthoHash(HashMethod):
    name = "orthohash"
    summary = "OrthoHash: fixed ±1 class targets, BN on the hash output, cosine-margin softmax CE"
    reference = ("Hoe, Ng, Yang, Chan, Kheng and Yeung, One Loss for All: Deep Hashing with a "
                 "Single Cosine Similarity based Learning Objective, NeurIPS 2021")
    _supp = "OrthoHash supplement Table 1"
    params = {
        "codebook": Param("bernoulli", "class targets: i.i.d. Bernoulli(0.5), maxhd rejection "
                          "sampling, or Hadamard rows", choices=CODEBOOKS,
                          source="bernoulli: supplement Table 4; maxhd: official code; hadamard: "
                                 "supplement ablation"),
        "margin": Param(0.2, "cosine margin m subtracted from every positive class", source=_supp),
        "scale": Param(None, "logit scale s: a number, sqrt_k or adacos (sqrt(2) ln(C-1)); None: "
                       "sqrt_k (the released code hard-codes 8)",
                       source=_supp + " (sqrt(K)); adacos: supplement D.2 / Table 3"),
        "maxhd_start": Param(0.61, "maxhd: initial normalised Hamming distance threshold",
                             source="kamwoh/orthohash"),
        "maxhd_floor": Param(0.2, "maxhd: lowest threshold allowed; refused before training if "
                             "the sampler would need less", source="kamwoh/orthohash"),
        "maxhd_patience": Param(10_000, "maxhd: consecutive rejections before the threshold "
                                "drops by 0.01", source="kamwoh/orthohash"),
    }
    native = {"optimizer": "adam", "lr": 1e-4, "beta1": 0.9, "beta2": 0.999, "weight_decay": 5e-4,
              "lr_schedule": "step", "lr_step_at": 0.8, "lr_gamma": 0.1, "batch_size": 256,
              "backbone_lr_scale": 0.1}
    native_source = ("OrthoHash supplement Table 1: Adam lr 1e-4, betas (0.9, 0.999), weight decay "
                     "5e-4, lr x0.1 at 80% of training, batch 256, backbone lr x0.1 (100 epochs in "
                     "the paper; the card's schedule here)")
    search_space = {key: SHARED_SEARCH[key] for key in ("lr", "margin", "scale")}
    retrieval_output = "sign(BN(h)), the owned BatchNorm1d(K) in eval mode"

    @classmethod
    def resolve_default(cls, key: str, value: Any, task: Task) -> Any:
        return scale_default(key, value, task, "sqrt_k")

    @classmethod
    def check(cls, config: dict[str, Any], task: Task) -> None:
        """Refuse m < 0, s <= 0 and a MaxHD floor the sampler cannot meet, before training."""
        s = resolve_settings(config, task)
        if s["codebook"] != "bernoulli":
            require_distinct_codes("orthohash", task.num_classes, task.bits, "targets")
        cls._targets(s, task)

    @staticmethod
    def _targets(settings: dict[str, Any], task: Task) -> tuple[np.ndarray, dict[str, Any]]:
        return _cached_targets(task.num_classes, task.bits, settings["codebook"], task.seed,
                               settings["maxhd_start"], settings["maxhd_floor"],
                               settings["maxhd_patience"])

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        super().__init__(config, task)
        self.settings = resolve_settings(config, task)
        targets, summary = self._targets(self.settings, task)
        self.targets_summary = dict(summary)
        device = task.device if task.device is not None else torch.device("cpu")
        self.targets = torch.as_tensor(np.array(targets), dtype=torch.float32, device=device)
        self.owned["bn"] = nn.BatchNorm1d(task.bits)

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        s = self.settings
        return orthohash_loss(self.owned["bn"](h), self.targets, labels, s["margin"], s["scale"])

    def retrieval_code(self, h: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.owned["bn"](h)

    def class_centers(self) -> torch.Tensor:
        return self.targets

    def record(self) -> dict[str, Any]:
        return {
            "settings_used": {**self.settings, "native_source": self.native_source,
                              "scale_note": "sqrt(K) per the supplement; the released code uses 8"},
            "targets_summary": self.targets_summary,
            "targets": self.targets.to(torch.int8).cpu().tolist(),
        }
