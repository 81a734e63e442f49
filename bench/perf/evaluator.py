"""`python -m bench perf evaluator`: the retrieval evaluator's speed and memory on a clustered
synthetic problem, against the per-query NumPy loop of the common hashing collections and
faiss's binary top-k search."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.errors import UserError

# Memory is measured in a fresh interpreter: numba's allocations bypass tracemalloc, and the
# parent's high-water mark already includes the synthetic data and the per-query loop. Inside
# the probe the kernel high-water mark (VmHWM) is reset just before the call (Linux
# /proc/self/clear_refs), so compile-time memory is not counted; ru_maxrss is the fallback.
_MEMORY_PROBE = """
import json, resource, sys
import numpy as np
from bench.evaluation.retrieval import evaluate_retrieval, warm_up

def status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(key)

folder, topk = sys.argv[1], int(sys.argv[2])
q, d = np.load(folder + "/q.npy"), np.load(folder + "/d.npy")
ql, dl = np.load(folder + "/ql.npy"), np.load(folder + "/dl.npy")
warm_up()
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base, method = status_kib("VmRSS"), "VmHWM after reset"
except OSError:
    base, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
evaluate_retrieval(q, d, ql, dl, topk=topk)
if method == "ru_maxrss":
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
else:
    peak = status_kib("VmHWM")
print(json.dumps({"base_kib": base, "peak_kib": peak, "method": method}))
"""


def _synthetic_problem(args: argparse.Namespace) -> dict[str, Any]:
    """Clustered codes: one random +-1 centre per class, each bit flipped with prob `flip`."""
    import numpy as np

    rng = np.random.default_rng(args.seed)
    centers = np.where(rng.random((args.classes, args.bits)) < 0.5, 1, -1).astype(np.int8)

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, args.classes, count)
        codes = centers[labels].copy()
        for start in range(0, count, 65536):  # bounded temporaries
            block = slice(start, min(start + 65536, count))
            flips = rng.random((codes[block].shape[0], args.bits), dtype=np.float32) < args.flip
            codes[block][flips] *= -1
        return codes, labels

    query, query_labels = draw(args.queries)
    db, db_labels = draw(args.db)
    return {"q": query, "d": db, "ql": query_labels, "dl": db_labels}


def _loop_map(problem: dict[str, Any], count: int, bits: int, topk: int) -> tuple[float, list]:
    """The per-query NumPy loop of the common hashing collections (the 44 s baseline).

    Per query: Hamming distance from an inner product, a full argsort, relevance from a label
    dot product over the whole database, then cumulative precision. The sort is stable (not
    the collections' default quicksort) so its tie order, and so its mAP, matches ours.
    """
    import numpy as np

    from bench.evaluation.retrieval import label_matrix

    db_float = problem["d"].astype(np.float32)
    num_classes = int(max(problem["ql"].max(), problem["dl"].max())) + 1
    db_onehot = label_matrix(problem["dl"], num_classes).astype(np.float32)
    q_onehot = label_matrix(problem["ql"][:count], num_classes).astype(np.float32)
    q_float = problem["q"][:count].astype(np.float32)
    start = time.perf_counter()
    aps = []
    for i in range(count):
        hamming = 0.5 * (bits - db_float @ q_float[i])
        order = np.argsort(hamming, kind="stable")
        relevant = (db_onehot @ q_onehot[i] > 0).astype(np.float64)[order][:topk]
        found = int(relevant.sum())
        if found == 0:
            aps.append(0.0)
            continue
        hit_rank = np.flatnonzero(relevant) + 1.0
        aps.append(float(np.mean(np.arange(1, found + 1) / hit_rank)))
    return time.perf_counter() - start, aps


def _faiss_seconds(problem: dict[str, Any], bits: int, topk: int, repeats: int) -> float | None:
    try:
        import faiss
    except ImportError:
        return None
    import numpy as np

    if bits % 8:
        return None
    index = faiss.IndexBinaryFlat(bits)
    index.add(np.packbits(problem["d"] > 0, axis=1))
    queries = np.packbits(problem["q"] > 0, axis=1)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        index.search(queries, topk)
        best = min(best, time.perf_counter() - start)
    return best


def _peak_memory(problem: dict[str, Any], topk: int) -> dict[str, Any]:
    import numpy as np

    with tempfile.TemporaryDirectory() as folder:
        for name in ("q", "d", "ql", "dl"):
            np.save(Path(folder) / f"{name}.npy", problem[name])
        root = str(Path(__file__).resolve().parents[2])
        done = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, folder, str(topk)],
            capture_output=True, text=True, cwd=root, check=False,
        )
    if done.returncode != 0:
        raise UserError(f"memory probe failed: {done.stderr.strip().splitlines()[-1:]}")
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "peak_mb": probe["peak_kib"] / 1024,
        "delta_mb": (probe["peak_kib"] - probe["base_kib"]) / 1024,
        "method": probe["method"],
    }


def run(args: argparse.Namespace) -> int:
    """mAP@k + tie-aware mAP + PR by radius vs the per-query loop and faiss top-k search."""
    import numpy as np

    from bench.evaluation import retrieval

    for flag in ("queries", "db", "bits", "classes", "topk", "loop_queries", "repeats"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be >= 1")
    if not 0.0 <= args.flip <= 0.5:
        raise UserError(f"--flip {args.flip}: must be within [0, 0.5]")
    topk = min(args.topk, args.db)
    loop_count = min(args.loop_queries, args.queries)
    threads = "n/a"
    if retrieval.HAVE_NUMBA:
        import numba

        threads = f"numba {numba.__version__}, {numba.get_num_threads()} threads"
    print(
        f"perf evaluator: clustered synthetic problem, {args.queries} queries x {args.db} "
        f"database, {args.bits} bits, {args.classes} classes, top-{topk}, flip {args.flip}, "
        f"seed {args.seed} ({threads})"
    )
    problem = _synthetic_problem(args)

    warm = retrieval.warm_up()
    cache = ""
    if retrieval.HAVE_NUMBA:
        hits = retrieval._stable_nb.stats.cache_hits
        cache = " (loaded from numba's on-disk cache)" if sum(hits.values()) else " (cold compile)"
    print(f"JIT compile, first call on a tiny problem: {warm['seconds']:.2f} s{cache}")

    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = retrieval.evaluate_retrieval(
            problem["q"], problem["d"], problem["ql"], problem["dl"], topk=topk
        )
        times.append(time.perf_counter() - start)
    best = min(times)
    print(
        f"evaluator, mAP@{topk} + tie-aware mAP + PR by radius ({result['backend']}): "
        f"{best:.3f} s (best of {args.repeats}; median {float(np.median(times)):.3f} s); "
        f"mAP {result['mAP']:.4f}, tie-aware {result['mAP_tie_aware']:.4f}, "
        f"P@H<=2 {result['p_at_r2']:.4f}"
    )
    memory = _peak_memory(problem, topk)
    print(
        f"peak memory of a fresh subprocess running one evaluation ({memory['method']}): "
        f"{memory['peak_mb']:.0f} MB resident, +{memory['delta_mb']:.0f} MB over the "
        "interpreter + inputs + loaded kernels before the call"
    )

    loop_seconds, loop_aps = _loop_map(problem, loop_count, args.bits, topk)
    loop_scaled = loop_seconds * args.queries / loop_count
    print(
        f"per-query NumPy loop: {loop_seconds:.2f} s for {loop_count} queries, scaled to "
        f"{args.queries}: {loop_scaled:.1f} s -> evaluator is {loop_scaled / best:.1f}x faster"
    )
    subset = retrieval.evaluate_retrieval(
        problem["q"][:loop_count], problem["d"], problem["ql"][:loop_count], problem["dl"],
        topk=topk, per_query=True,
    )
    diff = float(np.max(np.abs(np.array(subset["ap_per_query"]) - np.array(loop_aps))))
    print(f"AP agreement on those {loop_count} queries: max |evaluator - loop| = {diff:.1e}")

    faiss_seconds = _faiss_seconds(problem, args.bits, topk, args.repeats)
    if faiss_seconds is None:
        if args.bits % 8:
            print("faiss IndexBinaryFlat: skipped, it needs a bit count divisible by 8")
        else:
            print("faiss not installed: pip install faiss-cpu")
    else:
        print(
            f"faiss IndexBinaryFlat top-{topk} search (neighbours only, no metrics): "
            f"{faiss_seconds:.3f} s -> evaluator takes {best / faiss_seconds:.2f}x its time"
        )
    verdicts = [
        f">= 30x faster than the loop: {'yes' if loop_scaled / best >= 30 else 'NO'}",
        f"peak < 2 GB: {'yes' if memory['peak_mb'] < 2048 else 'NO'}",
        f"AP identical to 1e-9: {'yes' if diff <= 1e-9 else 'NO'}",
    ]
    if faiss_seconds is not None:
        verdicts.insert(1, f"no slower than faiss: {'yes' if best <= faiss_seconds else 'NO'}")
    print("targets: " + "; ".join(verdicts))
    return 0


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queries", type=int, default=5000, help="number of query codes")
    parser.add_argument("--db", type=int, default=128503, help="number of database codes")
    parser.add_argument("--bits", type=int, default=64, help="code length")
    parser.add_argument("--classes", type=int, default=100, help="number of classes")
    parser.add_argument("--topk", type=int, default=1000, help="mAP@k cut-off")
    parser.add_argument("--flip", type=float, default=0.2,
                        help="probability that a bit differs from its class centre")
    parser.add_argument("--loop-queries", type=int, default=200,
                        help="queries timed with the per-query loop (scaled to all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions (best is kept)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic problem")
