"""Tidy frames of runs: one row per run, one column per variable.

`claims_frame` holds the runs that count (complete, current code, not in a conflicting
configuration) with what the claim checks read; `runs_table` holds every record, counted or
not, flattened for reports/runs.csv so that users can do their own analysis with pandas."""

from __future__ import annotations

import io
import json
from typing import Any

import pandas as pd

from bench.report.ablations import effective
from bench.report.analysis import Analysis
from bench.report.groups import describe_variant, scope_of, variant_of
from bench.report.util import get, num, record_backbone, record_version, training_cost

CLAIM_COLUMNS = ("run_id", "card", "table", "primary", "protocol", "epochs", "method", "bits", "seed",
                 "variant", "settings", "group", "failed_seeds", "classes", "multi_label", "backbone",
                 "pretrained", "mAP", "mAP_tie_aware", "p_at_r2", "cost", "heads", "record")


def claims_frame(analysis: Analysis) -> pd.DataFrame:
    """The runs that count, with mAP-like metrics in points and cost in seconds. Runs whose
    training saw no labels are left out: no claim here is about them."""
    rows = []
    for index, group in enumerate(analysis.groups):
        scope = group.scope
        if scope.unsupervised:
            continue
        for seed, record in sorted(group.runs.items()):
            rows.append({
                "run_id": str(record.get("run_id")), "card": scope.dataset,
                "table": analysis.scope_label(scope), "primary": analysis.is_primary(scope),
                "protocol": scope.protocol, "epochs": scope.epochs, "method": group.method,
                "bits": group.bits, "seed": seed,
                "variant": "" if not group.variant else describe_variant(group.variant),
                "settings": {k: json.loads(v) for k, v in group.variant}, "group": index,
                "failed_seeds": group.failed_seeds,
                "classes": int(get(record, "task", "num_classes", default=0) or 0),
                "multi_label": bool(get(record, "task", "multi_label", default=False)),
                "backbone": record_backbone(record),
                "pretrained": bool(get(record, "spec", "pretrained", default=False)),
                "mAP": num(get(record, "metrics", "mAP")) * 100,
                "mAP_tie_aware": num(get(record, "metrics", "mAP_tie_aware")) * 100,
                "p_at_r2": num(get(record, "metrics", "p_at_r2")) * 100,
                "cost": training_cost(record), "heads": num(effective(record, "heads")),
                "record": record,
            })
    return pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))


def without_keys(settings: dict[str, Any], keys: tuple[str, ...]) -> str:
    """The settings other than `keys`, as a key: runs that differ only in `keys` share it."""
    return json.dumps({k: v for k, v in settings.items() if k not in keys}, sort_keys=True, default=str)


# ------------------------------------------------------------------------------------------
# reports/runs.csv
# ------------------------------------------------------------------------------------------

LEADING = ("run_id", "record_file", "status", "counted", "why_not_counted", "results_version", "dataset",
           "method", "bits", "seed", "protocol", "backbone", "pretrained", "split_seed", "split_digest",
           "table", "variant", "epochs", "metrics.mAP", "metrics.mAP_tie_aware", "metrics.p_at_r2")
FLATTENED = ("config", "metrics", "selection", "timings", "environment", "code", "task")


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _flat(record: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in FLATTENED:
        section = record.get(part)
        if not isinstance(section, dict):
            continue
        for key, value in section.items():
            if isinstance(value, dict) and part == "timings":
                for sub, inner in value.items():
                    if _scalar(inner):
                        out[f"{part}.{key}.{sub}"] = inner
            elif _scalar(value):
                out[f"{part}.{key}"] = value
    for key in ("started_at", "finished_at", "host", "device", "failure"):
        if _scalar(record.get(key)) and record.get(key) is not None:
            out[key] = record[key]
    return out


def runs_table(analysis: Analysis) -> pd.DataFrame:
    """Every record (counted or not), one row each: identity, settings, metrics, timings and
    environment; lists (curves, per-query AP) and nested method records are left out."""
    counted = {id(r) for g in analysis.groups for r in g.runs.values()}
    left_out = {id(r) for left, _ in analysis.conflicts for r in left.runs.values()}
    older, failed = {id(r) for r in analysis.older}, {id(r) for r in analysis.failed}
    rows = []
    for record in analysis.included + analysis.older + analysis.failed:
        spec = record.get("spec") or {}
        if id(record) in counted:
            why = ""
        elif id(record) in older:
            why = "older code"
        elif id(record) in failed:
            why = "failed"
        elif id(record) in left_out:
            why = "conflicting configuration"
        else:
            why = "duplicate seed"
        scope = scope_of(record)
        # the record's file under the results folder (load_for_report made it relative): a row
        # leads straight to the file that holds its full spec, seed, split and environment
        row = {"run_id": record.get("run_id"), "record_file": record.get("_path"),
               "status": record.get("status"), "counted": id(record) in counted,
               "why_not_counted": why, "results_version": record_version(record),
               "dataset": spec.get("dataset"), "method": spec.get("method"), "bits": spec.get("bits"),
               "seed": spec.get("seed"), "protocol": spec.get("protocol"),
               "backbone": record_backbone(record),
               "pretrained": spec.get("pretrained"), "split_seed": spec.get("split_seed"),
               "split_digest": get(record, "split", "digest"), "table": analysis.scope_label(scope),
               "variant": describe_variant(variant_of(record)), "epochs": get(record, "config", "epochs"),
               **_flat(record)}
        rows.append(row)
    rows.sort(key=lambda r: (str(r["dataset"]), str(r["method"]), str(r["run_id"])))
    columns = list(LEADING) + sorted({k for r in rows for k in r} - set(LEADING))
    frame = pd.DataFrame(rows, columns=columns)
    return frame


def runs_csv(analysis: Analysis) -> str:
    buffer = io.StringIO()
    frame = runs_table(analysis)
    frame.to_csv(buffer, index=False, lineterminator="\n", float_format=None)
    return buffer.getvalue()
