"""Compact tables of stored runs (the `run` command's closing table and the quick report)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.runs.records import load_records


def runs_frame(records: list[dict]) -> pd.DataFrame:
    """One row per complete run with the headline metrics and timings."""
    rows = []
    for record in records:
        if record.get("status") != "complete":
            continue
        spec, metrics = record["spec"], record["metrics"]
        rows.append({
            "run_id": record["run_id"], "dataset": spec["dataset"], "method": spec["method"],
            "bits": spec["bits"], "seed": spec["seed"], "protocol": spec["protocol"],
            "mAP": metrics["mAP"], "mAP_tie_aware": metrics["mAP_tie_aware"],
            "p_at_r2": metrics["p_at_r2"], "best_epoch": record["selection"]["best_epoch"],
            "train_s": record["timings"]["train"], "total_s": record["timings"]["total"],
        })
    return pd.DataFrame(rows)


def print_summary(results_dir: Path, run_ids: list[str] | None = None) -> list[dict]:
    """Print the mean metrics per cell of the given runs; return their records."""
    records, _ = load_records(results_dir, include_failed=False)
    if run_ids is not None:
        wanted = set(run_ids)
        records = [r for r in records if r.get("run_id") in wanted]
    frame = runs_frame(records)
    if frame.empty:
        return records
    table = frame.groupby(["dataset", "protocol", "method", "bits"]).agg(
        mAP=("mAP", "mean"), tie_aware=("mAP_tie_aware", "mean"), p_r2=("p_at_r2", "mean"),
        seeds=("seed", "count"), train_s=("train_s", "mean"),
    )
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 120):
        print(table.to_string())
    return records


# ----------------------------------------------------------------------------- regression check
# A new seed is flagged when it falls outside the 95 % prediction interval of one more draw from
# the committed seeds, mean +- t(0.975, n-1) * sd * sqrt(1 + 1/n): the interval for a single new
# value, not the (narrower) interval for the mean, and honest about how little two seeds say.
PREDICTION_LEVEL = 0.95


def cell_key(record: dict) -> tuple:
    """What makes two runs the same configuration up to the seed: card, method, bits, protocol,
    split (the fixed split's seed, or the per-seed rule: there each seed's split seed is the seed
    itself, which is part of what a seed replicates), pretrained flag and the identifying part of
    the resolved configuration."""
    from bench.runs.identity import canonical_json
    from bench.runs.spec import config_identity, split_of

    spec = record["spec"]
    return (spec["dataset"], spec["method"], int(spec["bits"]), spec["protocol"],
            split_of(spec), bool(spec.get("pretrained")),
            canonical_json(config_identity(record.get("config") or {})))


def committed_cells(committed_dir: Path, pairs: set[tuple[str, str]]) -> dict[tuple, dict[int, dict]]:
    """Committed complete records of the given (card, method) pairs, by cell and seed."""
    from bench.runs.records import CorruptRecord, read_record, record_files

    cells: dict[tuple, dict[int, dict]] = {}
    for dataset, method in sorted(pairs):
        folder = Path(committed_dir) / "runs" / dataset / method
        for path in record_files(folder) if folder.is_dir() else []:
            try:
                record = read_record(path)
            except CorruptRecord:
                continue
            if record.get("status") == "complete":
                cells.setdefault(cell_key(record), {})[int(record["spec"]["seed"])] = record
    return cells


def regression_frame(new_records: list[dict], committed_dir: Path, same_folder: bool) -> pd.DataFrame:
    """Each new run's mAP beside the runs of the same configuration that were stored before this
    command: the same seed's value, the mean over those seeds and the 95 % prediction interval of
    one more seed, flagged when the new value lies outside it. Runs of this command never count
    as committed (a batch of new seeds is not its own reference); when the runs were stored in
    the committed folder itself (`same_folder`), a run is also kept out of its own comparison."""
    import numpy as np
    from scipy import stats

    complete = [r for r in new_records if r.get("status") == "complete"]
    batch = {r.get("run_id") for r in complete}
    cells = committed_cells(committed_dir, {(r["spec"]["dataset"], r["spec"]["method"]) for r in complete})
    rows = []
    for record in complete:
        seed, value = int(record["spec"]["seed"]), float(record["metrics"]["mAP"])
        by_seed = {s: r for s, r in cells.get(cell_key(record), {}).items()
                   if not (same_folder and r.get("run_id") in batch)}
        same = by_seed.get(seed)
        values = np.array([float(r["metrics"]["mAP"]) for s, r in by_seed.items() if s != seed])
        row = {"method": record["spec"]["method"], "bits": int(record["spec"]["bits"]), "seed": seed,
               "mAP": value, "committed_same_seed": None if same is None else float(same["metrics"]["mAP"]),
               "n": len(values), "mean": None, "pi95": None, "check": ""}
        if len(values) == 0:
            row["check"] = "no committed cell for this configuration"
        else:
            row["mean"] = float(values.mean())
            if len(values) >= 2:
                sd = float(values.std(ddof=1))
                t = float(stats.t.ppf(0.5 + PREDICTION_LEVEL / 2, len(values) - 1))
                half = t * sd * float(np.sqrt(1 + 1 / len(values)))
                row["pi95"] = (row["mean"] - half, row["mean"] + half)
                outside = abs(value - row["mean"]) > half
                row["check"] = "OUTSIDE the seeds' spread" if outside else "within the seeds' spread"
            else:
                row["check"] = "one committed seed: no spread to compare with"
        rows.append(row)
    return pd.DataFrame(rows)


def print_regression(new_records: list[dict], committed_dir: Path, same_folder: bool) -> None:
    """The closing regression check of `bench run` (see `regression_frame`)."""
    frame = regression_frame(new_records, committed_dir, same_folder)
    if frame.empty:
        return
    print(f"beside the runs of the same configuration stored before this command ({committed_dir}):")
    for row in frame.itertuples():
        same = ("" if row.committed_same_seed is None
                else f", committed seed {row.seed} {row.committed_same_seed:.4f}")
        if row.mean is None:
            print(f"  {row.method} {row.bits}b seed {row.seed}: mAP {row.mAP:.4f}{same}; {row.check}")
            continue
        interval = ("" if row.pi95 is None
                    else f", 95% prediction interval [{row.pi95[0]:.4f}, {row.pi95[1]:.4f}]")
        print(f"  {row.method} {row.bits}b seed {row.seed}: mAP {row.mAP:.4f}{same}; committed mean "
              f"{row.mean:.4f} over {row.n} other seeds{interval}: {row.check}")
