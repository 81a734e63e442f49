"""The centers benchmark: every center generator in the suite, no training.

For each generator x number of classes C x code length K it draws the C x K ±1 matrix the
method would train against (seed 0 by default) and reports the minimum and mean pairwise
Hamming distance, the Gilbert-Varshamov target d* of MDS/SHC, the number of duplicate rows
(two classes sharing a center) and the time. Generators owned by other modules are imported
by name; one that cannot be imported is listed as "not available" instead of failing the run.

SHC needs a class similarity: a seeded planted block structure (`planted_similarity`) stands
in for its classifier. SHC's time includes its MDS start, taken from the MDS row of the same
(C, K, seed) (the same generator with the same seed), and says so.
"""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import UserError

CLASSES = (10, 80, 100, 196, 555)
BITS = (16, 32, 64)
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "reports"

GENERATORS: dict[str, str] = {
    "csq-hadamard": "CSQ: rows of [H_K; -H_K]; beyond 2K classes Bernoulli resampled for >= K/4 bits",
    "csq-bernoulli": "CSQ's Bernoulli rule at every C: resampled (1000 tries) for >= K/4 bits",
    "dpn": "DPN: i.i.d. Bernoulli(0.5) targets (methods/dpn.py)",
    "orthohash-bernoulli": "OrthoHash: i.i.d. Bernoulli(0.5) targets",
    "orthohash-maxhd": "OrthoHash MaxHD: sequential rejection sampling, threshold 0.61 K lowered to fit",
    "mds": "MDS: l_p-box ADMM sweeps from CSQ's start to d*",
    "shc": "SHC: MDS start, then bit flips on ||S - HH^T/K||^2 keeping d*, planted similarity",
    "hclm": "HCLM: Tammes points, ITQ, sign, greedy semantic assignment (planted similarity)",
    "crh": "CRH: per-head random codebook (M = 2C), random distinct assignment, concatenated",
}
COLUMNS = ("classes", "bits", "d_star", "generator", "min_distance", "mean_distance", "duplicates",
           "reaches_d_star", "seconds", "note")


@dataclass
class Row:
    classes: int | None
    bits: int | None
    d_star: int | None
    generator: str
    min_distance: int | None
    mean_distance: float | None
    duplicates: int | None
    reaches_d_star: bool | None
    seconds: float | None
    note: str = ""


def planted_similarity(num_classes: int, rng: np.random.Generator, block: int = 4) -> np.ndarray:
    """A C x C class similarity with planted groups: classes, in a seeded random order, form
    blocks of `block`; within a block 0.8, across blocks -0.1, plus symmetric N(0, 0.05)
    noise, clipped to [-1, 1], diagonal 1."""
    order = rng.permutation(num_classes)
    group = np.empty(num_classes, dtype=np.int64)
    group[order] = np.arange(num_classes) // block
    similarity = np.where(group[:, None] == group[None, :], 0.8, -0.1)
    noise = rng.normal(0.0, 0.05, (num_classes, num_classes))
    similarity = np.clip(similarity + (noise + noise.T) / 2, -1.0, 1.0)
    np.fill_diagonal(similarity, 1.0)
    return similarity


def distance_stats(centers: np.ndarray) -> tuple[int, float, int]:
    """(minimum, mean) pairwise Hamming distance over distinct pairs, and duplicate rows
    (rows equal to an earlier row): `methods.centers.distance_summary` as a row's columns."""
    from methods.centers import distance_summary

    summary = distance_summary(centers)
    return summary["min_distance"], summary["mean_distance"], summary["duplicate_rows"]


class _Context:
    """What one (C, K) cell shares between generators: the planted similarity and MDS result."""

    def __init__(self, classes: int, bits: int, seed: int) -> None:
        self.classes, self.bits, self.seed = classes, bits, seed
        self.similarity = planted_similarity(classes, np.random.default_rng([seed, 7]))
        self.mds: tuple[np.ndarray, float] | None = None

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def mds_result(self) -> tuple[np.ndarray, float]:
        """MDS centers with the run's seed (what SHC starts from) and their seconds."""
        if self.mds is None:
            from methods.centers import mds_centers

            started = time.perf_counter()
            centers, _ = mds_centers(self.classes, self.bits, self.rng())
            self.mds = centers, time.perf_counter() - started
        return self.mds


def _method_centers(name: str, cell: _Context) -> np.ndarray:
    """The centers a registered method sets up with its default settings (CPU task)."""
    import torch

    from bench.runs.spec import method_params
    from methods import get_method
    from methods.base import Task

    cls = get_method(name)
    config = {key: param.default for key, param in method_params(cls).items()}
    task = Task(bits=cell.bits, num_classes=cell.classes, multi_label=False, seed=cell.seed,
                epochs=1, device=torch.device("cpu"))
    return cls(config, task).class_centers().cpu().numpy()


def _csq_bernoulli(cell: _Context) -> tuple[np.ndarray, str]:
    import warnings

    from methods.centers import bernoulli_centers

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        centers = bernoulli_centers(cell.classes, cell.bits, cell.rng(), min_distance=cell.bits / 4,
                                    max_tries=1000)
    return centers, "K/4 not met in 1000 tries: best kept" if caught else ""


def _csq_hadamard(cell: _Context) -> tuple[np.ndarray, str]:
    import warnings

    rows = cell.bits & (cell.bits - 1) == 0 and 2 * cell.bits >= cell.classes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        centers = _method_centers("csq", cell)
    note = "Hadamard rows" if rows else "Bernoulli fallback (C > 2K)"
    if caught:
        note += "; K/4 not met in 1000 tries: best kept"
    return centers, note


def _orthohash(kind: str) -> Callable[[_Context], tuple[np.ndarray, str]]:
    def generate(cell: _Context) -> tuple[np.ndarray, str]:
        from methods.orthohash import orthohash_targets

        centers, summary = orthohash_targets(cell.classes, cell.bits, kind, cell.rng())
        threshold = summary.get("final_threshold", summary.get("threshold"))
        return centers, f"final threshold {threshold}" if threshold is not None else ""
    return generate


def _mds(cell: _Context) -> tuple[np.ndarray, str]:
    centers, _ = cell.mds_result()
    return centers, ""


def _shc(cell: _Context) -> tuple[np.ndarray, str, float]:
    from methods.centers import gilbert_varshamov_target, min_pairwise_distance
    from methods.shc import optimise_centers

    start, start_seconds = cell.mds_result()
    d_min = min(gilbert_varshamov_target(cell.classes, cell.bits), min_pairwise_distance(start))
    started = time.perf_counter()
    centers, summary = optimise_centers(cell.similarity, start, d_min)
    flips_seconds = time.perf_counter() - started
    note = (f"objective {summary['objective_before']:.0f} -> {summary['objective_after']:.0f} in "
            f"{summary['flips']} flips; time incl. MDS start {start_seconds:.2f} s")
    return centers, note, start_seconds + flips_seconds


def _hclm(cell: _Context) -> tuple[np.ndarray, str]:
    from methods.hclm import hclm_proxies

    centers, summary = hclm_proxies(cell.classes, cell.bits, cell.rng(), similarity=cell.similarity)
    repaired = summary.get("repaired_duplicate_rows")
    return centers, f"{repaired} duplicate sign rows repaired" if repaired else ""


def _crh(cell: _Context) -> tuple[np.ndarray, str]:
    from methods.centers import head_width

    heads, width = head_width(cell.bits, 2 * cell.classes)
    return _method_centers("crh", cell), f"{heads} heads x {width} bits"


_IMPLEMENTATIONS: dict[str, tuple[str, Callable[[_Context], tuple]]] = {
    "csq-hadamard": ("methods.csq", _csq_hadamard),
    "csq-bernoulli": ("methods.centers", _csq_bernoulli),
    "dpn": ("methods.dpn", lambda cell: (_method_centers("dpn", cell), "")),
    "orthohash-bernoulli": ("methods.orthohash", _orthohash("bernoulli")),
    "orthohash-maxhd": ("methods.orthohash", _orthohash("maxhd")),
    "mds": ("methods.centers", _mds),
    "shc": ("methods.shc", _shc),
    "hclm": ("methods.hclm", _hclm),
    "crh": ("methods.crh", _crh),
}


def availability(generators: Iterable[str]) -> dict[str, str | None]:
    """None for generators whose module imports, else why not."""
    result: dict[str, str | None] = {}
    for name in generators:
        module, _ = _IMPLEMENTATIONS[name]
        try:
            importlib.import_module(module)
            result[name] = None
        except ImportError as error:
            result[name] = f"not available: {error}"
    return result


def run_cell(name: str, cell: _Context, d_star: int) -> Row:
    """One generator on one (C, K): its centers measured, or the error that stopped it."""
    _, generate = _IMPLEMENTATIONS[name]
    started = time.perf_counter()
    try:
        result = generate(cell)
    except (UserError, ImportError, AttributeError, ValueError) as error:
        return Row(cell.classes, cell.bits, d_star, name, None, None, None, None,
                   round(time.perf_counter() - started, 4), f"failed: {error}")
    seconds = result[2] if len(result) == 3 else time.perf_counter() - started
    centers, note = result[0], result[1]
    lowest, mean, duplicates = distance_stats(centers)
    return Row(cell.classes, cell.bits, d_star, name, lowest, round(mean, 3), duplicates,
               lowest >= d_star, round(seconds, 4), note)


def run_benchmark(classes: Iterable[int] = CLASSES, bits: Iterable[int] = BITS,
                  generators: Iterable[str] = tuple(GENERATORS), seed: int = 0,
                  progress: bool = True) -> list[Row]:
    """Every generator x C x K; rows ordered by C, K, then generator."""
    from tqdm.auto import tqdm

    from methods.centers import gilbert_varshamov_target

    generators = list(generators)
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown:
        raise UserError(f"unknown generator(s) {', '.join(unknown)}; valid: {', '.join(GENERATORS)}")
    missing = availability(generators)
    rows = [Row(None, None, None, name, None, None, None, None, None, why)
            for name, why in missing.items() if why]
    usable = [name for name in generators if not missing[name]]
    grid = [(c, k) for c in classes for k in bits]
    bar = tqdm(total=len(grid) * len(usable), desc="centers", disable=not progress, leave=False)
    for count, length in grid:
        cell = _Context(count, length, seed)
        d_star = gilbert_varshamov_target(count, length)
        for name in usable:
            bar.set_postfix_str(f"{name} C={count} K={length}")
            rows.append(run_cell(name, cell, d_star))
            bar.update()
    bar.close()
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:.2f}"
    return str(value)


def to_markdown(rows: list[Row], header: dict[str, Any]) -> str:
    """A markdown report: settings line, then one table ordered by C, K, generator."""
    lines = ["# Centers benchmark", "",
             "Every center generator without training: minimum and mean pairwise Hamming distance, "
             "the Gilbert-Varshamov target d* (MDS/SHC), duplicate rows, seconds. "
             + ", ".join(f"{k}: {v}" for k, v in header.items()) + ".", "",
             "| C | K | d* | generator | min | mean | duplicates | min >= d* | seconds | note |",
             "|---:|---:|---:|---|---:|---:|---:|---|---:|---|"]
    for row in rows:
        values = asdict(row)
        lines.append("| " + " | ".join(_cell(values[c]).replace("|", "/") for c in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[Row], header: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """centers.md and centers.csv under `out` (created)."""
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    markdown, table = out / "centers.md", out / "centers.csv"
    markdown.write_text(to_markdown(rows, header))
    pd.DataFrame([asdict(r) for r in rows], columns=list(COLUMNS)).to_csv(table, index=False)
    return markdown, table


def machine_header(seconds: float, seed: int) -> dict[str, Any]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"seed": seed, "CPU cores": os.cpu_count(), "load average (1 min) at the end": round(load, 2),
            "total seconds": round(seconds, 1)}
