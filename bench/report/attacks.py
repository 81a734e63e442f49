"""Retrieval under attack: the `bench run --attack` results beside the main tables.

An attack result (results/attacks/<card>/<method>/<run id>.<attack id>.json, written by
bench.evaluation.attack) holds the attacked model's clean mAP and its mAP with every query
attacked. Each file is matched to its run record by run id, so it lands in the record's table,
method, bit length, configuration and seed. For every main table with attack results there is
one "under attack" view per attack: per row and bit length, the clean and the attacked mAP
(mean ± sd over the attacked seeds, n), the attack's parameters named by its id. Rows are the
table's methods (a cell without any attack result reads "not attacked") and any other
configuration of the table's scope that was attacked (CgAT around another base, for one).

Clean and attacked values come from the same file, so they are the same model: an attack
rerun that did not reproduce its record bit for bit (`record_reproduced: false`) is named.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.evaluation.attack import ATTACKS_FOLDER, AttackSpec
from bench.report.analysis import Analysis, MainTable
from bench.report.document import Doc, FigurePlan
from bench.report.figures import draw_attack
from bench.report.groups import Group, Scope, Variant, method_defaults
from bench.report.stats import Stat
from bench.report.util import FLOOR_METHOD, card_info, fmt_seeds, fmt_signed, method_name

SECTION = "Under attack"
NOT_ATTACKED = "not attacked"


def load_attacks(results_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(every attack result under <results>/attacks in name order, problems). Each result is
    tagged with its file name relative to the results folder and the run id its name carries;
    a file that cannot be read or is not an attack result is one problem line."""
    folder = Path(results_dir) / ATTACKS_FOLDER
    files: list[dict[str, Any]] = []
    problems: list[str] = []
    for path in sorted(folder.rglob("*.json")) if folder.is_dir() else []:
        name = path.relative_to(results_dir).as_posix()
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            problems.append(f"{name}: unreadable ({type(error).__name__})")
            continue
        attack_id = data.get("attack_id") if isinstance(data, dict) else None
        numbers_ok = isinstance(data, dict) and all(
            isinstance(data.get(k), (int, float)) and not isinstance(data.get(k), bool)
            for k in ("clean_mAP", "adversarial_mAP"))
        if not isinstance(attack_id, str) or not numbers_ok or not path.name.endswith(f".{attack_id}.json"):
            problems.append(f"{name}: not an attack result (`bench run --attack`: attack_id, clean_mAP, "
                            f"adversarial_mAP, named <run id>.<attack id>.json)")
            continue
        files.append({**data, "_file": name, "_run_id": path.name[:-len(f".{attack_id}.json")]})
    return files, problems


@dataclass(frozen=True)
class AttackRow:
    """One configuration at one bit length under one attack: values by seed, in points."""

    group: Group
    label: str
    clean: dict[int, float]
    attacked: dict[int, float]
    not_reproduced: tuple[int, ...] = ()

    @property
    def bits(self) -> int:
        return self.group.bits

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(sorted(self.attacked))

    @property
    def clean_stat(self) -> Stat:
        return Stat.of(self.clean[s] for s in self.seeds)

    @property
    def attacked_stat(self) -> Stat:
        return Stat.of(self.attacked[s] for s in self.seeds)


@dataclass(frozen=True)
class AttackView:
    """One main table under one attack."""

    scope: Scope
    attack_id: str
    spec: dict[str, Any]
    rows: tuple[AttackRow, ...]
    bits: tuple[int, ...]
    missing: tuple[tuple[str, str, int], ...]  # (method, label, bits) of the table's rows not attacked

    def describe(self) -> str:
        try:
            return AttackSpec(**self.spec).describe()
        except TypeError:
            return json.dumps(self.spec, sort_keys=True)


def variant_label(method: str, protocol: str, variant: Variant) -> str:
    """A configuration's name beside its method: the settings that differ from the method's
    defaults, leaving out those that follow from the others by the method's own rules (CgAT's
    base_settings follow from its base) and abbreviating a mapping that does not."""
    from methods import get_method

    try:
        cls = get_method(method)
    except Exception:  # noqa: BLE001 - an unknown method keeps its plain name
        cls = None
    always = tuple(getattr(cls, "label_keys", ()))  # settings that name it even at their default
    defaults = method_defaults(method, protocol)
    if not variant and not (always and defaults):
        return method_name(method)
    changed = {key: json.loads(value) for key, value in variant}
    if defaults is not None:
        changed = {**{k: defaults[k] for k in always if k in defaults}, **changed}
    shown = dict(changed)
    if defaults is not None:
        try:
            derived = cls.resolve_rules(  # type: ignore[union-attr]
                {**defaults, **{k: v for k, v in changed.items() if not isinstance(v, (dict, list))}}, False)
        except Exception:  # noqa: BLE001 - a label must not break the report
            derived = {}
        shown = {k: v for k, v in changed.items()
                 if not (isinstance(v, (dict, list)) and derived.get(k) == v)}
    parts = [f"{k}={'{…}' if isinstance(v, dict) else '[…]' if isinstance(v, list) else v}"
             for k, v in sorted(shown.items())]
    return f"{method_name(method)} ({', '.join(parts)})" if parts else method_name(method)


def attack_views(analysis: Analysis, attacks: Sequence[dict[str, Any]]) -> tuple[list[AttackView], list[str]]:
    """The under-attack views of every main table with attack results, and the names of the
    attack files that match no counted run (an older or failed record, or none)."""
    where: dict[str, tuple[Group, int]] = {}
    for group in analysis.groups:
        for seed, record in group.runs.items():
            where[str(record.get("run_id"))] = (group, seed)
    found: dict[tuple[Scope, str], dict[tuple, dict[int, dict[str, Any]]]] = {}
    specs: dict[str, dict[str, Any]] = {}
    unmatched = []
    for attack in attacks:
        hit = where.get(attack["_run_id"])
        if hit is None or hit[0].scope not in analysis.main:
            unmatched.append(attack["_file"])
            continue
        group, seed = hit
        key = (group.method, group.bits, group.variant, group.config_key)
        found.setdefault((group.scope, attack["attack_id"]), {}).setdefault(key, {})[seed] = attack
        specs.setdefault(attack["attack_id"], dict(attack.get("attack") or {}))
    views = []
    for (scope, attack_id), by_group in sorted(found.items(), key=lambda item: (item[0][0], item[0][1])):
        table = analysis.main[scope]
        groups = {(g.method, g.bits, g.variant, g.config_key): g for g in analysis.groups_in(scope)}
        bits = tuple(sorted({key[1] for key in by_group}))
        rows, missing = [], []
        main_rows = [(table.cell(m, b).group if table.cell(m, b) else None, m, b)
                     for m in table.methods for b in bits]
        variants = sorted((groups[key] for key in by_group if key[2]), key=Group.sort_key)
        for group, method, b in [*main_rows, *((g, g.method, g.bits) for g in variants)]:
            label = variant_label(method, scope.protocol, group.variant if group else ())
            key = (group.method, group.bits, group.variant, group.config_key) if group else None
            files = by_group.get(key, {}) if key else {}
            if not files:
                missing.append((method, label, b))
                continue
            rows.append(AttackRow(group, label, {s: float(f["clean_mAP"]) * 100 for s, f in files.items()},
                                  {s: float(f["adversarial_mAP"]) * 100 for s, f in files.items()},
                                  tuple(sorted(s for s, f in files.items()
                                               if f.get("record_reproduced") is False))))
        views.append(AttackView(scope, attack_id, specs[attack_id], tuple(rows), bits, tuple(missing)))
    return views, sorted(unmatched)


def _seeds_note(row: AttackRow, table: MainTable) -> str:
    expected = table.expected.get(row.bits, ())
    if row.group.variant or set(expected) <= set(row.seeds):
        return str(len(row.seeds))
    return f"{len(row.seeds)} (of the table's {len(expected)}: {fmt_seeds(row.seeds)})"


def attack_section(doc: Doc, analysis: Analysis, views: Sequence[AttackView],
                   unmatched: Sequence[str]) -> None:
    """The report's section: one table and one clean-vs-attacked figure per view."""
    if not views and not unmatched:
        return
    doc.h(2, SECTION)
    doc.p("Every query attacked (L-inf PGD on its pixels, bench/evaluation/attack.py: towards the negated "
          "target code, within the budget and the valid pixel range) and ranked against the clean "
          "database. Clean and attacked mAP come from the same model (the run trained again for the "
          "attack: weights are not kept); mean ± sd over the attacked seeds, in points; n = seeds.")
    for view in views:
        table = analysis.main[view.scope]
        title = card_info(view.scope.dataset).get("title") or view.scope.dataset
        doc.h(3, f"{title}: {analysis.scope_label(view.scope)} · attack {view.attack_id}")
        doc.p(f"Attack `{view.attack_id}`: {view.describe()}.")
        out = []
        for row in view.rows:
            clean, attacked = row.clean_stat, row.attacked_stat
            out.append((row.label, row.bits, clean.text(show_n=False), attacked.text(show_n=False),
                        fmt_signed(attacked.mean - clean.mean), _seeds_note(row, table)))
        for _, label, bits in view.missing:
            out.append((label, bits, "–", NOT_ATTACKED, "–", "0"))
        doc.table(("method", "bits", "clean mAP", "attacked mAP", "attacked − clean", "n"), out)
        notes = [f"{row.label} at {row.bits} bits: the attack rerun did not reproduce the stored record "
                 f"(seeds {fmt_seeds(row.not_reproduced)}); clean and attacked are the rerun's."
                 for row in view.rows if row.not_reproduced]
        doc.bullets(notes)
        if view.rows:
            panels = [(f"{b} bits", tuple((row.label, row.clean_stat, row.attacked_stat)
                                          for row in view.rows if row.bits == b)) for b in view.bits]
            name = f"attack-{view.scope.slug}-{view.attack_id}"
            width = min(12.4, 2.2 + 0.75 * max(len(p[1]) for p in panels) * len(panels))
            doc.figure(FigurePlan(name, (width, 3.6), draw_attack(panels, view.attack_id), panels),
                       f"Clean (light) and attacked (dark) mAP per row, mean ± sd over seeds; "
                       f"{analysis.scope_label(view.scope)}; attack {view.attack_id}.")
    if unmatched:
        doc.p(f"{len(unmatched)} attack result(s) match no counted run of a main table (an older or failed "
              f"record, a configuration outside the main tables, or none): "
              f"{', '.join(unmatched[:5])}{' …' if len(unmatched) > 5 else ''}.")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def attack_numbers(analysis: Analysis, views: Sequence[AttackView]) -> dict[str, str]:
    """`attack.<card>.[<setting>.]<attack id>.<method>[.<configuration>].<bits>` = attacked mAP
    "mean ± sd (n)", `.clean` the same seeds' clean mAP, and "not attacked" for a row of the
    table without a result."""
    from bench.report.numbers import card_key, table_tag

    out: dict[str, str] = {}
    for view in views:
        table = analysis.main[view.scope]
        prefix = f"attack.{card_key(view.scope.dataset)}.{table_tag(analysis, table)}{view.attack_id}."

        def key_of(label: str, method: str) -> str:
            name = "floor" if method == FLOOR_METHOD else method
            extra = label[len(method_name(method)):].strip(" ()")
            return name + (f".{_slug(extra)}" if extra else "")

        for row in view.rows:
            key = f"{prefix}{key_of(row.label, row.group.method)}.{row.bits}"
            for suffix, stat in (("", row.attacked_stat), (".clean", row.clean_stat)):
                out[key + suffix] = stat.cell_text()
        for method, label, bits in view.missing:
            key = f"{prefix}{key_of(label, method)}.{bits}"
            out[key] = out[key + ".clean"] = NOT_ATTACKED
    return out
