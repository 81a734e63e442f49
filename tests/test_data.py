"""Dataset loaders on tiny files the tests write: IDX, CIFAR pickles, list files, synthetic."""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fake_idx import write_idx

from bench.data.loading import (
    load_card,
    load_cifar,
    load_fashion_mnist,
    load_list_file,
    make_synthetic,
    parse_list_file,
    read_idx,
)
from bench.errors import UserError


def write_fake_fashion_mnist(root: Path, n_train: int = 40, n_test: int = 20) -> None:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / "train-images-idx3-ubyte", rng.integers(0, 255, (n_train, 28, 28)))
    write_idx(root / "train-labels-idx1-ubyte", np.arange(n_train) % 10)
    write_idx(root / "t10k-images-idx3-ubyte", rng.integers(0, 255, (n_test, 28, 28)), gz=False)
    write_idx(root / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, gz=False)


def test_idx_roundtrip_plain_and_gz(tmp_path: Path) -> None:
    array = np.arange(24).reshape(2, 3, 4)
    write_idx(tmp_path / "a", array, gz=True)
    write_idx(tmp_path / "b", array, gz=False)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)
    assert np.array_equal(read_idx(tmp_path / "b"), array)


def test_idx_bad_magic_and_truncation_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(UserError, match="bad magic"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4, 5)), gz=False)
    data = (tmp_path / "short").read_bytes()
    (tmp_path / "short").write_bytes(data[:-3])
    with pytest.raises(UserError, match="expected 20 data bytes"):
        read_idx(tmp_path / "short")


def test_fashion_mnist_loader_reads_both_parts(tmp_path: Path) -> None:
    write_fake_fashion_mnist(tmp_path)
    source = load_fashion_mnist(load_card("fashion-mnist"), tmp_path)
    assert len(source) == 60
    assert source.labels.shape == (60, 10)
    assert (source.labels.sum(axis=1) == 1).all()
    assert list(source.groups[:40]) == ["train"] * 40 and list(source.groups[40:]) == ["test"] * 20
    batch = source.batch(np.array([0, 5]), train=True)
    assert batch.shape == (2, 1, 28, 28) and batch.dtype.is_floating_point


def test_missing_fashion_mnist_says_where_it_looked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BENCH_DATA", str(tmp_path / "env"))
    card = replace(load_card("fashion-mnist"), search_paths=(str(tmp_path / "nowhere"),))
    with pytest.raises(UserError) as error:
        load_fashion_mnist(card, None)
    message = str(error.value)
    assert str(tmp_path / "env" / "fashion-mnist") in message and str(tmp_path / "nowhere") in message
    assert "apt-get install -y dataset-fashion-mnist" in message
    assert "\n" not in message


def test_a_given_data_root_is_never_passed_over(tmp_path: Path, monkeypatch) -> None:
    """--data-root names the data: a missing or empty folder is refused even when the system
    copy (search_paths, $BENCH_DATA) would be found."""
    write_fake_fashion_mnist(tmp_path / "system")
    monkeypatch.setenv("BENCH_DATA", str(tmp_path / "system"))
    card = replace(load_card("fashion-mnist"), search_paths=(str(tmp_path / "system"),))
    assert len(load_fashion_mnist(card, None)) == 60  # found without --data-root
    with pytest.raises(UserError) as error:
        load_fashion_mnist(card, tmp_path / "missing")
    message = str(error.value)
    assert message.startswith(f"--data-root {tmp_path / 'missing'} does not exist")
    assert "train-images-idx3-ubyte[.gz]" in message and "t10k-labels-idx1-ubyte[.gz]" in message
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "train-images-idx3-ubyte").write_bytes(b"")
    with pytest.raises(UserError) as error:
        load_fashion_mnist(card, tmp_path / "empty")
    message = str(error.value)
    assert message.startswith(f"--data-root {tmp_path / 'empty'} lacks the files of dataset 'fashion-mnist'")
    assert "t10k-images-idx3-ubyte[.gz]" in message and "\n" not in message


def test_a_data_root_may_hold_the_files_in_a_named_subfolder(tmp_path: Path) -> None:
    write_fake_fashion_mnist(tmp_path / "fashion-mnist")
    source = load_fashion_mnist(load_card("fashion-mnist"), tmp_path)
    assert source.identity == str(tmp_path / "fashion-mnist")


def test_cli_refuses_a_missing_data_root(tmp_path: Path) -> None:
    import subprocess
    import sys

    results = tmp_path / "results"
    command = [sys.executable, "-m", "bench", "run", "--methods", "csq", "--bits", "16", "--dataset",
               "fashion-mnist", "--data-root", "/nonexistent/dir", "--epochs", "1", "--results", str(results)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent,
                          timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert lines[0].startswith("error: --data-root /nonexistent/dir does not exist")
    assert "train-images-idx3-ubyte" in lines[0]
    assert not [p for p in results.rglob("*") if p.is_file()], "nothing may be written"


def test_list_datasets_shows_the_generated_cards(capsys) -> None:
    from bench.cli import main

    assert main(["list", "datasets"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "(10 classes, multi-label, mAP@768)" in lines["fashion-mnist-multi"]
    assert "(100 classes, mAP@all)" in lines["fashion-mnist-pairs"]
    assert "(196 classes, mAP@all)" in lines["synthetic-196"]
    assert "(555 classes, mAP@all)" in lines["synthetic-555"]
    assert "multi-label" not in lines["fashion-mnist"]


def test_cifar_loader_on_tiny_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)

    def batch(n: int, offset: int) -> dict:
        return {"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                "labels": [(i + offset) % 10 for i in range(n)]}

    for i in range(1, 6):
        with open(folder / f"data_batch_{i}", "wb") as handle:
            pickle.dump(batch(4, i), handle)
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump(batch(6, 0), handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, handle)
    card = load_card("cifar10")
    with pytest.raises(UserError, match="verify_checksums"):
        load_cifar(card, tmp_path)  # hand-made files fail torchvision's md5 check
    unchecked = replace(card, options={"verify_checksums": False})
    source = load_cifar(unchecked, tmp_path)
    assert len(source) == 26 and source.images.shape == (26, 3, 32, 32)
    assert (source.groups == "test").sum() == 6
    assert source.labels[0].argmax() == 1  # first item of data_batch_1 has label (0 + 1) % 10


def test_list_file_parser_reports_file_and_line(tmp_path: Path) -> None:
    good = tmp_path / "ok.txt"
    good.write_text("a.jpg 0 1 0\nb.jpg 1 1 0\n\n")
    names, labels = parse_list_file(good, 3)
    assert names == ["a.jpg", "b.jpg"] and labels.tolist() == [[0, 1, 0], [1, 1, 0]]
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg 0 1 0\nb.jpg 1 1\n")
    with pytest.raises(UserError, match=rf"{bad}:2: expected an image path and 3"):
        parse_list_file(bad, 3)
    bad.write_text("a.jpg 0 1 0\nb.jpg 1 2 0\n")
    with pytest.raises(UserError, match=rf"{bad}:2: label '2'"):
        parse_list_file(bad, 3)


def test_list_file_dataset_merges_shared_images(tmp_path: Path) -> None:
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b", "c", "d"):
        Image.new("RGB", (40, 30), color=(10, 20, 30)).save(images / f"{name}.jpg")
    (tmp_path / "test.txt").write_text("a.jpg 1 0\n")
    (tmp_path / "train.txt").write_text("b.jpg 0 1\nc.jpg 1 1\n")
    (tmp_path / "database.txt").write_text("b.jpg 0 1\nc.jpg 1 1\nd.jpg 0 1\n")
    card = replace(load_card("nus-wide-21"), num_classes=2, image_size=32)
    card = replace(card, split={**card.split, "lists": {"query": "test.txt", "train": "train.txt",
                                                         "database": "database.txt"}})
    source = load_list_file(card, tmp_path)
    assert len(source) == 4
    assert sorted(source.groups.tolist()) == ["database", "database+train", "database+train", "query"]
    batch = source.batch(np.array([0, 1]), train=False)
    assert batch.shape == (2, 3, 32, 32)


def test_synthetic_close_pairs_are_closer() -> None:
    images, class_ids = make_synthetic(num_classes=4, per_class=50, close_pairs=((0, 1),), seed=3)
    means = np.stack([images[class_ids == c].reshape(50, -1).mean(0) for c in range(4)])
    distance = lambda a, b: np.linalg.norm(means[a] - means[b])  # noqa: E731
    assert distance(0, 1) < 0.5 * min(distance(0, 2), distance(1, 3), distance(2, 3))
    again, _ = make_synthetic(num_classes=4, per_class=50, close_pairs=((0, 1),), seed=3)
    assert np.array_equal(images, again)


def test_read_yaml_parses_a_changed_file_anew_and_hands_out_copies(tmp_path):
    """read_yaml keeps one parse per distinct text (planning reads a tuned file once per run):
    a file changed in place must give its new values, and a caller that edits what it got
    must not change what the next caller gets."""
    from bench.data.cards import read_yaml

    path = tmp_path / "setting.yaml"
    path.write_text("methods: {crh: {values: {lr: 0.001}}}\n")
    first = read_yaml(path)
    first["methods"]["crh"]["values"]["lr"] = 99.0
    assert read_yaml(path)["methods"]["crh"]["values"]["lr"] == 0.001
    path.write_text("methods: {crh: {values: {lr: 0.002}}}\n")
    assert read_yaml(path)["methods"]["crh"]["values"]["lr"] == 0.002
