"""Seeded query / train / validation / validation-database / database splits, saved, hashed
and leak-checked.

Four protocols:
- `per_class`: draw a fixed number of images per class from named groups (the CIFAR-10
  convention: 100 query and 500 train images per class); the database is everything but
  the query set, or a per-class sample of it.
- `lists`: the split comes from the dataset's list files (NUS-WIDE, COCO, ImageNet-100,
  Stanford Cars, NABirds); only the validation parts are drawn here.
- `by_group`: every part is a named group of the source's per-item `groups` array
  (generated cards whose loader already decided which image belongs where).
- `stratified`: each part has a total `count`, spread over the classes in proportion to their
  sizes in the whole corpus (largest remainders, ties by class id), so every part keeps the
  corpus's class mix; for corpora whose smallest class is far smaller than its largest (the
  WordNet nouns: 42 to 11,587 documents), where a fixed number per class would not fit.

Model selection (protocol v2) ranks the validation queries against a *validation database*:
held-out images disjoint from train, query and the validation queries, so selection mirrors
the test (query images against mostly unseen database images) instead of rewarding codes
memorised on the training images. A card names where its validation database comes from
(`split.validation_database`); a card without one keeps the v1 behaviour (validation queries
against the training set), and every split says which it is (`selection_protocol`).

A split's digest covers the index arrays *and* the data they index (`data_fingerprint`), so
two different datasets or list files that happen to have the same sizes never pool.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.data.loading import DatasetCard, ImageSource
from bench.data.split_groups import draw_by_group, group_members
from bench.errors import UserError

SPLIT_PARTS = ("query", "train", "validation", "validation_database", "database")
SPLIT_PROTOCOLS = ("per_class", "lists", "by_group", "stratified")
SELECTION_V1 = "v1: validation queries vs train set"


@dataclass(frozen=True)
class Split:
    query: np.ndarray
    train: np.ndarray
    validation: np.ndarray
    validation_database: np.ndarray  # empty for v1 cards (selection ranks against train)
    database: np.ndarray
    digest: str
    path: str
    held_out: bool = False  # True: validation_database is disjoint from train/query/validation
    selection_protocol: str = SELECTION_V1
    data: dict[str, str] = field(default_factory=dict)  # data_fingerprint(source)

    def sizes(self) -> dict[str, int]:
        return {part: int(len(getattr(self, part))) for part in SPLIT_PARTS}


def describe_selection(held_out: bool, size: int) -> str:
    """The short name a record carries for how model selection ranked validation queries."""
    if not held_out:
        return SELECTION_V1
    return (f"v2: validation queries vs held-out validation database ({size} items, "
            "disjoint from train and query)")


def selection_reference(split: Split) -> np.ndarray:
    """What validation queries are ranked against: the held-out validation database (v2), or
    the training set on a card without one (v1)."""
    return split.validation_database if split.held_out else split.train


def selection_description(split: Split) -> dict[str, Any]:
    """What a run record's `selection` section should say about the split (the training loop
    adds the criterion and the selected epoch). Disjointness is computed from the arrays, not
    taken from the card, so a record cannot claim a held-out set it did not have."""
    reference = selection_reference(split)
    return {
        "protocol": split.selection_protocol,
        "validation_queries": int(len(split.validation)),
        "validation_database_size": int(len(reference)),
        "validation_database_disjoint_from": {
            name: not np.intersect1d(reference, getattr(split, name)).size
            for name in ("train", "query", "validation")
        },
    }


# ----------------------------------------------------------------------------- identity
_FINGERPRINTS: weakref.WeakKeyDictionary[ImageSource, dict[str, str]] = weakref.WeakKeyDictionary()


def data_fingerprint(source: ImageSource) -> dict[str, str]:
    """sha256 of what the split indexes: labels and groups always; for in-memory data the
    decoded images too (Fashion-MNIST's 70k images hash in ~0.1 s); for file data (list-file
    cards) the image names, relative to the data root, as the list files give them. Image files
    are not read or stat-ed: re-hashing 100k+ JPEGs per run is too slow, and copying a dataset
    changes mtimes without changing a pixel. Cached per source object."""
    cached = _FINGERPRINTS.get(source)
    if cached is not None:
        return cached
    sha = hashlib.sha256()
    labels = np.ascontiguousarray(source.labels, dtype=np.uint8)
    sha.update(repr(labels.shape).encode())
    sha.update(memoryview(labels).cast("B"))
    sha.update("\n".join(map(str, np.asarray(source.groups).tolist())).encode())
    own = getattr(source, "fingerprint", None)
    images = getattr(source, "images", None)
    paths = getattr(source, "paths", None)
    if isinstance(own, str) and own:
        sha.update(own.encode())
        covers = "labels, groups and the loader's own fingerprint"
    elif images is not None:
        array = np.ascontiguousarray(images.numpy() if hasattr(images, "numpy") else images)
        sha.update(f"{array.shape}{array.dtype}".encode())
        sha.update(memoryview(array).cast("B"))
        covers = "labels, groups and the decoded images"
    elif paths is not None:
        root = str(getattr(source, "identity", ""))
        sha.update("\n".join(_relative(str(p), root) for p in paths).encode())
        covers = "labels, groups and image names from the list files (image files not hashed)"
    else:
        covers = "labels and groups only"
    result = {"sha256": sha.hexdigest(), "covers": covers}
    _FINGERPRINTS[source] = result
    return result


def _relative(path: str, root: str) -> str:
    """A path relative to the data root, so the same data in another folder hashes the same."""
    if root and (path == root or path.startswith(root.rstrip(os.sep) + os.sep)):
        return os.path.relpath(path, root)
    return path


def split_digest(parts: dict[str, np.ndarray], data_sha256: str = "") -> str:
    """sha256 over the index arrays and the data's fingerprint: two runs are comparable iff
    their digests match."""
    sha = hashlib.sha256()
    for name in SPLIT_PARTS:
        sha.update(name.encode())
        sha.update(np.ascontiguousarray(parts[name], dtype=np.int64).tobytes())
    sha.update(b"data")
    sha.update(data_sha256.encode())
    return sha.hexdigest()


# ----------------------------------------------------------------------------- checks
def check_split(parts: dict[str, np.ndarray], num_items: int, held_out: bool = True) -> None:
    """Refuse a split that leaks: query vs database or train, validation vs query or train,
    and (held_out) the validation database vs train, query or the validation queries."""
    for name in SPLIT_PARTS:
        index = parts[name]
        if name == "validation_database" and not held_out:
            if len(index):
                raise UserError("split part 'validation_database' must be empty without a held-out one")
            continue
        if len(index) == 0:
            raise UserError(f"split part '{name}' is empty; check the dataset card's split")
        if index.min() < 0 or index.max() >= num_items:
            raise UserError(f"split part '{name}' indexes outside the dataset (0..{num_items - 1})")
        if len(np.unique(index)) != len(index):
            raise UserError(f"split part '{name}' lists an image twice")
    pairs = [("query", "database"), ("validation", "query"), ("validation", "train"), ("query", "train")]
    if held_out:
        pairs += [("validation_database", "train"), ("validation_database", "query"),
                  ("validation_database", "validation")]
    for a, b in pairs:
        overlap = np.intersect1d(parts[a], parts[b])
        if len(overlap):
            raise UserError(f"split leaks: {len(overlap)} images are in both {a} and {b}")


# ----------------------------------------------------------------------------- protocols
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
    """Indices of the items in `group` ("all": every item). An item may belong to several
    groups joined with '+' (list-file loaders)."""
    if group == "all":
        return np.arange(len(source))
    return group_members(np.asarray(source.groups).astype(str), group)


def _mapping(card: DatasetCard, name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UserError(f"{card.path}: split.{name} must be a mapping, e.g. "
                        "{group: train, per_class: 500}, got " + repr(value))
    return value


def _draw_per_class(card: DatasetCard, source: ImageSource, rng: np.random.Generator) -> dict:
    spec = card.split
    class_ids = _class_ids_for_sampling(source)

    def part(name: str, cfg: dict[str, Any], exclude: list[np.ndarray],
             within: np.ndarray | None = None) -> np.ndarray:
        pool = _in_group(source, cfg.get("group", "all"))
        if within is not None:
            pool = np.intersect1d(pool, within)
        pool = np.setdiff1d(pool, np.concatenate(exclude))
        return _sample_per_class(rng, pool, class_ids, int(cfg["per_class"]), f"split {name}")

    empty = np.empty(0, dtype=np.int64)
    query = part("query", spec["query"], [empty])
    train = part("train", spec["train"], [query])
    validation = part("validation", spec["validation"], [query, train])
    database_cfg = spec.get("database", "all_but_query")
    rest = np.setdiff1d(np.arange(len(source)), query)
    if database_cfg == "all_but_query":
        database = rest
    else:
        database = np.union1d(
            train, _sample_per_class(rng, rest, class_ids, int(database_cfg["per_class"]), "database")
        )
    parts = {"query": query, "train": train, "validation": validation, "database": database}
    vdb_cfg = spec.get("validation_database")
    if vdb_cfg is None:
        return parts
    # Drawn last, so query/train/validation/database are the same as the v1 split's for the
    # same seed: only model selection changes. From the database (what the test ranks), never
    # train, query or the validation queries.
    vdb = part("validation_database", _mapping(card, "validation_database", vdb_cfg),
               [query, train, validation], within=database)
    return {**parts, "validation_database": vdb}


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
    parts = {"query": query, "train": train, "validation": validation, "database": database}
    vdb_cfg = spec.get("validation_database")
    if vdb_cfg is None:
        return parts
    vdb_cfg = _mapping(card, "validation_database", vdb_cfg)
    taken = np.concatenate([query, train, validation])
    if "group" in vdb_cfg:  # a list file of its own
        return {**parts, "validation_database": np.setdiff1d(_in_group(source, vdb_cfg["group"]), taken)}
    vdb_count = int(vdb_cfg.get("count", 0))
    pool = np.setdiff1d(database, taken)
    if vdb_count < 1 or len(pool) < vdb_count:
        raise UserError(f"split validation_database: needs count >= 1 images from the database "
                        f"minus train, query and validation; asked {vdb_count}, {len(pool)} available")
    return {**parts, "validation_database": np.sort(rng.choice(pool, size=vdb_count, replace=False))}


def _draw_by_group(card: DatasetCard, source: ImageSource, rng: np.random.Generator) -> dict:
    """Every part is a named group of the source's per-item `groups`; nothing is drawn."""
    if getattr(source, "groups", None) is None or len(source.groups) != len(source):
        raise UserError(f"{card.path}: split protocol by_group needs the loader's per-item groups, "
                        f"which loader '{card.loader}' does not provide")
    return draw_by_group(card, source)


def proportional_counts(class_sizes: np.ndarray, total: int) -> np.ndarray:
    """`total` spread over classes in proportion to `class_sizes`: floors, then one more for the
    largest remainders (ties: the lower class id)."""
    quota = class_sizes * total / class_sizes.sum()
    counts = np.floor(quota).astype(np.int64)
    order = np.lexsort((np.arange(len(quota)), -(quota - counts)))
    counts[order[: total - int(counts.sum())]] += 1
    return counts


def _draw_stratified(card: DatasetCard, source: ImageSource, rng: np.random.Generator) -> dict:
    spec = card.split
    class_ids = _class_ids_for_sampling(source)
    sizes = np.bincount(class_ids, minlength=source.num_classes)

    def part(name: str, exclude: list[np.ndarray], within: np.ndarray | None = None) -> np.ndarray:
        cfg = _mapping(card, name, spec[name])
        count = cfg.get("count")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise UserError(f"{card.path}: split.{name}.count = {count!r}; use an integer >= 1")
        pool = np.arange(len(source)) if within is None else within
        pool = np.setdiff1d(pool, np.concatenate(exclude))
        chosen = []
        for c, wanted in enumerate(proportional_counts(sizes, count).tolist()):
            members = pool[class_ids[pool] == c]
            if len(members) < wanted:
                raise UserError(f"split {name}: class {c} has {len(members)} items left, fewer than "
                                f"its share {wanted} of count={count}")
            chosen.append(rng.choice(members, size=wanted, replace=False))
        return np.sort(np.concatenate(chosen))

    empty = np.empty(0, dtype=np.int64)
    query = part("query", [empty])
    train = part("train", [query])
    validation = part("validation", [query, train])
    if spec.get("database", "all_but_query") != "all_but_query":
        raise UserError(f"{card.path}: a stratified split's database is all_but_query")
    database = np.setdiff1d(np.arange(len(source)), query)
    parts = {"query": query, "train": train, "validation": validation, "database": database}
    if "validation_database" in spec:
        parts["validation_database"] = part("validation_database", [query, train, validation], database)
    return parts


_DRAW = {"per_class": _draw_per_class, "lists": _draw_from_lists, "by_group": _draw_by_group,
         "stratified": _draw_stratified}


def make_split(
    card: DatasetCard, source: ImageSource, seed: int, splits_dir: Path | None
) -> Split:
    """Draw (or reload) the split for `card` with `seed`; save it as an .npz beside the runs.

    A saved split whose contents no longer hash to its recorded digest is refused rather
    than silently regenerated: results computed on it would not be comparable.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise UserError(f"split seed {seed!r} is not valid; give a non-negative integer, e.g. 0")
    rng = np.random.default_rng(seed)
    protocol = card.split.get("protocol", "per_class")
    if protocol not in _DRAW:
        raise UserError(f"{card.path}: split protocol '{protocol}' is not one of "
                        f"{', '.join(SPLIT_PROTOCOLS)}")
    parts = _DRAW[protocol](card, source, rng)
    # A card without a validation database keeps v1 selection: validation queries vs train.
    held_out = "validation_database" in parts
    if not held_out:
        parts["validation_database"] = np.empty(0, dtype=np.int64)
    parts = {name: np.asarray(parts[name], dtype=np.int64) for name in SPLIT_PARTS}
    check_split(parts, len(source), held_out=held_out)
    data = data_fingerprint(source)
    digest = split_digest(parts, data["sha256"])
    path = ""
    if splits_dir is not None:
        target = Path(splits_dir) / f"{card.name}-seed{seed}-{digest[:12]}.npz"
        if target.exists():
            try:
                with np.load(target) as saved:
                    stored = {name: saved[name] for name in SPLIT_PARTS}
            except (OSError, ValueError, KeyError):
                stored = None
            if stored is None or split_digest(stored, data["sha256"]) != digest:
                raise UserError(f"saved split {target} does not match its digest; move it aside")
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            # A temp name of its own: two sweeps sharing a results folder may both write it.
            handle, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".npz")
            os.close(handle)
            tmp = Path(tmp_name)
            try:
                np.savez(tmp, **parts, data_sha256=np.array(data["sha256"]))
                tmp.replace(target)
            finally:
                tmp.unlink(missing_ok=True)
        path = str(target)
    return Split(**parts, digest=digest, path=path, held_out=held_out,
                 selection_protocol=describe_selection(held_out, len(parts["validation_database"])),
                 data=dict(data))
