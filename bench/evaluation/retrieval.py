"""Retrieval metrics for binary hash codes: exact, tie-aware and fast.

Every figure the suite reports goes through `evaluate_retrieval`, so the definitions follow
`shared/specs/protocol.md` literally:

* codes are binarised with +1 where h >= 0, else -1 (0 never stays 0);
* Hamming distance is popcount(x XOR y) on bit-packed uint64 words;
* relevance means sharing at least one label;
* mAP@k uses the hashing convention (divide by the relevant items retrieved in the top k);
* ties in distance are broken by database index (stable order) for `mAP`, and `mAP_tie_aware`
  is the expected AP over uniformly random orders inside each tied group, in closed form.

The per-query engine (XOR + popcount, distance histograms, the closed-form tie-aware AP, the
numba and NumPy backends) lives in `bench.evaluation.retrieval_kernels`; this module converts and
validates inputs, runs the engine over query chunks and assembles the metrics. It stays the
public entry point: import from here.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.evaluation.retrieval_kernels import (
    _HARMONIC_TABLE,
    HAVE_NUMBA,
    _popcount64,
    _stable_numpy,
    _tie_aware_python,
)

# Re-exported for the tests of the closed form (tests/test_retrieval.py).
from bench.evaluation.retrieval_kernels import _cut_group as _cut_group
from bench.evaluation.retrieval_kernels import _group_sum as _group_sum
from bench.evaluation.retrieval_kernels import _harmonic_diff as _harmonic_diff

if HAVE_NUMBA:  # `_stable_nb` is also read by bench/perf/evaluator.py (numba cache stats)
    from bench.evaluation.retrieval_kernels import _stable_nb, _tie_aware_nb

__all__ = [
    "HAVE_NUMBA",
    "as_sign_codes",
    "binarize",
    "evaluate_retrieval",
    "hamming_distance_matrix",
    "label_matrix",
    "pack_codes",
    "warm_up",
]

ZERO_RELEVANT_CHOICES = ("zero", "drop")

# numba's default "workqueue" threading layer aborts if two Python threads launch parallel
# kernels at once; evaluations from several threads therefore take turns.
_KERNEL_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------
# Input conversion
# --------------------------------------------------------------------------------------------


def _to_numpy(values: Any) -> np.ndarray:
    """Accept NumPy arrays, torch tensors (any device) and array-likes; never copy needlessly."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        tensor = values.detach()
        if str(tensor.dtype) in ("torch.bfloat16", "torch.float16"):
            tensor = tensor.float()  # exact widening; NumPy has no bfloat16
        return tensor.cpu().numpy()
    return np.asarray(values)


def binarize(codes: Any) -> np.ndarray:
    """Map real-valued codes to int8 +-1 with +1 where h >= 0 (0 goes to +1, never to 0)."""
    array = _to_numpy(codes)
    if array.dtype == np.bool_:
        array = array.astype(np.int8)
    if not (np.issubdtype(array.dtype, np.number)) or np.iscomplexobj(array):
        raise ValueError(f"codes must be real numbers, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
        raise ValueError("codes contain NaN; codes must be real values, {0,1} or {-1,+1}")
    return np.where(array >= 0, np.int8(1), np.int8(-1))


def _is_zero_one(array: np.ndarray) -> bool:
    """True when every value is 0 or 1 (the {0,1} code convention)."""
    if array.dtype == np.bool_:
        return True
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        return False
    return bool(np.all((array == 0) | (array == 1)))


def as_sign_codes(codes: Any) -> np.ndarray:
    """Like `binarize`, but codes that are all in {0,1} read 0 as -1 (bits written as 0/1)."""
    array = _to_numpy(codes)
    if array.size and _is_zero_one(array):
        return np.where(array.astype(bool), np.int8(1), np.int8(-1))
    return binarize(array)


def pack_codes(signs: Any) -> np.ndarray:
    """Pack +-1 codes [N, K] into uint64 words [N, ceil(K/64)]; bit set where the sign is +1."""
    array = _to_numpy(signs)
    if array.ndim != 2:
        raise ValueError(f"codes must be 2-D [N, bits], got shape {array.shape}")
    n, bits = array.shape
    words = max(1, -(-bits // 64))
    packed = np.packbits(array > 0, axis=1, bitorder="little")
    padded = np.zeros((n, words * 8), dtype=np.uint8)
    padded[:, : packed.shape[1]] = packed
    return padded.view("<u8").astype(np.uint64, copy=False).reshape(n, words)


def hamming_distance_matrix(q_packed: Any, db_packed: Any) -> np.ndarray:
    """All-pairs Hamming distances [Q, N] as uint16; meant for small inputs and tests."""
    q = _to_numpy(q_packed).astype(np.uint64, copy=False)
    d = _to_numpy(db_packed).astype(np.uint64, copy=False)
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise ValueError(f"packed codes must be 2-D with equal widths, got {q.shape}, {d.shape}")
    out = np.zeros((q.shape[0], d.shape[0]), dtype=np.uint16)
    for w in range(q.shape[1]):
        out += _popcount64(q[:, None, w] ^ d[None, :, w])
    return out


def _class_ids(array: np.ndarray, what: str) -> np.ndarray:
    """Validate 1-D class ids (integers >= 0, integral floats allowed) and return int64."""
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{what}: 1-D labels must be integer class ids, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError(f"{what}: 1-D labels must be integer class ids (found non-integers)")
    ids = array.astype(np.int64)
    if ids.size and ids.min() < 0:
        raise ValueError(f"{what}: class ids must be >= 0, found {int(ids.min())}")
    return ids


def _multi_hot(array: np.ndarray, what: str) -> np.ndarray:
    """Validate a 0/1 label matrix and return it as bool."""
    if array.dtype == np.bool_:
        return array
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise ValueError(f"{what}: label matrix must be numeric 0/1, got dtype {array.dtype}")
    if not np.all((array == 0) | (array == 1)):
        raise ValueError(f"{what}: a 2-D label matrix must hold only 0 and 1")
    return array.astype(bool)


def label_matrix(labels: Any, num_classes: int | None = None) -> np.ndarray:
    """Return labels as a bool multi-hot matrix [N, C] from class ids or a 0/1 matrix."""
    array = _to_numpy(labels)
    if array.ndim == 1:
        ids = _class_ids(array, "labels")
        width = int(ids.max()) + 1 if ids.size else 0
        if num_classes is not None:
            if ids.size and width > num_classes:
                raise ValueError(f"class id {width - 1} is out of range for {num_classes} classes")
            width = num_classes
        out = np.zeros((ids.shape[0], width), dtype=bool)
        out[np.arange(ids.shape[0]), ids] = True
        return out
    if array.ndim == 2:
        out = _multi_hot(array, "labels")
        if num_classes is not None and out.shape[1] != num_classes:
            raise ValueError(f"label matrix has {out.shape[1]} columns, expected {num_classes}")
        return out
    raise ValueError(f"labels must be 1-D class ids or a 2-D 0/1 matrix, got shape {array.shape}")


def _prepare_labels(
    query_labels: Any, db_labels: Any
) -> tuple[bool, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pick the fastest exact relevance test: class-id equality or packed label-bitset AND.

    Returns (multi, q_ids, db_ids, q_bits, db_bits); the unused pair is empty.
    """
    q = _to_numpy(query_labels)
    d = _to_numpy(db_labels)
    for name, arr in (("query labels", q), ("database labels", d)):
        if arr.ndim not in (1, 2):
            raise ValueError(f"{name} must be 1-D class ids or a 2-D 0/1 matrix, got {arr.shape}")
    empty_ids = np.zeros(0, dtype=np.int32)
    empty_bits = np.zeros((0, 1), dtype=np.uint64)
    if q.ndim == 1 and d.ndim == 1:
        q_ids = _class_ids(q, "query labels")
        d_ids = _class_ids(d, "database labels")
        top = max(int(q_ids.max(initial=0)), int(d_ids.max(initial=0)))
        dtype = np.int32 if top < 2**31 else np.int64
        return False, q_ids.astype(dtype), d_ids.astype(dtype), empty_bits, empty_bits
    if q.ndim == 2 and d.ndim == 2:
        if q.shape[1] != d.shape[1]:
            raise ValueError(
                f"label widths differ: query labels have {q.shape[1]} columns, "
                f"database labels {d.shape[1]}; multi-hot widths must match"
            )
        q_mat = _multi_hot(q, "query labels")
        d_mat = _multi_hot(d, "database labels")
    else:
        width = q.shape[1] if q.ndim == 2 else d.shape[1]
        try:
            q_mat = label_matrix(q, width)
            d_mat = label_matrix(d, width)
        except ValueError as error:
            raise ValueError(f"query/database labels disagree: {error}") from None
    # One-hot matrices take the class-id fast path; it gives identical relevance.
    if np.all(q_mat.sum(axis=1) == 1) and np.all(d_mat.sum(axis=1) == 1):
        q_ids = np.argmax(q_mat, axis=1).astype(np.int32)
        d_ids = np.argmax(d_mat, axis=1).astype(np.int32)
        return False, q_ids, d_ids, empty_bits, empty_bits
    return True, empty_ids, empty_ids, pack_codes(q_mat), pack_codes(d_mat)


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def warm_up() -> dict[str, Any]:
    """Compile (or load from numba's on-disk cache) every kernel on a tiny problem.

    Returns the seconds taken and whether numba is in use, so benchmarks can report compile
    time apart from steady-state time.
    """
    import time

    start = time.perf_counter()
    rng = np.random.default_rng(0)
    codes = rng.standard_normal((6, 8))
    evaluate_retrieval(codes[:2], codes, np.array([0, 1]), np.array([0, 1, 0, 1, 0, 1]), topk=3)
    multi = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]])
    evaluate_retrieval(codes[:2], codes, multi[:2], multi, topk=3, pr_at_n=[2])
    return {"seconds": time.perf_counter() - start, "numba": HAVE_NUMBA}


def _packed_codes(codes: Any, what: str) -> np.ndarray:
    """Validate, binarise and pack codes in row blocks, so no full-size temporaries are made."""
    array = _to_numpy(codes)
    if array.ndim != 2:
        raise ValueError(f"{what} must be 2-D [count, bits], got shape {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {array.shape}); need at least one code of 1+ bits")
    rows = max(1, 2**24 // array.shape[1])
    blocks = []
    for start in range(0, array.shape[0], rows):
        try:
            blocks.append(pack_codes(binarize(array[start : start + rows])))
        except ValueError as error:
            raise ValueError(f"{what}: {error}") from None
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else 0.0


@dataclass
class _Prepared:
    """Validated inputs of one evaluation: packed codes, labels in one form, k and the Ns."""

    q_packed: np.ndarray
    d_packed: np.ndarray
    multi: bool
    q_ids: np.ndarray
    db_ids: np.ndarray
    q_bits: np.ndarray
    db_bits: np.ndarray
    num_q: int
    num_db: int
    bits: int
    k: int
    ns: np.ndarray
    ns_requested: list[int]


@dataclass
class _Sums:
    """Per-query and per-radius accumulators filled chunk by chunk."""

    prec_sum: np.ndarray
    rec_sum: np.ndarray
    ap_stable: np.ndarray
    hits_all: np.ndarray
    exp_ap: np.ndarray
    p_hit: np.ndarray
    total_rel: np.ndarray
    hits_n_all: np.ndarray


def evaluate_retrieval(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    topk: int | None = None,
    zero_relevant: str = "zero",
    pr_at_n: Sequence[int] | None = None,
    chunk_size: int | None = None,
    backend: str = "auto",
    per_query: bool = False,
) -> dict[str, Any]:
    """Hashing retrieval metrics for one query set against one database (JSON-ready dict).

    Codes are real-valued or +-1 (binarised with h >= 0 -> +1; convert {0,1} codes with
    `as_sign_codes` first). Labels are 1-D class ids or 0/1 matrices; relevance = a shared label.
    topk None (or >= database size) means the whole database. zero_relevant: "zero" counts a
    query with no relevant item in its top k as AP 0, "drop" leaves it out of the mean.
    backend: "auto" (numba when importable), "numba" or "numpy". per_query adds the lists
    `ap_per_query` and `ap_tie_aware_per_query` (dropped queries appear as None under "drop"),
    for paired comparisons between methods.
    """
    use_numba = _check_options(zero_relevant, backend, topk)
    prepared = _prepare(query_codes, db_codes, query_labels, db_labels, topk, pr_at_n)
    if chunk_size is not None and (not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
        raise ValueError(f"chunk_size={chunk_size!r} is invalid; use an integer >= 1")
    if chunk_size is None:
        # numba keeps O(bits) per query; NumPy holds chunk x database arrays.
        chunk_size = max(1, (2**20 // (prepared.bits + 1)) if use_numba else (2**22 // prepared.num_db))
    sums = _score_in_chunks(prepared, use_numba, int(chunk_size))
    result = _summarise(prepared, sums, zero_relevant, topk, per_query, "numba" if use_numba else "numpy")
    if pr_at_n is not None:
        result.update(_precision_recall_at_n(prepared, sums))
    return result


def _check_options(zero_relevant: str, backend: str, topk: int | None) -> bool:
    """Refuse invalid options; whether the numba kernels are used."""
    if zero_relevant not in ZERO_RELEVANT_CHOICES:
        raise ValueError(f"zero_relevant={zero_relevant!r} is invalid; use 'zero' or 'drop'")
    if backend not in ("auto", "numba", "numpy"):
        raise ValueError(f"backend={backend!r} is invalid; use 'auto', 'numba' or 'numpy'")
    if backend == "numba" and not HAVE_NUMBA:
        raise ValueError("backend='numba' requested but numba is not installed (pip install numba)")
    if topk is not None:
        if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
            raise ValueError(f"topk={topk!r} is invalid; use an integer >= 1 or None for all")
    return HAVE_NUMBA and backend != "numpy"


def _prepare(query_codes: Any, db_codes: Any, query_labels: Any, db_labels: Any, topk: int | None,
             pr_at_n: Sequence[int] | None) -> _Prepared:
    """Check shapes and labels against each other, pack the codes, fix k and the Ns."""
    q_shape = np.shape(query_codes)
    d_shape = np.shape(db_codes)
    if len(q_shape) == 2 and len(d_shape) == 2 and q_shape[1] != d_shape[1]:
        raise ValueError(
            f"bit counts differ: query codes have {q_shape[1]} bits, "
            f"database codes {d_shape[1]}; they must be equal"
        )
    q_packed = _packed_codes(query_codes, "query codes")
    d_packed = _packed_codes(db_codes, "database codes")
    num_q, bits = q_shape
    num_db = d_shape[0]
    multi, q_ids, db_ids, q_bits, db_bits = _prepare_labels(query_labels, db_labels)
    q_label_rows = q_bits.shape[0] if multi else q_ids.shape[0]
    d_label_rows = db_bits.shape[0] if multi else db_ids.shape[0]
    if q_label_rows != num_q:
        raise ValueError(f"query labels have {q_label_rows} rows but there are {num_q} query codes")
    if d_label_rows != num_db:
        raise ValueError(
            f"database labels have {d_label_rows} rows but there are {num_db} database codes"
        )
    k = num_db if topk is None else min(int(topk), num_db)
    ns_requested = [] if pr_at_n is None else list(pr_at_n)
    for n_value in ns_requested:
        if isinstance(n_value, bool) or not isinstance(n_value, (int, np.integer)) or n_value < 1:
            raise ValueError(f"pr_at_n value {n_value!r} is invalid; use integers >= 1")
    ns = np.array([min(int(v), num_db) for v in ns_requested], dtype=np.int64)
    return _Prepared(q_packed, d_packed, multi, q_ids, db_ids, q_bits, db_bits, int(num_q),
                     int(num_db), int(bits), int(k), ns, ns_requested)


def _score_in_chunks(prepared: _Prepared, use_numba: bool, chunk_size: int) -> _Sums:
    """Run the kernels over query chunks: stable-order AP, tie-aware expected AP, hits at N,
    and the precision/recall sums per Hamming radius."""
    p, groups = prepared, prepared.bits + 1
    sums = _Sums(np.zeros(groups), np.zeros(groups), np.zeros(p.num_q), np.zeros(p.num_q, dtype=np.int64),
                 np.zeros(p.num_q), np.zeros(p.num_q), np.zeros(p.num_q, dtype=np.int64),
                 np.zeros((p.num_q, p.ns.shape[0]), dtype=np.int64))
    for start in range(0, p.num_q, chunk_size):
        stop = min(start + chunk_size, p.num_q)
        args = (p.q_packed[start:stop], p.d_packed, p.multi,
                p.q_ids[start:stop] if not p.multi else p.q_ids, p.db_ids,
                p.q_bits[start:stop] if p.multi else p.q_bits, p.db_bits, p.bits, p.k, p.ns)
        if use_numba:
            with _KERNEL_LOCK:
                cnt, rel, ap_sum, hits, hits_n = _stable_nb(*args)
                e_ap, p_h = _tie_aware_nb(cnt, rel, p.k, _HARMONIC_TABLE)
        else:
            cnt, rel, ap_sum, hits, hits_n = _stable_numpy(*args)
            e_ap, p_h = _tie_aware_python(cnt, rel, p.k, _HARMONIC_TABLE)
        sums.ap_stable[start:stop] = np.where(hits > 0, ap_sum / np.maximum(hits, 1), 0.0)
        sums.hits_all[start:stop] = hits
        sums.exp_ap[start:stop] = e_ap
        sums.p_hit[start:stop] = p_h
        sums.hits_n_all[start:stop] = hits_n
        cum_cnt = np.cumsum(cnt, axis=1)
        cum_rel = np.cumsum(rel, axis=1)
        tot = cum_rel[:, -1]
        sums.total_rel[start:stop] = tot
        # An empty retrieved set (no item within radius r) contributes precision 0.
        sums.prec_sum += (cum_rel / np.maximum(cum_cnt, 1)).sum(axis=0)
        has_rel = tot > 0
        sums.rec_sum += (cum_rel[has_rel] / tot[has_rel, None]).sum(axis=0)
    return sums


def _summarise(p: _Prepared, sums: _Sums, zero_relevant: str, topk: int | None,
               per_query: bool, backend: str) -> dict[str, Any]:
    """mAP (stable and tie-aware) under the zero-relevant rule, and the radius curves."""
    if zero_relevant == "zero":
        kept = np.ones(p.num_q, dtype=bool)
        kept_ta = np.ones(p.num_q, dtype=bool)
        ap_ta = sums.exp_ap
    else:
        kept = sums.hits_all > 0
        kept_ta = sums.p_hit > 0
        ap_ta = np.where(kept_ta, sums.exp_ap / np.where(kept_ta, sums.p_hit, 1.0), 0.0)
    num_with_rel = int((sums.total_rel > 0).sum())
    precision_at_radius = (sums.prec_sum / p.num_q).tolist()
    recall_at_radius = (sums.rec_sum / num_with_rel if num_with_rel else sums.rec_sum * 0.0).tolist()
    result: dict[str, Any] = {
        "mAP": _mean(sums.ap_stable[kept]),
        "mAP_tie_aware": _mean(ap_ta[kept_ta]),
        "topk": "all" if topk is None else int(topk),
        "topk_effective": int(p.k),
        "num_queries": int(p.num_q),
        "num_db": int(p.num_db),
        "bits": int(p.bits),
        "tie_order": "database index (stable)",
        "zero_relevant": zero_relevant,
        "num_zero_relevant": int((sums.hits_all == 0).sum()),
        "num_queries_in_mAP": int(kept.sum()),
        "num_zero_relevant_tie_aware": int((sums.p_hit == 0).sum()),
        "num_queries_in_mAP_tie_aware": int(kept_ta.sum()),
        "precision_at_radius": precision_at_radius,
        "recall_at_radius": recall_at_radius,
        "p_at_r2": precision_at_radius[min(2, p.bits)],
        "empty_radius_precision": "zero",
        "recall_without_relevant": "excluded",
        "num_queries_without_relevant": int(p.num_q - num_with_rel),
        "backend": backend,
    }
    if per_query:
        result["ap_per_query"] = [
            float(v) if keep else None for v, keep in zip(sums.ap_stable, kept, strict=True)
        ]
        result["ap_tie_aware_per_query"] = [
            float(v) if keep else None for v, keep in zip(ap_ta, kept_ta, strict=True)
        ]
    return result


def _precision_recall_at_n(p: _Prepared, sums: _Sums) -> dict[str, Any]:
    """Precision and recall among the first N retrieved, for each requested N."""
    with_rel = sums.total_rel > 0
    denom = np.maximum(p.ns, 1).astype(np.float64)
    return {
        "pr_at_n": [int(v) for v in p.ns_requested],
        "precision_at_n": (sums.hits_n_all / denom).mean(axis=0).tolist() if p.num_q else [],
        "recall_at_n": ((sums.hits_n_all[with_rel] / sums.total_rel[with_rel, None]).mean(axis=0).tolist()
                        if with_rel.any() else [0.0] * len(p.ns_requested)),
        "precision_at_n_denominator": "min(N, num_db)",
    }
