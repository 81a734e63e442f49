"""Named experiments: YAML files in `bench/experiments/` that expand into run specs.

Format (every key but `name` optional; lists expand as a product):
    name: crh-heads
    description: what it varies and what stays fixed
    dataset: fashion-mnist
    methods: [crh]
    bits: [32, 64]
    seeds: [0, 1, 2]
    protocol: harmonised
    settings: {epochs: 30}            # applied to every run
    grid:                             # one run set per entry, merged over `settings`
      - {heads: 2}
      - {heads: 4}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.data import read_yaml
from bench.errors import UserError

EXPERIMENTS_DIR = Path(__file__).resolve().parent / "experiments"
_KEYS = {"name", "description", "varies", "fixed", "dataset", "methods", "bits", "seeds",
         "protocol", "settings", "grid", "backbone"}


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    dataset: str
    methods: tuple[str, ...]
    bits: tuple[int, ...]
    seeds: tuple[int, ...]
    protocol: str
    settings: dict[str, Any]
    grid: tuple[dict[str, Any], ...]
    backbone: str | None = None
    varies: str = ""
    fixed: str = ""
    path: str = field(default="")


def available_experiments(directory: Path = EXPERIMENTS_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def _int_list(value: Any, key: str, path: Path) -> tuple[int, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise UserError(f"{path}: '{key}' must be a non-negative integer or a list of them, got {value!r}")
    return tuple(values)


def load_experiment(name_or_path: str, directory: Path = EXPERIMENTS_DIR) -> Experiment:
    path = Path(name_or_path)
    if not path.suffix:
        path = directory / f"{name_or_path}.yaml"
    if not path.is_file():
        raise UserError(
            f"unknown experiment '{name_or_path}'; valid experiments: "
            f"{', '.join(available_experiments(directory))}"
        )
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: an experiment must be a mapping of keys to values")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key '{unknown[0]}'; valid keys: {', '.join(sorted(_KEYS))}")
    methods = raw.get("methods", [])
    methods = [methods] if isinstance(methods, str) else methods
    if not methods or not all(isinstance(m, str) for m in methods):
        raise UserError(f"{path}: 'methods' must list at least one method name")
    settings = raw.get("settings") or {}
    grid = raw.get("grid") or [{}]
    grid_ok = isinstance(grid, list) and all(isinstance(g, dict) for g in grid)
    if not isinstance(settings, dict) or not grid_ok:
        raise UserError(f"{path}: 'settings' must be a mapping and 'grid' a list of mappings")
    return Experiment(
        name=raw.get("name", path.stem), description=str(raw.get("description", "")).strip(),
        dataset=raw.get("dataset", "fashion-mnist"), methods=tuple(methods),
        bits=_int_list(raw.get("bits", [16, 32, 64]), "bits", path),
        seeds=_int_list(raw.get("seeds", [0]), "seeds", path),
        protocol=raw.get("protocol", "native"), settings=dict(settings), grid=tuple(grid),
        backbone=raw.get("backbone"), varies=str(raw.get("varies", "")).strip(),
        fixed=str(raw.get("fixed", "")).strip(), path=str(path),
    )
