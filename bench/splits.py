"""Seeded query / train / validation / database splits, saved, hashed and leak-checked.

Two protocols:
- `per_class`: draw a fixed number of images per class from named groups (the CIFAR-10
  convention: 100 query and 500 train images per class); the database is everything but
  the query set, or a per-class sample of it.
- `lists`: the split comes from the dataset's list files (NUS-WIDE, COCO, ImageNet-100,
  Stanford Cars, NABirds); only the validation set is drawn here.
The validation set is always disjoint from query and train: model selection never sees the
query set, and never scores a model on images it trained on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import DatasetCard, ImageSource
from bench.errors import UserError

SPLIT_PARTS = ("query", "train", "validation", "database")


@dataclass(frozen=True)
class Split:
    query: np.ndarray
    train: np.ndarray
    validation: np.ndarray
    database: np.ndarray
    digest: str
    path: str

    def sizes(self) -> dict[str, int]:
        return {part: int(len(getattr(self, part))) for part in SPLIT_PARTS}


def split_digest(parts: dict[str, np.ndarray]) -> str:
    """sha256 over the four index arrays: two runs are comparable iff their digests match."""
    sha = hashlib.sha256()
    for name in SPLIT_PARTS:
        sha.update(name.encode())
        sha.update(np.ascontiguousarray(parts[name], dtype=np.int64).tobytes())
    return sha.hexdigest()


def check_split(parts: dict[str, np.ndarray], num_items: int) -> None:
    """Refuse a split that leaks: query vs database, validation vs query or train."""
    for name in SPLIT_PARTS:
        index = parts[name]
        if len(index) == 0:
            raise UserError(f"split part '{name}' is empty; check the dataset card's split")
        if index.min() < 0 or index.max() >= num_items:
            raise UserError(f"split part '{name}' indexes outside the dataset (0..{num_items - 1})")
        if len(np.unique(index)) != len(index):
            raise UserError(f"split part '{name}' lists an image twice")
    for a, b in (("query", "database"), ("validation", "query"), ("validation", "train"),
                 ("query", "train")):
        overlap = np.intersect1d(parts[a], parts[b])
        if len(overlap):
            raise UserError(f"split leaks: {len(overlap)} images are in both {a} and {b}")


def _class_ids_for_sampling(source: ImageSource) -> np.ndarray:
    """Per-class sampling needs one class per image; multi-label data uses its first label."""
    return source.labels.argmax(axis=1)


def _sample_per_class(
    rng: np.random.Generator, candidates: np.ndarray, class_ids: np.ndarray, per_class: int, what: str
) -> np.ndarray:
    chosen = []
    for c in np.unique(class_ids[candidates]):
        pool = candidates[class_ids[candidates] == c]
        if len(pool) < per_class:
            raise UserError(
                f"{what}: class {c} has {len(pool)} images, fewer than per_class={per_class}"
            )
        chosen.append(rng.choice(pool, size=per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def _in_group(source: ImageSource, group: str) -> np.ndarray:
    if group == "all":
        return np.arange(len(source))
    members = np.array([group in g.split("+") for g in source.groups])
    return np.flatnonzero(members)


def _draw_per_class(card: DatasetCard, source: ImageSource, rng: np.random.Generator) -> dict:
    spec = card.split
    class_ids = _class_ids_for_sampling(source)

    def part(name: str, exclude: list[np.ndarray]) -> np.ndarray:
        cfg: dict[str, Any] = spec[name]
        pool = np.setdiff1d(_in_group(source, cfg.get("group", "all")), np.concatenate(exclude))
        return _sample_per_class(rng, pool, class_ids, int(cfg["per_class"]), f"split {name}")

    empty = np.empty(0, dtype=np.int64)
    query = part("query", [empty])
    train = part("train", [query])
    validation = part("validation", [query, train])
    database_cfg = spec.get("database", "all_but_query")
    rest = np.setdiff1d(np.arange(len(source)), query)
    if database_cfg == "all_but_query":
        database = rest
    else:
        database = np.union1d(
            train, _sample_per_class(rng, rest, class_ids, int(database_cfg["per_class"]), "database")
        )
    return {"query": query, "train": train, "validation": validation, "database": database}


def _draw_from_lists(card: DatasetCard, source: ImageSource, rng: np.random.Generator) -> dict:
    spec = card.split
    query = _in_group(source, spec.get("query", "query"))
    train = _in_group(source, spec.get("train", "train"))
    database = _in_group(source, spec.get("database", "database"))
    validation_cfg: dict[str, Any] = spec.get("validation", {"from": "database", "count": 1000})
    count = int(validation_cfg.get("count", 1000))
    origin = validation_cfg.get("from", "database")
    if origin == "train":
        pool = train
    else:
        pool = np.setdiff1d(np.setdiff1d(database, train), query)
    if len(pool) < count:
        raise UserError(
            f"split validation: needs {count} images from {origin}, only {len(pool)} available"
        )
    validation = np.sort(rng.choice(pool, size=count, replace=False))
    if origin == "train":
        train = np.setdiff1d(train, validation)
    return {"query": query, "train": train, "validation": validation, "database": database}


def make_split(
    card: DatasetCard, source: ImageSource, seed: int, splits_dir: Path | None
) -> Split:
    """Draw (or reload) the split for `card` with `seed`; save it as an .npz beside the runs.

    A saved split whose contents no longer hash to its recorded digest is refused rather
    than silently regenerated: results computed on it would not be comparable.
    """
    rng = np.random.default_rng(seed)
    protocol = card.split.get("protocol", "per_class")
    if protocol == "per_class":
        parts = _draw_per_class(card, source, rng)
    elif protocol == "lists":
        parts = _draw_from_lists(card, source, rng)
    else:
        raise UserError(f"{card.path}: split protocol '{protocol}' is not per_class or lists")
    parts = {name: np.asarray(parts[name], dtype=np.int64) for name in SPLIT_PARTS}
    check_split(parts, len(source))
    digest = split_digest(parts)
    path = ""
    if splits_dir is not None:
        target = Path(splits_dir) / f"{card.name}-seed{seed}-{digest[:12]}.npz"
        if target.exists():
            with np.load(target) as saved:
                stored = {name: saved[name] for name in SPLIT_PARTS}
            if split_digest(stored) != digest:
                raise UserError(f"saved split {target} does not match its digest; move it aside")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".tmp.npz")
            np.savez(tmp, **parts)
            tmp.replace(target)
        path = str(target)
    return Split(**parts, digest=digest, path=path)
