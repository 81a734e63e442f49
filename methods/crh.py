"""CRH: Center-Reassigned Hashing (Yin et al., AAAI-26, arXiv 2511.12162).

A preset codebook holds M = ratio x C candidate sub-codes per head; every class is mapped to
one entry per head and its hash center is the concatenation of those entries. The network is
trained with a margin cosine softmax towards the centers, and on a schedule the classes are
reassigned to the entries that best fit where their codes actually are (one-to-one per head),
so semantically close classes can end up with close centers in a single training stage.
See `shared/specs/crh.md` for the method as this project defines it.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.errors import UserError
from methods.base import SHARED_SEARCH, HashMethod, Param, Task, TrainContext, cosine_scale, scale_default
from methods.centers import assignment_cost, compose_centers, head_width, random_codebook, reassign_heads

PAPER_EPOCHS = 300  # single-label schedule the cadence defaults (20 warm-up, every 5th) refer to
PAPER_WARMUP = 20
PAPER_EVERY = 5
_SEED_TAG = 0x435248  # "CRH": keeps these streams apart from other users of task.seed


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def margin_cosine_loss(h: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor,
                       margin: float, scale: float) -> torch.Tensor:
    """CosFace-style cross-entropy to the class centers: logit_j = s (cos(h, c_j) - m y_j),
    targets y / |y|_1 (a multi-label sample spreads its mass evenly), mean over the batch."""
    cosine = F.normalize(h, dim=1) @ F.normalize(centers, dim=1).T  # [B, C]
    logits = scale * (cosine - margin * labels)
    targets = labels / labels.sum(dim=1, keepdim=True).clamp_min(1.0)
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def quantization_loss(h: torch.Tensor) -> torch.Tensor:
    """mean((|tanh(h)| - 1)^2): pushes outputs towards ±1 so sign() loses little."""
    return (torch.tanh(h).abs() - 1).pow(2).mean()


def default_lambda_q(task: Task) -> float:
    """The spec's quantization weight: 0.1 single-label, 0 multi-label (crh.md)."""
    return 0.0 if task.multi_label else 0.1


def resolve_settings(config: dict[str, Any], task: Task) -> dict[str, Any]:
    """The concrete values behind every `None` ("default rule") option, validated. Raises a
    one-line UserError naming the values and a valid alternative for impossible settings."""
    bits, classes = task.bits, task.num_classes
    if classes < 2:
        raise UserError(f"crh needs at least 2 classes, the dataset has {classes}")
    ratio = float(config["codebook_ratio"])
    size = _round_half_up(ratio * classes)
    if ratio <= 0 or size < classes:
        raise UserError(
            f"codebook_ratio={config['codebook_ratio']} gives M={size} codewords for C={classes} "
            f"classes; M must be >= C (e.g. codebook_ratio=2)"
        )
    heads_option = config["heads"]
    if isinstance(heads_option, float) and heads_option.is_integer():
        heads_option = int(heads_option)
    heads, width = head_width(bits, size, heads_option)
    min_distance = int(config["codebook_min_distance"])
    if min_distance < 0 or min_distance > width:
        raise UserError(
            f"codebook_min_distance={min_distance} is outside 0..{width} (bits per head with "
            f"heads={heads}); use 0 to disable it"
        )
    margin = float(config["margin"])
    # sqrt(2) ln(C - 1) vanishes at C = 2 (no gradient); two classes use the C = 3 value.
    scale, scale_rule = cosine_scale(config["scale"], bits, classes, "adacos")
    lambda_q = default_lambda_q(task) if config["lambda_q"] is None else float(config["lambda_q"])
    if lambda_q < 0:
        raise UserError(f"lambda_q={lambda_q} must be >= 0 (default 0.1 single-label, 0 multi-label)")
    epoch_scale = task.epochs / PAPER_EPOCHS
    every = config["reassign_every"]
    every = max(1, _round_half_up(PAPER_EVERY * epoch_scale)) if every is None else int(every)
    warmup = config["reassign_warmup"]
    warmup = _round_half_up(PAPER_WARMUP * epoch_scale) if warmup is None else int(warmup)
    if every < 1 or warmup < 0:
        raise UserError(
            f"reassign_every={every} / reassign_warmup={warmup}: need every >= 1 and warm-up >= 0 "
            f"(or reassign=never); e.g. reassign_every=5 reassign_warmup=20"
        )
    return {
        "codebook_size": size, "heads": heads, "head_bits": width, "min_distance": min_distance,
        "margin": margin, "scale": scale, "scale_rule": scale_rule, "lambda_q": lambda_q,
        "solver": config["solver"], "reassign": config["reassign"], "reassign_every": every,
        "reassign_warmup": warmup, "epoch_scale": epoch_scale,
    }


class CRH(HashMethod):
    name = "crh"
    summary = "Center-Reassigned Hashing: codebook of centers, periodic one-to-one reassignment, multi-head"
    reference = (
        "Yin et al., Codebook-Centric Deep Hashing: End-to-End Joint Learning of Semantic Hash "
        "Centers and Neural Hash Function, AAAI 2026 (arXiv 2511.12162)"
    )
    _paper = "arXiv 2511.12162"
    params = {
        "codebook_ratio": Param(2.0, "codebook entries per head as a multiple of the class count",
                                source=f"{_paper}: M = 2C reported best"),
        "heads": Param(None, "number of heads H (None: smallest d | K with 2^d >= M, H = K/d)",
                       source=f"{_paper}: H <= K / log2 M"),
        "margin": Param(0.2, "cosine margin m", source=_paper),
        "scale": Param(None, "logit scale s: a number, adacos (sqrt(2) ln(C-1); C=2 uses sqrt(2) ln 2) "
                       "or sqrt_k; None: adacos",
                       source="fixed AdaCos scale; spec crh.md"),
        "lambda_q": Param(None, "quantization weight (None: 0.1 single-label, 0 multi-label)",
                          source=_paper),
        "solver": Param("hungarian", "one-to-one assignment solver per head",
                        choices=("hungarian", "greedy"), source=f"{_paper} allows both"),
        "reassign": Param("schedule", "schedule: reassign on the cadence; never: fixed random centers",
                          choices=("schedule", "never"), source=f"{_paper} ablation"),
        "reassign_every": Param(None, "epochs between reassignments after warm-up (None: 5 x epochs/300)",
                                source=f"{_paper}: every 5th epoch of 300"),
        "reassign_warmup": Param(None, "reassign every epoch for this many epochs (None: 20 x epochs/300)",
                                 source=f"{_paper}: first 20 epochs of 300"),
        "codebook_min_distance": Param(0, "min Hamming distance between a head's codewords (ablation)",
                                       source="inferred (not in the paper); 0 = distinct only"),
    }
    # bench tune: the shared ranges of the knobs CRH shares with OrthoHash, MDS, CSQ and SHC.
    search_space = {key: SHARED_SEARCH[key] for key in ("lr", "margin", "scale", "lambda_q")}
    native = {"optimizer": "adam", "lr": 1e-4, "beta1": 0.5, "beta2": 0.999, "weight_decay": 1e-5,
              "lr_schedule": "cosine", "lr_min": 1e-7, "batch_size": 128}
    native_source = (
        "arXiv 2511.12162 (CRH, AAAI-26): Adam lr 1e-4, betas (0.5, 0.999), weight decay 1e-5, "
        "cosine annealing to 1e-7, batch 128"
    )
    collects_codes = True

    @classmethod
    def resolve_default(cls, key: str, value: Any, task: Task) -> Any:
        if key == "lambda_q" and value is None:
            return default_lambda_q(task)
        return scale_default(key, value, task, "adacos")

    @classmethod
    def check(cls, config: dict[str, Any], task: Task) -> None:
        """Refuse impossible codebook / head / cadence settings before training."""
        settings = resolve_settings(config, task)
        if settings["min_distance"] > 0:  # the sampler can fail: find out now, not mid-sweep
            _build_codebook(settings, task.seed)

    def __init__(self, config: dict[str, Any], task: Task) -> None:
        super().__init__(config, task)
        self.settings = resolve_settings(config, task)
        _, assign_seed, solver_seed = np.random.SeedSequence([task.seed, _SEED_TAG]).spawn(3)
        self.codebook = _build_codebook(self.settings, task.seed)  # [H, M, d] int8
        assign_rng = np.random.default_rng(assign_seed)
        heads, size = self.settings["heads"], self.settings["codebook_size"]
        self.initial_assignment = np.stack(
            [assign_rng.permutation(size)[: task.num_classes] for _ in range(heads)]
        ).astype(np.int64)  # [H, C]: C distinct random entries per head
        self.assignment = self.initial_assignment.copy()
        self.solver_rng = np.random.default_rng(solver_seed)
        device = task.device if task.device is not None else torch.device("cpu")
        self.codebook_tensor = torch.as_tensor(self.codebook, dtype=torch.float32, device=device)
        self.history: list[dict[str, Any]] = []
        self._set_centers()

    def _set_centers(self) -> None:
        centers = compose_centers(self.codebook, self.assignment)
        self.centers = torch.as_tensor(centers, dtype=torch.float32, device=self.codebook_tensor.device)

    def loss(self, h: torch.Tensor, labels: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        s = self.settings
        center = margin_cosine_loss(h, self.centers, labels, s["margin"], s["scale"])
        quantization = quantization_loss(h)
        ctx.log("center", center.detach())
        ctx.log("quantization", quantization.detach())
        return center + s["lambda_q"] * quantization

    def reassigns_after(self, epoch: int) -> bool:
        """Cadence, with `epoch` 0-based: every epoch up to the warm-up, then every
        `reassign_every` epochs counted from the end of the warm-up."""
        s = self.settings
        if s["reassign"] == "never":
            return False
        number = epoch + 1
        return number <= s["reassign_warmup"] or (number - s["reassign_warmup"]) % s["reassign_every"] == 0

    def reassign(self, codes: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """One reassignment step from the ±1 codes and labels of the epoch's samples."""
        cost = assignment_cost(codes, labels, self.codebook_tensor).cpu().numpy()  # [H, C, M]
        present = (labels.sum(dim=0) > 0).cpu().numpy()
        heads_index = np.arange(cost.shape[0])[:, None]
        classes_index = np.arange(cost.shape[1])[None, :]
        before = cost[heads_index, classes_index, self.assignment]  # [H, C]
        new = reassign_heads(cost, self.assignment, self.settings["solver"], self.solver_rng, present)
        after = cost[heads_index, classes_index, new]
        moved = new != self.assignment  # [H, C]
        self.assignment = new
        self._set_centers()
        return {
            "changed": moved.sum(axis=1).tolist(),
            "changed_classes": int(moved.any(axis=0).sum()),
            "cost": after.sum(axis=1).round(6).tolist(),
            "cost_before": before.sum(axis=1).round(6).tolist(),
            "absent_classes": int((~present).sum()),
        }

    def on_epoch_end(
        self, epoch: int, codes: torch.Tensor | None, labels: torch.Tensor | None, ctx: TrainContext
    ) -> dict[str, Any] | None:
        if codes is None or labels is None or not self.reassigns_after(epoch):
            return None
        start = time.perf_counter()
        step = self.reassign(codes, labels)
        step["seconds"] = time.perf_counter() - start
        self.history.append({"epoch": epoch + 1, **step})
        return {"reassignment": step}

    def class_centers(self) -> torch.Tensor:
        return self.centers

    def record(self) -> dict[str, Any]:
        s = self.settings
        return {
            "settings_used": dict(s),
            "reassignment_epochs": [entry["epoch"] for entry in self.history],
            "reassignments": self.history,
            "codebook": self.codebook.astype(int).tolist(),
            "initial_assignment": self.initial_assignment.tolist(),
            "assignment": self.assignment.tolist(),
            "centers": self.centers.to(torch.int8).cpu().tolist(),
        }


def _build_codebook(settings: dict[str, Any], seed: int) -> np.ndarray:
    """The run's [H, M, d] codebook; its own seeded stream, so solver or cadence changes keep
    the same codebook and initial assignment."""
    codebook_seed = np.random.SeedSequence([seed, _SEED_TAG]).spawn(3)[0]
    return random_codebook(settings["heads"], settings["head_bits"], settings["codebook_size"],
                           np.random.default_rng(codebook_seed), min_distance=settings["min_distance"])
