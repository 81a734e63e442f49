"""`python -m bench tune`: search each method's learning rate and main knobs with the same
number of trials, on validation only, and write the chosen values (see `bench/tuning/tune.py`).

Where the chosen values go: beside the studies, `<results>/tuning/<card>.yaml`, unless the
user names a file (`--output FILE`) or asks for the committed setting that `--protocol tuned`
reads (`--commit`: bench/tuned/<card>.yaml). A trial search never overwrites the committed
setting by default.

Exit codes: 0 tuned and written; 1 the executor broke mid-batch (finished trials are stored;
rerun to resume); 2 bad input (one line on stderr; nothing trained, nothing written).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.errors import UserError

EXIT_CODES = "exit codes: 0 tuned and written, 1 interrupted (rerun to resume), 2 bad input"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXIT_CODES
    what = parser.add_argument_group("what to tune")
    what.add_argument("--methods", required=True, help="comma-separated method names (see `bench list`)")
    what.add_argument("--bits", default="32", help="the one code length to tune at (default 32)")
    what.add_argument("--trials", required=True,
                      help="trials per method (the same for every method; a study that already has "
                           "them reuses them: rerunning with more trials adds only the difference)")
    what.add_argument("--dataset", help="dataset card name (default: fashion-mnist)")
    what.add_argument("--epochs", help="training epochs per trial (default: the card's schedule)")
    what.add_argument("--seed", default="0",
                      help="training seed of every trial and the sampler's seed (default 0)")
    what.add_argument("--split-seed", default="0", help="seed of the data split (default 0)")
    where = what.add_mutually_exclusive_group()
    where.add_argument("--output", help="tuned setting to write or update (default: "
                                        "<results>/tuning/<card>.yaml, beside the studies)")
    where.add_argument("--commit", action="store_true",
                       help="write the committed setting bench/tuned/<card>.yaml, which "
                            "`bench run --protocol tuned` reads")
    how = parser.add_argument_group("how to run")
    how.add_argument("--results", default=None,
                     help="results directory: trials are run records in DIR/tuning/runs, studies in "
                          "DIR/tuning (default: results/)")
    what.add_argument("--transfer-to", default=None, metavar="BITS",
                      help="after the search, check that the chosen values transfer to these other "
                           "code lengths (comma-separated, e.g. 16,64): the top 3 configurations "
                           "rerun there on --transfer-seeds seeds; the verdict goes into the entry, "
                           "and `--protocol tuned` uses it at those lengths only when it holds; where it "
                           "does not, the method is searched at that length too (same trials and "
                           "budget, carrying the check's top 3 configurations on ranges that hold "
                           "them), into an entry of its own")
    what.add_argument("--widen", default=None, metavar="KNOB:SIDE",
                      help="after an edge hit at this budget (bits, epochs): move that edge of the "
                           "shared range out (x3 on a log range, half the range on a linear one) "
                           "for every method searched at this budget on that range (a namesake "
                           "knob on a range of its own keeps it), e.g. lr:high; --trials must "
                           "exceed the round's present count (every method gets the same extra "
                           "trials; finished trials are inherited). Kept in the tuned file")
    what.add_argument("--transfer-seeds", default="2",
                      help="seeds per configuration in a transfer check (default 2, at least 2)")
    how.add_argument("--jobs", type=int, default=1,
                     help="methods searched at a time (default 1); each study proposes one trial at "
                          "a time, so its choice does not depend on --jobs")
    how.add_argument("--data-root", help="folder holding the dataset files")
    how.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    how.add_argument("--threads", type=int, default=None, help="torch threads per run")
    how.add_argument("--no-pretrained", action="store_true",
                     help="train torchvision backbones from scratch (no local ImageNet weights)")
    how.add_argument("--quiet", action="store_true", help="no progress bars")


def execute(args: argparse.Namespace) -> int:
    import sys

    from bench.commands.run import parse_int, parse_seed
    from bench.data.loading import load_card
    from bench.network.backbones import PRETRAINABLE
    from bench.runs.records import DEFAULT_RESULTS_DIR
    from bench.runs.spec import tuned_path
    from bench.sweeps.parallel import check_executor
    from bench.sweeps.runner import RunOptions
    from bench.tuning.setting import write_setting
    from bench.tuning.tune import (
        TuneRequest,
        TuningAborted,
        knob_counts,
        search_space,
        trial_budget,
    )
    from methods import get_method

    methods = [m.strip() for m in args.methods.split(",")]
    if not all(methods) or len(set(methods)) != len(methods):
        raise UserError(f"--methods '{args.methods}' is not valid; give distinct names, e.g. csq,hashnet")
    for name in methods:
        get_method(name)
    if "," in str(args.bits):
        raise UserError(f"--bits '{args.bits}' is not valid; tuning uses one code length, e.g. 32")
    bits = parse_int(args.bits, "--bits", 1, "32")
    trials = parse_int(args.trials, "--trials", 1, "12")
    epochs = parse_int(args.epochs, "--epochs", 1, "30") if args.epochs is not None else None
    seed = parse_seed(args.seed, "--seed")
    split_seed = parse_seed(args.split_seed, "--split-seed")
    card = load_card(args.dataset or "fashion-mnist")
    if epochs is None and card.table:  # search at the budget of the card's primary table
        from bench.sweeps.experiments import load_experiment

        table_epochs = load_experiment(card.table).settings.get("epochs")
        epochs = int(table_epochs) if table_epochs is not None else None
        if epochs is not None:
            print(f"budget: {epochs} epochs, the budget of {card.name}'s table '{card.table}' "
                  f"(--epochs to change)", flush=True)
    check_executor(args.jobs, "local", None)
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads}: must be a positive integer")
    for name in methods:
        search_space(name)  # a malformed space is refused before anything trains
    counts = knob_counts(methods)
    least = trial_budget(methods)
    print("searched knobs: " + ", ".join(f"{m} {n}" for m, n in counts.items())
          + f"; {trials} trials each (equal budget; R5 asks at least {least} for these methods)", flush=True)
    if trials < least:
        print(f"warning: --trials {trials} is below R5's {least} for these methods; a search that "
              "others are compared with needs the same count for every method", flush=True)
    results = Path(args.results) if args.results else DEFAULT_RESULTS_DIR
    output = setting_path(args, card.name, results)
    rounds = search_rounds(args.widen, card, methods, bits, trials, epochs, output)
    request = TuneRequest(card=card, bits=bits, trials=trials, epochs=epochs, seed=seed,
                          split_seed=split_seed, jobs=args.jobs, rounds=rounds,
                          pretrained=card.backbone in PRETRAINABLE and not args.no_pretrained)
    if request.round().ranges:
        print(f"widened round {request.round().after and 'after ' + request.round().after}: "
              f"{request.trial_count()} trials each on {request.round().ranges}", flush=True)
    options = RunOptions(results_dir=results, data_root=args.data_root, device=args.device,
                         progress_bars=not args.quiet, torch_threads=args.threads)
    targets = parse_targets(args.transfer_to, bits)
    transfer_seeds = parse_int(args.transfer_seeds, "--transfer-seeds", 1, "2")
    if transfer_seeds < 2:
        raise UserError(f"--transfer-seeds '{args.transfer_seeds}' is not valid; give at least 2 "
                        f"(a spread needs two seeds), e.g. 2")
    outcomes: list = []
    own: dict[int, list] = {}  # searches at a length where the transfer check failed
    transfers: dict[str, dict[int, Any]] = {}

    def write() -> Path:
        path = write_setting(output, request, outcomes, results, transfers)
        for target, searched in sorted(own.items()):
            write_setting(output, dataclasses.replace(request, bits=target), searched, results)
        return path

    skipped: list[str] = []  # methods whose study another process holds
    try:
        carried = {method: carried_from_file(card.name, method, request, output) for method in methods}
        searches = search_all(methods, request, options, targets, transfer_seeds, carried, (output, results))
        for method, searched_here in zip(methods, searches, strict=True):
            if searched_here is None:
                skipped.append(method)
                continue
            outcome, verdicts, own_searches = searched_here
            outcomes.append(outcome)
            if verdicts:
                transfers[outcome.method] = verdicts
            report_outcome(outcome)
            for target, searched in own_searches:
                report_outcome(searched)
                own.setdefault(target, []).append(searched)
            # Each method's entries as soon as its searches and checks end: a round takes sittings
            # here, and a command cut off later must not leave them unwritten (a method written
            # already is rewritten unchanged: a replay rewrites nothing, not even its date).
            write()
    except TuningAborted as error:
        if outcomes:
            write()
        print(f"error: tuning stopped early: {error}; rerun the same command to resume", file=sys.stderr)
        return 1
    if skipped:
        print(f"skipped {', '.join(skipped)}: another `bench tune` holds their studies and writes their "
              f"entries; this command run again after it ends replays them", flush=True)
    if not outcomes:
        return 0
    path = write()
    print(f"tuned setting written: {path} ({', '.join(o.method for o in outcomes)} at {bits} bits, "
          f"{request.trial_count()} trials each)")
    if not args.commit and not args.output:
        print(f"  `--protocol tuned` reads {tuned_path(card.name)}: rerun with --commit to write it "
              f"there, or set BENCH_TUNED_DIR={path.parent} to use this file")
    return 0


def report_outcome(outcome: Any) -> None:
    default = ("n/a" if outcome.default_value is None else f"{outcome.default_value:.4f}")
    print(f"{outcome.study}: best validation mAP {outcome.best_value:.4f} (trial "
          f"{outcome.best_trial} of {outcome.finished}, {outcome.failed} failed; default {default}; "
          f"{outcome.new_trials} trained or read now) with "
          + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in outcome.values.items()), flush=True)
    for key, side in outcome.extra.get("edge_hits", []):
        edges = outcome.extra.get("round_space") or outcome.space  # the round's, which a widening moves
        print(f"  edge hit: {key} at the {side} edge of {edges[key]}: widen it "
              f"(bench.tuning.tune.widen) and give every method the same extra trials", flush=True)


def carried_from_file(card: str, method: str, request: Any, output: Path) -> Any:
    """A search at a length where a stored search's transfer check failed is that check's own
    search (rule R4), whether the command that failed it or a later one runs it: it carries the
    checked search's ranges and top configurations (`bench.tuning.tune.Carried`). None when no
    current entry of the method at another length and the same epochs failed a check to here."""
    from bench.runs.spec import entry_budget, load_tuned, tuned_path
    from bench.tuning.tune import Carried

    epochs = request.epochs if request.epochs is not None else request.card.schedule.get("epochs")
    checked: dict[int, dict[str, Any]] = {}  # the entry at each other length; the output file wins
    for path in dict.fromkeys([tuned_path(card), output]):
        setting = load_tuned(card, path)
        for entry in setting.entries(method) if setting is not None else []:
            bits, entry_epochs = entry_budget(entry)
            if entry_epochs == epochs and bits != request.bits:
                checked[bits] = entry
    for _, entry in sorted(checked.items()):
        verdict = (entry.get("transfer") or {}).get(request.bits)
        if isinstance(verdict, dict) and verdict.get("within_spread") is False:
            return Carried.of(entry["study"], entry.get("search_space") or {}, entry.get("trials") or 0,
                              [c["values"] for c in verdict.get("configurations") or []])
    return None


def search_one(method: str, request: Any, options: Any, targets: list[int], transfer_seeds: int,
               carried: Any = None, write_to: tuple[Path, Path] | None = None,
               ) -> tuple[Any, dict[int, Any], list[tuple[int, Any]]] | None:
    """One method's study (one trial at a time), its transfer checks, and a study of its own
    at each length where the check failed (rule R4: otherwise search at that length too), with
    the same trials and budget; runs in a worker process when several methods are searched at
    once. None when another process holds the method's study: that process searches it and
    writes its entry, so this one goes on with its other methods instead of stopping.
    `write_to` (tuned file, results folder): where the entry with its failed checks is written
    before the own searches start, so that another process can run the search at another of
    those lengths meanwhile (`bench tune --bits L --methods M` carries the check from the file);
    this one then finds that study held and leaves it to that process."""
    from bench.tuning.tune import Carried, StudyBusy, tune_method

    def log(line: str) -> None:
        print(line, flush=True)

    sequential = dataclasses.replace(request, jobs=1)
    if carried is not None:
        log(f"{method}: the check from {carried.source} failed at {request.bits} bits: this search "
            f"carries its ranges and its top {len(carried.configurations)} configurations")
    try:
        outcome = tune_method(method, dataclasses.replace(sequential, carried=carried), options, log=log)
    except StudyBusy as busy:
        log(f"{method}: skipped here: {busy}; that process writes its entry")
        return None
    verdicts: dict[int, Any] = {}
    own_searches = []
    if targets:
        from bench.tuning.transfer import check_transfer

        verdicts = check_transfer(outcome, sequential, targets, options, seeds=transfer_seeds, log=log)
        if write_to is not None and not all(v["within_spread"] for v in verdicts.values()):
            from bench.tuning.setting import write_setting

            write_setting(write_to[0], request, [outcome], write_to[1], {method: verdicts})
        for target in sorted(b for b, verdict in verdicts.items() if not verdict["within_spread"]):
            there = dataclasses.replace(sequential, bits=target, carried=Carried.of(
                outcome.study, outcome.space, outcome.finished,
                [c["values"] for c in verdicts[target]["configurations"]]))
            ranges = there.searched_round().ranges
            log(f"{method}: searching at {target} bits too, as at {request.bits} ({there.trial_count()} "
                f"trials{' on ' + str(ranges) if ranges else ''}, carrying the top "
                f"{len(there.carried.configurations)} checked there)")
            try:
                own_searches.append((target, tune_method(method, there, options, log=log)))
            except StudyBusy as busy:  # e.g. that length's own round, run by another process
                log(f"{method}: its {target}-bit search skipped here: {busy}; that process writes it")
    return outcome, verdicts, own_searches


def search_all(methods: list[str], request: Any, options: Any, targets: list[int], transfer_seeds: int,
               carried: dict[str, Any] | None = None, write_to: tuple[Path, Path] | None = None,
               ) -> Iterator[tuple[Any, dict[int, Any], list[tuple[int, Any]]] | None]:
    """Every method's search, `request.jobs` studies at a time, yielded in the methods' order.
    Parallelism is across studies, never inside one: each study proposes one trial at a time
    from (seed, history), so what it chooses does not depend on --jobs."""
    if request.jobs <= 1 or len(methods) == 1:
        for method in methods:
            yield search_one(method, request, options, targets, transfer_seeds, (carried or {}).get(method),
                             write_to)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(request.jobs, len(methods)), mp_context=context) as pool:
        futures = [pool.submit(search_one, method, request, options, targets, transfer_seeds,
                               (carried or {}).get(method), write_to)
                   for method in methods]
        for future in futures:
            yield future.result()


def search_rounds(widen: str | None, card: Any, methods: list[str], bits: int, trials: int,
                  epochs: int | None, output: Path) -> dict[str, Any]:
    """The widened rounds that govern this search (from the committed tuned file and the output
    file), with --widen's new widening of this budget's round added (see bench.tuning.widening)."""
    from bench.runs.spec import entry_budget, load_tuned, retired, tuned_path
    from bench.tuning.tune import search_space
    from bench.tuning.widening import (
        edge_evidence,
        edge_reach,
        parse_widen,
        read_rounds,
        round_key,
        widened_round,
    )

    rounds = read_rounds(tuned_path(card.name), output)
    if widen is None:
        return rounds
    hits = parse_widen(widen)
    budget = (bits, epochs if epochs is not None else card.schedule.get("epochs"))
    # A retired search (a later check holds at its length) no longer counts as an edge hit.
    entries = [{**entry, "method": method}
               for path in dict.fromkeys([tuned_path(card.name), output])
               for setting in [load_tuned(card.name, path)] if setting is not None
               for method in setting.methods for entry in setting.entries(method)
               if entry_budget(entry) == budget and not retired(entry, setting.entries(method))]
    key = round_key(*budget)
    spaces = {e["method"]: search_space(e["method"]) for e in entries}
    written = rounds.get(key)
    try:
        after, searched = edge_evidence(entries, hits, spaces, written)
    except UserError:
        # The round's command again, for methods whose part had not ended when another part
        # wrote the round (or a replay): search the round as written.
        if written is not None and all(knob in written.ranges for knob, _ in hits):
            print(f"note: --widen {widen}: the {key} round is already widened in the tuned file "
                  f"({dict(written.ranges)}, {written.trials} trials) and no entry searched on its ranges "
                  f"is at those edges; searching the round as written", flush=True)
            return rounds
        raise
    # The round belongs to the budget: a command may search some of its methods (another process
    # the rest), so the knob's range is the one of every method searched at this budget.
    in_round = dict.fromkeys([*methods, *(e["method"] for e in entries)])
    rounds[key] = widened_round(rounds.get(key), {m: search_space(m) for m in in_round}, hits, trials,
                                searched, after, edge_reach(entries, hits, spaces, written))
    return rounds


def parse_targets(raw: str | None, bits: int) -> list[int]:
    """--transfer-to: distinct code lengths other than the searched one."""
    from bench.commands.run import parse_int

    if raw is None:
        return []
    targets = [parse_int(item.strip(), "--transfer-to", 1, "16,64") for item in str(raw).split(",")]
    if bits in targets:
        raise UserError(f"--transfer-to {raw}: {bits} is the searched length itself; name the other "
                        f"lengths, e.g. 16,64")
    return sorted(set(targets))


def setting_path(args: argparse.Namespace, card: str, results: Path) -> Path:
    """The file the chosen values go to: named by the user, the committed one on --commit,
    else beside the studies under the results folder (never a tracked file by default)."""
    from bench.runs.spec import tuned_path
    from bench.tuning.tune import TRIALS_FOLDER

    if args.output:
        return Path(args.output)
    if args.commit:
        return tuned_path(card)
    return Path(results) / Path(TRIALS_FOLDER).parts[0] / f"{card}.yaml"
