"""Edge hits and widened search rounds (methods-fidelity spec, rule R3; issue 26).

A chosen value within EDGE_FRACTION of a range edge that is not a hard bound is an edge hit
(`edge_hits`): the optimum may lie beyond the range. The rule: the range widens (`widen`) and
every method gets the same extra trials. Ranges are shared, so a widening belongs to a search
*round*, one (card, bits, epochs) budget, not to the method that hit the edge: every method
searched at that budget is searched on the wider range, to the round's larger trial count.

A round's widening is stored in the card's tuned file beside the entries it governs
(`widened: {"16b-60e": {ranges: {lr: [log, 0.0001, 0.03]}, trials: 32, after: "..."}}`), so
a replay of the search (`make tune-main`) searches that round as it was searched, and a
widened study starts from the finished trials of the narrower one (`tune.inherit_trials`):
the extra trials are the only new work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import UserError
from methods.base import HARD_EDGES, SHARED_SEARCH

EDGE_FRACTION = 0.05  # within 5 % of the range (in the knob's scale) of an edge: widen it
SIDES = ("low", "high")


def edge_hits(values: dict[str, Any], space: dict[str, tuple]) -> list[tuple[str, str]]:
    """(key, "low" | "high") for each chosen value within EDGE_FRACTION of an edge, measured
    in the knob's scale (log10 for log ranges); hard bounds (HARD_EDGES) are exempt."""
    hits = []
    for key, spec in space.items():
        if spec[0] not in ("log", "float", "int") or key not in values:
            continue
        low, high, value = float(spec[1]), float(spec[2]), float(values[key])
        if spec[0] == "log":
            low, high, value = math.log10(low), math.log10(high), math.log10(value)
        margin = EDGE_FRACTION * (high - low)
        hard_low, hard_high = HARD_EDGES.get(key, (None, None))
        if value <= low + margin and not (hard_low is not None and float(spec[1]) <= hard_low):
            hits.append((key, "low"))
        elif value >= high - margin and not (hard_high is not None and float(spec[2]) >= hard_high):
            hits.append((key, "high"))
    return hits


def edge_space(entry: dict[str, Any]) -> dict[str, tuple]:
    """The ranges a tuned entry's edge hits are measured on: its round's (`round_space`) when it
    searched its round's ranges united with a checked search's (bench.tuning.tune.Carried), else
    the ranges it searched. The union only lets the carried values live in the study; the round's
    ranges are what the rule widens, so a value at (or past) their edge still asks a wider round."""
    raw = entry.get("round_space") or entry.get("search_space") or {}
    return {key: ("choice", tuple(spec[1])) if spec[0] == "choice" else tuple(spec)
            for key, spec in raw.items()}


def widened_trials(searched: int) -> int:
    """The trial count suggested for a widened round: a quarter more than its methods have
    searched (24 -> 30, 32 -> 40, 40 -> 50), one place for `bench tune` and the fidelity
    checks to name it, so the two never advise different counts for one round."""
    return searched + max(1, searched // 4)


def widen(space: dict[str, tuple], hits: list[tuple[str, str]]) -> dict[str, tuple]:
    """The space with each hit edge moved out: x3 (or /3) on a log range, by half the range
    on a linear one, never past a hard bound. Both edges of one knob can move in one round
    (two methods hitting opposite edges): each edge moves from where the hits before it left
    it, by a step measured on the range as given, so the order of the hits does not matter."""
    wider = dict(space)
    for key, side in dict.fromkeys(hits):  # a repeated hit moves its edge once
        kind, low, high = wider[key]
        if kind == "log":
            # 12 significant digits: 0.01 x 3 is stored as 0.03, not 0.030000000000000002
            if side == "low":
                low = float(f"{low / 3:.12g}")
            else:
                high = float(f"{high * 3:.12g}")
        else:
            step = (space[key][2] - space[key][1]) / 2
            low, high = (low - step, high) if side == "low" else (low, high + step)
            hard_low, hard_high = HARD_EDGES.get(key, (None, None))
            low = max(low, hard_low) if hard_low is not None else low
            high = min(high, hard_high) if hard_high is not None else high
            if kind == "int":
                low, high = math.floor(low), math.ceil(high)
        wider[key] = (kind, low, high)
    return wider


def governed(key: str, spec: tuple) -> bool:
    """Whether a round's range for `key` applies to a method searching `key` on `spec`. A
    shared knob's round range replaces the shared range only: a method whose own knob merely
    shares the name (DPN's hinge margin on u * t beside the cosine margin of CRH and OrthoHash)
    keeps its range, and its edge hits never widen the shared one."""
    shared = SHARED_SEARCH.get(key)
    return shared is None or tuple(spec) == tuple(shared)


def round_key(bits: int, epochs: int | None) -> str:
    """How the tuned file names a search round: "<bits>b-<epochs>e"."""
    return f"{int(bits)}b-{epochs}e"


@dataclass(frozen=True)
class Round:
    """A search round's widening: the ranges that replace the shared ones for every method
    searched at this budget, and the trial count every one of them gets."""

    ranges: dict[str, tuple] = field(default_factory=dict)
    trials: int = 0
    after: str = ""  # the edge hit that asked for it, for the reader of the file

    def space(self, space: dict[str, tuple]) -> dict[str, tuple]:
        """A method's search space in this round: its own knobs, on the round's ranges."""
        return {key: tuple(self.ranges[key]) if key in self.ranges and governed(key, spec) else tuple(spec)
                for key, spec in space.items()}

    def united(self, other: Round) -> Round:
        """The smallest round holding both: each knob on the union of the two ranges, the larger
        trial count. An own search at a length where a transfer check failed searches on its
        length's round united with the round it was checked from, so the values it may replace
        (searched on that round's ranges) lie inside its space."""
        ranges = dict(self.ranges)
        for key, spec in other.ranges.items():
            mine = ranges.get(key)
            if mine is None:
                ranges[key] = tuple(spec)
            elif mine[0] != spec[0]:
                raise UserError(f"rounds search '{key}' as {mine[0]} and as {spec[0]}; they cannot be united")
            else:
                ranges[key] = (mine[0], min(mine[1], spec[1]), max(mine[2], spec[2]))
        after = "; ".join(dict.fromkeys(text for text in (self.after, other.after) if text))
        return Round(ranges, max(self.trials, other.trials), after)

    def as_yaml(self) -> dict[str, Any]:
        return {"ranges": {k: list(v) for k, v in sorted(self.ranges.items())}, "trials": self.trials,
                "after": self.after}


def read_rounds(*paths: Path | None) -> dict[str, Round]:
    """The widened rounds of the given tuned files (later files win), by round key."""
    from bench.data.loading import read_yaml

    rounds: dict[str, Round] = {}
    for path in paths:
        if path is None or not Path(path).is_file():
            continue
        raw = read_yaml(Path(path))
        for key, entry in ((raw or {}).get("widened") or {}).items():
            if not isinstance(entry, dict) or not isinstance(entry.get("ranges"), dict):
                raise UserError(f"{path}: widened.{key} must hold ranges: {{KNOB: [kind, low, high]}} "
                                f"and trials: N")
            rounds[str(key)] = Round({k: tuple(v) for k, v in entry["ranges"].items()},
                                     int(entry.get("trials") or 0), str(entry.get("after") or ""))
    return rounds


def parse_widen(raw: str) -> list[tuple[str, str]]:
    """--widen KNOB:SIDE[,KNOB:SIDE]: which edge of which shared range to move out."""
    hits = []
    for item in str(raw).split(","):
        knob, _, side = item.strip().partition(":")
        if not knob or side not in SIDES:
            raise UserError(f"--widen '{raw}' is not valid; give KNOB:low or KNOB:high, e.g. lr:high")
        hits.append((knob, side))
    return hits


def widened_round(current: Round | None, spaces: dict[str, dict[str, tuple]],
                  hits: list[tuple[str, str]], trials: int, searched: int, after: str,
                  reach: dict[tuple[str, str], float] | None = None) -> Round:
    """The round after widening `hits` from its current ranges (the round's, else the methods'
    shared ones). The rule gives every method extra trials: `trials` must exceed what the round
    has searched so far (`searched`, the most trials of its entries); every method's finished
    search is inherited, so the extra trials are the only new work. `reach` (`edge_reach`) holds
    the chosen values that hit each edge: a value past the edge (an own search's, found on the
    wider ranges it carried) widens the edge step by step in this one round until the value is
    no longer at it, instead of one round per step whose only new trials search ranges the value
    has already left behind."""
    current = current or Round()
    before: dict[str, tuple] = {}  # each hit knob's range in the round so far
    for knob, side in hits:
        specs = {tuple(current.ranges.get(knob, space[knob])) for space in spaces.values()
                 if knob in space and governed(knob, space[knob])}
        if not specs:
            raise UserError(f"--widen {knob}:{side}: no method of this round searches '{knob}'")
        if len(specs) > 1:
            raise UserError(f"--widen {knob}:{side}: the methods search '{knob}' on different ranges "
                            f"({sorted(specs)}); widen a shared range only")
        spec = specs.pop()
        if spec[0] not in ("log", "float", "int"):
            raise UserError(f"--widen {knob}:{side}: '{knob}' is a choice; only ranges widen")
        if widen({knob: spec}, [(knob, side)])[knob] == spec:
            raise UserError(f"--widen {knob}:{side}: {list(spec)} ends at a hard bound there "
                            f"(methods.base.HARD_EDGES); it cannot widen")
        before[knob] = spec
    ranges = {**current.ranges, **widen(before, hits)}
    for (knob, side), value in (reach or {}).items():
        # edge_hits exempts a hard bound, so the steps stop there (margin at 0) as well
        while knob in ranges and (knob, side) in edge_hits({knob: value}, {knob: ranges[knob]}):
            ranges[knob] = widen({knob: ranges[knob]}, [(knob, side)])[knob]
    searched = max(searched, current.trials)
    if trials <= searched:
        raise UserError(f"--trials {trials}: a widened round gives every method extra trials; give "
                        f"more than the {searched} it has searched, e.g. {widened_trials(searched)}")
    return Round(ranges, trials, after)


def answered_by_round(entry: dict[str, Any], knob: str, written: Round | None) -> bool:
    """The round as written has widened `knob` past the range `entry` searched it on, so the
    round already answers a hit of the entry there (its method owes the round's trials: a
    widening gap, not a reason for a further widening)."""
    return (written is not None and knob in written.ranges
            and tuple(edge_space(entry)[knob]) != tuple(written.ranges[knob]))


def edge_evidence(entries: list[dict[str, Any]], hits: list[tuple[str, str]],
                  spaces: dict[str, dict[str, tuple]] | None = None,
                  current: Round | None = None) -> tuple[str, int]:
    """(what hit the edges, the most trials any entry searched) among a round's entries (each
    with a `method` key added). The rule widens a range only after a chosen value lands at that
    edge: UserError when none of the entries did. With `spaces` (each method's own search space)
    an entry counts for a knob only when the round's range governs that method's knob. With the
    round as written (`current`), an entry searched on a range the round has since widened is no
    evidence for that knob: the round already answers its hit (a method of the round whose part
    has not ended yet still holds the entry of the round before)."""
    found = []
    for knob, side in hits:
        hit = [f"{e['method']} {knob} {e['values'][knob]:.4g} at the {side} edge of "
               f"{list(edge_space(e)[knob][1:])}" for e in _at_edge(entries, knob, side, spaces, current)]
        if not hit:
            raise UserError(f"--widen {knob}:{side}: no entry of this round has {knob} at its {side} "
                            f"edge; the rule widens a range only after an edge hit (see python -m "
                            f"bench.tuning.fidelity)")
        found += hit
    return "; ".join(found), max((int(e.get("trials") or 0) for e in entries), default=0)


def edge_reach(entries: list[dict[str, Any]], hits: list[tuple[str, str]],
               spaces: dict[str, dict[str, tuple]] | None = None,
               current: Round | None = None) -> dict[tuple[str, str], float]:
    """The farthest chosen value at each hit edge among the entries `edge_evidence` counts (the
    largest at a high edge, the smallest at a low one): how far `widened_round` must widen."""
    reach = {}
    for knob, side in hits:
        values = [float(e["values"][knob]) for e in _at_edge(entries, knob, side, spaces, current)]
        if values:
            reach[(knob, side)] = max(values) if side == "high" else min(values)
    return reach


def _at_edge(entries: list[dict[str, Any]], knob: str, side: str,
             spaces: dict[str, dict[str, tuple]] | None, current: Round | None) -> list[dict[str, Any]]:
    """The entries whose chosen `knob` is at its `side` edge and counts as evidence for the round."""
    spaces = spaces or {}
    return [e for e in entries if knob in edge_space(e) and knob in e.get("values", {})
            and (knob not in spaces.get(e["method"], {}) or governed(knob, spaces[e["method"]][knob]))
            and not answered_by_round(e, knob, current)
            and (knob, side) in edge_hits(e["values"], {knob: edge_space(e)[knob]})]
