"""Rule R3 of the fair tuning (issue 26): after an edge hit, the round's range widens and every
method of the round gets the same extra trials, kept in the tuned file so that a replay
searches the round as it was searched. Trials train tiny_cnn on the synthetic card, 1 epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bench.cli import main
from bench.errors import UserError
from bench.tuning.widening import Round, edge_evidence, edge_reach, read_rounds, widened_round

FAST = ["--dataset", "synthetic", "--epochs", "1", "--bits", "16", "--device", "cpu", "--quiet"]
LR = ("log", 1e-4, 1e-2)


@pytest.fixture(autouse=True)
def tuned_dir(tmp_path, monkeypatch):
    """Never write into the repository's bench/tuned/."""
    folder = tmp_path / "tuned"
    monkeypatch.setenv("BENCH_TUNED_DIR", str(folder))
    return folder


def tune(results: Path, output: Path, trials: int, *extra: str) -> int:
    return main(["tune", "--methods", "csq", "--trials", str(trials), *FAST, "--results", str(results),
                 "--output", str(output), *extra])


def trial_records(results: Path) -> set[str]:
    return {p.name for p in (results / "tuning" / "runs" / "synthetic" / "csq").glob("*.json.gz")}


def test_a_round_widens_from_its_own_ranges_and_asks_for_extra_trials() -> None:
    spaces = {"csq": {"lr": LR, "lambda_q": ("log", 1e-5, 1.0)},
              "dpn": {"lr": LR, "margin": ("float", 0.0, 1.0)}}
    first = widened_round(None, spaces, [("lr", "high")], trials=32, searched=24, after="x")
    assert first.ranges == {"lr": ("log", 1e-4, 0.03)}  # x3, stored as 0.03
    assert first.space(spaces["dpn"]) == {"lr": ("log", 1e-4, 0.03), "margin": ("float", 0.0, 1.0)}
    again = widened_round(first, spaces, [("lr", "high")], trials=40, searched=24, after="y")
    assert again.ranges["lr"] == ("log", 1e-4, 0.09)  # from the round's range, not the shared one
    # Opposite edges of one knob hit by two methods in one round: both move (the multi-label card's
    # scale, MDS at its bottom and OrthoHash at its top); the second hit must not undo the first.
    both = widened_round(None, spaces, [("lr", "low"), ("lr", "high")], trials=32, searched=24, after="x")
    assert both.ranges["lr"] == ("log", pytest.approx(1e-4 / 3), 0.03)
    with pytest.raises(UserError, match="give more than the 32 it has searched, e.g. 40"):
        widened_round(first, spaces, [("lr", "low")], trials=32, searched=24, after="y")
    with pytest.raises(UserError, match="hard bound"):
        widened_round(None, spaces, [("margin", "low")], trials=32, searched=24, after="y")
    alphas = {"hashnet": {"alpha": ("log", 0.01, 1.0)}, "other": {"alpha": ("log", 0.1, 1.0)}}
    with pytest.raises(UserError, match="different ranges"):
        widened_round(None, alphas, [("alpha", "high")], 32, 24, "y")


def test_a_value_past_the_edge_widens_in_one_round_until_it_is_inside() -> None:
    """An own search carries the wider ranges of the search it was checked from, so its chosen
    value can lie past its length's round (the 100-class CRH at 16 bits: lr 0.0304 against the
    round's top 0.01). One round widens that edge as many x3 steps as the value needs to be off
    the edge (0.01 -> 0.09 here), not one step per round; a value inside the first step's range
    and off its edge takes one step; the low side and a hard bound likewise."""
    spaces = {"crh": {"lr": LR, "margin": ("float", 0.0, 1.0)}, "mds": {"lr": LR}}
    entries = [{"method": "crh", "values": {"lr": 0.0304}, "search_space": {"lr": ["log", 1e-4, 0.09]},
                "round_space": {"lr": list(LR)}, "trials": 40},
               {"method": "mds", "values": {"lr": 0.0142}, "search_space": {"lr": ["log", 1e-4, 0.03]},
                "round_space": {"lr": list(LR)}, "trials": 32}]
    reach = edge_reach(entries, [("lr", "high")], spaces)
    assert reach == {("lr", "high"): 0.0304}  # the farthest of the two
    far = widened_round(None, spaces, [("lr", "high")], 50, 40, "x", reach)
    assert far.ranges == {"lr": ("log", 1e-4, 0.09)} and far.trials == 50
    near = widened_round(None, spaces, [("lr", "high")], 50, 40, "x", {("lr", "high"): 0.0142})
    assert near.ranges == {"lr": ("log", 1e-4, 0.03)}
    assert widened_round(None, spaces, [("lr", "high")], 50, 40, "x").ranges == near.ranges
    low = widened_round(None, spaces, [("lr", "low")], 50, 40, "x", {("lr", "low"): 5e-6})
    # log10 5e-6 = -5.30: within 5 % of the span from the bottom at 1e-4/3, /9 and /27 (-5.43 .. -2,
    # margin 0.17), off it at /81 (-5.91 .. -2, margin 0.20)
    assert low.ranges["lr"][1] == pytest.approx(1e-4 / 81)
    linear = widened_round(None, spaces, [("margin", "high")], 50, 40, "x", {("margin", "high"): 1.6})
    assert linear.ranges["margin"] == ("float", 0.0, 2.25)  # 1.5 then 2.25: 1.6 off the edge
    raised = Round({"margin": ("float", 0.5, 1.0)}, 40, "y")  # a round whose margin floor moved up
    bounded = widened_round(raised, spaces, [("margin", "low")], 50, 40, "x", {("margin", "low"): 0.0})
    assert bounded.ranges["margin"] == ("float", 0.0, 1.0)  # stops at the hard bound 0, no endless loop


def test_the_rounds_command_reaches_an_own_searchs_value_in_one_widening(tmp_path, tuned_dir) -> None:
    """`bench tune --widen lr:high` at a length whose own search chose an lr past its round's top
    (searched on the carried [1e-4, 0.09]): the round it writes holds that value off its edge."""
    from bench.commands.tune import search_rounds
    from bench.data.cards import load_card

    tuned_dir.mkdir()
    (tuned_dir / "synthetic.yaml").write_text(
        "dataset: synthetic\nmethods:\n  crh: {values: {lr: 0.0304}, bits: 16, epochs: 1, trials: 40, "
        "search_space: {lr: [log, 0.0001, 0.09]}, round_space: {lr: [log, 0.0001, 0.01]}}\n")
    rounds = search_rounds("lr:high", load_card("synthetic"), ["crh"], 16, 50, 1, tmp_path / "out.yaml")
    assert rounds["16b-1e"].ranges == {"lr": ("log", 1e-4, 0.09)} and rounds["16b-1e"].trials == 50


def test_a_shared_knob_widens_apart_from_a_namesake() -> None:
    """DPN's hinge margin (log [0.1, 4]) shares only its name with the cosine margin of CRH and
    OrthoHash (the shared [0, 1]): widening the cosine margin leaves DPN's range alone, and a
    DPN margin at its own edge is no evidence for widening the cosine one."""
    cosine, hinge = ("float", 0.0, 1.0), ("log", 0.1, 4.0)
    spaces = {"orthohash": {"lr": LR, "margin": cosine}, "dpn": {"lr": LR, "margin": hinge}}
    wider = widened_round(None, spaces, [("margin", "high")], trials=40, searched=32, after="x")
    assert wider.ranges == {"margin": ("float", 0.0, 1.5)}
    assert wider.space(spaces["orthohash"])["margin"] == ("float", 0.0, 1.5)
    assert wider.space(spaces["dpn"])["margin"] == hinge
    dpn_at_edge = [{"method": "dpn", "values": {"margin": 3.9}, "search_space": {"margin": list(hinge)},
                    "trials": 32},
                   {"method": "orthohash", "values": {"margin": 0.4},
                    "search_space": {"margin": list(cosine)}, "trials": 32}]
    with pytest.raises(UserError, match="no entry of this round has margin at its high edge"):
        edge_evidence(dpn_at_edge, [("margin", "high")], spaces)
    dpn_at_edge[1]["values"]["margin"] = 0.97
    after, _ = edge_evidence(dpn_at_edge, [("margin", "high")], spaces)
    assert after.startswith("orthohash margin 0.97") and "dpn" not in after


def test_a_range_widens_only_after_an_edge_hit() -> None:
    entries = [{"method": "csq", "values": {"lr": 0.0095}, "search_space": {"lr": list(LR)}, "trials": 24},
               {"method": "dpn", "values": {"lr": 0.003}, "search_space": {"lr": list(LR)}, "trials": 20}]
    after, searched = edge_evidence(entries, [("lr", "high")])
    assert after == "csq lr 0.0095 at the high edge of [0.0001, 0.01]" and searched == 24
    with pytest.raises(UserError, match="no entry of this round has lr at its low edge"):
        edge_evidence(entries, [("lr", "low")])


def test_widening_inherits_the_round_adds_the_extra_trials_and_replays(tmp_path) -> None:
    results, output = tmp_path / "results", tmp_path / "synthetic.yaml"
    assert tune(results, output, 3) == 0
    narrow_records = trial_records(results)
    setting = yaml.safe_load(output.read_text())
    assert tune(results, output, 4, "--widen", "lr:high") == 2  # csq's lr is not at an edge
    # Put the chosen lr at the top edge of its range, as OrthoHash's 16-bit search landed.
    setting["methods"]["csq"]["values"]["lr"] = 0.0098
    output.write_text(yaml.safe_dump(setting, sort_keys=False))
    assert tune(results, output, 3, "--widen", "lr:high") == 2  # no extra trials: refused

    assert tune(results, output, 4, "--widen", "lr:high") == 0
    written = yaml.safe_load(output.read_text())
    entry, round_ = written["methods"]["csq"], written["widened"]["16b-1e"]
    assert round_["ranges"] == {"lr": ["log", 0.0001, 0.03]} and round_["trials"] == 4
    assert round_["after"].startswith("csq lr 0.0098 at the high edge")
    assert entry["search_space"]["lr"] == ["log", 0.0001, 0.03] and entry["trials"] == 4
    assert entry["widened_from"]  # the narrow study's three trials were inherited
    assert len(trial_records(results) - narrow_records) == 1  # only the extra trial trained

    # A replay at the old count searches the round as widened: nothing trains, nothing changes.
    before = output.read_bytes()
    assert tune(results, output, 3) == 0
    assert output.read_bytes() == before and len(trial_records(results) - narrow_records) == 1
    assert read_rounds(output)["16b-1e"] == Round({"lr": ("log", 0.0001, 0.03)}, 4, round_["after"])


def test_fidelity_lists_a_method_left_behind_by_a_widened_round(tmp_path) -> None:
    from bench.tuning.fidelity import widening_gaps

    space = "    search_space: {lr: [log, 0.0001, 0.03]}\n    bits: 16\n    epochs: 60\n"
    (tmp_path / "synthetic.yaml").write_text(
        "dataset: synthetic\nmethods:\n"
        "  csq:\n    values: {lr: 0.01}\n    trials: 32\n" + space +
        "  dpn:\n    values: {lr: 0.001}\n    trials: 24\n    search_space: {lr: [log, 0.0001, 0.01]}\n"
        "    bits: 16\n    epochs: 60\n"
        "  hclm:\n    values: {lr: 0.001}\n    trials: 24\n    search_space: {lr: [log, 0.0001, 0.01]}\n"
        "    bits: 32\n    epochs: 60\n"
        "widened:\n  16b-60e: {ranges: {lr: [log, 0.0001, 0.03]}, trials: 32, after: x}\n")
    assert widening_gaps(tmp_path) == [
        "synthetic dpn 16b-60e: 24 trials, lr on the old range; the widened round gives 32 on "
        "{'lr': ('log', 0.0001, 0.03)}"]


def test_a_search_keeps_the_round_that_a_search_beside_it_widened(tmp_path) -> None:
    """Two searches of one card at two budgets run side by side: the one that writes last
    started before the other widened its round, and must not write back the older round."""
    from bench.data.cards import load_card
    from bench.tuning.setting import write_setting
    from bench.tuning.tune import TuneOutcome, TuneRequest

    card, output = load_card("synthetic"), tmp_path / "synthetic.yaml"
    narrow, wide = Round({"lr": ("log", 1e-4, 0.03)}, 32, "a"), Round({"lr": ("log", 1e-4, 0.09)}, 40, "b")
    margin = Round({"margin": ("float", 0.0, 1.5)}, 40, "c")

    def outcome(bits: int) -> TuneOutcome:
        return TuneOutcome("csq", f"s{bits}", tmp_path / "s.db", {"lr": ("log", 1e-4, 0.09)}, {"lr": 0.01},
                           0.5, 3, f"csq-{bits}", None, 40, 0, 0)

    # The 64-bit search widened its round (wide) after the 32-bit one had read the older one.
    write_setting(output, TuneRequest(card, 64, 40, epochs=1, rounds={"64b-1e": wide}), [outcome(64)],
                  tmp_path)
    write_setting(output, TuneRequest(card, 32, 40, epochs=1, rounds={"64b-1e": narrow, "32b-1e": margin}),
                  [outcome(32)], tmp_path)
    assert read_rounds(output) == {"64b-1e": wide, "32b-1e": margin}
    # A search that finishes the older round of its own budget after another process started
    # the next one (64 bits, 32 trials, on the narrow range) leaves the later round in the file.
    write_setting(output, TuneRequest(card, 64, 32, epochs=1, rounds={"64b-1e": narrow}), [outcome(64)],
                  tmp_path)
    assert read_rounds(output)["64b-1e"] == wide


def test_a_namesake_knob_is_no_widening_gap(tmp_path) -> None:
    """A round that widened the cosine margin leaves DPN's hinge margin on DPN's own range:
    the fidelity check must not count DPN as left behind, and must count OrthoHash if it were."""
    from bench.tuning.fidelity import widening_gaps

    round_ = "widened:\n  32b-30e: {ranges: {margin: [float, 0.0, 1.5]}, trials: 40, after: x}\n"
    entry = ("    values: {{margin: 0.5}}\n    trials: 40\n    search_space: {{margin: {space}}}\n"
             "    bits: 32\n    epochs: 30\n")
    (tmp_path / "synthetic.yaml").write_text(
        "dataset: synthetic\nmethods:\n  dpn:\n" + entry.format(space="[log, 0.1, 4.0]")
        + "  orthohash:\n" + entry.format(space="[float, 0.0, 1.5]") + round_)
    assert widening_gaps(tmp_path) == []
    (tmp_path / "synthetic.yaml").write_text(
        "dataset: synthetic\nmethods:\n  dpn:\n" + entry.format(space="[log, 0.1, 4.0]")
        + "  orthohash:\n" + entry.format(space="[float, 0.0, 1.0]") + round_)
    assert widening_gaps(tmp_path) == [
        "synthetic orthohash 32b-30e: 40 trials, margin on the old range; the widened round gives 40 on "
        "{'margin': ('float', 0.0, 1.5)}"]


def test_a_tuned_file_is_merged_under_a_lock(tmp_path) -> None:
    """Two searches of one card ending together: the write waits for the other's merge, so
    the later rename cannot drop the entries written between its read and its write."""
    import threading

    from filelock import FileLock

    from bench.data.cards import load_card
    from bench.tuning.setting import setting_lock, write_setting
    from bench.tuning.tune import TuneOutcome, TuneRequest

    card, output = load_card("synthetic"), tmp_path / "synthetic.yaml"
    outcome = TuneOutcome("csq", "s32", tmp_path / "s.db", {"lr": ("log", 1e-4, 0.03)}, {"lr": 0.01},
                          0.5, 3, "csq-32", None, 24, 0, 0)
    held = FileLock(setting_lock(output, tmp_path))
    held.acquire()
    writer = threading.Thread(target=write_setting,
                              args=(output, TuneRequest(card, 32, 24, epochs=1), [outcome], tmp_path))
    writer.start()
    writer.join(timeout=1.0)
    assert writer.is_alive() and not output.exists()  # waits while another merge holds the file
    held.release()
    writer.join(timeout=30)
    assert not writer.is_alive() and output.exists()


def test_rounds_unite_knob_by_knob() -> None:
    """lr [1e-4, 0.01] with [3e-5, 3e-3] -> [3e-5, 0.01]; a knob of one round only keeps its
    range; the larger trial count wins; a knob searched on two scales cannot be united."""
    first = Round({"lr": ("log", 1e-4, 0.01), "beta": ("log", 0.0333, 10.0)}, 48, "at 32 bits")
    second = Round({"lr": ("log", 3e-5, 3e-3), "scale": ("log", 0.333, 16.0)}, 40, "at 64 bits")
    both = first.united(second)
    assert both.ranges == {"lr": ("log", 3e-5, 0.01), "beta": ("log", 0.0333, 10.0),
                           "scale": ("log", 0.333, 16.0)}
    assert both.trials == 48 and both.after == "at 32 bits; at 64 bits"
    assert Round().united(first).ranges == first.ranges
    with pytest.raises(UserError, match="cannot be united"):
        first.united(Round({"lr": ("float", 0.0, 1.0)}))


def test_carried_trials_stand_beside_the_equal_budget() -> None:
    """Of trials 0-5 with 2 and 3 carried, a budget of 3 is searched trials 0, 1, 4 plus the two
    carried ones; trial 5 (beyond the budget, say from a longer earlier call) is left out."""
    from types import SimpleNamespace

    from bench.tuning.tune import equal_budget

    trials = [SimpleNamespace(number=n, user_attrs={"carried_from": "s top 1"} if n in (2, 3) else {})
              for n in (5, 3, 1, 0, 4, 2)]
    assert [t.number for t in equal_budget(trials, 3)] == [0, 1, 2, 3, 4]


def test_an_own_search_hits_the_edges_of_its_round_not_of_the_union(tmp_path) -> None:
    """An own search on its round's lr [1e-4, 0.01] united with a checked search's [1e-4, 0.03]:
    a chosen lr of 0.0099 (or a carried 0.02) sits at the round's top, which is what a widening
    moves, though well inside the union; 0.001 is no hit."""
    from bench.tuning.fidelity import tuned_edge_hits

    def hits(lr: float) -> list[str]:
        (tmp_path / "synthetic.yaml").write_text(
            f"dataset: synthetic\nmethods:\n  csq:\n    values: {{lr: {lr}}}\n    bits: 16\n    epochs: 30\n"
            "    search_space: {lr: [log, 0.0001, 0.03]}\n    round_space: {lr: [log, 0.0001, 0.01]}\n")
        return tuned_edge_hits(tmp_path)

    assert hits(0.0099) == [
        "synthetic csq lr at high edge (0.0099 in [0.0001, 0.01]; searched at 16 bits/30 epochs)"]
    assert len(hits(0.02)) == 1 and hits(0.001) == []
    entry = {"values": {"lr": 0.0099}, "search_space": {"lr": ["log", 1e-4, 0.03]},
             "round_space": {"lr": ["log", 1e-4, 0.01]}, "method": "csq", "trials": 8}
    assert edge_evidence([entry], [("lr", "high")])[0] == "csq lr 0.0099 at the high edge of [0.0001, 0.01]"


def test_a_command_for_some_of_a_rounds_methods_widens_the_round(tmp_path, tuned_dir) -> None:
    """Two processes share a round (CSQ in one, DPN in the other): DPN's command widens CSQ's
    lambda_q edge hit too, for the same round (DPN does not search lambda_q; it gets the trials)."""
    from bench.commands.tune import search_rounds
    from bench.data.cards import load_card

    tuned_dir.mkdir()
    (tuned_dir / "synthetic.yaml").write_text(
        "dataset: synthetic\nmethods:\n  csq:\n    values: {lr: 0.001, lambda_q: 1.1e-05}\n    bits: 16\n"
        "    epochs: 1\n    trials: 8\n"
        "    search_space: {lr: [log, 0.0001, 0.01], lambda_q: [log, 0.00001, 1.0]}\n")
    card = load_card("synthetic")
    rounds = search_rounds("lambda_q:low", card, ["dpn"], 16, 10, 1, tmp_path / "out.yaml")
    assert rounds["16b-1e"].ranges == {"lambda_q": ("log", 3.33333333333e-06, 1.0)}
    assert rounds["16b-1e"].trials == 10


def test_a_retired_search_is_no_edge_evidence(tmp_path, tuned_dir) -> None:
    """CSQ's 16-bit search hit lr's top; once a newer 32-bit search's check holds at 16 bits, the
    16-bit search is retired and its edge hit asks for no wider 16-bit round (it does while the
    check fails)."""
    from bench.commands.tune import search_rounds
    from bench.data.cards import load_card

    tuned_dir.mkdir()
    common = "epochs: 1, trials: 8, search_space: {lr: [log, 0.0001, 0.01]}"
    card = load_card("synthetic")
    for holds in (True, False):
        (tuned_dir / "synthetic.yaml").write_text(
            "dataset: synthetic\nmethods:\n  csq:\n"
            f"  - {{values: {{lr: 0.0099}}, bits: 16, {common}, date: '2026-12-05T00:00:00Z'}}\n"
            f"  - {{values: {{lr: 0.001}}, bits: 32, {common}, date: '2026-12-06T00:00:00Z',\n"
            f"     transfer: {{16: {{within_spread: {str(holds).lower()}}}}}}}\n")
        widen = ("lr:high", card, ["csq"], 16, 10, 1, tmp_path / "out.yaml")
        if holds:
            with pytest.raises(UserError, match="no entry of this round has lr at its high edge"):
                search_rounds(*widen)
        else:
            assert search_rounds(*widen)["16b-1e"].trials == 10


def test_fidelity_names_the_round_an_edge_hit_asks_for(tmp_path) -> None:
    """CSQ's lr at the top at 32 bits: the next round names every method of that budget (DPN
    too, which hit nothing), the hit edge, more trials than the round's 24, and the transfer
    lengths its entries were checked at; a 16-bit entry without a hit asks for nothing."""
    from bench.tuning.fidelity import widening_commands

    common = ("bits: 32, epochs: 30, trials: 24, "
              "transfer: {16: {within_spread: true}, 64: {within_spread: true}}")
    (tmp_path / "synthetic.yaml").write_text(
        "dataset: synthetic\nmethods:\n"
        f"  csq: {{values: {{lr: 0.0099}}, search_space: {{lr: [log, 0.0001, 0.01]}}, {common}}}\n"
        f"  dpn: {{values: {{lr: 0.001}}, search_space: {{lr: [log, 0.0001, 0.01]}}, {common}}}\n"
        "  mds: {values: {lr: 0.001}, search_space: {lr: [log, 0.0001, 0.01]}, bits: 16, epochs: 30}\n")
    assert widening_commands(tmp_path) == [
        "python -m bench tune --dataset synthetic --bits 32 --epochs 30 --methods csq,dpn --trials 30 "
        "--widen lr:high --transfer-to 16,64 --commit"]


def test_widen_on_a_round_already_written_searches_it_as_written(tmp_path, tuned_dir, capsys) -> None:
    """The round's command, rerun for another of its methods after the round was written (CSQ's
    lambda_q no longer at the edge of the wider range): the round as written, with a note; a knob
    the round never widened still needs an edge hit."""
    from bench.commands.tune import search_rounds
    from bench.data.cards import load_card

    tuned_dir.mkdir()
    (tuned_dir / "synthetic.yaml").write_text(
        "dataset: synthetic\nmethods:\n  csq: {values: {lr: 0.001, lambda_q: 1.1e-05}, bits: 16, epochs: 1, "
        "trials: 10,\n    search_space: {lr: [log, 0.0001, 0.01], lambda_q: [log, 3.3e-06, 1.0]}}\n"
        "widened:\n  16b-1e: {ranges: {lambda_q: [log, 3.3e-06, 1.0]}, trials: 10, after: x}\n")
    rounds = search_rounds("lambda_q:low", load_card("synthetic"), ["dpn"], 16, 10, 1, tmp_path / "out.yaml")
    assert rounds["16b-1e"] == Round({"lambda_q": ("log", 3.3e-06, 1.0)}, 10, "x")
    assert "already widened in the tuned file" in capsys.readouterr().out
    with pytest.raises(UserError, match="no entry of this round has lr at its high edge"):
        search_rounds("lr:high", load_card("synthetic"), ["dpn"], 16, 12, 1, tmp_path / "out.yaml")


def test_an_entry_of_the_round_before_asks_for_no_second_widening(tmp_path, tuned_dir, capsys) -> None:
    """One process wrote the round that widened lr to [1e-4, 0.03] (CRH's entry); MDS's part of
    it has not ended, so MDS's entry is still the one searched on [1e-4, 0.01], with lr at that
    top. Its hit is answered by the round: MDS's command with the round's --widen searches the
    round as written, not one widened again (which would also want more trials). An entry on the
    round's own range at its top does ask for the next round."""
    from bench.commands.tune import search_rounds
    from bench.data.cards import load_card

    tuned_dir.mkdir()
    crh = ("  crh: {values: {lr: LR}, bits: 16, epochs: 1, trials: 12, "
           "search_space: {lr: [log, 0.0001, 0.03]}}\n")
    for crh_lr, widened_again in (("0.002", False), ("0.029", True)):
        (tuned_dir / "synthetic.yaml").write_text(
            "dataset: synthetic\nmethods:\n" + crh.replace("LR", crh_lr)
            + "  mds: {values: {lr: 0.0099}, bits: 16, epochs: 1, trials: 8, "
              "search_space: {lr: [log, 0.0001, 0.01]}}\n"
            "widened:\n  16b-1e: {ranges: {lr: [log, 0.0001, 0.03]}, trials: 12, after: x}\n")
        command = ("lr:high", load_card("synthetic"), ["mds"], 16, 12, 1, tmp_path / "out.yaml")
        if widened_again:
            with pytest.raises(UserError, match="give more than the 12"):
                search_rounds(*command)
        else:
            assert search_rounds(*command)["16b-1e"] == Round({"lr": ("log", 0.0001, 0.03)}, 12, "x")


def test_fidelity_counts_no_edge_hit_that_the_written_round_answers(tmp_path) -> None:
    """The 16-bit round widened lr to [1e-4, 0.03]; MDS's entry, searched on [1e-4, 0.01] before
    its part of the round ended, still has lr at that top: no edge hit and no next round (a
    widening gap instead). CRH's lr at the round's own top is a hit. DPN's hinge margin at the top
    of its own range is its own hit, whatever the round did to the shared cosine margin."""
    from bench.tuning.fidelity import tuned_edge_hits, widening_commands, widening_gaps

    def entry(method: str, values: str, trials: int, space: str) -> str:
        return (f"  {method}: {{values: {{{values}}}, bits: 16, epochs: 1, trials: {trials}, "
                f"search_space: {{{space}}}}}\n")

    (tmp_path / "synthetic.yaml").write_text(
        "dataset: synthetic\nmethods:\n"
        + entry("mds", "lr: 0.0099", 8, "lr: [log, 0.0001, 0.01]")
        + entry("crh", "lr: 0.002", 12, "lr: [log, 0.0001, 0.03]")
        + entry("dpn", "margin: 0.99", 12, "margin: [float, 0.0, 1.0]")
        + "widened:\n  16b-1e: {ranges: {lr: [log, 0.0001, 0.03], margin: [float, 0.0, 1.5]}, "
          "trials: 12, after: x}\n")
    assert [hit.split(" (")[0] for hit in tuned_edge_hits(tmp_path)] == ["synthetic dpn margin at high edge"]
    gaps = widening_gaps(tmp_path)
    assert any(gap.startswith("synthetic mds 16b-1e: 8 trials, lr on the old range") for gap in gaps)
    text = (tmp_path / "synthetic.yaml").read_text().replace("lr: 0.002", "lr: 0.029")
    (tmp_path / "synthetic.yaml").write_text(text)
    assert sorted(hit.split(" (")[0] for hit in tuned_edge_hits(tmp_path)) == [
        "synthetic crh lr at high edge", "synthetic dpn margin at high edge"]
    assert "--widen margin:high,lr:high" in widening_commands(tmp_path)[0] \
        or "--widen lr:high,margin:high" in widening_commands(tmp_path)[0]
