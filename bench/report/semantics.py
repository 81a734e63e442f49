"""Do centers reflect class similarity? Judged against a similarity the judged network did not
produce: per run, rho against its permutation null (random center-to-class assignments);
over runs, a one-sample t of rho minus the null mean.

The class similarity for a run comes, in this order of preference, from
1. a ground truth: `record["task"]["ground_truth_similarity"]` (a C x C matrix, or a mapping
   with `matrix` and `measure`), else the similarity the dataset card declares;
2. another seed's run of the same method, bits and configuration (the next seed, cyclically):
   the cosine of its class-mean backbone features (`record["class_similarity"]`);
3. another run in the same table (another method or bit length), preferring another seed.
A run's own `class_similarity` is never used for its own centers."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.report.stats import CentersTest, Stat, centers_test
from bench.report.util import card_info, get, method_name, method_sort_key

GROUND_TRUTH = "ground truth"
OTHER_SEED = "another seed's features"
OTHER_RUN = "another run's features"


def centers_of(record: dict) -> np.ndarray | None:
    centers = record.get("centers")
    if centers is None:
        centers = get(record, "method", "centers")
    if not centers:
        return None
    array = np.asarray(centers, dtype=np.float64)
    return array if array.ndim == 2 else None


def _matrix(value: object, size: int) -> np.ndarray | None:
    if isinstance(value, dict):
        value = value.get("matrix")
    if value is None:
        return None
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.shape == (size, size) and np.isfinite(array).all() else None


def ground_truth(record: dict, size: int) -> tuple[np.ndarray, str] | None:
    """The class similarity known by construction, from the record or else its card."""
    declared = get(record, "task", "ground_truth_similarity")
    matrix = _matrix(declared, size)
    if matrix is not None:
        measure = declared.get("measure") if isinstance(declared, dict) else None
        return matrix, f"ground truth stored in the record ({measure or 'task.ground_truth_similarity'})"
    info = card_info(str(get(record, "spec", "dataset")))
    matrix = _matrix(info.get("ground_truth"), size)
    if matrix is not None:
        return matrix, f"ground truth declared by the card ({info.get('ground_truth_measure')})"
    return None


def _features(row: pd.Series, size: int) -> np.ndarray | None:
    return _matrix(get(row.record, "class_similarity"), size)


def independent_similarity(row: pd.Series, group_rows: pd.DataFrame, table_rows: pd.DataFrame
                           ) -> tuple[np.ndarray, str, str] | None:
    """(similarity, kind, description) for one run's centers, never from the run itself."""
    centers = centers_of(row.record)
    if centers is None:
        return None
    size = len(centers)
    truth = ground_truth(row.record, size)
    if truth is not None:
        return truth[0], GROUND_TRUTH, truth[1]
    seeds = sorted(s for s in group_rows.seed if s != row.seed)
    later = [s for s in seeds if s > row.seed] + [s for s in seeds if s < row.seed]
    for seed in later:
        other = group_rows[group_rows.seed == seed].iloc[0]
        matrix = _features(other, size)
        if matrix is not None:
            return matrix, OTHER_SEED, f"seed {row.seed} ← seed {seed}"
    others = table_rows[table_rows.run_id != row.run_id]
    order = sorted(others.itertuples(index=False),
                   key=lambda r: (r.seed == row.seed, method_sort_key(r.method), r.bits, r.variant, r.seed))
    for other in order:
        matrix = _matrix(get(other.record, "class_similarity"), size)
        if matrix is not None:
            where = f"{method_name(other.method)} {other.bits} bits seed {other.seed}"
            return matrix, OTHER_RUN, f"seed {row.seed} ← {where}"
    return None


@dataclass(frozen=True)
class Semantics:
    """One cell's test: its runs' centers against independent class similarities."""

    label: str
    table: str
    bits: int
    seeds: tuple[int, ...]
    kind: str
    sources: tuple[str, ...]
    result: CentersTest | None
    note: str = ""

    @property
    def stat(self) -> Stat:
        return Stat.of(self.result.per_run) if self.result else Stat.of([])

    def source_text(self) -> str:
        if not self.sources:
            return "none"
        return f"{self.kind}: " + ("; ".join(self.sources) if self.kind != GROUND_TRUTH else self.sources[0])


def semantics_of_cell(rows: pd.DataFrame, table_rows: pd.DataFrame, label: str) -> Semantics:
    """Per-run Mantel tests of a cell's runs (one per seed), graded over seeds."""
    first = rows.iloc[0]
    runs, seeds, sources, kinds = [], [], [], set()
    for _, row in rows.sort_values("seed").iterrows():
        found = independent_similarity(row, rows, table_rows)
        centers = centers_of(row.record)
        if found is None or centers is None:
            continue
        runs.append((centers, found[0]))
        seeds.append(int(row.seed))
        kinds.add(found[1])
        if found[2] not in sources:
            sources.append(found[2])
    base = dict(label=label, table=str(first.table), bits=int(first.bits), seeds=tuple(seeds),
                kind=" + ".join(sorted(kinds)), sources=tuple(sources))
    if not runs:
        reason = ("no centers stored" if centers_of(first.record) is None
                  else "no independent class similarity (one run only, no ground truth)")
        return Semantics(result=None, note=reason, **base)
    result = centers_test(runs, f"{label}|{first.table}|{first.bits}")
    if result is None:
        return Semantics(result=None, note="undefined (equidistant centers or constant similarity)", **base)
    return Semantics(result=result, **base)


def fmt_rho(s: Semantics) -> str:
    if s.result is None:
        return s.note
    stat = s.stat
    spread = f" ± {stat.std:.3f}" if stat.n > 1 and not math.isnan(stat.std) else ""
    return f"{s.result.observed:.3f}{spread} (n={s.result.n})"
