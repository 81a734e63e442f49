"""Published numbers (bench/published.yaml), flattened into rows."""

from __future__ import annotations

from pathlib import Path

from bench.data.cards import read_yaml
from bench.errors import UserError
from bench.report.util import PUBLISHED_FILE, method_sort_key


def load_published(path: Path = PUBLISHED_FILE) -> list[dict]:
    """Rows of dataset, method, bits, metric, value (None = not available), backbone, source,
    note."""
    data = read_yaml(path)
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise UserError(f"{path}: expected 'entries:' as a list of mappings")
    rows = []
    for entry in entries:
        values = entry.get("values") if isinstance(entry, dict) else None
        if not isinstance(values, dict) or not all(k in entry for k in ("method", "dataset", "source")):
            raise UserError(f"{path}: every entry needs method, dataset, source and values {{bits: value}}")
        for bits, value in values.items():
            number = None if value is None else float(value)
            rows.append({"dataset": str(entry["dataset"]), "method": str(entry["method"]), "bits": int(bits),
                         "metric": str(entry.get("metric", "mAP")), "value": number,
                         "backbone": str(entry.get("backbone", "")), "source": str(entry["source"]),
                         "note": str(entry.get("note", ""))})
    return sorted(rows, key=lambda r: (r["dataset"], method_sort_key(r["method"]), r["bits"], r["metric"]))
