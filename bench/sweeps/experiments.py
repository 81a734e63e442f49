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
    attack: center                    # also evaluate every run under this attack (`bench run
                                      # --attack`; the command line's --attack wins)
    archived: why                     # a finished experiment kept for its records, run under
                                      # rules since replaced (the fidelity check lists it apart)
    parts:                            # run sets with their own methods, protocol, settings or
      - {methods: [csq], protocol: tuned}       # grid, each merged over the keys above (one
      - {methods: [cgat], protocol: harmonised,  # experiment whose rows need two protocols)
         grid: [{base: csq}, {base: crh}]}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.data.loading import read_yaml
from bench.errors import UserError
from bench.runs.spec import PER_SEED

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"
_KEYS = {"name", "description", "varies", "fixed", "dataset", "methods", "bits", "seeds",
         "protocol", "settings", "grid", "backbone", "split_seed", "attack", "parts", "archived"}
# What a part may set; the rest (dataset, split, attack, name) is the experiment's.
_PART_KEYS = {"description", "methods", "bits", "seeds", "protocol", "settings", "grid", "backbone"}


@dataclass(frozen=True)
class Experiment:
    name: str
    description: str
    dataset: str
    methods: tuple[str, ...]
    bits: tuple[int, ...]
    seeds: tuple[int, ...]
    protocol: str | None  # None: the card's default protocol (`bench.runs.spec.default_protocol`)
    settings: dict[str, Any]
    grid: tuple[dict[str, Any], ...]
    backbone: str | None = None
    split_seed: int | str = 0  # a fixed split's seed, or "per-seed": each seed its own split
    varies: str = ""
    fixed: str = ""
    path: str = field(default="")
    attack: str | None = None  # `bench run --attack` text every run of the experiment gets
    parts: tuple[Experiment, ...] = ()  # run sets with their own keys (empty: the experiment is one)

    @property
    def units(self) -> tuple[Experiment, ...]:
        """What expands into runs: the parts, or the experiment itself."""
        return self.parts or (self,)


def available_experiments(directory: Path = EXPERIMENTS_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*.yaml"))


def _int_list(value: Any, key: str, path: Path, minimum: int = 0) -> tuple[int, ...]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in values
    ):
        kind = "a positive integer" if minimum > 0 else "a non-negative integer"
        raise UserError(f"{path}: '{key}' must be {kind} or a list of them, got {value!r}")
    return tuple(values)


def _optional_str(raw: dict[str, Any], key: str, path: Path, default: str | None) -> str | None:
    value = raw.get(key, default)
    if value is not None and not isinstance(value, str):
        raise UserError(f"{path}: '{key}' must be a name (a string), got {value!r}")
    return value


def _describe_available(directory: Path) -> str:
    names = available_experiments(directory)
    return ", ".join(names) if names else f"(none: no .yaml files in {directory})"


def load_experiment(name_or_path: str, directory: Path = EXPERIMENTS_DIR) -> Experiment:
    path = Path(name_or_path)
    is_file_name = bool(path.suffix) or os.sep in name_or_path
    if not path.suffix:
        path = directory / f"{name_or_path}.yaml"
    if not path.is_file():
        if is_file_name:
            raise UserError(
                f"experiment file {path} does not exist; named experiments: "
                f"{_describe_available(directory)}"
            )
        raise UserError(
            f"unknown experiment '{name_or_path}'; valid experiments: {_describe_available(directory)}"
        )
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: an experiment must be a mapping of keys to values")
    unknown = sorted(str(key) for key in set(raw) - _KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key '{unknown[0]}'; valid keys: {', '.join(sorted(_KEYS))}")
    attack = raw.get("attack")
    if attack is not None:
        from bench.evaluation.attack import parse_attack

        if not isinstance(attack, str):
            raise UserError(f"{path}: 'attack' must be an attack as --attack takes it (e.g. center), "
                            f"got {attack!r}")
        try:
            parse_attack(attack)
        except UserError as error:
            raise UserError(f"{path}: 'attack': {error}") from None
    parts_raw = raw.get("parts")
    if parts_raw is None:
        return _experiment(raw, path, attack)
    if not isinstance(parts_raw, list) or not parts_raw or not all(isinstance(p, dict) for p in parts_raw):
        raise UserError(f"{path}: 'parts' must be a list of mappings (each with its own methods, "
                        f"protocol, settings or grid)")
    parts = []
    for number, part in enumerate(parts_raw, 1):
        wrong = sorted(str(key) for key in set(part) - _PART_KEYS)
        if wrong:
            raise UserError(f"{path}: part {number}: key '{wrong[0]}' is the experiment's or unknown; a "
                            f"part may set {', '.join(sorted(_PART_KEYS))}")
        merged = {**{k: v for k, v in raw.items() if k != "parts"}, **part}
        if isinstance(raw.get("settings"), dict) and isinstance(part.get("settings"), dict):
            merged["settings"] = {**raw["settings"], **part["settings"]}
        parts.append(_experiment(merged, path, attack))
    methods = tuple(dict.fromkeys(m for p in parts for m in p.methods))
    whole = _experiment({**{k: v for k, v in raw.items() if k != "parts"}, "methods": list(methods)},
                        path, attack)
    return Experiment(**{**whole.__dict__, "parts": tuple(parts)})


def _experiment(raw: dict[str, Any], path: Path, attack: str | None) -> Experiment:
    """One run set from its (merged) keys, validated."""
    methods = raw.get("methods", [])
    methods = [methods] if isinstance(methods, str) else methods
    if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
        raise UserError(f"{path}: 'methods' must list at least one method name, got {methods!r}")
    settings = raw.get("settings") or {}
    grid = raw.get("grid") or [{}]
    grid_ok = isinstance(grid, list) and all(isinstance(g, dict) for g in grid)
    if not isinstance(settings, dict) or not grid_ok:
        raise UserError(f"{path}: 'settings' must be a mapping and 'grid' a list of mappings")
    for entry in [settings, *grid]:
        for key in entry:
            if not isinstance(key, str):
                raise UserError(f"{path}: setting name {key!r} is not a string")
    split_seed = raw.get("split_seed", 0)
    if split_seed != PER_SEED and (not isinstance(split_seed, int) or isinstance(split_seed, bool)
                                     or split_seed < 0):
        raise UserError(f"{path}: 'split_seed' must be a non-negative integer or 'per-seed', "
                        f"got {split_seed!r}")
    return Experiment(
        name=str(raw.get("name", path.stem)), split_seed=split_seed,
        description=str(raw.get("description", "")).strip(),
        dataset=_optional_str(raw, "dataset", path, "fashion-mnist"), methods=tuple(methods),
        bits=_int_list(raw.get("bits", [16, 32, 64]), "bits", path, minimum=1),
        seeds=_int_list(raw.get("seeds", [0]), "seeds", path),
        protocol=_optional_str(raw, "protocol", path, None), settings=dict(settings),
        grid=tuple(grid), backbone=_optional_str(raw, "backbone", path, None),
        varies=str(raw.get("varies", "")).strip(), fixed=str(raw.get("fixed", "")).strip(),
        path=str(path), attack=attack,
    )
