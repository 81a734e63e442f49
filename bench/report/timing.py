"""The cost claim's secondary figure: isolated wall time from `python -m bench perf cost`.

The claim is graded on counted work (bench/training/work.py); the sweeps' wall times were
measured with several runs sharing the cores and are context only. A `bench perf cost` file
(results/perf/cost-<host>-<date>.json) holds sequential SHC/CRH pairs with the load measured
around each run. The report re-grades every file from its raw pairs with the command's own
rule (bench.perf.cost.grade), so a file edited by hand, or written by an older version of the
rule, cannot carry a stale verdict into the report. The figure is shown beside the grade and
never changes it: a timing is one machine's, and another CPU (or a GPU) can order the stages
differently.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.perf.cost import MARGIN, grade

PERF_FOLDER = "perf"
FILE_GLOB = "cost-*.json"
BENCHMARK = "perf cost"
NOT_MEASURED = ("no isolated timing in results/perf/ (`python -m bench perf cost`: sequential "
                f"SHC/CRH pairs, load measured, TOST at ±{(MARGIN - 1) * 100:.0f} %)")


def load_timing(results_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """(every `bench perf cost` file under <results>/perf in name order, problems). Each file
    is tagged with its name relative to the results folder, never an absolute path."""
    folder = Path(results_dir) / PERF_FOLDER
    files: list[dict[str, Any]] = []
    problems: list[str] = []
    for path in sorted(folder.glob(FILE_GLOB)) if folder.is_dir() else []:
        name = f"{PERF_FOLDER}/{path.name}"
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            problems.append(f"{name}: unreadable ({type(error).__name__})")
            continue
        if (not isinstance(data, dict) or data.get("benchmark") != BENCHMARK
                or not isinstance(data.get("pairs"), list)):
            problems.append(f"{name}: not a `bench perf cost` result")
            continue
        files.append({**data, "_file": name})
    return files, problems


def _label(data: dict[str, Any]) -> str:
    return (f"{data.get('dataset', '?')} {data.get('bits', '?')} bits, {data.get('epochs', '?')} epochs, "
            f"{data.get('host_cpu', '?')}, {data.get('threads', '?')} thread(s), "
            f"{str(data.get('date', '?'))[:10]}")


def timing_summary(data: dict[str, Any]) -> dict[str, Any]:
    """One file re-graded from its pairs: label, source file, grade fields and one sentence."""
    graded = grade(list(data["pairs"]))
    label = _label(data)
    if "ratio_geometric_mean" not in graded:
        sentence = f"{label}: {graded['verdict']}"
    else:
        low, high = graded["ratio_ci90"]
        sentence = (f"{label}: SHC / CRH wall time x{graded['ratio_geometric_mean']:.3f} (90 % CI "
                    f"x{low:.3f} to x{high:.3f}, {graded['pairs_counted']} of {graded['pairs_run']} pairs "
                    f"counted); p(more than x{MARGIN}) {graded['p_costs_more']:.3g}, TOST p(within "
                    f"±{(MARGIN - 1) * 100:.0f} %) {graded['p_equivalent_tost']:.3g}: {graded['verdict']}")
    return {"file": data.get("_file", "?"), "label": label, **graded, "summary": sentence}


def timing_details(files: Sequence[dict[str, Any]], problems: Sequence[str] = ()) -> dict[str, Any]:
    """What the cost claim shows beside its counted-work grade (never graded itself)."""
    summaries = [timing_summary(f) for f in files]
    lines = [s["summary"] for s in summaries] + list(problems)
    return {"measured": bool(summaries), "summary": "; ".join(lines) if lines else NOT_MEASURED,
            "files": summaries}


def timing_numbers(details: dict[str, Any]) -> dict[str, str]:
    """README keys for the newest file's figure (`timing.*`), or 'not measured'."""
    measured = [f for f in details.get("files", []) if "ratio_geometric_mean" in f]
    if not measured:
        return {"timing.ratio": "not measured", "timing.summary": details.get("summary", NOT_MEASURED)}
    newest = measured[-1]
    low, high = newest["ratio_ci90"]
    return {"timing.ratio": f"{newest['ratio_geometric_mean']:.3f}", "timing.low": f"{low:.3f}",
            "timing.high": f"{high:.3f}", "timing.pairs": str(newest["pairs_counted"]),
            "timing.verdict": newest["verdict"], "timing.machine": newest["label"],
            "timing.summary": newest["summary"]}


def isolated_timing_section(doc: Any, details: dict[str, Any]) -> None:
    """The report's subsection under Training cost: one row per `bench perf cost` file."""
    doc.h(3, "Isolated timing (secondary figure of the cost claim)")
    if not details.get("files"):
        doc.p(f"Not measured: {NOT_MEASURED}. The cost claim is graded on counted work alone.")
        return
    doc.p("Sequential runs, one at a time on one thread, SHC then CRH in every pair, a pair not counted "
          "when other work kept the cores busy at a run's start; the ratio is the geometric mean of "
          "SHC / CRH over counted pairs. Shown beside the counted-work grade, never grading it.")
    rows = []
    for f in details["files"]:
        measured = "ratio_geometric_mean" in f
        rows.append((f["file"], f["label"], f"{f['pairs_counted']}/{f['pairs_run']}",
                     f"x{f['ratio_geometric_mean']:.3f}" if measured else "–",
                     f"x{f['ratio_ci90'][0]:.3f} to x{f['ratio_ci90'][1]:.3f}" if measured else "–",
                     f"{f['p_costs_more']:.3g}" if measured else "–",
                     f"{f['p_equivalent_tost']:.3g}" if measured else "–", f["verdict"]))
    doc.table(("file", "setting and machine", "pairs counted", "SHC / CRH", "90 % CI",
               f"p(> x{MARGIN})", "TOST p", "reading"), rows)
