"""README numbers come from the records: the template's results section holds no decimal
literal but the paper's own figures, `bench readme` renders every placeholder from
numbers.json, and `--check` names the first key whose number differs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import UserError
from bench.report.readme import PLACEHOLDER, first_difference, render

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "docs" / "README.template.md"
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


def decimals(text: str) -> list[str]:
    return [m.lstrip("+-") for m in DECIMAL.findall(text) if m.lstrip("+-") not in ALLOWED]


def test_the_template_results_hold_no_hand_typed_decimal():
    assert decimals(results_prose(TEMPLATE.read_text())) == []


@pytest.mark.parametrize("heading", sorted(MEASURED_ELSEWHERE))
def test_measured_values_outside_the_results_come_from_numbers_json(heading: str) -> None:
    """Chance rates and the GPU image's versions are read from the records; what is left typed
    in these sections is a definition (a card's similarity weights, a sampling floor)."""
    typed = decimals(results_prose(TEMPLATE.read_text(), heading))
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
