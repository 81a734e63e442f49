"""Retrieval under attack: L-infinity PGD on the query images, evaluated against the clean
database (CgAT, Wang et al., WWW 2023; facts in shared/specs/methods-wave3.md section 7).

Every method gets the attack without code of its own. The attacked output r(x) is the method's
`attack_output` (default: its `retrieval_code`, whose sign is the code); the attack minimises
mean(tanh(r(x')) * t), which pushes the query's code away from a target code t:
- `center` (CgAT's default): t = sign(N_neg * sum of positive training codes - N_pos * sum of
  negative training codes), positives being the training items that share a label with the
  query (for single-label data: the class's center code; ties give 0);
- `self`: t = the query's own clean code, which needs no labels.
The budget is in pixel units (8/255 by default) and turned into the network's normalised input
units per channel (`ImageSource.pixel_box`); every step is projected back into the budget and
the valid pixel range. Random starts draw from a generator seeded by the attack and the run,
so an attack is deterministic. The center codes and the PGD are CgAT's own (`methods.cgat`:
`center_codes`, `pgd_linf`), so a model CgAT trains is measured with the attack it trained against.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.errors import UserError
from methods.cgat import center_codes, pgd_linf

TARGETS = ("center", "self")
ATTACKS_FOLDER = "attacks"  # under the results folder: <card>/<method>/<run id>.<attack id>.json
# Defaults: CgAT's evaluation attack (official code, xunguangwang/CgAT): eps 8/255, step 1/255,
# 100 iterations, random start. On a CPU the spec suggests 20 steps (`steps=20`).
DEFAULTS = {"eps": 8 / 255, "step": 1 / 255, "steps": 100, "random_start": True, "seed": 0}
ATTACK_SOURCE = ("CgAT (Wang et al., WWW 2023), official code xunguangwang/CgAT: PGD L-inf in "
                 "pixel space, eps 8/255, step 1/255, 100 iterations, random start")


@dataclass(frozen=True)
class AttackSpec:
    """One attack's parameters; its id keys the result file beside the run's record."""

    target: str = "center"
    eps: float = DEFAULTS["eps"]
    step: float = DEFAULTS["step"]
    steps: int = DEFAULTS["steps"]
    random_start: bool = DEFAULTS["random_start"]
    seed: int = DEFAULTS["seed"]

    @property
    def attack_id(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return f"{self.target}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"

    def describe(self) -> str:
        return (f"{self.target}: eps {self.eps:.5g}, step {self.step:.5g}, {self.steps} steps, "
                f"random start {'on' if self.random_start else 'off'}, seed {self.seed}")


def _number(key: str, raw: str, text: str) -> float:
    try:
        value = float(Fraction(raw.strip()))
    except (ValueError, ZeroDivisionError):
        raise UserError(f"--attack {text}: {key}={raw!r} is not a number (e.g. {key}=8/255)") from None
    if value < 0:
        raise UserError(f"--attack {text}: {key}={raw} must be >= 0")
    return value


def parse_attack(text: str) -> AttackSpec:
    """`center`, `self:eps=4/255,steps=20`, ... into an AttackSpec; one-line UserError otherwise."""
    target, _, rest = text.partition(":")
    if target not in TARGETS:
        raise UserError(f"--attack {text}: target '{target}' is not valid; choose from "
                        f"{', '.join(TARGETS)} (e.g. center:eps=8/255,steps=20)")
    values: dict[str, float | int | bool] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, equals, raw = item.partition("=")
        if not equals or key not in DEFAULTS:
            raise UserError(f"--attack {text}: '{item}' is not valid; give KEY=VALUE with KEY one "
                            f"of {', '.join(DEFAULTS)}")
        if key == "random_start":
            if raw.lower() not in ("true", "false", "1", "0", "on", "off"):
                raise UserError(f"--attack {text}: random_start={raw!r} must be true or false")
            values[key] = raw.lower() in ("true", "1", "on")
        elif key in ("steps", "seed"):
            number = _number(key, raw, text)
            if number != int(number):
                raise UserError(f"--attack {text}: {key}={raw} must be a whole number")
            values[key] = int(number)
        else:
            values[key] = _number(key, raw, text)
    return AttackSpec(target=target, **values)  # type: ignore[arg-type]


def center_targets(query_labels: torch.Tensor, train_codes: torch.Tensor,
                   train_labels: torch.Tensor) -> torch.Tensor:
    """CgAT's center code of each query [Q, K] from ±1 training codes [N, K]: with P the
    training items sharing a label with the query and M the others,
    sign(|M| * sum_P b - |P| * sum_M b) (0 where that is a tie); `methods.cgat.center_codes`."""
    return center_codes(query_labels, train_codes, train_labels)


def pgd(output: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, targets: torch.Tensor,
        spec: AttackSpec, box: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        generator: torch.Generator) -> torch.Tensor:
    """Adversarial versions of normalised `images`: L-inf PGD minimising
    mean(tanh(output(x')) * targets), within eps pixels of the clean images and inside the
    valid pixel range (`box` = low, high, 1/std per channel, from `ImageSource.pixel_box`):
    CgAT's training PGD (`methods.cgat.pgd_linf`) with the spec's budget, step and start."""
    return pgd_linf(output, images, targets, spec.eps, spec.step, spec.steps, spec.random_start, box,
                    generator)


def attack_path(results_dir: Path, dataset: str, method: str, run_id: str, spec: AttackSpec) -> Path:
    """Where an attack's result lives: beside the records, keyed by run id and attack id, so
    the run's record (and id) stay exactly what a run without the attack writes."""
    return Path(results_dir) / ATTACKS_FOLDER / dataset / method / f"{run_id}.{spec.attack_id}.json"


def attack_queries(model: torch.nn.Module, method: Any, images_of: Callable[[np.ndarray], torch.Tensor],
                   query_indices: np.ndarray, query_labels: np.ndarray, query_codes: np.ndarray,
                   db_codes: np.ndarray, db_labels: np.ndarray, train_codes: np.ndarray | None,
                   train_labels: np.ndarray | None, box: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                   spec: AttackSpec, run_seed: int, device: torch.device, clean_mAP: float,
                   evaluate: Callable[..., dict[str, Any]], batch_size: int = 250) -> dict[str, Any]:
    """Attack every query of the selected model (eval mode, float32, unfused) and evaluate the
    attacked codes against the clean database with the run's own evaluator (`evaluate`)."""
    started = time.perf_counter()
    model.eval()
    method.owned.eval()

    def output(images: torch.Tensor) -> torch.Tensor:
        features = model.features(images)
        return method.attack_output(model.hash_layer(features), features)

    clean_signs = torch.from_numpy(np.where(query_codes >= 0, 1.0, -1.0).astype(np.float32))
    if spec.target == "center":
        targets = center_targets(torch.from_numpy(np.asarray(query_labels)),
                                 torch.from_numpy(np.where(train_codes >= 0, 1.0, -1.0).astype(np.float32)),
                                 torch.from_numpy(np.asarray(train_labels)))
    else:
        targets = clean_signs
    generator = torch.Generator().manual_seed(spec.seed * 1_000_003 + run_seed)
    attacked = []
    for start in range(0, len(query_indices), batch_size):
        part = slice(start, start + batch_size)
        images = images_of(query_indices[part]).to(device).float()
        adversarial = pgd(output, images, targets[part].to(device), spec, box, generator)
        with torch.no_grad():
            attacked.append(output(adversarial).float().cpu())
    adversarial_codes = torch.cat(attacked).numpy()
    metrics = evaluate(adversarial_codes, db_codes, query_labels, db_labels)
    flipped = (np.where(adversarial_codes >= 0, 1.0, -1.0) != clean_signs.numpy()).sum(axis=1)
    seconds = time.perf_counter() - started
    return {
        "attack": asdict(spec), "attack_id": spec.attack_id, "source": ATTACK_SOURCE,
        "clean_mAP": float(clean_mAP), "adversarial_mAP": float(metrics["mAP"]),
        "adversarial_mAP_tie_aware": float(metrics.get("mAP_tie_aware", float("nan"))),
        "bits_flipped_mean": float(flipped.mean()), "queries": int(len(query_indices)),
        "target_zero_fraction": float((targets == 0).float().mean()),
        "seconds": seconds, "seconds_per_query": seconds / max(1, len(query_indices)),
    }
