"""Statistics of the report: per-cell summaries, paired tests with 95 % intervals over seeds,
Holm's correction, a bootstrap over queries for one-seed cells, and a permutation test of a
rank correlation against random center-to-class assignments.

Every random draw uses a fixed seed, so the report stays a pure function of the records."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 2000
PERMUTATIONS = 2000


def stable_seed(text: str) -> int:
    """A seed derived from a label (crc32: the same on every machine and Python run)."""
    return zlib.crc32(text.encode("utf-8"))


@dataclass(frozen=True)
class Stat:
    """Mean, sample std and 95 % t interval of per-seed values."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        finite = [v for v in values if not math.isnan(v)]
        if not finite:
            return cls(math.nan, math.nan, 0)
        array = np.asarray(finite, dtype=np.float64)
        std = float(array.std(ddof=1)) if len(array) > 1 else math.nan
        return cls(float(array.mean()), std, len(array))

    @property
    def half_width(self) -> float:
        """Half the 95 % t interval of the mean (NaN below two values)."""
        if self.n < 2 or math.isnan(self.std):
            return math.nan
        return float(sps.t.ppf(1 - ALPHA / 2, self.n - 1) * self.std / math.sqrt(self.n))

    def text(self, digits: int = 2, show_n: bool = True) -> str:
        """"80.74 ± 1.23 (n=3)": mean ± sample std over seeds."""
        if self.n == 0:
            return "n/a"
        body = f"{self.mean:.{digits}f}"
        if self.n > 1:
            body += f" ± {self.std:.{digits}f}"
        return body + (f" (n={self.n})" if show_n else "")

    def ci_text(self, digits: int = 2) -> str:
        """"80.74 [79.51, 81.97]": mean and 95 % t interval over seeds."""
        if self.n == 0:
            return "n/a"
        if self.n < 2:
            return f"{self.mean:.{digits}f}"
        low, high = self.mean - self.half_width, self.mean + self.half_width
        return f"{self.mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


@dataclass(frozen=True)
class PairedTest:
    """Paired t over matching seeds of a - b, with the 95 % interval of the mean difference."""

    n: int
    mean_diff: float
    t: float
    p: float
    low: float
    high: float
    note: str = ""

    def text(self) -> str:
        if self.note:
            return f"{self.note} (n={self.n})"
        return f"t={self.t:.2f}, p={_p(self.p)}, n={self.n}"


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def paired_test(a: dict[int, float], b: dict[int, float]) -> PairedTest:
    """scipy.stats.ttest_rel over the seeds both sides have; the interval is the t interval of
    the mean per-seed difference (what the test is about)."""
    seeds = sorted(s for s in set(a) & set(b) if not (math.isnan(a[s]) or math.isnan(b[s])))
    diffs = np.asarray([a[s] - b[s] for s in seeds], dtype=np.float64)
    mean = float(diffs.mean()) if len(diffs) else math.nan
    nan = math.nan
    if len(seeds) < 2:
        return PairedTest(len(seeds), mean, nan, nan, nan, nan, "n<2: not testable")
    if float(np.ptp(diffs)) <= 1e-12 * max(1.0, abs(mean)):
        return PairedTest(len(seeds), mean, nan, nan, mean, mean,
                          "identical differences on every seed: t undefined")
    result = sps.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
    half = float(sps.t.ppf(1 - ALPHA / 2, len(seeds) - 1) * diffs.std(ddof=1) / math.sqrt(len(seeds)))
    return PairedTest(len(seeds), mean, float(result.statistic), float(result.pvalue), mean - half,
                      mean + half)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted in the family):
    sorted ascending, p_(i) * (m - i + 1), made monotone, capped at 1."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    m = len(indexed)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def bootstrap_mean_ci(values: np.ndarray, label: str, resamples: int = BOOTSTRAP_RESAMPLES
                      ) -> tuple[float, float]:
    """95 % percentile interval of the mean of per-query values, resampling queries (NaN
    entries, i.e. queries left out of the mean, are dropped). The seed comes from `label`."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(stable_seed(label))
    means = np.empty(resamples)
    step = max(1, 2_000_000 // len(values))
    for start in range(0, resamples, step):
        stop = min(resamples, start + step)
        draws = rng.integers(0, len(values), size=(stop - start, len(values)))
        means[start:stop] = values[draws].mean(axis=1)
    low, high = np.quantile(means, [ALPHA / 2, 1 - ALPHA / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class PermutationResult:
    """Mean Spearman correlation over runs, against the same statistic when each run's centers
    are assigned to classes at random (independently per run)."""

    n: int
    observed: float          # mean over runs of Spearman's rho
    per_run: tuple[float, ...]
    null_mean: float
    p_upper: float           # P(null >= observed)
    p: float                 # two-sided: 2 * min(upper, lower), capped at 1
    permutations: int


def _pairs(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(size, k=1)


def spearman_pairs(center_similarity: np.ndarray, class_similarity: np.ndarray) -> float:
    """Spearman's rho over class pairs (upper triangle); NaN when either side is constant."""
    i, j = _pairs(len(center_similarity))
    x, y = center_similarity[i, j], class_similarity[i, j]
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(sps.spearmanr(x, y).statistic)


def center_similarity(centers: np.ndarray) -> np.ndarray:
    """Hamming similarity 1 - d/K of +-1 centers, [C, C]."""
    centers = np.asarray(centers, dtype=np.float64)
    bits = centers.shape[1]
    return (bits + centers @ centers.T) / (2.0 * bits)


def permutation_spearman(runs: Sequence[tuple[np.ndarray, np.ndarray]], label: str,
                         permutations: int = PERMUTATIONS) -> PermutationResult | None:
    """Test the mean Spearman correlation (center Hamming similarity vs class similarity) of
    several runs against random center-to-class assignments. Each run is (centers [C, K],
    class similarity [C, C]). Permuting which class gets which center permutes the class pairs
    of the center similarity, so the ranks are computed once and only re-indexed. None when a
    run's centers are equidistant or its similarity is constant (the correlation is undefined)."""
    prepared = []
    for centers, similarity in runs:
        size = len(centers)
        i, j = _pairs(size)
        sim_c = center_similarity(centers)
        x, y = sim_c[i, j], np.asarray(similarity, dtype=np.float64)[i, j]
        if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
            return None
        rank_x = np.zeros((size, size))
        rank_x[i, j] = sps.rankdata(x)
        rank_x = rank_x + rank_x.T
        ry = sps.rankdata(y)
        ry = (ry - ry.mean()) / np.linalg.norm(ry - ry.mean())
        mean_x = float(rank_x[i, j].mean())
        norm_x = float(np.linalg.norm(rank_x[i, j] - mean_x))
        prepared.append((size, i, j, rank_x, ry, mean_x, norm_x))
    rng = np.random.default_rng(stable_seed(label))
    observed = []
    null = np.zeros(permutations)
    for size, i, j, rank_x, ry, mean_x, norm_x in prepared:
        observed.append(float((rank_x[i, j] - mean_x) @ ry / norm_x))
        chunk = max(1, 4_000_000 // max(1, len(i)))
        for start in range(0, permutations, chunk):
            stop = min(permutations, start + chunk)
            perm = rng.permuted(np.tile(np.arange(size), (stop - start, 1)), axis=1)
            values = rank_x[perm[:, i], perm[:, j]]
            null[start:stop] += (values - mean_x) @ ry / norm_x
    null /= len(prepared)
    mean_obs = float(np.mean(observed))
    tol = 1e-12
    upper = (1 + int(np.sum(null >= mean_obs - tol))) / (permutations + 1)
    lower = (1 + int(np.sum(null <= mean_obs + tol))) / (permutations + 1)
    return PermutationResult(len(observed), mean_obs, tuple(observed), float(null.mean()), upper,
                             min(1.0, 2 * min(upper, lower)), permutations)
