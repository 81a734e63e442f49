"""The one training loop. Every method trains and is evaluated here; methods supply a loss,
optional hooks and any modules they own (see `methods/base.py`); the loop optimises, moves,
checkpoints and switches those modules with the network, and encodes through the method's
declared retrieval output.

How a run computes (threads, kernels, memory format, bf16 on CUDA, encoding shortcuts) is
its `bench.numerics.Numerics`, applied around the whole run and kept in the record; the
legacy path (`BENCH_FAST=0`) is the loop as it was before those levers.

Model selection: every `eval_every` epochs (and at the last) the validation queries are
ranked against the split's validation database (held-out images disjoint from train and query,
protocol v2; cards without one fall back to the training images, and the record says which);
the best epoch by validation mAP is kept. The query set is encoded and scored once, on that
selected checkpoint.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bench.backbones import HashNetwork, build_backbone
from bench.data import DatasetCard, ImageSource, ground_truth_record, load_card, open_dataset
from bench.errors import UserError
from bench.numerics import ImageCache, Numerics, applied, fused_for_inference, pick_device, resolve
from bench.records import relative_to_results
from bench.retrieval import evaluate_retrieval
from bench.spec import RunSpec, resolve_config, run_id
from bench.splits import Split, make_split, selection_description, selection_reference
from methods import get_method
from methods.base import HashMethod
from methods.context import Batch, Task

PR_AT_N = (1, 10, 50, 100, 500, 1000, 2000, 5000)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite: the run is recorded as failed with this reason."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeds third-party code using the legacy API
    torch.manual_seed(seed)


__all__ = ["PR_AT_N", "RunContext", "TrainingDiverged", "encode", "iterate_batches", "pick_device",
           "steps_per_epoch", "train_and_evaluate", "validation_database"]


def steps_per_epoch(num_items: int, batch_size: int) -> int:
    """Optimizer steps in one pass: every full batch and the partial last one, unless that one
    would hold a single sample (`iterate_batches` drops it)."""
    full, rest = divmod(num_items, batch_size)
    return max(1, full + (1 if rest >= 2 or (rest == 1 and full == 0) else 0))


def iterate_batches(
    source: ImageSource, indices: np.ndarray, batch_size: int, train: bool, device: torch.device,
    num_workers: int = 0, numerics: Numerics | None = None, cache: ImageCache | None = None,
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Yield (indices, images, multi-hot labels) in the given order. In-memory data is
    gathered directly (no DataLoader overhead), from `cache` where it holds the batch; file
    data goes through a DataLoader. Images come in the memory format `numerics` asks for."""
    chunks = [indices[i: i + batch_size] for i in range(0, len(indices), batch_size)]
    if train and len(chunks) > 1 and len(chunks[-1]) < 2:
        chunks.pop()  # a batch of one breaks batch normalisation
    labels = torch.from_numpy(source.labels)
    non_blocking = numerics.non_blocking if numerics is not None else True
    shape = numerics.images if numerics is not None else (lambda images: images)
    if source.in_memory or num_workers == 0:
        for chunk in chunks:
            images = cache.take(chunk) if cache is not None else None
            if images is None:
                images = source.batch(chunk, train)
            yield (chunk, shape(images.to(device, non_blocking=non_blocking)),
                   labels[chunk].float().to(device, non_blocking=non_blocking))
        return
    loader = torch.utils.data.DataLoader(
        _IndexDataset(source, train), batch_sampler=[c.tolist() for c in chunks],
        num_workers=num_workers, pin_memory=device.type == "cuda",
    )
    for chunk, images in zip(chunks, loader, strict=True):
        yield (chunk, shape(images.to(device, non_blocking=non_blocking)),
               labels[chunk].float().to(device, non_blocking=non_blocking))


class _IndexDataset(torch.utils.data.Dataset):
    def __init__(self, source: ImageSource, train: bool) -> None:
        self.source, self.train = source, train

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.source.load(index, self.train)


def encode(
    model: torch.nn.Module, source: ImageSource, indices: np.ndarray, device: torch.device,
    batch_size: int | None = None, features: bool = False, progress: bool = False,
    desc: str = "encode", num_workers: int = 0, method: HashMethod | None = None,
    numerics: Numerics | None = None, cache: ImageCache | None = None,
) -> np.ndarray:
    """Real-valued outputs of `model` for `indices`, in order: the method's declared retrieval
    output when a method is given (its owned modules in eval mode), else `model(images)`, or
    the backbone features with `features=True`. `numerics` (default: the legacy path's)
    decides inference mode, conv+BN folding, the batch size and bf16 on CUDA."""
    numerics = numerics or resolve(device, fast=False)
    model.eval()
    if method is not None:
        method.owned.eval()
    batch_size = batch_size or numerics.encode_batch
    with numerics.grad_off():
        # The HashNetwork's backbone (or any other module) folded for inference; the copy
        # shares nothing with the trained weights, which stay as they are.
        backbone = fused_for_inference(model.backbone if hasattr(model, "hash_layer") else model,
                                       numerics)
        outputs = []
        batches = iterate_batches(source, indices, batch_size, False, device, num_workers,
                                  numerics, cache)
        for _, images, _ in tqdm(batches, total=math.ceil(len(indices) / batch_size), desc=desc,
                                 leave=False, disable=not progress):
            with numerics.autocast():
                if not hasattr(model, "hash_layer"):
                    out = backbone(images)
                elif features:
                    out = backbone(images)
                elif method is not None:
                    backbone_features = backbone(images).float()
                    out = method.retrieval_code(model.hash_layer(backbone_features), backbone_features)
                else:
                    out = model.hash_layer(backbone(images))
            outputs.append(out.float().cpu())
    return torch.cat(outputs).numpy()


@dataclass
class RunContext:
    """What hooks can see and use: the run's settings, data, model and progress. Satisfies the
    `methods.context.TrainContext` protocol, which is all a method may rely on."""

    spec: RunSpec
    config: dict[str, Any]
    card: DatasetCard
    task: Task
    source: ImageSource
    split: Split
    model: HashNetwork
    device: torch.device
    progress_bars: bool = True
    num_workers: int = 0
    weights_file: str | None = None
    epoch: int = 0
    step: int = 0
    steps_per_epoch: int = 1
    logged: dict[str, list[float]] = field(default_factory=dict)
    stage_times: dict[str, float] = field(default_factory=dict)
    batch: Batch | None = None
    numerics: Numerics | None = None
    cache: ImageCache | None = None

    @property
    def train_indices(self) -> np.ndarray:
        return self.split.train

    def labels_of(self, indices: np.ndarray) -> np.ndarray:
        """Multi-hot labels [N, C] of dataset items."""
        return np.asarray(self.source.labels[indices])

    def encode_with(self, module: torch.nn.Module, indices: np.ndarray) -> np.ndarray:
        """Outputs of any module (e.g. SHC's stage-1 classifier) for dataset items, unaugmented."""
        return encode(module, self.source, indices, self.device, num_workers=self.num_workers,
                      numerics=self.numerics, cache=self.cache)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * int(self.config["epochs"])

    @property
    def progress(self) -> float:
        """Fraction of training done, 0..1 (for continuation schedules such as HashNet's)."""
        return self.step / max(1, self.total_steps)

    def log(self, name: str, value: float | torch.Tensor) -> None:
        """Record a loss component; the epoch summary stores its mean."""
        self.logged.setdefault(name, []).append(float(value))

    def new_backbone(self) -> torch.nn.Module:
        """A fresh backbone of the run's kind (SHC trains a classifier on one)."""
        backbone = build_backbone(
            self.spec.backbone or self.card.backbone, self.card.channels, self.spec.pretrained,
            self.weights_file,
        )
        backbone = backbone.to(self.device)
        return self.numerics.module(backbone) if self.numerics is not None else backbone

    def new_optimizer(self, backbone: torch.nn.Module, head: torch.nn.Module,
                      epochs: int) -> tuple[torch.optim.Optimizer, Any]:
        """The run's optimizer and schedule for another network (see `stage_optimizer`)."""
        return stage_optimizer(backbone, head, self.config, epochs)

    def train_batches(
        self, generator: torch.Generator, batch_size: int | None = None
    ) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """One shuffled pass over the training split."""
        order = self.split.train[torch.randperm(len(self.split.train), generator=generator).numpy()]
        return iterate_batches(self.source, order, batch_size or int(self.config["batch_size"]),
                               True, self.device, self.num_workers, self.numerics, self.cache)


def build_optimizer(model: HashNetwork, config: dict[str, Any],
                    method: HashMethod | None = None) -> torch.optim.Optimizer:
    """Backbone, hash layer and the method's owned parameters (its own groups: the hash layer's
    group stays last, so `param_groups[-1]["lr"]` is the run's learning rate in the history)."""
    lr = float(config["lr"])
    decay = float(config["weight_decay"])
    owned = method.parameter_groups(lr, decay) if method is not None else []
    return _optimizer(model.backbone, model.hash_layer, owned, config)


def _optimizer(backbone: torch.nn.Module, head: torch.nn.Module, owned: list[dict[str, Any]],
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
    optimizer = _optimizer(backbone, head, [], settings)
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


def _attack(model: torch.nn.Module, method: HashMethod, source: ImageSource, split: Any,
            query_codes: np.ndarray, db_codes: np.ndarray, attack: Any, run_seed: int,
            device: torch.device, clean_mAP: float, topk: int | None, zero_relevant: str,
            num_workers: int, numerics: Numerics, cache: Any) -> dict[str, Any]:
    """The query images attacked (bench.attack); the result goes beside the record, not in it."""
    from bench.attack import attack_queries

    box = source.pixel_box()
    if box is None:
        raise UserError(f"--attack: the images of {source.identity} declare no normalisation, so a "
                        f"pixel budget cannot be applied")
    train_codes = None
    if attack.target == "center":
        train_codes = encode(model, source, split.train, device, num_workers=num_workers,
                             method=method, numerics=numerics, cache=cache)
    return attack_queries(
        model, method, lambda indices: source.batch(indices, train=False), split.query,
        source.labels[split.query], query_codes, db_codes, source.labels[split.database],
        train_codes, source.labels[split.train], box, attack, run_seed, device, clean_mAP,
        lambda q, d, ql, dl: evaluate_retrieval(q, d, ql, dl, topk=topk, zero_relevant=zero_relevant))


def _encode_parts(model: torch.nn.Module, source: ImageSource, parts: list[np.ndarray],
                  device: torch.device, numerics: Numerics, **options: Any) -> list[np.ndarray]:
    """`encode` of several index sets: one call (one folded copy of the network, full batches
    across the seams) on the fast path; one call per set on the legacy path, as it was."""
    if numerics.path == "legacy":
        return [encode(model, source, part, device, numerics=numerics, **options) for part in parts]
    codes = encode(model, source, np.concatenate(parts), device, numerics=numerics, **options)
    return np.split(codes, np.cumsum([len(part) for part in parts])[:-1])


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


def _rounded(values: list[float | None]) -> list[float | None]:
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


def train_and_evaluate(
    spec: RunSpec,
    results_dir: Path | None = None,
    data_root: str | None = None,
    device: str | None = None,
    progress_bars: bool = True,
    num_workers: int = 0,
    zero_relevant: str = "zero",
    weights_file: str | None = None,
    numerics: Numerics | None = None,
    attack: Any = None,
) -> dict[str, Any]:
    """Train one run and return its record body (metrics, history, timings, extras).

    `numerics` (default: the path `BENCH_FAST` selects, for `device`) is applied for the
    whole run and restored afterwards. `attack` (a `bench.attack.AttackSpec`) adds the
    queries' evaluation under attack as `attack_result`, which the caller stores apart."""
    torch_device = pick_device(device)
    numerics = numerics or resolve(torch_device)
    with applied(numerics):
        body = _train_and_evaluate(spec, results_dir, data_root, torch_device, progress_bars,
                                   num_workers, zero_relevant, weights_file, numerics, attack)
    return body


def _train_and_evaluate(
    spec: RunSpec, results_dir: Path | None, data_root: str | None, torch_device: torch.device,
    progress_bars: bool, num_workers: int, zero_relevant: str, weights_file: str | None,
    numerics: Numerics, attack: Any = None,
) -> dict[str, Any]:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    card = load_card(spec.dataset)
    config = resolve_config(spec, card)
    method_cls = get_method(spec.method)
    task = Task(bits=spec.bits, num_classes=card.num_classes, multi_label=card.multi_label,
                seed=spec.seed, epochs=int(config["epochs"]), device=torch_device,
                pretrained=spec.pretrained)
    method_cls.check(config, task)

    source = open_dataset(card, data_root)
    split = make_split(card, source, spec.split_seed, Path(results_dir) / "splits" if results_dir else None)

    seed_everything(spec.seed)
    backbone = build_backbone(spec.backbone or card.backbone, card.channels, spec.pretrained,
                              weights_file)
    model = numerics.module(HashNetwork(backbone, spec.bits).to(torch_device))
    method: HashMethod = method_cls(config, task)
    method.owned.to(torch_device)
    validation_reference, selection = validation_database(split, card.map_at)
    cache = None
    if numerics.cached_images and ImageCache.usable(source):
        # what is read more than once: every epoch's training images, every validation's
        cache = ImageCache(source, np.concatenate([split.train, split.validation, validation_reference]),
                           torch_device, numerics)
    ctx = RunContext(spec=spec, config=config, card=card, task=task, source=source, split=split,
                     model=model, device=torch_device, progress_bars=progress_bars,
                     num_workers=num_workers, weights_file=weights_file, numerics=numerics,
                     cache=cache)
    timings["data"] = time.perf_counter() - started
    batch_size = int(config["batch_size"])
    ctx.steps_per_epoch = steps_per_epoch(len(split.train), batch_size)

    setup_start = time.perf_counter()
    method.setup(ctx)
    seed_everything(spec.seed + 1)  # setup may consume randomness; keep the loop's order fixed
    timings["method_setup"] = time.perf_counter() - setup_start

    optimizer = build_optimizer(model, config, method)
    clip_norm = float(config.get("grad_clip") or 0.0)
    trained_parameters = [p for group in optimizer.param_groups for p in group["params"]]
    scheduler = build_scheduler(optimizer, config)
    order_generator = torch.Generator().manual_seed(spec.seed)
    epochs = int(config["epochs"])
    eval_every = int(config["eval_every"])
    topk = card.map_at
    val_topk = selection["topk"]
    history: list[dict[str, Any]] = []
    best = {"epoch": -1, "val_mAP": -math.inf, "state": None}
    train_time = 0.0
    validation_time = 0.0
    validation_encode_time = 0.0  # the part of validation_time spent encoding
    hook_time = 0.0

    epoch_bar = tqdm(range(epochs), desc=spec.label(), disable=not progress_bars, leave=False)
    for epoch in epoch_bar:
        ctx.epoch = epoch
        ctx.logged = {}
        model.train()
        method.owned.train()
        epoch_start = time.perf_counter()
        losses: list[float] = []
        collected_codes: list[torch.Tensor] = []
        collected_labels: list[torch.Tensor] = []
        batches = ctx.train_batches(order_generator)
        for indices, images, labels in tqdm(batches, total=ctx.steps_per_epoch, desc=f"epoch {epoch + 1}",
                                            leave=False, disable=not progress_bars):
            with numerics.autocast():  # bf16 on CUDA only; the loss is computed in float32
                features = model.features(images)
                h = model.hash_layer(features)
            features, h = features.float(), h.float()
            ctx.batch = Batch(indices=indices, images=images, labels=labels, features=features, h=h)
            loss = method.loss(h, labels, ctx)
            loss_value = float(loss.detach())  # one host sync per step, reused for the check
            if not math.isfinite(loss_value):
                raise TrainingDiverged(f"loss became {loss_value} at epoch {epoch + 1}, step {ctx.step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_norm > 0:  # a method's native setting (MDS: 5); off in the shared protocols
                torch.nn.utils.clip_grad_norm_(trained_parameters, clip_norm)
            optimizer.step()
            method.after_step(ctx)
            losses.append(loss_value)
            if method_cls.collects_codes:
                collected_codes.append(torch.where(h.detach() >= 0, 1, -1).to(torch.int8))
                collected_labels.append(labels)
            ctx.step += 1
        ctx.batch = None
        scheduler.step()
        epoch_train = time.perf_counter() - epoch_start
        train_time += epoch_train

        hook_start = time.perf_counter()
        codes = torch.cat(collected_codes) if collected_codes else None
        seen_labels = torch.cat(collected_labels) if collected_labels else None
        hook_output = method.on_epoch_end(epoch, codes, seen_labels, ctx)
        hook_seconds = time.perf_counter() - hook_start
        hook_time += hook_seconds

        entry: dict[str, Any] = {
            "epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
            "lr": optimizer.param_groups[-1]["lr"], "train_seconds": epoch_train,
            "hook_seconds": hook_seconds,
            **{f"loss_{k}": float(np.mean(v)) for k, v in ctx.logged.items()},
        }
        if hook_output:
            entry["method"] = hook_output
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            val_start = time.perf_counter()
            val_codes, reference_codes = _encode_parts(
                model, source, [split.validation, validation_reference], torch_device,
                num_workers=num_workers, method=method, numerics=numerics, cache=cache)
            validation_encode_time += time.perf_counter() - val_start
            val_metrics = evaluate_retrieval(
                val_codes, reference_codes, source.labels[split.validation],
                source.labels[validation_reference], topk=val_topk, zero_relevant=zero_relevant,
            )
            entry["val_mAP"] = float(val_metrics["mAP"])
            validation_time += time.perf_counter() - val_start
            if entry["val_mAP"] > best["val_mAP"]:
                best = {"epoch": epoch + 1, "val_mAP": entry["val_mAP"],
                        "state": copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()}),
                        "method": copy.deepcopy(method)}
        history.append(entry)
        summary = f"epoch {epoch + 1}/{epochs} loss {entry['loss']:.4f}"
        if "val_mAP" in entry:
            summary += f" val mAP {entry['val_mAP']:.4f}"
        if progress_bars:
            tqdm.write(f"[{spec.label()}] {summary}")
        epoch_bar.set_postfix_str(summary)
    epoch_bar.close()
    timings.update(train=train_time, validation=validation_time,
                   validation_encode=validation_encode_time, method_hooks=hook_time)

    model.load_state_dict(best["state"])
    selected_method: HashMethod = best["method"]  # its centers and modules match the selected weights
    selected_method.owned.to(torch_device)
    encode_start = time.perf_counter()
    query_codes, db_codes = _encode_parts(
        model, source, [split.query, split.database], torch_device, progress=progress_bars,
        desc="encode query + database", num_workers=num_workers, method=selected_method,
        numerics=numerics, cache=cache)
    timings["encode"] = time.perf_counter() - encode_start

    eval_start = time.perf_counter()
    metrics = evaluate_retrieval(
        query_codes, db_codes, source.labels[split.query], source.labels[split.database],
        topk=topk, zero_relevant=zero_relevant, pr_at_n=PR_AT_N, per_query=True,
    )
    # Per-query AP (query order of the split) for paired or bootstrap intervals in the report.
    metrics["per_query_ap"] = _rounded(metrics.pop("ap_per_query"))
    metrics["per_query_ap_tie_aware"] = _rounded(metrics.pop("ap_tie_aware_per_query"))
    timings["evaluate"] = time.perf_counter() - eval_start

    extras: dict[str, Any] = {"database_codes": code_ties(db_codes)}
    centers = selected_method.class_centers()
    if centers is not None:
        train_features = encode(model, source, split.train, torch_device, features=True,
                                num_workers=num_workers, numerics=numerics, cache=cache)
        similarity = class_feature_similarity(train_features, source.labels[split.train])
        center_array = centers.detach().cpu().numpy().astype(np.int8)
        extras["centers"] = center_array.tolist()
        extras["class_similarity"] = {"measure": "cosine of class-mean backbone features (train split)",
                                      "matrix": similarity.round(6).tolist()}
        extras["center_semantics"] = center_semantics(center_array, similarity)
    if attack is not None:  # with the selected model still in memory (weights are not kept)
        extras["attack_result"] = _attack(model, selected_method, source, split, query_codes, db_codes,
                                          attack, spec.seed, torch_device, float(metrics["mAP"]),
                                          topk, zero_relevant, num_workers, numerics, cache)
    timings["total"] = time.perf_counter() - started
    timings["method_stages"] = dict(ctx.stage_times)

    return {
        "run_id": run_id(spec, config),
        "device": str(torch_device),
        "numerics": numerics.record(),
        "spec": spec.to_dict(),
        "config": config,
        "task": {"num_classes": card.num_classes, "multi_label": card.multi_label,
                 "class_names": list(card.class_names),
                 **({"ground_truth_similarity": truth} if (truth := ground_truth_record(source)) else {})},
        "split": {"digest": split.digest, "path": relative_to_results(split.path), "sizes": split.sizes(),
                  "seed": spec.split_seed, "data": source.identity},
        "selection": {**selection, "best_epoch": best["epoch"], "best_val_mAP": best["val_mAP"]},
        "metrics": metrics,
        "history": history,
        "timings": timings,
        "method": method.record(),
        "method_api": method.describe_api(),
        "method_at_selected_epoch": selected_method.record(),
        **extras,
    }
