"""Splits (seeded, disjoint, hashed, tamper-evident) and run-spec resolution."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench.data.loading import load_card, open_dataset
from bench.data.splits import SPLIT_PARTS, check_split, make_split
from bench.errors import UserError
from bench.runs.spec import RunSpec, check_override_keys, resolve_config, run_id
from methods.base import HARMONISED


@pytest.fixture(scope="module")
def synthetic():
    card = load_card("synthetic")
    return card, open_dataset(card)


def test_per_class_split_counts_and_disjointness(synthetic, tmp_path: Path) -> None:
    card, source = synthetic
    split = make_split(card, source, seed=0, splits_dir=tmp_path)
    class_ids = source.labels.argmax(1)
    assert np.bincount(class_ids[split.query]).tolist() == [20] * 6
    assert np.bincount(class_ids[split.train]).tolist() == [60] * 6
    assert np.bincount(class_ids[split.validation]).tolist() == [15] * 6
    assert set(source.groups[split.query]) == {"test"}
    assert set(source.groups[split.train]) == {"train"}
    assert not np.intersect1d(split.query, split.database).size
    assert not np.intersect1d(split.validation, split.query).size
    assert not np.intersect1d(split.validation, split.train).size
    assert len(split.database) == len(source) - len(split.query)


def test_split_is_seeded_and_saved_with_its_digest(synthetic, tmp_path: Path) -> None:
    card, source = synthetic
    a = make_split(card, source, seed=1, splits_dir=tmp_path)
    b = make_split(card, source, seed=1, splits_dir=tmp_path)
    c = make_split(card, source, seed=2, splits_dir=None)
    assert a.digest == b.digest and a.digest != c.digest
    saved = np.load(a.path)
    for part in SPLIT_PARTS:
        assert np.array_equal(saved[part], getattr(a, part))


def test_tampered_saved_split_is_refused(synthetic, tmp_path: Path) -> None:
    card, source = synthetic
    split = make_split(card, source, seed=0, splits_dir=tmp_path)
    parts = {p: getattr(split, p) for p in SPLIT_PARTS}
    parts["query"] = parts["query"][:-1]
    np.savez(split.path, **parts)
    with pytest.raises(UserError, match="does not match its digest"):
        make_split(card, source, seed=0, splits_dir=tmp_path)


def test_check_split_catches_leaks() -> None:
    parts = {"query": np.array([0, 1]), "train": np.array([2, 3]), "validation": np.array([4]),
             "validation_database": np.array([6, 7]), "database": np.array([2, 3, 4, 5, 6, 7])}
    check_split(parts, 8)
    with pytest.raises(UserError, match="query and database"):
        check_split({**parts, "database": np.array([1, 2, 3])}, 8)
    with pytest.raises(UserError, match="validation and train"):
        check_split({**parts, "validation": np.array([3])}, 8)
    for other, leak in (("train", 3), ("query", 1), ("validation", 4)):
        with pytest.raises(UserError, match=f"both validation_database and {other}"):
            check_split({**parts, "validation_database": np.array([6, leak])}, 8)
    # A v1 card has no held-out validation database: an empty part, and nothing else allowed.
    check_split({**parts, "validation_database": np.array([], dtype=np.int64)}, 8, held_out=False)
    with pytest.raises(UserError, match="validation_database' is empty"):
        check_split({**parts, "validation_database": np.array([], dtype=np.int64)}, 8)


def test_per_class_split_refuses_too_few_images(synthetic) -> None:
    card, source = synthetic
    greedy = replace(card, split={**card.split, "train": {"group": "train", "per_class": 10_000}})
    with pytest.raises(UserError, match="fewer than per_class=10000"):
        make_split(greedy, source, seed=0, splits_dir=None)


def test_config_resolution_order() -> None:
    card = load_card("synthetic")
    native = resolve_config(RunSpec("csq", "synthetic", 16), card)
    assert native["optimizer"] == "rmsprop" and native["lr"] == 1e-5  # CSQ's published settings
    assert native["epochs"] == card.schedule["epochs"]
    harmonised = resolve_config(RunSpec("csq", "synthetic", 16, protocol="harmonised"), card)
    for key, value in HARMONISED.items():
        assert harmonised[key] == value
    spec = RunSpec("csq", "synthetic", 16, overrides=(("epochs", "7"), ("lr", "0.01")))
    overridden = resolve_config(spec, card)
    assert overridden["epochs"] == 7 and overridden["lr"] == 0.01


def test_override_values_are_validated() -> None:
    card = load_card("synthetic")
    with pytest.raises(UserError, match="lr='fast' is not a valid float"):
        resolve_config(RunSpec("csq", "synthetic", 16, overrides=(("lr", "fast"),)), card)
    with pytest.raises(UserError, match="choose from adam, sgd, rmsprop"):
        resolve_config(RunSpec("csq", "synthetic", 16, overrides=(("optimizer", "lbfgs"),)), card)
    with pytest.raises(UserError, match="unknown setting 'lrr'.*valid settings:.*lr"):
        check_override_keys(["csq"], ["lrr"], "--set")


def test_run_id_changes_with_anything_that_changes_numbers() -> None:
    card = load_card("synthetic")
    base = RunSpec("csq", "synthetic", 16)
    ids = {run_id(s, resolve_config(s, card)) for s in (
        base, replace(base, seed=1), replace(base, bits=32), replace(base, protocol="harmonised"),
        replace(base, overrides=(("lambda_q", 0.5),)), replace(base, split_seed=3),
    )}
    assert len(ids) == 6
    same = replace(base, overrides=(("epochs", card.schedule["epochs"]),))
    assert run_id(same, resolve_config(same, card)) == run_id(base, resolve_config(base, card))


# ----------------------------------------------------------------------------- protocol v2: selection
def _held_out_card(card, per_class: int = 10):
    held_out = {"group": "train", "per_class": per_class}
    return replace(card, split={**card.split, "validation_database": held_out})


def _v1_card(card):
    """The card as a v1 card (no validation database), as the list-file cards still are."""
    return replace(card, split={k: v for k, v in card.split.items() if k != "validation_database"})


def test_validation_database_is_held_out_per_class_and_recorded(synthetic) -> None:
    from bench.data.splits import selection_description

    card, source = synthetic
    card = _v1_card(card)
    v1 = make_split(card, source, seed=4, splits_dir=None)
    v2 = make_split(_held_out_card(card), source, seed=4, splits_dir=None)
    vdb = v2.validation_database.tolist()
    class_ids = source.labels.argmax(1)
    counts = [0] * 6
    for i in vdb:  # a slow literal check of what the arrays hold
        assert i not in set(v2.train.tolist()) and i not in set(v2.query.tolist())
        assert i not in set(v2.validation.tolist()) and i in set(v2.database.tolist())
        assert source.groups[i] == "train"
        counts[class_ids[i]] += 1
    assert counts == [10] * 6
    # Only selection changes: the other parts are the v1 split's for the same seed.
    for part in ("query", "train", "validation", "database"):
        assert np.array_equal(getattr(v1, part), getattr(v2, part))
    assert v2.sizes() == {"query": 120, "train": 360, "validation": 90, "validation_database": 60,
                          "database": 600}
    assert v2.held_out and v2.selection_protocol.startswith("v2:") and "60 items" in v2.selection_protocol
    described = selection_description(v2)
    assert described["validation_database_size"] == 60
    disjoint = described["validation_database_disjoint_from"]
    assert disjoint == {"train": True, "query": True, "validation": True}
    assert v1.digest != v2.digest


def test_card_without_validation_database_records_v1_selection(synthetic) -> None:
    from bench.data.splits import selection_description

    card, source = synthetic
    split = make_split(_v1_card(card), source, seed=0, splits_dir=None)
    assert not split.held_out and len(split.validation_database) == 0
    described = selection_description(split)
    assert described["protocol"] == "v1: validation queries vs train set"
    assert described["validation_database_size"] == 360  # ranked against the training set
    assert described["validation_database_disjoint_from"]["train"] is False


def test_fashion_mnist_cards_hold_out_a_validation_database() -> None:
    from bench.data.splits import selection_description

    full, mini = load_card("fashion-mnist"), load_card("fashion-mnist-mini")
    assert full.split["validation_database"] == {"group": "train", "per_class": 500}
    try:
        source = open_dataset(mini)
    except UserError:
        pytest.skip("Fashion-MNIST files are not installed")
    split = make_split(mini, source, seed=0, splits_dir=None)
    assert np.bincount(source.labels.argmax(1)[split.validation_database]).tolist() == [150] * 10
    assert all(selection_description(split)["validation_database_disjoint_from"].values())


def test_by_group_split_takes_parts_from_groups(tmp_path: Path) -> None:
    from bench.data.loading import TensorSource, one_hot

    names = ["query", "database+train", "database+train", "validation", "validation_database",
             "database", "database", "validation_database", "query", "validation"]
    class_ids = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])
    source = TensorSource(np.zeros((10, 1, 4, 4), np.uint8), one_hot(class_ids, 2), np.array(names),
                          False, identity="test")
    card = replace(load_card("synthetic"), name="groups", num_classes=2,
                   split={"protocol": "by_group", "query": "query", "train": "train",
                          "validation": "validation", "validation_database": "validation_database",
                          "database": ["database"]})
    split = make_split(card, source, seed=0, splits_dir=tmp_path)
    assert split.query.tolist() == [0, 8] and split.train.tolist() == [1, 2]
    assert split.validation.tolist() == [3, 9] and split.validation_database.tolist() == [4, 7]
    assert split.database.tolist() == [1, 2, 5, 6] and split.held_out


# ----------------------------------------------------------------------------- protocol v2: identity
def _list_card(root: Path, rows: dict[str, list[str]]):
    from bench.data.loading import DatasetCard

    for name, lines in rows.items():
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return DatasetCard(name="lists", title="lists", loader="list_file", num_classes=2, multi_label=True,
                       map_at=None, backbone="tiny_cnn", image_size=8, channels=3,
                       split={"protocol": "lists", "lists": {n: f"{n}.txt" for n in rows},
                              "validation": {"from": "database", "count": 1}},
                       schedule={}, search_paths=(str(root),), path=str(root / "card.yaml"))


def test_two_different_list_files_of_the_same_sizes_get_different_digests(tmp_path: Path) -> None:
    rows = {"query": ["q0.jpg 1 0", "q1.jpg 0 1"], "train": ["t0.jpg 1 0", "t1.jpg 0 1"],
            "database": ["d0.jpg 1 0", "d1.jpg 0 1", "d2.jpg 1 1"]}
    other = {**rows, "train": ["t0.jpg 0 1", "t1.jpg 1 0"]}  # same sizes, other labels
    renamed = {**rows, "database": ["e0.jpg 1 0", "d1.jpg 0 1", "d2.jpg 1 1"]}  # other image
    digests = []
    for i, content in enumerate((rows, other, renamed, rows)):
        root = tmp_path / f"copy{i}"
        root.mkdir()
        card = _list_card(root, content)
        split = make_split(card, open_dataset(card, root), seed=0, splits_dir=None)
        digests.append(split.digest)
        assert split.sizes()["train"] == 2 and split.sizes()["database"] == 3
    assert len(set(digests[:3])) == 3
    assert digests[3] == digests[0]  # the same lists in another folder: the same data


def test_in_memory_data_content_enters_the_digest(synthetic) -> None:
    card, source = synthetic
    noisier = replace(card, options={**card.options, "noise": 0.36})
    a = make_split(card, source, seed=0, splits_dir=None)
    b = make_split(noisier, open_dataset(noisier), seed=0, splits_dir=None)
    assert np.array_equal(a.train, b.train) and a.digest != b.digest


def test_run_id_covers_results_version_and_backbone_architecture(monkeypatch) -> None:
    import bench.network.backbones
    import bench.runs.spec
    from bench.runs.identity import architecture_fingerprint as backbone_architecture

    card = load_card("synthetic")
    spec = RunSpec("csq", "synthetic", 16, protocol="harmonised")
    config = resolve_config(spec, card)
    base = run_id(spec, config, card)
    assert run_id(spec, config, replace(card, backbone="small_cnn")) != base
    monkeypatch.setattr(bench.runs.spec, "RESULTS_VERSION", bench.runs.spec.RESULTS_VERSION + 1)
    assert run_id(spec, config, card) != base
    monkeypatch.undo()
    assert run_id(spec, config, card) == base
    # The same name with another architecture (a width edited in backbones.py) is another run.
    backbone_architecture.cache_clear()
    def narrower(self, channels: int) -> None:  # same class name, another width
        bench.network.backbones.SmallCNN.__init__(self, channels, width=4, feature_dim=32)

    monkeypatch.setattr(bench.network.backbones.TinyCNN, "__init__", narrower)
    try:
        assert run_id(spec, config, card) != base
    finally:
        monkeypatch.undo()
        backbone_architecture.cache_clear()


# ----------------------------------------------------------------------------- protocol v2: tuned
TUNED = ("dataset: synthetic\nmethods:\n  csq:\n    values: {lr: 0.0005, lambda_q: 0.01}\n"
         "    bits: 16\n    epochs: 4\n    date: '%s'\n")


def test_tuned_protocol_applies_committed_values_and_names_the_file(tmp_path, monkeypatch) -> None:
    import hashlib

    monkeypatch.setenv("BENCH_TUNED_DIR", str(tmp_path))
    card = load_card("synthetic")
    spec = RunSpec("csq", "synthetic", 16, protocol="tuned")
    with pytest.raises(UserError, match="no tuned values for method 'csq' on dataset 'synthetic'"):
        resolve_config(spec, card)
    setting = tmp_path / "synthetic.yaml"
    setting.write_text(TUNED % "2026-01-01")
    config = resolve_config(spec, card)
    assert config["lr"] == 0.0005 and config["lambda_q"] == 0.01
    assert config["optimizer"] == HARMONISED["optimizer"] and config["lr_min"] == HARMONISED["lr_min"]
    assert config["tuned_setting"]["file"] == str(setting)
    assert config["tuned_setting"]["sha256"] == hashlib.sha256(setting.read_bytes()).hexdigest()
    first = run_id(spec, config, card)
    setting.write_text(TUNED % "2026-02-02")  # provenance changed, values did not
    again = resolve_config(spec, card)
    assert again["tuned_setting"]["sha256"] != config["tuned_setting"]["sha256"]
    assert run_id(spec, again, card) == first
    setting.write_text((TUNED % "x").replace("0.0005", "0.0006"))
    assert run_id(spec, resolve_config(spec, card), card) != first
    with pytest.raises(UserError, match="no tuned values for method 'crh'.*tuned methods: csq"):
        resolve_config(RunSpec("crh", "synthetic", 16, protocol="tuned"), card)


def test_default_protocol_is_the_cards_fair_choice(tmp_path, monkeypatch) -> None:
    from bench.runs.spec import default_protocol

    monkeypatch.setenv("BENCH_TUNED_DIR", str(tmp_path))
    assert default_protocol(load_card("fashion-mnist"), ["crh", "csq"])[0] == "harmonised"
    assert default_protocol(load_card("fashion-mnist-mini"), ["crh"])[0] == "harmonised"
    assert default_protocol(load_card("synthetic"), ["crh"])[0] == "harmonised"  # small CNN, from scratch
    assert default_protocol(load_card("ms-coco"), ["crh"])[0] == "native"  # pretrained ResNet-34
    (tmp_path / "synthetic.yaml").write_text(TUNED % "2026-01-01")
    assert default_protocol(load_card("synthetic"), ["csq"])[0] == "tuned"
    # A table never mixes tuned and untuned methods.
    assert default_protocol(load_card("synthetic"), ["crh", "csq"])[0] == "harmonised"
