"""Compact tables of stored runs (the `run` command's closing table and the quick report)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.records import load_records


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


def print_summary(results_dir: Path, run_ids: list[str] | None = None) -> None:
    records, _ = load_records(results_dir, include_failed=False)
    frame = runs_frame(records)
    if run_ids is not None and not frame.empty:
        frame = frame[frame["run_id"].isin(run_ids)]
    if frame.empty:
        return
    table = frame.groupby(["dataset", "protocol", "method", "bits"]).agg(
        mAP=("mAP", "mean"), tie_aware=("mAP_tie_aware", "mean"), p_r2=("p_at_r2", "mean"),
        seeds=("seed", "count"), train_s=("train_s", "mean"),
    )
    with pd.option_context("display.float_format", "{:.4f}".format, "display.width", 120):
        print(table.to_string())
