"""The tuning section: what the equal-budget search chose for each method and what it bought.

A pure function of the trial records (RESULTS/tuning/runs) and the committed tuned settings
(bench/tuned/<card>.yaml, parsed). The search scored validation only; the test mAP shown here
is read afterwards, to show what tuning did, and one seed of it is no result: the tuned main
table's seeds are."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.report.document import Doc, Table
from bench.report.render import render_markdown
from bench.report.util import get, method_name, method_sort_key, num
from bench.tuning.widening import round_key


def default_trial(trials: Sequence[dict], card: str, method: str, entry: dict) -> dict | None:
    """The trial that ran the harmonised default values of every searched key (trial 0 of a
    study whose space holds them), or None. Rule defaults resolve for the card's C and the
    entry's K, as the study resolved them (CRH's scale sqrt(2) ln(C - 1) differs with C)."""
    from bench.data.cards import load_card
    from bench.errors import UserError
    from bench.tuning.tune import default_point, representative_task

    # The point the study ran as trial 0, as its entry records it (a widened study inherits the
    # narrower one's trial 0, whose edge-clamped default may lie inside the wider range).
    stored = entry.get("default_point")
    if isinstance(stored, dict) and stored:
        point = dict(stored)
    else:  # an entry written before default_point was recorded: resolve it as the study did
        space = {key: tuple(spec) for key, spec in (entry.get("search_space") or {}).items()}
        if not space:
            return None
        try:
            info = load_card(card)
            task = representative_task(int(entry.get("bits") or 32), info.num_classes, info.multi_label)
        except UserError:  # a card no longer on disk: resolve as the tuner's fallback does
            task = None
        point = default_point(method, space, task)
    for record in trials:
        spec, config = record.get("spec") or {}, record.get("config") or {}
        if (spec.get("dataset"), spec.get("method"), spec.get("bits"), spec.get("seed")) != (
                card, method, entry.get("bits"), entry.get("seed")):
            continue
        # A search at another budget has its own default trial (same values, other epochs):
        # the default shown beside a chosen value is the one from the same study's budget.
        if entry.get("epochs") is not None and config.get("epochs") != entry.get("epochs"):
            continue
        if record.get("status") == "complete" and all(_same(config.get(k), v) for k, v in point.items()):
            return record
    return None


def _same(stored: Any, value: Any) -> bool:
    """A stored config value against a resolved default: floats to 12 significant digits (a
    rule's value recomputed here may differ in the last bit from the one the run stored)."""
    if isinstance(stored, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return math.isclose(stored, float(value), rel_tol=1e-12)
    return stored == value


def _entries(setting: dict | None) -> list[tuple[str, dict]]:
    """(method, entry) of one card's tuned setting, methods in table order; a method searched
    at several budgets has one entry each."""
    methods = (setting or {}).get("methods") or {}
    return [(method, entry) for method in sorted(methods, key=method_sort_key)
            for entry in (methods[method] if isinstance(methods[method], list) else [methods[method]])]


def tuning_rows(trials: Sequence[dict], settings: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per (card, tuned method): the chosen values, and validation and test mAP of the
    default trial and of the chosen trial."""
    from bench.runs.spec import retired

    by_id = {r.get("run_id"): r for r in trials if r.get("status") == "complete"}
    rows = []
    for card in sorted(settings):
        entries = _entries(settings[card])
        for method, entry in entries:  # one entry per (bits, epochs) searched
            best = by_id.get(entry.get("best_run_id"))
            default = default_trial(trials, card, method, entry)
            carried = (entry.get("carried") or {}).get("trials") or []
            rows.append({
                "card": card, "method": method, "trials": entry.get("trials"), "bits": entry.get("bits"),
                "epochs": entry.get("epochs"), "values": entry.get("values") or {},
                "space": entry.get("search_space") or {},
                "val_default": num(get(default, "selection", "best_val_mAP")) if default else None,
                "val_tuned": num(get(best, "selection", "best_val_mAP")) if best else None,
                "test_default": num(get(default, "metrics", "mAP")) if default else None,
                "test_tuned": num(get(best, "metrics", "mAP")) if best else None,
                "best_run_id": entry.get("best_run_id"), "found": best is not None,
                "carried": carried,
                "chosen_carried": entry.get("best_trial") in carried,
                "retired": retired(entry, [e for m, e in entries if m == method]),
            })
    return rows


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.2f}"


def _gain(after: float | None, before: float | None) -> str:
    return "—" if after is None or before is None else f"{(after - before) * 100:+.2f}"


def _values(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in sorted(values.items()))


def tuning_section(doc: Doc, trials: Sequence[dict], settings: dict[str, dict]) -> None:
    doc.h(2, "Tuning")
    rows = tuning_rows(trials, settings)
    if not rows:
        doc.p("No tuned setting under bench/tuned/: every table uses published or harmonised values "
              "(`python -m bench tune` writes one).")
        return
    doc.p("`python -m bench tune` gave every method the same number of trials (Optuna's TPE, seeded, "
          "trial 0 = the harmonised default, rule defaults resolved), at one bit length and seed 0, "
          "each trial a full training run scored on the held-out validation database only. The chosen "
          "values are what the tuned protocol applies. Test mAP is read here after the fact, from the same "
          "single runs: it shows what the search bought, and is not a result (the tuned main table's "
          "seeds are). 'searched' gives each method's number of knobs. Values in percent; — where no "
          "default trial was recorded.")
    budgets = sorted({(r["card"], r["bits"] or 0, r["epochs"] or 0) for r in rows})
    for card, bits, epochs in budgets:
        in_card = [r for r in rows if (r["card"], r["bits"] or 0, r["epochs"] or 0) == (card, bits, epochs)]
        doc.h(3, f"{card}: {in_card[0]['trials']} trials per method at {in_card[0]['bits']} bits, "
                 f"{in_card[0]['epochs']} epochs")
        widened = ((settings.get(card) or {}).get("widened") or {}).get(round_key(bits, epochs))
        if widened:
            ranges = ", ".join(f"{key} on [{spec[1]:g}, {spec[2]:g}]"
                               for key, spec in widened["ranges"].items())
            doc.p(f"A widened round (after an edge hit: {widened['after']}): {ranges} for every method "
                  f"searched here, {widened['trials']} trials each; the narrower study's trials were "
                  "inherited, so the extra trials were the only new runs.")
        doc.table(("method", "searched", "chosen", "validation: default", "validation: tuned", "gain",
                   "test: default", "test: tuned", "gain"),
                  ((method_name(r["method"]) + (" (retired)" if r["retired"] else ""),
                    f"{len(r['space'])}: " + ", ".join(sorted(r["space"])),
                    _values(r["values"]) + (" (carried)" if r["chosen_carried"] else ""),
                    _pct(r["val_default"]), _pct(r["val_tuned"]), _gain(r["val_tuned"], r["val_default"]),
                    _pct(r["test_default"]), _pct(r["test_tuned"]), _gain(r["test_tuned"], r["test_default"]))
                   for r in in_card))
        if any(r["carried"] for r in in_card):
            doc.p("Searches here that follow a failed transfer check also hold, beside their equal "
                  "budget, the check's top 3 configurations from the table's search length (their seed-0 "
                  "runs at this length), on ranges that contain that search's; '(carried)' marks a "
                  "chosen value that is one of them.")
        if any(r["retired"] for r in in_card):
            doc.p("'(retired)': a later search at another length has a transfer check that holds here, "
                  "so its values apply at this length; the row stays for the records that used it.")
        missing = [r["method"] for r in in_card if not r["found"]]
        if missing:
            doc.p(f"No trial record for the chosen run of {', '.join(missing)} under tuning/runs: those "
                  "rows show no scores.")
    transfer_section(doc, settings)


def current_tuned(tuned: dict[str, dict] | None) -> Callable[[Any], bool]:
    """Whether a group of tuned runs applied the values its card's tuned file applies now at its
    method, bits and search budget (`bench.runs.spec.tuned_entry`). A later search can change a
    method's values; while the runs at both exist, the table shows those at the current values
    (the others are listed under Data quality as a conflicting configuration)."""
    from bench.runs.spec import TunedSetting, tuned_entry

    def current(group: Any) -> bool:
        setting = (tuned or {}).get(group.scope.dataset)
        provenance = get(group.first, "config", "tuned_setting", default=None) or {}
        searched = provenance.get("searched_at") if isinstance(provenance, dict) else None
        if group.scope.protocol != "tuned" or not setting or not isinstance(searched, dict):
            return False
        entry, _ = tuned_entry(TunedSetting(Path(group.scope.dataset), "", setting["methods"]),
                               group.method, group.bits, int(searched.get("epochs") or 0))
        return entry is not None and provenance.get("values") == entry.get("values")

    return current


# ----------------------------------------------------------------------------- transfer checks

TRANSFER_HEADER = ("method", "searched at", "checked at", "chosen", "best of the top 3", "gap",
                   "seed spread", "verdict")


def transfer_rows(settings: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per (card, searched entry, other code length) whose transfer check is recorded
    (bench.tuning.transfer): the chosen configuration's mean validation mAP over the check's
    seeds, the best mean among the study's top configurations, the gap between them, the pooled
    seed spread, the verdict, and whether the method has its own search at that length."""
    from bench.runs.spec import entry_budget

    rows = []
    for card in sorted(settings):
        entries = _entries(settings[card])
        searched = {(method, entry_budget(entry)) for method, entry in entries}
        for method, entry in entries:
            bits, epochs = entry_budget(entry)
            checks = sorted((entry.get("transfer") or {}).items(), key=lambda kv: int(kv[0]))
            for target, verdict in checks:
                configurations = verdict.get("configurations") or []
                if not configurations:
                    continue
                best = configurations[int(verdict.get("best", 0))]
                chosen = configurations[0]
                rows.append({
                    "card": card, "method": method, "bits": bits, "epochs": epochs, "target": int(target),
                    "chosen": float(chosen["mean"]), "chosen_trial": chosen.get("trial"),
                    "best": float(best["mean"]), "best_trial": best.get("trial"),
                    "top": len(configurations), "seeds": len(verdict.get("seeds") or []),
                    "gap": float(verdict["gap"]), "spread": float(verdict["spread"]),
                    "holds": bool(verdict["within_spread"]),
                    "own_search": (method, (int(target), epochs)) in searched,
                })
    return rows


def transfer_verdict(row: dict[str, Any]) -> str:
    if row["holds"]:
        return "holds"
    owed = "done" if row["own_search"] else "pending"
    return f"does not hold: own search at {row['target']} bits {owed}"


def transfer_cells(row: dict[str, Any]) -> tuple[str, ...]:
    """A row as the report and results/README.md print it (mAP and gaps in points)."""
    return (method_name(row["method"]), f"{row['bits']} bits, {row['epochs']} epochs",
            f"{row['target']} bits",
            f"{_pct(row['chosen'])} (trial {row['chosen_trial']})",
            f"{_pct(row['best'])} (trial {row['best_trial']})",
            f"{row['gap'] * 100:.2f}", f"{row['spread'] * 100:.2f}", transfer_verdict(row))


def transfer_section(doc: Doc, settings: dict[str, dict]) -> None:
    rows = transfer_rows(settings)
    if not rows:
        return
    doc.h(3, "Transfer checks")
    from bench.tuning.transfer import RULE

    doc.p(f"A value searched at one code length is applied at another only where its check passed: "
          f"the study's top {rows[0]['top']} configurations rerun at that length on {rows[0]['seeds']} "
          f"seeds (validation mAP only), and {RULE}. Means in percent, gap and pooled seed standard "
          "deviation in points. Where a check fails the method is searched at that length too.")
    for card in sorted({r["card"] for r in rows}):
        doc.h(4, card)  # the rows name budgets, not cards: without it two cards' tables look alike
        doc.table(TRANSFER_HEADER, (transfer_cells(r) for r in rows if r["card"] == card))


def transfer_numbers(settings: dict[str, dict]) -> dict[str, str]:
    """numbers.json keys of the transfer checks: transfer.<card>.<B>b-<E>e.<method>.<bits>.<field>
    per check, transfer.<card>.<B>b-<E>e.table, the whole table as markdown (its rows change
    as checks finish, so results/README.md quotes it whole), and transfer.tables, every card's
    table under a line naming it."""
    from bench.report.numbers import card_key

    numbers: dict[str, str] = {}
    tables: dict[str, list[tuple[str, ...]]] = {}
    labels: dict[str, str] = {}  # budget key -> the line that names its card in transfer.tables
    for row in transfer_rows(settings):
        budget = f"transfer.{card_key(row['card'])}.{row['bits']}b-{row['epochs']}e"
        labels[budget] = f"{row['card']}, searched at {row['bits']} bits and {row['epochs']} epochs:"
        cells = transfer_cells(row)
        prefix = f"{budget}.{row['method']}.{row['target']}"
        numbers.update({f"{prefix}.chosen": _pct(row["chosen"]), f"{prefix}.best": _pct(row["best"]),
                        f"{prefix}.gap": cells[5], f"{prefix}.spread": cells[6],
                        f"{prefix}.verdict": cells[7]})
        tables.setdefault(budget, []).append(cells)
    numbers.update({f"{budget}.table": render_markdown([Table(TRANSFER_HEADER, tuple(rows))]).rstrip("\n")
                    for budget, rows in tables.items()})
    if tables:  # every card's checks under its name: a card's first checks appear without a new key
        numbers["transfer.tables"] = "\n\n".join(f"{labels[budget]}\n\n{numbers[f'{budget}.table']}"
                                                 for budget in sorted(tables))
    return numbers
