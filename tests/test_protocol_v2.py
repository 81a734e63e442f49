"""Protocol v2 at the command line: the bare command gives the fair comparison and says so,
records name their selection protocol and validation database, seeds are checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main
from bench.data.loading import load_card, open_dataset
from bench.errors import UserError
from bench.runs.records import read_record


@pytest.fixture(autouse=True)
def no_tuned_setting(tmp_path, monkeypatch):
    """These tests must not depend on what bench/tuned/ holds."""
    monkeypatch.setenv("BENCH_TUNED_DIR", str(tmp_path / "no-tuned"))


def refused(capsys, *argv: str) -> str:
    code = main(list(argv))
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), captured
    return lines[0]


def test_bare_fashion_mnist_command_uses_the_cards_fair_protocol(capsys, tmp_path):
    assert main(["run", "--methods", "crh,csq", "--bits", "16", "--dry-run",
                 "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("protocol: harmonised (default of dataset card fashion-mnist")
    planned = [line for line in out if line.startswith("todo")]
    assert len(planned) == 2 and all(" harmonised " in line for line in planned)


def test_explicit_protocol_wins_over_the_card(capsys, tmp_path):
    assert main(["run", "--methods", "csq", "--bits", "16", "--protocol", "native", "--dry-run",
                 "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "protocol:" not in out and "csq fashion-mnist 16b seed 0 native" in out


def test_bare_run_records_fair_protocol_and_held_out_selection(capsys, tmp_path, one_thread):
    try:
        open_dataset(load_card("fashion-mnist-mini"))
    except UserError:
        pytest.skip("Fashion-MNIST files are not installed")
    assert main(["run", "--methods", "crh,csq", "--bits", "16", "--dataset", "fashion-mnist-mini",
                 "--epochs", "1", "--device", "cpu", "--quiet", "--results", str(tmp_path)]) == 0
    files = sorted((tmp_path / "runs" / "fashion-mnist-mini").glob("*/*.json.gz"))
    assert len(files) == 2
    for path in files:
        record = read_record(path)
        assert record["spec"]["protocol"] == "harmonised"
        assert record["split"]["sizes"]["validation_database"] == 1500
        selection = record["selection"]
        assert selection["protocol"].startswith("v2:")
        assert selection["validation_database_size"] == 1500
        assert selection["validation_database_disjoint_from"] == {"train": True, "query": True,
                                                                  "validation": True}
        assert record["code"]["results_version"] == 2


def test_tuned_protocol_without_a_setting_is_refused(capsys, tmp_path):
    line = refused(capsys, "run", "--methods", "crh", "--protocol", "tuned", "--dataset", "synthetic",
                   "--results", str(tmp_path))
    assert "no tuned values for method 'crh' on dataset 'synthetic'" in line and "bench tune" in line
    assert not Path(tmp_path / "runs").exists()


@pytest.mark.parametrize(("flags", "expected"), [
    (["--split-seed", "-1"], "--split-seed '-1' is not valid; give a non-negative integer or per-seed"),
    (["--split-seed", "1.5"], "--split-seed '1.5' is not valid"),
    (["--split-seed", "x"], "--split-seed 'x' is not valid"),
    (["--seeds", "-1"], "--seeds '-1' is not valid; give comma-separated non-negative integers, e.g. 0,1,2"),
    (["--seeds", "0,one"], "--seeds 'one' is not valid"),
])
def test_bad_seed_flags(capsys, tmp_path, flags, expected):
    line = refused(capsys, "run", "--methods", "csq", "--dataset", "synthetic", *flags,
                   "--results", str(tmp_path))
    assert expected in line
    assert "16,32,64" not in line
