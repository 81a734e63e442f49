"""Run records: one JSON file per run, written atomically, validated when read.

A record holds everything needed to trust or redo its numbers: the spec and the fully
resolved configuration, the split digest, metrics, per-epoch history, timings, the code
version (git commit and dirty flag) and the environment.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import RESULTS_VERSION, __version__
from bench.data import REPO_ROOT
from bench.errors import UserError
from bench.spec import RunSpec

DEFAULT_RESULTS_DIR = REPO_ROOT / "results"
RECORD_SCHEMA = 1
REQUIRED_KEYS = ("schema", "run_id", "status", "spec", "config")
CORRUPT_SUFFIX = ".corrupt"


def record_path(results_dir: Path, spec: RunSpec, run_id: str) -> Path:
    return Path(results_dir) / "runs" / spec.dataset / spec.method / f"{run_id}.json"


def _clean(value: Any) -> Any:
    """JSON has no NaN/Infinity: store them as null so every record parses everywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a reader (or a crash)
    never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(_clean(payload), stream, indent=1, sort_keys=True, allow_nan=False)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CorruptRecord(Exception):
    """A record file that cannot be parsed or lacks required keys."""


def read_record(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptRecord(f"{path}: {error}") from None
    if not isinstance(data, dict) or any(key not in data for key in REQUIRED_KEYS):
        raise CorruptRecord(f"{path}: not a run record (missing {', '.join(REQUIRED_KEYS)})")
    return data


def set_aside(path: Path) -> Path:
    """Move a corrupt record out of the way (never delete it) so its run can be redone."""
    target = Path(str(path) + CORRUPT_SUFFIX)
    n = 1
    while target.exists():
        target = Path(f"{path}{CORRUPT_SUFFIX}.{n}")
        n += 1
    os.replace(path, target)
    return target


def load_records(results_dir: Path, include_failed: bool = True) -> tuple[list[dict], list[str]]:
    """Every record under results_dir/runs, plus a list of problems (corrupt files)."""
    records, problems = [], []
    runs = Path(results_dir) / "runs"
    for path in sorted(runs.rglob("*.json")) if runs.is_dir() else []:
        try:
            record = read_record(path)
        except CorruptRecord as error:
            problems.append(str(error))
            continue
        if include_failed or record["status"] == "complete":
            record["_path"] = str(path)
            records.append(record)
    return records, problems


def check_writable(results_dir: Path) -> None:
    results_dir = Path(results_dir)
    try:
        results_dir.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=results_dir, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as error:
        raise UserError(
            f"results directory {results_dir} is not writable ({error.strerror or error}); "
            "pass --results DIR"
        ) from None


_GIT_CACHE: dict[str, Any] = {}


def code_version() -> dict[str, Any]:
    """Git commit and whether the tracked code differs from it (cached per process)."""
    if not _GIT_CACHE:
        def git(*args: str) -> str:
            return subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()

        try:
            commit = git("rev-parse", "HEAD")
            dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "bench", "methods",
                             "datasets", "pyproject.toml"))
        except (OSError, subprocess.SubprocessError):
            commit, dirty = None, None
        _GIT_CACHE.update(
            commit=commit, dirty=dirty, package_version=__version__, results_version=RESULTS_VERSION
        )
    return dict(_GIT_CACHE)


def environment(device: str) -> dict[str, Any]:
    import numpy
    import torch

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info
