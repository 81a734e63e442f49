"""Benchmark: isolated wall time of SHC against CRH, the secondary figure of the cost claim.

The cost claim is graded on counted work (`bench.training.work`); wall times of the sweeps
are measured under load (several runs sharing the cores) and cannot grade it. This command
times the two methods one run at a time, in ABAB order (SHC, CRH, SHC, CRH, ...: a slow drift
of the machine then hits both alike), each run in a fresh temporary results folder with one
thread, after one untimed warm-up run of each, and measures the cores busy with other work
for 2 s before and after each run. A pair with a run started above `--max-load` is kept in the
file but not counted. Per counted pair
the log-ratio log(t_SHC / t_CRH) is taken; its mean is tested (scipy, statsmodels) one-sided
against log(1.05) ("SHC costs more") and by TOST against +-log(1.05) (equivalent within
5 %), with the ratio's 90 % interval.

    python -m bench perf cost --pairs 6 --dataset fashion-mnist --bits 32
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MARGIN = 1.05  # the claim's and the equivalence test's +-5 %
ORDER = ("shc", "crh")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pairs", type=int, default=6, help="SHC/CRH pairs, run ABAB (default 6)")
    parser.add_argument("--dataset", default="fashion-mnist", help="card (default fashion-mnist)")
    parser.add_argument("--bits", type=int, default=32, help="code length (default 32)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the card's table)")
    parser.add_argument("--protocol", default="harmonised", help="protocol of both (default harmonised)")
    parser.add_argument("--max-load", type=float, default=0.5,
                        help="a pair whose run started while other work kept more than this many "
                             "cores busy (measured for 2 s before the run) is not counted (default 0.5)")
    parser.add_argument("--out", default=None,
                        help="result file (default: <results>/perf/cost-<host>-<date>.json)")
    parser.add_argument("--results", default=None, help="results folder (default results/)")


def schedule(pairs: int) -> list[tuple[int, str]]:
    """(pair, method) in ABAB order: SHC then CRH in every pair."""
    return [(pair, method) for pair in range(pairs) for method in ORDER]


def grade(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """Tests on the counted pairs' log-ratios log(t_SHC / t_CRH)."""
    from scipy import stats
    from statsmodels.stats.weightstats import DescrStatsW

    counted = [p for p in pairs if p["counted"]]
    logs = np.array([math.log(p["shc_seconds"] / p["crh_seconds"]) for p in counted])
    out: dict[str, Any] = {"pairs_counted": len(counted), "pairs_run": len(pairs), "margin": MARGIN}
    if len(logs) < 2:
        return {**out, "verdict": "not measurable (fewer than 2 counted pairs)"}
    bound = math.log(MARGIN)
    described = DescrStatsW(logs)
    p_more = float(stats.ttest_1samp(logs, bound, alternative="greater").pvalue)
    p_tost, _, _ = described.ttost_mean(-bound, bound)
    low, high = described.tconfint_mean(alpha=0.10)
    ratio = float(math.exp(logs.mean()))
    verdict = ("SHC costs more (ratio above 1.05)" if p_more < 0.05
               else "equivalent within 5 %" if p_tost < 0.05 else "not decided")
    return {**out, "ratio_geometric_mean": ratio, "ratio_ci90": [math.exp(low), math.exp(high)],
            "p_costs_more": p_more, "p_equivalent_tost": float(p_tost), "verdict": verdict}


def other_load(seconds: float = 2.0) -> float:
    """Cores busy with other work, measured from /proc/stat over `seconds` while this process
    waits (its own previous run would still weigh in the 1-minute load average)."""
    def sample() -> tuple[int, int]:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)
        return sum(values), idle

    try:
        total_a, idle_a = sample()
        time.sleep(seconds)
        total_b, idle_b = sample()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]  # no /proc: the load average, an upper bound
    busy = 1.0 - (idle_b - idle_a) / max(1, total_b - total_a)
    return busy * (os.cpu_count() or 1)


def measure(pairs: int, train: Callable[[str], dict[str, Any]], max_load: float,
            load: Callable[[], float] = other_load) -> list[dict[str, Any]]:
    """Run the schedule with `train(method)` -> {"seconds", "stages"}; a pair counts when
    neither of its runs started above `max_load` cores of other work (measured while this
    process waits, so its own runs do not count)."""
    rows: dict[int, dict[str, Any]] = {}
    for pair, method in schedule(pairs):
        before = load()
        timing = train(method)
        after = load()
        row = rows.setdefault(pair, {"pair": pair, "counted": True})
        row[f"{method}_seconds"] = float(timing["seconds"])
        row[f"{method}_stages"] = timing.get("stages", {})
        row[f"{method}_load"] = [before, after]
        if before > max_load:
            row["counted"] = False
            row["why_not_counted"] = f"{method} started at load {before:.2f} > {max_load}"
    return [rows[pair] for pair in sorted(rows)]


def _real_trainer(args: argparse.Namespace) -> Callable[[str], dict[str, Any]]:
    from bench.runs.spec import RunSpec
    from bench.training.train import train_and_evaluate

    overrides = (("epochs", args.epochs),) if args.epochs else ()

    def train(method: str) -> dict[str, Any]:
        spec = RunSpec(method, args.dataset, args.bits, 0, args.protocol, overrides=overrides)
        with tempfile.TemporaryDirectory() as folder:
            started = time.perf_counter()
            body = train_and_evaluate(spec, results_dir=Path(folder), progress_bars=False)
            seconds = time.perf_counter() - started
        timings = body["timings"]
        stages = {key: timings[key] for key in ("train", "validation", "encode", "evaluate", "method_setup")
                  if key in timings}
        stages.update({f"stage:{k}": v for k, v in (timings.get("method_stages") or {}).items()})
        return {"seconds": seconds, "stages": stages}

    return train


def run(args: argparse.Namespace) -> int:
    import torch

    from bench.errors import UserError
    from bench.runs.records import DEFAULT_RESULTS_DIR, write_bytes_atomic

    if args.pairs < 2:
        raise UserError(f"--pairs {args.pairs}: give at least 2 (a spread needs two pairs)")
    if args.epochs is None:
        from bench.data.loading import load_card
        from bench.sweeps.experiments import load_experiment

        card = load_card(args.dataset)
        table = load_experiment(card.table).settings.get("epochs") if card.table else None
        args.epochs = int(table) if table else None
    torch.set_num_threads(1)
    trainer = _real_trainer(args)
    for method in ORDER:  # untimed warm-up: imports, compiled kernels and file caches
        trainer(method)
    pairs = measure(args.pairs, trainer, args.max_load)
    result = {"benchmark": "perf cost", "dataset": args.dataset, "bits": args.bits, "epochs": args.epochs,
              "protocol": args.protocol, "host_cpu": _cpu(), "threads": 1, "order": "ABAB (SHC, CRH)",
              "max_load": args.max_load, "pairs": pairs, "grade": grade(pairs),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results = Path(args.results) if args.results else DEFAULT_RESULTS_DIR
    name = f"cost-{os.uname().nodename}-{result['date'][:10]}.json"
    out = Path(args.out) if args.out else results / "perf" / name
    write_bytes_atomic(out, (json.dumps(result, indent=1, sort_keys=True) + "\n").encode())
    g = result["grade"]
    for row in pairs:
        print(f"pair {row['pair']}: SHC {row['shc_seconds']:.1f} s, CRH {row['crh_seconds']:.1f} s"
              + ("" if row["counted"] else f"  (not counted: {row['why_not_counted']})"))
    if "ratio_geometric_mean" in g:
        print(f"SHC / CRH wall time: x{g['ratio_geometric_mean']:.3f} (90 % CI x{g['ratio_ci90'][0]:.3f} "
              f"to x{g['ratio_ci90'][1]:.3f}) over {g['pairs_counted']} pairs; p(costs more than x1.05) "
              f"{g['p_costs_more']:.3g}, TOST p(within 5 %) {g['p_equivalent_tost']:.3g}: {g['verdict']}")
    else:
        print(g["verdict"])
    print(f"written: {out}")
    return 0


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"
