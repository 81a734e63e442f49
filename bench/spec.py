"""Run specifications: one method x dataset x bits x seed x settings, frozen and hashable.

The configuration a run trains with is resolved in one place, in this order (later wins):
  1. the training settings every method has (`methods.base.TRAINING_PARAMS`) and the
     method's own parameters,
  2. the protocol: "native" applies the method's published training settings,
     "harmonised" applies one shared optimizer and schedule to every method,
  3. the dataset card's schedule (epochs, eval_every) where 1-2 left them unset,
  4. explicit overrides (experiment files, `--set KEY=VALUE`, `--epochs`).
The run's identity is a hash of the fully resolved configuration, so changing a default
makes a new run instead of silently reusing an old record.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from bench.data import DatasetCard, load_card
from bench.errors import UserError
from methods import get_method
from methods.base import HARMONISED, TRAINING_PARAMS, HashMethod, Param

PROTOCOLS = ("native", "harmonised")


@dataclass(frozen=True)
class RunSpec:
    method: str
    dataset: str
    bits: int
    seed: int = 0
    protocol: str = "native"
    backbone: str | None = None  # None: the dataset card's backbone
    pretrained: bool = False
    split_seed: int = 0
    overrides: tuple[tuple[str, Any], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "dataset": self.dataset, "bits": self.bits, "seed": self.seed,
            "protocol": self.protocol, "backbone": self.backbone, "pretrained": self.pretrained,
            "split_seed": self.split_seed, "overrides": dict(self.overrides),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        return cls(
            method=data["method"], dataset=data["dataset"], bits=int(data["bits"]),
            seed=int(data["seed"]), protocol=data["protocol"], backbone=data["backbone"],
            pretrained=bool(data["pretrained"]), split_seed=int(data["split_seed"]),
            overrides=tuple(sorted(data["overrides"].items())),
        )

    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.overrides)
        return f"{self.method} {self.dataset} {self.bits}b seed {self.seed} {self.protocol}" + (
            f" [{extra}]" if extra else ""
        )


def method_params(method: type[HashMethod]) -> dict[str, Param]:
    """Every parameter a method accepts: the shared training settings plus its own."""
    return {**TRAINING_PARAMS, **method.params}


def coerce_value(key: str, raw: Any, param: Param, where: str) -> Any:
    """Convert an override (often a string from the command line) to the parameter's type."""
    default = param.default
    value = raw
    try:
        if isinstance(raw, str):
            text = raw.strip()
            if isinstance(default, bool):
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = text.lower() in ("true", "1", "yes")
            elif isinstance(default, int) or (default is None and key in ("epochs", "eval_every")):
                value = int(text)
            elif isinstance(default, float):
                value = float(text)
            elif text.lower() in ("none", "null"):
                value = None
            else:
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    value = text
        elif isinstance(default, float) and isinstance(raw, int) and not isinstance(raw, bool):
            value = float(raw)
        elif isinstance(default, int) and not isinstance(default, bool) and isinstance(raw, float):
            if raw != int(raw):
                raise ValueError
            value = int(raw)
    except ValueError:
        kind = type(default).__name__ if default is not None else "int"
        raise UserError(f"{where}: {key}={raw!r} is not a valid {kind}") from None
    _check_type(key, raw, value, default, where)
    if param.choices is not None and value not in param.choices:
        raise UserError(
            f"{where}: {key}={value!r} is not valid; choose from {', '.join(map(str, param.choices))}"
        )
    if key in ("epochs", "batch_size", "eval_every") and value is not None and int(value) < 1:
        raise UserError(f"{where}: {key}={value} must be a positive integer")
    return value


def _check_type(key: str, raw: Any, value: Any, default: Any, where: str) -> None:
    """Refuse a value whose type cannot be the parameter's (e.g. a YAML list for a float)
    and non-finite numbers, which would only surface as a NaN loss or a crash mid-sweep."""
    if default is None and key not in ("epochs", "eval_every"):
        return  # no declared type to check against
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int) or default is None:
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (value is None and default is None)
        kind = "integer"
    elif isinstance(default, float):
        ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "number"
        if ok and not math.isfinite(value):
            raise UserError(f"{where}: {key}={raw!r} is not a finite number")
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "string"
    else:
        return
    if not ok:
        raise UserError(f"{where}: {key}={raw!r} is not a valid {kind}")


def check_override_keys(methods: list[str], keys: list[str], where: str) -> None:
    """An override must be known to at least one selected method."""
    known: set[str] = set()
    for name in methods:
        known |= set(method_params(get_method(name)))
    for key in keys:
        if key not in known:
            raise UserError(
                f"{where}: unknown setting '{key}' for methods {', '.join(methods)}; "
                f"valid settings: {', '.join(sorted(known))}"
            )


def check_override_values(methods: list[str], overrides: dict[str, Any], where: str) -> None:
    """Convert every override for every selected method that has it, so a bad value is
    refused naming where it came from (the experiment file, or --set) before planning."""
    for name in methods:
        params = method_params(get_method(name))
        for key, raw in overrides.items():
            if key in params:
                coerce_value(key, raw, params[key], where)


def resolve_config(spec: RunSpec, card: DatasetCard | None = None) -> dict[str, Any]:
    """The complete configuration a run trains with (see the module docstring for order)."""
    method = get_method(spec.method)
    card = card or load_card(spec.dataset)
    if spec.protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol '{spec.protocol}'; valid: {', '.join(PROTOCOLS)}")
    params = method_params(method)
    config = {key: param.default for key, param in params.items()}
    config.update(method.native if spec.protocol == "native" else HARMONISED)
    for key in ("epochs", "eval_every"):
        if config[key] is None:
            config[key] = card.schedule.get(key)
    for key, raw in spec.overrides:
        if key not in params:
            continue  # a sweep's override for another method in the same sweep
        config[key] = coerce_value(key, raw, params[key], f"method {spec.method}")
    if config["epochs"] is None:
        raise UserError(f"no epoch count: set --epochs or schedule.epochs in {card.path}")
    if config["eval_every"] is None:
        config["eval_every"] = max(1, int(config["epochs"]) // 5)
    return config


def run_id(spec: RunSpec, config: dict[str, Any]) -> str:
    """Readable prefix plus a hash of everything that determines the run's numbers."""
    identity = {**spec.to_dict(), "overrides": None, "config": config}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return f"{spec.method}-{spec.bits}b-s{spec.seed}-{spec.protocol}-{digest[:10]}"
