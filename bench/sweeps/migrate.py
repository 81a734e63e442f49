"""Rewrite stored records into the current format without retraining (`bench records migrate`).

Schema 1 records were pretty-printed JSON (`<id>.json`) that named the split file by the
absolute path of the machine that made them, and whose failure tracebacks carried that
machine's folders. Migration turns each into schema 2 (`<id>.json.gz`, see bench.runs.records):

- `split.path` becomes relative to the results folder ("splits/<file>.npz");
- a traceback's folders become `<repo>/` and `<python>/`;
- a record made under a torch other than the one whose module repr the legacy architecture
  tokens were taken from (bench.runs.identity) gets `identity.run_id`, the id the canonical scheme
  gives its spec and configuration, when that differs from its stored id. The stored id and
  the file name stay, so the report and every table keep their rows; `bench run` finds the
  record under the canonical id through this field.

Nothing else changes: metrics, history and every number the report reads are carried over
as parsed, and each rewritten record is read back and compared before its old file is
removed. Every write is atomic (temp file, fsync, rename) and the old file is removed only
after the new one is complete, so a migration killed at any moment leaves every record
readable (at worst both files, where readers take the new one); a second run completes the
work, and a run with nothing to do changes nothing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from bench.runs.records import (
    LEGACY_SUFFIX,
    RECORD_SCHEMA,
    RECORD_SUFFIX,
    CorruptRecord,
    portable_text,
    read_record,
    record_stem,
    relative_to_results,
    write_record,
)

# The torch under which run ids hashed `repr(module)` with the tokens bench.runs.identity keeps.
LEGACY_TOKEN_TORCH = "2.14.1"


@dataclasses.dataclass
class MigrationReport:
    rewritten: list[str] = dataclasses.field(default_factory=list)
    current: int = 0
    leftovers_removed: list[str] = dataclasses.field(default_factory=list)
    mapped_ids: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    unreadable: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.rewritten)} rewritten, {self.current} already current, "
                f"{len(self.leftovers_removed)} leftover schema-1 files removed, "
                f"{len(self.mapped_ids)} ids mapped, {len(self.unreadable)} unreadable (left as they are)")


def run_folders(results_dir: Path) -> list[Path]:
    """Every `runs` folder under the results folder (the runs and the tuning trials)."""
    results_dir = Path(results_dir)
    return sorted(p for p in results_dir.rglob("runs") if p.is_dir())


def canonical_run_id(record: dict[str, Any]) -> str | None:
    """The id the current scheme gives the record's spec and configuration (None when its
    dataset card is not known here)."""
    from bench.data.loading import load_card
    from bench.errors import UserError
    from bench.runs.spec import RunSpec, run_id

    spec = dict(record["spec"])
    spec["overrides"] = tuple(sorted((spec.get("overrides") or {}).items()))
    try:
        run_spec = RunSpec(**spec)
        return run_id(run_spec, record["config"], load_card(run_spec.dataset))
    except (UserError, TypeError):
        return None


def _torch_release(record: dict[str, Any]) -> str:
    return str((record.get("environment") or {}).get("torch") or "").split("+", 1)[0]


def migrated(record: dict[str, Any], results_dir: Path) -> tuple[dict[str, Any], str | None]:
    """(the record in the current schema, the canonical id if it was mapped)."""
    out = {key: value for key, value in record.items() if not key.startswith("_")}
    out["schema"] = RECORD_SCHEMA
    split = out.get("split")
    if isinstance(split, dict) and split.get("path"):
        out["split"] = {**split, "path": relative_to_results(split["path"], results_dir)}
    if isinstance(out.get("traceback"), str):
        out["traceback"] = portable_text(out["traceback"])
    mapped = None
    if _torch_release(out) not in ("", LEGACY_TOKEN_TORCH) and "identity" not in out:
        canonical = canonical_run_id(out)
        if canonical is not None and canonical != out["run_id"]:
            out["identity"] = {"run_id": canonical, "scheme": "bench.runs.identity canonical form",
                               "stored_id_from": f"torch {_torch_release(out)} module repr"}
            mapped = canonical
    return out, mapped


def migrate(results_dir: Path, dry_run: bool = False) -> MigrationReport:
    report = MigrationReport()
    for folder in run_folders(results_dir):
        report.current += sum(1 for _ in folder.rglob("*" + RECORD_SUFFIX))
        for legacy in sorted(folder.rglob("*" + LEGACY_SUFFIX)):
            target = legacy.with_name(record_stem(legacy) + RECORD_SUFFIX)
            if target.exists():  # an interrupted migration: the new file is complete
                try:
                    read_record(target)
                except CorruptRecord:
                    report.unreadable.append(str(target))
                    continue
                report.leftovers_removed.append(str(legacy))
                if not dry_run:
                    legacy.unlink()
                continue
            try:
                record = read_record(legacy)
            except CorruptRecord:
                report.unreadable.append(str(legacy))
                continue
            new, mapped = migrated(record, results_dir)
            if mapped:
                report.mapped_ids.append((record["run_id"], mapped))
            report.rewritten.append(str(legacy))
            if dry_run:
                continue
            write_record(target, new)
            if read_record(target) != new:  # pragma: no cover - a disk that lies
                raise OSError(f"{target} does not read back as written")
            legacy.unlink()
    return report
