"""The device check: GPU records kept apart from the tables, set beside their CPU twins.

A table's bit length runs on one device (docs/protocol.md): a GPU run of a spec is a further
sample, not a copy of the CPU run, because the summation order differs from the first step (and
the GPU may run convolutions in TF32). Where a length first ran on a lent GPU and then whole on
the CPU, the GPU records stay in `results/gpu-samples/runs/`, outside every table. Each has a
CPU twin with the same run id (same spec, seed, split, initial weights and data order), so the
pair measures what the device alone changes: the mean GPU - CPU difference over seeds with its
paired t interval, and the spread of those differences beside the seed-to-seed spread of the
CPU cell. A difference near zero with a spread of the seeds' size says the device acts as one
more seed-like source of noise, not as a bias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.report.analysis import Analysis
from bench.report.document import Doc
from bench.report.groups import scope_of
from bench.report.stats import PairedTest, paired_test
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
    for c in checks:
        t = c.test
        rows.append([c.table, method_name(c.method), str(c.bits), c.gpu_name, str(t.n),
                     f"{t.mean_diff:+.2f} [{t.low:+.2f}, {t.high:+.2f}]" if t.n > 1 else "–",
                     fmt_p(t.p), f"{t.sd:.2f}" if t.n > 1 else "–",
                     f"{c.seed_sd:.2f}" if not math.isnan(c.seed_sd) else "–"])
    doc.table(["table", "method", "bits", "GPU", "seeds", "GPU − CPU, points [95 % CI]", "p (two-sided)",
               "SD of differences", "seed SD (CPU)"], rows)


def device_numbers(checks: Sequence[DeviceCheck]) -> dict[str, str]:
    """`device.<card>.<method>.<bits>.diff|low|high|p|n|sd|seed_sd` for the README."""
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
    return out
