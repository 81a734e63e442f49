"""Building blocks of the training loop that call nothing the protocol tests watch: seeding,
step counts, optimizers and schedules, and what the record says about centers and codes.

`bench.training.train` keeps the parts the protocol tests spy on (data, batches, encoding,
evaluation, the run's optimizer), so every call the loop makes to them is seen."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from bench.data.loading import ground_truth_record
from bench.data.splits import Split, selection_description, selection_reference
from bench.runs.records import portable_data_identity, relative_to_results
from bench.runs.spec import run_id
from bench.training import regime


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run is recorded as failed with this reason."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds third-party code using the legacy API
    torch.manual_seed(seed)


def steps_per_epoch(num_items: int, batch_size: int) -> int:
    """Optimizer steps in one pass: every full batch and the partial last one, unless that one
    would hold a single sample (`iterate_batches` drops it)."""
    full, rest = divmod(num_items, batch_size)
    return max(1, full + (1 if rest >= 2 or (rest == 1 and full == 0) else 0))


def optimizer_for(backbone: torch.nn.Module, head: torch.nn.Module, owned: list[dict[str, Any]],
               config: dict[str, Any]) -> torch.optim.Optimizer:
    lr = float(config["lr"])
    decay = float(config["weight_decay"])
    groups = [
        {"params": list(backbone.parameters()), "lr": lr * float(config["backbone_lr_scale"])},
        *owned,
        {"params": list(head.parameters()), "lr": lr},
    ]
    name = config["optimizer"]
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=(float(config["beta1"]), float(config["beta2"])),
                                weight_decay=decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=float(config["momentum"]), weight_decay=decay)
    # RMSprop without momentum, as in the CSQ re-implementation whose defaults it serves.
    return torch.optim.RMSprop(groups, lr=lr, weight_decay=decay)


def stage_optimizer(backbone: torch.nn.Module, head: torch.nn.Module, config: dict[str, Any],
                    epochs: int) -> tuple[torch.optim.Optimizer, Any]:
    """The run's optimizer and schedule for a network other than the hash network (a method's
    own stage, e.g. SHC's classifier), its schedule spread over `epochs`."""
    settings = {**config, "epochs": int(epochs)}
    optimizer = optimizer_for(backbone, head, [], settings)
    return optimizer, build_scheduler(optimizer, settings)


def build_scheduler(optimizer: torch.optim.Optimizer, config: dict[str, Any]):
    epochs = int(config["epochs"])
    schedule = config["lr_schedule"]
    if schedule == "cosine":
        base = float(config["lr"])
        floor = min(float(config["lr_min"]), base)
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, epochs), eta_min=floor
        )
    if schedule == "step":
        step = max(1, int(round(epochs * float(config["lr_step_at"]))))
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step, gamma=float(config["lr_gamma"]))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def class_feature_similarity(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cosine similarity of class-mean backbone features [C, C] (a class-similarity measure
    that needs no external model; label-weighted 1/q for multi-label samples)."""
    weights = labels / np.maximum(labels.sum(axis=1, keepdims=True), 1)
    means = (weights.T @ features) / np.maximum(weights.sum(axis=0)[:, None], 1e-12)
    means = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return means @ means.T


def center_semantics(centers: np.ndarray, similarity: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlation, over class pairs, between the centers' Hamming
    similarity (1 - d/K) and the measured class similarity."""
    from scipy.stats import pearsonr, spearmanr

    bits = centers.shape[1]
    centers = centers.astype(np.int64)
    hamming_similarity = 1 - (bits - centers @ centers.T) / (2 * bits)
    upper = np.triu_indices(len(centers), k=1)
    a, b = hamming_similarity[upper], similarity[upper]
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return {"pearson": float("nan"), "spearman": float("nan")}
    return {"pearson": float(pearsonr(a, b)[0]), "spearman": float(spearmanr(a, b)[0])}


def code_ties(codes: np.ndarray) -> dict[str, Any]:
    """How many distinct sign codes the database holds and how large its groups of identical
    codes are: a classify-then-hash ranking has at most C codes, so its order within a tie
    group is arbitrary (what the tie-aware mAP accounts for)."""
    signs = np.asarray(codes) > 0
    _, counts = np.unique(np.packbits(signs, axis=1), axis=0, return_counts=True)
    total = int(counts.sum())
    return {"items": total, "distinct": int(len(counts)),
            "mean_tie_group_size": round(total / max(1, len(counts)), 4),  # per group
            "mean_tie_group_size_per_item": round(float((counts**2).sum()) / max(1, total), 4)}


def rounded(values: list[float | None]) -> list[float | None]:
    return [None if v is None else round(float(v), 6) for v in values]


def validation_database(split: Split, topk: int | None) -> tuple[np.ndarray, dict[str, Any]]:
    """What validation queries are ranked against, and how the record describes it.

    Protocol v2 ranks them against the split's held-out validation database, which, like the
    test database, is mostly images the network never trained on; a card without one keeps the
    v1 rule (the training images), whose codes the losses pull onto their centers, so it
    rewards memorisation; the record names which rule selected the checkpoint."""
    reference = np.asarray(selection_reference(split))
    # mAP@k scaled to the reference's size, as the card's k is to the test database's.
    val_topk = topk
    if topk is not None and len(split.database):
        val_topk = max(1, int(round(topk * len(reference) / len(split.database))))
    return reference, {**selection_description(split), "criterion": f"validation mAP@{val_topk or 'all'}",
                       "topk": val_topk}


def record_body(run: Any, selected: Any, metrics: dict[str, Any],
                 extras: dict[str, Any]) -> dict[str, Any]:
    """The record body of a trained run (`bench.training.train.Run`) and its selected method: spec,
    resolved config, task, split, selection, metrics, history."""
    spec, card, split = run.spec, run.card, run.split
    truth = ground_truth_record(run.source)
    selection = {**run.selection, "best_epoch": run.best["epoch"], "best_val_mAP": run.best["val_mAP"]}
    if run.rule != regime.VALIDATION:  # supervised records keep their shape
        selection["rule"] = regime.RULE_TEXT[run.rule]
    if (first := run.method.selectable_from()) > 1:  # only a method that restricts selection says so
        selection["selectable_from_epoch"] = first
    return {
        "run_id": run_id(spec, run.config),
        "device": str(run.ctx.device),
        "numerics": run.numerics.record(),
        "spec": spec.to_dict(),
        "config": run.config,
        "task": {"num_classes": card.num_classes, "multi_label": card.multi_label,
                 "class_names": list(card.class_names),
                 **({"ground_truth_similarity": truth} if truth else {})},
        "split": {"digest": split.digest, "path": relative_to_results(split.path), "sizes": split.sizes(),
                  "seed": spec.split_seed,
                  "data": portable_data_identity(run.source.identity, card.search_paths)},
        "selection": selection,
        **({"regime": run.regime} if run.regime is not None else {}),
        "metrics": metrics,
        "history": run.history,
        "timings": run.timings,
        "method": run.method.record(),
        "method_api": run.method.describe_api(),
        "method_at_selected_epoch": selected.record(),
        **extras,
    }
