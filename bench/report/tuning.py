"""The tuning section: what the equal-budget search chose for each method and what it bought.

A pure function of the trial records (RESULTS/tuning/runs) and the committed tuned settings
(bench/tuned/<card>.yaml, parsed). The search scored validation only; the test mAP shown here
is read afterwards, to show what tuning did, and one seed of it is no result: the tuned main
table's seeds are."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.report.document import Doc
from bench.report.util import get, method_name, method_sort_key, num


def default_trial(trials: Sequence[dict], card: str, method: str, entry: dict) -> dict | None:
    """The trial that ran the harmonised default values of every searched key (trial 0 of a
    study whose space holds them), or None."""
    from bench.tuning.tune import default_point

    space = {key: tuple(spec) for key, spec in (entry.get("search_space") or {}).items()}
    point = default_point(method, space) if space else None
    if point is None:
        return None
    for record in trials:
        spec, config = record.get("spec") or {}, record.get("config") or {}
        if (spec.get("dataset"), spec.get("method"), spec.get("bits"), spec.get("seed")) != (
                card, method, entry.get("bits"), entry.get("seed")):
            continue
        # A search at another budget has its own default trial (same values, other epochs):
        # the default shown beside a chosen value is the one from the same study's budget.
        if entry.get("epochs") is not None and config.get("epochs") != entry.get("epochs"):
            continue
        if record.get("status") == "complete" and all(config.get(k) == v for k, v in point.items()):
            return record
    return None


def tuning_rows(trials: Sequence[dict], settings: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per (card, tuned method): the chosen values, and validation and test mAP of the
    default trial and of the chosen trial."""
    by_id = {r.get("run_id"): r for r in trials if r.get("status") == "complete"}
    rows = []
    for card in sorted(settings):
        methods = (settings[card] or {}).get("methods") or {}
        pairs = [(method, entry) for method in sorted(methods, key=method_sort_key)
                 for entry in (methods[method] if isinstance(methods[method], list) else [methods[method]])]
        for method, entry in pairs:  # one entry per (bits, epochs) searched
            best = by_id.get(entry.get("best_run_id"))
            default = default_trial(trials, card, method, entry)
            rows.append({
                "card": card, "method": method, "trials": entry.get("trials"), "bits": entry.get("bits"),
                "epochs": entry.get("epochs"), "values": entry.get("values") or {},
                "space": entry.get("search_space") or {},
                "val_default": num(get(default, "selection", "best_val_mAP")) if default else None,
                "val_tuned": num(get(best, "selection", "best_val_mAP")) if best else None,
                "test_default": num(get(default, "metrics", "mAP")) if default else None,
                "test_tuned": num(get(best, "metrics", "mAP")) if best else None,
                "best_run_id": entry.get("best_run_id"), "found": best is not None,
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
        doc.table(("method", "searched", "chosen", "validation: default", "validation: tuned", "gain",
                   "test: default", "test: tuned", "gain"),
                  ((method_name(r["method"]), f"{len(r['space'])}: " + ", ".join(sorted(r["space"])),
                    _values(r["values"]),
                    _pct(r["val_default"]), _pct(r["val_tuned"]), _gain(r["val_tuned"], r["val_default"]),
                    _pct(r["test_default"]), _pct(r["test_tuned"]), _gain(r["test_tuned"], r["test_default"]))
                   for r in in_card))
        missing = [r["method"] for r in in_card if not r["found"]]
        if missing:
            doc.p(f"No trial record for the chosen run of {', '.join(missing)} under tuning/runs: those "
                  "rows show no scores.")
