"""The protocol's promises, checked on real runs of the training loop with spies on what it
encodes, scores and steps, never by reading the loop's code:

- the query set is encoded and scored once, after training, against the split's database;
  training batches come from the training split and model selection ranks the validation
  queries against the validation database (or the training set on v1 cards);
- the query metrics are a fresh evaluation of the selected (best-validation) checkpoint, in a
  run whose best epoch is not its last;
- query and database are disjoint, and the recorded database size and k are the card's;
- the learning rate of every optimizer step follows the configured schedule (formulas
  written out here);
- a record reaches disk through a synced temporary file and a rename.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import bench.evaluation.retrieval
import bench.runs.records
import bench.training.train
from bench.data.loading import FASHION_MNIST_FILES, load_card, open_dataset
from bench.data.splits import make_split
from bench.errors import UserError
from bench.evaluation.retrieval import evaluate_retrieval
from bench.runs.spec import RunSpec
from bench.training.train import train_and_evaluate
from methods import available_methods, get_method

PARTS = ("query", "database", "validation", "validation_database", "train")


@dataclasses.dataclass
class Trace:
    """What a run did, in order: every encode, evaluation, training pass and optimizer step."""

    split: Any = None
    source: Any = None
    card: Any = None
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    snapshots: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    optimizer_built: bool = False
    outputs: list[tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=list)

    def parts_of(self, indices: np.ndarray) -> tuple[str, ...]:
        """The split parts whose concatenation `indices` is, in order (the loop may encode
        several parts in one call), or ("other",)."""
        indices = np.asarray(indices)
        found: list[str] = []
        position = 0
        while position < len(indices):
            for name in PARTS:
                part = getattr(self.split, name)
                end = position + len(part)
                if len(part) and end <= len(indices) and np.array_equal(indices[position:end], part):
                    found.append(name)
                    position = end
                    break
            else:
                return ("other",)
        return tuple(found)

    def origin(self, codes: Any, labels: Any) -> str:
        """Which split parts a code matrix handed to the evaluator encodes: found through the
        `encode` output it is (a view of), else by its labels."""
        codes = np.asarray(codes)
        for output, indices in self.outputs:
            if codes.size and np.shares_memory(codes, output):
                start = (codes.__array_interface__["data"][0] - output.__array_interface__["data"][0])
                start //= output.strides[0]
                return "+".join(self.parts_of(indices[start:start + len(codes)]))
        labels = np.asarray(labels)
        for name in PARTS:
            if np.array_equal(labels, np.asarray(self.source.labels[getattr(self.split, name)])):
                return name
        return "other"

    def of(self, kind: str) -> list[tuple[int, dict[str, Any]]]:
        return [(i, e) for i, e in enumerate(self.events) if e["kind"] == kind]


def install_spies(monkeypatch: pytest.MonkeyPatch, fake_validation: list[float] | None = None,
                  card_changes: dict[str, Any] | None = None) -> Trace:
    """Wrap the loop's collaborators (as `bench.training.train` names them) so that every call is
    logged; `fake_validation` replaces the validation mAP of successive validations, so that
    any epoch can be made the best; `card_changes` edits the dataset card the run sees."""
    trace = Trace()
    real = {name: getattr(bench.training.train, name) for name in
            ("make_split", "load_card", "encode", "evaluate_retrieval", "iterate_batches",
             "build_optimizer")}
    fakes = list(fake_validation or [])

    def load_card_spy(*args: Any, **kwargs: Any):
        card = real["load_card"](*args, **kwargs)
        trace.card = dataclasses.replace(card, **card_changes) if card_changes else card
        return trace.card

    def make_split_spy(card: Any, source: Any, *args: Any, **kwargs: Any):
        trace.split = real["make_split"](card, source, *args, **kwargs)
        trace.source = source
        return trace.split

    def iterate_spy(source: Any, indices: np.ndarray, batch_size: int, train: bool, *args: Any,
                    **kwargs: Any):
        if train:
            trace.events.append({"kind": "train_pass", "indices": np.array(indices, copy=True),
                                 "loop": trace.optimizer_built})
        return real["iterate_batches"](source, indices, batch_size, train, *args, **kwargs)

    def encode_spy(model: Any, source: Any, indices: np.ndarray, *args: Any, **kwargs: Any):
        parts = trace.parts_of(np.asarray(indices))
        trace.source = source  # the source the loop encodes from (a document card's per-split vectors)
        event = {"kind": "encode", "parts": parts, "indices": np.array(indices, copy=True),
                 "features": bool(kwargs.get("features", False))}
        trace.events.append(event)
        if parts[0] == "validation" and not event["features"]:
            trace.snapshots.append({"model": copy.deepcopy(model),
                                    "method": copy.deepcopy(kwargs.get("method")),
                                    "options": {k: kwargs[k] for k in ("numerics",) if k in kwargs}})
        output = real["encode"](model, source, indices, *args, **kwargs)
        trace.outputs.append((output, event["indices"]))
        return output

    def evaluate_spy(query_codes: Any, db_codes: Any, query_labels: Any, db_labels: Any,
                     *args: Any, **kwargs: Any):
        result = real["evaluate_retrieval"](query_codes, db_codes, query_labels, db_labels, *args, **kwargs)
        event = {"kind": "evaluate", "query": trace.origin(query_codes, query_labels),
                 "db": trace.origin(db_codes, db_labels), "num_db": len(db_codes),
                 "topk": kwargs.get("topk", args[0] if args else None)}
        trace.events.append(event)
        if event["query"] == "validation" and fakes:
            result = {**result, "mAP": fakes.pop(0)}
        return result

    def build_optimizer_spy(*args: Any, **kwargs: Any):
        optimizer = real["build_optimizer"](*args, **kwargs)
        trace.optimizer_built = True

        def log_step(opt: torch.optim.Optimizer, *_: Any) -> None:
            trace.events.append({"kind": "step", "lrs": [group["lr"] for group in opt.param_groups]})

        optimizer.register_step_pre_hook(log_step)
        return optimizer

    for name, spy in (("load_card", load_card_spy), ("make_split", make_split_spy),
                      ("iterate_batches", iterate_spy), ("encode", encode_spy),
                      ("evaluate_retrieval", evaluate_spy), ("build_optimizer", build_optimizer_spy)):
        monkeypatch.setattr(bench.training.train, name, spy)
    return trace


def run(tmp_path: Path, method: str = "csq", dataset: str = "synthetic", bits: int = 16,
        **overrides: Any) -> dict[str, Any]:
    spec = RunSpec(method, dataset, bits, protocol="harmonised", overrides=tuple(sorted(overrides.items())))
    return train_and_evaluate(spec, results_dir=tmp_path, device="cpu", progress_bars=False)


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> None:
    """Every run here is tiny: one torch thread keeps a shared 2-core machine fast."""


# ----------------------------------------------------------------------------- query set
@pytest.mark.parametrize("method", available_methods())
def test_query_set_is_encoded_and_scored_once_after_training(method: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    trace = install_spies(monkeypatch)
    record = run(tmp_path, method, get_method(method).example_dataset(), epochs=3, eval_every=1)
    split = trace.split
    assert np.intersect1d(split.query, split.database).size == 0

    touching = [i for i, e in trace.of("encode") if np.intersect1d(e["indices"], split.query).size]
    assert len(touching) == 1, "the query set must be encoded exactly once"
    query_encode = trace.events[touching[0]]
    # On its own, or in one call with the database.
    assert query_encode["parts"] in (("query",), ("query", "database")), query_encode["parts"]
    assert not query_encode["features"]

    evaluations = trace.of("evaluate")
    *selection, (final_at, final) = evaluations
    assert (final["query"], final["db"]) == ("query", "database")
    assert final["num_db"] == len(split.database)
    reference = "validation_database" if split.held_out else "train"
    trains = get_method(method).trains
    assert len(selection) == (3 if trains else 1)  # eval_every=1: one per epoch; fitted: once
    for _, event in selection:
        assert event["query"] == "validation" and event["db"] in (reference, "validation_database")
    # Everything that trains or selects happens before the query set is first touched.
    last_training = max((i for i, e in enumerate(trace.events) if e["kind"] in ("step", "train_pass")),
                        default=-1)
    assert selection[-1][0] < touching[0] and last_training < touching[0] < final_at
    database_encodes = [i for i, e in trace.of("encode") if "database" in e["parts"]]
    assert database_encodes and min(database_encodes) > selection[-1][0]
    for _, event in trace.of("train_pass"):
        assert np.isin(event["indices"], split.train).all()
        if event["loop"]:
            assert np.array_equal(np.sort(event["indices"]), np.sort(split.train))
    assert record["metrics"]["num_queries"] == len(split.query)


_REAL_ENCODE = bench.training.train.encode


def fresh_metrics(trace: Trace, snapshot: dict[str, Any]) -> dict[str, Any]:
    """Encode query and database with a saved model (and its method) and score them."""
    split, source = trace.split, trace.source
    device = torch.device("cpu")
    encoder = _REAL_ENCODE  # the loop's own encoder, unspied
    options = {"method": snapshot["method"], **snapshot["options"]}  # the run's own numerics
    query = encoder(snapshot["model"], source, split.query, device, **options)
    database = encoder(snapshot["model"], source, split.database, device, **options)
    return evaluate_retrieval(query, database, source.labels[split.query], source.labels[split.database],
                              topk=trace.card.map_at, per_query=True)


def selectable_from(cls: Any, record: dict[str, Any]) -> int:
    """The method's own first selectable epoch for the run's configuration (from a fresh
    instance, not from the loop under test)."""
    from methods.base import Task

    spec = record["spec"]
    task = Task(bits=spec["bits"], num_classes=record["task"]["num_classes"],
                multi_label=record["task"]["multi_label"], seed=spec["seed"],
                epochs=int(record["config"]["epochs"]), device=torch.device("cpu"))
    return int(cls(record["config"], task).selectable_from())


# Settings under which a method's codes still change from epoch 2 to 3 (the test needs that):
# LBHash's codes collapse to one sign pattern in 3 steps per epoch (see
# test_methods_end_to_end.LEARNING_RATE); 12 steps per epoch keep them moving.
MOVING_WEIGHTS = {"lbhash": {"batch_size": 32}}


@pytest.mark.parametrize("method", available_methods())
def test_query_metrics_are_those_of_the_restored_best_checkpoint(method: str, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Validation says epoch 2 of 3 is best; a high constant learning rate makes sure epoch 3's
    # weights (and so its query metrics) differ from epoch 2's.
    trace = install_spies(monkeypatch, fake_validation=[0.5, 0.9, 0.3])
    record = run(tmp_path, method, get_method(method).example_dataset(), epochs=3, eval_every=1,
                 lr=0.01, lr_schedule="constant",
                 **MOVING_WEIGHTS.get(method, {}))
    cls = get_method(method)
    if not cls.trains:  # fitted in setup: scored once, selected as fitted (epoch 0)
        assert record["selection"]["best_epoch"] == 0 and record["history"] == []
        assert len(trace.snapshots) == 1
        assert record["metrics"]["per_query_ap"] == [
            round(v, 6) for v in fresh_metrics(trace, trace.snapshots[0])["ap_per_query"]]
        return
    assert [h.get("val_mAP") for h in record["history"]] == [0.5, 0.9, 0.3]
    assert len(trace.snapshots) == 3
    if not cls.supervised:  # validation mAP needs labels: the last epoch, whatever it says
        assert record["selection"]["best_epoch"] == 3 and record["selection"]["best_val_mAP"] == 0.3
        best, last = fresh_metrics(trace, trace.snapshots[2]), fresh_metrics(trace, trace.snapshots[1])
    elif selectable_from(cls, record) == 3:  # CgAT at 3 epochs: only its adversarial epoch 3
        assert record["selection"]["best_epoch"] == 3 and record["selection"]["best_val_mAP"] == 0.3
        best, last = fresh_metrics(trace, trace.snapshots[2]), fresh_metrics(trace, trace.snapshots[1])
    else:
        assert selectable_from(cls, record) == 1
        assert record["selection"]["best_epoch"] == 2 and record["selection"]["best_val_mAP"] == 0.9
        best = fresh_metrics(trace, trace.snapshots[1])
        last = fresh_metrics(trace, trace.snapshots[2])
    metrics = record["metrics"]
    assert metrics["mAP"] == best["mAP"] and metrics["mAP_tie_aware"] == best["mAP_tie_aware"]
    assert metrics["precision_at_radius"] == best["precision_at_radius"]
    assert metrics["per_query_ap"] == [round(v, 6) for v in best["ap_per_query"]]
    # The test has teeth: the other checkpoint (the last, or for last-epoch selection the best
    # by validation) scores differently.
    assert last["ap_per_query"] != best["ap_per_query"]
    centers = trace.snapshots[1]["method"].class_centers()
    if centers is not None:
        assert record["centers"] == centers.to(torch.int8).tolist()


# ----------------------------------------------------------------------------- split and k
def card_is_loadable(name: str) -> bool:
    card = load_card(name)
    if card.loader == "synthetic":
        return True
    if card.loader != "fashion_mnist":
        return False  # list-file and mosaic cards: data not here, or slow to build
    folders = [Path(p) for p in card.search_paths] + [Path(os.environ.get("BENCH_DATA", "/nonexistent"))]
    return any((folder / f"{stem}.gz").exists() or (folder / stem).exists()
               for folder in folders for stem in FASHION_MNIST_FILES.values())


@pytest.mark.parametrize("name", ["synthetic", "synthetic-196", "synthetic-555", "fashion-mnist-mini",
                                  "fashion-mnist"])
def test_query_and_database_are_disjoint_as_the_card_says(name: str) -> None:
    try:
        available = card_is_loadable(name)
    except UserError:
        pytest.skip(f"no card {name}")
    if not available:
        pytest.skip(f"{name}: data not on this machine")
    card = load_card(name)
    source = open_dataset(card)
    split = make_split(card, source, 0, None)
    assert np.intersect1d(split.query, split.database).size == 0
    assert np.intersect1d(split.query, split.train).size == 0
    assert np.intersect1d(split.validation, split.query).size == 0
    rule = card.split.get("database", "all_but_query")
    if rule == "all_but_query":
        assert np.array_equal(split.database, np.setdiff1d(np.arange(len(source)), split.query))
    elif isinstance(rule, dict) and "per_class" in rule:
        assert np.isin(split.train, split.database).all()
        classes = source.labels[split.database].argmax(axis=1)
        assert np.bincount(classes, minlength=card.num_classes).min() >= int(rule["per_class"])
    if card.split.get("validation_database") is not None:
        for part in (split.train, split.query, split.validation):
            assert np.intersect1d(split.validation_database, part).size == 0


def test_recorded_database_size_and_k_are_the_cards(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = install_spies(monkeypatch)
    record = run(tmp_path, epochs=1)
    card = load_card("synthetic")  # per_class images per class, query drawn per class
    total = card.num_classes * int(card.options["per_class"])
    expected_db = total - card.num_classes * int(card.split["query"]["per_class"])
    assert card.split["database"] == "all_but_query" and card.map_at is None  # mAP@all
    metrics = record["metrics"]
    assert metrics["num_db"] == record["split"]["sizes"]["database"] == len(trace.split.database)
    assert metrics["num_db"] == expected_db
    assert metrics["topk"] == "all" and metrics["topk_effective"] == expected_db
    assert metrics["num_queries"] == card.num_classes * int(card.split["query"]["per_class"])
    assert trace.of("evaluate")[-1][1]["topk"] is None


def test_a_card_with_map_at_k_is_scored_at_k(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trace = install_spies(monkeypatch, card_changes={"map_at": 100})
    record = run(tmp_path, epochs=1)
    metrics = record["metrics"]
    assert metrics["topk"] == 100 and metrics["topk_effective"] == 100
    assert trace.of("evaluate")[-1][1]["topk"] == 100
    # Selection scales k to the validation reference's size, as the card's k is to the database's.
    first_validation = trace.of("evaluate")[0][1]
    assert first_validation["query"] == "validation"
    reference = first_validation["num_db"]  # validation database (v2 card) or training set (v1)
    expected = max(1, round(100 * reference / len(trace.split.database)))
    assert record["selection"]["topk"] == first_validation["topk"] == expected


# ----------------------------------------------------------------------------- ties
def stable_ap_reference(query: np.ndarray, database: np.ndarray, q_label: int, db_labels: np.ndarray,
                        k: int) -> float:
    """Literal: rank by (Hamming distance, database index), AP over the relevant items in the
    top k (hashing convention: divided by the relevant items retrieved)."""
    distances = [int((query != row).sum()) for row in database]
    ranking = sorted(range(len(database)), key=lambda j: (distances[j], j))[:k]
    hits, total = 0, 0.0
    for rank, j in enumerate(ranking, start=1):
        if db_labels[j] == q_label:
            hits += 1
            total += hits / rank
    return total / hits if hits else 0.0


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_ties_are_broken_by_database_index_as_records_say(backend: str) -> None:
    if backend == "numba" and not bench.evaluation.retrieval.HAVE_NUMBA:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(7)
    queries = np.where(rng.random((6, 4)) < 0.5, 1, -1)  # 4 bits: hundreds of tied items
    database = np.where(rng.random((400, 4)) < 0.5, 1, -1)
    q_labels, db_labels = rng.integers(0, 3, 6), rng.integers(0, 3, 400)
    for k in (None, 37):
        out = evaluate_retrieval(queries, database, q_labels, db_labels, topk=k, backend=backend,
                                 per_query=True)
        assert out["tie_order"] == "database index (stable)"
        expected = [stable_ap_reference(queries[i], database, q_labels[i], db_labels, k or 400)
                    for i in range(6)]
        assert out["ap_per_query"] == pytest.approx(expected, abs=1e-12)


# ----------------------------------------------------------------------------- schedule
def expected_lr(schedule: str, base: float, epoch: int, epochs: int, lr_min: float = 0.0,
                step_at: float = 0.5, gamma: float = 0.1) -> float:
    """The learning rate during 0-based `epoch` (after `epoch` scheduler steps)."""
    if schedule == "cosine":
        floor = min(lr_min, base)
        return floor + (base - floor) * (1 + math.cos(math.pi * epoch / epochs)) / 2
    if schedule == "step":
        every = max(1, round(epochs * step_at))
        return base * gamma ** (epoch // every)
    return base


@pytest.mark.parametrize("schedule, extra", [
    ("cosine", {"lr_min": 1e-4}),
    ("step", {"lr_step_at": 0.4, "lr_gamma": 0.5}),
    ("constant", {}),
])
def test_every_step_uses_the_scheduled_learning_rate(schedule: str, extra: dict, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    trace = install_spies(monkeypatch)
    epochs, lr, scale = 5, 2e-3, 0.5
    record = run(tmp_path, "crh", epochs=epochs, eval_every=5, lr=lr, lr_schedule=schedule,
                 backbone_lr_scale=scale, **extra)
    options = {"lr_min": extra.get("lr_min", 0.0), "step_at": extra.get("lr_step_at", 0.5),
               "gamma": extra.get("lr_gamma", 0.1)}
    epoch = -1
    steps_seen = 0
    for event in trace.events:
        if event["kind"] == "train_pass" and event["loop"]:
            epoch += 1
        if event["kind"] != "step":
            continue
        steps_seen += 1
        hash_layer, backbone = event["lrs"][-1], event["lrs"][0]
        assert hash_layer == pytest.approx(expected_lr(schedule, lr, epoch, epochs, **options), rel=1e-9)
        assert backbone == pytest.approx(expected_lr(schedule, lr * scale, epoch, epochs, **options),
                                         rel=1e-9)
    assert epoch == epochs - 1 and steps_seen >= epochs
    history = [entry["lr"] for entry in record["history"]]
    assert history == pytest.approx([expected_lr(schedule, lr, e + 1, epochs, **options)
                                     for e in range(epochs)], rel=1e-9)
    if schedule != "constant":
        assert history[-1] < lr * 0.9  # the schedule moved the rate


# ----------------------------------------------------------------------------- records
def test_a_record_is_written_through_a_synced_temporary_file_and_a_rename(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "runs" / "r.json"
    bench.runs.records.write_json_atomic(target, {"status": "old"})
    calls: list[tuple[str, Any]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync_spy(fd: int) -> None:
        try:
            calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        except OSError:
            calls.append(("fsync", fd))
        real_fsync(fd)

    def replace_spy(source: Any, destination: Any) -> None:
        # Before the rename, readers still see the old, whole file.
        assert Path(destination).read_text().strip().startswith("{")
        assert "old" in Path(destination).read_text()
        calls.append(("replace", (str(source), str(destination))))
        real_replace(source, destination)

    monkeypatch.setattr(bench.runs.records.os, "fsync", fsync_spy)
    monkeypatch.setattr(bench.runs.records.os, "replace", replace_spy)
    bench.runs.records.write_json_atomic(target, {"status": "new", "values": list(range(1000))})
    renames = [value for kind, value in calls if kind == "replace"]
    assert len(renames) == 1, calls
    temporary, destination = renames[0]
    assert destination == str(target) and Path(temporary).parent == target.parent
    synced = [value for kind, value in calls[: calls.index(("replace", renames[0]))] if kind == "fsync"]
    assert str(temporary) in [str(v) for v in synced], "the temporary file is synced before the rename"
    assert '"new"' in target.read_text()
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]
