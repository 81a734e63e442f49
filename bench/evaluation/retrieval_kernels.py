"""The low-level kernels behind `bench.evaluation.retrieval`: popcount, the closed-form tie-aware AP and
the stable-order engine (NumPy and numba backends).

They work only on already packed uint64 codes, validated class ids or packed label bitsets,
and distance histograms; converting and validating inputs, driving the kernels in query
chunks and assembling the metrics is `bench.evaluation.retrieval`'s job (the public entry point, which
this module must not import). Kept apart so the numba-compiled numerics sit in one place.

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

# Exact harmonic numbers H_0..H_64; beyond 64 differences of H use the digamma asymptotic
# series, which keeps full relative precision where a long cumulative sum would not.
_HARMONIC_SMALL = 64
_HARMONIC_TABLE = np.array(
    [
        float(sum((Fraction(1, i) for i in range(1, n + 1)), Fraction(0)))
        for n in range(_HARMONIC_SMALL + 1)
    ]
)


# --------------------------------------------------------------------------------------------
# XOR + popcount, NumPy
# --------------------------------------------------------------------------------------------


_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount64(words: np.ndarray) -> np.ndarray:
    """Per-element popcount of uint64 arrays (np.bitwise_count on NumPy >= 2)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    as_bytes = np.ascontiguousarray(words).view(np.uint8).reshape(*words.shape, 8)
    return _BYTE_POPCOUNT[as_bytes].sum(axis=-1, dtype=np.uint8)


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
