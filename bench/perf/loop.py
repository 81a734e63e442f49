"""`python -m bench perf loop`: images/second of the shared training loop against a bare
PyTorch loop with the same backbone, batch size, loss and data, measured in one process.

The bare loop is what a hand-written script would do: pre-normalised float images in
memory, a shuffled index per epoch, forward / loss / backward / step. Both loops compute
with the numerics of the path `BENCH_FAST` selects (`bench.network.numerics`: threads, kernels,
memory format). The suite's loop adds batching through its image cache, the method hook, NaN
checks and code collection; the target is to stay within 5 % of the bare loop. `perf run`
times a whole run, validation and encoding included.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--method", default="csq")
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats of each loop")
    parser.add_argument("--data-root", default=None)


def bare_loop_images_per_second(
    images: torch.Tensor, labels: torch.Tensor, model: torch.nn.Module, loss_fn, batch_size: int,
    epochs: int, lr: float, seed: int,
) -> float:
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-5)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    seen = 0
    start = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            index = order[i: i + batch_size]
            loss = loss_fn(model(images[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(index)
    return seen / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> int:
    import torch

    from bench.data.loading import load_card, open_dataset
    from bench.data.splits import make_split
    from bench.network.backbones import HashNetwork, build_backbone
    from bench.network.numerics import applied, resolve
    from bench.runs.spec import RunSpec, resolve_config
    from bench.training.train import train_and_evaluate
    from methods import get_method
    from methods.base import Task

    card = load_card(args.dataset)
    spec = RunSpec(method=args.method, dataset=args.dataset, bits=args.bits, protocol="harmonised",
                   overrides=(("epochs", args.epochs), ("eval_every", args.epochs)))
    config = resolve_config(spec, card)
    source = open_dataset(card, args.data_root)
    split = make_split(card, source, 0, None)
    source = source.for_split(split)
    train_index = split.train
    numerics = resolve("cpu", threads=torch.get_num_threads())
    # pre-normalised floats, as a bare script holds, in the network's memory format
    images = numerics.images(source.batch(train_index, train=True))
    labels = torch.from_numpy(source.labels[train_index]).float()
    batch = int(config["batch_size"])
    task = Task(bits=args.bits, num_classes=card.num_classes, multi_label=card.multi_label, seed=0,
                epochs=args.epochs, device=torch.device("cpu"))
    method = get_method(args.method)(config, task)

    def bare() -> float:
        torch.manual_seed(0)
        model = numerics.module(HashNetwork(build_backbone(card.backbone, card.input_width), args.bits))
        with applied(numerics):
            return bare_loop_images_per_second(
                images, labels, model, lambda h, y: method.loss(h, y, None), batch, args.epochs,
                float(config["lr"]), 0,
            )

    def suite() -> float:
        with TemporaryDirectory() as tmp:
            body = train_and_evaluate(spec, results_dir=Path(tmp), data_root=args.data_root,
                                      device="cpu", progress_bars=False, numerics=numerics)
        return len(train_index) * args.epochs / body["timings"]["train"]

    print(f"training-loop throughput: {args.method} {args.bits} bits on {args.dataset} "
          f"({len(train_index)} train images, batch {batch}, {args.epochs} epochs, "
          f"{numerics.path} path in both loops: {numerics.threads} threads, oneDNN "
          f"{'on' if numerics.onednn else 'off'}, channels_last {'on' if numerics.channels_last else 'off'})")
    bare_rates, suite_rates = [], []
    for repeat in range(args.repeats):
        # Alternate which loop goes first so warm-up and drift do not favour either.
        if repeat % 2 == 0:
            bare_rates.append(bare())
            suite_rates.append(suite())
        else:
            suite_rates.append(suite())
            bare_rates.append(bare())
        print(f"  repeat {repeat + 1}: bare {bare_rates[-1]:8.1f} img/s   suite {suite_rates[-1]:8.1f} img/s")
    bare_best, suite_best = max(bare_rates), max(suite_rates)
    ratio = suite_best / bare_best
    print(f"best of {args.repeats}: bare PyTorch loop {bare_best:.1f} img/s, "
          f"suite loop {suite_best:.1f} img/s -> suite/bare = {ratio:.3f} "
          f"(suite {abs(1 - ratio) * 100:.1f}% {'slower' if ratio < 1 else 'faster'}; "
          f"target: no more than 5% slower) -> {'PASS' if ratio >= 0.95 else 'MISS'}")
    print(f"(median: bare {np.median(bare_rates):.1f}, suite {np.median(suite_rates):.1f} img/s)")
    return 0
