"""Run records: one gzip-compressed compact JSON file per run, written atomically, validated
when read.

A record holds everything needed to trust or redo its numbers: the spec and the fully
resolved configuration, the split digest, metrics, per-epoch history, timings, the code
version (git commit and dirty flag) and the environment. Nothing in it names a place on the
machine that made it: the split file is named relative to the results folder.

Format (record schema 2): `<run id>.json.gz`, the record as JSON with sorted keys and no
whitespace, gzip level 9 with a zero timestamp. Compression keeps every float exact (the
per-query APs and the class similarity included) at about a third of the size of the
pretty-printed JSON of schema 1 (`<run id>.json`), which is still read;
`python -m bench records migrate` rewrites such records in place (`bench.sweeps.migrate`).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any

from bench import RESULTS_VERSION, __version__
from bench.data.loading import REPO_ROOT
from bench.errors import UserError
from bench.runs.spec import RunSpec

DEFAULT_RESULTS_DIR = REPO_ROOT / "results"
RECORD_SCHEMA = 2
REQUIRED_KEYS = ("schema", "run_id", "status", "spec", "config")
CORRUPT_SUFFIX = ".corrupt"
RECORD_SUFFIX = ".json.gz"
LEGACY_SUFFIX = ".json"  # schema 1: pretty-printed, uncompressed


def record_path(results_dir: Path, spec: RunSpec, run_id: str, runs_folder: str = "runs") -> Path:
    return Path(results_dir) / runs_folder / spec.dataset / spec.method / record_file_name(run_id)


def record_file_name(run_id: str) -> str:
    return f"{run_id}{RECORD_SUFFIX}"


def record_stem(path: Path) -> str:
    """The run id a record file is named after (either suffix)."""
    name = Path(path).name
    for suffix in (RECORD_SUFFIX, LEGACY_SUFFIX):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def legacy_path(path: Path) -> Path:
    """Where the schema-1 file of the record at `path` would be."""
    return Path(path).with_name(record_stem(path) + LEGACY_SUFFIX)


def stored_path(path: Path) -> Path | None:
    """The file that holds the record meant by `path`: the current one, else a schema-1 file
    not migrated yet, else None."""
    path = Path(path)
    if path.exists():
        return path
    old = legacy_path(path)
    return old if old.exists() else None


def record_files(folder: Path) -> list[Path]:
    """Every record file under `folder`, sorted; where a migration was interrupted between
    writing `<id>.json.gz` and removing `<id>.json`, only the new file counts."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    current = set(folder.rglob("*" + RECORD_SUFFIX))
    legacy = {p for p in folder.rglob("*" + LEGACY_SUFFIX)
              if p.with_name(p.name[: -len(LEGACY_SUFFIX)] + RECORD_SUFFIX) not in current}
    return sorted(current | legacy)


def encode_record(payload: Any) -> bytes:
    """Compact, key-sorted JSON, gzip-compressed with no timestamp (same record, same bytes)."""
    text = json.dumps(_clean(payload), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return gzip.compress(text.encode(), compresslevel=9, mtime=0)


def write_record(path: Path, payload: Any) -> None:
    """Write one record atomically in the current format (see `write_bytes_atomic`)."""
    write_bytes_atomic(Path(path), encode_record(payload))


def _clean(value: Any) -> Any:
    """JSON has no NaN/Infinity: store them as null so every record parses everywhere."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json_atomic(path: Path, payload: Any) -> None:
    """Pretty-printed JSON (files people read and diff, such as the gate's baseline), written
    atomically (see `write_bytes_atomic`)."""
    text = json.dumps(_clean(payload), indent=1, sort_keys=True, allow_nan=False) + "\n"
    write_bytes_atomic(Path(path), text.encode())


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a reader (or a crash,
    SIGKILL included) sees either the old file, no file, or the whole new file, never half
    of one. A crash can leave only a hidden `.<name>.<random>.tmp` file, which no reader
    looks at."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        os.fchmod(handle, 0o666 & ~_umask())  # mkstemp's 0600 would hide records from a team
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (a power cut must not lose a finished record)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class CorruptRecord(Exception):
    """A record file that cannot be parsed or lacks required keys."""


STATUSES = ("complete", "failed")


def read_record(path: Path) -> dict[str, Any]:
    """Parse and sanity-check one record; anything unusable raises CorruptRecord naming the
    file (truncated or empty JSON, binary garbage, a JSON value that is not a record)."""
    try:
        raw = Path(path).read_bytes()
        if str(path).endswith(".gz"):
            raw = gzip.decompress(raw)
        data = json.loads(raw.decode())
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptRecord(f"{path}: {error}") from None
    if not isinstance(data, dict):
        raise CorruptRecord(f"{path}: not a run record (a JSON {type(data).__name__}, not an object)")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise CorruptRecord(f"{path}: not a run record (missing {', '.join(missing)})")
    if data["status"] not in STATUSES:
        raise CorruptRecord(f"{path}: unknown status {data['status']!r} (expected complete or failed)")
    if not isinstance(data["spec"], dict):
        raise CorruptRecord(f"{path}: 'spec' is not an object")
    if data["status"] == "complete" and not isinstance(data.get("metrics"), dict):
        raise CorruptRecord(f"{path}: a complete record without metrics")
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


def load_records(results_dir: Path, include_failed: bool = True,
                 runs_folder: str = "runs") -> tuple[list[dict], list[str]]:
    """Every record under results_dir/<runs_folder>, plus a list of problems (corrupt files)."""
    records, problems = [], []
    for path in record_files(Path(results_dir) / runs_folder):
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
    """Refuse (UserError) a results directory this process cannot create and write into,
    including a file standing where it or its `runs/` / `splits/` folder should be. Checked
    before anything trains, so a sweep never computes results it cannot keep."""
    results_dir = Path(results_dir)
    for folder in (results_dir, results_dir / "runs", results_dir / "splits"):
        try:
            if folder.exists() and not folder.is_dir():
                raise NotADirectoryError(20, "a file is in the way")
            folder.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-", delete=True)
            probe.close()
        except OSError as error:
            raise UserError(
                f"results directory {folder} is not writable ({error.strerror or error}); "
                "pass --results DIR"
            ) from None


def portable_text(text: str) -> str:
    """Text for a record (a failure's traceback) without this machine's folders: the
    repository becomes `<repo>/`, the Python installation `<python>/`."""
    folders = {str(Path(sys.prefix)): "<python>", str(Path(sys.base_prefix)): "<python>",
               str(REPO_ROOT): "<repo>"}
    for folder in sorted(folders, key=len, reverse=True):  # a venv inside the repo is <python>
        text = text.replace(folder + os.sep, folders[folder] + "/")
    return text


PRIVATE_DATA_FOLDER = "<data-root>"


def portable_data_identity(identity: str, standard_folders: Sequence[str]) -> str:
    """The data source as a record names it (`split.data`), without this machine's folders. A
    card's standard install folder (its search paths, e.g. the Debian package's) is the same on
    every machine and stays, so a record still says which copy it read; any other absolute
    folder (`--data-root`, `$BENCH_DATA`) is one machine's and becomes `<data-root>`. The data
    itself is pinned by the split digest and the generated cards' sha256, not by the folder.
    An identity is a folder, a JSON object (generated cards, documents) or a plain label."""
    def portable(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: portable(item) for key, item in value.items()}
        if isinstance(value, list):
            return [portable(item) for item in value]
        if not isinstance(value, str):
            return value
        value = portable_text(value)
        if not os.path.isabs(value) or any(PurePath(value).is_relative_to(standard)
                                           for standard in standard_folders):
            return value
        return PRIVATE_DATA_FOLDER

    try:
        parsed = json.loads(identity)
    except ValueError:
        return portable(identity)
    kept = portable(parsed)  # re-serialised only when a folder changed, so others stay as written
    return identity if kept == parsed else json.dumps(kept, sort_keys=True, separators=(",", ":"))


def relative_to_results(path: str | Path, results_dir: Path | None = None) -> str:
    """A file under the results folder named relative to it ("splits/x.npz"), so a record
    reads the same on every machine; a file elsewhere keeps only its name."""
    if not path:
        return ""
    path = Path(path)
    if results_dir is not None:
        try:
            return path.resolve().relative_to(Path(results_dir).resolve()).as_posix()
        except ValueError:
            pass
    parent = path.parent.name
    return f"{parent}/{path.name}" if parent == "splits" else path.name


_GIT_CACHE: dict[str, Any] = {}


def code_version() -> dict[str, Any]:
    """Git commit and whether the tracked code differs from it (cached per process). The tuned
    files (bench/tuned/) are data that `bench tune` itself rewrites, and a tuned run's record
    carries its file's sha256, so they do not make the code dirty."""
    if not _GIT_CACHE:
        def git(*args: str) -> str:
            return subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()

        try:
            commit = git("rev-parse", "HEAD")
            dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "bench", "methods",
                             "datasets", "pyproject.toml", ":(exclude)bench/tuned"))
        except (OSError, subprocess.SubprocessError):
            commit, dirty = None, None
        _GIT_CACHE.update(
            commit=commit, dirty=dirty, package_version=__version__, results_version=RESULTS_VERSION
        )
    return dict(_GIT_CACHE)


def cpu_model() -> str:
    """The processor's model name (Linux /proc/cpuinfo; elsewhere what `platform` knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
        "mkldnn": bool(torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled),
        # CPU kernels differ by instruction set, so float results on CPU are bitwise
        # reproducible only on the same kind of processor: record which one this was.
        "cpu": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # Wall times are comparable only at similar load: keep the 1/5/15-minute load average
        # as the run ended beside them (the run log holds the load at each sweep's start).
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    return info
