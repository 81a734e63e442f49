"""README numbers come from the records: the template's results section holds no decimal
literal but the paper's own figures, `bench readme` renders every placeholder from
numbers.json, and `--check` names the first key whose number differs. The README and the
pages under docs/ (docs/templates/<page>.md -> docs/<page>.md) are checked alike."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import UserError
from bench.report.readme import PLACEHOLDER, first_difference, pages, render

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "docs" / "README.template.md"
TEMPLATES = [template for template, _ in pages(ROOT)]  # the README's and every docs page's
ALLOWED = {"1.76", "3.08", "6.6"}  # the paper's range and its "up to +6.6 %": quoted, not measured
DECIMAL = re.compile(r"(?<![\w.])[-+]?\d+\.\d+(?![\w.]*\d)")


# Sections outside the results that quote measured values (chance, a lent machine's versions)
# and the constants they may still state: definitions, not measurements.
MEASURED_ELSEWHERE = {"Datasets": {"0.5", "0.2"}, "The report and its verdicts": set(),
                      "Protocols and what a number means": set()}


def results_prose(template: str, heading: str = "Results") -> str:
    """A level-2 section (from "## <heading>" to the next level-2 heading) without fenced
    code, inline code, link targets and placeholders."""
    section = template.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]
    section = re.sub(r"```.*?```", "", section, flags=re.S)
    section = re.sub(r"`[^`]*`", "", section)
    section = re.sub(r"\]\([^)]*\)", "]", section)
    return PLACEHOLDER.sub("", section)


def template_with(heading: str) -> str:
    """The text of the one template (README or docs page) holding the level-2 section."""
    holding = [t for t in TEMPLATES if f"\n## {heading}" in t.read_text()]
    assert len(holding) == 1, f"section '## {heading}' is in {len(holding)} templates, expected one"
    return holding[0].read_text()


def decimals(text: str) -> list[str]:
    return [m.lstrip("+-") for m in DECIMAL.findall(text) if m.lstrip("+-") not in ALLOWED]


def test_the_template_results_hold_no_hand_typed_decimal():
    assert "\n## Results" in TEMPLATE.read_text(), "the results stay in the README"
    assert decimals(results_prose(template_with("Results"))) == []


@pytest.mark.parametrize("heading", sorted(MEASURED_ELSEWHERE))
def test_measured_values_outside_the_results_come_from_numbers_json(heading: str) -> None:
    """Chance rates and the GPU image's versions are read from the records; what is left typed
    in these sections is a definition (a card's similarity weights, a sampling floor)."""
    typed = decimals(results_prose(template_with(heading), heading))
    assert [d for d in typed if d not in MEASURED_ELSEWHERE[heading]] == []


def test_the_decimal_rule_catches_a_typed_number():
    text = "\n## Results\nCRH leads by +0.30 (`p 0.02` in code is fine), paper +1.76.\n## Next\n"
    assert decimals(results_prose(text)) == ["0.30"]


def test_render_and_check_name_the_differing_key():
    template = "| CRH | {{table.FM.crh.32}} |\nlead {{cmp.x.diff}} points\n"
    numbers = {"table.FM.crh.32": "81.35 ± 0.57 (5)", "cmp.x.diff": "+0.30"}
    readme = render(template, numbers)
    assert readme == "| CRH | 81.35 ± 0.57 (5) |\nlead +0.30 points\n"
    assert first_difference(template, numbers, readme) is None
    changed = readme.replace("81.35", "81.36")
    assert "table.FM.crh.32" in first_difference(template, numbers, changed)
    with pytest.raises(UserError, match="unknown key 'nope'"):
        render("{{nope}}", numbers)


def test_readme_command_check_exit_codes(tmp_path, capsys):
    template = tmp_path / "t.md"
    template.write_text("mAP {{table.FM.crh.32}}\n")
    numbers = tmp_path / "numbers.json"
    numbers.write_text(json.dumps({"table.FM.crh.32": "81.35"}))
    readme = tmp_path / "README.md"
    args = ["readme", "--template", str(template), "--numbers", str(numbers), "--readme", str(readme)]
    assert main(args) == 0 and readme.read_text() == "mAP 81.35\n"
    assert main([*args, "--check"]) == 0
    readme.write_text("mAP 81.36\n")
    before = readme.read_text()
    assert main([*args, "--check"]) == 1
    assert "table.FM.crh.32" in capsys.readouterr().err
    assert readme.read_text() == before  # --check writes nothing
    assert main([*args[:-2], "--readme", str(readme), "--numbers", str(tmp_path / "missing.json")]) == 2


def test_every_docs_template_is_rendered_and_every_rendered_page_has_a_template():
    """`bench readme` covers README.md and each docs/templates/<page>.md -> docs/<page>.md, and
    no docs/*.md page is left without its template (it would drift from numbers.json)."""
    pairs = pages(ROOT)
    assert pairs[0] == (ROOT / "docs" / "README.template.md", ROOT / "README.md")
    results_template = ROOT / "docs" / "templates" / "results" / "README.md"
    assert pairs[-1] == (results_template, ROOT / "results" / "README.md")
    docs_pages = pairs[1:-1]
    assert {template.name for template, _ in docs_pages} == {page.name for _, page in docs_pages}
    assert all(page.parent == ROOT / "docs" for _, page in docs_pages)
    assert set((ROOT / "docs").glob("*.md")) - {pairs[0][0]} <= {page for _, page in pairs}


def test_readme_command_renders_and_checks_every_page(tmp_path, monkeypatch, capsys):
    """No --template/--readme: every page; --check names the page that differs."""
    import bench.data.loading

    (tmp_path / "docs" / "templates").mkdir(parents=True)
    (tmp_path / "reports").mkdir()
    (tmp_path / "docs" / "README.template.md").write_text("top {{a}}\n")
    (tmp_path / "docs" / "templates" / "page.md").write_text("page {{b}}\n")
    (tmp_path / "reports" / "numbers.json").write_text(json.dumps({"a": "1.00", "b": "2.00"}))
    monkeypatch.setattr(bench.data.loading, "REPO_ROOT", tmp_path)
    assert main(["readme"]) == 0
    assert (tmp_path / "README.md").read_text() == "top 1.00\n"
    assert (tmp_path / "docs" / "page.md").read_text() == "page 2.00\n"
    assert main(["readme", "--check"]) == 0
    (tmp_path / "docs" / "page.md").write_text("page 2.01\n")
    capsys.readouterr()
    assert main(["readme", "--check"]) == 1
    err = capsys.readouterr().err
    assert "page.md" in err and "'b'" in err and "README.md differs" not in err


def test_relative_links_in_the_rendered_pages_resolve():
    """Links between the README and the docs pages (and into the repository) name files that
    exist, and an anchor names a heading of the linked page."""
    for _, page in pages(ROOT):
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", text, flags=re.S)):
            if "://" in target or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name} links to {target}, which does not exist"
            if anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", linked.read_text(), flags=re.S),
                                      flags=re.M)
                slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
                assert anchor in slugs, f"{page.name} links to {target}: no such heading"


def broken_tables(text: str) -> list[str]:
    """The first row of each markdown table (a run of lines starting with '|') whose second line
    is not the header separator: a blank line inside a table makes its tail such a run, which
    GitHub shows as a paragraph of pipes."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines)
              if line.startswith("|") and (i == 0 or not lines[i - 1].startswith("|"))]
    return [lines[i] for i in starts
            if i + 1 >= len(lines) or not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip())]


def test_every_table_in_the_rendered_pages_has_its_header_separator():
    """A row cut off from its table by a blank line is caught (it happened in results/README)."""
    assert broken_tables("| a | b |\n|---|---|\n| 1 | 2 |\n\n| 3 | 4 |\n") == ["| 3 | 4 |"]
    for _, page in pages(ROOT):
        assert broken_tables(page.read_text()) == [], page.name


def test_numbers_json_holds_table_cells_and_claim_grades(make_record):
    """Hand-made table: CRH and CSQ at 16 bits (five seeds), CSQ alone at 32 bits."""
    import numpy as np

    from bench.report import build_report
    from bench.report.numbers import report_numbers

    crh, csq = [0.70, 0.71, 0.69, 0.72, 0.70], [0.60, 0.62, 0.61, 0.60, 0.61]
    records = [make_record("crh", 16, s, v) for s, v in enumerate(crh)]
    records += [make_record("csq", 16, s, v) for s, v in enumerate(csq)]
    records += [make_record("csq", 32, s, v) for s, v in enumerate(csq)]
    report = build_report(records, published=[])
    numbers = report_numbers(report.analysis, report.verdicts)
    values = np.array(crh) * 100
    assert numbers["table.FM.crh.16"] == f"{values.mean():.2f} ± {values.std(ddof=1):.2f} (5)"
    assert numbers["table.FM.crh.32"] == "not run"
    assert numbers["table.FM.best.16"] == "CRH"
    assert numbers["claim.crh-beats-baselines.FM.grade"] == "supported"
    gain = (values - np.array(csq) * 100).mean()
    assert numbers["cmp.crh-beats-baselines.FM.csq.16.diff"] == f"{gain:+.2f}"


def test_numbers_json_quotes_a_per_seed_tables_comparisons_before_it_is_declared(make_record):
    """Reproduction v3's per-seed table, beside the card's declared fixed-split table: its
    paired comparisons get keys of their own (tagged with its setting), the fixed split's
    comparisons stay the only untagged ones, and a second fixed-split table gets none."""
    import numpy as np

    from bench.report import build_report
    from bench.report.numbers import report_numbers

    crh, csq = [0.70, 0.71, 0.69, 0.72, 0.70], [0.60, 0.62, 0.61, 0.60, 0.61]
    records = [make_record("crh", 16, s, v) for s, v in enumerate(crh)]
    records += [make_record("csq", 16, s, v) for s, v in enumerate(csq)]
    per_seed = [make_record(m, 16, s, v - 0.05) for m, vs in (("crh", crh), ("csq", csq[::-1]))
                for s, v in enumerate(vs)]
    for record in per_seed:
        record["spec"].update(split_rule="per-seed", split_seed=record["spec"]["seed"])
    other_fixed = [make_record(m, 16, s, v, overrides={"epochs": 7}) for m, vs in (("crh", crh), ("csq", csq))
                   for s, v in enumerate(vs)]
    report = build_report(records + per_seed + other_fixed, published=[])
    numbers = report_numbers(report.analysis, report.verdicts)
    tagged = [k for k in numbers
              if k.startswith("cmp.crh-beats-baselines.FM.") and k.endswith(".csq.16.diff")]
    assert len(tagged) == 2, tagged  # the declared table's and the per-seed table's, not the epochs=7 one
    per_seed_key = next(k for k in tagged if "per-seed" in k)
    assert per_seed_key.count("per-seed") == 1
    gain = ((np.array(crh) - np.array(csq[::-1])) * 100).mean()
    assert numbers[per_seed_key] == f"{gain:+.2f}"
    # The per-seed table renames no other table: the fixed split's keys keep their short tags.
    tags = {k.split(".")[2] for k in numbers if k.startswith("table.FM.") and k.endswith(".crh.16")}
    other = tags - {per_seed_key.split(".")[3], "crh"}  # "crh": the declared table's untagged key
    assert len(other) == 1 and "split" not in next(iter(other)) and "protocol" not in next(iter(other)), tags


def test_numbers_json_counts_cells_with_and_without_holm(make_record):
    """Three rivals at 16 bits: CRH clearly ahead of CSQ, barely ahead of DPN and MDS. Each
    cell's one-sided p passes 0.05 alone, but Holm over the three (p x 3, x 2, x 1 in order)
    keeps only CSQ: 0.032 x 2 fails, and the step-down rule stops there."""
    from scipy.stats import ttest_rel

    from bench.report import build_report
    from bench.report.numbers import report_numbers

    crh = [0.700, 0.710, 0.690, 0.720, 0.705]
    rivals = {"csq": [0.600, 0.620, 0.610, 0.600, 0.610], "dpn": [0.691, 0.711, 0.687, 0.716, 0.699],
              "mds": [0.690, 0.712, 0.686, 0.716, 0.699]}  # p about 6e-5, 0.032 and 0.043
    records = [make_record("crh", 16, s, v) for s, v in enumerate(crh)]
    for name, values in rivals.items():
        records += [make_record(name, 16, s, v) for s, v in enumerate(values)]
    report = build_report(records, published=[])
    numbers = report_numbers(report.analysis, report.verdicts)
    ps = sorted(ttest_rel(crh, values, alternative="greater").pvalue for values in rivals.values())
    raw = sum(p < 0.05 for p in ps)
    holm, running = 0, 0.0
    for rank, p in enumerate(ps):  # step-down: stop at the first that fails
        running = max(running, p * (len(ps) - rank))
        if running >= 0.05:
            break
        holm += 1
    assert numbers["claim.crh-beats-baselines.FM.n_significant"] == str(raw)
    assert numbers["claim.crh-beats-baselines.FM.n_significant_holm"] == str(holm)
    assert numbers["claim.crh-beats-baselines.FM.n_against_holm"] == "0"
    assert (raw, holm) == (3, 1)


def test_noninferiority_counts_cells_within_half_a_point_after_holm(make_record):
    """Non-inferiority of CRH at 0.5 points, cell by cell (ttest_1samp of the per-seed
    differences against -0.5, here by scipy on the raw values), Holm over the family: CRH a
    point ahead of CSQ holds; 0.4 points behind MDS with a wide spread does not."""
    import numpy as np
    from scipy.stats import ttest_1samp

    from bench.report import build_report
    from bench.report.numbers import report_numbers

    crh = [0.700, 0.710, 0.690, 0.720, 0.705]
    rivals = {"csq": [0.690, 0.701, 0.679, 0.711, 0.694], "mds": [0.690, 0.730, 0.680, 0.740, 0.705]}
    records = [make_record("crh", 16, s, v) for s, v in enumerate(crh)]
    for name, values in rivals.items():
        records += [make_record(name, 16, s, v) for s, v in enumerate(values)]
    report = build_report(records, published=[])
    numbers = report_numbers(report.analysis, report.verdicts)
    ps = sorted(ttest_1samp((np.array(crh) - np.array(v)) * 100, -0.5, alternative="greater").pvalue
                for v in rivals.values())
    holm = sum(1 for i, p in enumerate(ps) if all(q * (len(ps) - j) < 0.05 for j, q in enumerate(ps[:i + 1])))
    assert numbers["claim.crh-beats-baselines.FM.n_noninferior_holm"] == str(holm) == "1"


def test_the_lengths_against_crh_after_holm_are_named_in_words(make_record):
    """MDS clearly ahead of CRH at 16 and 32 bits and level at 64: the key that README
    sentences quote names exactly those two lengths, in ascending order."""
    from bench.report import build_report
    from bench.report.numbers import bit_lengths_in_words, report_numbers

    crh = [0.700, 0.710, 0.690, 0.720, 0.705]
    ahead = [v + 0.03 + 0.001 * s for s, v in enumerate(crh)]
    level = [v + (0.002 if s % 2 else -0.002) for s, v in enumerate(crh)]
    records = []
    for bits, mds in ((16, ahead), (32, ahead), (64, level)):
        records += [make_record("crh", bits, s, v) for s, v in enumerate(crh)]
        records += [make_record("mds", bits, s, v) for s, v in enumerate(mds)]
    report = build_report(records, published=[])
    numbers = report_numbers(report.analysis, report.verdicts)
    assert numbers["claim.crh-beats-baselines.FM.n_against_holm"] == "2"
    assert numbers["claim.crh-beats-baselines.FM.against_holm_bits"] == "16 and 32 bits"
    assert bit_lengths_in_words([64, 16, 32, 16]) == "16, 32 and 64 bits"
    assert bit_lengths_in_words([]) == "no length"
