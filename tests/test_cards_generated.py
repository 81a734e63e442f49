"""Generated cards (Fashion-MNIST mosaics and pairs) on tiny fake IDX files the tests write.

Expected values come from literal loops over the generated items and the fake source
images, never from the generator itself. One test uses the real Fashion-MNIST if present.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fake_idx import write_idx

from bench.data.loading import ground_truth_record, load_card, open_dataset
from bench.data.mosaics import (
    PARTS,
    ground_truth_similarity,
    label_count_histogram,
    part_histograms,
    pool_tiles,
)
from bench.data.split_groups import draw_by_group, group_members
from bench.errors import UserError

N_TRAIN, N_TEST = 1000, 200  # 100 / 20 images per class
REAL = Path("/usr/share/datasets/fashion-mnist")
TOPS, SHOES = {0, 2, 4, 6}, {5, 7, 9}


@pytest.fixture
def fake(tmp_path: Path, monkeypatch) -> dict:
    """Fake Fashion-MNIST (pixels 1..255, so a blank tile is the only all-zero tile) and a
    private cache folder."""
    rng = np.random.default_rng(7)
    root = tmp_path / "fm"
    root.mkdir()
    images = rng.integers(1, 256, (N_TRAIN + N_TEST, 28, 28))
    labels = np.concatenate([rng.permutation(np.arange(N_TRAIN) % 10),
                             rng.permutation(np.arange(N_TEST) % 10)])
    write_idx(root / "train-images-idx3-ubyte", images[:N_TRAIN], gz=True)
    write_idx(root / "train-labels-idx1-ubyte", labels[:N_TRAIN], gz=True)
    write_idx(root / "t10k-images-idx3-ubyte", images[N_TRAIN:], gz=False)
    write_idx(root / "t10k-labels-idx1-ubyte", labels[N_TRAIN:], gz=False)
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BENCH_DATA", raising=False)
    return {"root": root, "images": images.astype(np.uint8), "labels": labels, "cache": tmp_path / "cache"}


MOSAICS = {"query": 8, "train": 21, "validation": 4, "validation_database": 8, "database": 12}
PAIRS = {"query": 1, "train": 2, "validation": 1, "validation_database": 1, "database": 1}


def multi_card(**options):
    card = load_card("fashion-mnist-multi")
    return replace(card, options={**card.options, "mosaics": dict(MOSAICS), **options})


def pairs_card(**options):
    card = load_card("fashion-mnist-pairs")
    return replace(card, options={**card.options, "pairs_per_class": dict(PAIRS), **options})


def literal_tile(image: np.ndarray) -> np.ndarray:
    """2x2 mean rounded half up, pixel by pixel."""
    tile = np.zeros((14, 14), dtype=np.uint8)
    for r in range(14):
        for c in range(14):
            total = int(image[2 * r, 2 * c]) + int(image[2 * r, 2 * c + 1]) + int(image[2 * r + 1, 2 * c]) \
                + int(image[2 * r + 1, 2 * c + 1])
            tile[r, c] = (total + 2) // 4
    return tile


def members(source, part: str) -> list[int]:
    """Items whose group names include `part` (the database includes the train items)."""
    return [i for i, g in enumerate(source.groups.tolist()) if part in g.split("+")]


def generated_as(source, part: str) -> list[int]:
    """Items generated as `part` (train items are also in the database; count them once)."""
    return [i for i, g in enumerate(source.groups.tolist())
            if ("train" if "train" in g.split("+") else g) == part]


# ----------------------------------------------------------------------------- building blocks
def test_pool_tiles_is_the_rounded_2x2_mean() -> None:
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    images[0, :2, :2] = [[1, 2], [2, 1]]  # mean 1.5 rounds up to 2
    pooled = pool_tiles(images)
    for n in range(3):
        assert np.array_equal(pooled[n], literal_tile(images[n]))
    assert pooled[0, 0, 0] == 2


def test_label_count_histogram_by_hand() -> None:
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [1, 1, 1], [0, 0, 1]], dtype=np.uint8)
    assert label_count_histogram(labels) == {1: 2, 2: 2, 3: 1}


# ----------------------------------------------------------------------------- mosaics
def test_mosaic_items_labels_and_tiles_match_their_sources(fake) -> None:
    source = open_dataset(multi_card(), fake["root"])
    assert source.multi_label and source.images.shape == (sum(MOSAICS.values()), 1, 28, 28)
    images = source.images[:, 0].numpy()
    offsets = [(0, 0), (0, 14), (14, 0), (14, 14)]
    for i in range(len(source)):
        expected_labels = set()
        for slot, (r, c) in enumerate(offsets):
            region = images[i, r:r + 14, c:c + 14]
            origin = int(source.provenance[i, slot])
            if origin < 0:
                assert not region.any(), f"blank slot {slot} of item {i} is not blank"
            else:
                assert np.array_equal(region, literal_tile(fake["images"][origin]))
                expected_labels.add(int(fake["labels"][origin]))
        assert set(np.flatnonzero(source.labels[i]).tolist()) == expected_labels
        assert 1 <= (source.provenance[i] >= 0).sum() <= 4


def test_mosaic_item_counts_are_spread_evenly(fake) -> None:
    source = open_dataset(multi_card(), fake["root"])
    for part in PARTS:
        rows = generated_as(source, part)
        counts = [int((source.provenance[i] >= 0).sum()) for i in rows]
        per_count = [counts.count(k) for k in (1, 2, 3, 4)]
        assert max(per_count) - min(per_count) <= 1, (part, per_count)
    restricted = open_dataset(multi_card(items=[2, 3]), fake["root"])
    assert set((restricted.provenance >= 0).sum(axis=1).tolist()) == {2, 3}


def test_mosaic_parts_never_share_a_source_image(fake) -> None:
    source = open_dataset(multi_card(), fake["root"])
    used = {}
    for part in PARTS:
        rows = generated_as(source, part)
        used[part] = [int(x) for i in rows for x in source.provenance[i] if x >= 0]
        assert len(set(used[part])) == len(used[part]), f"{part} reuses a source image"
    assert all(x >= N_TRAIN for x in used["query"]), "query mosaics must use only test images"
    for part in PARTS[1:]:
        assert all(x < N_TRAIN for x in used[part]), f"{part} mosaics must use only training images"
    for a in PARTS:
        for b in PARTS:
            if a < b:
                assert not set(used[a]) & set(used[b]), f"{a} and {b} share source images"
    assert sorted(members(source, "database")) == sorted(
        [i for i, g in enumerate(source.groups.tolist()) if g in ("database", "database+train")])


def test_mosaics_are_deterministic_cached_and_keyed_by_parameters(fake, tmp_path, monkeypatch) -> None:
    first = open_dataset(multi_card(), fake["root"])
    assert first.generation_seconds is not None
    again = open_dataset(multi_card(), fake["root"])
    assert again.generation_seconds is None, "the second open must come from the cache"
    assert again.cache_path == first.cache_path and again.identity == first.identity
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "other-cache"))
    fresh = open_dataset(multi_card(), fake["root"])
    assert fresh.generation_seconds is not None
    assert np.array_equal(fresh.images.numpy(), first.images.numpy())
    assert np.array_equal(fresh.labels, first.labels) and fresh.digest == first.digest
    reseeded = open_dataset(multi_card(seed=1), fake["root"])
    resized = open_dataset(multi_card(mosaics={**MOSAICS, "train": 25}), fake["root"])
    digests = {first.digest, reseeded.digest, resized.digest}
    paths = {first.cache_path, reseeded.cache_path, resized.cache_path}
    assert len(digests) == 3 and len(paths) == 3
    assert not np.array_equal(reseeded.provenance, first.provenance)


def test_identity_holds_construction_source_hashes_and_digest(fake) -> None:
    source = open_dataset(multi_card(), fake["root"])
    identity = json.loads(source.identity)
    assert identity["params"]["mosaics"] == MOSAICS and identity["params"]["seed"] == 0
    assert identity["params"]["items"] == [1, 4] and identity["params"]["tile"] == 14
    sha = hashlib.sha256()  # the documented digest: images, labels, provenance, groups by line
    for key, array in (("images", source.images[:, 0].numpy()), ("labels", source.labels),
                       ("provenance", source.provenance)):
        sha.update(key.encode() + np.ascontiguousarray(array).tobytes())
    sha.update("\n".join(source.groups.tolist()).encode())
    assert identity["digest"] == sha.hexdigest() == source.digest
    on_disk = hashlib.sha256((fake["root"] / "train-images-idx3-ubyte.gz").read_bytes()).hexdigest()
    assert identity["source"]["sha256"]["train-images-idx3-ubyte.gz"] == on_disk


def test_a_corrupt_cache_is_regenerated(fake, capsys) -> None:
    first = open_dataset(multi_card(), fake["root"])
    first.cache_path.write_bytes(b"not an npz file")
    again = open_dataset(multi_card(), fake["root"])
    assert again.generation_seconds is not None and again.digest == first.digest
    assert "regenerating" in capsys.readouterr().err


def test_too_few_source_images_and_bad_options_are_refused(fake) -> None:
    with pytest.raises(UserError, match="needs .* source images, the Fashion-MNIST files hold 200"):
        open_dataset(multi_card(mosaics={**MOSAICS, "query": 100}), fake["root"])
    with pytest.raises(UserError, match="unknown option 'tiles'"):
        open_dataset(multi_card(tiles=3), fake["root"])
    with pytest.raises(UserError, match=r"options.items = \[0, 4\]"):
        open_dataset(multi_card(items=[0, 4]), fake["root"])
    with pytest.raises(UserError, match="options.mosaics.train = -1"):
        open_dataset(multi_card(mosaics={**MOSAICS, "train": -1}), fake["root"])


def test_cache_inside_results_is_refused(fake, monkeypatch) -> None:
    from bench.data.loading import REPO_ROOT

    monkeypatch.setenv("BENCH_CACHE", str(REPO_ROOT / "results" / "cache"))
    with pytest.raises(UserError, match="must not go into results"):
        open_dataset(multi_card(), fake["root"])


# ----------------------------------------------------------------------------- pairs
def test_pair_class_is_ten_times_left_plus_right(fake) -> None:
    source = open_dataset(pairs_card(), fake["root"])
    assert not source.multi_label and source.labels.shape == (100 * sum(PAIRS.values()), 100)
    images = source.images[:, 0].numpy()
    for i in range(len(source)):
        left, right = (int(x) for x in source.provenance[i])
        expected = 10 * int(fake["labels"][left]) + int(fake["labels"][right])
        assert source.labels[i].sum() == 1 and int(source.labels[i].argmax()) == expected
        assert np.array_equal(images[i, 7:21, 0:14], literal_tile(fake["images"][left]))
        assert np.array_equal(images[i, 7:21, 14:28], literal_tile(fake["images"][right]))
        assert not images[i, :7].any() and not images[i, 21:].any()
    card = load_card("fashion-mnist-pairs")
    assert card.class_names[10 * 7 + 3] == "Sneaker | Dress" and len(card.class_names) == 100


def test_pairs_are_balanced_and_parts_disjoint(fake) -> None:
    source = open_dataset(pairs_card(), fake["root"])
    class_ids = source.labels.argmax(axis=1)
    seen: dict[str, set[int]] = {}
    for part, per_class in PAIRS.items():
        rows = generated_as(source, part)
        counts = np.bincount(class_ids[rows], minlength=100)
        assert (counts == per_class).all(), part
        seen[part] = {int(x) for i in rows for x in source.provenance[i]}
        assert len(seen[part]) == 2 * len(rows), f"{part} reuses a source image"
    assert all(x >= N_TRAIN for x in seen["query"])
    assert all(x < N_TRAIN for part in PARTS[1:] for x in seen[part])
    parts = list(seen)
    for a in range(len(parts)):
        for b in range(a + 1, len(parts)):
            assert not seen[parts[a]] & seen[parts[b]], (parts[a], parts[b])


def test_pairs_ground_truth_similarity(fake) -> None:
    card = load_card("fashion-mnist-pairs")

    def item(a: int, c: int, group_weight: float) -> float:
        if a == c:
            return 1.0
        return group_weight if (a in TOPS and c in TOPS) or (a in SHOES and c in SHOES) else 0.0

    for weight, matrix in ((0.5, card.ground_truth_similarity()), (0.0, ground_truth_similarity(card, 0.0))):
        assert matrix.shape == (100, 100)
        for a in range(10):
            for b in range(10):
                for c in range(10):
                    for d in range(10):
                        expected = (item(a, c, weight) + item(b, d, weight)) / 2
                        assert matrix[10 * a + b, 10 * c + d] == expected, (a, b, c, d)
        assert np.allclose(matrix, matrix.T) and (np.diag(matrix) == 1).all()
        assert np.linalg.eigvalsh(matrix).min() > -1e-9  # a Gram matrix, as a similarity should be
    matrix = card.ground_truth_similarity()
    assert matrix[10 * 0 + 1, 10 * 0 + 3] == 0.5  # (T-shirt, Trouser) vs (T-shirt, Dress): left shared
    assert matrix[10 * 1 + 0, 10 * 0 + 1] == 0.0  # (Trouser, T-shirt) vs (T-shirt, Trouser): order matters
    assert matrix[10 * 5 + 2, 10 * 7 + 6] == 0.5  # shoes left and tops right: 0.25 + 0.25
    assert set(np.unique(ground_truth_similarity(card, 0.0)).tolist()) == {0.0, 0.5, 1.0}
    source = open_dataset(pairs_card(), fake["root"])
    assert np.array_equal(source.ground_truth_similarity, matrix)
    record = ground_truth_record(source)
    assert record["matrix"][1][3] == 0.5 and "tops" in record["measure"]
    assert load_card("fashion-mnist").ground_truth_similarity() is None


# ----------------------------------------------------------------------------- by_group split
def test_by_group_split_selects_the_generated_parts(fake) -> None:
    card = multi_card()
    source = open_dataset(card, fake["root"])
    parts = draw_by_group(card, source)
    assert set(parts) == set(PARTS)
    for part in PARTS:
        assert parts[part].tolist() == members(source, part)
    assert len(parts["database"]) == MOSAICS["database"] + MOSAICS["train"]
    assert set(parts["train"].tolist()) <= set(parts["database"].tolist())
    for a, b in (("query", "database"), ("query", "train"), ("validation", "train"),
                 ("validation_database", "train"), ("validation_database", "validation"),
                 ("validation_database", "database")):
        assert not set(parts[a].tolist()) & set(parts[b].tolist()), (a, b)
    assert group_members(np.array(["a+b", "b", "c"]), ["a", "c"]).tolist() == [0, 2]
    bad = replace(card, split={**card.split, "validation": "nope"})
    with pytest.raises(UserError, match="split.validation = 'nope' selects no items; .*validation_database"):
        draw_by_group(bad, source)


def test_make_split_accepts_generated_cards(fake, tmp_path) -> None:
    from bench.data.splits import make_split

    card = pairs_card()
    source = open_dataset(card, fake["root"])
    split = make_split(card, source, seed=0, splits_dir=tmp_path / "splits")
    assert split.sizes() == {"query": 100, "train": 200, "validation": 100, "validation_database": 100,
                             "database": 300}


# ----------------------------------------------------------------------------- real data
@pytest.mark.skipif(not (REAL / "train-images-idx3-ubyte.gz").exists(), reason="Fashion-MNIST not installed")
def test_real_cards_sizes_and_map_at(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    monkeypatch.delenv("BENCH_DATA", raising=False)
    card = load_card("fashion-mnist-multi")
    source = open_dataset(card)
    sizes = {part: len(members(source, part)) for part in PARTS}
    assert sizes == {"query": 2000, "train": 5000, "validation": 1000, "validation_database": 5000,
                     "database": 18000}
    assert card.map_at == round(5000 / 117218 * sizes["database"])  # COCO's 5,000 of ~117,218, scaled
    histogram = part_histograms(source)["database"]
    assert set(histogram) == {1, 2, 3, 4} and sum(histogram.values()) == 18000
    used = source.provenance[source.provenance >= 0]
    assert len(used) == len(np.unique(used)) == 60000 + 5000  # every training image once, 5,000 test
    pairs = open_dataset(load_card("fashion-mnist-pairs"))
    assert len(pairs) == 32000 and np.bincount(pairs.labels.argmax(1)).tolist() == [320] * 100
