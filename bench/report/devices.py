"""The device check: GPU records kept apart from the tables, set beside their CPU twins.

A table's bit length runs on one device (docs/protocol.md): a GPU run of a spec is a further
sample, not a copy of the CPU run, because the summation order differs from the first step (and
the GPU may run convolutions in TF32). Where a length first ran on a lent GPU and then whole on
the CPU, the GPU records stay in `results/gpu-samples/runs/`, outside every table. Each has a
CPU twin with the same run id (same spec, seed, split, initial weights and data order), so the
pair measures what the device alone changes: the mean GPU - CPU difference over seeds with its
paired t interval, and the spread of those differences beside the seed-to-seed spread of the
CPU cell. A difference near zero with a spread of the seeds' size says the device acts as one
more seed-like source of noise, not as a bias. Where a whole bit length has GPU twins, its
methods form one family: Holm over their paired p says whether the device shifts any method,
and Kendall's tau between the two devices' method means says whether it reorders the table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from bench.report.analysis import Analysis
from bench.report.document import Doc
from bench.report.groups import scope_of
from bench.report.stats import ALPHA, PairedTest, holm_adjusted, paired_test
from bench.report.util import fmt_p, get, method_name, on_gpu, seed_of

SECTION = "Device check"
GPU_SAMPLES = "gpu-samples/runs"  # under the results folder


@dataclass(frozen=True)
class DeviceCheck:
    """One method x bit length of one table: its GPU samples against its counted CPU runs."""

    dataset: str
    table: str
    method: str
    bits: int
    gpu_name: str
    gpu: dict[int, float]  # seed -> mAP in points
    cpu: dict[int, float]
    test: PairedTest

    @property
    def seed_sd(self) -> float:
        """SD (ddof=1) over seeds of the CPU runs: the noise a seed brings, for scale."""
        values = list(self.cpu.values())
        return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


@dataclass(frozen=True)
class LengthCheck:
    """Every method with GPU twins at one bit length of one table, as one family."""

    dataset: str
    table: str
    bits: int
    checks: tuple[DeviceCheck, ...]
    holm: tuple[float, ...]  # Holm-adjusted two-sided p, one per check, over the length's methods

    @property
    def significant(self) -> int:
        """Methods whose mAP the device shifts, after Holm over the length's methods."""
        return sum(p < ALPHA for p in self.holm)

    @property
    def diff_range(self) -> tuple[float, float]:
        """Smallest and largest mean GPU − CPU difference over the length's methods."""
        diffs = [c.test.mean_diff for c in self.checks]
        return min(diffs), max(diffs)

    @property
    def rank_tau(self) -> float:
        """Kendall's tau-b between the devices' method means (over the seeds both have):
        1 when the GPU and the CPU order the methods alike."""
        if len(self.checks) < 2:
            return math.nan
        shared = [sorted(set(c.gpu) & set(c.cpu)) for c in self.checks]
        gpu = [np.mean([c.gpu[s] for s in seeds]) for c, seeds in zip(self.checks, shared, strict=True)]
        cpu = [np.mean([c.cpu[s] for s in seeds]) for c, seeds in zip(self.checks, shared, strict=True)]
        return float(sps.kendalltau(gpu, cpu).statistic)


def length_checks(checks: Sequence[DeviceCheck]) -> list[LengthCheck]:
    """Group the checks by (card, table, bit length), Holm over each group's paired p."""
    groups: dict[tuple[str, str, int], list[DeviceCheck]] = {}
    for check in checks:
        groups.setdefault((check.dataset, check.table, check.bits), []).append(check)
    return [LengthCheck(*key, tuple(group), tuple(holm_adjusted([c.test.p for c in group])))
            for key, group in sorted(groups.items())]


def device_checks(analysis: Analysis, samples: Sequence[dict]) -> list[DeviceCheck]:
    """Pair each complete GPU sample with the counted CPU record of the same run id."""
    counted = {r["run_id"]: r for r in analysis.included if not on_gpu(r)}
    pairs: dict[tuple, dict[str, dict[int, float]]] = {}
    names: dict[tuple, str] = {}
    for sample in samples:
        twin = counted.get(sample.get("run_id"))
        if sample.get("status") != "complete" or not on_gpu(sample) or twin is None:
            continue
        spec = twin["spec"]
        key = (str(spec["dataset"]), analysis.scope_label(scope_of(twin)), str(spec["method"]),
               int(spec["bits"]))
        side = pairs.setdefault(key, {"gpu": {}, "cpu": {}})
        side["gpu"][seed_of(sample)] = 100 * float(sample["metrics"]["mAP"])
        side["cpu"][seed_of(twin)] = 100 * float(twin["metrics"]["mAP"])
        names[key] = str(get(sample, "environment", "gpu", default="GPU"))
    return [DeviceCheck(*key, names[key], side["gpu"], side["cpu"], paired_test(side["gpu"], side["cpu"]))
            for key, side in sorted(pairs.items())]


def device_section(doc: Doc, checks: Sequence[DeviceCheck], samples: int) -> None:
    """The section, written only where GPU samples exist (other reports keep their bytes)."""
    if not samples:
        return
    doc.h(2, SECTION)
    doc.p(f"{samples} GPU record(s) under `results/{GPU_SAMPLES}/` stay outside every table: their "
          "bit length runs whole on the CPU, so that its paired comparisons stay on one device. Each "
          "shares its run id (spec, seed, split, initial weights, data order) with a CPU run, so the "
          "pair measures what the device alone changes. GPU − CPU in mAP points over the seeds both "
          "have, with the paired t interval; beside it the SD of those differences and the SD over "
          "seeds of the CPU cell: a difference near zero with an SD of the seeds' size is one more "
          "seed-like source of noise, not a bias.")
    if not checks:
        doc.p("No GPU record has a counted CPU twin yet: the check fills in as the CPU cells land.")
        return
    rows = []
    lengths = length_checks(checks)
    for length in lengths:
        for c, holm in zip(length.checks, length.holm, strict=True):
            t = c.test
            rows.append([c.table, method_name(c.method), str(c.bits), c.gpu_name, str(t.n),
                         f"{t.mean_diff:+.2f} [{t.low:+.2f}, {t.high:+.2f}]" if t.n > 1 else "–",
                         fmt_p(t.p), fmt_p(holm), f"{t.sd:.2f}" if t.n > 1 else "–",
                         f"{c.seed_sd:.2f}" if not math.isnan(c.seed_sd) else "–"])
    doc.table(["table", "method", "bits", "GPU", "seeds", "GPU − CPU, points [95 % CI]", "p (two-sided)",
               "Holm p (the length's methods)", "SD of differences", "seed SD (CPU)"], rows)
    whole = [length for length in lengths if len(length.checks) > 1]
    if whole:
        doc.p(" ".join(
            f"{length.table} at {length.bits} bits: {len(length.checks)} methods, mean differences from "
            f"{length.diff_range[0]:+.2f} to {length.diff_range[1]:+.2f} points, "
            f"{length.significant} of them significant after Holm; Kendall's tau between the devices' "
            f"method means {length.rank_tau:.2f} (1: the same order)." for length in whole))


def device_numbers(checks: Sequence[DeviceCheck]) -> dict[str, str]:
    """`device.<card>.<method>.<bits>.diff|low|high|p|n|sd|seed_sd` for the README, and per
    bit length with two or more methods `device.<card>.<bits>.methods|min|max|significant|tau`."""
    from bench.report.numbers import card_key

    out: dict[str, str] = {}
    for c in checks:
        if c.test.n < 2:
            continue
        key = f"device.{card_key(c.dataset)}.{c.method}.{c.bits}"
        out.update({f"{key}.diff": f"{c.test.mean_diff:+.2f}", f"{key}.low": f"{c.test.low:+.2f}",
                    f"{key}.high": f"{c.test.high:+.2f}", f"{key}.p": fmt_p(c.test.p),
                    f"{key}.n": str(c.test.n), f"{key}.sd": f"{c.test.sd:.2f}",
                    f"{key}.seed_sd": f"{c.seed_sd:.2f}"})
    for length in length_checks(checks):
        if len(length.checks) < 2:
            continue
        key = f"device.{card_key(length.dataset)}.{length.bits}"
        low, high = length.diff_range
        out.update({f"{key}.methods": str(len(length.checks)), f"{key}.min": f"{low:+.2f}",
                    f"{key}.max": f"{high:+.2f}", f"{key}.significant": str(length.significant),
                    f"{key}.tau": f"{length.rank_tau:.2f}"})
    return out
