"""Dataset cards: the parsed `datasets/<name>.yaml` files, and what a card declares without
reading any data (class names, a ground-truth class similarity for generated cards).

The lowest room of the data layer: `bench.data.sources` (image sources, file readers),
`bench.data.mosaics` (generated cards) and `bench.data.loading` (loaders, `open_dataset`) build on it.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
CARDS_DIR = REPO_ROOT / "datasets"
DATA_ENV_VAR = "BENCH_DATA"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


ITEM_CLASSES = 10  # Fashion-MNIST item classes, the parts generated cards are built from


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
    table: str | None = None  # the card's primary table (an experiment): a bare run's budget
    path: str = ""
    # What an item is: "image" (pixels [C, H, W]) or "features" (a vector of `features` floats,
    # e.g. a document's TF-IDF row): feature cards have no pixel box, augmentation or conv backbone.
    modality: str = "image"
    features: int = 0
    precision_at: int | None = None  # a card's second headline metric: precision@k of the test ranking
    # How an unsupervised method's checkpoint is chosen: None or "last-epoch" (validation mAP needs
    # labels), or "validation" (the card declares that selection may read validation labels).
    unsupervised_selection: str | None = None
    # The unsupervised regime's training views on this card, where the default does not fit
    # (bench.training.regime.Augmentation's fields: crop_area, shift, flip, noise).
    augmentation: dict[str, Any] = field(default_factory=dict)

    @property
    def is_image(self) -> bool:
        return self.modality == "image"

    @property
    def input_width(self) -> int:
        """What the backbone's first layer takes: image channels, or the feature vector's width."""
        return self.channels if self.is_image else self.features

    def size_text(self) -> str:
        """The card's declared item count for listings ("82,115 documents"), or ""."""
        count = self.options.get("documents")
        return f", {int(count):,} documents" if isinstance(count, int) else ""

    def ground_truth_similarity(self, same_group: float | None = None) -> np.ndarray | None:
        """The [C, C] class similarity the card declares (known by construction, not learnt),
        or None when it declares none; see `ground_truth_similarity` below."""
        return ground_truth_similarity(self, same_group)


_CARD_KEYS = {
    "name", "title", "loader", "num_classes", "multi_label", "map_at", "backbone",
    "image_size", "channels", "split", "schedule", "search_paths", "install_hint",
    "class_names", "files", "options", "published", "ground_truth", "protocol", "table",
    "modality", "features", "precision_at", "unsupervised_selection", "augmentation",
}
MODALITIES = ("image", "features")
UNSUPERVISED_SELECTION = ("last-epoch", "validation")
_REQUIRED_CARD_KEYS = ("name", "loader", "num_classes", "split")
LOADERS = ("fashion_mnist", "cifar", "list_file", "synthetic", "fashion_mnist_mosaic",
           "fashion_mnist_pairs", "wordnet", "synthetic_documents")
# Loaders whose items are documents, turned into TF-IDF feature vectors (bench.data.documents).
DOCUMENT_LOADERS = ("wordnet", "synthetic_documents")
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


# libyaml's parser where PyYAML was built with it (the same safe constructor and resolver, so
# the same values); the pure-Python parser otherwise.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=64)
def _parse_yaml(text: str) -> Any:
    """Parsed once per distinct text: planning a 270-run tuned table reads each card's tuned
    file once per run, and that file grows with every search (tens of kB)."""
    return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 (a safe loader)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file, turning any failure into one line naming the file. The file is read
    every time (a changed file is parsed anew); the caller gets its own copy to change."""
    try:
        text = path.read_text()
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        return copy.deepcopy(_parse_yaml(text))
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
    modality = raw.get("modality", "image")
    if modality not in MODALITIES:
        raise UserError(f"dataset card {path}: modality '{modality}' is not one of {', '.join(MODALITIES)}")
    features = raw.get("features", 0)
    valid_width = isinstance(features, int) and not isinstance(features, bool) and features >= 1
    if modality == "features" and not valid_width:
        raise UserError(f"dataset card {path}: a features card needs features: N (the input width, "
                        f"an integer >= 1), got {features!r}")
    if (modality == "features") != (raw["loader"] in DOCUMENT_LOADERS):
        raise UserError(f"dataset card {path}: loader '{raw['loader']}' makes "
                        f"{'feature vectors' if raw['loader'] in DOCUMENT_LOADERS else 'images'}; "
                        f"set modality: {'features' if raw['loader'] in DOCUMENT_LOADERS else 'image'}")
    precision_at = raw.get("precision_at")
    if precision_at is not None and (isinstance(precision_at, bool) or not isinstance(precision_at, int)
                                     or precision_at < 1):
        raise UserError(f"dataset card {path}: precision_at = {precision_at!r}; use an integer >= 1")
    selection = raw.get("unsupervised_selection")
    if selection is not None and selection not in UNSUPERVISED_SELECTION:
        raise UserError(f"dataset card {path}: unsupervised_selection '{selection}' is not one of "
                        f"{', '.join(UNSUPERVISED_SELECTION)}")
    class_names = tuple(raw.get("class_names") or ())
    if not class_names and raw["loader"] == "fashion_mnist_pairs":
        class_names = pair_class_names((raw.get("options") or {}).get("item_names") or ())
    return DatasetCard(
        name=raw["name"],
        title=raw.get("title", raw["name"]),
        loader=raw["loader"],
        num_classes=int(raw["num_classes"]),
        multi_label=bool(raw.get("multi_label", False)),
        map_at=None if map_at in (None, "all") else int(map_at),
        backbone=raw.get("backbone", "small_cnn"),
        image_size=int(raw.get("image_size", 224)) if modality == "image" else 0,
        channels=int(raw.get("channels", 3)) if modality == "image" else 0,
        split=dict(raw["split"]),
        schedule=dict(raw.get("schedule") or {}),
        search_paths=tuple(raw.get("search_paths") or ()),
        install_hint=raw.get("install_hint", ""),
        class_names=class_names,
        files=dict(raw.get("files") or {}),
        options=dict(raw.get("options") or {}),
        ground_truth=dict(raw.get("ground_truth") or {}),
        table=raw.get("table"),
        path=str(path),
        modality=modality,
        features=int(features) if modality == "features" else 0,
        precision_at=precision_at,
        unsupervised_selection=selection,
        augmentation=dict(raw.get("augmentation") or {}),
    )


def pair_class_names(item_names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Names of the 100 pair classes, in class-id order (10 * left + right)."""
    return tuple(f"{left} | {right}" for left in item_names for right in item_names)


# ----------------------------------------------------------------------------- ground truth
def item_similarity(card: DatasetCard, same_group: float | None = None) -> np.ndarray:
    """[10, 10] similarity of Fashion-MNIST item classes: 1 for the same class, `same_group`
    for two classes of one declared group (e.g. tops, shoes), else 0."""
    truth = card.ground_truth
    weight = float(truth.get("same_group", 0.0) if same_group is None else same_group)
    groups = truth.get("item_groups") or {}
    matrix = np.eye(ITEM_CLASSES)
    seen: set[int] = set()
    for name, members in groups.items():
        members = list(members)
        if not all(isinstance(m, int) and 0 <= m < ITEM_CLASSES for m in members) or seen & set(members):
            raise UserError(f"{card.path}: ground_truth.item_groups.{name} = {members!r}; use distinct "
                            f"class ids 0..{ITEM_CLASSES - 1}, each in at most one group")
        seen |= set(members)
        block = np.ix_(members, members)
        matrix[block] = np.maximum(matrix[block], weight)
    return matrix


def ground_truth_similarity(card: DatasetCard, same_group: float | None = None) -> np.ndarray | None:
    """The [C, C] class similarity a generated card declares, or None.

    Pairs: S[(a, b), (c, d)] = (s(a, c) + s(b, d)) / 2 with s = item_similarity: 1 for the same
    pair, 0.5 for one shared component in the same position, plus `same_group` / 2 for each
    position whose items share a group. same_group=0 gives the position-only version.
    Mosaics: the item similarity itself (over the 10 labels)."""
    if not card.ground_truth:
        return None
    items = item_similarity(card, same_group)
    if card.loader == "fashion_mnist_pairs":
        return ((items[:, None, :, None] + items[None, :, None, :]) / 2).reshape(ITEM_CLASSES**2, -1)
    return items


def ground_truth_measure(card: DatasetCard) -> str:
    return str(card.ground_truth.get("measure", ""))
