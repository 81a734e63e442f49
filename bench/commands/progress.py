"""Counting where the reproduction plan stands (rendered by bench.report.progress): each
experiment of results/README.md's plan expanded as `python -m bench run --experiment NAME
--dry-run` expands it, and its runs counted as recorded, to train, or waiting for a search.
Not a command of its own: `python -m bench report` (and `--progress`) use it, with the searches
that have run past the tuned files (bench.tuning.unwritten)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from bench.errors import UserError
from bench.report.progress import PlanState, Progress

# (step of the plan in results/README.md, experiment), in the order the plan runs them.
PLAN: tuple[tuple[str, str], ...] = (
    ("3", "main-table-v3"),
    ("5", "main-table-pairs-v3"),
    ("6", "main-table-multi-v3"),
    ("7", "crh-ablations-v3"),
    ("7", "crh-pairs-reassign-v3"),
    ("8", "hashnet-alpha"),
    ("9", "main-table-wave3"),
    ("9", "main-table-pairs-wave3"),
    ("9", "short-codes"),
    ("9", "short-codes-lbhash"),
    ("9", "robustness"),
    ("9", "unsupervised"),
    ("9", "documents"),
)


def experiment_progress(step: str, name: str, results_dir: Path) -> Progress:
    """Count one experiment's runs by state; reads records, writes nothing."""
    from bench.evaluation.attack import parse_attack
    from bench.sweeps.runner import RunOptions, plan_runs, run_state

    specs, attack = _experiment_specs(name, results_dir)
    options = RunOptions(results_dir=Path(results_dir), attack=parse_attack(attack) if attack else None)
    recorded = to_train = waiting = 0
    seen: set[Path] = set()
    for spec in specs:
        try:  # a tuned run with no tuned entry at its budget is refused here
            planned = plan_runs([spec], options)
        except UserError as error:
            if not str(error).startswith("protocol tuned:"):
                raise
            waiting += 1
            continue
        for run in planned:
            if run.path in seen:
                continue
            seen.add(run.path)
            if run_state(run, options)[0] == "done":
                recorded += 1
            else:
                to_train += 1
    datasets = tuple(dict.fromkeys(spec.dataset for spec in specs))
    return Progress(step, name, datasets, recorded + to_train + waiting, recorded, to_train, waiting)


def _experiment_specs(name: str, results_dir: Path) -> tuple[list, str | None]:
    """The experiment's RunSpecs and its attack, as `bench run --experiment NAME` expands them.
    A tuned experiment of one part whose methods have no tuned values on the card at all is
    refused by that expansion; its runs are expanded as harmonised ones and marked tuned again,
    so that they count (as waiting for a search) instead of hiding the experiment."""
    from dataclasses import replace

    from bench.commands import run as run_command
    from bench.sweeps.experiments import load_experiment

    def expand(*extra: str) -> tuple[list, str | None]:
        parser = argparse.ArgumentParser()
        run_command.configure(parser)
        args = parser.parse_args(["--experiment", name, "--results", str(results_dir), *extra])
        return run_command.build_specs(args), getattr(args, "experiment_attack", None)

    try:
        return expand()
    except UserError as error:
        experiment = load_experiment(name)
        if "no tuned values" not in str(error) or experiment.parts or experiment.protocol != "tuned":
            raise
    specs, attack = expand("--protocol", "harmonised")
    return [replace(spec, protocol="tuned") for spec in specs], attack


def plan_progress(results_dir: Path, plan: Sequence[tuple[str, str]] | None = None) -> list[Progress]:
    """Every planned experiment's counts, in the plan's order (PLAN unless given)."""
    return [experiment_progress(step, name, results_dir) for step, name in (PLAN if plan is None else plan)]


def plan_state(results_dir: Path) -> PlanState:
    """The plan's experiments counted and the searches run past the tuned files."""
    from bench.tuning.unwritten import unwritten_studies

    searches = unwritten_studies(Path(results_dir) / "tuning")
    return PlanState(tuple(plan_progress(results_dir)), tuple(searches))
