"""Figures of the report, drawn with matplotlib + seaborn into PNG bytes, deterministically
(fixed rc settings, no PNG metadata, svg.hashsalt set): the same records give the same bytes.

Each `draw_*` returns a function that fills a matplotlib Figure; `render_figure` draws a
FigurePlan."""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.report.ablations import Panel
from bench.report.document import FigurePlan
from bench.report.groups import Cell
from bench.report.stats import Stat
from bench.report.util import (
    DISPLAY_NAMES,
    FLOOR_METHOD,
    METHOD_ORDER,
    get,
    method_name,
    method_sort_key,
    metric_points,
    num,
    training_cost,
)

_RC = {
    "figure.dpi": 100, "savefig.dpi": 100, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
    "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8, "svg.hashsalt": "hashbench",
    "path.simplify": True,
}


def _palette(methods: Iterable[str]) -> dict[str, Any]:
    """One color per method, the same in every figure: the known methods in a fixed order take the
    colorblind palette's nine non-grey hues, then the dark palette's (chosen so that a second-cycle
    color is not a darker twin of an early one); grey is the classify-then-hash floor's alone.
    Methods the suite does not know (plugins) follow, sorted, on what is left."""
    import seaborn as sns

    first = [c for i, c in enumerate(sns.color_palette("colorblind", 10)) if i != 7]  # 7 is grey
    dark = sns.color_palette("dark", 10)
    second = [dark[i] for i in (8, 9, 3, 4, 5, 2, 1, 6, 0)]
    colors = first + second
    order = list(METHOD_ORDER) + [m for m in DISPLAY_NAMES if m not in METHOD_ORDER]
    order += sorted(set(methods) - set(order) - {FLOOR_METHOD})
    known = {m: colors[i % len(colors)] for i, m in enumerate(order)}
    known[FLOOR_METHOD] = (0.45, 0.45, 0.45)  # the reference floor is grey everywhere
    return known


@dataclass(frozen=True)
class Series:
    """One line of the headline figure: (bits, mean, 95 % low, 95 % high) points; `kind` is
    "method", "floor" (classify-then-hash) or "chance" (random codes)."""

    label: str
    key: str
    kind: str
    points: tuple[tuple[int, float, float, float], ...]


def draw_headline(panels: Sequence[tuple[str, Sequence[int], Sequence[Series]]], xlabel: str = "bits",
                  ylim: tuple[float, float] | None = (0, 100)) -> Callable[[Any], None]:
    """mAP against bits per method with 95 % intervals, one panel per dataset card; the
    classify-then-hash floor (dashed) and chance (dotted) drawn apart from the methods. Series
    at one bit length are dodged sideways so their intervals do not hide each other. The x
    axis is log2-spaced, so it serves any doubling series (the budget curves' epochs too)."""
    def draw(fig: Any) -> None:
        axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=False))
        title_width = _title_chars(fig, len(panels), 9)
        keys = [s.key for _, _, series in panels for s in series if s.kind == "method"]
        colors = _palette(keys)
        handles: dict[str, Any] = {}
        for ax, (title, bits_list, series) in zip(axes, panels, strict=True):
            drawn = [s for s in series if s.kind != "chance"]
            for s in series:
                dodge = 0.0
                if s.kind != "chance" and len(drawn) > 1:
                    dodge = (drawn.index(s) - (len(drawn) - 1) / 2) * min(0.08, 0.5 / len(drawn))
                xs = [math.log2(b) + dodge for b, *_ in s.points]
                ys = [m for _, m, _, _ in s.points]
                low = [0.0 if math.isnan(lo) else m - lo for _, m, lo, _ in s.points]
                high = [0.0 if math.isnan(hi) else hi - m for _, m, _, hi in s.points]
                if s.kind == "chance":  # a level, drawn across the whole panel
                    xs, ys = [xs[0] - 0.45] + xs + [xs[-1] + 0.45], [ys[0]] + ys + [ys[-1]]
                    line = ax.plot(xs, ys, linestyle=":", color="black", linewidth=1.4)[0]
                elif s.kind == "floor":
                    line = ax.errorbar(xs, ys, yerr=[low, high], color="0.45", linestyle="--", marker="s",
                                       markersize=4, capsize=3, linewidth=1.3)
                else:
                    line = ax.errorbar(xs, ys, yerr=[low, high], color=colors[s.key], marker="o",
                                       markersize=4, capsize=3, linewidth=1.5)
                handles.setdefault(s.label, line)
            ticks = [math.log2(b) for b in bits_list]
            ax.set_xticks(ticks)
            ax.set_xticklabels([str(b) for b in bits_list])
            ax.set_xlim(min(ticks) - 0.5, max(ticks) + 0.5)
            ax.set_title(_wrap_title(title, title_width), fontsize=9)
            ax.set(xlabel=xlabel, ylabel="mAP (%)")
            if ylim is not None:
                ax.set_ylim(*ylim)
            ax.grid(True, alpha=0.3)
        fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8)

    return draw


def _title_chars(fig: Any, panels: int, fontsize: float) -> int:
    """About how many characters of a title fit over one panel (a character is up to half
    the font size wide in DejaVu Sans, with a margin); the legend takes about two inches."""
    panel_inches = max(1.0, (fig.get_size_inches()[0] - 2.0) / panels)
    return max(16, int(panel_inches * 72 / (0.5 * fontsize)))


def _wrap_title(title: str, width: int) -> str:
    """Wrap each line of a panel title at its ' · ' separators (then at spaces), so that
    the titles of neighbouring panels do not run into each other."""
    import textwrap

    chunks: list[str] = []
    for line in title.split("\n"):
        current = ""
        for part in line.split(" · "):
            joined = f"{current} · {part}" if current else part
            if current and len(joined) > width:
                chunks.append(current)
                current = part
            else:
                current = joined
        chunks.append(current)
    return "\n".join(wrapped for chunk in chunks
                     for wrapped in textwrap.wrap(chunk, width, break_on_hyphens=False) or [""])


def _mean_curve(records: list[dict], key: str) -> np.ndarray | None:
    arrays = [np.asarray([num(v) for v in get(r, "metrics", key, default=[]) or []]) for r in records]
    if not arrays or any(len(a) == 0 or len(a) != len(arrays[0]) for a in arrays):
        return None
    return np.nanmean(np.stack(arrays), axis=0)


def draw_curves(cells: list[Cell], title: str) -> Callable[[Any], None]:
    def draw(fig: Any) -> None:
        colors = _palette(c.group.method for c in cells)
        pr, pn = fig.subplots(1, 2)
        for cell in cells:
            records = cell.records()
            color = colors[cell.group.method]
            name = f"{method_name(cell.group.method)} (n={len(records)})"
            precision = _mean_curve(records, "precision_at_radius")
            recall = _mean_curve(records, "recall_at_radius")
            if precision is not None and recall is not None and len(precision) == len(recall):
                pr.plot(recall, precision, marker="o", markersize=3, linewidth=1.4, color=color, label=name)
                at2 = min(2, len(recall) - 1)
                pr.plot([recall[at2]], [precision[at2]], marker="o", markersize=9, fillstyle="none",
                        color=color, linestyle="none")
            ns = get(records[0], "metrics", "pr_at_n")
            p_at_n = _mean_curve(records, "precision_at_n")
            if ns and p_at_n is not None and len(ns) == len(p_at_n):
                pn.plot(ns, p_at_n, marker="o", markersize=3, linewidth=1.4, color=color, label=name)
        pr.set(xlabel="recall (items within radius r)", ylabel="precision",
               title="PR by Hamming radius (open circle: r = 2)",
               xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        pn.set(xlabel="N (top of the Hamming ranking)", ylabel="precision@N", title="precision@N",
               xscale="log", ylim=(-0.02, 1.02))
        for ax in (pr, pn):
            ax.grid(True, alpha=0.3)
            if ax.lines:
                ax.legend(loc="best")
        fig.suptitle(title)

    return draw


def draw_validation(cells: list[Cell], bits_list: list[int], title: str) -> Callable[[Any], None]:
    def draw(fig: Any) -> None:
        from matplotlib.ticker import MaxNLocator

        colors = _palette(c.group.method for c in cells)
        axes = np.atleast_1d(fig.subplots(1, len(bits_list), sharey=True))
        for ax, bits in zip(axes, bits_list, strict=True):
            at_bits = sorted((c for c in cells if c.group.bits == bits),
                             key=lambda c: method_sort_key(c.group.method))
            for cell in at_bits:
                per_epoch: dict[int, list[float]] = {}
                for record in cell.records():
                    for entry in record.get("history") or []:
                        if entry.get("val_mAP") is not None:
                            per_epoch.setdefault(int(entry["epoch"]), []).append(num(entry["val_mAP"]) * 100)
                epochs = [e for e in sorted(per_epoch) if len(per_epoch[e]) == len(cell.used)]
                if epochs:
                    ax.plot(epochs, [float(np.mean(per_epoch[e])) for e in epochs], marker="o", markersize=3,
                            color=colors[cell.group.method], label=method_name(cell.group.method))
            ax.set(title=f"{bits} bits", xlabel="epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
        # One legend beside the panels: inside one, it hid the lowest curves (one method
        # may be missing at some lengths, so the handles are the union over panels).
        handles = {line.get_label(): line for ax in axes for line in ax.lines}
        if handles:
            fig.legend(list(handles.values()), list(handles), loc="outside right upper", fontsize=8)
        axes[0].set_ylabel("validation mAP (%)")
        fig.suptitle(title)

    return draw


def ablation_grid(count: int) -> tuple[int, int]:
    """(rows, columns) of the ablation figure: two panels per row."""
    columns = min(2, max(1, count))
    return math.ceil(count / columns), columns


def draw_ablations(drawn: list[tuple[str, str, list[Panel]]], title: str) -> Callable[[Any], None]:
    def draw(fig: Any) -> None:
        import seaborn as sns

        getter = metric_points("mAP")
        rows, columns = ablation_grid(len(drawn))
        axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
        for ax in axes[len(drawn):]:
            ax.set_axis_off()
        for ax, (_, dim_title, panels) in zip(axes, drawn, strict=False):
            # One x position per setting (the default marker "*" dropped: the default of each
            # series is drawn as a star instead, since it can differ between bit lengths).
            keys: dict[str, tuple] = {}
            for panel in panels:
                for point in panel.points:
                    if point.cell.complete:
                        keys.setdefault(point.label.rstrip("*"), point.sort_key)
            order = sorted(keys, key=lambda label: (keys[label], label))
            colors = sns.color_palette("viridis", max(1, len(panels)))
            for panel, color in zip(panels, colors, strict=True):
                xs, ys, es, stars = [], [], [], []
                for point in panel.points:
                    if not point.cell.complete:
                        continue
                    stat = point.cell.stat(getter)
                    xs.append(order.index(point.label.rstrip("*")))
                    ys.append(stat.mean)
                    es.append(0.0 if math.isnan(stat.std) else stat.std)
                    if point.is_default:
                        stars.append((xs[-1], ys[-1]))
                if xs:
                    ax.errorbar(xs, ys, yerr=es, marker="o", markersize=4, capsize=3, linewidth=1.2,
                                color=color, label=panel.series)
                for x, y in stars:
                    ax.plot([x], [y], marker="*", markersize=13, color=color, markeredgecolor="black",
                            markeredgewidth=0.6, linestyle="none")
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels(order, rotation=20, ha="right")
            ax.set(title=dim_title, ylabel="mAP (%)")
            ax.grid(True, alpha=0.3)
            if ax.lines:
                ax.legend(loc="best", title="★ = default", fontsize=7)
        fig.suptitle(title)

    return draw


def draw_centers(cells: list[Cell], similarity: tuple[np.ndarray, str] | None, title: str
                 ) -> Callable[[Any], None]:
    """The class similarity the centers are judged against, then each method's center
    Hamming distances (lowest seed)."""
    def draw(fig: Any) -> None:
        import seaborn as sns

        axes = np.atleast_1d(fig.subplots(1, len(cells) + 1))
        first = cells[0].records()[0]
        names = list(get(first, "task", "class_names", default=[]) or [])
        count = len(first.get("centers") or [])
        if len(names) != count:
            names = [str(i) for i in range(count)]
        ticks = names if count <= 30 else False
        annotate = count <= 12
        title_width = _title_chars(fig, len(axes), 10)
        if similarity is not None:
            sns.heatmap(similarity[0], ax=axes[0], cmap="mako_r", square=True, xticklabels=ticks,
                        yticklabels=ticks, cbar_kws={"shrink": 0.7}, annot=False)
            axes[0].set_title(_wrap_title(f"class similarity ({similarity[1]}; dark = similar)", title_width),
                              fontsize=10)
        else:
            axes[0].set_axis_off()
            axes[0].set_title("no independent class similarity")
        for ax, cell in zip(axes[1:], cells, strict=True):
            record = cell.records()[0]
            centers = np.asarray(record["centers"], dtype=np.int64)
            bits = centers.shape[1]
            distances = (bits - centers @ centers.T) // 2
            sns.heatmap(distances, ax=ax, cmap="mako", vmin=0, vmax=bits, square=True, annot=annotate,
                        fmt="d", annot_kws={"fontsize": 6}, xticklabels=ticks, yticklabels=ticks,
                        cbar_kws={"shrink": 0.7})
            ax.set_title(_wrap_title(f"{method_name(cell.group.method)} centers: Hamming distance "
                                     f"(seed {cell.used[0]})", title_width), fontsize=10)
        for ax in axes:
            ax.tick_params(labelsize=6)
        fig.suptitle(title)

    return draw


def draw_reassignment(steps: list[tuple[Cell, list[list[dict]]]], title: str) -> Callable[[Any], None]:
    def draw(fig: Any) -> None:
        import seaborn as sns

        ax = fig.subplots(1, 1)
        colors = sns.color_palette("viridis", max(1, len(steps)))
        for (cell, per_run), color in zip(steps, colors, strict=True):
            per_epoch: dict[int, list[int]] = {}
            for run_steps in per_run:
                for step in run_steps:
                    per_epoch.setdefault(step["epoch"], []).append(step["changed_classes"])
            epochs = sorted(per_epoch)
            ax.plot(epochs, [float(np.mean(per_epoch[e])) for e in epochs], marker="o", markersize=3,
                    color=color, label=f"{cell.group.bits} bits (n={len(per_run)})")
        from matplotlib.ticker import MaxNLocator

        ax.set(xlabel="epoch of the reassignment step", ylabel="classes moved (any head), mean over seeds",
               title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=-0.3)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best")

    return draw


def draw_cost(cells: list[Cell], bits_list: list[int], title: str) -> Callable[[Any], None]:
    def draw(fig: Any) -> None:
        import seaborn as sns

        left, right = fig.subplots(1, 2)
        methods = sorted({c.group.method for c in cells}, key=method_sort_key)
        colors = sns.color_palette("viridis", max(1, len(bits_list)))
        width = 0.8 / max(1, len(bits_list))
        for j, (bits, color) in enumerate(zip(bits_list, colors, strict=True)):
            xs, ys, es = [], [], []
            for i, method in enumerate(methods):
                cell = next((c for c in cells if c.group.method == method and c.group.bits == bits), None)
                if cell is None:
                    continue
                stat = cell.stat(training_cost)
                xs.append(i + (j - (len(bits_list) - 1) / 2) * width)
                ys.append(stat.mean)
                es.append(0.0 if math.isnan(stat.std) else stat.std)
            if xs:
                left.bar(xs, ys, width=width * 0.95, yerr=es, capsize=2, color=color, label=f"{bits} bits")
        left.set_xticks(range(len(methods)))
        left.set_xticklabels([method_name(m) for m in methods], rotation=25, ha="right",
                             rotation_mode="anchor")  # long names (classify-then-hash) would overlap
        left.set(ylabel="seconds per run (set-up + training + hooks)", title="training cost per run")
        left.grid(False, axis="x")
        left.grid(True, axis="y", alpha=0.3)
        if left.patches:
            left.legend(loc="best")
        from matplotlib.patches import Patch

        stage_colors = sns.color_palette("Set2", 6)
        labels: list[str] = []
        position = 0.0
        for bits in bits_list:
            for method in ("shc", "crh"):
                cell = next((c for c in cells if c.group.method == method and c.group.bits == bits), None)
                if cell is None:
                    continue
                for name, _ in _stage_parts(cell):
                    if name not in labels:
                        labels.append(name)
                right.bar(position, 0)  # keeps an empty stack visible on the axis
                bottom = 0.0
                for name, value in _stage_parts(cell):
                    right.bar(position, value, bottom=bottom, width=0.8,
                              color=stage_colors[labels.index(name) % len(stage_colors)])
                    bottom += value
                right.annotate(f"{method_name(method)}\n{bits}b", (position, bottom), ha="center", fontsize=7,
                               xytext=(0, 2), textcoords="offset points")
                position += 1
            position += 0.5
        if labels:
            handles = [Patch(color=stage_colors[i % len(stage_colors)], label=name)
                       for i, name in enumerate(labels)]
            right.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.02),
                         ncol=min(4, len(handles)), frameon=False)
            right.set(ylabel="seconds (mean over seeds)", title="SHC's stages vs CRH's single stage")
            right.set_xticks([])
            right.margins(y=0.15)
            right.grid(False, axis="x")
            right.grid(True, axis="y", alpha=0.3)
        else:
            right.set_axis_off()
            right.set_title("no SHC or CRH runs")
        fig.suptitle(title)

    return draw


def _stage_parts(cell: Cell) -> list[tuple[str, float]]:
    """(stage name, mean seconds) stacked in the cost figure: SHC's stages, then the hash
    network's training; for CRH its training and its reassignment hooks."""
    def mean(getter: Callable[[dict], float]) -> float:
        value = cell.stat(getter).mean
        return 0.0 if math.isnan(value) else value

    parts: list[tuple[str, float]] = []
    if cell.group.method == "crh":
        parts.append(("hash-network training", mean(lambda r: num(get(r, "timings", "train")))))
        parts.append(("CRH reassignment", mean(lambda r: num(get(r, "timings", "method_hooks")))))
        return parts
    stages = sorted({k for r in cell.records() for k in (get(r, "timings", "method_stages") or {})})
    for stage in stages:
        parts.append((f"{method_name(cell.group.method)} {stage}",
                      mean(lambda r, k=stage: num(get(r, "timings", "method_stages", k)))))
    parts.append(("hash-network training", mean(lambda r: num(get(r, "timings", "train")))))
    return parts


def draw_attack(panels: Sequence[tuple[str, Sequence[tuple[str, Stat, Stat]]]],
                attack_id: str) -> Callable[[Any], None]:
    """Clean and attacked mAP side by side per row (mean ± sd over seeds), one panel per bit
    length: a light and a dark bar per row, in the row's color."""
    def draw(fig: Any) -> None:
        axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
        colors = _palette(label for _, rows in panels for label, _, _ in rows)
        for ax, (title, rows) in zip(axes, panels, strict=True):
            for i, (label, clean, attacked) in enumerate(rows):
                color = colors[label]
                for offset, stat, alpha in ((-0.2, clean, 0.35), (0.2, attacked, 1.0)):
                    error = 0.0 if math.isnan(stat.std) else stat.std
                    ax.bar(i + offset, stat.mean, width=0.38, yerr=error, capsize=2, color=color,
                           alpha=alpha, edgecolor=color)
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels([label for label, _, _ in rows], rotation=30, ha="right")
            ax.set(title=title, ylabel="mAP (%)", ylim=(0, 100))
            ax.grid(False, axis="x")
            ax.grid(True, axis="y", alpha=0.3)
        fig.suptitle(f"clean (light) and attacked (dark) mAP, attack {attack_id}")

    return draw


def render_figure(plan: FigurePlan) -> bytes:
    """Draw one figure to PNG bytes, deterministically (fixed rc, no metadata)."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(_RC)
        import seaborn as sns

        with sns.axes_style("whitegrid"):
            fig = Figure(figsize=plan.size, layout="constrained")
            plan.draw(fig)
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def stage_text(cell: Cell) -> str:
    """"classifier 20.6 s, centers 0.0 s, hash network 102.7 s": a cell's mean stage times."""
    stages: dict[str, list[float]] = {}
    for record in cell.records():
        for name, value in sorted((get(record, "timings", "method_stages") or {}).items()):
            stages.setdefault(name, []).append(num(value))
        stages.setdefault("hash network", []).append(num(get(record, "timings", "train")))
    return ", ".join(f"{name} {Stat.of(v).mean:.1f} s" for name, v in stages.items())
