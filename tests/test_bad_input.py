"""Bad input is refused at the edge: one line on stderr naming the bad value and what would
be valid, exit code 2, no traceback, nothing trained and no stored record changed.

Most cases call `bench.cli.main` in this process (the same code path as the command line,
minus interpreter start-up); two run the real command to show the whole process behaves."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.data.loading import CARDS_DIR, load_card, parse_list_file
from bench.errors import UserError
from bench.runs.records import write_json_atomic
from methods import available_methods

REPO = Path(__file__).resolve().parent.parent
FAST = ["--dataset", "synthetic", "--epochs", "1", "--device", "cpu", "--quiet"]


@pytest.fixture
def results(tmp_path):
    """A results directory that already holds a record; it must survive every bad command."""
    folder = tmp_path / "results"
    record = folder / "runs" / "synthetic" / "csq" / "csq-16b-s0-native-0000000000.json"
    write_json_atomic(record, {"schema": 1, "run_id": "csq-16b-s0-native-0000000000",
                               "status": "complete", "spec": {}, "config": {}, "metrics": {"mAP": 0.5}})
    before = _snapshot(folder)
    yield folder
    assert _snapshot(folder) == before, "a bad command changed the stored results"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(autouse=True)
def no_data_env(monkeypatch):
    monkeypatch.delenv("BENCH_DATA", raising=False)


def refused(capsys, *argv: str) -> str:
    """Run the CLI in-process; assert exit code 2 and exactly one error line; return it."""
    code = main(["run", *argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


# ----------------------------------------------------------------------------- names
def test_unknown_method_lists_valid_ones(capsys, results):
    line = refused(capsys, "--methods", "csq,nope", *FAST, "--results", str(results))
    assert "unknown method 'nope'" in line and "csq" in line


def test_unknown_dataset_lists_valid_ones(capsys, results):
    line = refused(capsys, "--methods", "csq", "--dataset", "mnist", "--results", str(results))
    assert "unknown dataset 'mnist'" in line and "synthetic" in line and "fashion-mnist" in line


def test_unknown_backbone_lists_valid_ones(capsys, results):
    line = refused(capsys, "--methods", "csq", "--backbone", "vgg99", *FAST, "--results", str(results))
    assert "unknown backbone 'vgg99'" in line and "tiny_cnn" in line and "resnet50" in line


def test_unknown_experiment(capsys, results):
    line = refused(capsys, "--experiment", "no-such-experiment", "--results", str(results))
    assert "unknown experiment 'no-such-experiment'" in line and "valid experiments:" in line


def test_missing_experiment_file(capsys, results, tmp_path):
    line = refused(capsys, "--experiment", str(tmp_path / "gone.yaml"), "--results", str(results))
    assert f"experiment file {tmp_path / 'gone.yaml'} does not exist" in line


# ----------------------------------------------------------------------------- bits
@pytest.mark.parametrize("bits", ["0", "-16", "abc", "16.5", "16,,32", ""])
def test_bits_must_be_positive_integers(capsys, results, bits):
    line = refused(capsys, "--methods", "csq", "--bits", bits, *FAST, "--results", str(results))
    assert "--bits" in line and "positive integers" in line


def test_bits_impossible_for_the_method(capsys, results):
    if "crh" not in available_methods():
        pytest.skip("methods/crh.py is not there yet")
    line = refused(capsys, "--methods", "crh", "--bits", "16", "--set", "heads=3", *FAST,
                   "--results", str(results))
    assert "heads=3" in line and "16" in line


# ----------------------------------------------------------------------------- --set and flags
def test_unknown_setting_lists_valid_keys(capsys, results):
    line = refused(capsys, "--methods", "csq", "--set", "learning_rate=0.1", *FAST, "--results", str(results))
    assert "unknown setting 'learning_rate'" in line and "lr" in line and "lambda_q" in line


@pytest.mark.parametrize("setting, expected", [
    ("lr=fast", "lr='fast' is not a valid float"),
    ("lr=nan", "not a finite number"),
    ("lr=inf", "not a finite number"),
    ("batch_size=12.5", "batch_size='12.5' is not a valid int"),
    ("epochs=0", "epochs=0 must be a positive integer"),
    ("optimizer=adamw", "choose from adam, sgd, rmsprop"),
    ("lr", "is not KEY=VALUE"),
])
def test_bad_setting_values(capsys, results, setting, expected):
    line = refused(capsys, "--methods", "csq", "--set", setting, "--dataset", "synthetic",
                   "--device", "cpu", "--results", str(results))
    assert expected in line and line.startswith(("error: --set", "error: --set:"))


@pytest.mark.parametrize("flags, expected", [
    (["--jobs", "0"], "--jobs 0: must be a positive integer"),
    (["--backend", "slurm"], "unknown backend 'slurm'; valid backends: local, dask"),
    (["--backend", "local", "--scheduler", "tcp://127.0.0.1:8786"], "needs --backend dask"),
    (["--scheduler", "not-an-address"], "cannot reach Dask scheduler not-an-address"),
    (["--threads", "0"], "--threads 0: must be a positive integer"),
    (["--epochs", "0"], "--epochs 0: must be a positive integer"),
    (["--seeds", "-1"], "non-negative integers"),
    (["--jobs", "two"], "invalid int value: 'two'"),
])
def test_bad_flags(capsys, results, flags, expected):
    line = refused(capsys, "--methods", "csq", *FAST, *flags, "--results", str(results))
    assert expected in line


# ----------------------------------------------------------------------------- experiment files
def _experiment(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_malformed_experiment_yaml_names_file_and_line(capsys, results, tmp_path):
    path = _experiment(tmp_path, "name: x\nmethods: [csq\nbits: [16]\n")
    line = refused(capsys, "--experiment", str(path), "--results", str(results))
    assert f"malformed YAML in {path} line" in line


@pytest.mark.parametrize("text, expected", [
    ("name: x\nmethods: [csq]\nbitz: [16]\n", "unknown key 'bitz'"),
    ("name: x\nmethods: [csq]\nsettings: {lrate: 0.1}\n", "unknown setting 'lrate'"),
    ("name: x\nmethods: [csq]\ngrid: [{lr: 0.1}, {heads: 2}]\n", "unknown setting 'heads'"),
    ("name: x\nmethods: [csq]\nbits: [0, 16]\n", "'bits' must be a positive integer"),
    ("name: x\nmethods: [csq]\nseeds: [-1]\n", "'seeds' must be a non-negative integer"),
    ("name: x\nmethods: []\n", "'methods' must list at least one method name"),
    ("name: x\nmethods: [csq]\nsettings: {lr: [1, 2]}\n", "lr=[1, 2] is not a valid number"),
    ("name: x\nmethods: [csq]\ndataset: [synthetic]\n", "'dataset' must be a name"),
    ("- just\n- a list\n", "must be a mapping"),
])
def test_bad_experiment_contents_name_key_and_file(capsys, results, tmp_path, text, expected):
    path = _experiment(tmp_path, text)
    line = refused(capsys, "--experiment", str(path), "--epochs", "1", "--results", str(results))
    assert expected in line and str(path) in line


# ----------------------------------------------------------------------------- data files
@pytest.mark.parametrize("dataset", ["fashion-mnist", "cifar10"])
def test_missing_dataset_files_say_where_and_how(capsys, results, tmp_path, monkeypatch, dataset):
    card = load_card(dataset)
    if any(Path(p).exists() for p in card.search_paths):
        pytest.skip(f"{dataset} is installed here ({', '.join(card.search_paths)})")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("BENCH_DATA", str(empty))
    line = refused(capsys, "--methods", "csq", "--dataset", dataset, "--bits", "16", "--epochs", "1",
                   "--device", "cpu", "--results", str(results))
    assert f"dataset '{dataset}' not found" in line and str(empty) in line
    assert card.search_paths[0] in line and card.install_hint in line


def test_missing_fashion_mnist_message_even_where_it_is_installed(tmp_path, monkeypatch):
    """The card's own folder is swapped for an empty one, so this runs on every machine.
    (A --data-root that lacks the files is refused on its own: tests/test_data.py.)"""
    import dataclasses

    from bench.data.loading import open_dataset

    empty = tmp_path / "nothing-here"
    card = dataclasses.replace(load_card("fashion-mnist"), search_paths=(str(empty),))
    monkeypatch.setenv("BENCH_DATA", str(tmp_path))
    with pytest.raises(UserError) as error:
        open_dataset(card, None)
    message = str(error.value)
    assert "dataset 'fashion-mnist' not found: looked for train-images-idx3-ubyte" in message
    assert f"{tmp_path}, {empty}" in message and "--data-root or $BENCH_DATA" in message
    assert "apt-get install -y dataset-fashion-mnist" in message


def test_malformed_list_file_lines(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("a.jpg 0 1 0\n\nb.jpg 1 0 0\n")
    names, labels = parse_list_file(good, 3)
    assert names == ["a.jpg", "b.jpg"] and labels.tolist() == [[0, 1, 0], [1, 0, 0]]
    cases = {
        "a.jpg 0 1 0\nb.jpg 0 1\n": ":2: expected an image path and 3 0/1 labels, found 2 labels",
        "a.jpg 0 1 0\n\nc.jpg 0 2 0\n": ":3: label '2' is not 0 or 1",
        "\n\n": "holds no images",
    }
    for text, expected in cases.items():
        bad = tmp_path / "bad.txt"
        bad.write_text(text)
        with pytest.raises(UserError, match=expected) as error:
            parse_list_file(bad, 3)
        assert str(bad) in str(error.value)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match=f"cannot read list file {binary}"):
        parse_list_file(binary, 3)


def test_malformed_list_file_through_the_cli(capsys, results, tmp_path):
    """A list-file dataset (Stanford Cars card) whose train list has a bad line 2."""
    card = load_card("stanford-cars")
    data = tmp_path / "cars"
    data.mkdir()
    zeros = " ".join(["0"] * (card.num_classes - 1))
    (data / "test.txt").write_text(f"q.jpg 1 {zeros}\n")
    (data / "train.txt").write_text(f"t1.jpg 1 {zeros}\nt2.jpg 1 {zeros} 1\n")
    line = refused(capsys, "--methods", "csq", "--dataset", "stanford-cars", "--bits", "16",
                   "--backbone", "tiny_cnn", "--epochs", "1", "--data-root", str(data),
                   "--device", "cpu", "--results", str(results))
    assert f"{data / 'train.txt'}:2:" in line and f"{card.num_classes + 1} labels" in line


# ----------------------------------------------------------------------------- results directory
def test_results_directory_not_writable(capsys, tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")
    line = refused(capsys, "--methods", "csq", "--bits", "16", *FAST, "--results", str(blocker))
    assert f"results directory {blocker} is not writable" in line
    assert blocker.read_text() == "a file where the results folder should be"


def test_corrupt_record_shown_by_dry_run_and_left_in_place(capsys, results):
    # plan the real run id, then plant a truncated record there
    assert main(["run", "--methods", "csq", "--bits", "16", *FAST, "--results", str(results),
                 "--dry-run"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[0]
    assert line.startswith("todo ")
    path = Path(line.split()[-1])
    truncated = gzip.compress(b'{"schema": 2, "run_id": "cs')
    path.write_bytes(truncated)
    assert main(["run", "--methods", "csq", "--bits", "16", *FAST, "--results", str(results),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("corrupt ") and f"({path}: Unterminated string" in out
    assert path.read_bytes() == truncated  # a dry run changes nothing
    path.unlink()  # leave the results fixture as it was


# ----------------------------------------------------------------------------- the real command
@pytest.mark.parametrize("argv, expected", [
    (["--methods", "nope"], "error: unknown method 'nope'; valid methods:"),
    (["--methods", "csq", "--set", "lr=1e-3x"], "error: --set: lr='1e-3x' is not a valid float"),
])
def test_real_process_one_line_exit_2(argv, expected, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "BENCH_DATA"}
    done = subprocess.run([sys.executable, "-m", "bench", "run", *argv, *FAST,
                           "--results", str(tmp_path / "results")],
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and done.stderr.startswith(expected)
    assert done.stdout == "" and not (tmp_path / "results").exists()


def test_cards_dir_is_the_repo_datasets_folder():
    assert CARDS_DIR == REPO / "datasets"
