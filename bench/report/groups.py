"""What makes runs comparable: scopes, groups of seeds, and cells judged against a seed set.

A *scope* is dataset, protocol, the epoch count and any overridden training setting,
backbone/split seed when not default, the split digest, the epoch budget a tuned run's values
were searched at (`search_epochs`, where the record says: runs from before that field are the
v2 search's and carry none), and the regime when training saw no
labels (`regime=unsupervised`: such runs are never in a supervised table). Inside a scope a *group* is one
method x bit length x configuration; its *variant* is how the method-specific configuration
differs from the method's defaults (empty for the main comparison; CRH's ablations are
variants). A *cell* is a group judged against the seed set expected where it is shown."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.errors import UserError
from bench.report.stats import Stat
from bench.report.util import get, jsonable, method_sort_key
from bench.runs.spec import PER_SEED, split_of

UNSUPERVISED = "unsupervised"  # the scope setting `regime` of runs whose training saw no labels
# Training settings shared by all methods: an overridden one is part of a run's scope.
_SCOPE_SPEC_DEFAULTS = (("backbone", None), ("pretrained", False), ("split_seed", 0))


def expected_seed_set(seed_sets: Sequence[Iterable[int]]) -> tuple[int, ...]:
    """The seeds a table expects of every cell: those present (or attempted: a failed run
    counts) in more than half of its cells. A seed that only a minority of cells has is an
    extra seed there; a seed most cells have but one lacks makes that cell incomplete."""
    sets = [set(s) for s in seed_sets]
    if not sets:
        return ()
    counts = Counter(seed for s in sets for seed in s)
    return tuple(sorted(seed for seed, count in counts.items() if count * 2 > len(sets)))


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
        if with_digest and not self.per_seed:  # a per-seed table already says split=per-seed
            parts.append(f"split {self.digest[:8]}")
        return " · ".join(parts)

    @property
    def per_seed(self) -> bool:
        """Each seed trained on its own split: one table over seeds, told apart by split=per-seed."""
        return self.digest == PER_SEED

    @property
    def slug(self) -> str:
        base = re.sub(r"[^a-z0-9]+", "-", f"{self.dataset}-{self.protocol}".lower()).strip("-")
        tag = hashlib.sha256(jsonable([self.settings, self.digest]).encode()).hexdigest()[:6]
        return f"{base}-{tag}"

    @property
    def unsupervised(self) -> bool:
        """Training saw no labels: the scope's tables stand apart from every supervised table."""
        return dict(self.settings).get("regime") == json.dumps(UNSUPERVISED)

    @property
    def epochs(self) -> int:
        value = dict(self.settings).get("epochs")
        return int(json.loads(value) or 0) if value is not None else 0


def scope_of(record: dict) -> Scope:
    from methods.base import TRAINING_PARAMS

    spec, config = record.get("spec") or {}, record.get("config") or {}
    settings: dict[str, Any] = {"epochs": config.get("epochs")}
    for key in sorted(spec.get("overrides") or {}):
        if key in TRAINING_PARAMS and key in config:
            if key == "eval_every" and config[key] == _schedule_eval_every(spec, config):
                continue  # an override equal to the card's cadence changes nothing: same table
            settings[key] = config[key]
    per_seed = split_of(spec) == PER_SEED
    for key, default in _SCOPE_SPEC_DEFAULTS:
        if key == "split_seed" and per_seed:
            continue  # it follows the seed: one table over seeds, each on its own split
        if spec.get(key, default) != default:
            settings[key] = spec.get(key)
    if per_seed:
        settings["split"] = PER_SEED
    # Two searches give one method two sets of tuned values: their runs are two tables, not
    # one cell holding both (the v2 search at 30 epochs against v3's at the table's budget).
    searched = get(record, "config", "tuned_setting", "searched_at", "epochs", default=None)
    if spec.get("protocol") == "tuned" and searched is not None:
        settings["search_epochs"] = int(searched)
    if get(record, "regime", "supervised", default=True) is False:
        settings["regime"] = UNSUPERVISED  # records of supervised runs carry no `regime`
    # A fixed split's tables are keyed by its digest; per-seed splits differ by seed by design.
    digest = PER_SEED if per_seed else str(get(record, "split", "digest", default="") or "")
    return Scope(str(spec.get("dataset")), str(spec.get("protocol")),
                 tuple(sorted((k, jsonable(v)) for k, v in settings.items())), digest[:12])


def _schedule_eval_every(spec: dict, config: dict) -> Any:
    """The validation cadence a run gets without an override: its card's schedule, else one
    fifth of its epochs (the loop's rule); None for a card this code does not know."""
    dataset = str(spec.get("dataset"))
    if dataset not in _CADENCE_CACHE:  # one card read per dataset, not one per record
        from bench.data.loading import load_card

        try:
            _CADENCE_CACHE[dataset] = (True, load_card(dataset).schedule.get("eval_every"))
        except UserError:
            _CADENCE_CACHE[dataset] = (False, None)
    known, value = _CADENCE_CACHE[dataset]
    if not known:
        return None
    return value if value is not None else max(1, int(config.get("epochs") or 0) // 5)


_CADENCE_CACHE: dict[str, tuple[bool, Any]] = {}


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


Variant = tuple[tuple[str, str], ...]


def variant_of(record: dict) -> Variant:
    """Method-specific settings that differ from the method's defaults (empty: main run)."""
    from methods.base import TRAINING_PARAMS

    spec, config = record.get("spec") or {}, record.get("config") or {}
    defaults = method_defaults(str(spec.get("method")), str(spec.get("protocol")))
    if defaults is not None:
        # Rule-valued defaults (HCLM's `auto` features) compare as the value the run resolved.
        from methods import get_method

        defaults = get_method(str(spec.get("method"))).resolve_rules(dict(defaults),
                                                                      bool(spec.get("pretrained")))
    if defaults is not None and spec.get("protocol") == "tuned":
        # A tuned run's baseline is the method's defaults plus the tuned values it trained
        # with (kept in its provenance): only what was changed on top of them is a variant.
        defaults = {**defaults, **tuned_values_of(record)}
    if defaults is not None:
        diff = {k: config[k] for k in sorted(defaults) if k in config and config[k] != defaults[k]}
    else:  # unknown method: trust the overrides the run was started with
        diff = {k: config[k] for k in sorted(spec.get("overrides") or {})
                if k in config and k not in TRAINING_PARAMS}
    return tuple((k, jsonable(v)) for k, v in sorted(diff.items()))


def tuned_values_of(record: dict) -> dict[str, Any]:
    """The tuned values a run of the tuned protocol applied, as its provenance recorded them
    (config.tuned_setting.values); empty when the record predates that field."""
    provenance = get(record, "config", "tuned_setting", default=None) or {}
    values = provenance.get("values") if isinstance(provenance, dict) else None
    return dict(values) if isinstance(values, dict) else {}


def describe_variant(variant: Variant) -> str:
    if not variant:
        return "defaults"
    return ", ".join(f"{k}={json.loads(v)}" for k, v in variant)


@dataclass
class Group:
    """One method x bit length x configuration inside a scope; its runs by seed."""

    scope: Scope
    method: str
    bits: int
    variant: Variant
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
