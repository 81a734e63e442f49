"""Run specifications: one method x dataset x bits x seed x settings, frozen and hashable.

The configuration a run trains with is resolved in one place, in this order (later wins):
  1. the training settings every method has (`methods.base.TRAINING_PARAMS`) and the
     method's own parameters,
  2. the protocol: "native" applies the method's published training settings,
     "harmonised" applies one shared optimizer and schedule to every method, "tuned" is
     harmonised plus the values `bench tune` chose for (card, method) at the run's bit length
     and epoch budget, read from the committed setting bench/tuned/<card>.yaml (named, with its
     sha256, in the config); a setting searched at another budget is refused (`tuned_entry`),
  3. the dataset card's schedule (epochs, eval_every) where 1-2 left them unset,
  4. explicit overrides (experiment files, `--set KEY=VALUE`, `--epochs`).
The run's identity is a hash of the fully resolved configuration, the results version and
the backbone's architecture, so changing a default, the code's numbers or a backbone makes a
new run instead of silently reusing an old record.

Which protocol a bare `bench run` uses is the card's choice (`default_protocol`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import RESULTS_VERSION
from bench.data.loading import REPO_ROOT, DatasetCard, load_card, read_yaml
from bench.errors import UserError
from bench.runs.identity import architecture_token, identity_digest
from methods import get_method, method_source
from methods.base import HARMONISED, TRAINING_PARAMS, HashMethod, Param

PROTOCOLS = ("native", "harmonised", "tuned")
TUNED_DIR = Path(__file__).resolve().parents[1] / "tuned"
TUNED_ENV_VAR = "BENCH_TUNED_DIR"  # another folder of tuned settings (tests, experiments)
# Config keys that describe where values came from, not values: kept out of the run id so
# re-committing a setting with the same values does not orphan finished runs.
PROVENANCE_KEYS = ("tuned_setting",)
# Entries written before tuned settings were keyed by budget: every one was searched at 32 bits
# and 30 epochs (bench/tuned/README.md), which is how an entry without bits or epochs is read.
LEGACY_BUDGET = (32, 30)
_BUDGET_CHECK = [True]  # False only inside `budget_check_off` (a dry run that lists old records)


PER_SEED = "per-seed"  # the split rule (and `split_seed` value) of a run whose split follows its seed
SPLIT_RULES = ("fixed", PER_SEED)


def split_of(spec: dict | None) -> int | str:
    """A stored spec's split: PER_SEED when each seed draws its own (its split seed is then the
    seed, so not what sets two runs apart), else the fixed split's seed (0 when unrecorded)."""
    spec = spec or {}
    return PER_SEED if spec.get("split_rule") == PER_SEED else spec.get("split_seed", 0)


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
    # "fixed": every seed trains on split `split_seed` (the v2 tables); "per-seed": the split
    # follows the seed (split_seed == seed), so a seed replicates init, data order and split.
    # Only a per-seed run names it, so the ids of fixed-split runs are as they always were.
    split_rule: str = "fixed"

    def __post_init__(self) -> None:
        if self.split_rule not in SPLIT_RULES:
            raise UserError(f"split rule '{self.split_rule}' is not valid; choose from "
                            f"{', '.join(SPLIT_RULES)}")
        if self.split_rule == PER_SEED and self.split_seed != self.seed:
            raise UserError(f"a per-seed split has split_seed = seed ({self.seed}), not {self.split_seed}")

    def to_dict(self) -> dict[str, Any]:
        data = {
            "method": self.method, "dataset": self.dataset, "bits": self.bits, "seed": self.seed,
            "protocol": self.protocol, "backbone": self.backbone, "pretrained": self.pretrained,
            "split_seed": self.split_seed, "overrides": dict(self.overrides),
        }
        if self.split_rule != "fixed":
            data["split_rule"] = self.split_rule
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunSpec:
        return cls(
            method=data["method"], dataset=data["dataset"], bits=int(data["bits"]),
            seed=int(data["seed"]), protocol=data["protocol"], backbone=data["backbone"],
            pretrained=bool(data["pretrained"]), split_seed=int(data["split_seed"]),
            overrides=tuple(sorted(data["overrides"].items())),
            split_rule=str(data.get("split_rule", "fixed")),
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
    if isinstance(raw, str) and raw.strip() in param.rules:
        return raw.strip()  # a named rule the method resolves for the task
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
        rules = f" or {' / '.join(param.rules)}" if param.rules else ""
        raise UserError(f"{where}: {key}={raw!r} is not a valid {kind}{rules}") from None
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


# ----------------------------------------------------------------------------- tuned settings
@dataclass(frozen=True)
class TunedSetting:
    """A committed file of tuned values per method for one card (written by `bench tune`)."""

    path: Path
    sha256: str
    methods: dict[str, dict[str, Any]]  # method -> {"values": {...}, provenance...}

    @property
    def shown_path(self) -> str:
        """The path as a record shows it: repository-relative when inside the repository."""
        try:
            return str(self.path.resolve().relative_to(REPO_ROOT))
        except ValueError:
            return str(self.path)

    def entries(self, method: str) -> list[dict[str, Any]]:
        """The method's entries, one per (bits, epochs) searched (a single mapping or a list)."""
        entry = self.methods.get(method)
        return [] if entry is None else list(entry) if isinstance(entry, list) else [entry]

    def values(self, method: str) -> dict[str, Any] | None:
        """Values of the method's first entry (any budget; `tuned_entry` picks by budget)."""
        entries = self.entries(method)
        return dict(entries[0]["values"]) if entries else None


def entry_budget(entry: dict[str, Any]) -> tuple[int, int]:
    """(bits, epochs) an entry was searched at; LEGACY_BUDGET where it does not say."""
    bits, epochs = entry.get("bits"), entry.get("epochs")
    return (int(bits) if bits is not None else LEGACY_BUDGET[0],
            int(epochs) if epochs is not None else LEGACY_BUDGET[1])


def transfer_checked(entry: dict[str, Any], bits: int) -> bool:
    """The entry carries a passed transfer check to `bits`: its top configurations rerun at that
    length on several seeds, the chosen one within the seeds' spread of the best there
    (`transfer: {BITS: {within_spread: true, ...}}`)."""
    check = (entry.get("transfer") or {}).get(bits) or (entry.get("transfer") or {}).get(str(bits))
    return isinstance(check, dict) and check.get("within_spread") is True


def retired(entry: dict[str, Any], entries: list[dict[str, Any]]) -> bool:
    """A search at one length is retired by a later search at another length of the same epochs
    whose transfer check holds at this one: a length gets its own search only while the check
    from the table's search fails there (rule R4), so once a new round's check holds, that
    round's values apply here too, like every method's whose check held. Dates order the
    searches (a replay keeps its entry's date); the entry stays for the records that used it."""
    bits, epochs = entry_budget(entry)
    date = str(entry.get("date") or "")
    return any(other is not entry and entry_budget(other)[1] == epochs and entry_budget(other)[0] != bits
               and transfer_checked(other, bits) and str(other.get("date") or "") > date for other in entries)


def tuned_entry(setting: TunedSetting, method: str, bits: int,
                epochs: int) -> tuple[dict[str, Any] | None, str]:
    """(entry, "") for the run's budget, or (None, why not) in one line: an entry applies at its
    own (bits, epochs) unless `retired`, or at other bits with the same epochs when it carries
    a transfer check."""
    entries = setting.entries(method)
    for entry in entries:
        if entry_budget(entry) == (bits, epochs) and not retired(entry, entries):
            return entry, ""
    for entry in entries:
        if entry_budget(entry)[1] == epochs and transfer_checked(entry, bits):
            return entry, ""
    searched = ", ".join(f"{b} bits/{e} epochs" for b, e in sorted(entry_budget(x) for x in entries))
    return None, (f"protocol tuned: {setting.shown_path} has values for '{method}' searched at "
                  f"{searched}, not at this run's {bits} bits/{epochs} epochs (and no transfer check "
                  f"to {bits} bits); search at this budget (python -m bench tune --methods {method} "
                  f"--dataset {setting.path.stem} --bits {bits} --epochs {epochs} ...) or use "
                  f"--protocol harmonised")


@contextlib.contextmanager
def budget_check_off() -> Iterator[None]:
    """Let `resolve_config` apply a tuned entry searched at another budget, noting it in the
    provenance (which is not part of the run id): only for listing existing records."""
    _BUDGET_CHECK[0] = False
    try:
        yield
    finally:
        _BUDGET_CHECK[0] = True


def tuned_dir() -> Path:
    return Path(os.environ.get(TUNED_ENV_VAR) or TUNED_DIR)


def tuned_path(card_name: str) -> Path:
    return tuned_dir() / f"{card_name}.yaml"


def load_tuned(card_name: str, path: Path | None = None) -> TunedSetting | None:
    """The tuned setting for `card_name` (None when no file exists); malformed: UserError."""
    path = Path(path) if path is not None else tuned_path(card_name)
    if not path.is_file():
        return None
    raw = read_yaml(path)
    methods = raw.get("methods") if isinstance(raw, dict) else None
    def well_formed(entry: Any) -> bool:
        entries = entry if isinstance(entry, list) and entry else [entry]
        return all(isinstance(e, dict) and isinstance(e.get("values"), dict) for e in entries)

    if not isinstance(methods, dict) or not all(well_formed(e) for e in methods.values()):
        raise UserError(f"tuned setting {path} must map methods: {{METHOD: {{values: {{KEY: VALUE}}, "
                        f"bits: B, epochs: E}}}} (or a list of such entries)")
    if raw.get("dataset", card_name) != card_name:
        raise UserError(f"tuned setting {path} is for dataset '{raw.get('dataset')}', not '{card_name}'")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return TunedSetting(path=path, sha256=digest, methods={str(k): v for k, v in methods.items()})


def tuned_values(card: DatasetCard, method: str, bits: int | None = None,
                 epochs: int | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(values, provenance for the record) of the tuned protocol for (card, method) at the
    run's bits and epochs (both None: any entry); UserError naming the file when there is
    none, and when the only entries were searched at another budget (see `tuned_entry`)."""
    setting = load_tuned(card.name)
    values = setting.values(method) if setting else None
    if setting is None or values is None:
        where = tuned_path(card.name)
        covered = ", ".join(sorted(setting.methods)) if setting else "none"
        raise UserError(
            f"protocol tuned: no tuned values for method '{method}' on dataset '{card.name}' in "
            f"{where} (tuned methods: {covered}); run `python -m bench tune --methods {method} "
            f"--dataset {card.name}` or use --protocol harmonised"
        )
    entry, mismatch = (setting.entries(method)[0], "") if bits is None or epochs is None else (
        tuned_entry(setting, method, bits, epochs))
    if entry is None:
        if _BUDGET_CHECK[0]:
            raise UserError(mismatch)
        entry = setting.entries(method)[0]
    searched_bits, searched_epochs = entry_budget(entry)
    provenance = {"file": setting.shown_path, "sha256": setting.sha256, "method": method,
                  "bits": entry.get("bits"), "trials": entry.get("trials"),
                  "values": dict(entry["values"])}
    if bits is not None and epochs is not None:
        provenance["searched_at"] = {"bits": searched_bits, "epochs": searched_epochs}
        if mismatch:
            provenance["budget_mismatch"] = mismatch
    return dict(entry["values"]), provenance


def card_protocol(card: DatasetCard) -> str:
    """The card's own default protocol: its `protocol` key, else harmonised for a backbone
    that trains from scratch (native learning rates were set for fine-tuning and differ by
    up to 300x) and native for a pretrainable one."""
    from bench.network.backbones import PRETRAINABLE

    value = getattr(card, "protocol", None)
    if value is None and card.path and Path(card.path).is_file():
        raw = read_yaml(Path(card.path))
        value = raw.get("protocol") if isinstance(raw, dict) else None
    if value is None:
        return "native" if card.backbone in PRETRAINABLE else "harmonised"
    if value not in PROTOCOLS:
        raise UserError(f"{card.path}: protocol '{value}' is not valid; choose from {', '.join(PROTOCOLS)}")
    return str(value)


def default_protocol(card: DatasetCard, methods: list[str], bits: list[int] | None = None,
                     epochs: int | None = None) -> tuple[str, str]:
    """(protocol, why) for a run that names none. Tuned when the committed setting covers
    every requested method (a table never mixes tuned and untuned methods), at every bit length
    and the epoch budget when given, else the card's own protocol; a card that asks for tuned
    without a covering setting gets harmonised."""
    setting = load_tuned(card.name)

    def covered(method: str) -> bool:
        if setting is None or setting.values(method) is None:
            return False
        if bits is None or epochs is None:
            return True
        return all(tuned_entry(setting, method, b, epochs)[0] is not None for b in bits)

    missing = [m for m in methods if not covered(m)]
    if not missing:
        return "tuned", f"default: {setting.shown_path} covers {', '.join(methods)}"
    own = card_protocol(card)
    if own == "tuned":
        return "harmonised", (f"default: card asks for tuned, but {tuned_path(card.name)} lacks "
                              f"{', '.join(missing)}")
    return own, f"default of dataset card {card.name}"


def resolve_config(spec: RunSpec, card: DatasetCard | None = None) -> dict[str, Any]:
    """The complete configuration a run trains with (see the module docstring for order)."""
    method = get_method(spec.method)
    card = card or load_card(spec.dataset)
    if spec.protocol not in PROTOCOLS:
        raise UserError(f"unknown protocol '{spec.protocol}'; valid: {', '.join(PROTOCOLS)}")
    params = method_params(method)
    config = {key: param.default for key, param in params.items()}
    config.update(method.native if spec.protocol == "native" else HARMONISED)
    if spec.protocol == "tuned":
        values, provenance = tuned_values(card, spec.method, spec.bits, run_epochs(spec, config, card))
        where = f"tuned setting {provenance['file']} ({spec.method})"
        for key, raw in values.items():
            if key not in params:
                raise UserError(f"{where}: unknown setting '{key}'; valid: {', '.join(sorted(params))}")
            config[key] = coerce_value(key, raw, params[key], where)
        config["tuned_setting"] = provenance
    for key in ("epochs", "eval_every"):
        if config[key] is None:
            config[key] = card.schedule.get(key)
    for key, raw in spec.overrides:
        if key not in params:
            continue  # a sweep's override for another method in the same sweep
        config[key] = coerce_value(key, raw, params[key], f"method {spec.method}")
    config = method.resolve_rules(config, spec.pretrained)
    if config["epochs"] is None:
        raise UserError(f"no epoch count: set --epochs or schedule.epochs in {card.path}")
    if config["eval_every"] is None:
        config["eval_every"] = max(1, int(config["epochs"]) // 5)
    return config


def run_epochs(spec: RunSpec, config: dict[str, Any], card: DatasetCard) -> int | None:
    """The epoch budget the run will have (an override, else the protocol's, else the card's),
    known before the tuned values are chosen for it."""
    params = method_params(get_method(spec.method))
    for key, raw in spec.overrides:
        if key == "epochs":
            return coerce_value(key, raw, params[key], f"method {spec.method}")
    value = config.get("epochs")
    return int(value) if value is not None else card.schedule.get("epochs")


def resolved_backbone(spec: RunSpec, card: DatasetCard | None = None) -> str:
    return spec.backbone or (card or load_card(spec.dataset)).backbone


def config_identity(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved configuration that identifies a run: provenance notes left out."""
    return {k: v for k, v in config.items() if k not in PROVENANCE_KEYS}


def run_id(spec: RunSpec, config: dict[str, Any], card: DatasetCard | None = None) -> str:
    """Readable prefix plus a hash of everything that determines the run's numbers: the spec,
    the resolved config (without provenance notes), the results version of the code, and the
    backbone's name and architecture token, in the canonical form of `bench.runs.identity` (the
    same id on every machine and under every torch)."""
    card = card or load_card(spec.dataset)
    backbone = resolved_backbone(spec, card)
    identity = {
        **spec.to_dict(), "overrides": None,
        "config": config_identity(config),
        "results_version": RESULTS_VERSION,
        "backbone_architecture": [backbone, architecture_token(backbone, card.input_width)],
    }
    source = method_source(spec.method)
    if not source.builtin:  # a plugin's code is its package version (built-in ids never change)
        identity["method_source"] = {"package": source.package, "version": source.version}
    digest = identity_digest(identity)
    return f"{spec.method}-{spec.bits}b-s{spec.seed}-{spec.protocol}-{digest[:10]}"
