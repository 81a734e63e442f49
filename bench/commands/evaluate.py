"""`python -m bench evaluate`: retrieval metrics for codes produced anywhere (.npy files).

Codes may be real-valued (binarised with h >= 0 -> +1), {0,1} or {-1,+1}; labels may be 1-D
class ids or 0/1 matrices. Every input problem becomes one `UserError` line (exit code 2)
naming the flag, the value and what would be valid, before any work starts.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench.errors import UserError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is invalid; use an integer >= 1")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--query-codes", required=True, metavar="Q.npy",
                        help="query codes [Q, bits]: real-valued, {0,1} or {-1,+1}")
    parser.add_argument("--db-codes", required=True, metavar="D.npy",
                        help="database codes [N, bits], same format and bits as the queries")
    parser.add_argument("--query-labels", required=True, metavar="QL.npy",
                        help="query labels: 1-D class ids [Q] or a 0/1 matrix [Q, C]")
    parser.add_argument("--db-labels", required=True, metavar="DL.npy",
                        help="database labels: 1-D class ids [N] or a 0/1 matrix [N, C]")
    parser.add_argument("--topk", type=_positive_int, default=None, metavar="K",
                        help="mAP@K cut-off (default: the whole database)")
    parser.add_argument("--drop-zero-relevant", action="store_true",
                        help="leave queries with no relevant item in the top K out of the mean "
                        "(HashNet / DeepHash convention) instead of counting them as AP 0")
    parser.add_argument("--pr-at-n", type=_positive_int, nargs="+", default=None, metavar="N",
                        help="also report precision@N and recall@N at these ranks")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of a table")


def _load(path: str, flag: str) -> Any:
    import numpy as np

    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise UserError(f"{flag} {path}: file not found; give an existing .npy file") from None
    except IsADirectoryError:
        raise UserError(f"{flag} {path}: is a directory; give a .npy file") from None
    except (OSError, ValueError, EOFError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{flag} {path}: not a readable .npy array ({reason})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        raise UserError(f"{flag} {path}: is an .npz archive; give a single-array .npy file")
    return array


def _check_codes(array: Any, flag: str) -> None:
    import numpy as np

    if array.ndim != 2:
        raise UserError(f"{flag}: codes must be a 2-D array [count, bits], got shape {array.shape}")
    if array.size == 0:
        raise UserError(f"{flag}: empty array (shape {array.shape}); need at least one code")
    if array.dtype != np.bool_ and (
        not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array)
    ):
        raise UserError(f"{flag}: dtype {array.dtype} is not numeric; codes must be real numbers")
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = "NaN" if np.isnan(array).any() else "infinite values"
        raise UserError(f"{flag}: contains {bad}; codes must be finite, {{0,1}} or {{-1,+1}}")


def _check_labels(array: Any, flag: str, rows: int, codes_flag: str) -> None:
    import numpy as np

    if array.ndim not in (1, 2):
        raise UserError(
            f"{flag}: shape {array.shape}; labels must be 1-D class ids or a 2-D 0/1 matrix"
        )
    if array.shape[0] == 0 or (array.ndim == 2 and array.shape[1] == 0):
        raise UserError(f"{flag}: empty array (shape {array.shape}); need one label row per code")
    if array.shape[0] != rows:
        raise UserError(f"{flag}: {array.shape[0]} rows but {codes_flag} has {rows}; must match")
    if array.dtype != np.bool_ and not np.issubdtype(array.dtype, np.number):
        raise UserError(f"{flag}: dtype {array.dtype} is not numeric; labels must be numbers")
    if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
        raise UserError(f"{flag}: contains NaN; labels must be class ids or 0/1 values")


def _sign_codes(query: Any, db: Any) -> tuple[Any, Any, str]:
    """Decide the code format for both files together: {0,1} only when both are all 0/1
    (a lone all-zero file read on its own would otherwise flip meaning)."""
    from bench.evaluation.retrieval import _is_zero_one, as_sign_codes, binarize

    if _is_zero_one(query) and _is_zero_one(db):
        return as_sign_codes(query), as_sign_codes(db), "{0,1} (0 read as -1)"
    return binarize(query), binarize(db), "sign of real values (h >= 0 -> +1)"


def _table(result: dict[str, Any]) -> str:
    k = result["topk"]
    at = "all" if k == "all" else str(k)
    lines = [
        f"queries {result['num_queries']}  database {result['num_db']}  bits {result['bits']}  "
        f"top-k {at}",
        f"mAP@{at} (ties by database index)  {result['mAP']:.6f}",
        f"mAP@{at} (tie-aware, expected)     {result['mAP_tie_aware']:.6f}",
        f"queries with no relevant item in the top k: {result['num_zero_relevant']} "
        f"(zero-relevant convention: {result['zero_relevant']})",
        f"precision within Hamming radius 2   {result['p_at_r2']:.6f}",
        "",
        "radius  precision  recall",
    ]
    for r, (p, rc) in enumerate(
        zip(result["precision_at_radius"], result["recall_at_radius"], strict=True)
    ):
        lines.append(f"{r:>6}  {p:9.6f}  {rc:6.4f}")
    lines.append(
        f"(empty retrieved set counts as precision 0; {result['num_queries_without_relevant']} "
        "queries without any relevant item are excluded from recall)"
    )
    if "pr_at_n" in result:
        lines += ["", "     N  precision  recall"]
        for n, p, rc in zip(
            result["pr_at_n"], result["precision_at_n"], result["recall_at_n"], strict=True
        ):
            lines.append(f"{n:>6}  {p:9.6f}  {rc:6.4f}")
    return "\n".join(lines)


def execute(args: argparse.Namespace) -> int:
    from bench.evaluation.retrieval import evaluate_retrieval

    query = _load(args.query_codes, "--query-codes")
    db = _load(args.db_codes, "--db-codes")
    query_labels = _load(args.query_labels, "--query-labels")
    db_labels = _load(args.db_labels, "--db-labels")
    _check_codes(query, "--query-codes")
    _check_codes(db, "--db-codes")
    if query.shape[1] != db.shape[1]:
        raise UserError(
            f"--query-codes has {query.shape[1]} bits but --db-codes has {db.shape[1]}; "
            "bit counts must be equal"
        )
    _check_labels(query_labels, "--query-labels", query.shape[0], "--query-codes")
    _check_labels(db_labels, "--db-labels", db.shape[0], "--db-codes")
    if query_labels.ndim == 2 and db_labels.ndim == 2 and query_labels.shape[1] != db_labels.shape[1]:
        raise UserError(
            f"--query-labels has {query_labels.shape[1]} columns but --db-labels has "
            f"{db_labels.shape[1]}; label widths must be equal"
        )
    q_signs, db_signs, code_format = _sign_codes(query, db)
    try:
        result = evaluate_retrieval(
            q_signs,
            db_signs,
            query_labels,
            db_labels,
            topk=args.topk,
            zero_relevant="drop" if args.drop_zero_relevant else "zero",
            pr_at_n=args.pr_at_n,
        )
    except ValueError as error:
        raise UserError(str(error)) from None
    result["code_format"] = code_format
    print(json.dumps(result) if args.json else _table(result))
    return 0

