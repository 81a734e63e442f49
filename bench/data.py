"""Dataset cards and loaders.

A dataset is described by a YAML card in `datasets/` (where its files are looked for, its
classes, split protocol, mAP@k and schedule). This module reads cards and turns files on
disk into an `ImageSource`: labels as a multi-hot matrix plus a way to fetch image batches.
Nothing is ever downloaded: every loader reads local files and says where it looked.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from bench.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent
CARDS_DIR = REPO_ROOT / "datasets"
DATA_ENV_VAR = "BENCH_DATA"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ----------------------------------------------------------------------------- cards
@dataclass(frozen=True)
class DatasetCard:
    """The parsed contents of `datasets/<name>.yaml`."""

    name: str
    title: str
    loader: str
    num_classes: int
    multi_label: bool
    map_at: int | None  # None means mAP@all
    backbone: str
    image_size: int
    channels: int
    split: dict[str, Any]
    schedule: dict[str, Any]
    search_paths: tuple[str, ...] = ()
    install_hint: str = ""
    class_names: tuple[str, ...] = ()
    files: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    path: str = ""


_CARD_KEYS = {
    "name", "title", "loader", "num_classes", "multi_label", "map_at", "backbone",
    "image_size", "channels", "split", "schedule", "search_paths", "install_hint",
    "class_names", "files", "options", "published",
}
_REQUIRED_CARD_KEYS = ("name", "loader", "num_classes", "split")
LOADERS = ("fashion_mnist", "cifar", "list_file", "synthetic")


def available_datasets(cards_dir: Path = CARDS_DIR) -> list[str]:
    return sorted(p.stem for p in cards_dir.glob("*.yaml"))


def read_yaml(path: Path) -> Any:
    """Parse a YAML file, turning any failure into one line naming the file."""
    try:
        text = path.read_text()
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise UserError(f"malformed YAML in {path}{where}: {problem}") from None


def load_card(name: str, cards_dir: Path = CARDS_DIR) -> DatasetCard:
    path = cards_dir / f"{name}.yaml"
    if not path.is_file():
        valid = ", ".join(available_datasets(cards_dir))
        raise UserError(f"unknown dataset '{name}'; valid datasets: {valid}")
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"dataset card {path} must be a mapping of keys to values")
    unknown = sorted(set(raw) - _CARD_KEYS)
    if unknown:
        raise UserError(
            f"unknown key '{unknown[0]}' in {path}; valid keys: {', '.join(sorted(_CARD_KEYS))}"
        )
    missing = [key for key in _REQUIRED_CARD_KEYS if key not in raw]
    if missing:
        raise UserError(f"dataset card {path} lacks required key '{missing[0]}'")
    if raw["loader"] not in LOADERS:
        raise UserError(
            f"dataset card {path}: loader '{raw['loader']}' is not one of {', '.join(LOADERS)}"
        )
    map_at = raw.get("map_at", "all")
    return DatasetCard(
        name=raw["name"],
        title=raw.get("title", raw["name"]),
        loader=raw["loader"],
        num_classes=int(raw["num_classes"]),
        multi_label=bool(raw.get("multi_label", False)),
        map_at=None if map_at in (None, "all") else int(map_at),
        backbone=raw.get("backbone", "small_cnn"),
        image_size=int(raw.get("image_size", 224)),
        channels=int(raw.get("channels", 3)),
        split=dict(raw["split"]),
        schedule=dict(raw.get("schedule") or {}),
        search_paths=tuple(raw.get("search_paths") or ()),
        install_hint=raw.get("install_hint", ""),
        class_names=tuple(raw.get("class_names") or ()),
        files=dict(raw.get("files") or {}),
        options=dict(raw.get("options") or {}),
        path=str(path),
    )


# ----------------------------------------------------------------------------- sources
class ImageSource:
    """All images of a dataset (every split draws indices from it) and their labels.

    `labels` is an [N, C] uint8 multi-hot matrix for every dataset, so single- and
    multi-label data share one code path. `groups` names the original partition each image
    came from (e.g. "train"/"test"), which split protocols use.
    """

    labels: np.ndarray
    groups: np.ndarray
    num_classes: int
    multi_label: bool
    identity: str  # what files the images came from, for the record

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, indices: np.ndarray, train: bool) -> torch.Tensor:
        """Float image batch [B, C, H, W], normalised, for the given indices."""
        raise NotImplementedError

    @property
    def in_memory(self) -> bool:
        return True


class TensorSource(ImageSource):
    """Images held in memory as a uint8 tensor: batches are a gather, no DataLoader."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        groups: np.ndarray,
        multi_label: bool,
        identity: str,
        mean: float | tuple[float, ...] = 0.5,
        std: float | tuple[float, ...] = 0.5,
    ) -> None:
        if images.ndim == 3:
            images = images[:, None]
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = labels.astype(np.uint8)
        self.groups = groups
        self.num_classes = labels.shape[1]
        self.multi_label = multi_label
        self.identity = identity
        channels = self.images.shape[1]
        self._mean = torch.tensor(mean, dtype=torch.float32).expand(channels).view(1, -1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).expand(channels).view(1, -1, 1, 1)

    def batch(self, indices: np.ndarray, train: bool) -> torch.Tensor:
        images = self.images[torch.as_tensor(indices, dtype=torch.long)].float().div_(255.0)
        return images.sub_(self._mean).div_(self._std)


class FileSource(ImageSource):
    """Images read from disk on demand (list-file datasets), resized to `image_size`."""

    def __init__(
        self,
        paths: list[Path],
        labels: np.ndarray,
        groups: np.ndarray,
        multi_label: bool,
        identity: str,
        image_size: int,
    ) -> None:
        from torchvision import transforms

        self.paths = paths
        self.labels = labels.astype(np.uint8)
        self.groups = groups
        self.num_classes = labels.shape[1]
        self.multi_label = multi_label
        self.identity = identity
        resize = int(round(image_size * 256 / 224))
        normalise = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        self._train_tf = transforms.Compose([
            transforms.Resize(resize), transforms.RandomCrop(image_size),
            transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalise,
        ])
        self._eval_tf = transforms.Compose([
            transforms.Resize(resize), transforms.CenterCrop(image_size),
            transforms.ToTensor(), normalise,
        ])

    @property
    def in_memory(self) -> bool:
        return False

    def load(self, index: int, train: bool) -> torch.Tensor:
        from PIL import Image

        path = self.paths[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, ValueError) as error:
            raise UserError(f"cannot read image {path}: {error}") from None
        return (self._train_tf if train else self._eval_tf)(rgb)

    def batch(self, indices: np.ndarray, train: bool) -> torch.Tensor:
        return torch.stack([self.load(int(i), train) for i in indices])


# ----------------------------------------------------------------------------- locating files
def candidate_roots(card: DatasetCard, data_root: str | os.PathLike | None) -> list[Path]:
    """Where a dataset's files are looked for, in order: --data-root, $BENCH_DATA, the card."""
    roots: list[Path] = []
    if data_root:
        roots.append(Path(data_root))
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        roots.extend([Path(env) / card.name, Path(env)])
    roots.extend(Path(p) for p in card.search_paths)
    return roots


def find_root(card: DatasetCard, data_root: str | os.PathLike | None, required: list[str]) -> Path:
    """First candidate root holding every required file (a name or its `.gz`)."""
    roots = candidate_roots(card, data_root)
    for root in roots:
        if all(_existing(root / name) is not None for name in required):
            return root
    looked = ", ".join(str(r) for r in roots) or "(no location configured)"
    hint = f"; {card.install_hint}" if card.install_hint else ""
    raise UserError(
        f"dataset '{card.name}' not found: looked for {required[0]} in {looked}"
        f" (set --data-root or ${DATA_ENV_VAR}){hint}"
    )


def _existing(path: Path) -> Path | None:
    if path.is_file():
        return path
    gz = path.with_name(path.name + ".gz")
    return gz if gz.is_file() else None


# ----------------------------------------------------------------------------- IDX (Fashion-MNIST)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 0,0,dtype,ndim then big-endian dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise UserError(f"cannot read IDX file {path}: {error}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise UserError(f"malformed IDX file {path}: bad magic number")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"malformed IDX file {path}: truncated header")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise UserError(
            f"malformed IDX file {path}: expected {expected} data bytes for shape {dims}, "
            f"found {len(data) - header}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def one_hot(class_ids: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.zeros((len(class_ids), num_classes), dtype=np.uint8)
    labels[np.arange(len(class_ids)), class_ids] = 1
    return labels


def load_fashion_mnist(card: DatasetCard, data_root: str | os.PathLike | None) -> TensorSource:
    names = card.files or {
        "train_images": "train-images-idx3-ubyte",
        "train_labels": "train-labels-idx1-ubyte",
        "test_images": "t10k-images-idx3-ubyte",
        "test_labels": "t10k-labels-idx1-ubyte",
    }
    root = find_root(card, data_root, list(names.values()))
    arrays = {key: read_idx(_existing(root / name)) for key, name in names.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(
                f"malformed Fashion-MNIST files in {root}: {part} images {images.shape} "
                f"do not match labels {labels.shape}"
            )
        if labels.size and int(labels.max()) >= card.num_classes:
            raise UserError(
                f"malformed Fashion-MNIST labels in {root}: class id {int(labels.max())} "
                f">= {card.num_classes}"
            )
    images = np.concatenate([arrays["train_images"], arrays["test_images"]])
    class_ids = np.concatenate([arrays["train_labels"], arrays["test_labels"]]).astype(np.int64)
    groups = np.array(["train"] * len(arrays["train_labels"]) + ["test"] * len(arrays["test_labels"]))
    return TensorSource(
        images, one_hot(class_ids, card.num_classes), groups, False, identity=str(root),
        mean=0.2860, std=0.3530,  # Fashion-MNIST training-set pixel statistics
    )


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


def open_dataset(card: DatasetCard, data_root: str | os.PathLike | None = None) -> ImageSource:
    return _LOADER_FUNCTIONS[card.loader](card, data_root)
