"""`python -m bench evaluate` on .npy files: JSON output, formats, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.cli import main
from bench.evaluation.retrieval import evaluate_retrieval, label_matrix


@pytest.fixture
def problem():
    rng = np.random.default_rng(7)
    q = rng.standard_normal((12, 16)).astype(np.float32)
    d = rng.standard_normal((80, 16)).astype(np.float32)
    ql = rng.integers(0, 5, 12)
    dl = rng.integers(0, 5, 80)
    return {"q": q, "d": d, "ql": ql, "dl": dl}


def write(tmp_path, **arrays):
    paths = {}
    for name, array in arrays.items():
        path = tmp_path / f"{name}.npy"
        np.save(path, array)
        paths[name] = str(path)
    return paths


def argv(paths, *extra):
    return [
        "evaluate", "--query-codes", paths["q"], "--db-codes", paths["d"],
        "--query-labels", paths["ql"], "--db-labels", paths["dl"], *extra,
    ]


def run_json(capsys, args):
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return json.loads(captured.out)


def test_json_matches_library(tmp_path, capsys, problem):
    paths = write(tmp_path, **problem)
    out = run_json(capsys, argv(paths, "--topk", "10", "--json", "--pr-at-n", "5", "80"))
    expected = evaluate_retrieval(problem["q"], problem["d"], problem["ql"], problem["dl"],
                                  topk=10, pr_at_n=[5, 80])
    for key, value in expected.items():
        assert out[key] == value, key
    for key in ("mAP", "mAP_tie_aware", "precision_at_radius", "recall_at_radius", "p_at_r2",
                "topk", "num_queries", "num_db", "bits"):
        assert key in out
    assert len(out["precision_at_radius"]) == len(out["recall_at_radius"]) == 17
    assert out["topk"] == 10 and out["zero_relevant"] == "zero"


def test_code_and_label_formats_agree(tmp_path, capsys, problem):
    signs_q = np.where(problem["q"] >= 0, 1, -1).astype(np.int8)
    signs_d = np.where(problem["d"] >= 0, 1, -1).astype(np.int8)
    results = []
    for q, d, ql, dl in [
        (problem["q"], problem["d"], problem["ql"], problem["dl"]),
        (signs_q, signs_d, problem["ql"], problem["dl"]),
        ((signs_q > 0).astype(np.uint8), (signs_d > 0).astype(np.uint8),
         label_matrix(problem["ql"], 5).astype(np.float32),
         label_matrix(problem["dl"], 5).astype(np.int64)),
    ]:
        paths = write(tmp_path, q=q, d=d, ql=ql, dl=dl)
        out = run_json(capsys, argv(paths, "--json"))
        results.append({k: v for k, v in out.items() if k != "code_format"})
    assert results[0] == results[1] == results[2]
    assert results[0]["topk"] == "all"


def test_drop_zero_relevant_and_table(tmp_path, capsys, problem):
    problem["ql"][0] = 9  # no relevant item anywhere
    paths = write(tmp_path, **problem)
    out = run_json(capsys, argv(paths, "--json", "--drop-zero-relevant", "--topk", "5"))
    assert out["zero_relevant"] == "drop" and out["num_queries_in_mAP"] < 12
    assert main(argv(paths, "--topk", "5")) == 0
    text = capsys.readouterr().out
    assert "mAP@5" in text and "tie-aware" in text and "radius" in text


def test_multi_label_matrices(tmp_path, capsys, problem):
    rng = np.random.default_rng(1)
    problem["ql"] = (rng.random((12, 6)) < 0.3).astype(np.int64)
    problem["dl"] = (rng.random((80, 6)) < 0.3).astype(np.int64)
    paths = write(tmp_path, **problem)
    out = run_json(capsys, argv(paths, "--json", "--topk", "20"))
    expected = evaluate_retrieval(problem["q"], problem["d"], problem["ql"], problem["dl"], topk=20)
    assert out["mAP"] == expected["mAP"]


BAD_CASES = {
    "query label rows": (lambda p: p.update(ql=p["ql"][:5]), [], "--query-labels"),
    "db label rows": (lambda p: p.update(dl=p["dl"][:5]), [], "--db-labels"),
    "bit counts": (lambda p: p.update(d=p["d"][:, :8]), [], "bits"),
    "label widths": (lambda p: p.update(ql=np.eye(12, 5, dtype=np.int64),
                                        dl=np.zeros((80, 6), dtype=np.int64)), [], "columns"),
    "nan codes": (lambda p: p["q"].__setitem__((0, 0), np.nan), [], "NaN"),
    "inf codes": (lambda p: p["d"].__setitem__((3, 1), np.inf), [], "infinite"),
    "empty query": (lambda p: p.update(q=np.zeros((0, 16)), ql=np.zeros(0, dtype=int)), [],
                    "empty"),
    "empty db": (lambda p: p.update(d=np.zeros((0, 16)), dl=np.zeros(0, dtype=int)), [],
                 "empty"),
    "1-D codes": (lambda p: p.update(q=np.ones(16)), [], "2-D"),
    "string codes": (lambda p: p.update(q=np.array([["a"] * 16] * 12)), [], "numeric"),
    "bad label values": (lambda p: p.update(ql=np.full((12, 5), 2)), [], "0 and 1"),
    "negative ids": (lambda p: p.update(dl=-np.ones(80, dtype=int)), [], ">= 0"),
    "topk zero": (lambda p: None, ["--topk", "0"], "--topk"),
    "topk negative": (lambda p: None, ["--topk", "-3"], "--topk"),
    "topk text": (lambda p: None, ["--topk", "ten"], "--topk"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, problem, case):
    change, extra, fragment = BAD_CASES[case]
    change(problem)
    paths = write(tmp_path, **problem)
    assert main(argv(paths, "--json", *extra)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert fragment in lines[0]


def test_missing_and_unreadable_files(tmp_path, capsys, problem):
    paths = write(tmp_path, **problem)
    for flag, path, fragment in [
        ("q", str(tmp_path / "nope.npy"), "file not found"),
        ("d", str(tmp_path), "directory"),
        ("dl", str(tmp_path / "garbage.npy"), "not a readable .npy"),
    ]:
        (tmp_path / "garbage.npy").write_bytes(b"this is not numpy")
        bad = dict(paths)
        bad[flag] = path
        assert main(argv(bad, "--json")) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0] and captured.out == ""
    pickled = tmp_path / "obj.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    bad = dict(paths, q=str(pickled))
    assert main(argv(bad)) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_missing_required_flag(capsys):
    assert main(["evaluate", "--query-codes", "q.npy"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
