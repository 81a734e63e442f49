"""The seed as the unit of replication: `split_seed: per-seed` (or `--split-seed per-seed`)
gives each seed its own split; fixed-split runs keep their ids, per-seed runs form one table."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import UserError
from bench.runs.records import read_record
from bench.runs.spec import RunSpec, resolve_config, run_id


def identify(spec: RunSpec) -> str:
    return run_id(spec, resolve_config(spec))


def test_fixed_split_ids_do_not_move_and_per_seed_ids_differ() -> None:
    fixed = RunSpec("csq", "fashion-mnist-pairs", 16, 0, "harmonised")
    assert "split_rule" not in fixed.to_dict()
    assert identify(fixed) == "csq-16b-s0-harmonised-d3af103377"  # a committed record's id
    per_seed = RunSpec("csq", "fashion-mnist-pairs", 16, 0, "harmonised", split_rule="per-seed")
    assert per_seed.to_dict()["split_rule"] == "per-seed"
    assert identify(per_seed) != identify(fixed)
    assert RunSpec.from_dict(per_seed.to_dict()) == per_seed


def test_a_per_seed_split_follows_the_seed() -> None:
    with pytest.raises(UserError, match="split_seed = seed"):
        RunSpec("csq", "synthetic", 16, seed=3, split_seed=0, split_rule="per-seed")
    with pytest.raises(UserError, match="split rule 'random' is not valid"):
        RunSpec("csq", "synthetic", 16, split_rule="random")


def test_per_seed_runs_train_on_their_own_split(tmp_path: Path, one_thread, capsys) -> None:
    assert main(["run", "--methods", "csq", "--dataset", "synthetic", "--bits", "16", "--epochs", "1",
                 "--seeds", "0,1", "--split-seed", "per-seed", "--results", str(tmp_path), "--quiet"]) == 0
    records = [read_record(p) for p in sorted((tmp_path / "runs" / "synthetic" / "csq").glob("*.json.gz"))]
    assert sorted((r["spec"]["seed"], r["split"]["seed"], r["spec"]["split_rule"]) for r in records) == [
        (0, 0, "per-seed"), (1, 1, "per-seed")]
    assert len({r["split"]["digest"] for r in records}) == 2

    from bench.report.claims import PER_SEED_SPLIT, replication_unit
    from bench.report.groups import scope_of

    assert len({scope_of(r) for r in records}) == 1  # one table over the seeds
    assert scope_of(records[0]).describe(with_digest=True).count("per-seed") == 1  # said once
    import pandas as pd

    assert replication_unit(pd.DataFrame({"record": records})) == PER_SEED_SPLIT
    fixed = main(["run", "--methods", "csq", "--dataset", "synthetic", "--bits", "16", "--epochs", "1",
                  "--seeds", "0", "--results", str(tmp_path), "--quiet"])
    assert fixed == 0
    scopes = {scope_of(read_record(p)) for p in (tmp_path / "runs" / "synthetic" / "csq").glob("*.json.gz")}
    assert len(scopes) == 2  # the fixed split's table is another table
    both = [read_record(p) for p in sorted((tmp_path / "runs" / "synthetic" / "csq").glob("*.json.gz"))]
    assert replication_unit(pd.DataFrame({"record": both})) == (
        "seed (init + data order, and the split in the per-seed tables; elsewhere split fixed (0))")


@pytest.mark.parametrize("value, expected", [("x", "--split-seed 'x' is not valid"),
                                             ("-1", "--split-seed '-1' is not valid")])
def test_bad_split_seed_is_one_line(value: str, expected: str, capsys) -> None:
    assert main(["run", "--methods", "csq", "--split-seed", value, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]


def test_experiment_split_seed_key(tmp_path: Path) -> None:
    from bench.sweeps.experiments import load_experiment

    path = tmp_path / "e.yaml"
    path.write_text("name: e\nmethods: [csq]\nsplit_seed: per-seed\n")
    assert load_experiment(str(path)).split_seed == "per-seed"
    path.write_text("name: e\nmethods: [csq]\nsplit_seed: sometimes\n")
    with pytest.raises(UserError, match="'split_seed' must be a non-negative integer or 'per-seed'"):
        load_experiment(str(path))
