"""`python -m bench run`: train and evaluate methods x bits x seeds (or a named experiment).

Exit codes: 0 every run has a complete record; 1 some runs failed (each is recorded with
its reason and listed at the end; rerunning redoes only those and any unfinished ones);
2 bad input (one line on stderr; nothing trained, no stored record changed).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.runs.spec import PER_SEED

EXIT_CODES = "exit codes: 0 all runs complete, 1 some runs failed (see the list), 2 bad input"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXIT_CODES
    what = parser.add_argument_group("what to run")
    what.add_argument("--methods", help="comma-separated method names (see `bench list`)")
    what.add_argument("--bits", help="comma-separated code lengths, e.g. 16,32,64")
    what.add_argument("--dataset", help="dataset card name (default: fashion-mnist)")
    what.add_argument("--seeds", help="comma-separated seeds (default: 0)")
    what.add_argument("--experiment", help="named experiment in bench/experiments/ (or a YAML path)")
    what.add_argument("--protocol", choices=("native", "harmonised", "tuned"),
                      help="native: each method's published optimizer/schedule; harmonised: one "
                           "shared optimizer and schedule for all; tuned: harmonised plus the values "
                           "`bench tune` committed for the card (bench/tuned/<card>.yaml). Default: "
                           "tuned when that file covers every method, else the card's protocol "
                           "(harmonised for backbones trained from scratch)")
    what.add_argument("--epochs", type=int, help="override the number of training epochs")
    what.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                      help="override a setting, e.g. --set lr=1e-4 (repeatable)")
    what.add_argument("--backbone", help="override the dataset card's backbone")
    what.add_argument("--split-seed", default=None,
                      help="seed of the data split (default: the experiment's, else 0), or per-seed: "
                           "each seed trains on its own split (seed = init + data order + split)")
    how = parser.add_argument_group("how to run")
    how.add_argument("--results", default=None, help="results directory (default: results/)")
    how.add_argument("--data-root", help="folder holding the dataset files")
    how.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    how.add_argument("--no-pretrained", action="store_true",
                     help="train torchvision backbones from scratch (no local ImageNet weights)")
    how.add_argument("--weights", help="local file with ImageNet weights for the backbone")
    how.add_argument("--force", action="store_true", help="rerun runs that already have a record")
    how.add_argument("--attack", default=None, metavar="TARGET[:KEY=VALUE,...]",
                     help="also evaluate the queries under an L-inf PGD attack on their codes "
                          "(bench/evaluation/attack.py): center (CgAT's class center code) or self (the "
                          "query's own code), e.g. center:eps=8/255,steps=20; stored beside the "
                          "record under <results>/attacks/; a stored run trains again for it. "
                          "Default: the experiment's `attack`, if it names one")
    how.add_argument("--jobs", type=int, default=1,
                     help="parallel runs: local worker processes, or LocalCluster workers with "
                          "--backend dask (default 1)")
    how.add_argument("--backend", default=None,
                     help="local (this machine, joblib processes; default) or dask (a Dask "
                          "cluster: a LocalCluster of --jobs workers, or --scheduler ADDRESS)")
    how.add_argument("--scheduler", metavar="ADDRESS",
                     help="Dask scheduler address, e.g. tcp://10.0.0.1:8786 (implies --backend dask)")
    how.add_argument("--threads", type=int, default=None,
                     help="torch threads per run (default: 1, fixed, so records do not depend on "
                          "--jobs; parallelise with --jobs instead. BENCH_FAST=0 (legacy path): "
                          "the machine's cores divided by --jobs)")
    how.add_argument("--onednn", action="store_true",
                     help="legacy path only (BENCH_FAST=0): oneDNN CPU kernels; the default fast "
                          "path always uses them, at a fixed thread count")
    how.add_argument("--workers", type=int, default=0, help="DataLoader workers for image files")
    how.add_argument("--quiet", action="store_true", help="no progress bars")
    how.add_argument("--dry-run", action="store_true", help="list the runs and whether they are done")


def parse_int_list(text: str, flag: str, minimum: int, example: str = "16,32,64") -> list[int]:
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            value = None
        if value is None or value < minimum:
            kind = "positive integers" if minimum > 0 else "non-negative integers"
            raise UserError(f"{flag} '{part}' is not valid; give comma-separated {kind}, e.g. {example}")
        values.append(value)
    if not values:
        raise UserError(f"{flag} is empty")
    return values


def parse_int(text: str | int, flag: str, minimum: int, example: str) -> int:
    """One integer flag value >= minimum, or a one-line UserError naming it and an example."""
    try:
        value = int(str(text).strip())
    except ValueError:
        value = None
    if value is None or value < minimum:
        kind = "a positive integer" if minimum > 0 else "a non-negative integer"
        raise UserError(f"{flag} '{text}' is not valid; give {kind}, e.g. {example}")
    return value


def parse_seed(text: str | int, flag: str) -> int:
    """One seed: a non-negative integer (numpy's generators refuse negative seeds)."""
    return parse_int(text, flag, 0, "0")


def parse_split_seed(text: str | None, experiment: Any) -> int | str:
    """--split-seed N (one split for every seed) or `per-seed` (each seed its own split, so a
    seed replicates initial weights, data order and split); default: the experiment's, else 0."""
    if text is None:
        return experiment.split_seed if experiment is not None else 0
    if str(text).strip() == PER_SEED:
        return PER_SEED
    try:
        return parse_seed(text, "--split-seed")
    except UserError:
        raise UserError(f"--split-seed '{text}' is not valid; give a non-negative integer or "
                        f"{PER_SEED}") from None


def parse_settings(items: list[str]) -> dict[str, str]:
    settings = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set '{item}' is not KEY=VALUE (e.g. --set lr=1e-4)")
        settings[key.strip()] = value.strip()
    return settings


def table_budget(args: argparse.Namespace, card: Any) -> None:
    """A bare run is a cell of the card's primary table (`table:` in the card), so that its cells
    can be set beside the committed table's: it trains at the table's epoch budget (--epochs or
    --set epochs= choose another) and on its split rule (--split-seed chooses another), since a
    per-seed table's seed 0 is a different run from seed 0 on the fixed split."""
    from bench.sweeps.experiments import load_experiment

    if not card.table:
        return
    table = load_experiment(card.table)
    notes = []
    if args.epochs is None and "epochs" not in parse_settings(args.settings):
        epochs = table.settings.get("epochs")
        if epochs is not None:
            args.epochs = int(epochs)
            notes.append(f"budget: {epochs} epochs, the budget of {card.name}'s table "
                         f"'{card.table}' (--epochs to change)")
    if args.split_seed is None:
        args.split_seed = str(table.split_seed)
        if table.split_seed != 0:  # the default's note would only repeat it
            notes.append(f"split: {table.split_seed}, the split rule of '{card.table}' "
                         f"(--split-seed to change)")
    if notes:
        args.table_note = "\n".join(notes)


def budget_epochs(args: argparse.Namespace, experiment: Any, card: Any) -> int | None:
    """The epochs every run of the command will have when one value applies to all (--epochs,
    --set epochs=, the experiment's settings, else the card's), for choosing tuned values;
    None when a grid varies them (each run is then checked when its config is built)."""
    if args.epochs is not None:
        return int(args.epochs)
    given = parse_settings(args.settings).get("epochs")
    if given is None and experiment is not None:
        if any("epochs" in entry for entry in experiment.grid):
            return None
        given = experiment.settings.get("epochs")
    try:
        return int(given) if given is not None else card.schedule.get("epochs")
    except ValueError:
        return None  # refused with the other settings, naming where it came from


def build_specs(args: argparse.Namespace) -> list:
    """Expand CLI flags (and an optional experiment) into RunSpecs; validates everything. An
    experiment made of parts expands part by part (--methods keeps each part's methods that it
    names); what a part notes (its protocol, a budget refusal) is joined on `args`."""
    from bench.sweeps.experiments import load_experiment

    experiment = load_experiment(args.experiment) if args.experiment else None
    if experiment is not None and experiment.attack is not None:
        args.experiment_attack = experiment.attack
    if experiment is None or not experiment.parts:
        return _build_unit(args, experiment)
    requested = None if args.methods is None else [m.strip() for m in args.methods.split(",")]
    if requested is not None:
        missing = [m for m in requested if m not in experiment.methods]
        if missing:
            raise UserError(f"--methods: {', '.join(missing)} not in experiment {experiment.name} "
                            f"(its methods: {', '.join(experiment.methods)})")
    specs, notes, refusals = [], [], []
    for part in experiment.parts:
        chosen = [m for m in part.methods if requested is None or m in requested]
        if not chosen:
            continue
        part_args = argparse.Namespace(**{**vars(args), "methods": ",".join(chosen)})
        specs += _build_unit(part_args, part)
        if getattr(part_args, "protocol_note", None):
            notes.append(f"{', '.join(chosen)}: {part_args.protocol_note}")
        if getattr(part_args, "budget_refusal", None):
            refusals.append(part_args.budget_refusal)
    if notes:
        args.protocol_note = "\n".join(notes)
    if refusals:
        args.budget_refusal = "; ".join(refusals)
    return specs


def _build_unit(args: argparse.Namespace, experiment: Any) -> list:
    """The RunSpecs of one run set: the CLI flags over an experiment (or one of its parts)."""
    from bench.data.loading import load_card
    from bench.network.backbones import PRETRAINABLE as PRETRAINABLE_BACKBONES
    from bench.runs.spec import (
        PROTOCOLS,
        RunSpec,
        check_override_keys,
        check_override_values,
        default_protocol,
        tuned_values,
    )
    from methods import get_method

    if experiment is None and args.methods is None:
        raise UserError("give --methods (e.g. --methods crh,csq) or --experiment NAME")
    methods = ([m.strip() for m in args.methods.split(",")] if args.methods is not None
               else list(experiment.methods))
    for name in methods:
        get_method(name)
    bits = parse_int_list(args.bits, "--bits", 1) if args.bits is not None else list(
        experiment.bits if experiment else (16, 32, 64))
    seeds = parse_int_list(args.seeds, "--seeds", 0, "0,1,2") if args.seeds is not None else list(
        experiment.seeds if experiment else (0,))
    dataset = args.dataset or (experiment.dataset if experiment else "fashion-mnist")
    card = load_card(dataset)
    if experiment is None:
        table_budget(args, card)
    split_seed = parse_split_seed(args.split_seed, experiment)
    protocol = args.protocol or (experiment.protocol if experiment else None)
    epochs = budget_epochs(args, experiment, card)
    if protocol is None:
        protocol, why = default_protocol(card, methods, bits, epochs)
        args.protocol_note = f"protocol: {protocol} ({why}; choose with --protocol)"
    if protocol not in PROTOCOLS:
        raise UserError(f"protocol '{protocol}' is not valid; choose from {', '.join(PROTOCOLS)}")
    if protocol == "tuned":
        refusals = []
        for name in methods:
            for bit in bits:  # refuse now, naming the file, a method without values at this budget
                try:
                    tuned_values(card, name, bit, epochs)
                except UserError as error:
                    if "no tuned values" in str(error):
                        raise
                    refusals.append(str(error))
        if refusals:  # refused in `execute` unless every run's record already exists
            more = f" ({len(refusals) - 1} more (method, bits) refused alike)" if len(refusals) > 1 else ""
            args.budget_refusal = f"{refusals[0]}{more}"
    backbone = args.backbone or (experiment.backbone if experiment else None)
    from bench.network.backbones import check_backbone_fits

    check_backbone_fits(card, backbone or card.backbone)
    if getattr(args, "attack", None) is not None and not card.is_image:
        raise UserError(f"--attack perturbs image pixels; dataset '{card.name}' has feature vectors "
                        f"({card.modality}), which have no pixel budget")
    pretrained = (backbone or card.backbone) in PRETRAINABLE_BACKBONES and not args.no_pretrained

    cli_settings = parse_settings(args.settings)
    grid = list(experiment.grid) if experiment else [{}]
    # Each source of settings is checked on its own, so an error names where the bad key or
    # value came from: the experiment file or --set.
    sources = [(experiment.path, entry) for entry in [experiment.settings, *grid]] if experiment else []
    for where, entry in [*sources, ("--set", cli_settings)]:
        check_override_keys(methods, list(entry), where)
        check_override_values(methods, entry, where)
    shared: dict[str, Any] = dict(experiment.settings) if experiment else {}
    shared.update(cli_settings)
    if args.epochs is not None:
        if args.epochs < 1:
            raise UserError(f"--epochs {args.epochs}: must be a positive integer")
        shared["epochs"] = args.epochs
    specs = []
    for method in methods:
        for entry in grid:
            overrides = {**shared, **entry}
            for bit in bits:
                for seed in seeds:
                    specs.append(RunSpec(
                        method=method, dataset=dataset, bits=bit, seed=seed, protocol=protocol,
                        backbone=backbone, pretrained=pretrained,
                        split_seed=seed if split_seed == PER_SEED else split_seed,
                        split_rule=PER_SEED if split_seed == PER_SEED else "fixed",
                        overrides=tuple(sorted(overrides.items())),
                    ))
    return specs


def plan_under_budget_check(specs: list, options: Any, refusal: str | None) -> tuple[list, str | None]:
    """The planned runs and the budget refusal, if any: tuned entries searched at another budget
    are let through for planning only (a grid that varies epochs meets them run by run here)."""
    from bench.runs.spec import budget_check_off
    from bench.sweeps.runner import plan_runs

    try:
        with budget_check_off() if refusal else contextlib.nullcontext():
            return plan_runs(specs, options), refusal
    except UserError as error:
        if not str(error).startswith("protocol tuned:") or "searched at" not in str(error):
            raise
        with budget_check_off():
            return plan_runs(specs, options), str(error)


def execute(args: argparse.Namespace) -> int:
    import sys

    from bench.runs.records import DEFAULT_RESULTS_DIR
    from bench.runs.spec import budget_check_off
    from bench.sweeps.parallel import check_executor
    from bench.sweeps.runner import RunOptions, execute_runs, run_state

    backend = args.backend or ("dask" if args.scheduler else "local")
    check_executor(args.jobs, backend, args.scheduler)
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads}: must be a positive integer")
    attack = None
    if args.attack is not None:
        from bench.evaluation.attack import parse_attack

        attack = parse_attack(args.attack)
    specs = build_specs(args)
    if attack is None and getattr(args, "experiment_attack", None):
        from bench.evaluation.attack import parse_attack

        attack = parse_attack(args.experiment_attack)  # the experiment's; --attack wins
    note = getattr(args, "protocol_note", None)  # which protocol a bare command resolved to
    if getattr(args, "table_note", None):
        note = f"{args.table_note}\n{note}" if note else args.table_note
    options = RunOptions(
        results_dir=Path(args.results) if args.results else DEFAULT_RESULTS_DIR,
        data_root=args.data_root, device=args.device, force=args.force,
        progress_bars=not args.quiet, num_workers=args.workers, weights_file=args.weights,
        torch_threads=args.threads, onednn=args.onednn, attack=attack,
    )
    refusal = getattr(args, "budget_refusal", None)
    planned, refusal = plan_under_budget_check(specs, options, refusal)
    if args.dry_run:  # reads records, changes nothing
        if refusal:
            print(f"note: a real run would refuse: {refusal}")
        for run in planned:
            state, why = run_state(run, options)
            if args.force and state == "done":
                state = "redo"
            print(f"{state:7s} {run.spec.label():60s} {run.path}" + (f"  ({why})" if why else ""))
        if note:
            print(note)
        return 0
    if note:
        print(note, flush=True)
    if refusal:
        # Reading a stored record applies no setting: only runs still to train are refused.
        # (an attack-only rerun reproduces a stored run with the values it was made with)
        # (only tuned runs meet tuned values: an experiment's harmonised part trains regardless)
        to_train = [run for run in planned if run.spec.protocol == "tuned"
                    and (args.force or run_state(run, options)[0] not in ("done", "attack"))]
        if to_train:
            raise UserError(refusal)
        tuned = sum(run.spec.protocol == "tuned" for run in planned)
        what = "every record exists" if tuned == len(planned) else "every tuned run's record exists"
        print(f"note: {what} ({tuned}); they were made with tuned values searched at another "
              f"budget, and no tuned run is trained: {refusal}", flush=True)
    with budget_check_off() if refusal else contextlib.nullcontext():
        outcome = execute_runs(specs, options, jobs=args.jobs, backend=backend,
                               scheduler=args.scheduler)
    print(
        f"{len(outcome.completed)} completed, {len(outcome.skipped)} skipped (record exists), "
        f"{len(outcome.failed)} failed; records in {options.results_dir / 'runs'}"
    )
    for path in outcome.set_aside:
        print(f"  corrupt record set aside: {path}")
    for identifier, reason in outcome.failed:
        print(f"  failed {identifier}: {reason}")
    if outcome.completed or outcome.skipped:
        from bench.sweeps.summary import print_regression, print_summary

        shown = print_summary(options.results_dir, [*outcome.completed, *outcome.skipped])
        committed = DEFAULT_RESULTS_DIR
        print_regression(shown, committed, Path(options.results_dir).resolve() == committed.resolve())
    if outcome.aborted:
        print(f"error: sweep stopped early: {outcome.aborted}", file=sys.stderr)
    elif outcome.failed:
        print(f"{len(outcome.failed)} runs failed (exit code 1); rerun to retry them", file=sys.stderr)
    return outcome.exit_code
