"""Main tables per dataset card with the two reference rows (classify-then-hash floor, chance),
margins over the floor, one-seed intervals, and the headline figure."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from bench.report import build_report
from bench.report.document import Heading, Table
from bench.report.numbers import report_numbers
from bench.report.render import render_html

SEEDS = (0, 1, 2)


def cell(make_record, method, bits, mean, *, seeds=SEEDS, spread=0.002, **options):
    return [make_record(method, bits, seed, mean + spread * (seed - 1), **options) for seed in seeds]


def literal_chance(relevant: float, n: int) -> float:
    """(R-1)/(N-1) + H_N (N-R) / (N (N-1)), H_N summed term by term."""
    harmonic = sum(1.0 / i for i in range(1, n + 1))
    return (relevant - 1) / (n - 1) + harmonic * (n - relevant) / (n * (n - 1))


def mAP_table(report, after: str) -> Table:
    """The mAP table that follows the heading containing `after`."""
    blocks = report.blocks
    start = next(i for i, b in enumerate(blocks) if isinstance(b, Heading) and after in b.text)
    return next(b for b in blocks[start:] if isinstance(b, Table) and b.header[0] == "method")


def test_reference_rows_and_margins_over_the_floor(make_record):
    records = []
    for bits in (16, 32):
        records += cell(make_record, "crh", bits, 0.80) + cell(make_record, "csq", bits, 0.75)
        records += cell(make_record, "classify-then-hash", bits, 0.73)
    report = build_report(records)
    table = mAP_table(report, "Fashion-MNIST")
    assert table.header == ("method", "16 bits (n=3)", "16: − floor", "32 bits (n=3)", "32: − floor")
    rows = {row[0]: row for row in table.rows}
    assert rows["CRH"][2] == "+7.00" and rows["CSQ"][2] == "+2.00"
    assert list(rows)[-2:] == ["*classify-then-hash (floor)*", "*chance (random codes)*"]
    assert table.row_classes[-2:] == ("ref", "ref") and set(table.row_classes[:-2]) == {""}
    # Chance comes from the table's first record by run id (in real tables all share one query
    # set and database): classify-then-hash seed 0, mAP 0.728; build_record stores precision at
    # radius K = mAP + 0.25 - 0.6 = 0.378, so R = 0.378 x 6000 relevant items of 6000.
    expected = literal_chance(0.378 * 6000, 6000) * 100
    assert rows["*chance (random codes)*"][1] == f"{expected:.2f}"
    assert "**" not in rows["*classify-then-hash (floor)*"][1]  # a reference row is never "best"
    html = render_html(report.blocks, {})
    assert '<tr class="ref ref-first"><td><em>classify-then-hash (floor)</em>' in html


def test_a_table_without_the_floor_says_so(make_record):
    report = build_report(cell(make_record, "crh", 16, 0.8) + cell(make_record, "csq", 16, 0.7))
    table = mAP_table(report, "Fashion-MNIST")
    assert table.header == ("method", "16 bits (n=3)")  # no margin columns without a floor
    assert table.rows[-2][1] == "not run"
    assert "classify-then-hash has not been run in this table" in report.markdown()


def test_one_main_table_per_card_and_one_headline_panel_each(make_record):
    records = cell(make_record, "crh", 16, 0.8) + cell(make_record, "csq", 16, 0.7)
    multi = cell(make_record, "crh", 16, 0.6, dataset="toy-multi") + cell(
        make_record, "csq", 16, 0.55, dataset="toy-multi")
    for record in multi:
        record["task"]["multi_label"] = True
    records += multi
    records += cell(make_record, "crh", 16, 0.7, epochs=20)  # another table of the first card
    report = build_report(records)
    markdown = report.markdown()
    assert "### Fashion-MNIST: fashion-mnist · native protocol · epochs=10" in markdown
    assert "### toy-multi: toy-multi · native protocol · epochs=10" in markdown
    assert "#### Also measured: fashion-mnist · native protocol · epochs=20" in markdown
    panels = report.figures["headline"].data
    assert [title.split("\n")[0] for title, _, _ in panels] == ["Fashion-MNIST", "toy-multi"]
    kinds = [s.kind for s in panels[0][2]]
    assert kinds == ["method", "method", "chance"]
    crh = panels[0][2][0]
    (bits, mean, low, high), = crh.points
    assert bits == 16 and mean == pytest.approx(80.0) and low < mean < high
    first_blocks = [type(b).__name__ for b in report.blocks[:4]]
    assert first_blocks == ["Heading", "Paragraph", "Table", "FigureRef"]  # verdicts, then the figure
    verdict = json_regime(report)
    assert any("multi-label" in line for line in verdict)


def json_regime(report):
    return next(v for v in report.verdicts if v.id == "crh-beats-baselines").regime


def test_one_seed_cells_show_a_query_bootstrap_or_say_there_is_none(make_record):
    rng = np.random.default_rng(0)
    crh, csq = make_record("crh", 16, 0, 0.8), make_record("csq", 16, 0, 0.7)
    crh["metrics"]["per_query_ap"] = rng.uniform(0.6, 1.0, 300).tolist()
    table = mAP_table(build_report([crh, csq]), "Fashion-MNIST")
    rows = {row[0]: row for row in table.rows}
    mean = np.mean(crh["metrics"]["per_query_ap"]) * 100
    assert rows["CRH"][1].endswith("]†**") and rows["CRH"][1].startswith("**80.00 [")
    low, high = (float(x) for x in rows["CRH"][1].strip("*†").split("[")[1].rstrip("]").split(", "))
    assert low < mean < high
    assert rows["CSQ"][1] == "70.00 (one seed; no per-query data)"


def test_the_pairs_card_ground_truth_judges_the_centers(make_record):
    """fashion-mnist-pairs declares its class similarity: the centers claim uses it, says so,
    and needs no second seed."""
    from bench.report import evaluate
    from bench.report.util import card_info

    if "ground_truth" not in card_info("fashion-mnist-pairs"):
        pytest.skip("the fashion-mnist-pairs card (with its ground truth) is not in this checkout")
    truth = card_info("fashion-mnist-pairs")["ground_truth"]
    records = [make_record("crh", 64, s, 0.5, dataset="fashion-mnist-pairs", num_classes=100) for s in (0, 1)]
    # centers whose Hamming similarity follows the ground truth: shared left/right halves
    items = np.where(np.random.default_rng(0).random((10, 32)) < 0.5, 1, -1)
    centers = np.concatenate([np.repeat(items, 10, axis=0), np.tile(items, (10, 1))], axis=1)
    for record in records:
        record["centers"] = centers.tolist()
    result = next(v for v in evaluate(records) if v.id == "centers-semantic")
    assert truth.shape == (100, 100)
    assert any("declared by the card" in note for note in result.notes)
    (comparison,) = result.comparisons
    assert comparison.a > 0.3 and comparison.p < 0.01



def test_a_reconstructed_method_is_marked_beside_its_row(make_record):
    """Records whose method_api names reconstructed pieces (issue 29) get "(reconstruction)"
    beside the row and a note naming the unknowns; methods read from their sources do not."""
    idch = cell(make_record, "idch", 16, 0.70)
    for record in idch:
        record["method_api"] = {"reconstruction": {"sigma": "DCDH's value", "loss": "two steps summed"}}
    report = build_report(cell(make_record, "crh", 16, 0.8) + idch)
    rows = {row[0]: row for row in mAP_table(report, "Fashion-MNIST").rows}
    assert "IDCH (reconstruction)" in rows and "CRH" in rows
    markdown = report.markdown()
    assert "IDCH is a reconstruction (its records say so): sigma, loss not read" in markdown
    assert "CRH is a reconstruction" not in markdown


def test_headline_panel_titles_do_not_run_into_each_other() -> None:
    """Four cards' panels with their long setting lines (the committed report's case): each
    panel's title stays within the space between its neighbours' titles."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from bench.report.figures import Series, draw_headline

    setting = "tuned protocol · epochs=60 · search_epochs=60 · split=per-seed"
    titles = ["Fashion-MNIST", "Fashion-MNIST mosaics (2x2 tiles, 1-4 items)",
              "Fashion-MNIST pairs (left item, right item)", "WordNet noun glosses (TF-IDF)"]
    series = (Series("CRH", "crh", "method", ((16, 50.0, 48.0, 52.0), (32, 55.0, 53.0, 57.0))),)
    panels = [(f"{t}\n{setting}", (16, 32), series) for t in titles]
    with matplotlib.rc_context({"font.size": 9, "axes.titlesize": 10}):
        fig = Figure(figsize=(12.4, 3.6), layout="constrained")
        FigureCanvasAgg(fig)
        draw_headline(panels)(fig)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    assert len(boxes) == 4 and boxes[0].x0 >= 0  # the first title is not cut at the figure edge
    for left, right in zip(boxes, boxes[1:], strict=False):
        assert left.x1 <= right.x0, (left, right)


def test_validation_curves_share_one_legend_beside_the_panels(make_record):
    """Inside a panel the legend hid the lowest curves; one legend outside them names every
    method, including one that ran at only some lengths."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = cell(make_record, "crh", 16, 0.8) + cell(make_record, "csq", 16, 0.7)
    records += cell(make_record, "crh", 32, 0.82) + cell(make_record, "hashnet", 32, 0.3)
    report = build_report(records)
    name = next(n for n in report.figures if n.startswith("validation-"))
    fig = Figure(figsize=report.figures[name].size, layout="constrained")
    FigureCanvasAgg(fig)
    report.figures[name].draw(fig)
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    assert sorted(t.get_text() for t in legend.get_texts()) == ["CRH", "CSQ", "HashNet"]


def test_an_added_row_is_shown_on_its_seeds_marked_and_never_bolded(make_record):
    """Issue 32: a row added after the paper's comparison (IDCH) enters the table with at least 5
    of its seeds, marked with its n, its margin over the floor paired on those seeds; a paper
    row (CSQ) with 6 of 10 seeds, and an added row with 3, stay incomplete."""
    ten = tuple(range(10))
    records = cell(make_record, "crh", 16, 0.80, seeds=ten)
    records += cell(make_record, "csq", 16, 0.75, seeds=ten[:6])
    records += cell(make_record, "classify-then-hash", 16, 0.73, seeds=ten)
    records += cell(make_record, "dpn", 16, 0.76, seeds=ten)
    records += cell(make_record, "hashnet", 16, 0.77, seeds=ten)
    records += cell(make_record, "idch", 16, 0.90, seeds=ten[:5])
    records += cell(make_record, "ics", 16, 0.95, seeds=ten[:3])
    for record in records:  # the paper's rows on a GPU, the added row here: the device note names it
        record["environment"]["device"] = "cpu" if record["spec"]["method"] == "idch" else "cuda:0"
    report = build_report(records)
    rows = {row[0]: row for row in mAP_table(report, "Fashion-MNIST").rows}
    values = np.array([0.90 + 0.002 * (s - 1) for s in ten[:5]]) * 100
    half = stats.t.ppf(0.975, 4) * values.std(ddof=1) / np.sqrt(5)
    mean = values.mean()
    assert rows["IDCH"][1] == f"{mean:.2f} [{mean - half:.2f}, {mean + half:.2f}] (n=5)"
    floor_same_seeds = np.mean([0.73 + 0.002 * (s - 1) for s in ten[:5]]) * 100
    assert rows["IDCH"][2] == f"+{mean - floor_same_seeds:.2f}"  # +17.00; unpaired it is +16.50
    assert rows["CRH"][1].startswith("**")  # best among the rows on the column's ten seeds
    assert "**" not in rows["IDCH"][1]
    assert rows["CSQ"][1] == "incomplete (6/10 seeds)" and rows["ICS"][1] == "incomplete (3/10 seeds)"
    assert rows["ICS"][2] == rows["CSQ"][2] == "–"
    assert "16 bits: **mixed**, CPU for IDCH; GPU (" in report.markdown()
    numbers = report_numbers(report.analysis, report.verdicts)  # the README's cells say the same
    assert numbers["table.FM.idch.16"] == f"{mean:.2f} ± {values.std(ddof=1):.2f} (5)"
    assert numbers["table.FM.csq.16"] == "incomplete" and numbers["table.FM.best.16"] == "CRH"


def test_runs_of_one_configuration_stay_one_cell_whatever_tuned_file_version_supplied_them(make_record):
    """The tuned file is rewritten as other methods' searches end, so runs of one configuration
    name different file hashes in their provenance; the cell still counts all of them (its run
    ids do not see provenance either). Split by hash, MLH's 32-bit cell read 3 of 5 seeds."""
    records = cell(make_record, "crh", 16, 0.80) + cell(make_record, "csq", 16, 0.75)
    for record in records:  # seed 0 ran before a rewrite of the file, seeds 1 and 2 after it
        version = "before" if record["spec"]["seed"] == 0 else "after"
        record["config"]["tuned_setting"] = {"sha256": version, "values": {"lr": 0.001}}
    table = mAP_table(build_report(records), "Fashion-MNIST")
    rows = {row[0]: row for row in table.rows}
    assert table.header[1] == "16 bits (n=3)"
    assert rows["CRH"][1].startswith("**80.00 [") and rows["CSQ"][1].startswith("75.00 [")
