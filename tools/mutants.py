"""`make mutants`: prove that the tests and the regression gate catch the breakages that
matter.

Each mutant of `tools/mutants.yaml` is applied to a temporary copy of the tree (the files git
tracks or would track, without results/ and reports/; `.venv` is a symlink, and numba's
cached kernels are copied so that unchanged kernels need no recompiling). In that copy the
fast tests run (`pytest -x`, in the order listed) and then the gate on the mutant's methods
(`python -m bench check --methods ...`). A table says which of them caught each mutant. An
unmutated copy runs the same checks (on every gate method listed) as the control: if it fails,
no verdict means anything.

Exit code: 0 every mutant caught; 1 some mutant survived (or the control failed); 2 a mutant
no longer applies to the code (its snippet is missing or ambiguous: update the list).

    python tools/mutants.py [--workers 2] [--only NAME,...] [--no-gate] [--list]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
LIST = Path(__file__).resolve().parent / "mutants.yaml"
LEFT_OUT = ("results/", "reports/", ".venv/")
STEP_TIMEOUT = 900
CONTROL = "(control: no mutant)"


class Stale(Exception):
    """A mutant's snippet is not in its file exactly once: the code moved."""


@dataclasses.dataclass
class Mutant:
    name: str
    what: str
    gate: list[str]
    edits: list[dict[str, str]]


@dataclasses.dataclass
class Verdict:
    name: str
    tests: str  # "FAILED <first failing test>" / "passed" / "timeout"
    gate: str  # "FAILED: <first failing row>" / "passed" / "skipped" / "error (exit N)"
    seconds: float

    @property
    def tests_caught(self) -> bool:
        return self.tests != "passed"

    @property
    def gate_caught(self) -> bool:
        return not self.gate.startswith(("passed", "skipped"))

    @property
    def caught(self) -> bool:
        return self.tests_caught or self.gate_caught


def load(path: Path = LIST) -> tuple[list[str], list[Mutant]]:
    data = yaml.safe_load(path.read_text())
    mutants = [Mutant(m["name"], m["what"], list(m.get("gate") or []), list(m["edits"]))
               for m in data["mutants"]]
    return list(data["fast_tests"]), mutants


def check_applies(mutant: Mutant, root: Path = REPO) -> None:
    """Raise Stale unless every edit's snippet occurs exactly once in its file."""
    for edit in mutant.edits:
        path = root / edit["file"]
        text = path.read_text() if path.exists() else ""
        count = text.count(edit["old"])
        if count != 1:
            where = "not found" if count == 0 else f"found {count} times"
            raise Stale(f"mutant '{mutant.name}' no longer applies: {edit['old'].strip()!r} {where} "
                        f"in {edit['file']}")


def apply(mutant: Mutant, root: Path) -> None:
    check_applies(mutant, root)
    for edit in mutant.edits:
        path = root / edit["file"]
        path.write_text(path.read_text().replace(edit["old"], edit["new"], 1))


def tree_files() -> list[str]:
    """What a checkout holds: tracked and untracked-but-not-ignored files that exist."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, text=True, check=True).stdout
    names = sorted({name for name in listed.split("\0") if name})
    return [name for name in names if not name.startswith(LEFT_OUT) and (REPO / name).is_file()]


def copy_tree(target: Path) -> None:
    for name in tree_files():
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, destination)  # keeps mtimes: numba's cache checks them
    for cache in REPO.glob("bench/__pycache__/*.nb[ic]"):
        destination = target / "bench" / "__pycache__" / cache.name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(cache, destination)
    os.symlink(REPO / ".venv", target / ".venv")


def first_failure(output: str) -> str:
    for line in output.splitlines():
        match = re.match(r"^(FAILED|ERROR) (\S+)", line)
        if match:
            return match.group(2)
    tail = [line for line in output.splitlines() if line.strip()]
    return tail[-1][:100] if tail else "no output"


def run_tests(root: Path, tests: list[str], python: str) -> str:
    command = [python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-rfE", *tests]
    try:
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=STEP_TIMEOUT,
                              env=child_env())
    except subprocess.TimeoutExpired:
        return "timeout"
    if done.returncode == 0:
        return "passed"
    return f"FAILED {first_failure(done.stdout + done.stderr)}"


def run_gate(root: Path, methods: list[str], python: str) -> str:
    if not methods:
        return "skipped"
    command = [python, "-m", "bench", "check", "--methods", ",".join(methods), "--jobs", "1"]
    try:
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=STEP_TIMEOUT,
                              env=child_env())
    except subprocess.TimeoutExpired:
        return "timeout"
    # Rows of the gate's table: method metric baseline now change tolerance verdict...
    rows = [line.split() for line in done.stdout.splitlines()]
    changes = ", ".join(f"{row[0]} mAP {row[4]} (tol {row[5]})" for row in rows
                        if len(row) >= 7 and row[1] == "mAP")
    if done.returncode == 0:
        return f"passed: {changes}"
    if done.returncode == 1:
        failing = [" ".join(row[:2] + row[4:]) for row in rows
                   if "FAIL" in row and len(row) >= 7 and row[1] in ("mAP", "mAP_tie_aware", "p_at_r2")]
        other = [" ".join(row) for row in rows if row and row[0] != "regression" and "FAIL:" in row]
        return "FAILED: " + "; ".join(failing + other or ["?"]) + (f" [{changes}]" if changes else "")
    last = (done.stderr or done.stdout).strip().splitlines()
    return f"error (exit {done.returncode}): {last[-1][:80] if last else ''}"


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def evaluate(mutant: Mutant | None, tests: list[str], gate: list[str], use_gate: bool) -> Verdict:
    """Copy the tree, apply the mutant (None: the control), run the tests and the gate."""
    started = time.perf_counter()
    name = mutant.name if mutant else CONTROL
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name if mutant else 'control'}-") as tmp:
        root = Path(tmp)
        copy_tree(root)
        if mutant:
            apply(mutant, root)
        python = str(root / ".venv" / "bin" / "python")
        tests_verdict = run_tests(root, tests, python)
        gate_verdict = run_gate(root, gate, python) if use_gate else "skipped"
    return Verdict(name, tests_verdict, gate_verdict, time.perf_counter() - started)


def print_table(verdicts: list[Verdict], mutants: dict[str, Mutant]) -> None:
    for v in verdicts:
        if v.name in mutants:
            by = [what for what, hit in (("fast tests", v.tests_caught), ("gate", v.gate_caught)) if hit]
            head = f"caught by {' and '.join(by)}" if by else "NOT CAUGHT"
            print(f"{v.name}: {head}  ({v.seconds:.0f} s) - {mutants[v.name].what}")
        else:
            print(f"{v.name}  ({v.seconds:.0f} s)")
        print(f"    fast tests: {v.tests}")
        print(f"    gate:       {v.gate}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="mutants checked at once (default 2)")
    parser.add_argument("--only", help="comma-separated mutant names")
    parser.add_argument("--no-gate", action="store_true", help="run the fast tests only")
    parser.add_argument("--list", action="store_true", help="list the mutants and check they apply")
    args = parser.parse_args(argv)
    tests, mutants = load()
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {m.name for m in mutants}
        if unknown:
            print(f"error: unknown mutants {sorted(unknown)}", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m.name in wanted]
    try:
        for mutant in mutants:
            check_applies(mutant)
    except Stale as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.list:
        for mutant in mutants:
            print(f"{mutant.name:28s} {mutant.what}  (gate: {','.join(mutant.gate) or '-'})")
        return 0
    started = time.perf_counter()
    control_gate = sorted({m for mutant in mutants for m in mutant.gate})
    print(f"{len(mutants)} mutants and the control, {args.workers} at a time", flush=True)
    verdicts: dict[str, Verdict] = {}
    jobs: list[Mutant | None] = [None, *mutants]  # None: the control (the tree as it is)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        futures = [pool.submit(evaluate, job, tests, job.gate if job else control_gate, not args.no_gate)
                   for job in jobs]
        for future in concurrent.futures.as_completed(futures):
            verdict = future.result()
            verdicts[verdict.name] = verdict
            state = "caught" if verdict.caught else "SURVIVED"
            if verdict.name == CONTROL:
                state = "FAILED its own checks" if verdict.caught else "passed"
            print(f"  {verdict.name}: {state} ({verdict.seconds:.0f} s)", flush=True)
    ordered = [verdicts[CONTROL]] + [verdicts[m.name] for m in mutants]
    print()
    print_table(ordered, {m.name: m for m in mutants})
    minutes = (time.perf_counter() - started) / 60
    if verdicts[CONTROL].caught:
        print(f"\nthe unmutated tree fails its own checks, so no verdict above means anything "
              f"({minutes:.1f} min)", file=sys.stderr)
        return 1
    survived = [v.name for v in ordered[1:] if not v.caught]
    print(f"\n{len(mutants) - len(survived)} of {len(mutants)} mutants caught in {minutes:.1f} min"
          + (f"; SURVIVED: {', '.join(survived)}" if survived else ""))
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
