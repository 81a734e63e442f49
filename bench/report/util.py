"""Small shared helpers of the report: record access, number formatting, method names.

Nothing here reads the clock, the environment or absolute paths (the report is a pure
function of the records)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # bench/: claims.yaml, published.yaml
CLAIMS_FILE = PACKAGE_DIR / "claims.yaml"
PUBLISHED_FILE = PACKAGE_DIR / "published.yaml"

METHOD_ORDER = ("crh", "csq", "dpn", "hashnet", "shc")
DISPLAY_NAMES = {"crh": "CRH", "csq": "CSQ", "dpn": "DPN", "hashnet": "HashNet", "shc": "SHC",
                 "orthohash": "OrthoHash", "mds": "MDS", "hclm": "HCLM", "idch": "IDCH", "mlh": "MLH",
                 "ics": "ICS", "lbhash": "LBHash", "cgat": "CgAT", "lsh": "LSH", "itq": "ITQ",
                 "cimon": "CIMON"}
# Methods shown as reference rows (set apart from the hashing methods, never "best").
FLOOR_METHOD = "classify-then-hash"
REFERENCE_METHODS = (FLOOR_METHOD,)
MAIN_METRICS = (("mAP", "mAP"), ("mAP_tie_aware", "tie-aware mAP"), ("p_at_r2", "P@r≤2"))


def method_name(method: str) -> str:
    return DISPLAY_NAMES.get(method, method)


def reconstruction_unknowns(records: Iterable[dict]) -> dict[str, str]:
    """What the records' method left unread (`method_api.reconstruction`: unknown -> what was
    assumed); empty for a method read from its paper or code."""
    unknowns: dict[str, str] = {}
    for record in records:
        unknowns.update(get(record, "method_api", "reconstruction", default=None) or {})
    return unknowns


def method_sort_key(method: str) -> tuple[int, str]:
    """Paper's method first, then baselines, then others, reference methods last."""
    if method in REFERENCE_METHODS:
        return (len(METHOD_ORDER) + 1, method)
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def get(data: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data


def on_gpu(record: dict) -> bool:
    """The run trained on a CUDA device, as its record's environment says (CPU when unsaid)."""
    return str(get(record, "environment", "device", default="cpu")).startswith("cuda")


def num(value: Any) -> float:
    """A finite float, or NaN for missing / null / non-numeric values."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def jsonable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def fmt_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_signed(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.{digits}f}"


def fmt_value(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def fmt_ci(low: float, high: float, digits: int = 2, signed: bool = False) -> str:
    if math.isnan(low) or math.isnan(high):
        return "n/a"
    f = fmt_signed if signed else fmt_value
    return f"[{f(low, digits)}, {f(high, digits)}]"


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def fmt_seeds(seeds: Iterable[int]) -> str:
    seeds = list(seeds)
    return "{" + ", ".join(str(s) for s in seeds) + "}" if seeds else "{}"


def seed_of(record: dict) -> int:
    return int(get(record, "spec", "seed", default=0))


def record_version(record: dict) -> Any:
    return get(record, "code", "results_version")


def metric(name: str) -> Callable[[dict], float]:
    return lambda record: num(get(record, "metrics", name))


def metric_points(name: str) -> Callable[[dict], float]:
    """A metric in percent points (mAP-like values are stored as fractions); a dotted name reads
    a nested value (`precision_at_k.value`)."""
    path = name.split(".")
    return lambda record: num(get(record, "metrics", *path)) * 100


PRECISION_AT_K = "precision_at_k.value"  # a card's second headline metric (`precision_at` in the card)


def precision_metric(records: Iterable[dict]) -> tuple[str, str] | None:
    """(key, title) of the precision@k the records carry (the card declares k), or None."""
    ks = sorted({int(k) for r in records if (k := get(r, "metrics", "precision_at_k", "k")) is not None})
    return (PRECISION_AT_K, "P@" + "/".join(map(str, ks))) if ks else None


def training_cost(record: dict, parts: Sequence[str] = ("method_setup", "train", "method_hooks")) -> float:
    """Seconds of everything that trains: the method's stages, the epochs, its hooks."""
    values = [num(get(record, "timings", part)) for part in parts]
    values = [v for v in values if not math.isnan(v)]
    return float(sum(values)) if values else math.nan


def timing(name: str) -> Callable[[dict], float]:
    return lambda record: num(get(record, "timings", name))


def seconds_per_epoch(record: dict) -> float:
    values = [num(entry.get("train_seconds")) for entry in record.get("history") or []]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def per_query_ap(record: dict) -> np.ndarray | None:
    """Per-query AP in query order (None entries = queries left out under zero_relevant=drop,
    as NaN), or None for records written before the loop stored it."""
    values = get(record, "metrics", "per_query_ap")
    if not isinstance(values, list) or not values:
        return None
    return np.asarray([math.nan if v is None else float(v) for v in values], dtype=np.float64)


@lru_cache(maxsize=64)
def card_info(dataset: str) -> dict[str, Any]:
    """What the dataset card in this checkout says (backbone, title, ground truth); {} when
    there is no such card. Used only where a record does not say it itself."""
    try:
        from bench.data.loading import load_card

        card = load_card(dataset)
    except (UserError, OSError, ImportError, ValueError, TypeError, KeyError):
        return {}
    info: dict[str, Any] = {"backbone": card.backbone, "title": card.title,
                            "num_classes": card.num_classes, "multi_label": card.multi_label}
    declared = getattr(card, "ground_truth_similarity", None)
    if callable(declared):
        try:
            matrix = declared()
        except (UserError, OSError, ImportError, ValueError, TypeError, KeyError):
            matrix = None
        if matrix is not None:
            info["ground_truth"] = np.asarray(matrix, dtype=np.float64)
            info["ground_truth_measure"] = str((getattr(card, "ground_truth", {}) or {}).get(
                "measure", f"declared by the {dataset} card"))
    return info


def record_backbone(record: dict) -> str:
    spec = record.get("spec") or {}
    return str(spec.get("backbone") or get(record, "task", "backbone")
               or card_info(str(spec.get("dataset"))).get("backbone") or "?")
