"""The one training loop. Every method trains and is evaluated here; methods supply a loss,
optional hooks and any modules they own (see `methods/base.py`); the loop optimises, moves,
checkpoints and switches those modules with the network, and encodes through the method's
declared retrieval output.

How a run computes (threads, kernels, memory format, bf16 on CUDA, encoding shortcuts) is
its `bench.network.numerics.Numerics`, applied around the whole run and kept in the record; the
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
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bench.data.loading import DatasetCard, ImageSource, load_card, open_dataset
from bench.data.splits import Split, make_split
from bench.errors import UserError
from bench.evaluation.retrieval import evaluate_retrieval
from bench.network.backbones import HashNetwork, build_backbone, check_backbone_fits
from bench.network.numerics import ImageCache, Numerics, applied, fused_for_inference, pick_device, resolve
from bench.runs.spec import RunSpec, resolve_config
from bench.training import regime
from bench.training.parts import (
    TrainingDiverged,
    build_scheduler,
    center_semantics,
    class_feature_similarity,
    code_ties,
    optimizer_for,
    record_body,
    rounded,
    seed_everything,
    stage_optimizer,
    steps_per_epoch,
    validation_database,
)
from methods import get_method
from methods.base import HashMethod
from methods.context import Batch, Task

PR_AT_N = (1, 10, 50, 100, 500, 1000, 2000, 5000)

__all__ = ["PR_AT_N", "RunContext", "TrainingDiverged", "encode", "iterate_batches", "pick_device",
           "seed_everything", "stage_optimizer", "steps_per_epoch", "train_and_evaluate",
           "validation_database"]


def pr_at_n(card: DatasetCard) -> tuple[int, ...]:
    """The Ns precision and recall are recorded at: PR_AT_N, plus the card's precision@k."""
    k = card.precision_at
    return PR_AT_N if k is None or k in PR_AT_N else tuple(sorted({*PR_AT_N, k}))


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
                elif method is not None and type(method).encodes_inputs:
                    out = method.encode_inputs(images.float())
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
    supervised: bool = True
    augmentation: regime.Augmentation = field(default_factory=regime.Augmentation)
    augment_generator: torch.Generator | None = None

    @property
    def train_indices(self) -> np.ndarray:
        return self.split.train

    def labels_of(self, indices: np.ndarray) -> np.ndarray:
        """Multi-hot labels [N, C] of dataset items (refused to an unsupervised method)."""
        if not self.supervised:
            raise UserError(f"method {self.spec.method} is unsupervised: it may not read labels "
                            f"(ctx.labels_of)")
        return np.asarray(self.source.labels[indices])

    def augment(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One view of normalised images under the run's declared augmentation (bench.training.regime)."""
        generator = generator if generator is not None else self.augment_generator
        if generator is None:
            generator = self.augment_generator = regime.augmentation_generator(self.spec.seed)
        return self.augmentation(images, generator, self.source.pixel_box())

    def encode_with(self, module: torch.nn.Module, indices: np.ndarray) -> np.ndarray:
        """Outputs of any module (e.g. SHC's stage-1 classifier) for dataset items, unaugmented."""
        return encode(module, self.source, indices, self.device, num_workers=self.num_workers,
                      numerics=self.numerics, cache=self.cache)

    def pixel_box(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The source's pixel box (`ImageSource.pixel_box`) on the run's device."""
        box = self.source.pixel_box()
        return None if box is None else tuple(part.to(self.device) for part in box)  # type: ignore[return-value]

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
            self.spec.backbone or self.card.backbone, self.card.input_width, self.spec.pretrained,
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
        batches = iterate_batches(self.source, order, batch_size or int(self.config["batch_size"]),
                                  True, self.device, self.num_workers, self.numerics, self.cache)
        return batches if self.supervised else regime.unlabelled(batches)


def build_optimizer(model: HashNetwork, config: dict[str, Any],
                    method: HashMethod | None = None) -> torch.optim.Optimizer:
    """Backbone, hash layer and the method's owned parameters (its own groups: the hash layer's
    group stays last, so `param_groups[-1]["lr"]` is the run's learning rate in the history)."""
    lr = float(config["lr"])
    decay = float(config["weight_decay"])
    owned = method.parameter_groups(lr, decay) if method is not None else []
    return optimizer_for(model.backbone, model.hash_layer, owned, config)


def _attack(model: torch.nn.Module, method: HashMethod, source: ImageSource, split: Any,
            query_codes: np.ndarray, db_codes: np.ndarray, attack: Any, run_seed: int,
            device: torch.device, clean_mAP: float, topk: int | None, zero_relevant: str,
            num_workers: int, numerics: Numerics, cache: Any) -> dict[str, Any]:
    """The query images attacked (bench.evaluation.attack); the result goes beside the record, not in it."""
    from bench.evaluation.attack import attack_queries

    if source.modality != "image":
        raise UserError(f"--attack perturbs image pixels; {source.modality} inputs have no pixel budget")
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
    whole run and restored afterwards. `attack` (a `bench.evaluation.attack.AttackSpec`) adds the
    queries' evaluation under attack as `attack_result`, which the caller stores apart."""
    torch_device = pick_device(device)
    numerics = numerics or resolve(torch_device)
    with applied(numerics):
        body = _train_and_evaluate(spec, results_dir, data_root, torch_device, progress_bars,
                                   num_workers, zero_relevant, weights_file, numerics, attack)
    return body


@dataclass
class Run:
    """One run while it trains: what `_build_run` made, and what the later steps add."""

    spec: RunSpec
    card: DatasetCard
    config: dict[str, Any]
    source: ImageSource
    split: Split
    model: HashNetwork
    method: HashMethod
    ctx: RunContext
    numerics: Numerics
    cache: ImageCache | None
    validation_reference: np.ndarray
    selection: dict[str, Any]
    zero_relevant: str
    rule: str = regime.VALIDATION
    regime: dict[str, Any] | None = None  # what training saw, for a run that is not supervised training
    timings: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": -1, "val_mAP": -math.inf, "state": None})


def _train_and_evaluate(
    spec: RunSpec, results_dir: Path | None, data_root: str | None, torch_device: torch.device,
    progress_bars: bool, num_workers: int, zero_relevant: str, weights_file: str | None,
    numerics: Numerics, attack: Any = None,
) -> dict[str, Any]:
    """The protocol, step by step."""
    started = time.perf_counter()
    run = _build_run(spec, results_dir, data_root, torch_device, progress_bars, num_workers,
                     zero_relevant, weights_file, numerics, started)
    _train_with_selection(run, progress_bars)
    selected = _restore_best_epoch(run)
    query_codes, db_codes, metrics = _encode_and_evaluate(run, selected, progress_bars)
    extras = _describe_codes_and_centers(run, selected, db_codes)
    if attack is not None:  # with the selected model still in memory (weights are not kept)
        extras["attack_result"] = _attack(run.model, selected, run.source, run.split, query_codes,
                                          db_codes, attack, spec.seed, torch_device,
                                          float(metrics["mAP"]), run.card.map_at, zero_relevant,
                                          num_workers, numerics, run.cache)
    run.timings["total"] = time.perf_counter() - started
    run.timings["method_stages"] = dict(run.ctx.stage_times)
    return record_body(run, selected, metrics, extras)


def _build_run(spec: RunSpec, results_dir: Path | None, data_root: str | None, torch_device: torch.device,
               progress_bars: bool, num_workers: int, zero_relevant: str, weights_file: str | None,
               numerics: Numerics, started: float) -> Run:
    """Build the run: configuration, data and split, network, method, and its setup stage."""
    card = load_card(spec.dataset)
    config = resolve_config(spec, card)
    method_cls = get_method(spec.method)
    task = Task(bits=spec.bits, num_classes=card.num_classes, multi_label=card.multi_label,
                seed=spec.seed, epochs=int(config["epochs"]), device=torch_device,
                pretrained=spec.pretrained)
    method_cls.check(config, task)
    views = regime.check_views(method_cls.views, spec.method)

    check_backbone_fits(card, spec.backbone or card.backbone)
    source = open_dataset(card, data_root)
    split = make_split(card, source, spec.split_seed, Path(results_dir) / "splits" if results_dir else None)
    source = source.for_split(split)  # a document card's vocabulary: its training documents only

    seed_everything(spec.seed)
    backbone = build_backbone(spec.backbone or card.backbone, card.input_width, spec.pretrained,
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
                     cache=cache, supervised=method_cls.supervised,
                     augmentation=regime.Augmentation.of_card(card),
                     augment_generator=regime.augmentation_generator(spec.seed))
    run = Run(spec=spec, card=card, config=config, source=source, split=split, model=model,
              method=method, ctx=ctx, numerics=numerics, cache=cache,
              validation_reference=validation_reference, selection=selection,
              zero_relevant=zero_relevant,
              rule=regime.selection_rule(method_cls.supervised, method_cls.trains, card))
    run.regime = regime.regime_record(method_cls.supervised, method_cls.trains, views, run.rule,
                                      ctx.augmentation)
    run.timings["data"] = time.perf_counter() - started
    ctx.steps_per_epoch = steps_per_epoch(len(split.train), int(config["batch_size"]))

    setup_start = time.perf_counter()
    method.setup(ctx)
    regime.centers_allowed(method_cls.supervised, method.class_centers(), spec.method)
    seed_everything(spec.seed + 1)  # setup may consume randomness; keep the loop's order fixed
    run.timings["method_setup"] = time.perf_counter() - setup_start
    return run


def _train_with_selection(run: Run, progress_bars: bool) -> None:
    """Train for the configured epochs; every eval_every epochs (and at the last), score the
    validation queries against the validation database and keep the best epoch's state."""
    config, spec, model, method = run.config, run.spec, run.model, run.method
    if run.rule == regime.FITTED:  # nothing to train: score the fitted method once, keep it
        seconds, encode_seconds = _validate(run, {}, -1)
        run.timings.update({"train": 0.0, "validation": seconds, "validation_encode": encode_seconds,
                            "method_hooks": 0.0})
        return
    optimizer = build_optimizer(model, config, method)
    scheduler = build_scheduler(optimizer, config)
    order_generator = torch.Generator().manual_seed(spec.seed)
    epochs, eval_every = int(config["epochs"]), int(config["eval_every"])
    totals = {"train": 0.0, "validation": 0.0, "validation_encode": 0.0, "method_hooks": 0.0}
    epoch_bar = tqdm(range(epochs), desc=spec.label(), disable=not progress_bars, leave=False)
    for epoch in epoch_bar:
        entry, codes, seen_labels = _train_one_epoch(run, epoch, optimizer, order_generator, progress_bars)
        scheduler.step()
        entry["lr"] = optimizer.param_groups[-1]["lr"]  # after the schedule's step, as always recorded
        totals["train"] += entry["train_seconds"]
        entry.update(_run_epoch_hook(run, epoch, codes, seen_labels))
        totals["method_hooks"] += entry["hook_seconds"]
        if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
            seconds, encode_seconds = _validate(run, entry, epoch)
            totals["validation"] += seconds
            totals["validation_encode"] += encode_seconds
        run.history.append(entry)
        summary = f"epoch {epoch + 1}/{epochs} loss {entry['loss']:.4f}"
        if "val_mAP" in entry:
            summary += f" val mAP {entry['val_mAP']:.4f}"
        if progress_bars:
            tqdm.write(f"[{spec.label()}] {summary}")
        epoch_bar.set_postfix_str(summary)
    epoch_bar.close()
    run.timings.update(totals)


def _train_one_epoch(run: Run, epoch: int, optimizer: torch.optim.Optimizer,
                     order_generator: torch.Generator, progress_bars: bool
                     ) -> tuple[dict[str, Any], torch.Tensor | None, torch.Tensor | None]:
    """One shuffled pass over the training split: the method's loss, a step, its after-step;
    returns the epoch's entry and, for a method that collects them, its codes and labels."""
    ctx, model, method, numerics = run.ctx, run.model, run.method, run.numerics
    clip_norm = float(run.config.get("grad_clip") or 0.0)
    trained_parameters = [p for group in optimizer.param_groups for p in group["params"]]
    ctx.epoch = epoch
    ctx.logged = {}
    model.train()
    method.owned.train()
    epoch_start = time.perf_counter()
    losses: list[float] = []
    collected_codes: list[torch.Tensor] = []
    collected_labels: list[torch.Tensor] = []
    batches = ctx.train_batches(order_generator)
    views = 0 if ctx.supervised else type(method).views
    for indices, images, labels in tqdm(batches, total=ctx.steps_per_epoch, desc=f"epoch {epoch + 1}",
                                        leave=False, disable=not progress_bars):
        view_images = tuple(ctx.augment(images) for _ in range(views))  # unsupervised: its views
        if view_images:
            images = torch.cat(view_images) if views > 1 else view_images[0]
        with numerics.autocast():  # bf16 on CUDA only; the loss is computed in float32
            features = model.features(images)
            h = model.hash_layer(features)
        features, h = features.float(), h.float()
        view_h: tuple[torch.Tensor, ...] = h.split(len(indices)) if view_images else ()
        if view_images:  # the first view is the batch's own; every view's output in `views`
            images, features, h = view_images[0], features[: len(indices)], view_h[0]
        ctx.batch = Batch(indices=indices, images=images, labels=labels, features=features, h=h,
                          views=view_h, view_images=view_images)
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
        if type(method).collects_codes:
            collected_codes.append(torch.where(h.detach() >= 0, 1, -1).to(torch.int8))
            collected_labels.append(labels)
        ctx.step += 1
    ctx.batch = None
    entry = {"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else float("nan"),
             "train_seconds": time.perf_counter() - epoch_start}
    return (entry, torch.cat(collected_codes) if collected_codes else None,
            torch.cat(collected_labels) if collected_labels else None)


def _run_epoch_hook(run: Run, epoch: int, codes: torch.Tensor | None,
                    seen_labels: torch.Tensor | None) -> dict[str, Any]:
    """The method's epoch-end hook (with the epoch's codes when it collects them)."""
    hook_start = time.perf_counter()
    hook_output = run.method.on_epoch_end(epoch, codes, seen_labels, run.ctx)
    entry: dict[str, Any] = {"hook_seconds": time.perf_counter() - hook_start,
                             **{f"loss_{k}": float(np.mean(v)) for k, v in run.ctx.logged.items()}}
    if hook_output:
        entry["method"] = hook_output
    return entry


def _validate(run: Run, entry: dict[str, Any], epoch: int) -> tuple[float, float]:
    """Selection on the validation database only; the best epoch's weights and method are kept."""
    val_start = time.perf_counter()
    val_codes, reference_codes = _encode_parts(
        run.model, run.source, [run.split.validation, run.validation_reference], run.ctx.device,
        num_workers=run.ctx.num_workers, method=run.method, numerics=run.numerics, cache=run.cache)
    encode_seconds = time.perf_counter() - val_start
    val_metrics = evaluate_retrieval(
        val_codes, reference_codes, run.source.labels[run.split.validation],
        run.source.labels[run.validation_reference], topk=run.selection["topk"],
        zero_relevant=run.zero_relevant,
    )
    entry["val_mAP"] = float(val_metrics["mAP"])
    if run.rule == regime.VALIDATION:
        keep = epoch + 1 >= run.method.selectable_from() and entry["val_mAP"] > run.best["val_mAP"]
    else:  # the last epoch, or the fitted method (epoch -1: selected as epoch 0)
        keep = epoch + 1 == int(run.config["epochs"]) or run.rule == regime.FITTED
    if keep:
        run.best = {"epoch": epoch + 1, "val_mAP": entry["val_mAP"],
                    "state": copy.deepcopy({k: v.detach().cpu() for k, v in run.model.state_dict().items()}),
                    "method": copy.deepcopy(run.method)}
    return time.perf_counter() - val_start, encode_seconds


def _restore_best_epoch(run: Run) -> HashMethod:
    """The selected epoch's weights back in the network; its method (centers, owned modules)."""
    run.model.load_state_dict(run.best["state"])
    selected: HashMethod = run.best["method"]  # its centers and modules match the selected weights
    selected.owned.to(run.ctx.device)
    return selected


def _encode_and_evaluate(run: Run, selected: HashMethod,
                         progress_bars: bool) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Encode query and database with the selected model and score the queries (test set)."""
    encode_start = time.perf_counter()
    query_codes, db_codes = _encode_parts(
        run.model, run.source, [run.split.query, run.split.database], run.ctx.device,
        progress=progress_bars, desc="encode query + database", num_workers=run.ctx.num_workers,
        method=selected, numerics=run.numerics, cache=run.cache)
    run.timings["encode"] = time.perf_counter() - encode_start
    eval_start = time.perf_counter()
    metrics = evaluate_retrieval(
        query_codes, db_codes, run.source.labels[run.split.query], run.source.labels[run.split.database],
        topk=run.card.map_at, zero_relevant=run.zero_relevant, pr_at_n=pr_at_n(run.card), per_query=True,
    )
    if run.card.precision_at is not None:  # the card's second headline metric
        k = run.card.precision_at
        metrics["precision_at_k"] = {"k": k, "value": metrics["precision_at_n"][metrics["pr_at_n"].index(k)]}
    # Per-query AP (query order of the split) for paired or bootstrap intervals in the report.
    metrics["per_query_ap"] = rounded(metrics.pop("ap_per_query"))
    metrics["per_query_ap_tie_aware"] = rounded(metrics.pop("ap_tie_aware_per_query"))
    run.timings["evaluate"] = time.perf_counter() - eval_start
    return query_codes, db_codes, metrics


def _describe_codes_and_centers(run: Run, selected: HashMethod, db_codes: np.ndarray) -> dict[str, Any]:
    """Ties among the database codes; for center methods, the centers against class similarity."""
    extras: dict[str, Any] = {"database_codes": code_ties(db_codes)}
    centers = selected.class_centers()
    if centers is not None:
        train_features = encode(run.model, run.source, run.split.train, run.ctx.device, features=True,
                                num_workers=run.ctx.num_workers, numerics=run.numerics, cache=run.cache)
        similarity = class_feature_similarity(train_features, run.source.labels[run.split.train])
        center_array = centers.detach().cpu().numpy().astype(np.int8)
        extras["centers"] = center_array.tolist()
        extras["class_similarity"] = {"measure": "cosine of class-mean backbone features (train split)",
                                      "matrix": similarity.round(6).tolist()}
        extras["center_semantics"] = center_semantics(center_array, similarity)
    return extras

