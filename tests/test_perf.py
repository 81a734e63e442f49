"""`python -m bench perf run`: the breakdown of one real run on both paths and a bare loop,
with the two ratios (timed figures are checked by running the command, never by tests; this
checks what it prints and that its arithmetic is right)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main
from bench.perf.run import PHASES, summarise


def test_perf_run_prints_both_paths_the_bare_loop_and_the_ratios(tmp_path: Path, capsys) -> None:
    out_json = tmp_path / "perf.json"
    argv = ["perf", "run", "--dataset", "synthetic", "--bits", "8", "--epochs", "2",
            "--json", str(out_json)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "load at start:" in out and "load average" in out and "load at end:" in out
    assert "end-to-end speed-up, fast / legacy:" in out and "vs bare loop" in out
    for phase in (*PHASES, "total", "train img/s", "encode img/s"):
        assert any(line.startswith(phase) for line in out.splitlines()), phase
    figures = json.loads(out_json.read_text())
    for name in ("legacy", "fast", "bare"):
        run = figures["runs"][name][0]
        assert sum(run["phases"].values()) == pytest.approx(run["wall"], rel=1e-9)
        assert run["images"]["train"] == 2 * 360  # 2 epochs x 6 classes x 60 training images
    assert figures["runs"]["legacy"][0]["numerics"]["path"] == "legacy"
    assert figures["runs"]["fast"][0]["numerics"]["path"] == "fast"


def test_summary_ratios_by_hand() -> None:
    def result(wall: float, train: float, validation_encode: float, encode: float) -> dict:
        phases = {"train": train, "validation": validation_encode + 1, "encode": encode,
                  "evaluate": 1.0, "overhead": 0.0}
        return {"wall": wall, "phases": phases, "validation_encode": validation_encode,
                "images": {"train": 1000, "validation": 100, "encode": 300}, "mAP": 0.5}

    summary = summarise({"legacy": [result(150, 100, 5, 20), result(170, 110, 5, 20)],
                         "fast": [result(60, 40, 2, 6)], "bare": [result(50, 40, 2, 4)]})
    assert summary["speedup"] == pytest.approx(160 / 60)  # median of the legacy repeats
    # all but scoring: wall - evaluate (1) - validation scoring (validation - its encoding: 1)
    assert summary["fast_vs_bare"] == pytest.approx((50 - 2) / (60 - 2))
    assert summary["fast"]["img_per_s"]["train"] == pytest.approx(1000 / 40)
    assert summary["fast"]["img_per_s"]["encode"] == pytest.approx(400 / 8)


@pytest.mark.parametrize("flag, message", [
    (["--repeats", "0"], "--repeats 0: must be a positive integer"),
    (["--lever", "warp_drive=1"], "unknown numerics lever 'warp_drive'"),
    (["--lever", "encode_batch"], "--lever 'encode_batch' is not KEY=VALUE"),
])
def test_bad_input_exits_2_with_one_line(flag: list[str], message: str, capsys) -> None:
    assert main(["perf", "run", "--dataset", "synthetic", *flag]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
