"""CRH's ablations recognised from run configurations: runs at one bit length that differ in
one ablation dimension only form a series of that dimension."""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.report.groups import Cell, Group, Scope, expected_seed_set, method_defaults
from bench.report.util import get, jsonable, num

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


def effective(record: dict, key: str) -> Any:
    """A CRH setting as the run used it: its record's effective value, else its config."""
    value = crh_settings(record).get(key)
    if value is None:
        value = get(record, "method", key)
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
        heads = effective(record, "heads")
        number = num(heads)
        label = f"H={_pretty(heads) if heads is not None else '?'}"
        return label, (number if not math.isnan(number) else 1e9,)
    if dim == "reassignment":
        mode = config.get("reassign", effective(record, "reassign"))
        if mode == "never":
            return "never", (0, 0, 0)
        every, warmup = effective(record, "reassign_every"), effective(record, "reassign_warmup")
        label = f"every {_pretty(every)}" if every is not None else "scheduled"
        if warmup:
            label += f", warm-up {_pretty(warmup)}"
        every_n, warm_n = num(every), num(warmup)
        every_n = every_n if not math.isnan(every_n) else 1e9
        return label, (1, every_n, warm_n if not math.isnan(warm_n) else 0)
    if dim == "codebook_ratio":
        ratio = config.get("codebook_ratio", effective(record, "codebook_ratio"))
        size = effective(record, "codebook_size")
        label = _pretty(ratio) + (f" (M={_pretty(size)})" if size is not None else "")
        number = num(ratio)
        return label, (number if not math.isnan(number) else 1e9, label)
    value = config.get(dim)
    number = num(value)
    return _pretty(value), (0 if not math.isnan(number) else 1, number if not math.isnan(number) else 0,
                            jsonable(value))


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
    return tuple(jsonable(group.config.get(k)) for k in keys)


def _context_label(dims: dict[str, tuple[tuple[str, ...], str]], context: dict[str, tuple],
                   reference: dict[str, tuple]) -> str:
    parts = []
    for dim, identity in context.items():
        for key, value, ref in zip(dims[dim][0], identity, reference[dim], strict=True):
            if value != ref:
                parts.append(f"{key}={_pretty(json.loads(value))}")
    return ", ".join(parts)


def _reference(dims: dict, main: Group | None, defaults: dict | None, at_bits: list[Group]) -> dict:
    """The reference value of each dimension: the default run's, else the registry's defaults,
    else the most common one."""
    reference: dict[str, tuple] = {}
    for dim, (keys, _) in dims.items():
        if main is not None:
            reference[dim] = _identity(main, keys)
        elif defaults is not None:
            reference[dim] = tuple(jsonable(defaults.get(k)) for k in keys)
        else:
            counts = Counter(_identity(g, keys) for g in at_bits)
            reference[dim] = sorted(counts, key=lambda i: (-counts[i], i))[0]
    return reference


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
        reference = _reference(dims, next((g for g in at_bits if not g.variant), None), defaults, at_bits)
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
                                  and identity == tuple(jsonable(defaults.get(k)) for k in keys))
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


def reassignment_steps(record: dict) -> list[dict]:
    """CRH's reassignment steps [{epoch, changed_classes, changed (per head)}], from the
    method record, else from the per-epoch history."""
    steps = []
    source = get(record, "method", "reassignments")
    if not isinstance(source, list):
        source = [{"epoch": e.get("epoch"), **(get(e, "method", "reassignment") or {})}
                  for e in record.get("history") or [] if get(e, "method", "reassignment")]
    for step in source:
        per_head = [int(v) for v in step.get("changed") or []]
        changed = step.get("changed_classes")
        steps.append({"epoch": int(step.get("epoch") or 0),
                      "changed_classes": int(changed if changed is not None else max(per_head, default=0)),
                      "changed": per_head})
    return steps
