"""Splits (seeded, disjoint, hashed, tamper-evident) and run-spec resolution."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench.data import load_card, open_dataset
from bench.errors import UserError
from bench.spec import RunSpec, check_override_keys, resolve_config, run_id
from bench.splits import SPLIT_PARTS, check_split, make_split
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
             "database": np.array([2, 3, 4, 5])}
    check_split(parts, 6)
    with pytest.raises(UserError, match="query and database"):
        check_split({**parts, "database": np.array([1, 2, 3])}, 6)
    with pytest.raises(UserError, match="validation and train"):
        check_split({**parts, "validation": np.array([3])}, 6)


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
