"""Methods from outside the repository: a package declaring an entry point in the group
`hashbench.methods` is listed, runs through the one loop, and its records name it.

The test builds a tiny plugin distribution in a temporary folder (a module and a `.dist-info`
folder with its entry point, which is all `importlib.metadata` reads) and puts it on the path,
for this process and for the worker processes a run may start."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import methods
from bench.cli import main
from bench.runs.records import read_record

PLUGIN = '''
import torch

from methods.base import HashMethod, Param


class ToyCenters(HashMethod):
    """Random +-1 class centers, codes pulled to them by a squared error."""

    name = "toy-centers"
    summary = "test plugin: random class centers, squared error to tanh(h)"
    reference = "tests/test_plugins.py"
    params = {"pull": Param(1.0, "weight of the pull to the center", source="test plugin")}

    def __init__(self, config, task):
        super().__init__(config, task)
        generator = torch.Generator().manual_seed(task.seed)
        bits = torch.randint(0, 2, (task.num_classes, task.bits), generator=generator)
        self.centers = (bits * 2 - 1).float().to(task.device)

    def loss(self, h, labels, ctx):
        targets = torch.sign(labels @ self.centers)
        return float(self.config["pull"]) * (torch.tanh(h) - targets).pow(2).mean()

    def class_centers(self):
        return self.centers
'''


def write_plugin(folder: Path, name: str, version: str, entry: str, code: str) -> None:
    package = name.replace("-", "_")
    (folder / package).mkdir(parents=True)
    (folder / package / "__init__.py").write_text(code)
    info = folder / f"{package}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[hashbench.methods]\n{entry}\n")


def reset_registry() -> None:
    methods._REGISTRY.clear()
    methods._SOURCES.clear()
    methods._PROBLEMS.clear()


@pytest.fixture
def on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PYTHONPATH", str(site))
    reset_registry()
    yield site
    for module in [m for m in sys.modules if m.startswith(("hb_toy", "hb_clash", "hb_broken"))]:
        del sys.modules[module]
    monkeypatch.undo()
    reset_registry()


def test_a_plugin_method_is_listed_and_runs_end_to_end(on_path: Path, tmp_path: Path, capsys,
                                                       one_thread) -> None:
    write_plugin(on_path, "hb-toy", "0.3", "toy = hb_toy:ToyCenters", PLUGIN)
    assert main(["list", "methods"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "toy-centers" in x)
    assert "[plugin hb-toy 0.3]" in line
    assert main(["run", "--methods", "toy-centers", "--dataset", "fashion-mnist-mini", "--bits", "16",
                 "--epochs", "1", "--results", str(tmp_path / "results"), "--quiet"]) == 0
    (path,) = (tmp_path / "results" / "runs" / "fashion-mnist-mini" / "toy-centers").glob("*.json.gz")
    record = read_record(path)
    assert record["status"] == "complete"
    assert record["method_source"] == {"package": "hb-toy", "version": "0.3",
                                       "entry_point": "hb_toy:ToyCenters"}
    assert 0.0 <= record["metrics"]["mAP"] <= 1.0


def test_a_builtin_method_record_names_no_plugin() -> None:
    """Built-in methods keep their records (and run ids) as before: no plugin field."""
    from bench.runs.spec import RunSpec, resolve_config, run_id

    reset_registry()
    assert methods.method_source("csq").builtin
    spec = RunSpec("csq", "fashion-mnist-pairs", 16, 0, "harmonised")
    assert run_id(spec, resolve_config(spec)) == "csq-16b-s0-harmonised-d3af103377"


def test_a_plugin_changes_its_run_ids_with_its_version(on_path: Path) -> None:
    """A new plugin version is other code: its runs get other ids (built-in ids never move)."""
    from bench.runs.spec import RunSpec, resolve_config, run_id

    def identify() -> str:
        spec = RunSpec("toy-centers", "synthetic", 16)
        return run_id(spec, resolve_config(spec))

    write_plugin(on_path, "hb-toy", "0.3", "toy = hb_toy:ToyCenters", PLUGIN)
    first = identify()
    info = on_path / "hb_toy-0.3.dist-info"
    info.rename(on_path / "hb_toy-0.4.dist-info")
    (on_path / "hb_toy-0.4.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: hb-toy\nVersion: 0.4\n")
    reset_registry()
    assert identify() != first


def test_a_plugin_may_not_take_a_builtin_name(on_path: Path) -> None:
    write_plugin(on_path, "hb-clash", "1.0", "clash = hb_clash:Clash",
                 PLUGIN.replace('"toy-centers"', '"csq"').replace("ToyCenters", "Clash"))
    assert "csq" in methods.available_methods()
    (problem,) = methods.plugin_problems()
    assert "method name 'csq' of plugin hb-clash 1.0 is taken (built in)" in problem
    assert methods.method_source("csq").builtin  # the built-in one stays


def test_a_broken_plugin_is_reported_and_the_rest_work(on_path: Path, capsys) -> None:
    write_plugin(on_path, "hb-broken", "0.1", "broken = hb_broken:Missing", "x = 1\n")
    assert main(["list", "methods"]) == 0
    out = capsys.readouterr().out
    assert "warning: plugin entry point 'broken = hb_broken:Missing' (plugin hb-broken 0.1) not loaded" in out
    assert "crh" in out
    assert main(["run", "--methods", "missing", "--dry-run"]) == 2
