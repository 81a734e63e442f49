"""Document cards (issue 31): the WordNet gloss parser, the frozen corpus, the stratified split,
TF-IDF from the training documents only, the features source and MLP backbone through the one
training loop, and the refusals of what only images have.

Tests that need the Debian package wordnet-base skip when it is absent (`make setup`, which CI
runs, installs it)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from bench.data.cards import load_card
from bench.data.documents import (
    DocumentSource,
    choose_vocabulary,
    corpus_digest,
    load_wordnet,
    parse_wordnet_data,
)
from bench.data.loading import open_dataset
from bench.data.sources import FeatureSource, find_root, one_hot
from bench.data.splits import make_split, proportional_counts
from bench.errors import UserError
from methods import available_methods, get_method

WORDNET = Path("/usr/share/wordnet/data.noun")
needs_wordnet = pytest.mark.skipif(not WORDNET.is_file(), reason="wordnet-base is not installed "
                                   "(apt-get install -y wordnet-base; make setup does it)")
try:
    import sklearn  # noqa: F401
    HAVE_SKLEARN = True
except ImportError:  # a dependency (pyproject.toml); `make setup` installs it
    HAVE_SKLEARN = False
needs_sklearn = pytest.mark.skipif(not HAVE_SKLEARN, reason="scikit-learn is not installed (make setup)")

# Hand-written lines in the format of WordNet's data files (wndb(5WN)): licence lines start with
# two spaces; then offset, lex_filenum, ss_type, w_cnt (hex), words with lex_id, p_cnt, pointers,
# "|" and the gloss.
FIXTURE = """\
  1 A licence header line, as the real files begin with.
  2 Another one; both are skipped.
00000010 03 n 01 something 0 000 | an invented top-level entry
00000055 05 n 02 tabby 0 house_cat 1 002 @ 00000010 n 0000 ~ 00000140 n 0000 | a small pet; "it slept"
00000140 05 n 01 kitten 0 001 @ 00000055 n 0000 | a young   animal of the cat family
00000190 28 n 01 midday 0 001 @ 00000010 n 0000 | the middle of the day; "we met at midday"
00000250 06 n 0a lever 1 000 | a rigid bar used to move a load
"""


def test_the_parser_reads_offset_category_and_gloss() -> None:
    glosses = parse_wordnet_data(FIXTURE.splitlines(keepends=True), "fixture")
    assert [g.offset for g in glosses] == ["00000010", "00000055", "00000140", "00000190", "00000250"]
    assert [g.lex_filenum for g in glosses] == [3, 5, 5, 28, 6]
    assert {g.ss_type for g in glosses} == {"n"}
    assert glosses[1].text == 'a small pet; "it slept"'
    assert glosses[2].text == "a young animal of the cat family"  # runs of spaces collapse


@pytest.mark.parametrize("line", ["00000010 03 n 01 something 0 000 an entry without its bar\n",
                                  "xx 03 n 01 something 0 000 | a bad offset\n"])
def test_a_malformed_line_is_refused_with_its_number(line: str) -> None:
    with pytest.raises(UserError, match=r"^fixture:4: not a WordNet synset line"):
        parse_wordnet_data([*FIXTURE.splitlines(keepends=True)[:3], line], "fixture")


def fixture_card(tmp_path: Path, **options) -> tuple:
    (tmp_path / "data.noun").write_text(FIXTURE)
    card = dataclasses.replace(load_card("wordnet-nouns"), options=options, search_paths=())
    return card, tmp_path


def test_the_loader_labels_by_lexicographer_file_and_digests_the_documents(tmp_path: Path) -> None:
    card, root = fixture_card(tmp_path)
    source = load_wordnet(card, root)
    labels = dict(zip(source.ids, source.labels.argmax(axis=1).tolist(), strict=True))
    assert labels == {"00000010": 0, "00000055": 2, "00000140": 2, "00000190": 25, "00000250": 3}
    assert dict(zip(source.ids, source.texts, strict=True))["00000010"] == "an invented top-level entry"
    assert source.labels.shape == (5, 26) and source.modality == "features"
    same = load_wordnet(card, root)
    assert same.fingerprint == source.fingerprint and same.ids == source.ids
    # the items' order is seeded (the file's follows the class); the fingerprint covers it
    reordered = load_wordnet(dataclasses.replace(card, options={"order_seed": 1}), root)
    assert reordered.ids != source.ids and reordered.fingerprint != source.fingerprint
    assert reordered.description["corpus_sha256"] == source.description["corpus_sha256"]
    with pytest.raises(RuntimeError, match="for_split"):
        source.batch(np.array([0]), False)


def test_a_changed_corpus_is_refused(tmp_path: Path) -> None:
    """The card freezes its corpus: a package update that changes one gloss is detected."""
    card, root = fixture_card(tmp_path)
    digest = load_wordnet(card, root).description["corpus_sha256"]
    frozen = dataclasses.replace(card, options={"documents": 5, "corpus_sha256": digest})
    load_wordnet(frozen, root)
    (root / "data.noun").write_text(FIXTURE.replace("a rigid bar", "a stiff bar"))
    with pytest.raises(UserError, match="not the corpus .* froze .*package update") as error:
        load_wordnet(frozen, root)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="holds 5 documents .* froze \\(6 documents"):
        load_wordnet(dataclasses.replace(card, options={"documents": 6}), root)


def test_the_corpus_digest_covers_ids_classes_and_texts() -> None:
    base = corpus_digest(["1", "2"], np.array([0, 1]), ["a b", "c d"])
    assert base != corpus_digest(["1", "3"], np.array([0, 1]), ["a b", "c d"])
    assert base != corpus_digest(["1", "2"], np.array([0, 0]), ["a b", "c d"])
    assert base != corpus_digest(["1", "2"], np.array([0, 1]), ["a b", "c e"])


def test_a_missing_package_names_the_apt_command(tmp_path: Path) -> None:
    card = dataclasses.replace(load_card("wordnet-nouns"), search_paths=(str(tmp_path / "absent"),))
    with pytest.raises(UserError) as error:
        find_root(card, None, ["data.noun"])
    message = str(error.value)
    assert "\n" not in message and message.endswith("install it with: apt-get install -y wordnet-base")


def test_a_missing_package_exits_2_with_the_apt_hint(tmp_path: Path, capsys) -> None:
    from bench.cli import main

    code = main(["run", "--methods", "csq", "--dataset", "wordnet-nouns", "--bits", "16", "--quiet",
                 "--results", str(tmp_path / "results"), "--data-root", str(tmp_path / "empty")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "apt-get install -y wordnet-base" in lines[0]


# ----------------------------------------------------------------------------- split
def test_proportional_counts_use_largest_remainders() -> None:
    assert proportional_counts(np.array([50, 30, 20]), 10).tolist() == [5, 3, 2]
    assert proportional_counts(np.array([1, 1, 1]), 2).tolist() == [1, 1, 0]  # ties: lower class
    assert proportional_counts(np.array([11587, 42, 51]), 100).tolist() == [99, 0, 1]
    assert proportional_counts(np.array([7, 2, 9, 4]), 13).sum() == 13


def skewed_source(sizes: tuple[int, ...] = (120, 60, 20)) -> DocumentSource:
    class_ids = np.repeat(np.arange(len(sizes)), sizes)
    texts = [f"c{c}w{i % 5} common{i % 7}" for i, c in enumerate(class_ids.tolist())]
    return DocumentSource(texts, one_hot(class_ids, len(sizes)), False, {"corpus": "test"},
                          corpus_digest([str(i) for i in range(len(texts))], class_ids, texts), 16)


def skewed_card():
    card = load_card("synthetic-documents")
    split = {"protocol": "stratified", "query": {"count": 20}, "train": {"count": 50},
             "validation": {"count": 10}, "validation_database": {"count": 30},
             "database": "all_but_query"}
    return dataclasses.replace(card, num_classes=3, split=split)


def test_the_split_is_stratified_deterministic_and_disjoint(tmp_path: Path) -> None:
    source, card = skewed_source(), skewed_card()
    split = make_split(card, source, 0, tmp_path)
    class_ids = source.labels.argmax(axis=1)
    for part, count in (("query", 20), ("train", 50), ("validation", 10), ("validation_database", 30)):
        indices = getattr(split, part)
        assert np.bincount(class_ids[indices], minlength=3).tolist() == \
            proportional_counts(np.array([120, 60, 20]), count).tolist()
    assert split.held_out and len(split.database) == 200 - 20
    assert not np.intersect1d(split.query, split.database).size
    again = make_split(card, source, 0, tmp_path)  # reloads the saved file, same digest
    assert again.digest == split.digest and np.array_equal(again.train, split.train)
    other = make_split(card, source, 1, None)
    assert other.digest != split.digest and not np.array_equal(other.train, split.train)
    assert split.data["sha256"] == make_split(card, skewed_source(), 0, None).data["sha256"]


def test_a_class_too_small_for_its_share_is_refused() -> None:
    card = dataclasses.replace(skewed_card(), split={**skewed_card().split, "train": {"count": 190}})
    with pytest.raises(UserError, match="split train: class 0 has .* fewer than its share"):
        make_split(card, skewed_source(), 0, None)


# ----------------------------------------------------------------------------- TF-IDF
@needs_sklearn
def test_the_vocabulary_comes_from_training_documents_only() -> None:
    texts = ["alpha beta gamma", "alpha beta", "alpha delta", "zebra alpha", "beta epsilon"]
    labels = one_hot(np.array([0, 0, 1, 1, 0]), 2)
    corpus = DocumentSource(texts, labels, False, {"corpus": "test"}, "x" * 64, max_terms=8)
    source = corpus.for_split(SimpleNamespace(train=np.array([0, 1, 2])))  # query: "zebra alpha"
    assert isinstance(source, FeatureSource) and source.width == 8
    assert source.vocabulary == ["alpha", "beta", "delta", "gamma"]
    assert "zebra" not in source.vocabulary and "epsilon" not in source.vocabulary
    rows = source.batch(np.arange(5), False).numpy()
    assert rows.shape == (5, 8) and rows.dtype == np.float32
    assert not rows[:, 4:].any()  # padding columns past a small vocabulary stay zero
    assert np.count_nonzero(rows[3]) == 1  # "zebra alpha": only alpha has a column
    assert np.allclose(np.linalg.norm(rows[:4], axis=1), 1.0, atol=1e-6)  # L2 rows
    assert not rows[4, source.vocabulary.index("beta")] == 0  # a training word seen in a query


@needs_sklearn
def test_the_vocabulary_keeps_the_most_frequent_terms_ties_alphabetical() -> None:
    texts = ["bb bb aa cc", "aa dd", "cc ee"]
    assert choose_vocabulary(texts, 3) == ["aa", "bb", "cc"]  # counts aa 2, bb 2, cc 2, dd 1, ee 1
    assert choose_vocabulary(texts, 1) == ["aa"]
    assert choose_vocabulary(["a b", "c"], 5) == []  # single letters are not terms


# ----------------------------------------------------------------------------- metrics
def test_precision_at_k_is_among_the_recorded_ns_and_counts_the_top_k() -> None:
    from bench.evaluation.retrieval import evaluate_retrieval
    from bench.training.train import PR_AT_N, pr_at_n

    assert pr_at_n(load_card("fashion-mnist")) == PR_AT_N  # image cards: as before
    assert pr_at_n(load_card("wordnet-nouns")) == PR_AT_N  # 100 is already there
    assert pr_at_n(dataclasses.replace(load_card("synthetic-documents"), precision_at=7)) == \
        (1, 7, 10, 50, 100, 500, 1000, 2000, 5000)
    # Query code 0000 against a database ranked by Hamming distance 0, 1, 2, 3 (stable order):
    # relevant items at ranks 1 and 3, so P@2 = 1/2 and P@4 = 2/4.
    database = np.array([[1, 1, 1, 1], [1, 1, 1, -1], [1, 1, -1, -1], [1, -1, -1, -1]])
    result = evaluate_retrieval(np.ones((1, 4)), database, np.array([0]), np.array([0, 1, 0, 1]),
                                topk=4, pr_at_n=[2, 4])
    assert result["precision_at_n"] == [0.5, 0.5]
    result = evaluate_retrieval(np.ones((1, 4)), database, np.array([0]), np.array([0, 0, 1, 1]),
                                topk=4, pr_at_n=[1, 3])
    assert result["precision_at_n"] == [1.0, 2 / 3]


# ----------------------------------------------------------------------------- the loop
@needs_sklearn
def test_csq_trains_on_a_document_card_and_writes_a_record(tmp_path: Path, one_thread, capsys) -> None:
    from bench.cli import main
    from bench.runs.records import read_record

    code = main(["run", "--methods", "csq", "--dataset", "synthetic-documents", "--bits", "16",
                 "--epochs", "2", "--results", str(tmp_path), "--quiet"])
    assert code == 0
    assert ", P@10 " in next(line for line in capsys.readouterr().out.splitlines() if "done csq" in line)
    (path,) = (tmp_path / "runs" / "synthetic-documents" / "csq").glob("*.json.gz")
    record = read_record(path)
    assert record["status"] == "complete" and record["metrics"]["topk"] == 50
    assert record["metrics"]["precision_at_k"]["k"] == 10
    assert 0.5 < record["metrics"]["mAP"] <= 1.0  # the classes' own words make them easy
    assert record["split"]["sizes"] == {"query": 40, "train": 120, "validation": 20,
                                        "validation_database": 30, "database": 200}
    assert '"vectoriser"' in record["split"]["data"] and len(record["split"]["digest"]) == 64


# Methods whose training perturbs images within a pixel budget (CgAT's PGD): refused in one line.
PERTURBS_PIXELS = {"cgat"}


@needs_sklearn
@pytest.mark.parametrize("method", [m for m in available_methods()
                                    if getattr(get_method(m), "supervised", True)])
def test_every_supervised_method_runs_on_a_document_card(method: str, one_thread) -> None:
    """The features source, the MLP and the loop as they are: one epoch of each method (HCLM's
    `pixels` similarity reads the feature vectors themselves)."""
    from bench.runs.spec import RunSpec
    from bench.training.train import train_and_evaluate

    spec = RunSpec(method=method, dataset="synthetic-documents", bits=16, protocol="harmonised",
                   overrides=(("epochs", 1), ("eval_every", 1)))
    if method in PERTURBS_PIXELS:  # a pixel-space budget has no meaning on feature vectors
        with pytest.raises(UserError, match="pixel budget cannot be applied"):
            train_and_evaluate(spec, progress_bars=False)
        return
    record = train_and_evaluate(spec, progress_bars=False)
    assert np.isfinite(record["metrics"]["mAP"]) and record["selection"]["best_epoch"] == 1
    if method == "hclm":
        assert "feature vectors" in record["method"]["similarity"]["measure"]


def test_image_only_options_refuse_a_features_card(tmp_path: Path, capsys) -> None:
    from bench.cli import main

    base = ["run", "--methods", "csq", "--dataset", "synthetic-documents", "--bits", "16",
            "--results", str(tmp_path), "--quiet"]
    assert main([*base, "--attack", "center"]) == 2
    assert main([*base, "--backbone", "small_cnn"]) == 2
    assert main(["run", "--methods", "csq", "--dataset", "synthetic", "--bits", "16", "--backbone",
                 "mlp", "--results", str(tmp_path), "--quiet"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3
    assert "--attack perturbs image pixels" in errors[0]
    assert "backbone 'small_cnn' takes images; dataset 'synthetic-documents' has feature vectors" in errors[1]
    assert "backbone 'mlp' takes feature vectors; dataset 'synthetic' has images" in errors[2]


def test_the_mlp_backbone_and_its_flops() -> None:
    import torch

    from bench.network.backbones import build_backbone
    from bench.training.work import network_flops

    net = build_backbone("mlp", 64)
    assert net(torch.zeros(3, 64)).shape == (3, 1000) and net.feature_dim == 1000
    step, forward = network_flops("mlp", 64, 0, 16)
    assert forward == 2 * (64 * 1000 + 1000 * 1000 + 1000 * 16)


# ----------------------------------------------------------------------------- the real card
@needs_wordnet
@needs_sklearn
def test_the_real_card_is_the_frozen_corpus() -> None:
    card = load_card("wordnet-nouns")
    source = open_dataset(card)
    assert len(source) == card.options["documents"] == 82115
    class_ids = source.labels.argmax(axis=1)
    counts = np.bincount(class_ids, minlength=26)
    assert counts.max() == 11587 and counts.min() == 42 and (counts > 0).all()
    assert len(np.unique(class_ids[:200])) > 15  # the file's order (by class) is not kept
    split = make_split(card, source, 0, None)
    assert split.sizes() == {"query": 2000, "train": 10000, "validation": 1000,
                             "validation_database": 5000, "database": 80115}
    features = source.for_split(split)
    assert features.width == 10000 and len(features.vocabulary) == 10000
    rows = features.batch(split.query[:50], False).numpy()
    assert np.allclose(np.linalg.norm(rows, axis=1)[np.abs(rows).sum(axis=1) > 0], 1.0, atol=1e-5)
