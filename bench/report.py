"""The reproduction report: tables, figures and claim verdicts as a pure function of run records.

    records (+ corrupt-file problems, claims.yaml, published.yaml)
      -> analyze()          which runs count, grouped into comparable cells with seed sets
      -> build_report()     a document (headings, paragraphs, tables, figure plans) + verdicts
      -> render_markdown() / render_figures() / render_html()
      -> write_report()     reports/report.md, report.html (images inline), figures/*.png,
                            verdicts.json

Nothing here reads the clock, the environment or absolute paths, so the same records give
byte-identical files (figures are drawn with fixed rc settings and no PNG metadata).

What counts. Only complete records written by the current code (`code.results_version ==
bench.RESULTS_VERSION`) enter the numbers. Records from older code, failed runs, corrupt
files and cells whose seed set is incomplete are listed in "Data quality" and kept out.

How runs are grouped. A *scope* is what makes numbers comparable: dataset, protocol, the
epoch count and any overridden training setting, backbone/split seed when not default, and
the split digest. Inside a scope a *group* is one method x bit length x configuration; its
*variant* is how the method-specific configuration differs from the method's defaults (empty
for the main comparison; CRH's ablations are variants). A group's seeds are checked against
the *expected seed set* of the table it is shown in: the most common seed set there. A group
missing one of those seeds is incomplete and is shown as such instead of being averaged.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import RESULTS_VERSION
from bench.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent
CLAIMS_FILE = PACKAGE_DIR / "claims.yaml"
PUBLISHED_FILE = PACKAGE_DIR / "published.yaml"

METHOD_ORDER = ("crh", "csq", "dpn", "hashnet", "shc")
DISPLAY_NAMES = {"crh": "CRH", "csq": "CSQ", "dpn": "DPN", "hashnet": "HashNet", "shc": "SHC"}
CENTER_METHODS = ("csq", "shc", "crh")
MAIN_METRICS = (("mAP", "mAP"), ("mAP_tie_aware", "tie-aware mAP"), ("p_at_r2", "P@r≤2"))

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
NOT_MEASURABLE = "not measurable with the data present"
VERDICTS = (HOLDS, DOES_NOT_HOLD, NOT_MEASURABLE)

# Training settings shared by all methods: an overridden one is part of a run's scope.
_SCOPE_SPEC_DEFAULTS = (("backbone", None), ("pretrained", False), ("split_seed", 0))


# ==========================================================================================
# Small helpers
# ==========================================================================================


def method_name(method: str) -> str:
    return DISPLAY_NAMES.get(method, method)


def method_sort_key(method: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER), method)


def _get(data: Any, *keys: str, default: Any = None) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return default
        data = data[key]
    return data


def _num(value: Any) -> float:
    """A finite float, or NaN for missing / null / non-numeric values."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _jsonable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def fmt_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def fmt_signed(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.{digits}f}"


def fmt_value(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def fmt_seconds(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def in_all(count: int, word: str) -> str:
    """"in the one comparison" / "in all 3 comparisons"."""
    return f"in the one {word}" if count == 1 else f"in all {count} {word}s"


def significance_note(tests: Sequence[PairedTest], alpha: float = 0.05) -> str:
    """How many of the comparisons are significant in the claimed direction."""
    good = sum(1 for t in tests if not math.isnan(t.p) and t.p < alpha and t.mean_diff > 0)
    return f"{good} of {len(tests)} significant at paired-t p < {alpha:g}"


def fmt_seeds(seeds: Iterable[int]) -> str:
    seeds = list(seeds)
    return "{" + ", ".join(str(s) for s in seeds) + "}" if seeds else "{}"


def _seed_of(record: dict) -> int:
    return int(_get(record, "spec", "seed", default=0))


def _bits_of(record: dict) -> int:
    return int(_get(record, "spec", "bits", default=0))


def record_version(record: dict) -> Any:
    return _get(record, "code", "results_version")


# ==========================================================================================
# Statistics
# ==========================================================================================


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        finite = [v for v in values if not math.isnan(v)]
        if not finite:
            return cls(math.nan, math.nan, 0)
        array = np.asarray(finite, dtype=np.float64)
        std = float(array.std(ddof=1)) if len(array) > 1 else math.nan
        return cls(float(array.mean()), std, len(array))

    def scaled(self, factor: float) -> Stat:
        return Stat(self.mean * factor, self.std * factor, self.n)

    def text(self, digits: int = 2, show_n: bool = True) -> str:
        if self.n == 0:
            return "n/a"
        body = f"{self.mean:.{digits}f}"
        if self.n > 1:
            body += f" ± {self.std:.{digits}f}"
        return body + (f" (n={self.n})" if show_n else "")


@dataclass(frozen=True)
class PairedTest:
    """scipy.stats.ttest_rel over matching seeds: a - b."""

    n: int
    mean_diff: float
    t: float
    p: float
    note: str = ""

    def text(self) -> str:
        if self.note:
            return f"{self.note} (n={self.n})"
        return f"t={self.t:.2f}, {fmt_p(self.p)}, n={self.n}"


def paired_test(a: dict[int, float], b: dict[int, float]) -> PairedTest:
    seeds = sorted(s for s in set(a) & set(b) if not (math.isnan(a[s]) or math.isnan(b[s])))
    diffs = np.asarray([a[s] - b[s] for s in seeds], dtype=np.float64)
    mean_diff = float(diffs.mean()) if len(diffs) else math.nan
    if len(seeds) < 2:
        return PairedTest(len(seeds), mean_diff, math.nan, math.nan, "n<2: not testable")
    if float(np.ptp(diffs)) <= 1e-12 * max(1.0, abs(mean_diff)):
        return PairedTest(len(seeds), mean_diff, math.nan, math.nan,
                          "identical differences on every seed: t undefined")
    from scipy.stats import ttest_rel

    result = ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
    return PairedTest(len(seeds), mean_diff, float(result.statistic), float(result.pvalue))


def expected_seed_set(seed_sets: Sequence[Iterable[int]]) -> tuple[int, ...]:
    """The seeds a table expects of every cell: those present (or attempted: a failed run
    counts) in more than half of its cells. A seed that only a minority of cells has is an
    extra seed there; a seed most cells have but one lacks makes that cell incomplete."""
    sets = [set(s) for s in seed_sets]
    if not sets:
        return ()
    counts = Counter(seed for s in sets for seed in s)
    return tuple(sorted(seed for seed, count in counts.items() if count * 2 > len(sets)))


# ==========================================================================================
# Grouping records
# ==========================================================================================


@dataclass(frozen=True, order=True)
class Scope:
    """What makes numbers comparable (see the module docstring)."""

    dataset: str
    protocol: str
    settings: tuple[tuple[str, str], ...]
    digest: str

    def describe(self, with_digest: bool = False) -> str:
        parts = [self.dataset, f"{self.protocol} protocol"]
        parts += [f"{key}={json.loads(value)}" for key, value in self.settings]
        if with_digest:
            parts.append(f"split {self.digest[:8]}")
        return " · ".join(parts)

    @property
    def slug(self) -> str:
        base = re.sub(r"[^a-z0-9]+", "-", f"{self.dataset}-{self.protocol}".lower()).strip("-")
        tag = hashlib.sha256(_jsonable([self.settings, self.digest]).encode()).hexdigest()[:6]
        return f"{base}-{tag}"


def scope_of(record: dict) -> Scope:
    from methods.base import TRAINING_PARAMS

    spec, config = record.get("spec") or {}, record.get("config") or {}
    settings: dict[str, Any] = {"epochs": config.get("epochs")}
    for key in sorted(spec.get("overrides") or {}):
        if key in TRAINING_PARAMS and key in config:
            settings[key] = config[key]
    for key, default in _SCOPE_SPEC_DEFAULTS:
        if spec.get(key, default) != default:
            settings[key] = spec.get(key)
    digest = str(_get(record, "split", "digest", default="") or "")
    return Scope(str(spec.get("dataset")), str(spec.get("protocol")),
                 tuple(sorted((k, _jsonable(v)) for k, v in settings.items())), digest[:12])


_DEFAULTS_CACHE: dict[tuple[str, str], dict[str, Any] | None] = {}


def method_defaults(method: str, protocol: str) -> dict[str, Any] | None:
    """The method-specific settings a run of `method` has when nothing overrides them, from
    the method registry (None when the method is not registered in this code)."""
    key = (method, protocol)
    if key not in _DEFAULTS_CACHE:
        try:
            from methods import get_method

            cls = get_method(method)
        except UserError:
            _DEFAULTS_CACHE[key] = None
        else:
            defaults = {name: param.default for name, param in cls.params.items()}
            if protocol == "native":
                defaults.update({k: v for k, v in cls.native.items() if k in defaults})
            _DEFAULTS_CACHE[key] = defaults
    return _DEFAULTS_CACHE[key]


def variant_of(record: dict) -> tuple[tuple[str, str], ...]:
    """Method-specific settings that differ from the method's defaults (empty: main run)."""
    from methods.base import TRAINING_PARAMS

    spec, config = record.get("spec") or {}, record.get("config") or {}
    defaults = method_defaults(str(spec.get("method")), str(spec.get("protocol")))
    if defaults is not None:
        diff = {k: config[k] for k in sorted(defaults) if k in config and config[k] != defaults[k]}
    else:  # unknown method: trust the overrides the run was started with
        diff = {k: config[k] for k in sorted(spec.get("overrides") or {})
                if k in config and k not in TRAINING_PARAMS}
    return tuple((k, _jsonable(v)) for k, v in sorted(diff.items()))


def describe_variant(variant: tuple[tuple[str, str], ...]) -> str:
    if not variant:
        return "defaults"
    return ", ".join(f"{k}={json.loads(v)}" for k, v in variant)


@dataclass
class Group:
    """One method x bit length x configuration inside a scope; its runs by seed."""

    scope: Scope
    method: str
    bits: int
    variant: tuple[tuple[str, str], ...]
    config_key: str
    runs: dict[int, dict] = field(default_factory=dict)
    failed_seeds: tuple[int, ...] = ()  # seeds of this configuration whose run failed

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(sorted(self.runs))

    @property
    def attempted(self) -> tuple[int, ...]:
        """Seeds that were run, successfully or not (what a table's seed set is judged on)."""
        return tuple(sorted(set(self.runs) | set(self.failed_seeds)))

    @property
    def first(self) -> dict:
        return self.runs[self.seeds[0]]

    @property
    def config(self) -> dict:
        return self.first.get("config") or {}

    def values(self, getter: Callable[[dict], float], seeds: Iterable[int]) -> dict[int, float]:
        return {s: getter(self.runs[s]) for s in seeds}

    def sort_key(self) -> tuple:
        return (self.scope, method_sort_key(self.method), self.bits, self.variant, self.config_key)


@dataclass(frozen=True)
class Cell:
    """A group judged against the seed set expected where it is shown."""

    group: Group
    expected: tuple[int, ...]

    @property
    def complete(self) -> bool:
        return bool(self.expected) and set(self.expected) <= set(self.group.runs)

    @property
    def used(self) -> tuple[int, ...]:
        return self.expected if self.complete else ()

    @property
    def missing(self) -> tuple[int, ...]:
        return tuple(s for s in self.expected if s not in self.group.runs)

    @property
    def extra(self) -> tuple[int, ...]:
        return tuple(s for s in self.group.seeds if s not in self.expected)

    def records(self) -> list[dict]:
        return [self.group.runs[s] for s in self.used]

    def values(self, getter: Callable[[dict], float]) -> dict[int, float]:
        return self.group.values(getter, self.used)

    def stat(self, getter: Callable[[dict], float]) -> Stat:
        return Stat.of(self.values(getter).values())

    def provisional(self, getter: Callable[[dict], float]) -> Stat:
        """Mean over whatever seeds exist (only ever shown labelled as incomplete)."""
        return Stat.of(getter(r) for r in self.group.runs.values())

    def status_text(self) -> str:
        if self.complete:
            return "complete"
        return f"incomplete: {len(self.expected) - len(self.missing)} of {len(self.expected)} seeds"


def metric(name: str) -> Callable[[dict], float]:
    return lambda record: _num(_get(record, "metrics", name))


def metric_points(name: str) -> Callable[[dict], float]:
    """A metric in percent points (mAP-like values are stored as fractions)."""
    return lambda record: _num(_get(record, "metrics", name)) * 100


def training_cost(record: dict, parts: Sequence[str] = ("method_setup", "train", "method_hooks")) -> float:
    timings = record.get("timings") or {}
    values = [_num(timings.get(part)) for part in parts]
    values = [v for v in values if not math.isnan(v)]
    return float(sum(values)) if values else math.nan


def _timing(name: str) -> Callable[[dict], float]:
    return lambda record: _num(_get(record, "timings", name))


def seconds_per_epoch(record: dict) -> float:
    values = [_num(entry.get("train_seconds")) for entry in record.get("history") or []]
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


# ------------------------------------------------------------------------------------------
# Main comparison tables
# ------------------------------------------------------------------------------------------


@dataclass
class MainTable:
    scope: Scope
    expected: dict[int, tuple[int, ...]]  # bits -> seeds every cell of that bit length should have
    cells: dict[tuple[str, int], Cell]
    only_failed: dict[tuple[str, int], tuple[int, ...]] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return sorted({m for m, _ in self.cells} | {m for m, _ in self.only_failed}, key=method_sort_key)

    @property
    def bits(self) -> list[int]:
        return sorted({b for _, b in self.cells} | {b for _, b in self.only_failed})

    def cell(self, method: str, bits: int) -> Cell | None:
        return self.cells.get((method, bits))

    def complete(self, method: str, bits: int) -> Cell | None:
        cell = self.cells.get((method, bits))
        return cell if cell is not None and cell.complete else None


# Settings that only change how long (and how often validated) a schedule runs: two main tables
# that differ in nothing else show whether the shorter schedule had converged.
SCHEDULE_KEYS = ("epochs", "eval_every")


@dataclass(frozen=True)
class ScheduleComparison:
    """One method x bit length measured under a shorter and a longer schedule, on the seeds
    both have (the longer schedule is usually run on fewer seeds)."""

    short: Cell
    long: Cell
    seeds: tuple[int, ...]

    @property
    def method(self) -> str:
        return self.short.group.method

    @property
    def bits(self) -> int:
        return self.short.group.bits

    def epochs(self, cell: Cell) -> int:
        return _scope_epochs(cell.group.scope)

    def mean(self, cell: Cell, getter: Callable[[dict], float]) -> float:
        return Stat.of(cell.group.values(getter, self.seeds).values()).mean

    def gain(self, getter: Callable[[dict], float]) -> float:
        return self.mean(self.long, getter) - self.mean(self.short, getter)

    def long_best_epochs(self) -> list[Any]:
        return [_get(self.long.group.runs[s], "selection", "best_epoch") for s in self.seeds]


def _schedule_free(scope: Scope) -> tuple:
    return (scope.dataset, scope.protocol, scope.digest,
            tuple((k, v) for k, v in scope.settings if k not in SCHEDULE_KEYS))


def _scope_epochs(scope: Scope) -> int:
    value = dict(scope.settings).get("epochs")
    return int(json.loads(value) or 0) if value is not None else 0


def schedule_comparisons(analysis: Analysis) -> list[ScheduleComparison]:
    """Main-table cells whose scopes differ only in the schedule (epoch count, validation
    cadence), paired on common seeds, shorter schedule first."""
    out = []
    scopes = sorted(analysis.main, key=lambda s: (_schedule_free(s), _scope_epochs(s), s))
    for i, short_scope in enumerate(scopes):
        for long_scope in scopes[i + 1:]:
            if (_schedule_free(long_scope) != _schedule_free(short_scope)
                    or _scope_epochs(long_scope) <= _scope_epochs(short_scope)):
                continue
            short_table, long_table = analysis.main[short_scope], analysis.main[long_scope]
            for key, long_cell in sorted(long_table.cells.items(), key=lambda kv: (method_sort_key(kv[0][0]),
                                                                                   kv[0][1])):
                short_cell = short_table.cells.get(key)
                if short_cell is None:
                    continue
                common = tuple(sorted(set(short_cell.group.runs) & set(long_cell.group.runs)))
                if common:
                    out.append(ScheduleComparison(short_cell, long_cell, common))
    return out


# ------------------------------------------------------------------------------------------
# CRH ablations
# ------------------------------------------------------------------------------------------

# name -> (config keys whose values identify a setting, title)
CRH_DIMENSIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "heads": (("heads",), "head count H"),
    "reassignment": (("reassign", "reassign_every", "reassign_warmup"), "reassignment interval (epochs)"),
    "solver": (("solver",), "assignment solver"),
    "codebook_ratio": (("codebook_ratio",), "codebook ratio M/C"),
}


def crh_settings(record: dict) -> dict:
    """The effective values CRH used (its record's `settings_used`), else {}."""
    method = record.get("method") or {}
    for key in ("settings_used", "settings", "effective"):
        if isinstance(method.get(key), dict):
            return method[key]
    return {}


def _effective(record: dict, key: str) -> Any:
    value = crh_settings(record).get(key)
    if value is None:
        value = _get(record, "method", key)
    if value is None:
        value = (record.get("config") or {}).get(key)
    return value


def _pretty(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def dimension_value(dim: str, record: dict) -> tuple[str, tuple]:
    """(label, sort key) of a CRH run's setting on one ablation dimension; effective values
    come from the run's own record where the configuration left a default rule (None)."""
    config = record.get("config") or {}
    if dim == "heads":
        heads = _effective(record, "heads")
        number = _num(heads)
        label = f"H={_pretty(heads) if heads is not None else '?'}"
        return label, (number if not math.isnan(number) else 1e9,)
    if dim == "reassignment":
        mode = config.get("reassign", _effective(record, "reassign"))
        if mode == "never":
            return "never", (0, 0, 0)
        every, warmup = _effective(record, "reassign_every"), _effective(record, "reassign_warmup")
        label = f"every {_pretty(every)}" if every is not None else "scheduled"
        if warmup:
            label += f", warm-up {_pretty(warmup)}"
        every_n, warm_n = _num(every), _num(warmup)
        every_n = every_n if not math.isnan(every_n) else 1e9
        return label, (1, every_n, warm_n if not math.isnan(warm_n) else 0)
    if dim == "codebook_ratio":
        ratio = config.get("codebook_ratio", _effective(record, "codebook_ratio"))
        size = _effective(record, "codebook_size")
        label = _pretty(ratio) + (f" (M={_pretty(size)})" if size is not None else "")
        number = _num(ratio)
        return label, (number if not math.isnan(number) else 1e9, label)
    value = config.get(dim)
    number = _num(value)
    return _pretty(value), (0 if not math.isnan(number) else 1, number if not math.isnan(number) else 0,
                            _jsonable(value))


@dataclass(frozen=True)
class Point:
    label: str
    sort_key: tuple
    identity: tuple
    is_default: bool
    is_reference: bool
    cell: Cell


@dataclass
class Panel:
    """One series of an ablation: CRH runs at one bit length that differ only in `dim`.
    `context` names the other settings where they are not the reference (the default
    configuration), e.g. "heads=4" for a codebook-ratio sweep run at a fixed head count."""

    dim: str
    bits: int
    context: str
    points: list[Point]

    def point(self, label: str) -> Point | None:
        return next((p for p in self.points if p.label.rstrip("*") == label.rstrip("*")), None)

    @property
    def series(self) -> str:
        return f"{self.bits} bits" + (f", {self.context}" if self.context else "")


@dataclass
class CrhAblations:
    scope: Scope
    dims: dict[str, tuple[tuple[str, ...], str]]
    panels: dict[str, list[Panel]]  # dim -> series (reference context first within a bit length)
    unplaced: list[Group]

    def varied(self, dim: str) -> list[Panel]:
        return [p for p in self.panels.get(dim, []) if len(p.points) > 1]

    def reference_panel(self, dim: str, bits: int) -> Panel | None:
        return next((p for p in self.panels.get(dim, []) if p.bits == bits and not p.context), None)


def _identity(group: Group, keys: Sequence[str]) -> tuple:
    return tuple(_jsonable(group.config.get(k)) for k in keys)


def _context_label(dims: dict[str, tuple[tuple[str, ...], str]], context: dict[str, tuple],
                   reference: dict[str, tuple]) -> str:
    parts = []
    for dim, identity in context.items():
        for key, value, ref in zip(dims[dim][0], identity, reference[dim], strict=True):
            if value != ref:
                parts.append(f"{key}={_pretty(json.loads(value))}")
    return ", ".join(parts)


def build_crh_ablations(scope: Scope, groups: list[Group]) -> CrhAblations | None:
    """Recognise CRH's ablations from its runs' configurations: for each dimension, runs at
    one bit length that agree on every other dimension form a series."""
    crh = [g for g in groups if g.method == "crh"]
    if not crh:
        return None
    dims = dict(CRH_DIMENSIONS)
    named_keys = {k for keys, _ in dims.values() for k in keys}
    for key in sorted({k for g in crh for k, _ in g.variant} - named_keys):
        dims[key] = ((key,), key)
    defaults = method_defaults("crh", scope.protocol)
    panels: dict[str, list[Panel]] = {dim: [] for dim in dims}
    placed: set[int] = set()
    for bits in sorted({g.bits for g in crh}):
        at_bits = [g for g in crh if g.bits == bits]
        main = next((g for g in at_bits if not g.variant), None)
        reference: dict[str, tuple] = {}
        for dim, (keys, _) in dims.items():
            if main is not None:
                reference[dim] = _identity(main, keys)
            elif defaults is not None:
                reference[dim] = tuple(_jsonable(defaults.get(k)) for k in keys)
            else:
                counts = Counter(_identity(g, keys) for g in at_bits)
                reference[dim] = sorted(counts, key=lambda i: (-counts[i], i))[0]
        for dim, (keys, _) in dims.items():
            series: dict[tuple, list[Group]] = {}
            for group in at_bits:
                context = tuple(_identity(group, k2) for d2, (k2, _) in dims.items() if d2 != dim)
                series.setdefault(context, []).append(group)
            reference_context = tuple(reference[d2] for d2 in dims if d2 != dim)
            ordered = sorted(series.items(), key=lambda kv: (kv[0] != reference_context, kv[0]))
            for context, members in ordered:
                if context != reference_context and len({_identity(g, keys) for g in members}) < 2:
                    continue
                expected = expected_seed_set([g.attempted for g in members])
                points = []
                for g in members:
                    label, sort_key = dimension_value(dim, g.first)
                    identity = _identity(g, keys)
                    is_default = (defaults is not None
                                  and identity == tuple(_jsonable(defaults.get(k)) for k in keys))
                    points.append(Point(label + ("*" if is_default else ""), sort_key, identity, is_default,
                                        identity == reference[dim], Cell(g, expected)))
                    if len(members) > 1:
                        placed.add(id(g))
                points.sort(key=lambda p: (p.sort_key, p.label))
                others = dict(zip([d2 for d2 in dims if d2 != dim], context, strict=True))
                label = "" if context == reference_context else _context_label(dims, others, reference)
                panels[dim].append(Panel(dim, bits, label, points))
    unplaced = sorted((g for g in crh if id(g) not in placed and g.variant), key=Group.sort_key)
    return CrhAblations(scope, dims, panels, unplaced)


# ------------------------------------------------------------------------------------------
# The analysis: everything the report and the verdicts read
# ------------------------------------------------------------------------------------------


@dataclass
class Analysis:
    included: list[dict]
    older: list[dict]
    failed: list[dict]
    problems: list[str]
    groups: list[Group]
    conflicts: list[tuple[Group, Group]]  # (left out, kept)
    main: dict[Scope, MainTable]
    crh: dict[Scope, CrhAblations]
    multi_digest: set[str]

    @property
    def scopes(self) -> list[Scope]:
        return sorted({g.scope for g in self.groups})

    def scope_label(self, scope: Scope) -> str:
        return scope.describe(with_digest=scope.dataset in self.multi_digest)

    def groups_in(self, scope: Scope) -> list[Group]:
        return [g for g in self.groups if g.scope == scope]


def _record_sort_key(record: dict) -> tuple:
    return (str(record.get("run_id", "")), str(record.get("_path", "")))


def analyze(records: Sequence[dict], problems: Sequence[str] = (),
            results_version: Any = RESULTS_VERSION) -> Analysis:
    """Sort records into what counts and what is shown apart, and group what counts."""
    included, older, failed = [], [], []
    problems = list(problems)
    for record in sorted(records, key=_record_sort_key):
        spec = record.get("spec")
        if not isinstance(spec, dict) or any(spec.get(k) is None for k in ("dataset", "method", "bits")):
            where = record.get("_path") or record.get("run_id")
            problems.append(f"{where}: spec lacks dataset, method or bits")
        elif record_version(record) != results_version:
            older.append(record)
        elif record.get("status") != "complete" or not isinstance(record.get("metrics"), dict):
            failed.append(record)
        else:
            included.append(record)

    by_key: dict[tuple, Group] = {}
    for record in included:
        spec = record["spec"]
        scope = scope_of(record)
        key = (scope, spec["method"], int(spec["bits"]), variant_of(record),
               _jsonable(record.get("config") or {}))
        group = by_key.setdefault(key, Group(scope, spec["method"], int(spec["bits"]), key[3], key[4]))
        group.runs.setdefault(_seed_of(record), record)

    # Two configurations with the same scope/method/bits/variant (a training setting changed
    # without an override): keep the one with more seeds, list the other.
    kept: dict[tuple, Group] = {}
    conflicts: list[tuple[Group, Group]] = []
    for group in sorted(by_key.values(), key=lambda g: (g.sort_key()[:4], -len(g.runs), g.config_key)):
        slot = (group.scope, group.method, group.bits, group.variant)
        if slot in kept:
            conflicts.append((group, kept[slot]))
        else:
            kept[slot] = group
    groups = sorted(kept.values(), key=Group.sort_key)

    # Failed runs tell which seeds a configuration was meant to have (they carry no split
    # digest, so they are matched on everything else).
    failed_seeds: dict[tuple, set[int]] = {}
    for record in failed:
        if not isinstance(record.get("spec"), dict):
            continue
        spec, scope = record["spec"], scope_of(record)
        key = (scope.dataset, scope.protocol, scope.settings, spec.get("method"), int(spec.get("bits", 0)),
               variant_of(record))
        failed_seeds.setdefault(key, set()).add(_seed_of(record))
    for group in groups:
        key = (group.scope.dataset, group.scope.protocol, group.scope.settings, group.method, group.bits,
               group.variant)
        group.failed_seeds = tuple(sorted(failed_seeds.get(key, set()) - set(group.runs)))

    digests: dict[str, set[str]] = {}
    for group in groups:
        digests.setdefault(group.scope.dataset, set()).add(group.scope.digest)
    multi_digest = {d for d, values in digests.items() if len(values) > 1}

    main: dict[Scope, MainTable] = {}
    crh: dict[Scope, CrhAblations] = {}
    for scope in sorted({g.scope for g in groups}):
        in_scope = [g for g in groups if g.scope == scope]
        main_groups = [g for g in in_scope if not g.variant]
        if main_groups:
            # Seeds are paired within a bit length, so each bit length has its own seed set.
            expected = {bits: expected_seed_set([g.attempted for g in main_groups if g.bits == bits])
                        for bits in sorted({g.bits for g in main_groups})}
            cells = {(g.method, g.bits): Cell(g, expected[g.bits]) for g in main_groups}
            only_failed = {(k[3], k[4]): tuple(sorted(v)) for k, v in failed_seeds.items()
                           if k[:3] == (scope.dataset, scope.protocol, scope.settings) and not k[5]
                           and (k[3], k[4]) not in cells}
            main[scope] = MainTable(scope, expected, cells, only_failed)
        ablations = build_crh_ablations(scope, in_scope)
        if ablations is not None:
            crh[scope] = ablations
    return Analysis(included, older, failed, problems, groups, conflicts, main, crh, multi_digest)


# ==========================================================================================
# Claims
# ==========================================================================================


@dataclass(frozen=True)
class ClaimResult:
    id: str
    claim: str
    source: str
    how: str
    verdict: str
    summary: str
    evidence: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "claim": self.claim, "verdict": self.verdict, "summary": self.summary,
                "evidence": list(self.evidence), "source": self.source}


CheckOutcome = tuple[str, str, list[str]]


def _where(analysis: Analysis, scope: Scope, bits: int) -> str:
    return f"{analysis.scope_label(scope)} · {bits} bits"


def check_beats_baselines(analysis: Analysis, params: dict) -> CheckOutcome:
    getter = metric_points(params.get("metric", "mAP"))
    baselines = [b for b in params.get("baselines", []) if b != "crh"]
    alpha = float(params.get("alpha", 0.05))
    min_seeds = int(params.get("min_seeds", 1))
    evidence, losses, compared, significant, best_rel = [], 0, 0, 0, -math.inf
    seen_baselines, seen_bits = set(), set()
    for scope, table in analysis.main.items():
        for bits in table.bits:
            crh = table.complete("crh", bits)
            if crh is None:
                continue
            for baseline in baselines:
                other = table.complete(baseline, bits)
                if other is None:
                    continue
                # A pair is compared on every seed both have (a superset of the table's seed
                # set when, say, a follow-up added seeds for the two leading methods only).
                common = sorted(set(crh.group.runs) & set(other.group.runs))
                if len(common) < min_seeds:
                    evidence.append(f"{_where(analysis, scope, bits)}: CRH vs {method_name(baseline)} not "
                                    f"counted, {plural(len(common), 'common seed')} (the verdict needs at "
                                    f"least {min_seeds})")
                    continue
                a, b = crh.group.values(getter, common), other.group.values(getter, common)
                test = paired_test(a, b)
                mean_a, mean_b = Stat.of(a.values()).mean, Stat.of(b.values()).mean
                diff = mean_a - mean_b
                rel = diff / mean_b * 100 if mean_b else math.nan
                compared += 1
                seen_baselines.add(baseline)
                seen_bits.add(bits)
                if not diff > 0:
                    losses += 1
                if not math.isnan(test.p) and test.p < alpha and diff > 0:
                    significant += 1
                if not math.isnan(rel):
                    best_rel = max(best_rel, rel)
                outcome = "CRH higher" if diff > 0 else "CRH not higher"
                evidence.append(
                    f"{_where(analysis, scope, bits)}: CRH {mean_a:.2f} vs {method_name(baseline)} "
                    f"{mean_b:.2f} ({fmt_signed(diff)} points, {fmt_signed(rel, 1)} % relative; "
                    f"{test.text()}) — {outcome}"
                )
    if not compared:
        return NOT_MEASURABLE, ("no table has CRH and a baseline both with a complete seed set "
                                "at the same bit length"), evidence
    missing = [method_name(b) for b in baselines if b not in seen_baselines]
    coverage = (f"at {', '.join(map(str, sorted(seen_bits)))} bits against "
                f"{', '.join(method_name(b) for b in baselines if b in seen_baselines)}; "
                f"{significant} of {compared} significant at paired-t p < {alpha:g}")
    if missing:
        coverage += f"; not measured: {', '.join(missing)}"
    evidence.append(f"{significant} of {compared} differences favour CRH at paired-t p < {alpha:g}; "
                    f"largest relative gain {fmt_signed(best_rel, 1)} % (paper: up to +6.6 %)")
    if losses:
        return DOES_NOT_HOLD, f"CRH is not higher in {losses} of {compared} comparisons ({coverage})", \
            evidence
    return HOLDS, f"CRH is higher {in_all(compared, 'comparison')} ({coverage})", evidence


def _panel_pairs(analysis: Analysis, dim: str) -> Iterable[tuple[Scope, Panel]]:
    for scope, ablations in sorted(analysis.crh.items()):
        for panel in ablations.panels.get(dim, []):
            yield scope, panel


def _where_panel(analysis: Analysis, scope: Scope, panel: Panel) -> str:
    return _where(analysis, scope, panel.bits) + (f" ({panel.context})" if panel.context else "")


def check_reassignment_gain(analysis: Analysis, params: dict) -> CheckOutcome:
    getter = metric_points(params.get("metric", "mAP"))
    low, high = (list(params.get("paper_range", [math.nan, math.nan])) + [math.nan, math.nan])[:2]
    min_gain = float(params.get("min_gain", 0.0))
    evidence, gains, tests = [], [], []
    for scope, panel in _panel_pairs(analysis, "reassignment"):
        never = panel.point("never")
        with_reassign = next((p for p in panel.points if p.is_default), None) or next(
            (p for p in panel.points if p.is_reference and p.label != "never"), None)
        if never is None or with_reassign is None:
            continue
        if not (never.cell.complete and with_reassign.cell.complete):
            evidence.append(f"{_where_panel(analysis, scope, panel)}: left out, incomplete seed set "
                            f"({never.cell.status_text()} / {with_reassign.cell.status_text()})")
            continue
        a, b = with_reassign.cell.values(getter), never.cell.values(getter)
        test = paired_test(a, b)
        gain = Stat.of(a.values()).mean - Stat.of(b.values()).mean
        gains.append(gain)
        tests.append(test)
        inside = "inside" if low <= gain <= high else "outside"
        evidence.append(f"{_where_panel(analysis, scope, panel)}: {with_reassign.label} "
                        f"{Stat.of(a.values()).mean:.2f} vs never {Stat.of(b.values()).mean:.2f}: "
                        f"gain {fmt_signed(gain)} points "
                        f"({test.text()}; {inside} the paper's {low:+.2f} to {high:+.2f})")
    if not gains:
        return NOT_MEASURABLE, ("no complete pair of CRH runs with the default reassignment and with "
                                "reassign=never under otherwise equal settings"), evidence
    span = (f"gains {min(gains):+.2f} to {max(gains):+.2f} points over {plural(len(gains), 'comparison')}, "
            f"{significance_note(tests)}; paper {low:+.2f} to {high:+.2f}")
    if all(g > min_gain for g in gains):
        return HOLDS, f"reassignment helps everywhere measured ({span})", evidence
    return DOES_NOT_HOLD, f"reassignment does not help everywhere ({span})", evidence


def check_multi_head(analysis: Analysis, params: dict) -> CheckOutcome:
    getter = metric_points(params.get("metric", "mAP"))
    evidence, diffs, tests = [], [], []
    for scope, panel in _panel_pairs(analysis, "heads"):
        def heads_of(point: Point) -> float:
            return _num(_effective(point.cell.group.first, "heads"))

        single = next((p for p in panel.points if heads_of(p) == 1), None)
        multi_points = [p for p in panel.points if heads_of(p) > 1]
        if single is None or not multi_points:
            continue
        multi = next((p for p in multi_points if p.is_reference), None) or sorted(
            multi_points, key=lambda p: (-len(p.cell.group.runs), heads_of(p)))[0]
        if not (single.cell.complete and multi.cell.complete):
            evidence.append(f"{_where_panel(analysis, scope, panel)}: left out, incomplete seed set")
            continue
        a, b = multi.cell.values(getter), single.cell.values(getter)
        diff = Stat.of(a.values()).mean - Stat.of(b.values()).mean
        diffs.append(diff)
        tests.append(paired_test(a, b))
        others = ", ".join(f"{p.label} {p.cell.stat(getter).mean:.2f}" for p in multi_points
                           if p is not multi and p.cell.complete)
        evidence.append(f"{_where_panel(analysis, scope, panel)}: {multi.label} "
                        f"{Stat.of(a.values()).mean:.2f} vs "
                        f"H=1 {Stat.of(b.values()).mean:.2f} ({fmt_signed(diff)} points; "
                        f"{tests[-1].text()})" + (f"; other head counts: {others}" if others else ""))
    if not diffs:
        return NOT_MEASURABLE, ("no complete pair of CRH runs with one head and with several heads "
                                "under otherwise equal settings"), evidence
    if all(d > 0 for d in diffs):
        return HOLDS, (f"several heads beat one head {in_all(len(diffs), 'comparison')} "
                       f"({significance_note(tests)})"), evidence
    worse = sum(1 for d in diffs if not d > 0)
    summary = (f"several heads do not beat one head in {worse} of {len(diffs)} comparisons "
               f"({significance_note(tests)})")
    return DOES_NOT_HOLD, summary, evidence


def semantics_score(record: dict, score: str) -> float:
    return _num(_get(record, "center_semantics", score))


def check_center_semantics(analysis: Analysis, params: dict) -> CheckOutcome:
    score = params.get("score", "spearman")
    threshold = float(params.get("min_correlation", 0.0))
    evidence, means = [], []
    for scope, table in analysis.main.items():
        for bits in table.bits:
            crh = table.complete("crh", bits)
            if crh is None:
                continue
            stat = crh.stat(lambda r: semantics_score(r, score))
            if stat.n == 0:
                evidence.append(f"{_where(analysis, scope, bits)}: CRH records hold no {score} score")
                continue
            means.append(stat.mean)
            contrast = []
            csq = table.complete("csq", bits)
            if csq is not None:
                csq_stat = csq.stat(lambda r: semantics_score(r, score))
                contrast.append(f"CSQ {csq_stat.text(3)}" if csq_stat.n else
                                "CSQ undefined (equidistant centers)")
            ablations = analysis.crh.get(scope)
            panel = ablations.reference_panel("reassignment", bits) if ablations else None
            never = panel.point("never") if panel else None
            if never is not None and never.cell.complete:
                never_stat = never.cell.stat(lambda r: semantics_score(r, score))
                contrast.append(f"CRH never-reassigned {never_stat.text(3)}")
            evidence.append(f"{_where(analysis, scope, bits)}: CRH {score} {stat.text(3)}"
                            + (f"; contrast: {'; '.join(contrast)}" if contrast else ""))
    if not means:
        return NOT_MEASURABLE, f"no complete CRH cell with a {score} center-semantics score", evidence
    if all(m > threshold for m in means):
        cells = in_all(len(means), "CRH cell")
        return HOLDS, (f"mean {score} correlation above {threshold:g} {cells} "
                       f"(range {min(means):.3f} to {max(means):.3f})"), evidence
    below = sum(1 for m in means if not m > threshold)
    return DOES_NOT_HOLD, (f"mean {score} correlation not above {threshold:g} in {below} of {len(means)} "
                           f"CRH cells (range {min(means):.3f} to {max(means):.3f})"), evidence


def check_two_stage_cost(analysis: Analysis, params: dict) -> CheckOutcome:
    two_stage = params.get("two_stage", "shc")
    parts = tuple(params.get("timings", ("method_setup", "train", "method_hooks")))
    evidence, ratios = [], []
    for scope, table in analysis.main.items():
        for bits in table.bits:
            crh, other = table.complete("crh", bits), table.complete(two_stage, bits)
            if crh is None or other is None:
                continue
            crh_cost = crh.stat(lambda r: training_cost(r, parts))
            other_cost = other.stat(lambda r: training_cost(r, parts))
            if crh_cost.n == 0 or other_cost.n == 0:
                continue
            ratio = other_cost.mean / crh_cost.mean if crh_cost.mean > 0 else math.inf
            ratios.append(ratio)
            devices = sorted({str(_get(r, "environment", "device", default=r.get("device", "?")))
                              for r in crh.records() + other.records()})
            stages = _stage_text(other)
            evidence.append(f"{_where(analysis, scope, bits)}: {method_name(two_stage)} "
                            f"{crh_cost_text(other_cost)} ({stages}) vs CRH {crh_cost_text(crh_cost)}: "
                            f"x{ratio:.2f}; "
                            f"device {', '.join(devices)}")
    if not ratios:
        return NOT_MEASURABLE, (f"no table has both {method_name(two_stage)} and CRH with a complete seed "
                                "set at the same bit length"), evidence
    if all(r > 1 for r in ratios):
        return HOLDS, (f"{method_name(two_stage)} costs more {in_all(len(ratios), 'comparison')} "
                       f"(x{min(ratios):.2f} to x{max(ratios):.2f})"), evidence
    return DOES_NOT_HOLD, (f"{method_name(two_stage)} does not cost more in "
                           f"{sum(1 for r in ratios if not r > 1)} of {len(ratios)} comparisons "
                           f"(x{min(ratios):.2f} to x{max(ratios):.2f})"), evidence


def crh_cost_text(stat: Stat) -> str:
    return f"{stat.mean:.1f} s" if stat.n else "n/a"


def _stage_text(cell: Cell) -> str:
    stages: dict[str, list[float]] = {}
    for record in cell.records():
        for name, value in sorted((_get(record, "timings", "method_stages") or {}).items()):
            stages.setdefault(name, []).append(_num(value))
        stages.setdefault("hash network", []).append(_num(_get(record, "timings", "train")))
    return ", ".join(f"{name} {Stat.of(v).mean:.1f} s" for name, v in stages.items())


CHECKS: dict[str, Callable[[Analysis, dict], CheckOutcome]] = {
    "beats_baselines": check_beats_baselines,
    "reassignment_gain": check_reassignment_gain,
    "multi_head": check_multi_head,
    "center_semantics": check_center_semantics,
    "two_stage_cost": check_two_stage_cost,
}


def evaluate_claims(analysis: Analysis, claims: Sequence[dict]) -> list[ClaimResult]:
    results = []
    for claim in claims:
        check = CHECKS.get(str(claim.get("check")))
        if check is None:
            verdict, summary, evidence = NOT_MEASURABLE, f"unknown check '{claim.get('check')}'", []
        else:
            verdict, summary, evidence = check(analysis, dict(claim.get("params") or {}))
        results.append(ClaimResult(str(claim.get("id")), str(claim.get("claim", "")),
                                   str(claim.get("source", "")), " ".join(str(claim.get("how", "")).split()),
                                   verdict, summary, tuple(evidence)))
    return results


def load_claims(path: Path = CLAIMS_FILE) -> list[dict]:
    data = _read_yaml(path)
    claims = data.get("claims") if isinstance(data, dict) else None
    if not isinstance(claims, list) or not all(isinstance(c, dict) and "id" in c and "check" in c
                                               for c in claims):
        raise UserError(f"{path}: expected 'claims:' as a list of mappings with 'id' and 'check'")
    unknown = sorted({str(c["check"]) for c in claims} - set(CHECKS))
    if unknown:
        raise UserError(f"{path}: unknown check '{unknown[0]}'; valid checks: {', '.join(sorted(CHECKS))}")
    return claims


def load_published(path: Path = PUBLISHED_FILE) -> list[dict]:
    """Flatten published.yaml into rows: dataset, method, bits, metric, value (None = not
    available), backbone, source, note."""
    data = _read_yaml(path)
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


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML ({_short(str(error), 120)})") from None


# ==========================================================================================
# Document model (rendered to Markdown and to HTML from the same blocks)
# ==========================================================================================


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class FigureRef:
    name: str
    caption: str


Block = Heading | Paragraph | Bullets | Table | FigureRef


@dataclass
class FigurePlan:
    """A figure to draw: `draw(fig)` fills a matplotlib Figure of `size` inches."""

    name: str
    size: tuple[float, float]
    draw: Callable[[Any], None]


@dataclass
class Report:
    blocks: list[Block]
    figures: dict[str, FigurePlan]
    verdicts: list[ClaimResult]
    analysis: Analysis


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    return Table(tuple(str(h) for h in header), tuple(tuple(str(c) for c in row) for row in rows))


def anchor(text: str) -> str:
    """GitHub-style heading anchor."""
    return re.sub(r"[^\w\- ]", "", text.lower()).strip().replace(" ", "-")


# ==========================================================================================
# Report sections
# ==========================================================================================


class _Builder:
    def __init__(self, analysis: Analysis, verdicts: list[ClaimResult], published: list[dict]) -> None:
        self.a = analysis
        self.verdicts = verdicts
        self.published = published
        self.blocks: list[Block] = []
        self.figures: dict[str, FigurePlan] = {}

    # -- plumbing
    def h(self, level: int, text: str) -> None:
        self.blocks.append(Heading(level, text))

    def p(self, text: str) -> None:
        self.blocks.append(Paragraph(text))

    def bullets(self, items: Iterable[str]) -> None:
        items = tuple(items)
        if items:
            self.blocks.append(Bullets(items))

    def table(self, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:
            self.blocks.append(_table(header, rows))

    def figure(self, plan: FigurePlan, caption: str) -> None:
        self.figures[plan.name] = plan
        self.blocks.append(FigureRef(plan.name, caption))

    # -- sections
    SECTIONS = ("Claims and verdicts", "Main comparison", "Retrieval curves", "Training curves",
                "CRH ablations", "Hash centers", "Training cost", "Published numbers", "Data quality",
                "Appendix: run ids per cell")

    def build(self) -> list[Block]:
        a = self.a
        self.h(1, "hashbench reproduction report: CRH against CSQ, DPN, HashNet and SHC")
        commits = sorted({str(_get(r, "code", "commit", default="?"))[:10] for r in a.included})
        dirty = sum(1 for r in a.included if _get(r, "code", "dirty"))
        self.p(
            f"Generated by `python -m bench report` from {len(a.included) + len(a.older) + len(a.failed)} "
            f"run records and {len(a.problems)} unreadable file(s): **{len(a.included)} complete runs of "
            f"the current code** (results version {RESULTS_VERSION}) enter the numbers; {len(a.older)} "
            f"from older code and {len(a.failed)} failed run(s) are listed under Data quality and kept out. "
            f"The paper is Yin et al., arXiv 2511.12162 (AAAI-26)."
        )
        if commits:
            note = f"; {dirty} run(s) came from a working tree with uncommitted changes." if dirty else "."
            self.p(f"Code: commit(s) {', '.join(f'`{c}`' for c in commits)}{note}")
        self.p("Conventions: mAP, tie-aware mAP and P@r≤2 in percent (×100), mean ± sample std over seeds "
               "with n the number of seeds; a cell enters the numbers only with its table's full seed "
               "set. **Bold** marks the best mean per bit length. A `*` after an ablation setting marks "
               "the method's default.")
        self.bullets(f"[{title}](#{anchor(title)})" for title in self.SECTIONS)
        self.claims()
        self.main_comparison()
        self.curves()
        self.training_curves()
        self.ablations()
        self.centers()
        self.cost()
        self.published_section()
        self.quality()
        self.appendix()
        return self.blocks

    def claims(self) -> None:
        self.h(2, "Claims and verdicts")
        if not self.verdicts:
            self.p("No claims are listed in bench/claims.yaml.")
            return
        self.p("The paper's checkable claims (bench/claims.yaml) against the runs measured here. A verdict "
               "uses only complete, current-code cells.")
        self.table(("claim", "verdict", "in short"),
                   ((v.claim, f"**{v.verdict}**", v.summary) for v in self.verdicts))
        for v in self.verdicts:
            self.h(3, f"{v.id}: {v.verdict}")
            self.p(f"*Claim:* {v.claim} *Source:* {v.source}.")
            self.p(f"*How it is checked:* {v.how}")
            self.p(f"*Verdict:* **{v.verdict}** — {v.summary}.")
            self.bullets(v.evidence)

    # -- main comparison
    def main_comparison(self) -> None:
        self.h(2, "Main comparison")
        if not self.a.main:
            self.p("No complete runs with default method settings: nothing to compare.")
            return
        for scope, table in self.a.main.items():
            label = self.a.scope_label(scope)
            self.h(3, label)
            topk = sorted({str(_get(r, "metrics", "topk", default="?")) for c in table.cells.values()
                           for r in c.group.runs.values()})
            seed_sets = sorted(set(table.expected.values()))
            seeds_text = (fmt_seeds(seed_sets[0]) if len(seed_sets) == 1 else
                          "; ".join(f"{fmt_seeds(v)} at {b} bits" for b, v in table.expected.items()))
            self.p(f"Split digest `{scope.digest}`; expected seeds {seeds_text} per cell; "
                   f"mAP@{'/'.join(topk)} as the dataset card defines it.")
            for key, title in MAIN_METRICS:
                getter = metric_points(key)
                rows = []
                best = {}
                for bits in table.bits:
                    means = [(table.complete(m, bits).stat(getter).mean, m) for m in table.methods
                             if table.complete(m, bits) is not None]
                    means = [(v, m) for v, m in means if not math.isnan(v)]
                    if means:
                        top = max(v for v, _ in means)
                        best[bits] = {m for v, m in means if v == top}
                for method in table.methods:
                    row = [method_name(method)]
                    for bits in table.bits:
                        cell = table.cell(method, bits)
                        if cell is None and (method, bits) in table.only_failed:
                            row.append(f"failed (seeds {fmt_seeds(table.only_failed[method, bits])})")
                        elif cell is None:
                            row.append("not run")
                        elif not cell.complete:
                            failed = [x for x in cell.missing if x in cell.group.failed_seeds]
                            row.append(f"incomplete ({len(cell.expected) - len(cell.missing)}/"
                                       f"{len(cell.expected)} seeds"
                                       + (f"; failed: {fmt_seeds(failed)}" if failed else "") + ")")
                        else:
                            text = cell.stat(getter).text()
                            row.append(f"**{text}**" if method in best.get(bits, ()) else text)
                    rows.append(row)
                self.p(f"**{title}**")
                self.table(["method", *(f"{b} bits" for b in table.bits)], rows)
            self.significance(table)
            self.published_next_to(table)

    def significance(self, table: MainTable) -> None:
        getter = metric_points("mAP")
        self.p("**CRH against each baseline** (mAP, paired t-test over matching seeds, "
               "scipy.stats.ttest_rel):")
        if "crh" not in table.methods:
            self.p("No CRH runs in this table: no test.")
            return
        rows = []
        for bits in table.bits:
            crh = table.complete("crh", bits)
            for method in table.methods:
                if method == "crh" or table.cell(method, bits) is None:
                    continue
                other = table.complete(method, bits)
                if crh is None or other is None:
                    rows.append((bits, method_name(method), "–", "–", "–",
                                 "incomplete or missing cell: not tested"))
                    continue
                test = paired_test(crh.values(getter), other.values(getter))
                rows.append((bits, method_name(method), test.n, f"{crh.stat(getter).mean:.2f}",
                             f"{other.stat(getter).mean:.2f} / {fmt_signed(test.mean_diff)}",
                             test.note or f"t={test.t:.2f}, {fmt_p(test.p)}"))
        if rows:
            self.table(("bits", "baseline", "n", "CRH", "baseline / CRH − baseline", "test"), rows)
        else:
            self.p("No baseline shares a bit length with CRH here.")

    def published_next_to(self, table: MainTable) -> None:
        rows = [r for r in self.published if r["dataset"] == table.scope.dataset]
        if not rows:
            self.p(f"No published numbers for {table.scope.dataset} in bench/published.yaml (none of the "
                   "papers reports this dataset), so the measured numbers stand alone.")
            return
        out = []
        for row in rows:
            cell = table.complete(row["method"], row["bits"])
            measured = cell.stat(metric_points("mAP")) if cell is not None else None
            published = "not available" if row["value"] is None else f"{row['value'] * 100:.2f}"
            if measured is None:
                measured_text, diff = "not measured", "–"
            else:
                measured_text = measured.text()
                diff = "–" if row["value"] is None else fmt_signed(measured.mean - row["value"] * 100)
            source = _short(row["source"] + (f"; {row['note']}" if row["note"] else ""), 140)
            out.append((method_name(row["method"]), row["bits"], row["metric"], published, measured_text,
                        diff, row["backbone"], source))
        self.p("**Published numbers for this dataset** (measured − published in points; backbones, "
               "schedules and cut-offs differ, see each source):")
        self.table(("method", "bits", "published metric", "published", "measured mAP", "difference",
                    "published backbone", "source"), out)

    # -- curves
    def curves(self) -> None:
        self.h(2, "Retrieval curves")
        if not self.a.main:
            self.p("No complete main-comparison runs: no curves.")
            return
        self.p("Per dataset and bit length, all methods on one plot, averaged over each cell's seeds: "
               "precision against recall of the items within Hamming radius r (r = 0..K, markers every "
               "radius), and precision at the top N of the Hamming ranking.")
        drew = False
        for scope, table in self.a.main.items():
            for bits in table.bits:
                cells = [table.complete(m, bits) for m in table.methods]
                cells = [c for c in cells if c is not None]
                if not cells:
                    continue
                drew = True
                plan = FigurePlan(f"curves-{scope.slug}-{bits}b", (11.0, 4.2),
                                  _draw_curves(cells, f"{self.a.scope_label(scope)} · {bits} bits"))
                self.figure(plan, "PR by Hamming radius and precision@N — "
                                  f"{self.a.scope_label(scope)}, {bits} bits")
        if not drew:
            self.p("No complete cell has curves to draw.")

    def training_curves(self) -> None:
        self.h(2, "Training curves")
        if not self.a.main:
            self.p("No complete main-comparison runs: no training curves.")
            return
        self.p("Validation mAP (validation queries against the training set, the model-selection "
               "criterion) at each evaluation epoch, mean over seeds. A run whose best epoch is its last "
               "evaluation may still have been improving.")
        for scope, table in self.a.main.items():
            cells = [c for c in table.cells.values() if c.complete]
            if not cells:
                continue
            plan = FigurePlan(f"validation-{scope.slug}", (4.2 * len(table.bits) + 1.0, 3.6),
                              _draw_validation(cells, table.bits, self.a.scope_label(scope)))
            self.figure(plan, f"Validation mAP per epoch — {self.a.scope_label(scope)}")
            rows = []
            for cell in sorted(cells, key=lambda c: (method_sort_key(c.group.method), c.group.bits)):
                records = cell.records()
                last_best = sum(1 for r in records if _is_best_at_end(r))
                tail = Stat.of(_final_val_gain(r) for r in records)
                rows.append((method_name(cell.group.method), cell.group.bits,
                             ", ".join(str(_get(r, "selection", "best_epoch")) for r in records),
                             int(_get(records[0], "config", "epochs", default=0) or 0),
                             f"{last_best} of {len(records)}", tail.text(2, show_n=False)))
            self.table(("method", "bits", "best epoch per seed", "epochs", "best = last evaluation",
                        "val mAP change over the last evaluation interval (points)"), rows)
        self.longer_schedules()

    def longer_schedules(self) -> None:
        comparisons = schedule_comparisons(self.a)
        if not comparisons:
            return
        getter = metric_points("mAP")
        self.p("**Longer schedules.** Cells run again with more epochs and otherwise equal settings "
               "(same split and protocol), compared on the seeds both schedules have: test mAP of the "
               "checkpoint each run selected on validation. A gain well above the seed spread means the "
               "shorter schedule had not converged for that method.")
        rows = []
        for c in comparisons:
            rows.append((method_name(c.method), c.bits, fmt_seeds(c.seeds),
                         f"{c.epochs(c.short)} → {c.epochs(c.long)}",
                         f"{c.mean(c.short, getter):.2f}", f"{c.mean(c.long, getter):.2f}",
                         fmt_signed(c.gain(getter)), ", ".join(str(e) for e in c.long_best_epochs())))
        self.table(("method", "bits", "seeds", "epochs", "mAP (shorter)", "mAP (longer)",
                    "gain (points)", "best epoch of the longer run"), rows)

    # -- ablations
    def ablations(self) -> None:
        self.h(2, "CRH ablations")
        if not self.a.crh:
            self.p("No CRH runs: no ablations.")
            return
        self.p("Recognised from the CRH run configurations: runs at one bit length that differ in one "
               "ablation dimension only form a series of that dimension (\"other settings\" names what "
               "the series holds fixed away from the defaults); effective values (head count, cadence, "
               "codebook size) come from each run's own record where the configuration left the default "
               "rule. Error bars: sample std over seeds.")
        getter = metric_points("mAP")
        for scope, ablations in sorted(self.a.crh.items()):
            label = self.a.scope_label(scope)
            self.h(3, label)
            drawn = []
            for dim, (_, title) in ablations.dims.items():
                varied = ablations.varied(dim)
                if dim not in CRH_DIMENSIONS and not varied:
                    continue
                if not varied:
                    self.p(f"*{title}:* only one setting measured — no ablation data.")
                    continue
                drawn.append((dim, title, varied))
                self.p(f"*{title}:*")
                rows = []
                for panel in varied:
                    for point in panel.points:
                        cell = point.cell
                        value = cell.stat(getter).text() if cell.complete else (
                            f"{cell.status_text()} (provisional {cell.provisional(getter).text()})")
                        rows.append((panel.bits, panel.context or "defaults", point.label, value,
                                     fmt_seeds(cell.group.seeds)))
                self.table(("bits", "other settings", "setting", "mAP", "seeds present"), rows)
            if drawn:
                rows, columns = _ablation_grid(len(drawn))
                plan = FigurePlan(f"ablations-{scope.slug}", (5.6 * columns, 3.9 * rows),
                                  _draw_ablations(drawn, label))
                self.figure(plan, f"CRH ablations (mAP, error bars over seeds) — {label}")
            if ablations.unplaced:
                self.p("CRH runs in no series above (they differ from every other run in more than one "
                       "dimension):")
                self.table(("bits", "settings", "mAP", "seeds"),
                           ((g.bits, describe_variant(g.variant),
                             Stat.of(getter(r) for r in g.runs.values()).text(), fmt_seeds(g.seeds))
                            for g in ablations.unplaced))

    # -- centers
    def centers(self) -> None:
        self.h(2, "Hash centers")
        tables = [(s, t) for s, t in self.a.main.items()
                  if any(t.complete(m, b) is not None and t.complete(m, b).records()[0].get("centers")
                         for m in CENTER_METHODS for b in t.bits)]
        if not tables:
            self.p("No complete runs of a center-based method (CSQ, SHC, CRH) with stored centers.")
            return
        self.p("Class-center Hamming distances of the center-based methods next to a class-similarity "
               "matrix (one run per method: the lowest seed), and the correlation over class pairs between "
               "centers' Hamming similarity (1 − d/K) and the class similarity measured from each run's "
               "trained model (`center_semantics` in its record).")
        for scope, table in tables:
            label = self.a.scope_label(scope)
            self.h(3, label)
            for bits in table.bits:
                cells = [table.complete(m, bits) for m in CENTER_METHODS]
                cells = [c for c in cells if c is not None and c.records()[0].get("centers")]
                if not cells:
                    continue
                source = next((c for c in sorted(cells, key=lambda c: method_sort_key(c.group.method))
                               if _get(c.records()[0], "class_similarity", "matrix")), None)
                plan = FigurePlan(f"centers-{scope.slug}-{bits}b", (3.9 * (len(cells) + 1) + 0.4, 3.9),
                                  _draw_centers(cells, source, f"{label} · {bits} bits"))
                measure = (f"class similarity from {method_name(source.group.method)} seed {source.used[0]}: "
                           f"{_get(source.records()[0], 'class_similarity', 'measure', default='?')}"
                           if source is not None else "no class-similarity matrix stored")
                self.figure(plan, f"Center distances at {bits} bits — {label} ({measure})")
            rows = []
            ablations = self.a.crh.get(scope)
            for bits in table.bits:
                entries = [(method_name(m), table.complete(m, bits)) for m in CENTER_METHODS]
                panel = ablations.reference_panel("reassignment", bits) if ablations else None
                never = panel.point("never") if panel else None
                if never is not None:
                    entries.append(("CRH, reassign=never", never.cell))
                for name, cell in entries:
                    if cell is None or not cell.complete:
                        continue
                    pearson = cell.stat(lambda r: semantics_score(r, "pearson"))
                    spearman = cell.stat(lambda r: semantics_score(r, "spearman"))
                    undefined = "undefined (equidistant centers or constant similarity)"
                    rows.append((bits, name, pearson.text(3) if pearson.n else undefined,
                                 spearman.text(3) if spearman.n else undefined))
            self.p("**Center semantics scores**")
            self.table(("bits", "method", "Pearson", "Spearman"), rows)
            crh_cells = [table.complete("crh", b) for b in table.bits]
            crh_cells = [c for c in crh_cells if c is not None]
            steps = [(c, [reassignment_steps(r) for r in c.records()]) for c in crh_cells]
            steps = [(c, s) for c, s in steps if any(s)]
            if steps:
                plan = FigurePlan(f"reassignment-{scope.slug}", (6.4, 3.8),
                                  _draw_reassignment(steps, label))
                self.figure(plan, f"CRH: classes reassigned per step — {label}")
                rows = []
                for cell, per_run in steps:
                    for seed, run_steps in zip(cell.used, per_run, strict=True):
                        changed = [s["changed_classes"] for s in run_steps]
                        last = max((s["epoch"] for s in run_steps if s["changed_classes"] > 0), default=None)
                        rows.append((cell.group.bits, seed, len(run_steps), changed[0] if changed else 0,
                                     changed[-1] if changed else 0, sum(changed),
                                     last if last is not None else "none"))
                self.table(("bits", "seed", "reassignment steps", "classes moved at the first step",
                            "at the last step", "total moves", "last epoch with a move"), rows)
            elif crh_cells:
                self.p("The CRH records hold no reassignment history.")

    # -- cost
    def cost(self) -> None:
        self.h(2, "Training cost")
        if not self.a.main:
            self.p("No complete main-comparison runs: no timings.")
            return
        self.p("Wall-clock seconds from the records' `timings`: training = the epochs of the hash "
               "network; set-up = the method's stages before it (SHC: classifier and center "
               "optimisation); hooks = per-epoch method work (CRH: reassignment). Timings depend on the "
               "machine and on what else ran on it.")
        for scope, table in self.a.main.items():
            label = self.a.scope_label(scope)
            cells = [c for c in table.cells.values() if c.complete]
            if not cells:
                continue
            self.h(3, label)
            rows = []
            for cell in sorted(cells, key=lambda c: (method_sort_key(c.group.method), c.group.bits)):
                records = cell.records()
                devices = sorted({str(_get(r, "environment", "device", default=r.get("device", "?")))
                                  for r in records})
                rows.append((method_name(cell.group.method), cell.group.bits,
                             cell.stat(_timing("train")).text(1, show_n=False),
                             cell.stat(seconds_per_epoch).text(2, show_n=False),
                             cell.stat(_timing("method_setup")).text(2, show_n=False),
                             cell.stat(_timing("method_hooks")).text(2, show_n=False),
                             cell.stat(_timing("total")).text(1, show_n=False),
                             len(records), ", ".join(devices)))
            self.table(("method", "bits", "training s/run", "s/epoch", "set-up s", "hooks s", "total s",
                        "n", "device"), rows)
            stage_rows = []
            for bits in table.bits:
                shc, crh = table.complete("shc", bits), table.complete("crh", bits)
                if shc is None and crh is None:
                    continue
                stage_rows.append((bits,
                                   _stage_text(shc) if shc is not None else "not run",
                                   f"{shc.stat(training_cost).mean:.1f}" if shc is not None else "–",
                                   (f"training {crh.stat(_timing('train')).mean:.1f} s + reassignment "
                                    f"{crh.stat(_timing('method_hooks')).mean:.2f} s")
                                   if crh is not None else "not run",
                                   f"{crh.stat(training_cost).mean:.1f}" if crh is not None else "–"))
            if any(r[1] != "not run" for r in stage_rows) and any(r[3] != "not run" for r in stage_rows):
                self.p("**SHC's stages against CRH's single stage** (means over seeds, seconds):")
                self.table(("bits", "SHC stages", "SHC total", "CRH (one stage)", "CRH total"), stage_rows)
            else:
                lacking = "SHC" if all(r[1] == "not run" for r in stage_rows) else "CRH"
                self.p("SHC's stages against CRH's single stage: needs complete SHC and CRH cells — "
                       f"no {lacking} runs here.")
            plan = FigurePlan(f"cost-{scope.slug}", (11.0, 4.0), _draw_cost(cells, table.bits, label))
            self.figure(plan, f"Training time per run and SHC's stages against CRH — {label}")

    # -- published
    def published_section(self) -> None:
        self.h(2, "Published numbers")
        self.p("Everything in bench/published.yaml, whether or not a matching dataset was measured here. "
               "Empty cells are numbers that are not available to this project (CRH's per-cell numbers): "
               "they are never filled in with guesses. Values in percent.")
        if not self.published:
            self.p("bench/published.yaml lists no numbers.")
            return
        measured = {s.dataset for s in self.a.main}
        self.table(("dataset", "method", "bits", "metric", "published", "backbone", "source",
                    "measured here"),
                   ((r["dataset"], method_name(r["method"]), r["bits"], r["metric"],
                     "" if r["value"] is None else f"{r['value'] * 100:.2f}", r["backbone"],
                     _short(r["source"] + (f"; {r['note']}" if r["note"] else ""), 140),
                     "yes" if r["dataset"] in measured else "no") for r in self.published))

    # -- quality
    def environments(self) -> None:
        """Where the counted runs ran: CPU float results match bitwise only on the same kind of
        processor and torch build, so a reader needs to see when a table mixes machines."""
        counts = Counter(environment_of(r) for r in self.a.included)
        if not counts:
            return
        self.p("**Where the counted runs ran** (on CPU a seed reproduces bitwise only on the same kind "
               "of processor and torch build; runs from different machines are further samples of the "
               "same training, not copies):")
        self.table(ENVIRONMENT_FIELDS + ("runs",), (key + (count,) for key, count in sorted(counts.items())))

    def quality(self) -> None:
        a = self.a
        self.h(2, "Data quality")
        lines = [f"{len(a.included)} complete current-code run(s) in the numbers",
                 f"{len(a.older)} record(s) from older code (results version other than {RESULTS_VERSION}): "
                 "listed, not used",
                 f"{len(a.failed)} failed run(s): listed, not used",
                 f"{len(a.problems)} unreadable file(s): listed, not used"]
        incomplete = [(s, c) for s, t in a.main.items() for c in t.cells.values() if not c.complete]
        extra = [(s, c) for s, t in a.main.items() for c in t.cells.values() if c.complete and c.extra]
        lines.append(f"{len(incomplete)} main-comparison cell(s) with an incomplete seed set: shown as "
                     "incomplete, not averaged")
        if a.multi_digest:
            lines.append(f"more than one split digest for {', '.join(sorted(a.multi_digest))}: each split is "
                         "its own table")
        self.bullets(lines)
        self.environments()
        if a.older:
            self.p("**Records from older code**")
            self.table(("run id", "dataset", "method", "bits", "seed", "results version", "status"),
                       ((r.get("run_id"), _get(r, "spec", "dataset"), _get(r, "spec", "method"),
                         _get(r, "spec", "bits"), _get(r, "spec", "seed"), record_version(r),
                         r.get("status")) for r in a.older))
        if a.failed:
            self.p("**Failed runs**")
            self.table(("run id", "dataset", "method", "bits", "seed", "reason"),
                       ((r.get("run_id"), _get(r, "spec", "dataset"), _get(r, "spec", "method"),
                         _get(r, "spec", "bits"), _get(r, "spec", "seed"),
                         _md_escape(_short(r.get("failure") or f"status {r.get('status')}", 160)))
                        for r in a.failed))
        if a.problems:
            self.p("**Unreadable record files**")
            self.bullets(f"`{_short(problem, 200)}`" for problem in a.problems)
        if incomplete:
            self.p("**Incomplete seed sets** (kept out of the main numbers)")
            getter = metric_points("mAP")
            self.table(("table", "method", "bits", "seeds present", "seeds expected", "failed seeds",
                        "provisional mAP"),
                       ((a.scope_label(s), method_name(c.group.method), c.group.bits,
                         fmt_seeds(c.group.seeds), fmt_seeds(c.expected), fmt_seeds(c.group.failed_seeds),
                         c.provisional(getter).text()) for s, c in incomplete))
        if extra:
            self.p("**Extra seeds** outside the table's seed set (kept out of the means so every cell "
                   "averages the same seeds)")
            self.table(("table", "method", "bits", "extra seeds"),
                       ((a.scope_label(s), method_name(c.group.method), c.group.bits, fmt_seeds(c.extra))
                        for s, c in extra))
        if a.conflicts:
            self.p("**Conflicting configurations** (same scope, method, bits and method settings, yet a "
                   "different resolved configuration; the one with fewer seeds is left out)")
            self.table(("scope", "method", "bits", "left out: run ids", "kept: run ids"),
                       ((a.scope_label(left.scope), method_name(left.method), left.bits,
                         ", ".join(r["run_id"] for r in left.runs.values()),
                         ", ".join(r["run_id"] for r in kept.runs.values())) for left, kept in a.conflicts))

    # -- appendix
    def appendix(self) -> None:
        self.h(2, "Appendix: run ids per cell")
        if not self.a.groups:
            self.p("No complete current-code runs.")
            return
        self.p("Every number above comes from these runs (records under results/runs/<dataset>/<method>/"
               "<run id>.json; each holds the full configuration, split digest, environment and commit).")
        for scope in self.a.scopes:
            self.h(3, self.a.scope_label(scope))
            self.table(("method", "bits", "settings", "seed: run id"),
                       ((method_name(g.method), g.bits, describe_variant(g.variant),
                         "; ".join(f"{s}: `{g.runs[s]['run_id']}`" for s in g.seeds))
                        for g in self.a.groups_in(scope)))


ENVIRONMENT_FIELDS = ("device", "CPU", "CPU capability", "torch", "torch threads")


def environment_of(record: dict) -> tuple[str, ...]:
    env = record.get("environment") or {}
    device = str(env.get("gpu") or env.get("device") or "?")
    return (device, str(env.get("cpu") or "not recorded"), str(env.get("cpu_capability") or "not recorded"),
            str(env.get("torch") or "?"), str(env.get("torch_threads") or "?"))


def _is_best_at_end(record: dict) -> bool:
    evaluated = [e.get("epoch") for e in record.get("history") or [] if e.get("val_mAP") is not None]
    return bool(evaluated) and _get(record, "selection", "best_epoch") == evaluated[-1]


def _final_val_gain(record: dict) -> float:
    values = [_num(e.get("val_mAP")) for e in record.get("history") or [] if e.get("val_mAP") is not None]
    return (values[-1] - values[-2]) * 100 if len(values) >= 2 else math.nan


def reassignment_steps(record: dict) -> list[dict]:
    """CRH's reassignment steps [{epoch, changed_classes, changed (per head)}], from the
    method record, else from the per-epoch history."""
    steps = []
    source = _get(record, "method", "reassignments")
    if not isinstance(source, list):
        source = [{"epoch": e.get("epoch"), **(_get(e, "method", "reassignment") or {})}
                  for e in record.get("history") or [] if _get(e, "method", "reassignment")]
    for step in source:
        per_head = [int(v) for v in step.get("changed") or []]
        changed = step.get("changed_classes")
        steps.append({"epoch": int(step.get("epoch") or 0),
                      "changed_classes": int(changed if changed is not None else max(per_head, default=0)),
                      "changed": per_head})
    return steps


# ==========================================================================================
# Figures
# ==========================================================================================

_RC = {
    "figure.dpi": 100, "savefig.dpi": 100, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
    "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8, "svg.hashsalt": "hashbench",
    "path.simplify": True,
}


def _palette(methods: Iterable[str]) -> dict[str, Any]:
    import seaborn as sns

    colors = sns.color_palette("colorblind", 10)
    known = {m: colors[i] for i, m in enumerate(METHOD_ORDER)}
    extra = sorted(set(methods) - set(known))
    return {**known, **{m: colors[(len(METHOD_ORDER) + i) % 10] for i, m in enumerate(extra)}}


def _mean_curve(records: list[dict], key: str) -> np.ndarray | None:
    arrays = [np.asarray([_num(v) for v in _get(r, "metrics", key, default=[]) or []]) for r in records]
    if not arrays or any(len(a) == 0 or len(a) != len(arrays[0]) for a in arrays):
        return None
    return np.nanmean(np.stack(arrays), axis=0)


def _draw_curves(cells: list[Cell], title: str) -> Callable[[Any], None]:
    def draw(fig: Any) -> None:
        colors = _palette(c.group.method for c in cells)
        pr, pn = fig.subplots(1, 2)
        for cell in cells:
            records = cell.records()
            color = colors[cell.group.method]
            name = f"{method_name(cell.group.method)} (n={len(records)})"
            precision = _mean_curve(records, "precision_at_radius")
            recall = _mean_curve(records, "recall_at_radius")
            if precision is not None and recall is not None and len(precision) == len(recall):
                pr.plot(recall, precision, marker="o", markersize=3, linewidth=1.4, color=color, label=name)
                at2 = min(2, len(recall) - 1)
                pr.plot([recall[at2]], [precision[at2]], marker="o", markersize=9, fillstyle="none",
                        color=color, linestyle="none")
            ns = _get(records[0], "metrics", "pr_at_n")
            p_at_n = _mean_curve(records, "precision_at_n")
            if ns and p_at_n is not None and len(ns) == len(p_at_n):
                pn.plot(ns, p_at_n, marker="o", markersize=3, linewidth=1.4, color=color, label=name)
        pr.set(xlabel="recall (items within radius r)", ylabel="precision",
               title="PR by Hamming radius (open circle: r = 2)",
               xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        pn.set(xlabel="N (top of the Hamming ranking)", ylabel="precision@N", title="precision@N",
               xscale="log", ylim=(-0.02, 1.02))
        for ax in (pr, pn):
            ax.grid(True, alpha=0.3)
            if ax.lines:
                ax.legend(loc="best")
        fig.suptitle(title)

    return draw


def _draw_validation(cells: list[Cell], bits_list: list[int], title: str) -> Callable[[Any], None]:
    def draw(fig: Any) -> None:
        from matplotlib.ticker import MaxNLocator

        colors = _palette(c.group.method for c in cells)
        axes = np.atleast_1d(fig.subplots(1, len(bits_list), sharey=True))
        for ax, bits in zip(axes, bits_list, strict=True):
            at_bits = sorted((c for c in cells if c.group.bits == bits),
                             key=lambda c: method_sort_key(c.group.method))
            for cell in at_bits:
                per_epoch: dict[int, list[float]] = {}
                for record in cell.records():
                    for entry in record.get("history") or []:
                        if entry.get("val_mAP") is not None:
                            per_epoch.setdefault(int(entry["epoch"]), []).append(_num(entry["val_mAP"]) * 100)
                epochs = [e for e in sorted(per_epoch) if len(per_epoch[e]) == len(cell.used)]
                if epochs:
                    ax.plot(epochs, [float(np.mean(per_epoch[e])) for e in epochs], marker="o", markersize=3,
                            color=colors[cell.group.method], label=method_name(cell.group.method))
            ax.set(title=f"{bits} bits", xlabel="epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
            if ax.lines:
                ax.legend(loc="lower right")
        axes[0].set_ylabel("validation mAP (%)")
        fig.suptitle(title)

    return draw


def _ablation_grid(count: int) -> tuple[int, int]:
    """(rows, columns) of the ablation figure: two panels per row."""
    columns = min(2, max(1, count))
    return math.ceil(count / columns), columns


def _draw_ablations(drawn: list[tuple[str, str, list[Panel]]], title: str) -> Callable[[Any], None]:
    def draw(fig: Any) -> None:
        import seaborn as sns

        getter = metric_points("mAP")
        rows, columns = _ablation_grid(len(drawn))
        axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
        for ax in axes[len(drawn):]:
            ax.set_axis_off()
        for ax, (_, dim_title, panels) in zip(axes, drawn, strict=False):
            # One x position per setting (the default marker "*" dropped: the default of each
            # series is drawn as a star instead, since it can differ between bit lengths).
            keys: dict[str, tuple] = {}
            for panel in panels:
                for point in panel.points:
                    if point.cell.complete:
                        keys.setdefault(point.label.rstrip("*"), point.sort_key)
            order = sorted(keys, key=lambda label: (keys[label], label))
            colors = sns.color_palette("viridis", max(1, len(panels)))
            for panel, color in zip(panels, colors, strict=True):
                xs, ys, es, stars = [], [], [], []
                for point in panel.points:
                    if not point.cell.complete:
                        continue
                    stat = point.cell.stat(getter)
                    xs.append(order.index(point.label.rstrip("*")))
                    ys.append(stat.mean)
                    es.append(0.0 if math.isnan(stat.std) else stat.std)
                    if point.is_default:
                        stars.append((xs[-1], ys[-1]))
                if xs:
                    ax.errorbar(xs, ys, yerr=es, marker="o", markersize=4, capsize=3, linewidth=1.2,
                                color=color, label=panel.series)
                for x, y in stars:
                    ax.plot([x], [y], marker="*", markersize=13, color=color, markeredgecolor="black",
                            markeredgewidth=0.6, linestyle="none")
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels(order, rotation=20, ha="right")
            ax.set(title=dim_title, ylabel="mAP (%)")
            ax.grid(True, alpha=0.3)
            if ax.lines:
                ax.legend(loc="best", title="★ = default", fontsize=7)
        fig.suptitle(title)

    return draw


def _draw_centers(cells: list[Cell], source: Cell | None, title: str) -> Callable[[Any], None]:
    def draw(fig: Any) -> None:
        import seaborn as sns

        axes = np.atleast_1d(fig.subplots(1, len(cells) + 1))
        first = cells[0].records()[0]
        names = list(_get(first, "task", "class_names", default=[]) or [])
        count = len(first.get("centers") or [])
        if len(names) != count:
            names = [str(i) for i in range(count)]
        ticks = names if count <= 30 else False
        annotate = count <= 12
        if source is not None:
            matrix = np.asarray(_get(source.records()[0], "class_similarity", "matrix"), dtype=float)
            sns.heatmap(matrix, ax=axes[0], cmap="mako_r", square=True, xticklabels=ticks, yticklabels=ticks,
                        cbar_kws={"shrink": 0.7}, annot=False)
            axes[0].set_title(f"class similarity ({method_name(source.group.method)} model; dark = similar)")
        else:
            axes[0].set_axis_off()
            axes[0].set_title("no class-similarity matrix")
        for ax, cell in zip(axes[1:], cells, strict=True):
            record = cell.records()[0]
            centers = np.asarray(record["centers"], dtype=np.int64)
            bits = centers.shape[1]
            distances = (bits - centers @ centers.T) // 2
            sns.heatmap(distances, ax=ax, cmap="mako", vmin=0, vmax=bits, square=True, annot=annotate,
                        fmt="d", annot_kws={"fontsize": 6}, xticklabels=ticks, yticklabels=ticks,
                        cbar_kws={"shrink": 0.7})
            ax.set_title(f"{method_name(cell.group.method)} centers: Hamming distance (seed {cell.used[0]})")
        for ax in axes:
            ax.tick_params(labelsize=6)
        fig.suptitle(title)

    return draw


def _draw_reassignment(steps: list[tuple[Cell, list[list[dict]]]], title: str) -> Callable[[Any], None]:
    def draw(fig: Any) -> None:
        import seaborn as sns

        ax = fig.subplots(1, 1)
        colors = sns.color_palette("viridis", max(1, len(steps)))
        for (cell, per_run), color in zip(steps, colors, strict=True):
            per_epoch: dict[int, list[int]] = {}
            for run_steps in per_run:
                for step in run_steps:
                    per_epoch.setdefault(step["epoch"], []).append(step["changed_classes"])
            epochs = sorted(per_epoch)
            ax.plot(epochs, [float(np.mean(per_epoch[e])) for e in epochs], marker="o", markersize=3,
                    color=color, label=f"{cell.group.bits} bits (n={len(per_run)})")
        from matplotlib.ticker import MaxNLocator

        ax.set(xlabel="epoch of the reassignment step", ylabel="classes moved (any head), mean over seeds",
               title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=-0.3)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")

    return draw


def _draw_cost(cells: list[Cell], bits_list: list[int], title: str) -> Callable[[Any], None]:
    def draw(fig: Any) -> None:
        import seaborn as sns

        left, right = fig.subplots(1, 2)
        methods = sorted({c.group.method for c in cells}, key=method_sort_key)
        colors = sns.color_palette("viridis", max(1, len(bits_list)))
        width = 0.8 / max(1, len(bits_list))
        for j, (bits, color) in enumerate(zip(bits_list, colors, strict=True)):
            xs, ys, es = [], [], []
            for i, method in enumerate(methods):
                cell = next((c for c in cells if c.group.method == method and c.group.bits == bits), None)
                if cell is None:
                    continue
                stat = cell.stat(training_cost)
                xs.append(i + (j - (len(bits_list) - 1) / 2) * width)
                ys.append(stat.mean)
                es.append(0.0 if math.isnan(stat.std) else stat.std)
            if xs:
                left.bar(xs, ys, width=width * 0.95, yerr=es, capsize=2, color=color, label=f"{bits} bits")
        left.set_xticks(range(len(methods)))
        left.set_xticklabels([method_name(m) for m in methods])
        left.set(ylabel="seconds per run (set-up + training + hooks)", title="training cost per run")
        left.grid(False, axis="x")
        left.grid(True, axis="y", alpha=0.3)
        if left.patches:
            left.legend(loc="best")
        from matplotlib.patches import Patch

        stage_colors = sns.color_palette("Set2", 6)
        labels: list[str] = []
        position = 0.0
        for bits in bits_list:
            for method in ("shc", "crh"):
                cell = next((c for c in cells if c.group.method == method and c.group.bits == bits), None)
                if cell is None:
                    continue
                for name, _ in _stage_parts(cell):
                    if name not in labels:
                        labels.append(name)
                right.bar(position, 0)  # keeps an empty stack visible on the axis
                bottom = 0.0
                for name, value in _stage_parts(cell):
                    right.bar(position, value, bottom=bottom, width=0.8,
                              color=stage_colors[labels.index(name) % len(stage_colors)])
                    bottom += value
                right.annotate(f"{method_name(method)}\n{bits}b", (position, bottom), ha="center", fontsize=7,
                               xytext=(0, 2), textcoords="offset points")
                position += 1
            position += 0.5
        if labels:
            handles = [Patch(color=stage_colors[i % len(stage_colors)], label=name)
                       for i, name in enumerate(labels)]
            right.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02),
                         ncol=min(4, len(handles)), frameon=False)
            right.set(ylabel="seconds (mean over seeds)", title="SHC's stages vs CRH's single stage")
            right.set_xticks([])
            right.margins(y=0.15)
            right.grid(False, axis="x")
            right.grid(True, axis="y", alpha=0.3)
        else:
            right.set_axis_off()
            right.set_title("no SHC or CRH runs")
        fig.suptitle(title)

    return draw


def _stage_parts(cell: Cell) -> list[tuple[str, float]]:
    """(stage name, mean seconds) stacked in the cost figure: SHC's stages, then the hash
    network's training; for CRH its training and its reassignment hooks."""
    def mean(getter: Callable[[dict], float]) -> float:
        value = cell.stat(getter).mean
        return 0.0 if math.isnan(value) else value

    parts: list[tuple[str, float]] = []
    if cell.group.method == "crh":
        parts.append(("hash-network training", mean(lambda r: _num(_get(r, "timings", "train")))))
        parts.append(("CRH reassignment", mean(lambda r: _num(_get(r, "timings", "method_hooks")))))
        return parts
    stages = sorted({k for r in cell.records() for k in (_get(r, "timings", "method_stages") or {})})
    for stage in stages:
        parts.append((f"{method_name(cell.group.method)} {stage}",
                      mean(lambda r, k=stage: _num(_get(r, "timings", "method_stages", k)))))
    parts.append(("hash-network training", mean(lambda r: _num(_get(r, "timings", "train")))))
    return parts


def render_figure(plan: FigurePlan) -> bytes:
    """Draw one figure to PNG bytes, deterministically (fixed rc, no metadata)."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(_RC)
        import seaborn as sns

        with sns.axes_style("whitegrid"):
            fig = Figure(figsize=plan.size, layout="constrained")
            plan.draw(fig)
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def render_figures(report: Report) -> dict[str, bytes]:
    return {name: render_figure(plan) for name, plan in sorted(report.figures.items())}


# ==========================================================================================
# Rendering text
# ==========================================================================================


def render_markdown(report: Report) -> str:
    out: list[str] = []
    for block in report.blocks:
        if isinstance(block, Heading):
            out += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            out += [block.text, ""]
        elif isinstance(block, Bullets):
            out += [f"- {item}" for item in block.items] + [""]
        elif isinstance(block, Table):
            out.append("| " + " | ".join(_md_escape(h) for h in block.header) + " |")
            out.append("|" + "|".join("---" for _ in block.header) + "|")
            out += ["| " + " | ".join(_md_escape(c).replace("\n", " ") for c in row) + " |"
                    for row in block.rows]
            out.append("")
        elif isinstance(block, FigureRef):
            out += [f"![{block.caption}](figures/{block.name}.png)", ""]
    return "\n".join(out).rstrip() + "\n"


_INLINE = [
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*([^*]+)\*(?![\w*])"), r"<em>\1</em>"),
    (re.compile(r"\[([^\]]+)\]\((#[^)\s]+)\)"), r'<a href="\2">\1</a>'),
]

_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1180px;margin:2em auto;
padding:0 1em;color:#1f2328;line-height:1.45}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.88em}
th,td{border:1px solid #d0d7de;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f6f8fa}
code{background:#f6f8fa;padding:0 .25em;border-radius:3px;font-size:.92em}
img{max-width:100%;border:1px solid #eee}
figure{margin:1em 0}figcaption{font-size:.85em;color:#57606a}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}
"""


def _inline_html(text: str) -> str:
    escaped = html.escape(text, quote=False)
    for pattern, replacement in _INLINE:
        escaped = pattern.sub(replacement, escaped)
    return escaped


def render_html(report: Report, images: dict[str, bytes]) -> str:
    """One self-contained page: the same blocks as the Markdown, images inline as base64."""
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           "<title>hashbench reproduction report</title>", f"<style>{_CSS.strip()}</style>", "</head>",
           "<body>"]
    used: Counter[str] = Counter()
    for block in report.blocks:
        if isinstance(block, Heading):
            level, ident = block.level, anchor(block.text)
            used[ident] += 1
            if used[ident] > 1:  # repeated headings get -1, -2, ... as on GitHub
                ident = f"{ident}-{used[ident] - 1}"
            out.append(f'<h{level} id="{ident}">{_inline_html(block.text)}</h{level}>')
        elif isinstance(block, Paragraph):
            out.append(f"<p>{_inline_html(block.text)}</p>")
        elif isinstance(block, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block.items) + "</ul>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in block.header)
            body = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>"
                           for row in block.rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(block, FigureRef):
            data = base64.b64encode(images.get(block.name, b"")).decode("ascii")
            caption = _inline_html(block.caption)
            out.append(f'<figure><img alt="{html.escape(block.caption)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{caption}</figcaption></figure>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


# ==========================================================================================
# Entry points
# ==========================================================================================


def build_report(records: Sequence[dict], problems: Sequence[str] = (), claims: Sequence[dict] | None = None,
                 published: Sequence[dict] | None = None, results_version: Any = RESULTS_VERSION) -> Report:
    """The whole report as data: a pure function of its arguments."""
    claims = load_claims() if claims is None else claims
    published = load_published() if published is None else published
    analysis = analyze(records, problems, results_version)
    verdicts = evaluate_claims(analysis, claims)
    builder = _Builder(analysis, verdicts, list(published))
    blocks = builder.build()
    return Report(blocks, builder.figures, verdicts, analysis)


def load_for_report(results_dir: Path) -> tuple[list[dict], list[str]]:
    """Records and corrupt-file problems, with paths relative to results_dir (so the report
    does not depend on where the results folder lives)."""
    from bench.records import load_records

    results_dir = Path(results_dir)
    records, problems = load_records(results_dir)
    prefix = str(results_dir.resolve()) + "/"
    plain = str(results_dir) + "/"

    def relative(text: str) -> str:
        return text.replace(prefix, "").replace(plain, "")

    for record in records:
        if "_path" in record:
            record["_path"] = relative(record["_path"])
    return records, sorted(relative(p) for p in problems)


@dataclass(frozen=True)
class Written:
    markdown: Path
    html: Path
    figures: tuple[Path, ...]
    verdicts: tuple[ClaimResult, ...]


def write_report(report: Report, out_dir: Path, images: dict[str, bytes] | None = None) -> Written:
    out_dir = Path(out_dir)
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    images = render_figures(report) if images is None else images
    written = []
    for name, data in sorted(images.items()):
        path = figures_dir / f"{name}.png"
        path.write_bytes(data)
        written.append(path)
    for stale in sorted(figures_dir.glob("*.png")):
        if stale.stem not in images:
            stale.unlink()  # a figure of an earlier generation that no longer exists
    markdown = out_dir / "report.md"
    markdown.write_text(render_markdown(report))
    page = out_dir / "report.html"
    page.write_text(render_html(report, images))
    verdicts = [v.to_dict() for v in report.verdicts]
    (out_dir / "verdicts.json").write_text(
        json.dumps(verdicts, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    return Written(markdown, page, tuple(written), tuple(report.verdicts))


def generate(results_dir: Path, out_dir: Path, claims_file: Path = CLAIMS_FILE,
             published_file: Path = PUBLISHED_FILE) -> Written:
    """Read the records under results_dir and write the report to out_dir."""
    records, problems = load_for_report(results_dir)
    if not records and not problems:
        raise UserError(f"no run records under {Path(results_dir) / 'runs'}: nothing to report "
                        "(run `python -m bench run ...` first, or pass --results DIR)")
    report = build_report(records, problems, load_claims(claims_file), load_published(published_file))
    return write_report(report, out_dir)
