"""Counted work (bench/training/work.py): stage counts from a record's config and split, network FLOPs
from torch's FlopCounterMode, CPU stages by formula; the work ratio that grades the cost claim."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.training.train import steps_per_epoch
from bench.training.work import WORK_VERSION, network_flops, record_work, work_of


def test_flop_counter_counts_a_linear_layer_by_hand():
    """A linear layer y = W x on a batch: forward 2*in*out FLOPs per image, backward twice that
    (the gradients of W and of x)."""
    from torch.utils.flop_counter import FlopCounterMode

    layer = nn.Linear(8, 4, bias=False)
    with FlopCounterMode(display=False) as counter:
        layer(torch.randn(2, 8, requires_grad=True)).sum().backward()
    assert counter.get_total_flops() / 2 == 3 * 2 * 8 * 4


def test_shc_and_crh_work_per_stage(make_record):
    shc = make_record("shc", 16, 0, 0.6, epochs=10)
    crh = make_record("crh", 16, 0, 0.6, epochs=10)
    w_shc, w_crh = work_of(shc), work_of(crh)
    step, forward = network_flops("small_cnn", 1, 28, 16)
    cls_step, cls_forward = network_flops("small_cnn", 1, 28, 10)
    assert step > forward > 0
    items = 5000  # the fabricated records' train split
    hash_stage = w_crh["stages"]["hash"]
    assert hash_stage["optimizer_steps"] == 10 * steps_per_epoch(items, crh["config"]["batch_size"])
    assert hash_stage["images_fwd_bwd"] == 10 * items and hash_stage["flops_step_per_image"] == step
    cls_epochs = shc["config"]["classifier_epochs"] or 10  # unset: 1:1 with the 10 stage-3 epochs
    expected = 10 * items * step + cls_epochs * items * cls_step + items * cls_forward
    assert set(w_shc["stages"]) == {"hash", "classifier", "similarity_encode", "centers"}
    assert w_shc["total_flops"] == pytest.approx(expected + w_shc["stages"]["centers"]["cpu_flops"])
    # CRH's reassignment: (2NCK + 2CMK + H C^2 M) per step, on the CPU
    used = crh["method"]["settings_used"]
    size, heads = used["codebook_size"], used["heads"]
    per_step = 2 * items * 10 * 16 + 2 * 10 * size * 16 + heads * 10**2 * size
    events = len(crh["method"]["reassignment_epochs"])
    assert w_crh["stages"]["reassignment"]["cpu_flops"] == events * per_step


def test_stored_work_is_used_and_an_unknown_card_has_none(make_record):
    record = make_record("crh", 16, 0, 0.6)
    record["work"] = {"version": WORK_VERSION, "stages": {}, "total_flops": 5.0}
    assert record_work(record)["total_flops"] == 5.0
    record["work"] = {"version": WORK_VERSION - 1, "stages": {}, "total_flops": 5.0}
    assert record_work(record)["total_flops"] != 5.0  # an older count is recomputed
    other = make_record("crh", 16, 0, 0.6, dataset="no-such-card")
    assert work_of(other) is None


def test_shc_stage_one_follows_its_record(make_record):
    """A record that says its classifier trained 7 epochs in 280 steps is counted as such,
    whatever the setting says (1:1 by default: None)."""
    shc = make_record("shc", 16, 0, 0.6, epochs=10)
    shc["method"]["classifier"] = {"epochs": 7, "steps": 280}
    stage = work_of(shc)["stages"]["classifier"]
    assert stage["optimizer_steps"] == 280 and stage["images_fwd_bwd"] == 7 * 5000
