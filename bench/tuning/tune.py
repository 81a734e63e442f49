"""Tuning with the same budget for every method (protocol v2, `python -m bench tune`).

Each method declares its search space next to its params, as a ClassVar
`search_space = {"lr": ("log", 1e-4, 3e-3), "lambda_q": ("log", 1e-5, 1e-1)}` with kinds
  ("log", low, high)    float, log-uniform      ("float", low, high)  float, uniform
  ("int", low, high)    integer, uniform        ("choice", (a, b, ...)) one of the values.
Every method gets the same number of trials at one bit length and seed 0, scored on the
validation metric only (the run record's `selection.best_val_mAP`); the test metrics each
record also holds are never read. Trial 0 is the method's harmonised default with rule defaults
resolved for the card's C and the study's K (e.g. OrthoHash's s = sqrt(K)), so the tuned value
is never worse than the default on validation, and the default's score is kept beside the tuned
one. Knobs several methods share are searched on one range (`methods.base.SHARED_SEARCH`).
A chosen value near a range edge that is not a hard bound is an edge hit: the range of that
search round (card, bits, epochs) is widened and every method searched in it runs the same extra
trials (`bench.tuning.widening`); a widened study starts from the finished trials of the study
it widens (`inherit_trials`). A search at a length where a transfer check failed (rule R4) also
carries the checked study's top configurations (`Carried`): they are its trials too, read from the
check's seed-0 records, and its ranges hold the round they were searched on, so the search can
always reach the value it would replace.

Trials are normal runs (harmonised protocol plus the trial's values as overrides) executed by
`bench.sweeps.runner.execute_runs`, so every trial is a run record and a trial whose record exists is
reused. Trial records live in RESULTS/tuning/runs, apart from RESULTS/runs: the report's tables
group records by their settings, and each trial's searched values would be a variant of its own.
The study lives in SQLite (RESULTS/tuning/<card>-<method>-<bits>b.db, Optuna's TPE sampler);
a killed tuning run resumes: trials left running are finished with their own values, and the
sampler is re-seeded from (seed, trial number) before each new trial, so a resumed study
proposes exactly what an uninterrupted one would have.
The chosen values are merged into a committed setting (bench/tuned/<card>.yaml) with their
provenance (`bench.tuning.setting`); `run --protocol tuned` applies them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.data.loading import DatasetCard
from bench.errors import UserError
from bench.runs.spec import RunSpec, method_params
from bench.tuning.widening import Round, edge_hits, round_key
from methods import get_method
from methods.base import HARMONISED, HashMethod, Task

SPACE_KINDS = ("log", "float", "int", "choice")
DEFAULT_SEARCH_SPACE: dict[str, tuple] = {"lr": ("log", 1e-4, 3e-3)}
BASE_PROTOCOL = "harmonised"
BUDGET_ATTR = "budget_trials"  # the study's user attribute: the searched trials its round gives
TRIALS_FOLDER = "tuning/runs"  # trial records, under the results directory, apart from the tables
N_STARTUP_TRIALS = 5  # TPE's random start: with 12 trials, 5 random (incl. the default) + 7 guided
MIN_TRIALS, MANY_KNOB_TRIALS = 12, 24  # R5: 24 trials for all when any method searches 3+ knobs
OBJECTIVE = "selection.best_val_mAP of each trial's record (validation only; its test mAP is never read)"


class TuningAborted(RuntimeError):
    """The executor broke mid-batch; finished trials are stored, the rest resume next time."""


def search_space(method: str) -> dict[str, tuple]:
    """The method's declared search space, checked: every key a setting of the method, every
    range well-formed (UserError naming the method's file otherwise)."""
    cls: type[HashMethod] = get_method(method)
    space = dict(getattr(cls, "search_space", None) or DEFAULT_SEARCH_SPACE)
    params = method_params(cls)
    where = f"search_space of method '{method}' ({cls.__module__})"
    for key, spec in space.items():
        if key not in params:
            raise UserError(f"{where}: '{key}' is not a setting of the method")
        if not isinstance(spec, (tuple, list)) or not spec or spec[0] not in SPACE_KINDS:
            raise UserError(f"{where}: {key}={spec!r}; give (kind, ...) with kind one of "
                            f"{', '.join(SPACE_KINDS)}")
        kind = spec[0]
        if kind == "choice":
            if len(spec) != 2 or not isinstance(spec[1], (tuple, list)) or not spec[1]:
                raise UserError(f"{where}: {key}={spec!r}; give ('choice', (a, b, ...))")
            continue
        if len(spec) != 3 or not all(isinstance(v, (int, float)) for v in spec[1:]):
            raise UserError(f"{where}: {key}={spec!r}; give ('{kind}', low, high)")
        low, high = spec[1], spec[2]
        if not (math.isfinite(low) and math.isfinite(high) and low < high) or (kind == "log" and low <= 0):
            raise UserError(f"{where}: {key}={spec!r}; need low < high (and low > 0 for log)")
    return space


def suggest(trial: Any, space: dict[str, tuple]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, spec in space.items():
        kind = spec[0]
        if kind == "choice":
            values[key] = trial.suggest_categorical(key, list(spec[1]))
        elif kind == "int":
            values[key] = trial.suggest_int(key, int(spec[1]), int(spec[2]))
        else:
            values[key] = trial.suggest_float(key, float(spec[1]), float(spec[2]), log=kind == "log")
    return values


def representative_task(bits: int = 32, num_classes: int = 10, multi_label: bool = False) -> Task:
    """A task to resolve rule defaults with when no study is at hand (32 bits, 10 classes)."""
    return Task(bits=bits, num_classes=num_classes, multi_label=multi_label, seed=0, epochs=1,
                device=None)  # type: ignore[arg-type]


def resolved_defaults(method: str, space: dict[str, tuple], task: Task | None = None) -> dict[str, Any]:
    """The harmonised protocol's value of every searched key, rule defaults (None, "sqrt_k",
    "10/K"...) resolved to numbers for the task's C and K."""
    cls = get_method(method)
    task = task or representative_task()
    defaults = {key: param.default for key, param in method_params(cls).items()}
    defaults.update(HARMONISED)
    return {key: cls.resolve_default(key, defaults.get(key), task) for key in space}


def outside(space: dict[str, tuple], point: dict[str, Any]) -> list[str]:
    """The keys of `point` whose value lies outside its range in `space`."""
    keys = []
    for key, spec in space.items():
        value = point.get(key)
        if spec[0] == "choice":
            ok = value in spec[1]
        else:
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            ok = number and spec[1] <= value <= spec[2]
        if not ok:
            keys.append(key)
    return keys


def default_point(method: str, space: dict[str, tuple], task: Task | None = None) -> dict[str, Any]:
    """Trial 0 of every study: the resolved default. A default outside its range (a method
    whose rule gives a value no other method has, e.g. CRH's lambda_q 0 on multi-label data)
    is put at the nearest edge, and `outside` names it for the study's record."""
    point = resolved_defaults(method, space, task)
    for key in outside(space, point):
        spec = space[key]
        value = point[key]
        if spec[0] == "choice" or not isinstance(value, (int, float)):
            point[key] = spec[1][0] if spec[0] == "choice" else spec[1]
        else:
            point[key] = min(max(value, spec[1]), spec[2])
    return point


def distributions(space: dict[str, tuple]) -> dict[str, Any]:
    """Optuna's distribution for each knob of a space (what `suggest` draws from)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    out: dict[str, Any] = {}
    for key, spec in space.items():
        if spec[0] == "choice":
            out[key] = CategoricalDistribution(list(spec[1]))
        elif spec[0] == "int":
            out[key] = IntDistribution(int(spec[1]), int(spec[2]))
        else:
            out[key] = FloatDistribution(float(spec[1]), float(spec[2]), log=spec[0] == "log")
    return out


def _inside(narrow: Any, wide: Any) -> bool:
    """Every value `narrow` can draw, `wide` can draw too (same kind and scale)."""
    if type(narrow) is not type(wide):
        return False
    if hasattr(wide, "choices"):
        return set(narrow.choices) <= set(wide.choices)
    return (getattr(narrow, "log", False) == getattr(wide, "log", False)
            and wide.low <= narrow.low and narrow.high <= wide.high)


def inherit_trials(study: Any, folder: Path, prefix: str, space: dict[str, tuple]) -> str | None:
    """Give a new, widened study the finished trials of the narrower study it widens.

    Widening a range after an edge hit must not throw the search away: the earlier study's
    trials are points of the wider space too. The parent is the study in `folder` named
    `<prefix>-<digest>` (same card, method, bits and epochs) with the same knobs, every range
    inside the new one, and the most finished trials; its trials are copied in order (with
    their user attributes, so trial 0 stays the default) under the new ranges, and the search
    goes on from there to the larger trial count every method gets. Returns the parent's name."""
    import optuna
    from optuna.trial import TrialState, create_trial

    wide = distributions(space)
    best: tuple[int, str, list] | None = None
    for path in sorted(folder.glob(f"{prefix}-*.db")):
        if path.stem == study.study_name:
            continue
        try:
            earlier = optuna.load_study(study_name=path.stem, storage=f"sqlite:///{path.resolve()}")
        except KeyError:  # a file holding some other study
            continue
        trials = [t for t in earlier.get_trials(deepcopy=False)
                  if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
        fits = trials and all(set(t.distributions) == set(wide)
                              and all(_inside(d, wide[k]) for k, d in t.distributions.items())
                              for t in trials)
        if fits and (best is None or len(trials) > best[0]):
            best = (len(trials), path.stem, sorted(trials, key=lambda t: t.number))
    if best is None:
        return None
    study.add_trials([create_trial(params=dict(t.params), distributions=wide, value=t.value, state=t.state,
                                   user_attrs={**t.user_attrs, "inherited_from": f"{best[1]}#{t.number}"})
                      for t in best[2]])
    return best[1]


def knob_counts(methods: list[str]) -> dict[str, int]:
    """How many settings each method's search varies (reported beside its tuned table)."""
    return {method: len(search_space(method)) for method in methods}


def trial_budget(methods: list[str]) -> int:
    """R5: the same trial count for all, 12, or 24 when any method searches 3 or more knobs."""
    counts = knob_counts(methods)
    return MANY_KNOB_TRIALS if counts and max(counts.values()) >= 3 else MIN_TRIALS


def space_for_yaml(space: dict[str, tuple]) -> dict[str, list]:
    return {key: [spec[0], list(spec[1])] if spec[0] == "choice" else list(spec)
            for key, spec in space.items()}


def study_name(card: str, method: str, bits: int, epochs: int | None = None,
               space: dict[str, tuple] | None = None) -> str:
    """<card>-<method>-<bits>b[-<epochs>e-<space digest>]: a search at another epoch budget or
    on other ranges is another study (studies from before budgets were keyed keep their name)."""
    name = f"{card}-{method}-{bits}b"
    if epochs is None or space is None:
        return name
    digest = hashlib.sha256(json.dumps(space_for_yaml(space), sort_keys=True).encode()).hexdigest()
    return f"{name}-{epochs}e-{digest[:6]}"


@dataclass(frozen=True)
class Carried:
    """What a search at a length where a transfer check failed carries from the checked search:
    that search's round (its ranges join this length's, so the carried values lie inside the
    space) and its top configurations, which the check already ran here at seed 0, i.e. trials
    of this search that cost nothing. They are added beside the equal budget, not inside it:
    every such search gets the same configurations (the check's top 3) on top of its trials."""

    source: str  # the study whose transfer failed
    round: Round
    configurations: tuple[dict[str, Any], ...] = ()

    @classmethod
    def of(cls, source: str, space: dict[str, Any], trials: int,
           configurations: list[dict[str, Any]]) -> Carried:
        """From the checked search: its study name, the space it searched (as searched or as the
        tuned file stores it), its trial count and the configurations its check ran."""
        ranges = {key: (spec[0], float(spec[1]), float(spec[2])) for key, spec in space.items()
                  if spec[0] != "choice"}
        return cls(source, Round(ranges, int(trials), f"the search {source}"),
                   tuple(dict(values) for values in configurations))


def equal_budget(trials: list[Any], count: int) -> list[Any]:
    """The trials a study chooses among: its first `count` searched trials (the equal budget,
    even if an earlier call ran more) and any configurations carried from a failed transfer
    check (`Carried`), in trial order."""
    ordered = sorted(trials, key=lambda t: t.number)
    searched = [t for t in ordered if "carried_from" not in t.user_attrs][:count]
    carried = [t for t in ordered if "carried_from" in t.user_attrs]
    return sorted([*searched, *carried], key=lambda t: t.number)


@dataclass
class TuneRequest:
    card: DatasetCard
    bits: int
    trials: int
    epochs: int | None = None
    seed: int = 0
    split_seed: int = 0
    pretrained: bool = False
    jobs: int = 1
    backend: str = "local"
    rounds: dict[str, Round] = field(default_factory=dict)  # widened rounds by round_key
    carried: Carried | None = None  # a search after a failed transfer check to these bits

    def round(self) -> Round:
        """This request's search round (its bits and epochs): widened ranges and trial count."""
        epochs = self.epochs if self.epochs is not None else self.card.schedule.get("epochs")
        return self.rounds.get(round_key(self.bits, epochs), Round())

    def searched_round(self) -> Round:
        """The ranges and trial count this search uses: its round, united with the checked
        search's round when it follows a failed transfer check."""
        return self.round().united(self.carried.round) if self.carried else self.round()

    def trial_count(self) -> int:
        """Trials every method gets in this round: the asked count, or a widened round's larger one."""
        return max(self.trials, self.searched_round().trials)


@dataclass
class TuneOutcome:
    method: str
    study: str
    storage: Path
    space: dict[str, tuple]
    values: dict[str, Any]
    best_value: float
    best_trial: int
    best_run_id: str
    default_value: float | None
    finished: int
    failed: int
    new_trials: int
    extra: dict[str, Any] = field(default_factory=dict)


class StudyBusy(UserError):
    """Another process holds the study: `bench tune` leaves that method to it and goes on."""


@contextlib.contextmanager
def _exclusive(lock: Path, name: str) -> Iterator[None]:
    """One tuner per study: a second one would finish the first one's running trials."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StudyBusy(f"another `bench tune` is running study {name} (its lock {lock.name} "
                            f"is held)") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _trial_spec(method: str, values: dict[str, Any], request: TuneRequest) -> RunSpec:
    overrides = dict(values)
    if request.epochs is not None:
        overrides["epochs"] = request.epochs
    return RunSpec(method=method, dataset=request.card.name, bits=request.bits, seed=request.seed,
                   protocol=BASE_PROTOCOL, pretrained=request.pretrained,
                   split_seed=request.split_seed, overrides=tuple(sorted(overrides.items())))


def validation_score(path: Path) -> tuple[float | None, str]:
    """(validation mAP, run id) of a finished trial's record; None for a failed run."""
    from bench.runs.records import CorruptRecord, read_record

    try:
        record = read_record(path)
    except CorruptRecord:
        return None, ""
    value = (record.get("selection") or {}).get("best_val_mAP")
    if record.get("status") != "complete" or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None, str(record.get("run_id", ""))
    return float(value), str(record["run_id"])


def tune_method(method: str, request: TuneRequest, options: Any,
                log: Callable[[str], None] = print) -> TuneOutcome:
    """Bring the study for (card, method, bits) to the round's trial count (`request.trials`,
    or a widened round's larger one) and return the best of its first that many trials (the
    equal budget, even if an earlier call ran more), on the round's ranges."""
    import optuna
    from optuna.trial import TrialState

    from bench.sweeps.runner import execute_runs, plan_runs

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = request.searched_round().space(search_space(method))
    round_space = request.round().space(search_space(method))  # what an edge hit widens
    count = request.trial_count()
    epochs = request.epochs if request.epochs is not None else request.card.schedule.get("epochs")
    name = study_name(request.card.name, method, request.bits, epochs, space)
    folder = Path(options.results_dir) / "tuning"
    options = dataclasses.replace(options, runs_folder=TRIALS_FOLDER)
    storage_path = folder / f"{name}.db"
    with _exclusive(folder / f"{name}.lock", name):
        study = optuna.create_study(
            study_name=name, storage=f"sqlite:///{storage_path.resolve()}", direction="maximize",
            load_if_exists=True, sampler=optuna.samplers.TPESampler(seed=request.seed),
        )
        if not study.trials and epochs is not None:
            inherit_trials(study, folder, name.rsplit("-", 1)[0], space)
        if not study.trials:
            card = request.card
            task = Task(bits=request.bits, num_classes=card.num_classes, multi_label=card.multi_label,
                        seed=request.seed, epochs=request.epochs or card.schedule.get("epochs") or 1,
                        device=None)  # type: ignore[arg-type]
            point = default_point(method, space, task)
            moved = outside(space, resolved_defaults(method, space, task))
            study.enqueue_trial(point, user_attrs={"default": True, "default_moved_to_edge": moved})
        finished = (TrialState.COMPLETE, TrialState.FAIL)
        new_trials = carry_in(study, method, request, space, options, log) if request.carried else 0

        def searched_count() -> int:
            return len([t for t in study.get_trials(deepcopy=False, states=finished)
                        if "carried_from" not in t.user_attrs])

        if searched_count() < count and study.user_attrs.get(BUDGET_ATTR) != count:
            # The budget this call searches to, for a reader of the study before the tuned file has
            # it (bench.tuning.unwritten); set only when trials are to run, so a replay writes nothing.
            study.set_user_attr(BUDGET_ATTR, count)
        while True:
            done = searched_count()
            room = min(request.jobs, count - done)
            if room <= 0:
                break
            batch: list[tuple[int, dict[str, Any], bool]] = []
            for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if len(batch) == room:
                    break
                if set(stale.params) != set(space):  # killed before all its values were drawn
                    study.tell(stale.number, state=TrialState.PRUNED)  # not counted as a trial
                    continue
                batch.append((stale.number, dict(stale.params), True))
            while len(batch) < room:
                # Re-seed per trial: the proposal is a function of (seed, history), so a killed
                # and resumed study proposes what an uninterrupted one would have.
                number = len(study.trials)
                study.sampler = optuna.samplers.TPESampler(
                    seed=(request.seed * 1_000_003 + number) % 2**31, n_startup_trials=N_STARTUP_TRIALS)
                trial = study.ask()
                batch.append((trial.number, suggest(trial, space), False))
            specs = [_trial_spec(method, values, request) for _, values, _ in batch]
            planned = {run.spec: run for run in plan_runs(specs, options)}
            outcome = execute_runs(specs, options, jobs=min(request.jobs, len(specs)),
                                   backend=request.backend)
            if outcome.aborted:
                raise TuningAborted(outcome.aborted)
            for (number, values, resumed), spec in zip(batch, specs, strict=True):
                value, run_id = validation_score(planned[spec].path)
                shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                  for k, v in values.items())
                if value is None:
                    study.tell(number, state=TrialState.FAIL)
                    log(f"{name} trial {number}: {shown} -> run failed ({run_id})")
                else:
                    study.tell(number, value)
                    log(f"{name} trial {number}: {shown} -> validation mAP {value:.4f}"
                        + (" (resumed)" if resumed else ""))
                new_trials += 1
        trials = sorted(study.get_trials(deepcopy=False, states=finished), key=lambda t: t.number)
        budget = equal_budget(trials, count)
        searched = [t for t in budget if "carried_from" not in t.user_attrs]
        complete = [t for t in budget if t.state == TrialState.COMPLETE]
        if not complete:
            raise UserError(f"{name}: all {len(budget)} trials failed; widen or move the search "
                            f"space of '{method}' (see its search_space)")
        best = max(complete, key=lambda t: (t.value, -t.number))
        defaults = [t for t in complete if t.user_attrs.get("default")]
        best_spec = _trial_spec(method, dict(best.params), request)
        best_run = plan_runs([best_spec], options)[0]
    return TuneOutcome(
        method=method, study=name, storage=storage_path, space=space, values=dict(best.params),
        best_value=float(best.value), best_trial=best.number, best_run_id=best_run.run_id,
        default_value=float(defaults[0].value) if defaults else None, finished=len(searched),
        failed=sum(t.state != TrialState.COMPLETE for t in searched), new_trials=new_trials,
        extra={"default_point": dict(trials[0].params) if trials else None,
               "default_moved_to_edge": list(trials[0].user_attrs.get("default_moved_to_edge", []))
               if trials else [],
               "edge_hits": [list(hit) for hit in edge_hits(dict(best.params), round_space)],
               **({"round_space": round_space} if round_space != space else {}),
               "widened_from": next((str(t.user_attrs["inherited_from"]).split("#")[0]
                                     for t in trials if "inherited_from" in t.user_attrs), None),
               "knobs": len(space),
               **({"carried": {"from": request.carried.source,
                               "trials": [t.number for t in budget if "carried_from" in t.user_attrs]}}
                  if request.carried else {})},
    )


def carry_in(study: Any, method: str, request: TuneRequest, space: dict[str, tuple], options: Any,
             log: Callable[[str], None]) -> int:
    """Add the carried configurations (`Carried`) the study does not hold yet as finished trials,
    scored from their records at this length and seed (the transfer check's seed-0 runs, so
    normally read, not trained). Returns how many were added."""
    from optuna.trial import TrialState, create_trial

    from bench.sweeps.runner import execute_runs, plan_runs

    carried = request.carried
    assert carried is not None
    held = {json.dumps(t.params, sort_keys=True) for t in study.get_trials(deepcopy=False)
            if "carried_from" in t.user_attrs}
    todo = [(rank, values) for rank, values in enumerate(carried.configurations)
            if json.dumps(values, sort_keys=True) not in held]
    if not todo:
        return 0
    specs = [_trial_spec(method, values, request) for _, values in todo]
    planned = {run.spec: run for run in plan_runs(specs, options)}
    outcome = execute_runs(specs, options, jobs=min(request.jobs, len(specs)), backend=request.backend)
    if outcome.aborted:
        raise TuningAborted(outcome.aborted)
    wide = distributions(space)
    for (rank, values), spec in zip(todo, specs, strict=True):
        value, run_id = validation_score(planned[spec].path)
        study.add_trial(create_trial(
            params=dict(values), distributions={k: wide[k] for k in values}, value=value,
            state=TrialState.COMPLETE if value is not None else TrialState.FAIL,
            user_attrs={"carried_from": f"{carried.source} top {rank + 1}", "run_id": run_id}))
        log(f"{study.study_name}: carried {carried.source}'s top {rank + 1} "
            + ("-> run failed" if value is None else f"-> validation mAP {value:.4f}"))
    return len(todo)
