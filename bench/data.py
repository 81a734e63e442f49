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
    ground_truth: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    def ground_truth_similarity(self, same_group: float | None = None) -> np.ndarray | None:
        """The [C, C] class similarity the card declares (known by construction, not learnt),
        or None when it declares none; see `bench.mosaics.ground_truth_similarity`."""
        from bench.mosaics import ground_truth_similarity

        return ground_truth_similarity(self, same_group)


_CARD_KEYS = {
    "name", "title", "loader", "num_classes", "multi_label", "map_at", "backbone",
    "image_size", "channels", "split", "schedule", "search_paths", "install_hint",
    "class_names", "files", "options", "published", "ground_truth", "protocol",
}
_REQUIRED_CARD_KEYS = ("name", "loader", "num_classes", "split")
LOADERS = ("fashion_mnist", "cifar", "list_file", "synthetic", "fashion_mnist_mosaic",
           "fashion_mnist_pairs")
# Loaders that build their images from the Fashion-MNIST files (found like that card's).
FASHION_MNIST_LOADERS = ("fashion_mnist", "fashion_mnist_mosaic", "fashion_mnist_pairs")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


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
    class_names = tuple(raw.get("class_names") or ())
    if not class_names and raw["loader"] == "fashion_mnist_pairs":
        from bench.mosaics import pair_class_names

        class_names = pair_class_names((raw.get("options") or {}).get("item_names") or ())
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
        class_names=class_names,
        files=dict(raw.get("files") or {}),
        options=dict(raw.get("options") or {}),
        ground_truth=dict(raw.get("ground_truth") or {}),
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
    # A class similarity known by construction (generated cards), for judging centers.
    ground_truth_similarity: np.ndarray | None = None
    ground_truth_measure: str = ""

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, indices: np.ndarray, train: bool) -> torch.Tensor:
        """Float image batch [B, C, H, W], normalised, for the given indices."""
        raise NotImplementedError

    @property
    def in_memory(self) -> bool:
        return True


def ground_truth_record(source: ImageSource) -> dict[str, Any] | None:
    """What a run record keeps (as task.ground_truth_similarity) of a source's class
    similarity known by construction; None for sources without one."""
    matrix = source.ground_truth_similarity
    if matrix is None:
        return None
    return {"measure": source.ground_truth_measure, "matrix": np.round(matrix, 6).tolist()}


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
def _folder_names(card: DatasetCard) -> list[str]:
    """Sub-folder names a data folder may keep this card's files under."""
    names = [card.name]
    if card.loader in FASHION_MNIST_LOADERS and card.name != "fashion-mnist":
        names.append("fashion-mnist")  # generated cards read the Fashion-MNIST files
    return names


def candidate_roots(card: DatasetCard, data_root: str | os.PathLike | None) -> list[Path]:
    """Where a dataset's files are looked for, in order: --data-root (itself, then its
    <name> sub-folder) if given and nothing else; otherwise $BENCH_DATA/<name>, $BENCH_DATA,
    then the card's search paths."""
    if data_root:
        return [Path(data_root)] + [Path(data_root) / name for name in _folder_names(card)]
    roots: list[Path] = []
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        roots.extend([Path(env) / name for name in _folder_names(card)] + [Path(env)])
    roots.extend(Path(p) for p in card.search_paths)
    return roots


def find_root(card: DatasetCard, data_root: str | os.PathLike | None, required: list[str]) -> Path:
    """First candidate root holding every required file (a name or its `.gz`).

    A --data-root the user gave is never silently passed over: if it does not exist or lacks
    the files, the run is refused (falling back to a system copy would train on other data
    than the user asked for)."""
    roots = candidate_roots(card, data_root)
    for root in roots:
        if all(existing_file(root / name) is not None for name in required):
            return root
    hint = f"; {card.install_hint}" if card.install_hint else ""
    gz = "[.gz]" if card.loader in FASHION_MNIST_LOADERS else ""  # IDX files may be gzipped
    expected = ", ".join(f"{name}{gz}" for name in required)
    if data_root:
        given = Path(data_root)
        if not given.is_dir():
            raise UserError(
                f"--data-root {given} does not exist or is not a folder; dataset '{card.name}' "
                f"expects a folder holding {expected}{hint}"
            )
        looked = ", ".join(str(r) for r in roots)
        raise UserError(
            f"--data-root {given} lacks the files of dataset '{card.name}': expected {expected} "
            f"in one of {looked}{hint}"
        )
    looked = ", ".join(str(r) for r in roots) or "(no location configured)"
    raise UserError(
        f"dataset '{card.name}' not found: looked for {expected} in {looked}"
        f" (set --data-root or ${DATA_ENV_VAR}){hint}"
    )


def existing_file(path: Path) -> Path | None:
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


@dataclass(frozen=True)
class FashionMnistArrays:
    """The four Fashion-MNIST IDX arrays, checked, and the folder they came from."""

    root: Path
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    paths: tuple[Path, ...]


def read_fashion_mnist(card: DatasetCard, data_root: str | os.PathLike | None) -> FashionMnistArrays:
    """Locate and read the Fashion-MNIST IDX files, refusing mismatched shapes or labels."""
    names = card.files or FASHION_MNIST_FILES
    root = find_root(card, data_root, list(names.values()))
    paths = {key: existing_file(root / name) or root / name for key, name in names.items()}
    arrays = {key: read_idx(path) for key, path in paths.items()}
    item_classes = 10 if card.loader != "fashion_mnist" else card.num_classes
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(
                f"malformed Fashion-MNIST files in {root}: {part} images {images.shape} "
                f"do not match labels {labels.shape}"
            )
        if labels.size and int(labels.max()) >= item_classes:
            raise UserError(
                f"malformed Fashion-MNIST labels in {root}: class id {int(labels.max())} "
                f">= {item_classes}"
            )
    return FashionMnistArrays(
        root, arrays["train_images"], arrays["train_labels"].astype(np.int64),
        arrays["test_images"], arrays["test_labels"].astype(np.int64),
        tuple(paths[key] for key in sorted(paths)),
    )


def load_fashion_mnist(card: DatasetCard, data_root: str | os.PathLike | None) -> TensorSource:
    data = read_fashion_mnist(card, data_root)
    images = np.concatenate([data.train_images, data.test_images])
    class_ids = np.concatenate([data.train_labels, data.test_labels])
    groups = np.array(["train"] * len(data.train_labels) + ["test"] * len(data.test_labels))
    return TensorSource(
        images, one_hot(class_ids, card.num_classes), groups, False, identity=str(data.root),
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


def _load_generated(card: DatasetCard, data_root: str | os.PathLike | None) -> ImageSource:
    from bench.mosaics import load_generated

    return load_generated(card, data_root)


_LOADER_FUNCTIONS["fashion_mnist_mosaic"] = _load_generated
_LOADER_FUNCTIONS["fashion_mnist_pairs"] = _load_generated


def open_dataset(card: DatasetCard, data_root: str | os.PathLike | None = None) -> ImageSource:
    return _LOADER_FUNCTIONS[card.loader](card, data_root)
