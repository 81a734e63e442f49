"""The reproduction report: tables, figures and graded claim verdicts as a pure function of run
records.

    records (+ corrupt-file problems, claims.yaml, published.yaml, attack results)
      -> analysis.analyze()        which runs count, grouped into comparable tables
      -> frame.claims_frame()      a tidy frame of the counted runs
      -> claims.evaluate_claims()  comparisons per claim, graded per card family (grading.py)
      -> build_report()            document blocks (tables.py, sections.py, unsupervised.py) +
                                   figure plans
      -> write_report()            report.md, report.html (self-contained), figures/*.png,
                                   verdicts.json, runs.csv, power.csv, numbers.json

Nothing here reads the clock, the environment or absolute paths, and every random draw
(bootstrap, permutations) is seeded from a label, so the same records give byte-identical
files. Submodules import each other directly, never through this package (no import cycles).

May import: `bench.tuning` and everything below it (`bench.sweeps`, `bench.training`,
`bench.runs`, `bench.data`, `bench.evaluation`, `bench.errors`, `methods`); never
`bench.commands`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bench import RESULTS_VERSION
from bench.errors import UserError
from bench.report.analysis import Analysis, analyze, schedule_comparisons
from bench.report.attacks import SECTION as ATTACK_SECTION
from bench.report.attacks import AttackView, attack_numbers, attack_section, attack_views, load_attacks
from bench.report.budget import budget_section
from bench.report.claims import ClaimResult, evaluate_claims, load_claims
from bench.report.devices import GPU_SAMPLES, DeviceCheck, device_checks, device_numbers, device_section
from bench.report.devices import SECTION as DEVICE_SECTION
from bench.report.document import Block, Doc, FigurePlan, anchor
from bench.report.figures import render_figure
from bench.report.frame import claims_frame, runs_csv
from bench.report.groups import expected_seed_set
from bench.report.history import SECTION as HISTORY_SECTION
from bench.report.history import GradeChange, grade_changes, history_numbers, history_section, load_history
from bench.report.numbers import power_csv, report_numbers
from bench.report.progress import SECTION as PROGRESS_SECTION
from bench.report.progress import PlanState, progress_numbers, progress_section
from bench.report.published import load_published
from bench.report.render import render_html, render_markdown
from bench.report.sections import (
    ablations,
    appendix,
    centers,
    cost,
    curves,
    published_section,
    quality,
    training_curves,
)
from bench.report.shortcodes import SECTION as SHORT_CODES_SECTION
from bench.report.shortcodes import short_codes_section, short_tables
from bench.report.stats import holm_adjusted, paired_test
from bench.report.tables import (
    VERDICT_LEGEND,
    claims_section,
    headline_figure,
    main_comparison,
    verdict_table,
)
from bench.report.timing import isolated_timing_section, load_timing, timing_details
from bench.report.tuning import current_tuned, transfer_numbers, tuning_section
from bench.report.unsupervised import SECTION as UNSUPERVISED_SECTION
from bench.report.unsupervised import unsupervised_section
from bench.report.util import CLAIMS_FILE, PUBLISHED_FILE, get
from bench.report.verdicts import CONSISTENT, CONTRADICTED, GRADES, MIXED, NOT_MEASURABLE, SUPPORTED

__all__ = [
    "CONSISTENT", "CONTRADICTED", "GRADES", "MIXED", "NOT_MEASURABLE", "SUPPORTED", "Analysis", "Report",
    "analyze", "build_report", "claims_frame", "evaluate", "expected_seed_set", "generate", "holm_adjusted",
    "load_claims", "load_for_report", "load_published", "paired_test", "render_figures",
    "schedule_comparisons", "write_report",
]

SECTIONS = ("Claims and verdicts", "Main comparison", "Tuning", "Budget curves", "Retrieval curves",
            "Training curves",
            "CRH ablations", "Hash centers", "Training cost", "Published numbers", "Data quality",
            "Appendix: run ids per cell")


@dataclass
class Report:
    blocks: list[Block]
    figures: dict[str, FigurePlan]
    verdicts: list[ClaimResult]
    analysis: Analysis
    frame: pd.DataFrame
    attack_views: list[AttackView] = field(default_factory=list)
    grade_changes: list[GradeChange] = field(default_factory=list)
    tuned: dict[str, dict] = field(default_factory=dict)
    device_checks: list[DeviceCheck] = field(default_factory=list)
    progress: PlanState = field(default_factory=PlanState)

    def markdown(self) -> str:
        return render_markdown(self.blocks)


def evaluate(records: Sequence[dict], claims: Sequence[dict] | None = None) -> list[ClaimResult]:
    """The graded verdicts alone (what the tests of each grade call)."""
    analysis = analyze(records)
    return evaluate_claims(claims_frame(analysis), load_claims() if claims is None else claims)


def _header(doc: Doc, a: Analysis, verdicts: list[ClaimResult], sections: Sequence[str] = SECTIONS) -> None:
    doc.h(1, "hashbench reproduction report: CRH against its baselines")
    total = len(a.included) + len(a.older) + len(a.failed)
    commits = sorted({str(get(r, "code", "commit", default="?"))[:10] for r in a.included})
    doc.p(f"From {total} run records: **{len(a.included)} complete runs of the current code** (results "
          f"version {a.results_version}, commit(s) {', '.join(commits) or 'none'}) enter the numbers; "
          f"{len(a.older)} older, {len(a.failed)} failed and {len(a.problems)} unreadable are listed under "
          "Data quality. Paper: Yin et al., arXiv 2511.12162 (AAAI-26). Verdicts hold for the regime "
          "measured here (see each claim's regime note).")
    verdict_table(doc, verdicts)
    headline_figure(doc, a)
    dirty = sum(1 for r in a.included if get(r, "code", "dirty"))
    if dirty:
        doc.p(f"{dirty} run(s) came from a working tree with uncommitted changes.")
    unit = verdicts[0].replication if verdicts else ""
    doc.p(f"{VERDICT_LEGEND} Unit of replication: {unit}.")
    doc.p("Conventions: mAP, tie-aware mAP and P@r≤2 in percent; cells are means over the table's seeds "
          "with 95 % t intervals; every table names n; reference rows (the classify-then-hash floor and "
          "chance) are set apart below the methods. Machine-readable: verdicts.json (every comparison) "
          "and runs.csv (one row per run).")
    doc.bullets(f"[{title}](#{anchor(title)})" for title in sections)


def build_report(records: Sequence[dict], problems: Sequence[str] = (), claims: Sequence[dict] | None = None,
                 published: Sequence[dict] | None = None, results_version: Any = RESULTS_VERSION,
                 trials: Sequence[dict] = (), tuned: dict[str, dict] | None = None,
                 timing: dict[str, Any] | None = None, attacks: Sequence[dict] = (),
                 history: dict[str, Any] | None = None, gpu_samples: Sequence[dict] = (),
                 progress: PlanState | None = None) -> Report:
    """The whole report as data: a pure function of its arguments (`trials`: tuning trial
    records; `tuned`: card -> parsed tuned setting; `timing`: the `bench perf cost` files
    graded, bench.report.timing.timing_details; `attacks`: the attack results,
    bench.report.attacks.load_attacks; `history`: the v2 grades, bench.report.history;
    `gpu_samples`: GPU records kept outside the tables, bench.report.devices; `progress`: the
    plan's experiments counted and the searches not yet written, bench.commands.progress)."""
    claims = load_claims() if claims is None else claims
    published = load_published() if published is None else list(published)
    analysis = analyze(records, problems, results_version, current=current_tuned(tuned))
    frame = claims_frame(analysis)
    verdicts = evaluate_claims(frame, claims, timing)
    views, unmatched = attack_views(analysis, attacks)
    # Sections that exist only where their runs do (reports without them keep their bytes),
    # in the order they are written below: attacks, the unsupervised tables, short codes.
    extra = [*([ATTACK_SECTION] if views or unmatched else []),
             *([UNSUPERVISED_SECTION] if analysis.unsupervised else []),
             *([SHORT_CODES_SECTION] if short_tables(analysis) else [])]
    at = SECTIONS.index("Main comparison") + 1
    checks = device_checks(analysis, gpu_samples)
    sections = (*SECTIONS[:at], *extra, *SECTIONS[at:])
    if gpu_samples:  # right before Data quality, where it is written
        quality_at = sections.index("Data quality")
        sections = (*sections[:quality_at], DEVICE_SECTION, *sections[quality_at:])
    progress = progress or PlanState()
    if progress.started:  # right before Data quality, where it is written
        quality_at = sections.index("Data quality")
        sections = (*sections[:quality_at], PROGRESS_SECTION, *sections[quality_at:])
    changes = grade_changes(verdicts, history, claims)
    if changes:  # right after the claims it annotates
        sections = (sections[0], HISTORY_SECTION, *sections[1:])
    doc = Doc()
    _header(doc, analysis, verdicts, sections)
    claims_section(doc, verdicts)
    history_section(doc, changes, history)
    main_comparison(doc, analysis, list(published))
    attack_section(doc, analysis, views, unmatched)
    unsupervised_section(doc, analysis)
    short_codes_section(doc, analysis)
    tuning_section(doc, trials, tuned or {})
    budget_section(doc, analysis)
    curves(doc, analysis)
    training_curves(doc, analysis)
    ablations(doc, analysis)
    centers(doc, analysis, frame)
    cost(doc, analysis)
    isolated_timing_section(doc, timing or timing_details(()))
    published_section(doc, analysis, list(published))
    device_section(doc, checks, len(gpu_samples))
    progress_section(doc, progress)
    quality(doc, analysis)
    appendix(doc, analysis)
    return Report(doc.blocks, doc.figures, verdicts, analysis, frame, views, changes, tuned or {}, checks,
                  progress)


def render_figures(report: Report) -> dict[str, bytes]:
    return {name: render_figure(plan) for name, plan in sorted(report.figures.items())}


def load_for_report(results_dir: Path, runs_folder: str = "runs") -> tuple[list[dict], list[str]]:
    """Records and corrupt-file problems, with paths relative to results_dir (so the report
    does not depend on where the results folder lives)."""
    from bench.runs.records import load_records

    results_dir = Path(results_dir)
    records, problems = load_records(results_dir, runs_folder=runs_folder)
    prefix, plain = str(results_dir.resolve()) + "/", str(results_dir) + "/"

    def relative(text: str) -> str:
        return text.replace(prefix, "").replace(plain, "")

    for record in records:
        if "_path" in record:
            record["_path"] = relative(record["_path"])
    return records, sorted(relative(p) for p in problems)


@dataclass(frozen=True)
class Written:
    markdown: Path
    html: Path
    figures: tuple[Path, ...]
    verdicts: tuple[ClaimResult, ...]
    runs: Path


def write_report(report: Report, out_dir: Path, images: dict[str, bytes] | None = None) -> Written:
    out_dir = Path(out_dir)
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    images = render_figures(report) if images is None else images
    written = []
    for name, data in sorted(images.items()):
        path = figures_dir / f"{name}.png"
        path.write_bytes(data)
        written.append(path)
    for stale in sorted(figures_dir.glob("*.png")):
        if stale.stem not in images:
            stale.unlink()  # a figure of an earlier generation that no longer exists
    markdown = out_dir / "report.md"
    markdown.write_text(render_markdown(report.blocks))
    page = out_dir / "report.html"
    page.write_text(render_html(report.blocks, images))
    verdicts = [v.to_dict() for v in report.verdicts]
    (out_dir / "verdicts.json").write_text(json.dumps(verdicts, indent=1, sort_keys=True, ensure_ascii=False)
                                           + "\n")
    runs = out_dir / "runs.csv"
    runs.write_text(runs_csv(report.analysis))
    (out_dir / "power.csv").write_text(power_csv(report.verdicts))
    numbers = report_numbers(report.analysis, report.verdicts)
    numbers = dict(sorted({**numbers, **attack_numbers(report.analysis, report.attack_views),
                           **history_numbers(report.grade_changes),
                           **transfer_numbers(report.tuned), **device_numbers(report.device_checks),
                           **progress_numbers(report.progress)}.items()))
    (out_dir / "numbers.json").write_text(json.dumps(numbers, indent=1, sort_keys=True, ensure_ascii=False)
                                          + "\n")
    return Written(markdown, page, tuple(written), tuple(report.verdicts), runs)


def generate(results_dir: Path, out_dir: Path, claims_file: Path = CLAIMS_FILE,
             published_file: Path = PUBLISHED_FILE, progress: PlanState | None = None) -> Written:
    """Read the records under results_dir and write the report to out_dir (`progress`: the
    plan's experiments counted by bench.commands.progress, which `bench report` passes)."""
    records, problems = load_for_report(results_dir)
    if not records and not problems:
        raise UserError(f"no run records under {Path(results_dir) / 'runs'}: nothing to report "
                        "(run `python -m bench run ...` first, or pass --results DIR)")
    from bench.tuning.tune import TRIALS_FOLDER

    trials, trial_problems = load_for_report(results_dir, TRIALS_FOLDER)
    timing = timing_details(*load_timing(results_dir))
    attacks, attack_problems = load_attacks(results_dir)
    samples, sample_problems = load_for_report(results_dir, GPU_SAMPLES)
    report = build_report(records, problems + trial_problems + attack_problems + sample_problems,
                          load_claims(claims_file), load_published(published_file), trials=trials,
                          tuned=load_tuned_settings(), timing=timing, attacks=attacks,
                          history=load_history(results_dir), gpu_samples=samples,
                          progress=progress)
    return write_report(report, out_dir)


def load_tuned_settings(folder: Path | None = None) -> dict[str, dict]:
    """card -> {"methods": ...} for every bench/tuned/<card>.yaml (or `folder`'s), read by the
    loader the tuned protocol uses; a file that loader refuses is left out of the report."""
    from bench.runs.spec import load_tuned, tuned_dir
    from bench.tuning.widening import read_rounds

    folder = Path(folder) if folder is not None else tuned_dir()
    settings = {}
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        try:
            setting = load_tuned(path.stem, path)
        except UserError:
            continue
        if setting is not None:
            settings[path.stem] = {"dataset": path.stem, "methods": setting.methods}
            rounds = read_rounds(path)
            if rounds:  # a round widened after an edge hit (bench.tuning.widening)
                settings[path.stem]["widened"] = {key: r.as_yaml() for key, r in rounds.items()}
    return settings
