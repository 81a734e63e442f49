"""Document cards: a corpus of short texts with one class each, turned into TF-IDF vectors.

- `wordnet`: the noun glosses of WordNet 3.0 from the Debian package `wordnet-base`
  (`/usr/share/wordnet/data.noun`). Each data line is one synset; its gloss (the text after
  ` | `: a definition, often followed by quoted examples) is the document and its
  lexicographer file (`lex_filenum`, the second field; 03 noun.Tops .. 28 noun.time, see
  lexnames(5WN)) is its class. The corpus is frozen by the card: its document count and the
  sha256 of its documents in file order (`options.documents`, `options.corpus_sha256`), so a
  package update that changes a single gloss is refused rather than silently giving other
  numbers. The items are then put in a seeded order (`options.order_seed`): the file's order
  follows the class, and retrieval breaks distance ties by database index. The source's
  fingerprint (what a split digest covers) is the digest of the documents in that order.
- `synthetic_documents`: seeded documents drawn from per-class word lists, for tests.

The vocabulary is a function of the split: it is built from the training documents only
(`DocumentSource.for_split`), so a word that occurs only in query or database documents has
no column. Terms are chosen by their count over the training documents (ties by the term
itself, so the choice never depends on a sort's stability), then weighted by scikit-learn's
`TfidfVectorizer` fitted on the same training documents (smoothed idf, rows L2-normalised).
Vectorising the 82,115 glosses takes a few seconds (1.5 to 5 s measured here), so nothing is cached.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from bench.data.cards import DatasetCard
from bench.data.sources import FeatureSource, ImageSource, find_root, one_hot
from bench.errors import UserError

WORDNET_FILE = "data.noun"
NOUN_LEX_FILES = range(3, 29)  # lexnames(5WN): 03 noun.Tops .. 28 noun.time, 26 categories
CORPUS_GROUP = "documents"  # every document's group: a stratified split draws from all of them


@dataclass(frozen=True)
class Gloss:
    """One synset line of a WordNet data file: its offset, lexicographer file and gloss."""

    offset: str
    lex_filenum: int
    ss_type: str
    text: str


def parse_wordnet_data(lines: Iterable[str], where: str) -> list[Gloss]:
    """The synsets of a WordNet data file (format: wndb(5WN)). Licence lines (two leading
    spaces) are skipped; a synset line without ` | ` or with malformed leading fields is
    refused with its line number."""
    glosses = []
    for number, line in enumerate(lines, start=1):
        if line.startswith("  ") or not line.strip():
            continue
        head, bar, text = line.partition(" | ")
        fields = head.split()
        if not bar or len(fields) < 4 or not fields[0].isdigit() or not fields[1].isdigit():
            raise UserError(f"{where}:{number}: not a WordNet synset line (synset_offset lex_filenum "
                            f"ss_type w_cnt ... | gloss): {line[:60].rstrip()!r}")
        glosses.append(Gloss(fields[0], int(fields[1]), fields[2], " ".join(text.split())))
    return glosses


def corpus_digest(ids: list[str], class_ids: np.ndarray, texts: list[str]) -> str:
    """sha256 over every document's id, class and text, in corpus order."""
    sha = hashlib.sha256()
    for ident, label, text in zip(ids, class_ids.tolist(), texts, strict=True):
        sha.update(f"{ident}\t{label}\t{text}\n".encode())
    return sha.hexdigest()


# ----------------------------------------------------------------------------- TF-IDF
def choose_vocabulary(train_texts: list[str], max_terms: int) -> list[str]:
    """The `max_terms` terms with the highest count over the training documents (ties: the
    term itself, alphabetically), in alphabetical order; tokens as TfidfVectorizer's defaults
    make them (lowercased words of two or more word characters)."""
    from sklearn.feature_extraction.text import CountVectorizer

    counter = CountVectorizer(dtype=np.int64)
    try:
        counts = np.asarray(counter.fit_transform(train_texts).sum(axis=0)).ravel()
    except ValueError:  # no token at all
        return []
    terms = counter.get_feature_names_out()
    order = np.lexsort((terms, -counts))[:max_terms]
    return sorted(terms[order].tolist())


def tfidf_features(texts: list[str], train: np.ndarray, max_terms: int) -> tuple[Any, list[str]]:
    """(sparse [N, max_terms] float32 TF-IDF rows, L2-normalised; the vocabulary): terms and
    idf from the training documents `train` only. Columns past a smaller vocabulary are zero."""
    try:
        from scipy import sparse
        from sklearn.feature_extraction.text import TfidfVectorizer
    except ImportError:
        raise UserError("document cards need scikit-learn: pip install 'scikit-learn>=1.4' "
                        "(make setup installs it)") from None
    train_texts = [texts[i] for i in np.asarray(train, dtype=np.int64)]
    vocabulary = choose_vocabulary(train_texts, max_terms)
    if not vocabulary:
        raise UserError("the training documents hold no word: the TF-IDF vocabulary would be empty")
    vectorizer = TfidfVectorizer(vocabulary=vocabulary, dtype=np.float32).fit(train_texts)
    matrix = vectorizer.transform(texts).astype(np.float32)
    if matrix.shape[1] < max_terms:
        padding = sparse.csr_matrix((matrix.shape[0], max_terms - matrix.shape[1]), dtype=np.float32)
        matrix = sparse.hstack([matrix, padding], format="csr")
    return matrix.tocsr(), vocabulary


def vectoriser_description(max_terms: int, vocabulary: list[str]) -> dict[str, Any]:
    import sklearn

    return {"kind": "tf-idf", "fitted_on": "training documents of the split",
            "terms": "top counts over the training documents, ties alphabetical",
            "max_terms": max_terms, "vocabulary": len(vocabulary),
            "vocabulary_sha256": hashlib.sha256("\n".join(vocabulary).encode()).hexdigest(),
            "weighting": "scikit-learn TfidfVectorizer defaults (smooth idf, l2 rows)",
            "scikit_learn": sklearn.__version__}


# ----------------------------------------------------------------------------- sources
class DocumentSource(ImageSource):
    """A corpus: texts, their labels and the corpus digest. It has no vectors until a split
    says which documents are for training (`for_split`)."""

    modality = "features"

    def __init__(self, texts: list[str], labels: np.ndarray, multi_label: bool, identity: dict[str, Any],
                 digest: str, max_terms: int) -> None:
        self.texts = texts
        self.labels = labels.astype(np.uint8)
        self.groups = np.full(len(texts), CORPUS_GROUP)
        self.num_classes = labels.shape[1]
        self.multi_label = multi_label
        self.description = identity
        self.identity = json.dumps(identity, sort_keys=True, separators=(",", ":"))
        self.fingerprint = digest  # what bench.data.splits.data_fingerprint hashes for this source
        self.max_terms = max_terms
        self.ids = [str(i) for i in range(len(texts))]

    def batch(self, indices: np.ndarray, train: bool) -> torch.Tensor:
        raise RuntimeError("a document source has no vectors before its split: use source.for_split(split)")

    def pixel_box(self) -> None:
        return None

    def for_split(self, split: Any) -> FeatureSource:
        """TF-IDF vectors of every document, vocabulary and idf from `split.train` only."""
        matrix, vocabulary = tfidf_features(self.texts, split.train, self.max_terms)
        identity = {**self.description, "vectoriser": vectoriser_description(self.max_terms, vocabulary)}
        source = FeatureSource(matrix, self.labels, self.groups, self.multi_label,
                               json.dumps(identity, sort_keys=True, separators=(",", ":")),
                               fingerprint=self.fingerprint)
        source.vocabulary = vocabulary
        source.corpus = self
        return source


def check_frozen(card: DatasetCard, count: int, digest: str, where: str) -> None:
    """Refuse a corpus that is not the one the card froze (document count and digest)."""
    want_count = card.options.get("documents")
    want_digest = card.options.get("corpus_sha256")
    if (want_count is not None and int(want_count) != count) or (want_digest and want_digest != digest):
        frozen = f"{int(want_count):,} documents" if want_count is not None else "documents"
        raise UserError(f"{where} holds {count:,} documents with digest {digest[:16]}, not the corpus "
                        f"{card.path} froze ({frozen}, digest {str(want_digest)[:16]}): the data "
                        f"changed (a package update?); records of another corpus are not comparable")


def load_wordnet(card: DatasetCard, data_root: str | os.PathLike | None) -> DocumentSource:
    """The noun glosses of the wordnet-base package, one class per lexicographer file."""
    unknown = sorted(set(card.options) - {"documents", "corpus_sha256", "order_seed"})
    if unknown:
        raise UserError(f"{card.path}: unknown option '{unknown[0]}'; valid: corpus_sha256, documents, "
                        f"order_seed")
    name = card.files.get("data", WORDNET_FILE)
    root = find_root(card, data_root, [name])
    path = root / name
    try:
        with open(path, encoding="utf-8") as handle:
            glosses = parse_wordnet_data(handle, str(path))
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    first = NOUN_LEX_FILES[0]
    if card.num_classes != len(NOUN_LEX_FILES) or len(card.class_names) != card.num_classes:
        raise UserError(f"{card.path}: the wordnet loader makes {len(NOUN_LEX_FILES)} noun classes; "
                        f"set num_classes: {len(NOUN_LEX_FILES)} and one class name per lexicographer file")
    for gloss in glosses:
        if gloss.ss_type != "n" or gloss.lex_filenum not in NOUN_LEX_FILES:
            raise UserError(f"{path}: synset {gloss.offset} is '{gloss.ss_type}' in lexicographer file "
                            f"{gloss.lex_filenum}; a noun data file has type n and files "
                            f"{first:02d}-{NOUN_LEX_FILES[-1]:02d}")
    ids = [g.offset for g in glosses]
    class_ids = np.array([g.lex_filenum - first for g in glosses], dtype=np.int64)
    texts = [g.text for g in glosses]
    digest = corpus_digest(ids, class_ids, texts)
    check_frozen(card, len(texts), digest, str(path))
    # The file lists synsets by offset, which follows the hierarchy and so the class; retrieval
    # breaks ties by database index, so the items are put in a seeded order that does not.
    seed = int(card.options.get("order_seed", 0))
    order = np.random.default_rng(seed).permutation(len(texts))
    ids, class_ids, texts = [ids[i] for i in order], class_ids[order], [texts[i] for i in order]
    identity = {"corpus": f"WordNet noun glosses ({name})", "root": str(root), "documents": len(texts),
                "corpus_sha256": digest, "order": f"file order permuted with seed {seed}"}
    source = DocumentSource(texts, one_hot(class_ids, card.num_classes), False, identity,
                            corpus_digest(ids, class_ids, texts), card.features)
    source.ids = ids
    return source


# ----------------------------------------------------------------------------- synthetic
_SYNTHETIC_OPTIONS = {"per_class", "topic_words", "common_words", "length", "topic_share", "seed"}


def make_synthetic_documents(num_classes: int, per_class: int = 40, topic_words: int = 12,
                             common_words: int = 60, length: int = 12, topic_share: float = 0.5,
                             seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Seeded documents: each class owns `topic_words` words (c<class>w<k>); a document draws
    `topic_share` of its `length` words from its class's words, the rest from shared ones."""
    rng = np.random.default_rng(seed)
    class_ids = np.repeat(np.arange(num_classes), per_class)
    texts = []
    for label in class_ids.tolist():
        topical = rng.random(length) < topic_share
        words = [f"c{label}w{rng.integers(topic_words)}" if own else f"common{rng.integers(common_words)}"
                 for own in topical]
        texts.append(" ".join(words))
    order = rng.permutation(len(texts))  # corpus order must not follow the class
    return [texts[i] for i in order], class_ids[order]


def load_synthetic_documents(card: DatasetCard, data_root: str | os.PathLike | None) -> DocumentSource:
    options = dict(card.options)
    options.pop("documents", None)
    unknown = sorted(set(options) - _SYNTHETIC_OPTIONS)
    if unknown:
        raise UserError(f"{card.path}: unknown option '{unknown[0]}'; "
                        f"valid: {', '.join(sorted(_SYNTHETIC_OPTIONS))}")
    texts, class_ids = make_synthetic_documents(card.num_classes, **options)
    ids = [str(i) for i in range(len(texts))]
    digest = corpus_digest(ids, class_ids, texts)
    check_frozen(card, len(texts), digest, f"synthetic documents {sorted(options.items())}")
    identity = {"corpus": f"synthetic documents {sorted(options.items())}", "documents": len(texts),
                "corpus_sha256": digest}
    return DocumentSource(texts, one_hot(class_ids, card.num_classes), False, identity, digest, card.features)

