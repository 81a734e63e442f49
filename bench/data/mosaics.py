"""Cards generated from real Fashion-MNIST images: multi-label mosaics and 100-class pairs.

The paper's other regimes (multi-label MS-COCO; 196 / 555 classes) have no offline image
set, so two cards are built deterministically from Fashion-MNIST's own images:

- `fashion_mnist_mosaic`: a 2 x 2 grid of 14-pixel tiles (the 28-pixel images, 2 x 2
  average-pooled) on the 28 x 28 canvas, 1 to 4 items, the other tiles blank; the labels
  are the set of item classes (multi-hot over 10).
- `fashion_mnist_pairs`: two tiles side by side in rows 7-20; the class is the ordered pair
  (left, right), class id = 10 * left + right (100 classes), with a class similarity that
  is known by construction (`ground_truth_similarity`).

Query items use only Fashion-MNIST test images, every other part only training images,
and each source image is used at most once across all parts (so query, train, validation,
validation database and database never share one). The result is generated on first use
into a cache (`$BENCH_CACHE`, else ~/.cache/hashbench), keyed by the construction
parameters and the sha256 of the source files; the source's `identity` (written into the
run record) holds both and the digest of the generated arrays.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.data.cards import (  # noqa: F401 - ground-truth helpers re-exported for callers
    ITEM_CLASSES,
    REPO_ROOT,
    DatasetCard,
    ground_truth_measure,
    ground_truth_similarity,
    item_similarity,
    load_card,
    pair_class_names,
)
from bench.data.sources import (
    FASHION_MNIST_FILES,
    FashionMnistArrays,
    ImageSource,
    TensorSource,
    existing_file,
    find_root,
    read_fashion_mnist,
)
from bench.errors import UserError

GENERATOR_VERSION = 1  # bump when a change alters the generated images or labels
CACHE_ENV_VAR = "BENCH_CACHE"
PARTS = ("query", "train", "validation", "validation_database", "database")
CANVAS = 28
TILE = 14

_MOSAIC_OPTIONS = {"seed", "items", "mosaics", "database_includes_train"}
_PAIRS_OPTIONS = {"seed", "item_names", "pairs_per_class", "database_includes_train"}


class GeneratedSource(TensorSource):
    """A TensorSource built by a generator, with what it was built from.

    `provenance[i, s]` is the Fashion-MNIST image in slot s of item i (index into the
    training images followed by the test images, as the fashion-mnist card orders them;
    -1 = blank). `generation_seconds` is None when the arrays came from the cache."""

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict[str, Any], identity: str,
                 cache_path: Path, generation_seconds: float | None) -> None:
        super().__init__(arrays["images"], arrays["labels"], arrays["groups"],
                         multi_label=bool(meta["multi_label"]), identity=identity,
                         mean=float(meta["mean"]), std=float(meta["std"]))
        self.provenance = arrays["provenance"]
        self.construction: dict[str, Any] = meta["params"]
        self.digest: str = meta["digest"]
        self.fingerprint = self.digest  # what bench.data.splits.data_fingerprint hashes for this source
        self.cache_path = cache_path
        self.generation_seconds = generation_seconds


# ----------------------------------------------------------------------------- options
def _options(card: DatasetCard, valid: set[str]) -> dict[str, Any]:
    unknown = sorted(set(card.options) - valid)
    if unknown:
        raise UserError(f"{card.path}: unknown option '{unknown[0]}'; "
                        f"valid options: {', '.join(sorted(valid))}")
    if (card.image_size, card.channels) != (CANVAS, 1):
        raise UserError(f"{card.path}: {card.loader} makes {CANVAS}x{CANVAS} grey images; "
                        f"set image_size: {CANVAS} and channels: 1")
    return dict(card.options)


def _part_sizes(card: DatasetCard, value: Any, what: str) -> dict[str, int]:
    if not isinstance(value, dict) or set(value) != set(PARTS):
        raise UserError(f"{card.path}: options.{what} must give a count for each of {', '.join(PARTS)}")
    sizes = {}
    for part in PARTS:
        count = value[part]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise UserError(f"{card.path}: options.{what}.{part} = {count!r}; use an integer >= 1")
        sizes[part] = count
    return sizes


def mosaic_params(card: DatasetCard) -> dict[str, Any]:
    """The construction parameters of a mosaic card, normalised (they key the cache)."""
    options = _options(card, _MOSAIC_OPTIONS)
    if card.num_classes != ITEM_CLASSES or not card.multi_label:
        raise UserError(f"{card.path}: fashion_mnist_mosaic needs num_classes: 10 and multi_label: true")
    items = options.get("items", [1, 4])
    if (not isinstance(items, list) or len(items) != 2 or not all(isinstance(i, int) for i in items)
            or not 1 <= items[0] <= items[1] <= 4):
        raise UserError(f"{card.path}: options.items = {items!r}; use [min, max] with 1 <= min <= max <= 4")
    return {"loader": card.loader, "version": GENERATOR_VERSION, "seed": int(options.get("seed", 0)),
            "canvas": CANVAS, "tile": TILE, "grid": 2, "pooling": "2x2 mean, rounded half up",
            "items": items, "mosaics": _part_sizes(card, options.get("mosaics"), "mosaics"),
            "database_includes_train": bool(options.get("database_includes_train", True))}


def pairs_params(card: DatasetCard) -> dict[str, Any]:
    """The construction parameters of a pairs card, normalised (they key the cache)."""
    options = _options(card, _PAIRS_OPTIONS)
    if card.num_classes != ITEM_CLASSES**2 or card.multi_label:
        raise UserError(f"{card.path}: fashion_mnist_pairs needs num_classes: 100 and multi_label: false")
    top = (CANVAS - TILE) // 2
    return {"loader": card.loader, "version": GENERATOR_VERSION, "seed": int(options.get("seed", 0)),
            "canvas": CANVAS, "tile": TILE, "rows": [top, top + TILE - 1],
            "pooling": "2x2 mean, rounded half up", "class_id": "10 * left + right",
            "pairs_per_class": _part_sizes(card, options.get("pairs_per_class"), "pairs_per_class"),
            "database_includes_train": bool(options.get("database_includes_train", True))}


# ----------------------------------------------------------------------------- building blocks
def pool_tiles(images: np.ndarray) -> np.ndarray:
    """2 x 2 average pooling in integers (rounded half up): [N, 28, 28] -> [N, 14, 14] uint8."""
    n, height, width = images.shape
    sums = images.reshape(n, height // 2, 2, width // 2, 2).astype(np.uint16).sum(axis=(2, 4))
    return ((sums + 2) // 4).astype(np.uint8)


def _group_names(params: dict[str, Any]) -> dict[str, str]:
    """Group name per part; train items also carry 'database' when the database includes
    them ('+'-joined, the convention the splits use for list files)."""
    names = {part: part for part in PARTS}
    if params["database_includes_train"]:
        names["train"] = "database+train"
    return names


def _take(pool: np.ndarray, cursor: int, count: int, what: str) -> np.ndarray:
    if cursor + count > len(pool):
        raise UserError(f"{what}: needs {cursor + count} source images, the Fashion-MNIST files "
                        f"hold {len(pool)}; reduce the card's part sizes")
    return pool[cursor:cursor + count]


def _mosaic_part(rng: np.random.Generator, count: int, items: list[int], pool: np.ndarray,
                 cursor: int, what: str) -> tuple[np.ndarray, int]:
    """Provenance [count, 4] of `count` mosaics: item counts spread evenly over the range,
    slots chosen at random, source images taken in order from the (shuffled) pool."""
    low, high = items
    per_mosaic = rng.permutation(low + np.arange(count) % (high - low + 1))
    slot_order = np.argsort(rng.random((count, 4)), axis=1)
    occupied = np.zeros((count, 4), dtype=bool)
    np.put_along_axis(occupied, slot_order, np.arange(4)[None, :] < per_mosaic[:, None], axis=1)
    provenance = np.full((count, 4), -1, dtype=np.int64)
    used = int(per_mosaic.sum())
    provenance[occupied] = _take(pool, cursor, used, what)
    return provenance, cursor + used


def _pairs_part(rng: np.random.Generator, per_class: int, pools: list[np.ndarray],
                cursors: list[int], what: str) -> np.ndarray:
    """Provenance [100 * per_class, 2] (left, right): per_class pairs of every ordered class
    pair; each item class gives 10 * per_class left and 10 * per_class right images."""
    class_ids = np.repeat(np.arange(ITEM_CLASSES**2), per_class)
    left, right = class_ids // ITEM_CLASSES, class_ids % ITEM_CLASSES
    provenance = np.empty((len(class_ids), 2), dtype=np.int64)
    need = ITEM_CLASSES * per_class
    for item in range(ITEM_CLASSES):
        taken = _take(pools[item], cursors[item], 2 * need, f"{what} (item class {item})")
        cursors[item] += 2 * need
        provenance[left == item, 0] = taken[:need]
        provenance[right == item, 1] = taken[need:]
    return provenance[rng.permutation(len(provenance))]


def _render(provenance: np.ndarray, tiles: np.ndarray, offsets: list[tuple[int, int]]) -> np.ndarray:
    """Paste the tile of each occupied slot at its (row, column) offset on a blank canvas."""
    canvas = np.zeros((len(provenance), CANVAS, CANVAS), dtype=np.uint8)
    for slot, (row, col) in enumerate(offsets):
        filled = provenance[:, slot] >= 0
        canvas[filled, row:row + TILE, col:col + TILE] = tiles[provenance[filled, slot]]
    return canvas


def _finish(rng: np.random.Generator, provenance: list[np.ndarray], groups: list[str],
            labels_of: Any, tiles: np.ndarray, offsets: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Concatenate the parts, shuffle them together (database order must not follow the
    class or part: ties are broken by database index), render and label."""
    all_provenance = np.concatenate(provenance)
    group = np.concatenate([np.full(len(p), g) for p, g in zip(provenance, groups, strict=True)])
    order = rng.permutation(len(all_provenance))
    all_provenance, group = all_provenance[order], group[order]
    return {"images": _render(all_provenance, tiles, offsets), "labels": labels_of(all_provenance),
            "groups": group, "provenance": all_provenance}


def generate_mosaics(params: dict[str, Any], data: FashionMnistArrays) -> dict[str, np.ndarray]:
    """The multi-label mosaic arrays for `params` (see mosaic_params)."""
    rng = np.random.default_rng(params["seed"])
    n_train = len(data.train_labels)
    tiles = pool_tiles(np.concatenate([data.train_images, data.test_images]))
    classes = np.concatenate([data.train_labels, data.test_labels])
    test_pool = n_train + rng.permutation(len(data.test_labels))
    train_pool = rng.permutation(n_train)
    names = _group_names(params)
    provenance, cursor = [], 0
    query, _ = _mosaic_part(rng, params["mosaics"]["query"], params["items"], test_pool, 0,
                            "query mosaics (test images)")
    provenance.append(query)
    for part in PARTS[1:]:
        block, cursor = _mosaic_part(rng, params["mosaics"][part], params["items"], train_pool, cursor,
                                     "train/validation/database mosaics (training images)")
        provenance.append(block)

    def labels_of(prov: np.ndarray) -> np.ndarray:
        labels = np.zeros((len(prov), ITEM_CLASSES), dtype=np.uint8)
        rows, slots = np.nonzero(prov >= 0)
        labels[rows, classes[prov[rows, slots]]] = 1
        return labels

    offsets = [(TILE * (slot // 2), TILE * (slot % 2)) for slot in range(4)]
    return _finish(rng, provenance, [names[p] for p in PARTS], labels_of, tiles, offsets)


def generate_pairs(params: dict[str, Any], data: FashionMnistArrays) -> dict[str, np.ndarray]:
    """The 100-class pair arrays for `params` (see pairs_params)."""
    rng = np.random.default_rng(params["seed"])
    n_train = len(data.train_labels)
    tiles = pool_tiles(np.concatenate([data.train_images, data.test_images]))
    classes = np.concatenate([data.train_labels, data.test_labels])
    test_pools = [n_train + rng.permutation(np.flatnonzero(data.test_labels == c))
                  for c in range(ITEM_CLASSES)]
    train_pools = [rng.permutation(np.flatnonzero(data.train_labels == c)) for c in range(ITEM_CLASSES)]
    names = _group_names(params)
    sizes = params["pairs_per_class"]
    provenance = [_pairs_part(rng, sizes["query"], test_pools, [0] * ITEM_CLASSES,
                              "query pairs (test images)")]
    cursors = [0] * ITEM_CLASSES
    for part in PARTS[1:]:
        provenance.append(_pairs_part(rng, sizes[part], train_pools, cursors,
                                      "train/validation/database pairs (training images)"))

    def labels_of(prov: np.ndarray) -> np.ndarray:
        class_ids = ITEM_CLASSES * classes[prov[:, 0]] + classes[prov[:, 1]]
        labels = np.zeros((len(prov), ITEM_CLASSES**2), dtype=np.uint8)
        labels[np.arange(len(prov)), class_ids] = 1
        return labels

    top = params["rows"][0]
    return _finish(rng, provenance, [names[p] for p in PARTS], labels_of, tiles, [(top, 0), (top, TILE)])


# ----------------------------------------------------------------------------- cache
def cache_dir() -> Path:
    """$BENCH_CACHE, else $XDG_CACHE_HOME/hashbench, else ~/.cache/hashbench; never results/."""
    env = os.environ.get(CACHE_ENV_VAR)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hashbench"
    folder = Path(env).expanduser().resolve() if env else base
    results = (REPO_ROOT / "results").resolve()
    if folder == results or results in folder.parents:
        raise UserError(f"${CACHE_ENV_VAR}={folder} is inside {results}; generated data must not go "
                        "into results (choose another folder)")
    return folder


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the generated arrays (images, labels, groups, provenance)."""
    sha = hashlib.sha256()
    for key in ("images", "labels", "provenance"):
        sha.update(key.encode())
        sha.update(np.ascontiguousarray(arrays[key]).tobytes())
    sha.update("\n".join(arrays["groups"].tolist()).encode())
    return sha.hexdigest()


def _file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _read_cache(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """The cached arrays and metadata, or None if absent, unreadable or not matching its digest."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {key: saved[key] for key in ("images", "labels", "groups", "provenance")}
            meta = json.loads(str(saved["meta"]))
    except (OSError, ValueError, KeyError) as error:
        print(f"warning: unreadable cache {path} ({error}); regenerating", file=sys.stderr)
        return None
    if arrays_digest(arrays) != meta.get("digest"):
        print(f"warning: cache {path} does not match its digest; regenerating", file=sys.stderr)
        return None
    return arrays, meta


def _write_cache(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
    tmp.replace(path)  # atomic: concurrent workers never read a half-written file


def load_generated(card: DatasetCard, data_root: str | os.PathLike | None) -> GeneratedSource:
    """Open a generated card: from the cache if its key matches, else generate and cache."""
    params = mosaic_params(card) if card.loader == "fashion_mnist_mosaic" else pairs_params(card)
    generate = generate_mosaics if card.loader == "fashion_mnist_mosaic" else generate_pairs
    names = card.files or FASHION_MNIST_FILES
    root = find_root(card, data_root, list(names.values()))
    files = sorted(existing_file(root / name) or root / name for name in names.values())
    source = {"root": str(root), "sha256": {f.name: _file_sha256(f) for f in files}}
    key = hashlib.sha256(json.dumps({"params": params, "source": source["sha256"]},
                                    sort_keys=True).encode()).hexdigest()
    path = cache_dir() / f"{card.name}-{key[:16]}.npz"
    cached = _read_cache(path)
    seconds: float | None = None
    if cached is None:
        started = time.perf_counter()
        arrays = generate(params, read_fashion_mnist(card, root))
        train = arrays["images"][part_members(arrays["groups"], "train")] / 255.0
        meta = {"params": params, "source": source, "digest": arrays_digest(arrays),
                "multi_label": card.multi_label, "key": key,
                # Normalise with the generated training images' statistics (blank tiles lower them).
                "mean": round(float(train.mean()), 4), "std": round(float(train.std()), 4)}
        _write_cache(path, arrays, meta)
        seconds = time.perf_counter() - started
    else:
        arrays, meta = cached
    identity = json.dumps({"generator": card.loader, "params": params, "source": source,
                           "digest": meta["digest"]}, sort_keys=True, separators=(",", ":"))
    result = GeneratedSource(arrays, meta, identity, path, seconds)
    matrix = ground_truth_similarity(card)
    if matrix is not None:
        result.ground_truth_similarity = matrix
        result.ground_truth_measure = ground_truth_measure(card)
    return result


# ----------------------------------------------------------------------------- summaries
def label_count_histogram(labels: np.ndarray) -> dict[int, int]:
    """How many items carry 0, 1, 2, ... distinct labels."""
    counts = np.bincount(labels.sum(axis=1).astype(np.int64), minlength=labels.shape[1] + 1)
    return {k: int(v) for k, v in enumerate(counts) if v}


def part_members(groups: np.ndarray, part: str) -> np.ndarray:
    """Boolean mask of the items whose '+'-joined group names include `part`."""
    names, inverse = np.unique(groups, return_inverse=True)
    return np.array([part in name.split("+") for name in names.tolist()], dtype=bool)[inverse]


def part_histograms(source: ImageSource) -> dict[str, dict[int, int]]:
    """Label-count histogram of each generated part (database: as the split selects it)."""
    return {part: label_count_histogram(source.labels[part_members(source.groups, part)])
            for part in PARTS}


def print_histograms(name: str, data_root: str | None = None) -> None:
    """Print the label-count histogram of each part of a generated card (for its card comment)."""
    source = load_generated(load_card(name), data_root)
    for part, histogram in part_histograms(source).items():
        total = sum(histogram.values())
        print(f"{part} ({total:,}): " + ", ".join(f"{k}: {v}" for k, v in histogram.items()))
