"""`python -m bench check`: the CI regression gate.

Trains every registered method that takes images (a feature-only method such as MISH has no
run on an image card) at 16 bits on the reduced Fashion-MNIST card over a few seeds
(one torch thread per run, so the numbers do not depend on `--jobs`) into a temporary
directory, and compares each method's MEAN over those seeds with the committed baseline
`bench/check_baseline.json`. The check is two-sided: a mean that moved up by more than its
tolerance fails as surely as one that moved down (a leak or a skipped schedule shows up as an
"improvement"). A method that is in the baseline but did not run, a method or seed that ran
but is not in the baseline, or a baseline made for another gate configuration fails too.

Tolerance, per method and metric, from the seed spread measured when the baseline was made:
    tolerance = min(CAP, max(FLOOR, SIGMAS * s / sqrt(n)))
s = sample standard deviation over the n seeds (ddof = 1), so SIGMAS * s / sqrt(n) is SIGMAS
standard errors of the baseline mean. Rerunning the same code on the same kind of machine gives
the same numbers bit for bit (difference 0); the tolerance is there for another CPU or BLAS
build, whose float drift at worst re-draws a run like another seed would. FLOOR keeps a method
that happens to agree across seeds from failing on small drift. CAP (2.5 points) is below the
3-point change the gate must catch, so it catches one for every method; a method whose 3
standard errors exceed CAP (HashNet at this budget) is marked `capped` in the baseline and
named by the command: on another kind of CPU it may fail without a code change, and its
baseline should then be regenerated on the CI machine's kind.

`--update` retrains and rewrites the baseline (per-seed values, mean, spread, tolerance, the
gate's configuration and wall time). `--methods` checks a subset (the mutant check uses it);
the full gate is what CI runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.errors import UserError

BASELINE = Path(__file__).resolve().parent.parent / "check_baseline.json"
GATE: dict[str, Any] = {
    "dataset": "fashion-mnist-mini",
    "bits": 16,
    "seeds": [0, 1, 2, 3],
    "protocol": "harmonised",
    # Batches of 32: four times the optimizer steps of the card's default in the same epochs,
    # which makes every method's result far steadier across seeds (see the baseline's spread).
    "settings": {"batch_size": 32},
    "torch_threads": 1,
}
METRICS = ("mAP", "mAP_tie_aware", "p_at_r2")
SIGMAS = 3.0
FLOOR = 0.005
CAP = 0.025
CATCH = 0.03  # the change of one method's mean mAP the gate must always catch


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", default=str(BASELINE), help="baseline file to compare with")
    parser.add_argument("--update", action="store_true", help="retrain and rewrite the baseline")
    parser.add_argument("--methods", help="comma-separated subset of methods to check (default: all)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="parallel runs (default: 2, or 1 on a single core); numbers do not depend on it")
    parser.add_argument("--data-root", help="folder holding the Fashion-MNIST files")
    parser.add_argument("--keep", help="keep the gate's run records in this directory")


# ----------------------------------------------------------------------------- pure parts
def per_seed_metrics(records: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, float]]]:
    """{method: {seed: {metric: value}}} of the complete gate runs."""
    table: dict[str, dict[int, dict[str, float]]] = {}
    for record in records:
        spec = record["spec"]
        table.setdefault(spec["method"], {})[int(spec["seed"])] = {
            metric: float(record["metrics"][metric]) for metric in METRICS}
    return table


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def sample_std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    centre = mean(values)
    return math.sqrt(sum((v - centre) ** 2 for v in values) / (len(values) - 1))


def standard_errors(values: list[float]) -> float:
    """SIGMAS standard errors of the mean of `values`."""
    return SIGMAS * sample_std(values) / math.sqrt(len(values))


def tolerance(values: list[float]) -> float:
    """min(CAP, max(FLOOR, SIGMAS * s / sqrt(n))): see the module docstring."""
    return min(CAP, max(FLOOR, standard_errors(values)))


def summarise(per_seed: dict[str, dict[int, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """The baseline's entry for each method: per-seed values, mean, spread and tolerance."""
    methods = {}
    for method, seeds in sorted(per_seed.items()):
        ordered = [seeds[s] for s in sorted(seeds)]
        methods[method] = {
            "seeds": {str(s): seeds[s] for s in sorted(seeds)},
            "mean": {m: mean([v[m] for v in ordered]) for m in METRICS},
            "std": {m: sample_std([v[m] for v in ordered]) for m in METRICS},
            "tolerance": {m: tolerance([v[m] for v in ordered]) for m in METRICS},
            "capped": sorted(m for m in METRICS if standard_errors([v[m] for v in ordered]) > CAP),
        }
    return methods


def compare(current: dict[str, dict[int, dict[str, float]]], baseline: dict[str, Any],
            expected: list[str] | None = None, gate: dict[str, Any] | None = None) -> tuple[bool, list[str]]:
    """Whether every method's mean over the gate's seeds is within its tolerance of the
    baseline mean, both ways, plus the rows of a readable table.

    `current` is {method: {seed: {metric: value}}}; `baseline` the parsed baseline file;
    `expected` the methods that should have run (default: the baseline's and current's);
    `gate` the configuration the current runs used (default: GATE)."""
    gate = GATE if gate is None else gate
    ok = True
    header = f"{'method':20s} {'metric':14s} {'baseline':>9s} {'now':>9s} {'change':>8s} {'tol':>7s}  verdict"
    lines = [header]
    if baseline.get("gate") != gate:
        ok = False
        lines.append(f"FAIL: the baseline was made for another gate configuration ({baseline.get('gate')}); "
                     "regenerate it with: python -m bench check --update")
    known = baseline.get("methods", {})
    names = sorted(expected) if expected is not None else sorted(set(known) | set(current))
    seeds = [int(s) for s in gate["seeds"]]
    for name in names:
        if name not in known:
            ok = False
            lines.append(f"{name:20s} FAIL: not in the baseline (a new method? regenerate the baseline)")
            continue
        runs = current.get(name, {})
        missing = [s for s in seeds if s not in runs]
        extra = sorted(set(runs) - set(seeds))
        if missing or extra:
            ok = False
            what = f"seeds {missing} missing or failed" if missing else f"unexpected seeds {extra}"
            lines.append(f"{name:20s} FAIL: {what}")
            continue
        base_seeds = sorted(int(s) for s in known[name].get("seeds", {}))
        if base_seeds != seeds:
            ok = False
            lines.append(f"{name:20s} FAIL: baseline has seeds {base_seeds}, the gate runs {seeds}")
            continue
        for metric in METRICS:
            before = float(known[name]["mean"][metric])
            allowed = float(known[name]["tolerance"][metric])
            now = mean([runs[s][metric] for s in seeds])
            change = now - before
            good = abs(change) <= allowed
            ok &= good
            verdict = "ok" if good else ("FAIL (rose)" if change > 0 else "FAIL (fell)")
            lines.append(f"{name:20s} {metric:14s} {before:9.4f} {now:9.4f} {change:+8.4f} "
                         f"{allowed:7.4f}  {verdict}")
    return ok, lines


def baseline_payload(per_seed: dict[str, dict[int, dict[str, float]]], environment: dict[str, Any],
                     seconds: float) -> dict[str, Any]:
    return {
        "gate": GATE,
        "rule": f"tolerance = min({CAP}, max({FLOOR}, {SIGMAS} * s / sqrt(n))), s = sample std "
                f"(ddof 1) over the n seeds; two-sided on the mean over those seeds",
        "methods": summarise(per_seed),
        "environment": environment,
        "seconds": round(seconds, 1),
    }


def capped(payload: dict[str, Any]) -> list[str]:
    """Methods whose mAP spread over seeds asked for more than CAP."""
    return [name for name, entry in payload["methods"].items() if "mAP" in entry.get("capped", [])]


# ----------------------------------------------------------------------------- command
def gate_methods(requested: str | None) -> list[str]:
    from methods import available_methods, get_method

    everything = [m for m in available_methods() if "images" in get_method(m).inputs]
    if not requested:
        return everything
    chosen = [m.strip() for m in requested.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in everything]
    if unknown or not chosen:
        raise UserError(f"--methods {requested!r}: unknown {', '.join(unknown) or 'empty list'}; "
                        f"valid: {', '.join(everything)}")
    return chosen


def train_gate(methods: list[str], args: argparse.Namespace) -> tuple[Any, list[dict[str, Any]], float]:
    from bench.runs.records import load_records
    from bench.runs.spec import RunSpec
    from bench.sweeps.runner import RunOptions, execute_runs

    settings = tuple(sorted(GATE["settings"].items()))
    specs = [RunSpec(method=m, dataset=GATE["dataset"], bits=GATE["bits"], seed=s,
                     protocol=GATE["protocol"], overrides=settings)
             for m in methods for s in GATE["seeds"]]
    jobs = args.jobs if args.jobs is not None else min(2, os.cpu_count() or 1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-check-") as tmp:
        results = Path(args.keep) if args.keep else Path(tmp)
        options = RunOptions(results_dir=results, data_root=args.data_root, device="cpu",
                             progress_bars=False, force=not args.keep,
                             torch_threads=GATE["torch_threads"])
        outcome = execute_runs(specs, options, jobs=max(1, jobs))
        records, _ = load_records(results, include_failed=False)
    wanted = {(s.method, s.seed) for s in specs}
    records = [r for r in records if (r["spec"]["method"], r["spec"]["seed"]) in wanted
               and r["spec"]["dataset"] == GATE["dataset"]]
    return outcome, records, time.perf_counter() - started


def execute(args: argparse.Namespace) -> int:
    baseline_path = Path(args.baseline)
    methods = gate_methods(args.methods)
    if args.update and args.methods:
        raise UserError("--update rewrites the whole baseline: drop --methods")
    baseline = None
    if not args.update:
        try:
            baseline = json.loads(baseline_path.read_text())
            baseline["methods"]  # noqa: B018 - the file must hold this section
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UserError(f"cannot read check baseline {baseline_path} ({error!r}); "
                            "create it with: python -m bench check --update") from None
    outcome, records, seconds = train_gate(methods, args)
    for identifier, reason in outcome.failed:
        print(f"run {identifier} failed: {reason}")
    current = per_seed_metrics(records)
    print(f"gate: {len(records)} runs ({len(methods)} methods x {len(GATE['seeds'])} seeds) "
          f"in {seconds:.0f} s")
    if args.update:
        if outcome.failed or outcome.aborted:
            raise UserError("not updating the baseline: some gate runs failed")
        from bench.runs.records import write_json_atomic

        environment = dict(records[0]["environment"]) if records else {}
        if records and "numerics" in records[0]:
            # how the runs computed (see bench.network.numerics)
            environment["numerics"] = records[0]["numerics"]
        payload = baseline_payload(current, environment, seconds)
        write_json_atomic(baseline_path, payload)
        print(f"baseline written to {baseline_path}")
        for name, entry in payload["methods"].items():
            print(f"  {name:20s} mAP {entry['mean']['mAP']:.4f}  s {entry['std']['mAP']:.4f}  "
                  f"tolerance {entry['tolerance']['mAP']:.4f}")
        for name in capped(payload):
            print(f"note: {name}'s mAP varies by {payload['methods'][name]['std']['mAP']:.4f} over seeds; "
                  f"its tolerance is capped at {CAP} (see bench/commands/check.py)")
        return 0
    assert baseline is not None
    ok, lines = compare(current, baseline, expected=methods)
    print("\n".join(lines))
    for name in capped(baseline):
        if name in methods:
            print(f"note: {name}'s tolerance is capped below its seed spread: on another kind of CPU "
                  "it may fail without a code change (regenerate the baseline there)")
    print("regression gate: " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1
