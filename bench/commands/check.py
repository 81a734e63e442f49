"""`python -m bench check`: the CI regression gate.

Trains a small, fast subset (CRH and CSQ at 16 bits on the reduced Fashion-MNIST split, a
few epochs, seed 0) into a temporary directory and compares its metrics with the committed
baseline `bench/check_baseline.json`. A metric that drops more than its tolerance, or a run
that fails, fails the gate with a readable table. `--update` rewrites the baseline.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.errors import UserError

BASELINE = Path(__file__).resolve().parent.parent / "check_baseline.json"
GATE = {
    "dataset": "fashion-mnist-mini",
    "methods": ["crh", "csq"],
    "bits": [16],
    "seeds": [0],
    "protocol": "harmonised",
}
# Absolute drops tolerated before the gate fails. Same seed on the same CPU stack gives the
# same numbers; the slack absorbs float differences between CPUs and BLAS builds.
TOLERANCES = {"mAP": 0.03, "mAP_tie_aware": 0.03, "p_at_r2": 0.05}


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", default=str(BASELINE), help="baseline file to compare with")
    parser.add_argument("--update", action="store_true", help="rewrite the baseline from this run")
    parser.add_argument("--data-root", help="folder holding the Fashion-MNIST files")
    parser.add_argument("--keep", help="keep the gate's run records in this directory")


def gate_metrics(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{"crh 16b seed 0": {"mAP": ..., ...}} for the gate's complete runs."""
    table = {}
    for record in records:
        spec = record["spec"]
        key = f"{spec['method']} {spec['bits']}b seed {spec['seed']}"
        table[key] = {m: float(record["metrics"][m]) for m in TOLERANCES}
    return table


def compare(current: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]],
            tolerances: dict[str, float]) -> tuple[bool, list[str]]:
    """Rows of a readable diff and whether every metric is within tolerance of the baseline."""
    ok = True
    lines = [f"{'run':22s} {'metric':14s} {'baseline':>9s} {'now':>9s} {'change':>8s}  verdict"]
    for key in sorted(set(baseline) | set(current)):
        if key not in current:
            ok = False
            missing = f"{key:22s} {'-':14s} {'':>9s} {'missing':>9s} {'':>8s}"
            lines.append(f"{missing}  FAIL (run missing or failed)")
            continue
        if key not in baseline:
            lines.append(f"{key:22s} {'-':14s} {'missing':>9s} {'':>9s} {'':>8s}  new (not in baseline)")
            continue
        for metric, tolerance in tolerances.items():
            before, now = baseline[key][metric], current[key][metric]
            change = now - before
            verdict = "ok" if change >= -tolerance else f"FAIL (drop > {tolerance})"
            ok &= change >= -tolerance
            lines.append(f"{key:22s} {metric:14s} {before:9.4f} {now:9.4f} {change:+8.4f}  {verdict}")
    return ok, lines


def execute(args: argparse.Namespace) -> int:
    from bench.records import load_records, write_json_atomic
    from bench.runner import RunOptions, execute_runs
    from bench.spec import RunSpec

    baseline_path = Path(args.baseline)
    baseline = None
    if not args.update:
        try:
            baseline = json.loads(baseline_path.read_text())["runs"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserError(f"cannot read check baseline {baseline_path} ({error}); "
                            "create it with: python -m bench check --update") from None
    specs = [RunSpec(method=m, dataset=GATE["dataset"], bits=b, seed=s, protocol=GATE["protocol"])
             for m in GATE["methods"] for b in GATE["bits"] for s in GATE["seeds"]]
    with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
        results = Path(args.keep) if args.keep else Path(tmp)
        options = RunOptions(results_dir=results, data_root=args.data_root, device="cpu",
                             progress_bars=False, force=not args.keep)
        outcome = execute_runs(specs, options)
        records, _ = load_records(results, include_failed=False)
    current = gate_metrics(records)
    for identifier, reason in outcome.failed:
        print(f"run {identifier} failed: {reason}")
    if args.update:
        if outcome.failed:
            raise UserError("not updating the baseline: some gate runs failed")
        write_json_atomic(baseline_path, {"gate": GATE, "tolerances": TOLERANCES, "runs": current,
                                          "environment": records[0]["environment"] if records else {}})
        print(f"baseline written to {baseline_path}")
        for key, metrics in sorted(current.items()):
            print(f"  {key}: " + ", ".join(f"{m} {v:.4f}" for m, v in metrics.items()))
        return 0
    ok, lines = compare(current, baseline, TOLERANCES)
    print("\n".join(lines))
    print("regression gate: " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1
