"""`python -m bench perf run`: where the wall time of one real run goes (train, validation,
encode, evaluate, overhead) on the legacy path (the loop before issue 15, `BENCH_FAST=0`)
and the fast path, side by side in one process, next to a bare PyTorch script doing the same
training and encoding work with the fast path's numerics.

Both paths run at the same thread count (`--threads`, default 1: what each run gets in a
sweep that runs one run per core), so the ratio is the per-run cost that every experiment
multiplies. Repeats alternate the order (legacy first, then fast first) so that warm-up and
drift in the machine's load favour neither; the load average is printed before and after
each run, because other work on a shared machine slows every variant.

`--ablate` adds one fast-path run per lever with that lever turned off (`--epochs 3` is
enough to see each lever's share); `--lever KEY=VALUE` changes the fast path itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bench.errors import UserError

PHASES = ("train", "validation", "encode", "evaluate", "overhead")
# Levers `--ablate` turns off one at a time, and the value that turns each off.
ABLATIONS: dict[str, Any] = {
    "onednn": False, "channels_last": False, "cached_images": False, "fuse_bn": False,
    "inference_mode": False,
}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--method", default="csq")
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=None,
                        help="training epochs (default: the card's, 30 for fashion-mnist)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of every variant (default 1, one run per core)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="alternating repeats of legacy / fast / bare (medians are compared)")
    parser.add_argument("--lever", dest="levers", action="append", default=[], metavar="KEY=VALUE",
                        help="change one fast-path setting (bench.network.numerics.Numerics), "
                             "e.g. encode_batch=256")
    parser.add_argument("--ablate", action="store_true",
                        help=f"also time the fast path with each lever off: {', '.join(ABLATIONS)}")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare PyTorch loop")
    parser.add_argument("--no-legacy", action="store_true",
                        help="skip the legacy path (to compare levers of the fast path only)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the figures here")
    parser.add_argument("--data-root", default=None)


def _parse_levers(items: list[str]) -> dict[str, Any]:
    levers: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--lever {item!r} is not KEY=VALUE (e.g. --lever encode_batch=256)")
        lowered = value.strip().lower()
        if lowered in ("true", "on", "1", "yes", "false", "off", "0", "no") and key != "encode_batch":
            levers[key.strip()] = lowered in ("true", "on", "1", "yes")
        elif lowered in ("none", "null"):
            levers[key.strip()] = None
        else:
            try:
                levers[key.strip()] = int(value)
            except ValueError:
                levers[key.strip()] = value.strip()
    return levers


def load_text() -> str:
    """`uptime`'s line (the machine's load), or the load averages where `uptime` is missing."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def suite_run(spec, numerics, data_root: str | None) -> dict[str, Any]:
    """One real run (`train_and_evaluate`, split kept in memory) and its wall-time breakdown."""
    from bench.training.train import train_and_evaluate

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    body = train_and_evaluate(spec, data_root=data_root, device=numerics.device, progress_bars=False,
                              numerics=numerics)
    wall = time.perf_counter() - started
    timings = body["timings"]
    phases = {phase: float(timings[phase]) for phase in PHASES[:-1]}
    phases["overhead"] = wall - sum(phases.values())
    sizes = body["split"]["sizes"]
    validations = sum("val_mAP" in entry for entry in body["history"])
    selection = body["selection"]
    train_images = _trained_images(sizes["train"], int(body["config"]["batch_size"])) * len(body["history"])
    return {
        "path": numerics.path, "numerics": numerics.record(), "wall": wall, "phases": phases,
        "validation_encode": float(timings["validation_encode"]),
        "images": {"train": train_images,
                   "validation": validations * (selection["validation_queries"]
                                                + selection["validation_database_size"]),
                   "encode": sizes["query"] + sizes["database"]},
        "validations": validations, "mAP": body["metrics"]["mAP"],
        "best_epoch": selection["best_epoch"], "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def _trained_images(train_size: int, batch_size: int) -> int:
    """Images one epoch trains on (`iterate_batches` drops a trailing batch of one)."""
    return train_size - 1 if train_size > batch_size and train_size % batch_size == 1 else train_size


def bare_run(spec, numerics, data_root: str | None, validations: int) -> dict[str, Any]:
    """What a hand-written script would do for the same work: load the data and normalise
    every image to float32 once, a shuffled index per epoch, forward / loss / backward / Adam
    step with a cosine schedule, then `validations` encodings of the validation sets, one of
    query + database and (for methods with class centers) the training images' features, in
    inference mode at the same batch size, conv+BN folded by torch.fx. Same numerics as the
    fast path (threads, oneDNN, channels_last); no checkpoints, no scoring."""
    import torch
    from torch.fx.experimental.optimization import fuse

    from bench.data.loading import load_card, open_dataset
    from bench.data.splits import make_split
    from bench.network.backbones import HashNetwork, build_backbone
    from bench.network.numerics import applied
    from bench.runs.spec import resolve_config
    from bench.training.train import seed_everything, validation_database
    from methods import get_method
    from methods.base import Task

    card = load_card(spec.dataset)
    config = resolve_config(spec, card)
    load_before = os.getloadavg()[0]
    with applied(numerics):
        started = time.perf_counter()
        source = open_dataset(card, data_root)
        split = make_split(card, source, spec.split_seed, None)
        source = source.for_split(split)
        reference, _ = validation_database(split, card.map_at)
        images = numerics.images(source.batch(np.arange(len(source)), False))
        labels = torch.from_numpy(source.labels).float()
        seed_everything(spec.seed)
        model = numerics.module(HashNetwork(build_backbone(card.backbone, card.input_width), spec.bits))
        task = Task(bits=spec.bits, num_classes=card.num_classes, multi_label=card.multi_label,
                    seed=spec.seed, epochs=int(config["epochs"]), device=torch.device("cpu"),
                    pretrained=spec.pretrained)
        method = get_method(spec.method)(config, task)
        context = SimpleNamespace(log=lambda *_: None, batch=None, step=0, epoch=0,
                                  progress=0.0, device=torch.device("cpu"))
        optimizer = torch.optim.Adam(model.parameters(), lr=float(config["lr"]),
                                     weight_decay=float(config["weight_decay"]))
        epochs, batch = int(config["epochs"]), int(config["batch_size"])
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        generator = torch.Generator().manual_seed(spec.seed)
        train = torch.from_numpy(split.train)
        setup = time.perf_counter() - started
        started = time.perf_counter()
        trained = 0
        for _ in range(epochs):
            model.train()
            order = train[torch.randperm(len(train), generator=generator)]
            for i in range(0, len(order) - 1, batch):
                index = order[i: i + batch]
                if len(index) < 2:
                    break
                loss = method.loss(model(images[index]), labels[index], context)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                trained += len(index)
            schedule.step()
        train_seconds = time.perf_counter() - started

        def encode_all(index: np.ndarray, features: bool = False) -> float:
            begin = time.perf_counter()
            model.eval()
            with torch.inference_mode():
                folded = numerics.module(fuse(model.backbone)) if numerics.fuse_bn else model.backbone
                rows = torch.from_numpy(index)
                for i in range(0, len(rows), numerics.encode_batch):
                    out = folded(images[rows[i: i + numerics.encode_batch]])
                    if not features:
                        torch.sign(model.hash_layer(out))
            return time.perf_counter() - begin

        validation_set = np.concatenate([split.validation, reference])
        validation_seconds = sum(encode_all(validation_set) for _ in range(validations))
        encode_seconds = encode_all(np.concatenate([split.query, split.database]))
        if method.class_centers() is not None:  # the suite's center-semantics features
            setup += encode_all(split.train, features=True)
    return {
        "path": "bare", "wall": setup + train_seconds + validation_seconds + encode_seconds,
        "phases": {"train": train_seconds, "validation": validation_seconds, "encode": encode_seconds,
                   "evaluate": 0.0, "overhead": setup},
        "validation_encode": validation_seconds,
        "images": {"train": trained, "validation": validations * len(validation_set),
                   "encode": len(split.query) + len(split.database)},
        "load_before": load_before, "load_after": os.getloadavg()[0],
    }


def _work_seconds(result: dict[str, Any]) -> float:
    """The wall time less retrieval scoring (final evaluation, validation mAP): the work a
    bare script does too (data, training, every encoding)."""
    scoring = result["phases"]["evaluate"] + result["phases"]["validation"] - result["validation_encode"]
    return result["wall"] - scoring


def _median(results: list[dict[str, Any]], getter) -> float:
    return float(np.median([getter(r) for r in results]))


def summarise(by_variant: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Median phase times, img/s and the two ratios of the issue."""
    summary: dict[str, Any] = {}
    for name, results in by_variant.items():
        first = results[0]
        phases = {p: _median(results, lambda r, p=p: r["phases"][p]) for p in PHASES}
        wall = _median(results, lambda r: r["wall"])
        work = _median(results, _work_seconds)
        rates = {
            "train": first["images"]["train"] / max(phases["train"], 1e-9),
            "encode": (first["images"]["encode"] + first["images"]["validation"])
            / max(_median(results, lambda r: r["phases"]["encode"] + r["validation_encode"]), 1e-9),
        }
        summary[name] = {"phases": phases, "wall": wall, "best_wall": min(r["wall"] for r in results),
                         "work": work, "img_per_s": rates,
                         "runs": len(results), "images": first["images"],
                         "mAP": [r.get("mAP") for r in results]}
    if "legacy" in summary and "fast" in summary:
        summary["speedup"] = summary["legacy"]["wall"] / summary["fast"]["wall"]
    if "bare" in summary and "fast" in summary:
        summary["fast_vs_bare"] = summary["bare"]["work"] / summary["fast"]["work"]
    return summary


def format_table(summary: dict[str, Any], names: list[str]) -> list[str]:
    lines = [f"{'phase (s)':12s}" + "".join(f"{name:>14s}" for name in names)]
    for phase in PHASES:
        lines.append(f"{phase:12s}" + "".join(f"{summary[n]['phases'][phase]:14.1f}" for n in names))
    lines.append(f"{'total':12s}" + "".join(f"{summary[n]['wall']:14.1f}" for n in names))
    for kind in ("train", "encode"):
        label = f"{kind} img/s"
        lines.append(f"{label:12s}" + "".join(f"{summary[n]['img_per_s'][kind]:14.0f}" for n in names))
    return lines


def run(args: argparse.Namespace) -> int:
    import torch

    from bench.data.loading import load_card, open_dataset
    from bench.evaluation.retrieval import warm_up
    from bench.network.numerics import resolve
    from bench.runs.records import cpu_model
    from bench.runs.spec import RunSpec
    from methods import get_method

    for flag in ("bits", "threads", "repeats"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} {getattr(args, flag)}: must be a positive integer")
    if args.epochs is not None and args.epochs < 1:
        raise UserError(f"--epochs {args.epochs}: must be a positive integer")
    card = load_card(args.dataset)
    get_method(args.method)
    overrides = (("epochs", args.epochs),) if args.epochs else ()
    spec = RunSpec(args.method, args.dataset, args.bits, seed=args.seed, protocol="harmonised",
                   overrides=overrides)
    levers = _parse_levers(args.levers)
    variants = {"legacy": resolve("cpu", threads=args.threads, fast=False),
                "fast": resolve("cpu", threads=args.threads, fast=True, **levers)}
    if args.no_legacy:
        del variants["legacy"]
    if args.ablate:
        for lever, off in ABLATIONS.items():
            variants[f"no {lever}"] = dataclasses.replace(variants["fast"], **{lever: off})

    print(f"perf run: {args.method} {args.bits} bits on {args.dataset}, "
          f"{args.epochs or card.schedule.get('epochs')} epochs, seed {args.seed}, cpu, "
          f"{args.threads} thread(s) per variant; {cpu_model()} "
          f"({torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}")
    for name, numerics in variants.items():
        print(f"  {name}: {json.dumps(numerics.record())}")
    print(f"load at start: {load_text()}", flush=True)
    # Untimed warm-up: imports, numba's JIT, torch.fx, the dataset files in the OS cache.
    open_dataset(card, args.data_root)
    warm_up()
    warm = RunSpec(args.method, "synthetic", 8, protocol="harmonised", overrides=(("epochs", 1),))
    for numerics in variants.values():
        suite_run(warm, numerics, None)

    by_variant: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    if not args.no_bare:
        by_variant["bare"] = []
    for repeat in range(args.repeats):
        order = list(variants) if repeat % 2 == 0 else list(variants)[::-1]
        for name in order:
            result = suite_run(spec, variants[name], args.data_root)
            by_variant[name].append(result)
            print(f"  repeat {repeat + 1} {name:>18s}: {result['wall']:7.1f} s, mAP {result['mAP']:.4f} "
                  f"(best epoch {result['best_epoch']}; load {result['load_before']:.2f} -> "
                  f"{result['load_after']:.2f})", flush=True)
        if not args.no_bare:
            validations = by_variant["fast"][-1]["validations"]
            try:
                result = bare_run(spec, variants["fast"], args.data_root, validations)
            except Exception as error:  # a method whose loss needs the real loop's context
                print(f"  bare loop unavailable for {args.method}: {type(error).__name__}: {error}")
                by_variant.pop("bare")
                args.no_bare = True
                continue
            by_variant["bare"].append(result)
            print(f"  repeat {repeat + 1} {'bare':>18s}: {result['wall']:7.1f} s (load "
                  f"{result['load_before']:.2f} -> {result['load_after']:.2f})", flush=True)

    summary = summarise(by_variant)
    names = [n for n in ("legacy", "fast", "bare") if n in by_variant]
    extra = [n for n in by_variant if n not in names]
    print(f"\nmedian of {args.repeats} repeat(s); overhead = data, split, image cache, method setup "
          "and hooks, checkpoints, center semantics")
    print("\n".join(format_table(summary, names)))
    if "speedup" in summary:
        print(f"end-to-end speed-up, fast / legacy: {summary['speedup']:.2f}x "
              f"(target >= 2.0x) -> {'PASS' if summary['speedup'] >= 2.0 else 'MISS'}")
    if "fast_vs_bare" in summary:
        ratio = summary["fast_vs_bare"]
        print(f"same work (all but retrieval scoring), fast path vs bare loop: "
              f"{summary['fast']['work']:.1f} s vs "
              f"{summary['bare']['work']:.1f} s -> speed ratio {ratio:.3f} (target >= 0.90, i.e. within "
              f"10 %) -> {'PASS' if ratio >= 0.9 else 'MISS'}")
    if extra:
        print("\nlevers, each turned off alone on the fast path (median s, best of the repeats in "
              "brackets; slow-down of the medians vs fast):")
        fast_wall = summary["fast"]["wall"]
        print(f"  {'fast':18s} total {fast_wall:7.1f} s [{summary['fast']['best_wall']:6.1f}]")
        for name in extra:
            s = summary[name]
            print(f"  {name:18s} total {s['wall']:7.1f} s [{s['best_wall']:6.1f}] "
                  f"({s['wall'] / fast_wall:.2f}x)  train "
                  f"{s['phases']['train']:6.1f}  validation {s['phases']['validation']:5.1f}  encode "
                  f"{s['phases']['encode']:5.1f}  train {s['img_per_s']['train']:.0f} img/s, encode "
                  f"{s['img_per_s']['encode']:.0f} img/s")
    print("mAP: " + ", ".join(f"{n} {summary[n]['mAP'][0]:.4f}" for n in by_variant if n != "bare"))
    print(f"load at end: {load_text()}")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"summary": summary, "runs": by_variant}, indent=1))
    return 0
