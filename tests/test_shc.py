"""SHC: similarity construction vs a literal loop, d_min = the Gilbert-Varshamov target d*, the MDS
start, stage-2 center optimisation (the incremental search against a literal recomputing one, a
planted similarity matrix, more classes than 2K), stage 1 at any thread count, refusals, the
stage-3 loss, and end-to-end runs (6 and 196 classes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.cli import main
from bench.errors import UserError
from bench.runs.records import read_record
from bench.runs.spec import RunSpec, resolve_config
from methods.base import Task
from methods.centers import (
    gilbert_varshamov_target,
    hadamard_centers,
    hamming_distances,
    mds_centers,
    min_pairwise_distance,
)
from methods.csq import CSQ, central_similarity_loss
from methods.shc import (
    SHC,
    blocked_flips,
    center_objective,
    flip_deltas,
    masked_softmax_sums,
    normalise_similarity,
    optimise_centers,
    resolve_min_distance,
    start_centers,
)


def make_task(bits: int = 16, classes: int = 6, seed: int = 0) -> Task:
    return Task(bits=bits, num_classes=classes, multi_label=False, seed=seed, epochs=4,
                device=torch.device("cpu"))


def shc_config(**changes) -> dict:
    return {**resolve_config(RunSpec(method="shc", dataset="synthetic", bits=16)), **changes}


# ----------------------------------------------------------------------------- stage 1
def similarity_reference(logits: np.ndarray, labels: np.ndarray, normalisation: str) -> np.ndarray:
    """Literal loops over samples, classes and rows."""
    count = labels.shape[1]
    sums = [[0.0] * count for _ in range(count)]
    for n in range(len(logits)):
        own = [c for c in range(count) if labels[n, c] > 0]
        others = [c for c in range(count) if labels[n, c] == 0]
        if not own or not others:
            continue
        top = max(logits[n, c] for c in others)
        weights = {c: math.exp(logits[n, c] - top) for c in others}
        total = sum(weights.values())
        for row in own:
            for c in others:
                sums[row][c] += weights[c] / total
    symmetric = [[(sums[i][j] + sums[j][i]) / 2 for j in range(count)] for i in range(count)]
    result = np.eye(count)
    for i in range(count):
        if normalisation == "official":  # the whole row, its zero diagonal included
            mean = sum(symmetric[i]) / count
            scale = max(abs(v - mean) for v in symmetric[i])
            for j in range(count):
                result[i, j] = 1.0 if j == i else ((symmetric[i][j] - mean) / scale if scale > 0 else 0.0)
            continue
        values = [symmetric[i][j] for j in range(count) if j != i]
        if normalisation == "centre_maxabs":
            mean = sum(values) / len(values)
            deviations = [v - mean for v in values]
            scale = max(abs(d) for d in deviations)
            scaled = [d / scale if scale > 0 else 0.0 for d in deviations]
        else:
            low, high = min(values), max(values)
            scaled = [2 * (v - low) / (high - low) - 1 if high > low else 0.0 for v in values]
        for j, value in zip([j for j in range(count) if j != i], scaled, strict=True):
            result[i, j] = value
    return result


@pytest.mark.parametrize("normalisation", ["official", "centre_maxabs", "minmax"])
@pytest.mark.parametrize("multi", [False, True])
def test_similarity_matches_literal_loop(normalisation: str, multi: bool) -> None:
    rng = np.random.default_rng(0)
    samples, count = 40, 5
    logits = 3 * rng.standard_normal((samples, count))
    if multi:
        labels = (rng.random((samples, count)) < 0.35).astype(np.float32)
        labels[0] = 1.0  # every class positive: contributes nothing
        labels[1] = 0.0  # no class: contributes nothing
    else:
        labels = np.eye(count, dtype=np.float32)[rng.integers(count, size=samples)]
    got = normalise_similarity(masked_softmax_sums(logits, labels), normalisation)
    expected = similarity_reference(logits, labels, normalisation)
    assert np.allclose(got, expected, atol=1e-12)
    assert np.allclose(np.diag(got), 1.0)
    off = ~np.eye(count, dtype=bool)
    assert got[off].min() >= -1 - 1e-12 and got[off].max() <= 1 + 1e-12
    if normalisation != "official":  # official: the largest deviation may be the diagonal's
        assert np.isclose(np.abs(got[off]).max(), 1.0)


def test_official_row_normalisation_on_a_hand_worked_matrix() -> None:
    """Spec check 2. Row 1 of P = [2, 0, 3]: mean 5/3, deviations (1/3, -5/3, 4/3), largest
    5/3 (the zero diagonal's), so (0.2, -1, 0.8), and the diagonal set to 1."""
    sums = np.array([[0, 2, 1], [2, 0, 3], [1, 3, 0]], dtype=float)
    expected = [[1, 1, 0], [0.2, 1, 0.8], [-0.2, 1, 1]]
    assert np.allclose(normalise_similarity(sums, "official"), expected, atol=1e-12)
    assert SHC.params["row_normalisation"].default == "official"
    assert np.allclose(normalise_similarity(sums), expected, atol=1e-12)  # the default


def test_masked_softmax_never_credits_the_own_class() -> None:
    logits = np.array([[10.0, 0.0, 0.0], [0.0, 10.0, 1.0]])
    labels = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    sums = masked_softmax_sums(logits, labels)
    assert np.allclose(np.diag(sums), 0.0)
    assert np.allclose(sums.sum(axis=1), [1.0, 1.0, 0.0])
    assert sums[1, 2] > sums[1, 0]


# ----------------------------------------------------------------------------- d_min
def test_d_min_is_the_gilbert_varshamov_target() -> None:
    """SHC's official d_min is MDS's d*: the spec's values, literally."""
    expected = {196: (4, 10, 23), 555: (3, 9, 21), 100: (4, 10, 24), 80: (5, 11, 24), 6: (7, 14, 29)}
    for classes, values in expected.items():
        for bits, value in zip((16, 32, 64), values, strict=True):
            task = make_task(bits=bits, classes=classes)
            assert resolve_min_distance(task, shc_config()) == (value, "gilbert-varshamov d*")
            assert SHC(shc_config(), task).min_distance == value == gilbert_varshamov_target(classes, bits)
    assert resolve_min_distance(make_task(16, 6), shc_config(min_distance=3)) == (3, "set")


def test_start_is_the_mds_generator_at_d_min() -> None:
    task = make_task(bits=16, classes=40, seed=2)
    d_min, _ = resolve_min_distance(task, shc_config())
    start, summary = start_centers(task, shc_config(), d_min)
    again, _ = mds_centers(40, 16, np.random.default_rng(2))
    assert np.array_equal(start, again)
    assert summary["reached"] and min_pairwise_distance(start) >= d_min == 5
    # C <= 2K: the Hadamard rows CSQ uses already meet d*
    small, summary = start_centers(make_task(16, 6), shc_config(), 7)
    assert summary["sweeps"] == 0 and np.array_equal(small, hadamard_centers(6, 16, np.random.default_rng(0)))


# ----------------------------------------------------------------------------- stage 2
def test_flip_deltas_and_blocked_flips_match_brute_force() -> None:
    rng = np.random.default_rng(1)
    count, bits = 5, 12
    similarity = rng.uniform(-1, 1, (count, count))  # deliberately not symmetric
    np.fill_diagonal(similarity, 1.0)
    centers = np.where(rng.random((count, bits)) < 0.5, 1, -1)
    deltas = flip_deltas(similarity, centers)
    d_min = min_pairwise_distance(centers)
    blocked = blocked_flips(centers, d_min)
    base = center_objective(similarity, centers)
    for i in range(count):
        for k in range(bits):
            flipped = centers.copy()
            flipped[i, k] *= -1
            assert deltas[i, k] == pytest.approx(center_objective(similarity, flipped) - base, abs=1e-10)
            assert blocked[i, k] == (min_pairwise_distance(flipped) < d_min)
    assert blocked.any() and not blocked.all()


def literal_steepest_descent(similarity: np.ndarray, start: np.ndarray, d_min: int,
                             budget: int) -> tuple[np.ndarray, int]:
    """The rule as stated: rescore every flip from scratch before each step."""
    h = np.array(start, dtype=np.int64)
    flips = 0
    while flips < budget:
        deltas = flip_deltas(similarity, h)
        deltas[blocked_flips(h, d_min)] = np.inf
        flat = deltas.ravel()  # the documented near-tie rule: first index within 1e-9 of the min
        index = int(np.flatnonzero(flat <= flat.min() + 1e-9 * max(1.0, abs(flat.min())))[0])
        if not deltas.flat[index] < -1e-12:
            break
        h.flat[index] *= -1
        flips += 1
    return h, flips


@pytest.mark.parametrize(("classes", "bits", "seed"), [(6, 16, 0), (40, 16, 1), (24, 32, 2)])
def test_incremental_search_takes_the_literal_steps(classes: int, bits: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    similarity = rng.uniform(-1, 1, (classes, classes))  # not symmetric on purpose
    np.fill_diagonal(similarity, 1.0)
    d_min = gilbert_varshamov_target(classes, bits)
    start, _ = mds_centers(classes, bits, np.random.default_rng(seed))
    for budget in (3, 10_000):
        expected, flips = literal_steepest_descent(similarity, start, d_min, budget)
        got, summary = optimise_centers(similarity, start, d_min, budget)
        assert summary["flips"] == flips and np.array_equal(got, expected)
    assert summary["converged"] and flips > 3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_last_bit_noise_does_not_change_the_centers(seed: int) -> None:
    """A planted block similarity has many exactly tied flips; noise of 1e-13 (what another
    CPU's summation order gives) must not reorder them (a plain argmin does, on every seed)."""
    similarity = planted_blocks(12, 3, np.random.default_rng(seed))
    d_min = gilbert_varshamov_target(12, 16)
    start, _ = mds_centers(12, 16, np.random.default_rng(seed))
    noise = np.random.default_rng(99).normal(0.0, 1e-13, similarity.shape)
    clean, _ = optimise_centers(similarity, start, d_min)
    noisy, _ = optimise_centers(similarity + noise, start, d_min)
    assert np.array_equal(clean, noisy)


def test_record_keeps_the_similarity_at_full_precision() -> None:
    method = SHC.__new__(SHC)
    method.similarity = np.array([[1.0, 1 / 3], [1 / 3, 1.0]])
    method.centers, method.classifier_summary, method.stage_summary = None, {}, {}
    method.config = {"row_normalisation": "centre_maxabs"}
    method.task = make_task(classes=2)
    stored = json.loads(json.dumps(method.record()))["similarity"]["matrix"]
    assert np.array_equal(np.asarray(stored), method.similarity)


def planted_blocks(classes: int, block: int, rng: np.random.Generator) -> np.ndarray:
    group = rng.permutation(classes) // block
    similarity = np.where(group[:, None] == group[None, :], 0.8, -0.1)
    np.fill_diagonal(similarity, 1.0)
    return similarity


def test_many_classes_keep_the_bound_and_improve_on_the_mds_start() -> None:
    classes, bits = 72, 16  # more classes than 2K: CSQ's Hadamard rows run out
    task = make_task(bits=bits, classes=classes)
    d_min, _ = resolve_min_distance(task, shc_config())
    start, mds = start_centers(task, shc_config(), d_min)
    assert mds["reached"] and mds["sweeps"] >= 1
    similarity = planted_blocks(classes, 4, np.random.default_rng(0))
    centers, summary = optimise_centers(similarity, start, d_min)
    assert min_pairwise_distance(centers) >= d_min == summary["min_distance_required"] == 5
    assert summary["objective_after"] < summary["objective_before"] == pytest.approx(
        center_objective(similarity, start))
    distances = hamming_distances(centers, centers)
    same = planted_blocks(classes, 4, np.random.default_rng(0)) > 0.5
    np.fill_diagonal(same, False)
    assert distances[same].mean() < distances[~same & ~np.eye(classes, dtype=bool)].mean() - 1


def planted_similarity() -> np.ndarray:
    """Classes {0, 1} and {2, 3} close, everything else mildly dissimilar."""
    similarity = np.full((6, 6), -0.2)
    for a, b in ((0, 1), (2, 3)):
        similarity[a, b] = similarity[b, a] = 0.9
    np.fill_diagonal(similarity, 1.0)
    return similarity


@pytest.mark.parametrize("bits", [16, 32])
def test_planted_similarity_ordering_and_min_distance(bits: int) -> None:
    similarity = planted_similarity()
    start = hadamard_centers(6, bits, np.random.default_rng(0))
    d_min = gilbert_varshamov_target(6, bits)
    centers, summary = optimise_centers(similarity, start, d_min)
    distances = hamming_distances(centers, centers)
    close = [distances[0, 1], distances[2, 3]]
    far = [distances[i, j] for i in range(6) for j in range(i + 1, 6) if (i, j) not in ((0, 1), (2, 3))]
    assert max(close) < min(far)
    assert min_pairwise_distance(centers) >= d_min
    assert summary["achieved_min_distance"] == min_pairwise_distance(centers)
    assert summary["objective_after"] < summary["objective_before"]
    assert summary["objective_after"] == pytest.approx(center_objective(similarity, centers))
    assert summary["converged"] and summary["flips"] > 0
    assert set(np.unique(centers)) == {-1, 1}


def test_optimisation_never_breaks_a_larger_min_distance() -> None:
    similarity = planted_similarity()
    start = hadamard_centers(6, 16, np.random.default_rng(0))
    centers, summary = optimise_centers(similarity, start, 8)  # the start is exactly 8 apart
    assert min_pairwise_distance(centers) >= 8
    assert summary["objective_after"] <= summary["objective_before"]


def test_infeasible_constraints_are_refused() -> None:
    with pytest.raises(UserError, match="cannot get distinct 2-bit centers"):
        resolve_min_distance(make_task(bits=2, classes=5), shc_config())
    with pytest.raises(UserError, match="cannot get distinct"):
        SHC.check(shc_config(), make_task(bits=2, classes=5))
    # d_min = K: at most two codewords can be K bits apart; six cannot (Plotkin).
    with pytest.raises(UserError, match="min_distance=16 is impossible for 6 centers of 16 bits "
                                        r"\(Plotkin: at most 2 codewords\)"):
        SHC.check(shc_config(min_distance=16), make_task(bits=16, classes=6))
    # A hand-set d_min the MDS stage cannot reach is refused: 40 words of 16 bits 8 apart do
    # not exist (at most 32), though Plotkin's bound (for 2d > K) does not say so.
    method = SHC(shc_config(min_distance=8, mds_sweeps=1), make_task(bits=16, classes=40))
    with pytest.raises(UserError, match="the MDS stage reached only"):
        method.push_start()
    with pytest.raises(UserError, match="must be between 1 and bits"):
        SHC.check(shc_config(min_distance=17), make_task(bits=16, classes=6))
    start = hadamard_centers(6, 16, np.random.default_rng(0))
    with pytest.raises(UserError, match="below d_min=9"):
        optimise_centers(planted_similarity(), start, 9)
    with pytest.raises(UserError, match="min_distance='abc' must be an integer"):
        SHC.check(shc_config(min_distance="abc"), make_task(bits=16, classes=6))
    with pytest.raises(UserError, match="max_flips=-1 must be an integer >= 0"):
        SHC.check(shc_config(max_flips=-1), make_task(bits=16, classes=6))
    with pytest.raises(UserError, match="admm_patience=-2 must be an integer >= 0"):
        SHC.check(shc_config(admm_patience=-2), make_task(bits=16, classes=6))
    SHC.check(shc_config(), make_task(bits=16, classes=6))  # feasible: no error


def test_cli_refuses_infeasible_bits(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["run", "--methods", "shc", "--bits", "2", "--dataset", "synthetic",
                 "--results", str(tmp_path), "--quiet"])
    assert code == 2
    assert "cannot get distinct 2-bit centers" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------------------- stage 1 threads
class ClassifierContext:
    """What stage 1 uses of a run: a fresh tiny backbone, shuffled batches, encoding, labels."""

    def __init__(self, classes: int = 6, count: int = 480) -> None:
        generator = torch.Generator().manual_seed(0)
        self.labels = np.eye(classes, dtype=np.float32)[np.arange(count) % classes]
        prototypes = torch.randn(classes, 1, 12, 12, generator=generator)
        self.images = prototypes[np.arange(count) % classes] + 0.8 * torch.randn(count, 1, 12, 12,
                                                                               generator=generator)
        self.device = torch.device("cpu")
        self.train_indices = np.arange(count)
        self.optimizers: list[tuple[str, int]] = []

    def new_optimizer(self, backbone: torch.nn.Module, head: torch.nn.Module, epochs: int):
        from bench.training.train import stage_optimizer

        optimizer, scheduler = stage_optimizer(backbone, head, shc_config(), epochs)
        self.optimizers.append((type(optimizer).__name__, epochs))
        return optimizer, scheduler

    def new_backbone(self) -> torch.nn.Module:
        from bench.network.backbones import build_backbone

        torch.manual_seed(1)
        return build_backbone("tiny_cnn", 1)

    def train_batches(self, generator: torch.Generator, batch_size: int | None = None):
        order = torch.randperm(len(self.images), generator=generator).numpy()
        for start in range(0, len(order), 128):
            chunk = order[start: start + 128]
            yield chunk, self.images[chunk], torch.from_numpy(self.labels[chunk])

    def encode_with(self, module: torch.nn.Module, indices: np.ndarray) -> np.ndarray:
        module.eval()
        with torch.no_grad():
            return module(self.images[indices]).numpy()

    def labels_of(self, indices: np.ndarray) -> np.ndarray:
        return self.labels[indices]


def test_stage_one_gives_the_same_bits_at_any_thread_count() -> None:
    """A float32 head with few output rows changes bits between 1 and 2 threads (measured:
    3.9e-7 apart unpinned); stage 1 runs at a fixed thread count, so the logits, the similarity
    and the centers do not depend on the run's threads."""
    previous = torch.get_num_threads()
    logits = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            method = SHC(shc_config(classifier_epochs=2), make_task())
            logits[threads], _ = method.train_classifier(ClassifierContext())
            assert torch.get_num_threads() == threads  # restored afterwards
    finally:
        torch.set_num_threads(previous)
    assert np.array_equal(logits[1], logits[2])


# ----------------------------------------------------------------------------- stage 3
def test_loss_is_csq_loss_against_the_optimised_centers() -> None:
    config = shc_config()
    method = SHC(config, make_task())
    assert isinstance(method, CSQ) and method.class_centers() is None  # set up in `setup`
    start = method.push_start()
    centers, _ = optimise_centers(planted_similarity(), start, method.min_distance)
    method.set_centers(centers, np.random.default_rng(0))
    labels = torch.eye(6)[[0, 1, 2, 5]]
    h = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    expected = central_similarity_loss(torch.tanh(h), method.centers[[0, 1, 2, 5]], config["lambda_q"])
    assert float(method.loss(h, labels, None)) == pytest.approx(float(expected))
    assert torch.equal(method.class_centers(), torch.as_tensor(centers, dtype=torch.float32))


# ----------------------------------------------------------------------------- end to end
def test_end_to_end_records_stage_times(tmp_path: Path, one_thread: None) -> None:
    code = main(["run", "--methods", "dpn,hashnet,shc", "--bits", "16", "--dataset", "synthetic",
                 "--results", str(tmp_path), "--quiet"])
    assert code == 0
    for name in ("dpn", "hashnet"):
        (path,) = (tmp_path / "runs" / "synthetic" / name).glob("*.json.gz")
        assert read_record(path)["status"] == "complete"
    (path,) = (tmp_path / "runs" / "synthetic" / "shc").glob("*.json.gz")
    record = read_record(path)
    assert record["status"] == "complete"
    stages = record["timings"]["method_stages"]
    assert set(stages) >= {"classifier", "centers"} and all(v > 0 for v in stages.values())
    optimisation = record["method"]["center_optimisation"]
    assert optimisation["achieved_min_distance"] >= optimisation["min_distance_required"] == 7
    assert optimisation["d_star"] == 7 and optimisation["mds"]["sweeps"] == 0
    assert optimisation["objective_after"] <= optimisation["objective_before"]
    matrix = np.array(record["method"]["similarity"]["matrix"])
    assert matrix.shape == (6, 6) and np.allclose(np.diag(matrix), 1.0)
    centers = np.array(record["centers"])
    assert min_pairwise_distance(centers) >= 7
    assert record["method"]["classifier"]["threads"] == 1


def test_end_to_end_with_196_classes(tmp_path: Path, one_thread: None) -> None:
    """More classes than 2K (the Stanford Cars regime): refused before the MDS start existed."""
    code = main(["run", "--methods", "shc", "--bits", "16", "--dataset", "synthetic-196", "--epochs", "1",
                 "--set", "classifier_epochs=1", "--results", str(tmp_path), "--quiet"])
    assert code == 0
    (path,) = (tmp_path / "runs" / "synthetic-196" / "shc").glob("*.json.gz")
    record = read_record(path)
    assert record["status"] == "complete"
    optimisation = record["method"]["center_optimisation"]
    assert optimisation["d_star"] == optimisation["min_distance_required"] == 4
    assert optimisation["mds"]["reached"] and optimisation["mds"]["sweeps"] >= 1
    assert optimisation["objective_after"] < optimisation["objective_before"]
    centers = np.array(record["centers"])
    assert centers.shape == (196, 16) and min_pairwise_distance(centers) >= 4
    assert set(record["timings"]["method_stages"]) >= {"mds_start", "classifier", "centers"}


# Compares floats with a stored record or another process: also run under AVX2 kernels (Makefile).
pytestmark = pytest.mark.float_sensitive


# ----------------------------------------------------------------------------- fidelity v2
def test_native_protocol_is_shcs_own_optimizer() -> None:
    """Spec check 1: stage 3 under native trains with SHC's official settings, not CSQ's."""
    config = resolve_config(RunSpec(method="shc", dataset="synthetic", bits=16, protocol="native"))
    got = {key: config[key] for key in ("optimizer", "lr", "weight_decay", "lr_schedule", "lr_min",
                                        "batch_size", "multi_label")}
    assert got == {"optimizer": "rmsprop", "lr": 1e-4, "weight_decay": 1e-5, "lr_schedule": "cosine",
                   "lr_min": 1e-7, "batch_size": 64, "multi_label": "argmax"}
    assert config["classifier_epochs"] is None  # the stage-3 epochs (official 1:1)


def test_every_deviation_is_declared() -> None:
    declared = {key for key, param in SHC.params.items() if param.source.startswith("deviation:")}
    assert {"multi_label", "max_flips"} <= declared
    assert SHC.native["multi_label"] == "argmax"  # native follows the official rule


def test_stage_one_uses_the_runs_optimizer_for_the_stage_three_epochs() -> None:
    context = ClassifierContext()
    method = SHC(shc_config(), make_task())  # task epochs 4, classifier_epochs unset
    method.train_classifier(context)
    assert context.optimizers == [("RMSprop", 4)]  # shc_config: the native protocol
    assert method.classifier_summary["epochs"] == 4
    assert method.classifier_summary["epoch_rule"].startswith("stage-3 epochs")


def test_argmax_rule_keeps_the_first_positive_class() -> None:
    from methods.shc import argmax_labels

    labels = np.array([[0, 1, 1, 0], [1, 0, 0, 1], [0, 0, 0, 0]], dtype=np.float32)
    assert argmax_labels(labels).tolist() == [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    task = Task(bits=16, num_classes=4, multi_label=True, seed=0, epochs=2, device=torch.device("cpu"))
    method = SHC(shc_config(multi_label="argmax"), task)
    method.set_centers(hadamard_centers(4, 16, np.random.default_rng(0)), np.random.default_rng(0))
    h = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    single = torch.as_tensor(argmax_labels(labels))
    expected = CSQ.loss(method, h, single, None)
    assert float(method.loss(h, torch.as_tensor(labels), None)) == pytest.approx(float(expected))
    summed = SHC(shc_config(multi_label="csq_sum"), task)
    summed.set_centers(method.centers.numpy(), np.random.default_rng(0))
    assert float(summed.loss(h, torch.as_tensor(labels), None)) != pytest.approx(float(expected))


@pytest.mark.parametrize("protocol", ["native", "harmonised"])
def test_native_and_multi_label_rule_recorded_end_to_end(tmp_path: Path, one_thread: None,
                                                         protocol: str) -> None:
    """Spec check 9: two epochs on the synthetic card; stage 1 runs as many epochs with the
    protocol's optimizer; the record names the multi-label rule (None: single-label data)."""
    code = main(["run", "--methods", "shc", "--bits", "16", "--dataset", "synthetic", "--epochs", "2",
                 "--protocol", protocol, "--results", str(tmp_path), "--quiet"])
    assert code == 0
    (path,) = (tmp_path / "runs" / "synthetic" / "shc").glob("*.json.gz")
    record = read_record(path)
    classifier = record["method"]["classifier"]
    assert classifier["epochs"] == 2 and classifier["steps"] >= 2
    assert classifier["optimizer"] == ("rmsprop" if protocol == "native" else "adam")
    assert record["config"]["multi_label"] == ("argmax" if protocol == "native" else "csq_sum")
    assert "multi_label_rule" in record["method"] and record["method"]["multi_label_rule"] is None
    optimisation = record["method"]["center_optimisation"]
    assert optimisation["objective_per_c2_after"] == pytest.approx(optimisation["objective_after"] / 36)
