"""Sources (labels as a multi-hot matrix plus a way to fetch input batches: images, or feature
vectors for non-image cards), locating a card's files on disk, and the IDX reader for
Fashion-MNIST. Nothing is ever downloaded."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.data.cards import (
    DATA_ENV_VAR,
    FASHION_MNIST_FILES,
    FASHION_MNIST_LOADERS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DatasetCard,
)
from bench.errors import UserError


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
    modality = "image"  # "features" for sources of feature vectors (FeatureSource)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, indices: np.ndarray, train: bool) -> torch.Tensor:
        """Float image batch [B, C, H, W], normalised, for the given indices."""
        raise NotImplementedError

    @property
    def in_memory(self) -> bool:
        return True

    def normalisation(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(mean, std) [1, C, 1, 1] that `batch` applies to pixels in [0, 1]; None if unknown."""
        return None

    def pixel_box(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """(low, high, 1/std) per channel [1, C, 1, 1]: the valid pixel range [0, 1] in the
        normalised inputs the network sees, and the factor that turns a pixel-unit budget into
        input units, so that an attack's budget is in pixels (CgAT's 8/255)."""
        stats = self.normalisation()
        if stats is None:
            return None
        mean, std = stats
        return (0.0 - mean) / std, (1.0 - mean) / std, 1.0 / std

    def for_split(self, split: Any) -> ImageSource:
        """The source a run with `split` trains on: itself, except where the inputs depend on
        the split (a document card's vocabulary comes from its training documents)."""
        return self


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

    def normalisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._mean, self._std


class FeatureSource(ImageSource):
    """N x V float feature vectors (a non-image card: e.g. TF-IDF rows of documents), held as a
    dense array or a SciPy sparse matrix; a batch is the rows as a dense float32 [B, V] tensor.
    No pixel box and no normalisation: attacks and image augmentation do not apply."""

    modality = "features"

    def __init__(self, features: Any, labels: np.ndarray, groups: np.ndarray, multi_label: bool,
                 identity: str, fingerprint: str = "") -> None:
        if features.ndim != 2 or features.shape[0] != labels.shape[0]:
            raise UserError(f"feature source {identity}: features {features.shape} do not match "
                            f"labels {labels.shape}")
        self.features = features.tocsr() if hasattr(features, "tocsr") else np.asarray(features, np.float32)
        self.labels = labels.astype(np.uint8)
        self.groups = groups
        self.num_classes = labels.shape[1]
        self.multi_label = multi_label
        self.identity = identity
        if fingerprint:
            self.fingerprint = fingerprint  # what bench.data.splits.data_fingerprint hashes

    @property
    def width(self) -> int:
        return int(self.features.shape[1])

    def batch(self, indices: np.ndarray, train: bool) -> torch.Tensor:
        rows = self.features[np.asarray(indices, dtype=np.int64)]
        dense = rows.toarray() if hasattr(rows, "toarray") else rows
        return torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32))

    def pixel_box(self) -> None:
        return None


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

    def normalisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        channels = len(IMAGENET_MEAN)
        return (torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, channels, 1, 1),
                torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, channels, 1, 1))

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
