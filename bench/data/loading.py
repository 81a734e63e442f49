"""Dataset cards and loaders.

A dataset is described by a YAML card in `datasets/` (where its files are looked for, its
classes, split protocol, mAP@k and schedule). This module reads cards and turns files on
disk into an `ImageSource`: labels as a multi-hot matrix plus a way to fetch input batches
(images; for document cards, TF-IDF vectors once the split is known: `source.for_split(split)`).
Nothing is ever downloaded: every loader reads local files and says where it looked.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

# The card and source layers, re-exported: callers keep importing from bench.data.loading.
from bench.data.cards import (  # noqa: F401
    CARDS_DIR,
    FASHION_MNIST_FILES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    REPO_ROOT,
    DatasetCard,
    available_datasets,
    load_card,
    read_yaml,
)
from bench.data.documents import load_synthetic_documents, load_wordnet
from bench.data.mosaics import load_generated
from bench.data.sources import (  # noqa: F401
    FeatureSource,
    FileSource,
    ImageSource,
    TensorSource,
    find_root,
    ground_truth_record,
    load_fashion_mnist,
    one_hot,
    read_idx,
)
from bench.errors import UserError


# ----------------------------------------------------------------------------- CIFAR
def load_cifar(card: DatasetCard, data_root: str | os.PathLike | None) -> TensorSource:
    """CIFAR-10/100 from the python-pickle folder torchvision expects; never downloads."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR100 if card.num_classes == 100 else CIFAR10
    if not card.options.get("verify_checksums", True):
        # For hand-made or re-packed copies (and the tests' tiny files): skip torchvision's
        # md5 check of the official archives, keep its parsing.
        unchecked = {
            "train_list": [[name, None] for name, _ in cls.train_list],
            "test_list": [[name, None] for name, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None},
        }
        cls = type(f"Unchecked{cls.__name__}", (cls,), unchecked)
    folder = cls.base_folder
    root = find_root(card, data_root, [f"{folder}/{cls.train_list[0][0]}"])
    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except (RuntimeError, OSError, ValueError, KeyError) as error:
        raise UserError(
            f"cannot read CIFAR files under {root}: {error} (re-packed copies: set "
            "options.verify_checksums: false in the dataset card)"
        ) from None
    images = np.concatenate([train.data, test.data]).transpose(0, 3, 1, 2)
    class_ids = np.concatenate([np.asarray(train.targets), np.asarray(test.targets)])
    groups = np.array(["train"] * len(train.targets) + ["test"] * len(test.targets))
    return TensorSource(
        images, one_hot(class_ids, card.num_classes), groups, False, identity=str(root),
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
    )


# ----------------------------------------------------------------------------- list files
def parse_list_file(path: Path, num_classes: int) -> tuple[list[str], np.ndarray]:
    """Parse `relative/path.jpg 0 1 0 ...` lines; a bad line is reported with its number."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read list file {path}: {error}") from None
    names: list[str] = []
    rows: list[list[int]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != num_classes + 1:
            raise UserError(
                f"{path}:{number}: expected an image path and {num_classes} 0/1 labels, "
                f"found {len(parts) - 1} labels"
            )
        if any(p not in ("0", "1") for p in parts[1:]):
            bad = next(p for p in parts[1:] if p not in ("0", "1"))
            raise UserError(f"{path}:{number}: label '{bad}' is not 0 or 1")
        names.append(parts[0])
        rows.append([int(p) for p in parts[1:]])
    if not names:
        raise UserError(f"list file {path} holds no images")
    return names, np.asarray(rows, dtype=np.uint8)


def load_list_file(card: DatasetCard, data_root: str | os.PathLike | None) -> FileSource:
    """One source from the card's list files; each list's items form a group of that name.

    An image listed in several files (e.g. train.txt and database.txt) appears once; its
    groups are joined with '+', so split protocols can select by membership.
    """
    lists: dict[str, str] = card.split.get("lists") or {}
    if not lists:
        raise UserError(f"dataset card {card.path} needs split.lists for the list_file loader")
    root = find_root(card, data_root, list(lists.values()))
    image_root = root / card.options.get("image_dir", ".")
    index_of: dict[str, int] = {}
    paths: list[Path] = []
    label_rows: list[np.ndarray] = []
    group_sets: list[set[str]] = []
    for group, filename in lists.items():
        names, labels = parse_list_file(root / filename, card.num_classes)
        for name, row in zip(names, labels, strict=True):
            if name in index_of:
                i = index_of[name]
                if not np.array_equal(label_rows[i], row):
                    raise UserError(f"{root / filename}: image {name} has conflicting labels")
                group_sets[i].add(group)
                continue
            index_of[name] = len(paths)
            paths.append(image_root / name)
            label_rows.append(row)
            group_sets.append({group})
    groups = np.array(["+".join(sorted(g)) for g in group_sets])
    return FileSource(
        paths, np.stack(label_rows), groups, card.multi_label, identity=str(root),
        image_size=card.image_size,
    )


# ----------------------------------------------------------------------------- synthetic
def make_synthetic(
    num_classes: int = 6,
    per_class: int = 120,
    image_size: int = 12,
    close_pairs: tuple[tuple[int, int], ...] = ((0, 1), (2, 3)),
    closeness: float = 0.85,
    noise: float = 0.35,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Images with planted class structure: each class is a random prototype pattern plus
    noise; the classes in `close_pairs` share most of their prototype, so they are visually
    (and semantically) close. Returns uint8 images [N, 1, S, S] and class ids [N]."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((num_classes, image_size, image_size))
    for a, b in close_pairs:
        prototypes[b] = closeness * prototypes[a] + (1 - closeness) * prototypes[b]
    class_ids = np.repeat(np.arange(num_classes), per_class)
    images = prototypes[class_ids] + noise * rng.standard_normal((len(class_ids), image_size, image_size))
    images = np.clip(images, 0, 1)
    return (images[:, None] * 255).astype(np.uint8), class_ids


def load_synthetic(card: DatasetCard, data_root: str | os.PathLike | None) -> TensorSource:
    options = dict(card.options)
    options["close_pairs"] = tuple(tuple(p) for p in options.get("close_pairs", ((0, 1), (2, 3))))
    images, class_ids = make_synthetic(num_classes=card.num_classes, **options)
    # Alternate train/test membership inside each class so both partitions cover every class.
    groups = np.where(np.arange(len(class_ids)) % 4 == 0, "test", "train")
    return TensorSource(
        images, one_hot(class_ids, card.num_classes), groups, False,
        identity=f"synthetic:{sorted(options.items())}",
    )


_LOADER_FUNCTIONS = {
    "fashion_mnist": load_fashion_mnist,
    "cifar": load_cifar,
    "list_file": load_list_file,
    "synthetic": load_synthetic,
}


_LOADER_FUNCTIONS["fashion_mnist_mosaic"] = load_generated
_LOADER_FUNCTIONS["fashion_mnist_pairs"] = load_generated
_LOADER_FUNCTIONS["wordnet"] = load_wordnet
_LOADER_FUNCTIONS["synthetic_documents"] = load_synthetic_documents


def open_dataset(card: DatasetCard, data_root: str | os.PathLike | None = None) -> ImageSource:
    return _LOADER_FUNCTIONS[card.loader](card, data_root)
