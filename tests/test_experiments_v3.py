"""Reproduction v3's experiments (issue 32) must land in one table of the report per card: an
ablation is compared with its table's own CRH cell only when everything but the ablated setting
is the table's (card, protocol, epochs, split rule, seeds), and the three primary tables share
rows, seeds and split rule, so that every card is graded on the same design."""

from __future__ import annotations

import pytest

from bench.runs.spec import PER_SEED
from bench.sweeps.experiments import load_experiment

PRIMARY = ("main-table-v3", "main-table-multi-v3", "main-table-pairs-v3")
ABLATIONS = {"crh-ablations-v3": "main-table-v3", "crh-pairs-reassign-v3": "main-table-pairs-v3"}


def setting(name: str) -> tuple:
    e = load_experiment(name)
    return e.dataset, e.protocol, e.split_seed, dict(e.settings), tuple(e.seeds)


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_an_ablation_is_run_in_its_tables_setting(ablation: str) -> None:
    table = load_experiment(ABLATIONS[ablation])
    ablated = load_experiment(ablation)
    assert setting(ablation) == setting(table.name)
    assert set(ablated.bits) <= set(table.bits) and tuple(ablated.methods) == ("crh",)
    # Only the ablated settings are listed: the default side is the table's own cell.
    assert ablated.grid and all(entry for entry in ablated.grid)


def test_the_primary_tables_share_rows_seeds_and_split_rule() -> None:
    tables = [load_experiment(name) for name in PRIMARY]
    for table in tables:
        assert table.split_seed == PER_SEED and len(table.seeds) >= 10 and table.protocol == "tuned"
        assert tuple(table.methods) == tuple(tables[0].methods) and tuple(table.bits) == (16, 32, 64)
    assert len({table.dataset for table in tables}) == len(PRIMARY)
