"""The many-class synthetic cards (196 and 555 classes): they load, split per class with a
held-out validation database, and stay small enough for smoke runs."""

from __future__ import annotations

import numpy as np
import pytest

from bench.data.loading import load_card, open_dataset
from bench.data.splits import make_split


@pytest.mark.parametrize("classes", [196, 555])
def test_many_class_synthetic_card_splits_per_class(classes: int) -> None:
    card = load_card(f"synthetic-{classes}")
    assert card.num_classes == classes and not card.multi_label
    source = open_dataset(card)
    assert len(source) == 40 * classes and source.images.shape[1:] == (1, 12, 12)
    split = make_split(card, source, seed=0, splits_dir=None)
    per_class = {part: np.bincount(source.labels[getattr(split, part)].argmax(1), minlength=classes)
                 for part in ("query", "train", "validation", "validation_database")}
    expected = {"query": 8, "train": 20, "validation": 4, "validation_database": 4}
    for part, count in expected.items():
        assert (per_class[part] == count).all(), part
    assert len(split.database) == (40 - 8) * classes  # all_but_query
    held_out = set(split.validation_database.tolist())
    for part in ("train", "query", "validation"):
        assert not held_out & set(getattr(split, part).tolist()), part
    assert classes > 2 * 64  # more classes than 2K even at 64 bits: Hadamard centers run out
