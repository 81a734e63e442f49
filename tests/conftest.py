"""Shared test fixtures.

Record builders: `make_record(...)` fabricates a run record in the exact format that
`bench.sweeps.runner.compute_record` writes (the body of
`bench.training.train.train_and_evaluate` plus schema,
status, code, environment, times), with full control over the numbers, so report and verdict
tests need no training. `write_results(dir, records, corrupt=...)` lays them out as
`results/runs/<dataset>/<method>/<run id>.json.gz`.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bench import RESULTS_VERSION

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot"]
PR_AT_N = [1, 10, 50, 100, 500, 1000, 2000, 5000]
UNSET = object()


def _method_config(method: str, protocol: str) -> dict[str, Any]:
    from bench.errors import UserError
    from methods import get_method
    from methods.base import HARMONISED, TRAINING_PARAMS

    config = {key: param.default for key, param in TRAINING_PARAMS.items()}
    try:
        cls = get_method(method)
    except UserError:
        return {**config, **(HARMONISED if protocol == "harmonised" else {})}
    config.update({key: param.default for key, param in cls.params.items()})
    config.update(cls.native if protocol == "native" else HARMONISED)
    return config


def _crh_settings(config: dict[str, Any], bits: int, classes: int, epochs: int) -> dict[str, Any]:
    size = int(math.floor(float(config.get("codebook_ratio") or 2.0) * classes + 0.5))
    heads = config.get("heads")
    if heads is None:
        width = next(d for d in range(1, bits + 1) if bits % d == 0 and 2**d >= size)
        heads = bits // width
    scale = epochs / 300
    every = config.get("reassign_every")
    every = max(1, int(math.floor(5 * scale + 0.5))) if every is None else int(every)
    warmup = config.get("reassign_warmup")
    warmup = int(math.floor(20 * scale + 0.5)) if warmup is None else int(warmup)
    return {"codebook_size": size, "heads": int(heads), "head_bits": bits // int(heads), "min_distance": 0,
            "margin": 0.2, "scale": math.sqrt(2) * math.log(classes - 1), "scale_rule": "sqrt(2)*ln(C-1)",
            "lambda_q": 0.1, "solver": config.get("solver", "hungarian"),
            "reassign": config.get("reassign", "schedule"), "reassign_every": every,
            "reassign_warmup": warmup, "epoch_scale": scale}


def _curve_metrics(value: float, bits: int) -> dict[str, Any]:
    radius = np.arange(bits + 1)
    precision = np.clip(value + 0.25 - 0.6 * radius / bits, 0.05, 1.0)
    recall = np.clip((radius + 1) / (bits / 2 + 1), 0.0, 1.0) ** 0.7
    ns = np.asarray(PR_AT_N, dtype=float)
    p_at_n = np.clip(value + 0.2 - 0.05 * np.log10(ns), 0.0, 1.0)
    return {
        "precision_at_radius": precision.round(6).tolist(),
        "recall_at_radius": recall.round(6).tolist(),
        "p_at_r2": float(precision[min(2, bits)].round(6)),
        "pr_at_n": list(PR_AT_N),
        "precision_at_n": p_at_n.round(6).tolist(),
        "recall_at_n": np.clip(ns / 7000, 0, 1).round(6).tolist(),
    }


def build_record(
    method: str = "crh",
    bits: int = 16,
    seed: int = 0,
    mAP: float = 0.6,
    *,
    dataset: str = "fashion-mnist",
    protocol: str = "native",
    settings: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
    epochs: int = 10,
    status: str = "complete",
    results_version: Any = RESULTS_VERSION,
    train_seconds: float = 20.0,
    setup_seconds: float = 0.01,
    hook_seconds: float = 0.0,
    stages: dict[str, float] | None = None,
    semantics: Any = UNSET,
    num_classes: int = 10,
    split_digest: str = "5eed" * 16,
    changed_per_step: list[int] | None = None,
    failure: str = "TrainingDiverged: loss became nan at epoch 3, step 120",
) -> dict[str, Any]:
    """One run record of the exact stored format. `settings` are method-specific settings
    (they go into both spec.overrides and the resolved config, as `--set` would put them);
    `overrides` adds further spec overrides (training settings such as lr)."""
    settings = dict(settings or {})
    spec_overrides = {**settings, **(overrides or {})}
    config = _method_config(method, protocol)
    config.update(epochs=epochs, eval_every=max(1, epochs // 5))
    config.update(spec_overrides)
    spec = {"method": method, "dataset": dataset, "bits": bits, "seed": seed, "protocol": protocol,
            "backbone": None, "pretrained": False, "split_seed": 0, "overrides": spec_overrides}
    digest = hashlib.sha256(json.dumps({**spec, "overrides": None, "config": config}, sort_keys=True,
                                       default=str).encode()).hexdigest()
    run_id = f"{method}-{bits}b-s{seed}-{protocol}-{digest[:10]}"
    code = {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False, "package_version": "0.1.0",
            "results_version": results_version}
    environment = {"python": "3.11.7", "platform": "Linux-x86_64", "torch": "2.14.1", "numpy": "2.4.6",
                   "device": "cpu", "torch_threads": 2, "cpu_count": 2}
    base = {"schema": 1, "run_id": run_id, "spec": spec, "code": code, "config": config,
            "started_at": "2026-01-01T00:00:00Z", "host": "test", "environment": environment}
    if status != "complete":
        return {**base, "status": status, "failure": failure,
                "traceback": "Traceback (most recent call last):\n  ...\n" + failure + "\n"}

    rng = np.random.default_rng([seed, bits, sum(map(ord, method))])
    eval_every = config["eval_every"]
    history, method_history = [], []
    crh = method == "crh"
    crh_settings = _crh_settings(config, bits, num_classes, epochs) if crh else {}
    steps = list(changed_per_step or [])
    for epoch in range(1, epochs + 1):
        entry: dict[str, Any] = {"epoch": epoch, "loss": round(1.0 / epoch, 6), "lr": 1e-4,
                                 "train_seconds": train_seconds / epochs,
                                 "hook_seconds": hook_seconds / epochs}
        if crh and crh_settings["reassign"] != "never":
            warm, every = crh_settings["reassign_warmup"], crh_settings["reassign_every"]
            if epoch <= warm or (epoch - warm) % every == 0:
                moved = steps.pop(0) if steps else max(0, num_classes - 2 * len(method_history))
                heads = crh_settings["heads"]
                step = {"changed": [moved] * heads, "changed_classes": moved, "cost": [1.0] * heads,
                        "cost_before": [1.2] * heads, "absent_classes": 0, "seconds": 0.001}
                entry["method"] = {"reassignment": step}
                method_history.append({"epoch": epoch, **step})
        if epoch % eval_every == 0 or epoch == epochs:
            entry["val_mAP"] = round(mAP * (0.7 + 0.3 * epoch / epochs), 6)
        history.append(entry)

    metrics = {"mAP": mAP, "mAP_tie_aware": mAP - 0.01, "topk": "all", "topk_effective": 6000,
               "num_queries": 1000, "num_db": 6000, "bits": bits, "tie_order": "database index (stable)",
               "zero_relevant": "zero", "num_zero_relevant": 0, "num_queries_in_mAP": 1000,
               "num_zero_relevant_tie_aware": 0, "num_queries_in_mAP_tie_aware": 1000,
               "empty_radius_precision": "zero", "recall_without_relevant": "excluded",
               "num_queries_without_relevant": 0, "backend": "numba",
               "precision_at_n_denominator": "min(N, num_db)", **_curve_metrics(mAP, bits)}
    stage_times = dict(stages or {})
    setup = setup_seconds + sum(stage_times.values())
    timings = {"data": 0.5, "method_setup": setup, "train": train_seconds, "validation": 2.0,
               "method_hooks": hook_seconds, "encode": 0.3, "evaluate": 0.1,
               "total": 0.5 + setup + train_seconds + 2.0 + hook_seconds + 0.4,
               "method_stages": stage_times}
    record: dict[str, Any] = {
        **base, "status": "complete", "device": "cpu",
        "task": {"num_classes": num_classes, "multi_label": False,
                 "class_names": FASHION_CLASSES[:num_classes] if num_classes <= 10 else []},
        "split": {"digest": split_digest, "path": "splits/x.npz", "seed": 0, "data": f"{dataset}:test",
                  "sizes": {"query": 1000, "train": 5000, "validation": 1000, "database": 69000}},
        "selection": {"criterion": "validation mAP@all (validation queries vs train set)",
                      "best_epoch": epochs, "best_val_mAP": history[-1]["val_mAP"]},
        "metrics": metrics, "history": history, "timings": timings,
        "finished_at": "2026-01-01T00:10:00Z",
    }
    centers = None
    if method == "csq":
        from scipy.linalg import hadamard

        centers = hadamard(bits)[:num_classes].astype(int)
        record["method"] = {"centers": centers.tolist()}
    elif method in ("crh", "shc"):
        centers = np.where(rng.random((num_classes, bits)) < 0.5, 1, -1)
        record["method"] = {"centers": centers.tolist()}
        if crh:
            record["method"] = {"settings_used": crh_settings,
                                "reassignment_epochs": [h["epoch"] for h in method_history],
                                "reassignments": method_history, "centers": centers.tolist()}
    else:
        record["method"] = {}
    record["method_at_selected_epoch"] = record["method"]
    if centers is not None:
        similarity = np.eye(num_classes) * 0.5 + 0.5 * np.abs(rng.random((num_classes, num_classes)))
        similarity = ((similarity + similarity.T) / 2).round(6)
        np.fill_diagonal(similarity, 1.0)
        if semantics is UNSET:
            pair = {"csq": (None, None)}.get(method, (0.3, 0.25))
        else:
            pair = semantics if isinstance(semantics, tuple) else (semantics, semantics)
        record["centers"] = centers.tolist()
        record["class_similarity"] = {"measure": "cosine of class-mean backbone features (train split)",
                                      "matrix": similarity.tolist()}
        record["center_semantics"] = {"pearson": pair[0], "spearman": pair[1]}
    return record


def write_result_files(results_dir: Path, records: list[dict], corrupt: dict[str, str] | None = None) -> Path:
    """Write records (and optional corrupt files: relative path -> text) under results_dir/runs."""
    from bench.runs.records import record_file_name, write_record

    for record in records:
        spec = record["spec"]
        folder = Path(results_dir) / "runs" / spec["dataset"] / spec["method"]
        write_record(folder / record_file_name(record["run_id"]), record)
    for relative, text in (corrupt or {}).items():
        path = Path(results_dir) / "runs" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return Path(results_dir)


@pytest.fixture(scope="module")
def claims():
    """The committed claims file (bench/claims.yaml), parsed once per module."""
    from bench.report import load_claims

    return load_claims()


@pytest.fixture
def make_record():
    """Factory fixture: make_record(method, bits, seed, mAP, **options) -> record dict."""
    return build_record


@pytest.fixture
def write_results():
    """write_results(dir, records, corrupt={"fashion-mnist/csq/x.json": "{"}) -> dir."""
    return write_result_files


@pytest.fixture
def register_method(monkeypatch: pytest.MonkeyPatch):
    """register_method(cls) -> cls: the method registry plus `cls` (a test's own HashMethod
    subclass), for this test only."""
    import methods

    def register(cls):
        registry = dict(methods._discover())
        registry[cls.name] = cls
        monkeypatch.setattr(methods, "_REGISTRY", registry)
        return cls

    return register


@pytest.fixture
def tuned_csq(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tuned setting for csq on the synthetic card at 16 bits and 1 epoch, in tmp_path/tuned
    (BENCH_TUNED_DIR for this test); returns the setting's file."""
    tuned = tmp_path / "tuned"
    tuned.mkdir()
    monkeypatch.setenv("BENCH_TUNED_DIR", str(tuned))
    setting = tuned / "synthetic.yaml"
    setting.write_text("dataset: synthetic\nmethods:\n  csq:\n    values: {lr: 0.0005}\n"
                       "    bits: 16\n    epochs: 1\n")
    return setting


@pytest.fixture
def one_thread():
    """Train single-threaded: on a small shared machine, torch's intra-op threads oversubscribe
    the cores and a tiny run slows down several-fold."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
