"""Writing a search's outcome into the card's tuned file (bench/tuned/<card>.yaml).

The file is what `--protocol tuned` reads and what a reviewer audits, so each entry carries its
provenance (trials, ranges, study, sampler, code version) and a replay of the same search must
rewrite nothing; two searches of one card may end together, so the merge runs under a lock.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from bench.runs.spec import entry_budget, load_tuned, tuned_path
from bench.tuning.tune import (
    BASE_PROTOCOL,
    N_STARTUP_TRIALS,
    OBJECTIVE,
    TRIALS_FOLDER,
    TuneOutcome,
    TuneRequest,
    space_for_yaml,
)
from bench.tuning.widening import read_rounds, round_key

WRITE_LOCK_TIMEOUT_S = 600  # a merge takes well under a second; a holder this long is stuck


def write_setting(path: Path | None, request: TuneRequest, outcomes: list[TuneOutcome],
                  results_dir: Path, transfers: dict[str, dict[int, Any]] | None = None) -> Path:
    """Merge the chosen values (with provenance) into the card's tuned setting; other
    methods' entries stay. Transfer checks (`bench.tuning.transfer`) given here, or already in the
    entry for the same chosen run, are kept in it. Written atomically (temp file, rename), and
    read-merge-written under a lock: two searches of one card (other methods, or another
    budget) may end at the same moment, and the later rename must not drop the other's entries."""
    from filelock import FileLock

    path = Path(path) if path is not None else tuned_path(request.card.name)
    with FileLock(setting_lock(path, results_dir), timeout=WRITE_LOCK_TIMEOUT_S):
        return _merge_setting(path, request, outcomes, results_dir, transfers)


def setting_lock(path: Path, results_dir: Path) -> Path:
    """The lock beside the studies (ignored by git), one per tuned file."""
    folder = Path(results_dir) / "tuning"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f".{path.stem}-tuned.lock"


def _merge_setting(path: Path, request: TuneRequest, outcomes: list[TuneOutcome], results_dir: Path,
                   transfers: dict[str, dict[int, Any]] | None) -> Path:
    import optuna

    from bench.runs.records import code_version

    card = request.card.name
    existing = load_tuned(card, path)
    methods: dict[str, Any] = dict(existing.methods) if existing else {}
    code = code_version()
    epochs = request.epochs if request.epochs is not None else request.card.schedule.get("epochs")
    for result in outcomes:
        # One entry per (bits, epochs): a search at another budget is kept beside this one.
        previous = existing.entries(result.method) if existing else []
        kept = [e for e in previous if entry_budget(e) != (request.bits, epochs)]
        transfer = {int(b): v for e in previous if entry_budget(e) == (request.bits, epochs)
                    and e.get("best_run_id") == result.best_run_id
                    for b, v in (e.get("transfer") or {}).items()}
        transfer.update((transfers or {}).get(result.method, {}))
        entry = {
            "values": {k: (float(v) if isinstance(v, float) else v) for k, v in result.values.items()},
            "best_val_mAP": round(result.best_value, 6),
            "default_val_mAP": None if result.default_value is None else round(result.default_value, 6),
            "best_trial": result.best_trial,
            "best_run_id": result.best_run_id,
            "trials": result.finished,
            "failed_trials": result.failed,
            "search_space": space_for_yaml(result.space),
            **({"round_space": space_for_yaml(result.extra["round_space"])}
               if result.extra.get("round_space") else {}),
            "bits": request.bits,
            "epochs": epochs,
            "knobs": result.extra.get("knobs"),
            "default_point": result.extra.get("default_point"),
            "default_moved_to_edge": result.extra.get("default_moved_to_edge"),
            "edge_hits": result.extra.get("edge_hits"),
            **({"widened_from": result.extra["widened_from"]} if result.extra.get("widened_from") else {}),
            **({"carried": result.extra["carried"]} if result.extra.get("carried") else {}),
            "seed": request.seed,
            "split_seed": request.split_seed,
            "base_protocol": BASE_PROTOCOL,
            "objective": OBJECTIVE,
            "study": result.study,
            "storage": _shown(result.storage),
            "results": _shown(Path(results_dir) / TRIALS_FOLDER),
            "sampler": f"optuna {optuna.__version__} TPESampler(seed={request.seed}, "
                       f"n_startup_trials={N_STARTUP_TRIALS}), re-seeded per trial, one trial at a time",
            "code": {"commit": code.get("commit"), "dirty": code.get("dirty"),
                     "results_version": code.get("results_version")},
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if transfer:
            entry["transfer"] = dict(sorted(transfer.items()))
        same = [e for e in previous if entry_budget(e) == (request.bits, epochs)
                and _same_result(e, entry)]
        entry = same[0] if same else entry  # a replay rewrites nothing (not even date or commit)
        entries = sorted([*kept, entry], key=entry_budget)
        methods[result.method] = entries[0] if len(entries) == 1 else entries
    payload: dict[str, Any] = {"dataset": card, "methods": dict(sorted(methods.items()))}
    # A round's widening stays with its entries. The file as it is now wins for every other
    # budget: a search of another budget running beside this one may have widened its round
    # since this one started. This search's own round is the one it searched, unless the file
    # already holds a later round of this budget (more trials: a process that started the next
    # widening while this one finished the round before); a round only grows, and fidelity's
    # widening gaps then list this entry as owing the later round's trials.
    on_file = read_rounds(path)
    rounds = {**request.rounds, **on_file}
    key, searched = round_key(request.bits, epochs), request.round()
    if searched.ranges and not (key in on_file and on_file[key].trials > searched.trials):
        rounds[key] = searched
    if rounds:
        payload["widened"] = {key: rounds[key].as_yaml() for key in sorted(rounds)}
    header = (f"# Tuned setting for dataset card '{card}', written by `python -m bench tune`.\n"
              "# `bench run --protocol tuned` = harmonised protocol + each method's `values`.\n"
              "# Provenance per method: trials, best and default validation mAP, search space, study.\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(header + yaml.safe_dump(payload, sort_keys=False, default_flow_style=None, width=100))
    tmp.replace(path)
    return path


def _same_result(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """The same search outcome: values, chosen run, trial counts, ranges and transfer checks
    (provenance such as the date and the commit of a replay does not count)."""
    keys = ("values", "best_run_id", "best_val_mAP", "trials", "failed_trials", "search_space",
            "bits", "epochs", "seed", "split_seed", "transfer", "carried", "round_space")

    def normal(entry: dict[str, Any]) -> Any:  # as the file stores it (tuples become lists)
        return yaml.safe_load(yaml.safe_dump({key: entry.get(key) for key in keys}))

    return normal(old) == normal(new)


def _shown(path: Path) -> str:
    from bench.data.loading import REPO_ROOT

    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)
