"""Statistics of the report, on the libraries made for them: per-cell summaries, paired and
shifted t-tests (one- or two-sided) with their intervals, Holm's correction, power, TOST, a
bootstrap over queries for one-seed cells, and the Mantel permutation test of a rank
correlation against random center-to-class assignments (scipy.stats, statsmodels).

Every random draw uses a fixed seed, so the report stays a pure function of the records."""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import ttost_paired

ALPHA = 0.05
POWER = 0.8
BOOTSTRAP_RESAMPLES = 2000
PERMUTATIONS = 9999


def stable_seed(text: str) -> int:
    """A seed derived from a label (crc32: the same on every machine and Python run)."""
    return zlib.crc32(text.encode("utf-8"))


def _constant(values: np.ndarray) -> bool:
    """Zero spread: t is undefined (scipy would return NaN with a warning)."""
    return float(np.ptp(values)) <= 1e-12 * max(1.0, float(np.abs(values).max(initial=0.0)))


@dataclass(frozen=True)
class Stat:
    """Mean, sample std and 95 % t interval of per-seed values."""

    mean: float
    std: float
    n: int
    values: tuple[float, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        finite = [float(v) for v in values if not math.isnan(v)]
        if not finite:
            return cls(math.nan, math.nan, 0)
        array = np.asarray(finite, dtype=np.float64)
        std = float(array.std(ddof=1)) if len(array) > 1 else math.nan
        return cls(float(array.mean()), std, len(array), tuple(finite))

    @property
    def half_width(self) -> float:
        """Half the 95 % t interval of the mean (ttest_1samp's interval; NaN below two values,
        0 when every value is the same)."""
        if self.n < 2 or math.isnan(self.std):
            return math.nan
        array = np.asarray(self.values)
        if _constant(array):
            return 0.0
        ci = sps.ttest_1samp(array, 0.0).confidence_interval(1 - ALPHA)
        return float(ci.high - ci.low) / 2

    def text(self, digits: int = 2, show_n: bool = True) -> str:
        """"80.74 ± 1.23 (n=3)": mean ± sample std over seeds."""
        if self.n == 0:
            return "n/a"
        body = f"{self.mean:.{digits}f}"
        if self.n > 1:
            body += f" ± {self.std:.{digits}f}"
        return body + (f" (n={self.n})" if show_n else "")

    def cell_text(self) -> str:
        """"80.74 ± 1.23 (3)": the form numbers.json gives the README's cells."""
        return "n/a" if self.n == 0 else f"{self.text(show_n=False)} ({self.n})"

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
    """t over matching seeds of the differences d = a - b against a null value `null`: the
    two-sided p with its 95 % interval of the mean difference, the one-sided p of each
    direction (p_greater: H1 mean d > null; p_less: H1 mean d < null) and the one-sided 95 %
    lower confidence bound."""

    n: int
    mean_diff: float
    t: float
    p: float
    low: float
    high: float
    note: str = ""
    p_greater: float = math.nan
    p_less: float = math.nan
    lcb: float = math.nan
    sd: float = math.nan
    null: float = 0.0

    def text(self) -> str:
        if self.note:
            return f"{self.note} (n={self.n})"
        return f"t={self.t:.2f}, p={_p(self.p)}, n={self.n}"


def _p(p: float) -> str:
    return "n/a" if math.isnan(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def shifted_test(diffs: Sequence[float], null: float = 0.0) -> PairedTest:
    """ttest_1samp of per-seed differences against `null` in both directions (a shifted null
    tests a magnitude, e.g. a gain of at least the paper's lower bound). Fewer than two values
    or identical values give no t (the note says why)."""
    d = np.asarray([v for v in diffs if not math.isnan(v)], dtype=np.float64)
    n, nan = len(d), math.nan
    mean = float(d.mean()) if n else nan
    if n < 2:
        return PairedTest(n, mean, nan, nan, nan, nan, "n<2: not testable", null=null)
    sd = float(d.std(ddof=1))
    if _constant(d):
        return PairedTest(n, mean, nan, nan, mean, mean, "identical differences on every seed: t undefined",
                          sd=0.0, lcb=mean, null=null)
    two = sps.ttest_1samp(d, null)
    ci = two.confidence_interval(1 - ALPHA)
    greater = sps.ttest_1samp(d, null, alternative="greater")
    less = sps.ttest_1samp(d, null, alternative="less")
    return PairedTest(n, mean, float(two.statistic), float(two.pvalue), float(ci.low), float(ci.high), "",
                      float(greater.pvalue), float(less.pvalue),
                      float(greater.confidence_interval(1 - ALPHA).low), sd, null)


def paired_test(a: dict[int, float], b: dict[int, float]) -> PairedTest:
    """scipy.stats.ttest_rel over the seeds both sides have (two-sided and both one-sided p);
    the interval is ttest_rel's interval of the mean per-seed difference."""
    seeds = sorted(s for s in set(a) & set(b) if not (math.isnan(a[s]) or math.isnan(b[s])))
    diffs = [a[s] - b[s] for s in seeds]
    base = shifted_test(diffs)
    if base.note:
        return base
    xa, xb = [a[s] for s in seeds], [b[s] for s in seeds]
    two = sps.ttest_rel(xa, xb)
    ci = two.confidence_interval(1 - ALPHA)
    greater = sps.ttest_rel(xa, xb, alternative="greater")
    less = sps.ttest_rel(xa, xb, alternative="less")
    return PairedTest(len(seeds), base.mean_diff, float(two.statistic), float(two.pvalue), float(ci.low),
                      float(ci.high), "", float(greater.pvalue), float(less.pvalue),
                      float(greater.confidence_interval(1 - ALPHA).low), base.sd)


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """statsmodels' Holm step-down adjustment (method named: its default is Holm-Sidak); NaN
    entries are dropped first, stay NaN and do not count in the family size."""
    kept = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    adjusted = [math.nan] * len(p_values)
    if kept:
        values = multipletests([p_values[i] for i in kept], alpha=ALPHA, method="holm")[1]
        for i, value in zip(kept, values, strict=True):
            adjusted[i] = float(value)
    return adjusted


def seeds_for_power(delta: float, sd: float, power: float = POWER) -> float:
    """Seeds a one-sided paired t (alpha .05) needs to reach `power` at effect delta/sd
    (statsmodels TTestPower); inf when the effect is not in the claim's direction, NaN when
    sd is unknown."""
    if math.isnan(delta) or math.isnan(sd):
        return math.nan
    if delta <= 0:
        return math.inf
    if sd <= 0:
        return 2.0
    effect = delta / sd
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the root finder warns below n = 2 and returns NaN there
        n = float(np.asarray(TTestPower().solve_power(effect_size=effect, alpha=ALPHA, power=power,
                                                      alternative="larger")).item())
    if math.isnan(n):  # off the solver's bracket: count up from two seeds
        n = next((float(k) for k in range(2, 100_001) if power_at(delta, sd, k) >= power), math.inf)
    return float(max(2.0, math.ceil(n - 1e-9))) if math.isfinite(n) else math.inf


def power_at(delta: float, sd: float, n: int) -> float:
    """Power of a one-sided t at n seeds for effect delta/sd (NaN when not computable)."""
    if n < 2 or math.isnan(delta) or math.isnan(sd) or sd <= 0:
        return math.nan
    return float(TTestPower().power(effect_size=delta / sd, nobs=n, alpha=ALPHA, alternative="larger"))


@dataclass(frozen=True)
class Equivalence:
    """TOST of paired values within +-margin: p is the larger of the two one-sided p."""

    n: int
    mean_diff: float
    p: float
    margin: float

    @property
    def shown(self) -> bool:
        return not math.isnan(self.p) and self.p < ALPHA


def equivalence_test(a: Sequence[float], b: Sequence[float], margin: float) -> Equivalence:
    """statsmodels ttost_paired on a - b with bounds -margin, +margin (a 90 % interval inside
    the margin is what p < .05 means)."""
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = len(xa)
    mean = float((xa - xb).mean()) if n else math.nan
    if n < 2 or _constant(xa - xb):
        return Equivalence(n, mean, math.nan, margin)
    p = float(ttost_paired(xa, xb, -margin, margin)[0])
    return Equivalence(n, mean, p, margin)


def query_bootstrap_ci(values: np.ndarray, label: str, resamples: int = BOOTSTRAP_RESAMPLES
                       ) -> tuple[float, float]:
    """95 % percentile interval of the mean of per-query values (scipy.stats.bootstrap,
    resampling queries; NaN entries, i.e. queries left out of the mean, are dropped). The
    generator is seeded from `label`."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    if len(values) < 2:
        return math.nan, math.nan
    result = sps.bootstrap((values,), np.mean, n_resamples=resamples, method="percentile",
                           confidence_level=1 - ALPHA, rng=np.random.default_rng(stable_seed(label)),
                           batch=max(1, 2_000_000 // len(values)))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _pairs(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(size, k=1)


def center_similarity(centers: np.ndarray) -> np.ndarray:
    """Hamming similarity 1 - d/K of +-1 centers, [C, C]."""
    centers = np.asarray(centers, dtype=np.float64)
    bits = centers.shape[1]
    return (bits + centers @ centers.T) / (2.0 * bits)


@dataclass(frozen=True)
class MantelRun:
    """One run: Spearman's rho over class pairs, the mean of its permutation null (random
    center-to-class assignments) and the one-sided permutation p (descriptive, not graded)."""

    rho: float
    null_mean: float
    p: float
    permutations: int

    @property
    def shift(self) -> float:
        return self.rho - self.null_mean


def mantel_run(centers: np.ndarray, similarity: np.ndarray, label: str,
               permutations: int = PERMUTATIONS) -> MantelRun | None:
    """scipy.stats.permutation_test over the order of classes (one sample, "pairings"):
    permuting which class gets which center re-indexes rows and columns of the center
    similarity together (a Mantel test). The ranks are computed once and only re-indexed.
    None when the centers are equidistant or the similarity constant (rho undefined).

    Why integers: Spearman's rho is a monotone function of sum(rank_x * rank_y) once the ranks'
    sums are fixed (they are: a permutation only re-orders the pairs). Doubled average ranks are
    integers, so the statistic tested is an exact int64 dot product. A float statistic differs in
    its last bits between BLAS kernels (AVX2 against AVX-512 machines), and scipy's tie tolerance
    is relative to the observed value, so near rho = 0 the permuted assignments that tie with
    the observed one were miscounted, differently on each CPU. Exact ties count as "as extreme"."""
    size = len(centers)
    i, j = _pairs(size)
    x, y = center_similarity(centers)[i, j], np.asarray(similarity, dtype=np.float64)[i, j]
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    rank_x = np.zeros((size, size), dtype=np.int64)
    rank_x[i, j] = np.rint(2 * sps.rankdata(x)).astype(np.int64)
    rank_x = rank_x + rank_x.T
    rank_y = np.rint(2 * sps.rankdata(y)).astype(np.int64)

    def statistic(order: np.ndarray, axis: int = -1) -> np.ndarray:
        order = np.asarray(order, dtype=np.intp)
        return rank_x[order[..., i], order[..., j]] @ rank_y

    result = sps.permutation_test((np.arange(size),), statistic, permutation_type="pairings",
                                  vectorized=True, n_resamples=permutations, alternative="greater",
                                  rng=np.random.default_rng(stable_seed(label)),
                                  batch=max(1, 4_000_000 // max(1, len(i))))
    pairs, ranks_x = len(i), rank_x[i, j]
    sum_x, sum_y = int(ranks_x.sum()), int(rank_y.sum())
    spread = math.sqrt(float((pairs * int(ranks_x @ ranks_x) - sum_x ** 2)
                             * (pairs * int(rank_y @ rank_y) - sum_y ** 2)))
    null = np.asarray(result.null_distribution, dtype=np.int64)
    # rho = (P * dot - sum_x * sum_y) / spread, evaluated on Python integers (exact) so that no
    # reduction order is left to the machine; the null mean likewise from the exact sum.
    rho = float(pairs * int(result.statistic) - sum_x * sum_y) / spread
    null_mean = float(pairs * int(null.sum()) - len(null) * sum_x * sum_y) / (len(null) * spread)
    return MantelRun(rho, null_mean, float(result.pvalue), permutations)


@dataclass(frozen=True)
class CentersTest:
    """Runs of one cell: per-run rho and Mantel null mean; graded over seeds by a one-sided
    ttest_1samp of rho minus its null mean against 0 (the runs are the replication unit, not
    the permutations)."""

    runs: tuple[MantelRun, ...]
    test: PairedTest

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def per_run(self) -> tuple[float, ...]:
        return tuple(r.rho for r in self.runs)

    @property
    def observed(self) -> float:
        return float(np.mean(self.per_run))

    @property
    def null_mean(self) -> float:
        return float(np.mean([r.null_mean for r in self.runs]))

    @property
    def shifts(self) -> tuple[float, ...]:
        return tuple(r.shift for r in self.runs)

    @property
    def permutations(self) -> int:
        return self.runs[0].permutations

    @property
    def run_p(self) -> tuple[float, ...]:
        return tuple(r.p for r in self.runs)


def centers_test(runs: Sequence[tuple[np.ndarray, np.ndarray]], label: str,
                 permutations: int = PERMUTATIONS) -> CentersTest | None:
    """Each run is (centers [C, K], class similarity [C, C]); None when any run's correlation
    is undefined."""
    done = []
    for index, (centers, similarity) in enumerate(runs):
        run = mantel_run(centers, similarity, f"{label}|{index}", permutations)
        if run is None:
            return None
        done.append(run)
    return CentersTest(tuple(done), shifted_test([r.shift for r in done]))
