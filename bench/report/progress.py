"""Where the reproduction plan stands: for each experiment of results/README.md's plan, how many
of its runs have a complete record, how many are still to train, and how many wait for a search.

The plan runs over many sittings on CPUs, so a reader needs its state without reading run logs,
and results/README.md must not type the counts. The counts come from the same expansion and
record check as `python -m bench run --experiment NAME --dry-run`: a run is recorded when its
complete record exists under the id it would train with now. A tuned run whose method has no
tuned entry at the run's bit length and epoch budget (and no transfer check to that length)
cannot be planned yet: its id depends on values a search has still to choose, so it counts as
waiting for a search, whatever records exist.

The counting lives in `bench.commands.progress`, beside the one expansion of an experiment into
runs (`bench.commands.run.build_specs`); this module renders what it counted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.report.document import Doc, Table
from bench.report.render import render_markdown
from bench.tuning.unwritten import Unwritten

SECTION = "Reproduction progress"

FIELDS = ("runs", "recorded", "to_train", "waiting")  # the counted fields, in the table's order
HEADER = ("step", "experiment", "card", "runs", "recorded", "to train", "waiting for a search")
SEARCH_HEADER = ("card", "method", "budget", "study", "finished trials", "last finished")


@dataclass(frozen=True)
class Progress:
    step: str
    experiment: str
    datasets: tuple[str, ...]
    runs: int
    recorded: int
    to_train: int
    waiting: int

    def cells(self) -> tuple[str, ...]:
        return (self.step, f"`{self.experiment}`", ", ".join(self.datasets), str(self.runs),
                str(self.recorded), str(self.to_train), str(self.waiting))


@dataclass(frozen=True)
class PlanState:
    """The plan's experiments counted, and the searches that have run past the tuned files."""

    experiments: tuple[Progress, ...] = ()
    searches: tuple[Unwritten, ...] = ()

    @property
    def started(self) -> bool:
        """Some planned experiment has a record: a report of other records (a test's, say)
        says nothing of a plan it is not part of."""
        return any(p.recorded for p in self.experiments)


def totals(progress: Sequence[Progress]) -> dict[str, int]:
    """The plan's counts, all experiments together, by field."""
    return {key: sum(getattr(p, key) for p in progress) for key in FIELDS}


def progress_rows(progress: Sequence[Progress]) -> tuple[tuple[str, ...], ...]:
    """The table's rows with a total row (the plan's runs, all experiments together)."""
    return (*(p.cells() for p in progress), ("", "**all**", "", *map(str, totals(progress).values())))


def experiments_markdown(state: PlanState) -> str:
    """The experiments' table as markdown (numbers.json and `bench report --progress`)."""
    return render_markdown([Table(HEADER, progress_rows(state.experiments))]).rstrip("\n")


def searches_markdown(state: PlanState) -> str:
    """The sentence on the searches run past the tuned files and, when there are any, their table."""
    text = searches_text(state.searches)
    if state.searches:
        rows = tuple(s.cells() for s in state.searches)
        text += "\n\n" + render_markdown([Table(SEARCH_HEADER, rows)]).rstrip("\n")
    return text


def progress_section(doc: Doc, state: PlanState) -> None:
    """The report's section, when the plan has started."""
    if not state.started:
        return
    doc.h(2, SECTION)
    doc.p("Each experiment of the reproduction plan (results/README.md, in the plan's order): its runs, "
          "those with a complete record under the id they would train with now, those still to "
          "train, and tuned runs that wait for a search (no tuned entry at their bit length and "
          "epoch budget yet, so their values, and with them their ids, are not chosen). "
          "`python -m bench run --experiment NAME` trains what is missing; `python -m bench report "
          "--progress` prints these tables without writing the report.")
    doc.table(HEADER, progress_rows(state.experiments))
    doc.p(searches_text(state.searches))
    if state.searches:
        doc.table(SEARCH_HEADER, [s.cells() for s in state.searches])


def searches_text(searches: Sequence[Unwritten]) -> str:
    if not searches:
        return "Every search that has run is written into its card's tuned file."
    return (f"{len(searches)} searches have run past the tuned files (bench.tuning.unwritten): their "
            "trials are committed under results/tuning/, and each is written into its card's tuned "
            "file when its method's searches and transfer checks end (the `bench tune` command that "
            "started it resumes it). Until then, the tuned file and the Tuning section show the "
            "round before.")


def progress_numbers(state: PlanState) -> dict[str, str]:
    """numbers.json keys: progress.table and progress.searches.table (whole tables as markdown,
    quoted whole by results/README.md), progress.<experiment>.<field>, progress.all.<field>
    (the totals) and progress.searches.count."""
    if not state.started:
        return {}
    numbers = {"progress.table": experiments_markdown(state),
               "progress.searches.table": searches_markdown(state),
               "progress.searches.count": str(len(state.searches))}
    for p in state.experiments:
        numbers.update({f"progress.{p.experiment}.{key}": str(getattr(p, key)) for key in FIELDS})
    numbers.update({f"progress.all.{key}": str(value) for key, value in totals(state.experiments).items()})
    return numbers
