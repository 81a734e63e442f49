"""Retrieval metrics for binary hash codes: exact, tie-aware and fast.

Every figure the suite reports goes through `evaluate_retrieval`, so the definitions follow
`shared/specs/protocol.md` literally:

* codes are binarised with +1 where h >= 0, else -1 (0 never stays 0);
* Hamming distance is popcount(x XOR y) on bit-packed uint64 words;
* relevance means sharing at least one label;
* mAP@k uses the hashing convention (divide by the relevant items retrieved in the top k);
* ties in distance are broken by database index (stable order) for `mAP`, and `mAP_tie_aware`
  is the expected AP over uniformly random orders inside each tied group, in closed form.

Why the engine looks the way it does: distances are integers 0..K, so per query one pass over
the database gives histograms of all and of relevant items per distance. Those histograms
alone give precision/recall by radius, the tie-aware AP and the distance at which the top k
is cut. A second pass in database-index order over the items inside the cut is a counting
sort, so the stable-order AP needs no sort at all. Nothing of size queries x database is ever
built. With numba the queries run in parallel, two per pass over the database so each
database word is loaded once per pair; without numba a chunked NumPy path gives the same
numbers (to ~1e-15).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

try:  # numba is a declared dependency, but the metrics must still work without it.
    import numba
    from llvmlite import ir as _llvm_ir
    from numba.extending import intrinsic as _intrinsic

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - tested in a subprocess that blocks numba
    HAVE_NUMBA = False

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

# Exact harmonic numbers H_0..H_64; beyond 64 differences of H use the digamma asymptotic
# series, which keeps full relative precision where a long cumulative sum would not.
_HARMONIC_SMALL = 64
_HARMONIC_TABLE = np.array(
    [
        float(sum((Fraction(1, i) for i in range(1, n + 1)), Fraction(0)))
        for n in range(_HARMONIC_SMALL + 1)
    ]
)
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


_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount64(words: np.ndarray) -> np.ndarray:
    """Per-element popcount of uint64 arrays (np.bitwise_count on NumPy >= 2)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    as_bytes = np.ascontiguousarray(words).view(np.uint8).reshape(*words.shape, 8)
    return _BYTE_POPCOUNT[as_bytes].sum(axis=-1, dtype=np.uint8)


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
# Closed-form tie-aware AP, written once: numba compiles these scalar functions when it is
# installed, and plain Python runs them otherwise (they only touch the tiny histograms).
# --------------------------------------------------------------------------------------------


def _scalar_jit(function: Any) -> Any:
    """numba.njit when available (callers inside kernels need compiled callees)."""
    return numba.njit(cache=True, nogil=True)(function) if HAVE_NUMBA else function


@_scalar_jit
def _psi_tail(x: float) -> float:
    """digamma(x) - log(x) by its asymptotic series; accurate to ~1e-25 for x >= 65."""
    inv = 1.0 / x
    inv2 = inv * inv
    return -0.5 * inv - inv2 * (
        1.0 / 12.0
        - inv2 * (1.0 / 120.0 - inv2 * (1.0 / 252.0 - inv2 * (1.0 / 240.0 - inv2 / 132.0)))
    )


@_scalar_jit
def _harmonic_diff(s: int, e: int, table: np.ndarray) -> float:
    """sum_{i=s+1}^{e} 1/i without the cancellation of a long cumulative sum."""
    a = min(s, _HARMONIC_SMALL)
    b = min(e, _HARMONIC_SMALL)
    out = table[b] - table[a]
    a2 = max(s, _HARMONIC_SMALL)
    b2 = max(e, _HARMONIC_SMALL)
    if b2 > a2:
        out += math.log1p((b2 - a2) / (a2 + 1.0)) + _psi_tail(b2 + 1.0) - _psi_tail(a2 + 1.0)
    return out


@_scalar_jit
def _group_sum(n: int, r: int, s: int, big_r: int, table: np.ndarray) -> float:
    """Expected sum of P(i)*rel(i) over a tied group in uniformly random order.

    The group holds n items (r relevant) at ranks s+1..s+n with big_r relevant ranked before.
    Position i is relevant with probability r/n, and then the hits up to it are
    big_r + 1 + (i-1)(r-1)/(n-1) on average; (c + b*i)/(s+i) = b + (c - b*s)/(s+i) turns the
    sum into a harmonic-number difference.
    """
    if r == 0 or n == 0:
        return 0.0
    b = (r - 1.0) / (n - 1.0) if n > 1 else 0.0
    c = big_r + 1.0 - b
    hd = _harmonic_diff(s, s + n, table)
    return (r / n) * (b * n + (c - b * s) * hd)


@_scalar_jit
def _cut_group(
    n: int, r: int, m: int, s: int, big_r: int, full_sum: float, table: np.ndarray
) -> tuple[float, float]:
    """Expected AP when the top k takes only the first m of a tied group of n (r relevant).

    The relevant count X among the m taken is hypergeometric(n, r, m); given X = x they sit
    uniformly in the m positions, so the group adds _group_sum(m, x, ...) and the AP
    denominator is big_r + x. Returns (E[AP] with AP=0 when nothing relevant is retrieved,
    P(at least one relevant retrieved)). Weights come from the pmf ratio recurrence around
    the mode, normalised at the end, so no factorials can overflow. The pmf is log-concave, so
    the ratio of successive weights only shrinks moving away from the mode and the unvisited
    tail is at most w * rho / (1 - rho); the walk stops once that is below 1e-18 of the mass.
    """
    lo = max(0, m - (n - r))
    hi = min(r, m)
    mode = ((m + 1) * (r + 1)) // (n + 2)
    mode = min(max(mode, lo), hi)
    rest = n - r - m
    w_sum = 0.0
    w_hit = 0.0
    acc = 0.0
    w = 1.0
    x = mode
    while True:  # upward from the mode (including it)
        w_sum += w
        if big_r + x > 0:
            w_hit += w
            acc += w * (full_sum + _group_sum(m, x, s, big_r, table)) / (big_r + x)
        if x >= hi:
            break
        rho = ((r - x) * (m - x)) / ((x + 1.0) * (rest + x + 1.0))
        # (never stop before x = 1 is seen when nothing is ranked above: "drop" needs to know
        # whether a hit is possible at all)
        if big_r + x > 0 and rho < 1.0 and w * rho < 1e-18 * w_sum * (1.0 - rho):
            break
        w *= rho
        x += 1
    w = 1.0
    x = mode
    while x > lo:  # downward from the mode
        rho = (x * (rest + x)) / ((r - x + 1.0) * (m - x + 1.0))
        if rho < 1.0 and w * rho < 1e-18 * w_sum * (1.0 - rho):
            break
        w *= rho
        x -= 1
        w_sum += w
        if big_r + x > 0:
            w_hit += w
            acc += w * (full_sum + _group_sum(m, x, s, big_r, table)) / (big_r + x)
    p_hit = 1.0 if big_r > 0 else w_hit / w_sum
    return acc / w_sum, p_hit


@_scalar_jit
def _tie_aware_query(
    cnt: np.ndarray, rel: np.ndarray, k: int, table: np.ndarray
) -> tuple[float, float]:
    """(E[AP@k], P(a relevant item in the top k)) for one query from its distance histograms."""
    s = 0
    big_r = 0
    full_sum = 0.0
    for d in range(len(cnt)):
        n = cnt[d]
        if n == 0:
            continue
        r = rel[d]
        if s + n <= k:
            full_sum += _group_sum(n, r, s, big_r, table)
            s += n
            big_r += r
            if s == k:
                break
        else:
            return _cut_group(n, r, k - s, s, big_r, full_sum, table)
    if big_r == 0:
        return 0.0, 0.0
    return full_sum / big_r, 1.0


def _tie_aware_python(
    cnt: np.ndarray, rel: np.ndarray, k: int, table: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query tie-aware AP without numba: O(bits + k) scalar work per query, on Python ints
    (much faster than NumPy scalars)."""
    exp_ap = np.empty(cnt.shape[0])
    p_hit = np.empty(cnt.shape[0])
    if HAVE_NUMBA:  # backend="numpy" chosen explicitly: the compiled scalar code wants arrays
        for q in range(cnt.shape[0]):
            exp_ap[q], p_hit[q] = _tie_aware_query(cnt[q], rel[q], k, table)
        return exp_ap, p_hit
    table_list = table.tolist()
    for q, (cnt_row, rel_row) in enumerate(zip(cnt.tolist(), rel.tolist(), strict=True)):
        exp_ap[q], p_hit[q] = _tie_aware_query(cnt_row, rel_row, k, table_list)
    return exp_ap, p_hit


# --------------------------------------------------------------------------------------------
# Stable-order engine, NumPy backend (chunked; used when numba is missing, and in tests)
# --------------------------------------------------------------------------------------------


def _stable_numpy(
    q_codes: np.ndarray,
    db_codes: np.ndarray,
    multi: bool,
    q_ids: np.ndarray,
    db_ids: np.ndarray,
    q_bits: np.ndarray,
    db_bits: np.ndarray,
    bits: int,
    k: int,
    ns: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One chunk of queries: histograms, stable AP sums, hits in top k and at each N."""
    nq = q_codes.shape[0]
    dist = np.zeros((nq, db_codes.shape[0]), dtype=np.uint16)
    for w in range(q_codes.shape[1]):
        dist += _popcount64(q_codes[:, None, w] ^ db_codes[None, :, w])
    if multi:
        rel = np.zeros(dist.shape, dtype=bool)
        for w in range(q_bits.shape[1]):
            rel |= (q_bits[:, None, w] & db_bits[None, :, w]) != 0
    else:
        rel = q_ids[:, None] == db_ids[None, :]
    groups = bits + 1
    key = dist.astype(np.int64) * 2 + rel + (np.arange(nq, dtype=np.int64) * 2 * groups)[:, None]
    hist = np.bincount(key.ravel(), minlength=nq * 2 * groups).reshape(nq, groups, 2)
    cnt = hist.sum(axis=2)
    relcnt = hist[:, :, 1]
    kmax = max(k, int(ns.max(initial=0)))
    order = np.argsort(dist, axis=1, kind="stable")[:, :kmax]
    ranked = np.take_along_axis(rel, order, axis=1)
    hits_cum = np.cumsum(ranked, axis=1)
    positions = np.arange(1, kmax + 1, dtype=np.float64)
    ap_sum = np.where(ranked[:, :k], hits_cum[:, :k] / positions[:k], 0.0).sum(axis=1)
    hits = hits_cum[:, k - 1].astype(np.int64)
    hits_n = hits_cum[:, ns - 1].astype(np.int64) if ns.size else np.zeros((nq, 0), np.int64)
    return cnt.astype(np.int64), relcnt.astype(np.int64), ap_sum, hits, hits_n


# --------------------------------------------------------------------------------------------
# Stable-order engine, numba backend
# --------------------------------------------------------------------------------------------

if HAVE_NUMBA:

    @_intrinsic
    def _ctpop(typingctx, x):
        """Hardware popcount (llvm.ctpop) on a uint64."""
        sig = numba.types.uint64(numba.types.uint64)

        def codegen(context, builder, signature, args):
            fn = builder.module.declare_intrinsic("llvm.ctpop", [_llvm_ir.IntType(64)])
            return builder.call(fn, args)

        return sig, codegen

    @numba.njit(cache=True, parallel=True)
    def _tie_aware_nb(cnt, rel, k, table):
        """_tie_aware_query for every query in parallel."""
        nq = cnt.shape[0]
        exp_ap = np.zeros(nq)
        p_hit = np.zeros(nq)
        for q in numba.prange(nq):
            exp_ap[q], p_hit[q] = _tie_aware_query(cnt[q], rel[q], k, table)
        return exp_ap, p_hit

    @numba.njit(cache=True, nogil=True)
    def _is_relevant(multi, q, j, q_ids, db_ids, q_bits, db_bits):
        """Shared label: class-id equality, or any common bit of the packed label sets."""
        if multi:
            for w in range(q_bits.shape[1]):
                if q_bits[q, w] & db_bits[j, w]:
                    return True
            return False
        return db_ids[j] == q_ids[q]

    @numba.njit(cache=True, nogil=True)
    def _finish_query(q, row, dist, hist, multi, q_ids, db_ids, q_bits, db_bits, k, ns,
                      cnt_out, rel_out, ap_sum, hits, hits_n):
        """From one query's distances and histograms (hist[h, 2d + rel], summed over h) to its
        output row: cut-offs, then a counting-sort walk in database order for the stable AP."""
        groups = cnt_out.shape[1]
        nn = ns.shape[0]
        before = np.zeros(groups + 1, dtype=np.int64)
        rel_before = np.zeros(groups + 1, dtype=np.int64)
        for d in range(groups):
            n_rel = 0
            n_all = 0
            for h in range(hist.shape[0]):
                n_rel += hist[h, 2 * d + 1]
                n_all += hist[h, 2 * d] + hist[h, 2 * d + 1]
            cnt_out[row, d] = n_all
            rel_out[row, d] = n_rel
            before[d + 1] = before[d] + n_all
            rel_before[d + 1] = rel_before[d] + n_rel
        # The group holding rank k, and how many of its items the top k takes.
        dk = 0
        while before[dk + 1] < k:
            dk += 1
        mk = k - before[dk]
        dmax = dk
        dn = np.zeros(nn, dtype=np.int64)
        mn = np.zeros(nn, dtype=np.int64)
        for t in range(nn):
            d = 0
            while before[d + 1] < ns[t]:
                d += 1
            dn[t] = d
            mn[t] = ns[t] - before[d]
            dmax = max(dmax, d)
        # Walking in database order visits every tied group in stable order.
        seen = np.zeros(groups, dtype=np.int64)
        rel_seen = np.zeros(groups, dtype=np.int64)
        total = 0.0
        found = 0
        for j in range(dist.shape[0]):
            d = dist[j]
            if d > dmax:
                continue
            g = seen[d] + 1
            seen[d] = g
            if not _is_relevant(multi, q, j, q_ids, db_ids, q_bits, db_bits):
                continue
            rel_seen[d] += 1
            if d < dk or (d == dk and g <= mk):
                total += (rel_before[d] + rel_seen[d]) / (before[d] + g)
                found += 1
            for t in range(nn):
                if d < dn[t] or (d == dn[t] and g <= mn[t]):
                    hits_n[row, t] += 1
        ap_sum[row] = total
        hits[row] = found

    @numba.njit(cache=True, parallel=True)
    def _stable_nb(q_codes, db_codes, multi, q_ids, db_ids, q_bits, db_bits, bits, k, ns):
        """Queries in pairs: one pass over the database computes both queries' XOR+popcount
        distances, another fills both histograms, so every database word and label is loaded
        once per pair (about twice as fast as one query at a time); then each query is
        finished on its own."""
        nq = q_codes.shape[0]
        ndb = db_codes.shape[0]
        words = q_codes.shape[1]
        lwords = q_bits.shape[1]
        groups = bits + 1
        cnt_out = np.zeros((nq, groups), dtype=np.int64)
        rel_out = np.zeros((nq, groups), dtype=np.int64)
        ap_sum = np.zeros(nq)
        hits = np.zeros(nq, dtype=np.int64)
        hits_n = np.zeros((nq, ns.shape[0]), dtype=np.int64)
        n2 = ndb - ndb % 2
        for p in numba.prange((nq + 1) // 2):
            qa = 2 * p
            qb = min(qa + 1, nq - 1)  # an odd last query is paired with itself
            dist_a = np.empty(ndb, dtype=np.uint16)
            dist_b = np.empty(ndb, dtype=np.uint16)
            if words == 1:
                xa = q_codes[qa, 0]
                xb = q_codes[qb, 0]
                for j in range(ndb):
                    y = db_codes[j, 0]
                    dist_a[j] = _ctpop(xa ^ y)
                    dist_b[j] = _ctpop(xb ^ y)
            else:
                for j in range(ndb):
                    acc_a = np.uint64(0)
                    acc_b = np.uint64(0)
                    for w in range(words):
                        y = db_codes[j, w]
                        acc_a += _ctpop(q_codes[qa, w] ^ y)
                        acc_b += _ctpop(q_codes[qb, w] ^ y)
                    dist_a[j] = acc_a
                    dist_b[j] = acc_b
            # Slot 2d counts items at distance d that are not relevant, 2d+1 relevant ones; two
            # interleaved copies per query keep consecutive increments off the same counter.
            hist_a = np.zeros((2, 2 * groups), dtype=np.int64)
            hist_b = np.zeros((2, 2 * groups), dtype=np.int64)
            if multi:
                for j in range(ndb):
                    ra = 0
                    rb = 0
                    for w in range(lwords):
                        y = db_bits[j, w]
                        if q_bits[qa, w] & y:
                            ra = 1
                        if q_bits[qb, w] & y:
                            rb = 1
                    hist_a[j & 1, 2 * dist_a[j] + ra] += 1
                    hist_b[j & 1, 2 * dist_b[j] + rb] += 1
            else:
                ca = q_ids[qa]
                cb = q_ids[qb]
                for j in range(0, n2, 2):
                    l0 = db_ids[j]
                    l1 = db_ids[j + 1]
                    hist_a[0, 2 * dist_a[j] + (l0 == ca)] += 1
                    hist_b[0, 2 * dist_b[j] + (l0 == cb)] += 1
                    hist_a[1, 2 * dist_a[j + 1] + (l1 == ca)] += 1
                    hist_b[1, 2 * dist_b[j + 1] + (l1 == cb)] += 1
                for j in range(n2, ndb):
                    hist_a[0, 2 * dist_a[j] + (db_ids[j] == ca)] += 1
                    hist_b[0, 2 * dist_b[j] + (db_ids[j] == cb)] += 1
            _finish_query(qa, qa, dist_a, hist_a, multi, q_ids, db_ids, q_bits, db_bits, k, ns,
                          cnt_out, rel_out, ap_sum, hits, hits_n)
            if qb != qa:
                _finish_query(qb, qb, dist_b, hist_b, multi, q_ids, db_ids, q_bits, db_bits, k,
                              ns, cnt_out, rel_out, ap_sum, hits, hits_n)
        return cnt_out, rel_out, ap_sum, hits, hits_n


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


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


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
    if zero_relevant not in ZERO_RELEVANT_CHOICES:
        raise ValueError(f"zero_relevant={zero_relevant!r} is invalid; use 'zero' or 'drop'")
    if backend not in ("auto", "numba", "numpy"):
        raise ValueError(f"backend={backend!r} is invalid; use 'auto', 'numba' or 'numpy'")
    if backend == "numba" and not HAVE_NUMBA:
        raise ValueError("backend='numba' requested but numba is not installed (pip install numba)")
    use_numba = HAVE_NUMBA and backend != "numpy"
    if topk is not None:
        if isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1:
            raise ValueError(f"topk={topk!r} is invalid; use an integer >= 1 or None for all")

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
    if chunk_size is not None and (not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
        raise ValueError(f"chunk_size={chunk_size!r} is invalid; use an integer >= 1")

    if chunk_size is None:
        # numba keeps O(bits) per query; NumPy holds chunk x database arrays.
        chunk_size = max(1, (2**20 // (bits + 1)) if use_numba else (2**22 // num_db))

    groups = bits + 1
    prec_sum = np.zeros(groups)
    rec_sum = np.zeros(groups)
    ap_stable = np.zeros(num_q)
    hits_all = np.zeros(num_q, dtype=np.int64)
    exp_ap = np.zeros(num_q)
    p_hit = np.zeros(num_q)
    total_rel = np.zeros(num_q, dtype=np.int64)
    hits_n_all = np.zeros((num_q, ns.shape[0]), dtype=np.int64)

    for start in range(0, num_q, chunk_size):
        stop = min(start + chunk_size, num_q)
        args = (
            q_packed[start:stop],
            d_packed,
            multi,
            q_ids[start:stop] if not multi else q_ids,
            db_ids,
            q_bits[start:stop] if multi else q_bits,
            db_bits,
            bits,
            k,
            ns,
        )
        if use_numba:
            with _KERNEL_LOCK:
                cnt, rel, ap_sum, hits, hits_n = _stable_nb(*args)
                e_ap, p_h = _tie_aware_nb(cnt, rel, k, _HARMONIC_TABLE)
        else:
            cnt, rel, ap_sum, hits, hits_n = _stable_numpy(*args)
            e_ap, p_h = _tie_aware_python(cnt, rel, k, _HARMONIC_TABLE)
        ap_stable[start:stop] = np.where(hits > 0, ap_sum / np.maximum(hits, 1), 0.0)
        hits_all[start:stop] = hits
        exp_ap[start:stop] = e_ap
        p_hit[start:stop] = p_h
        hits_n_all[start:stop] = hits_n
        cum_cnt = np.cumsum(cnt, axis=1)
        cum_rel = np.cumsum(rel, axis=1)
        tot = cum_rel[:, -1]
        total_rel[start:stop] = tot
        # An empty retrieved set (no item within radius r) contributes precision 0.
        prec_sum += (cum_rel / np.maximum(cum_cnt, 1)).sum(axis=0)
        has_rel = tot > 0
        rec_sum += (cum_rel[has_rel] / tot[has_rel, None]).sum(axis=0)

    if zero_relevant == "zero":
        kept = np.ones(num_q, dtype=bool)
        kept_ta = np.ones(num_q, dtype=bool)
        ap_ta = exp_ap
    else:
        kept = hits_all > 0
        kept_ta = p_hit > 0
        ap_ta = np.where(kept_ta, exp_ap / np.where(kept_ta, p_hit, 1.0), 0.0)
    with_rel = total_rel > 0
    num_with_rel = int(with_rel.sum())
    precision_at_radius = (prec_sum / num_q).tolist()
    recall_at_radius = (rec_sum / num_with_rel if num_with_rel else rec_sum * 0.0).tolist()

    result: dict[str, Any] = {
        "mAP": _mean(ap_stable[kept]),
        "mAP_tie_aware": _mean(ap_ta[kept_ta]),
        "topk": "all" if topk is None else int(topk),
        "topk_effective": int(k),
        "num_queries": int(num_q),
        "num_db": int(num_db),
        "bits": int(bits),
        "tie_order": "database index (stable)",
        "zero_relevant": zero_relevant,
        "num_zero_relevant": int((hits_all == 0).sum()),
        "num_queries_in_mAP": int(kept.sum()),
        "num_zero_relevant_tie_aware": int((p_hit == 0).sum()),
        "num_queries_in_mAP_tie_aware": int(kept_ta.sum()),
        "precision_at_radius": precision_at_radius,
        "recall_at_radius": recall_at_radius,
        "p_at_r2": precision_at_radius[min(2, bits)],
        "empty_radius_precision": "zero",
        "recall_without_relevant": "excluded",
        "num_queries_without_relevant": int(num_q - num_with_rel),
        "backend": "numba" if use_numba else "numpy",
    }
    if per_query:
        result["ap_per_query"] = [
            float(v) if keep else None for v, keep in zip(ap_stable, kept, strict=True)
        ]
        result["ap_tie_aware_per_query"] = [
            float(v) if keep else None for v, keep in zip(ap_ta, kept_ta, strict=True)
        ]
    if pr_at_n is not None:
        denom = np.maximum(ns, 1).astype(np.float64)
        result["pr_at_n"] = [int(v) for v in ns_requested]
        result["precision_at_n"] = (hits_n_all / denom).mean(axis=0).tolist() if num_q else []
        result["recall_at_n"] = (
            (hits_n_all[with_rel] / total_rel[with_rel, None]).mean(axis=0).tolist()
            if num_with_rel
            else [0.0] * len(ns_requested)
        )
        result["precision_at_n_denominator"] = "min(N, num_db)"
    return result
