"""The timing helper interleaves, pairs its ratios, and says "not resolved" when a difference is inside the noise."""
from __future__ import annotations

import itertools
import time

import pytest
import torch

from scoresde.bench.timing import (
    Agreement,
    Comparison,
    Conditions,
    Ratio,
    Stopwatch,
    Summary,
    compare,
    pin_conditions,
    pool,
)


def recorder(calls: list[str], name: str, pause: float = 0.0):
    def run(*inputs):
        calls.append(name)
        if pause:
            time.sleep(pause)
    return run


def test_rounds_are_interleaved_after_the_warm_up():
    calls: list[str] = []
    impls = {n: recorder(calls, n) for n in "ABC"}
    result = compare(impls, repeats=4, warmup=2)
    assert calls[:6] == list("ABCABC")                   # warm-up: whole rounds first, untimed
    timed = calls[6:]
    assert timed == result.order == list("ABC" "BCA" "CAB" "ABC")  # every round once each, rotated by one
    assert all(len(v) == 4 for v in result.times.values())
    plain: list[str] = []
    compare({n: recorder(plain, n) for n in "AB"}, repeats=3, warmup=0, rotate=False)
    assert plain == list("ABABAB")


def test_every_implementation_gets_the_same_input_objects():
    x, seen = torch.zeros(3), []
    compare({"a": lambda t: seen.append(id(t)), "b": lambda t: seen.append(id(t))}, (x,), repeats=3, warmup=1)
    assert set(seen) == {id(x)}


def test_a_slowed_implementation_is_reported_slower_and_resolved():
    fast = lambda: sum(range(100))  # noqa: E731
    slow = lambda: (time.sleep(0.004), fast())  # noqa: E731
    result = compare({"fast": fast, "slow": slow}, repeats=15, warmup=1)
    ratio = result.ratio("slow", "fast")
    assert ratio.resolved and ratio.side == 1 and ratio.verdict(below="faster", above="slower") == "slower"
    assert result.ratio("fast", "slow").verdict() == "yes"
    assert result.summary("slow").median >= 0.004


def test_an_equal_pair_is_not_resolved():
    """The same function under two names: the paired ratios scatter around 1, so no winner is named (with 61
    rounds an IQR on one side of 1 would need ≥ 46 of 61 fair coin flips alike, p ≈ 1e-4)."""
    work = lambda: time.sleep(0.001)  # noqa: E731
    ratio = compare({"A": work, "B": work}, repeats=61, warmup=2).ratio("A", "B")
    assert ratio.summary.q25 <= 1 <= ratio.summary.q75
    assert not ratio.resolved and ratio.verdict() == "not resolved"


def test_ratio_is_of_paired_runs_and_held_against_its_target():
    cond = Conditions(1, True, "cpu")
    result = Comparison({"a": [1.0, 4.0, 2.0], "b": [2.0, 2.0, 4.0]}, [], cond)
    assert result.ratio("a", "b").summary.median == pytest.approx(0.5)  # pairs 0.5, 2, 0.5; medians' ratio is 1
    assert result.ratio("a", "b", target=3.0).verdict() == "yes"
    assert Ratio("a", "b", Summary(1.4, 1.3, 1.6, 9), target=1.5).verdict() == "not resolved"


def test_a_noisy_run_is_refused_with_its_reasons():
    cond = Conditions(1, True, "cpu")
    steady = Comparison({"a": [1.0, 1.01, 0.99, 1.0], "b": [2.0, 2.0, 2.01, 1.99]}, [], cond)
    assert steady.too_noisy([steady.ratio("a", "b")]) == []
    noisy = Comparison({"a": [1.0, 2.0, 0.5, 1.0], "b": [2.0, 2.0, 2.0, 2.0]}, [], cond)
    reasons = noisy.too_noisy([noisy.ratio("a", "b")], threshold=0.1)
    assert any(r.startswith("a:") for r in reasons) and any(r.startswith("a/b:") for r in reasons)


def test_conditions_are_pinned_and_described():
    before = torch.get_num_threads()
    try:
        cond = pin_conditions(threads=1)
        assert torch.get_num_threads() == cond.threads == 1
        text = compare({"a": lambda: None}, repeats=2, warmup=0, conditions=cond).conditions.describe()
        assert "1 torch threads" in text and "flush-denormal" in text and "load average" in text
    finally:
        torch.set_num_threads(before)
        torch.set_flush_denormal(False)
    assert Conditions(1, True, "cpu", cores=2, load_before=(3.0, 3.0, 3.0)).loaded
    assert not Conditions(1, True, "cpu", cores=2, load_before=(0.2, 0.3, 0.3), load_after=(1.1, 0.5, 0.4)).loaded


def test_stopwatch_uses_the_injected_clock_and_synchronises_only_on_cuda():
    ticks = itertools.count(10.0, 0.5)
    with Stopwatch("cpu", clock=lambda: next(ticks)) as sw:
        pass
    assert sw.seconds == 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_stopwatch_times_queued_cuda_work():
    x = torch.randn(2048, 2048, device="cuda")
    with Stopwatch("cuda") as sw:
        for _ in range(10):
            x = x @ x / 2048
    assert sw.seconds > 0


def test_the_sweep_times_each_run_and_records_the_load_around_it():
    """scoresde-bench's wall-clock column goes through the helper's Stopwatch; each problem records its threads and
    the load average before and after the sweep."""
    import scoresde as sd
    from scoresde.bench import SweepSettings, sweep_problem
    from scoresde.bench.problems import testbed_problem
    from scoresde.cli.benchmark import parse_entries

    problem = testbed_problem(sd.get_testbed("gaussian", dim=2, std=0.5), sd.VPSDE())
    settings = SweepSettings(n_samples=8, n_data=50, n_projections=8, progress=False, budgets=(4,), metrics=("rmse",))
    res = sweep_problem(problem, parse_entries({"euler": {"name": "euler"}}, (4,)), settings)
    assert res["rows"][0]["time_s"] > 0
    timing = res["timing"]
    assert timing["threads"] == torch.get_num_threads() and timing["flush_denormal"] is None
    if timing["load_before"] is not None:
        assert len(timing["load_before"]) == len(timing["load_after"]) == 3


def test_time_runs_interleaves_sweep_runs_and_peers_on_one_x_T():
    """The measurement behind a quoted time ratio: sweep runs (and peers, when diffusers imports) of one problem,
    interleaved by the helper, with the paired ratio resolved or not."""
    import scoresde as sd
    from scoresde.bench import SweepSettings, plan, plan_peers
    from scoresde.bench.problems import testbed_problem
    from scoresde.bench.sweep import time_runs
    from scoresde.cli.benchmark import parse_entries

    problem = testbed_problem(sd.get_testbed("gaussian", dim=2, std=0.5), sd.VPSDE())
    settings = SweepSettings(n_samples=8, progress=False, budgets=(4,))
    runs = {r.entry.label: r for r in plan(parse_entries({"euler": {"name": "euler"}, "heun": {"name": "heun"}},
                                                         (4,)), problem.sde, settings)}
    peers, _ = plan_peers(["euler"], [], (4,))
    runs.update({f"diffusers:{p.method}": p for p in peers})
    result = time_runs(problem, runs, settings, repeats=3, warmup=1)
    assert set(result.times) == set(runs) and all(len(v) == 3 for v in result.times.values())
    assert result.ratio("heun", "euler").summary.n == 3


def test_separate_runs_agree_on_overlapping_values_and_on_shared_verdicts():
    a, b, c = Summary(0.80, 0.75, 0.85, 9), Summary(0.84, 0.82, 0.90, 9), Summary(0.70, 0.66, 0.74, 9)
    assert Agreement((a, b)).overlap and Agreement((a, b)).fmt(".2f") == "0.82 [0.75–0.90]"
    assert not Agreement((a, b, c)).overlap and Agreement((a, b, c)).fmt(".2f") == "disagree: 0.80 / 0.84 / 0.70"
    assert Agreement((a, b, c)).verdict(1.0) == "yes"            # all three resolve "below 1" though values differ
    assert Agreement((a, Summary(1.1, 0.9, 1.2, 9))).verdict(1.0) == "not resolved"
    assert Agreement((a, Summary(1.1, 1.05, 1.2, 9))).verdict(1.0) == "not resolved"  # opposite verdicts


def test_pooled_processes_keep_pairs_and_widen_to_the_process_spread():
    """Rounds of separate processes pool into one comparison whose paired ratios are the union of each
    process's pairs, so a process-level offset (A is 1.0× B in one process, 1.2× in another) shows in the IQR
    instead of two disjoint narrow ones."""
    cond = lambda before, after: Conditions(1, None, "cpu", 2, before, after)  # noqa: E731
    one = Comparison({"A": [1.0] * 4, "B": [1.0] * 4}, ["A", "B"] * 4, cond((0.1,) * 3, (0.2,) * 3))
    two = Comparison({"A": [2.4] * 4, "B": [2.0] * 4}, ["B", "A"] * 4, cond((0.3,) * 3, (0.4,) * 3))
    pooled = pool([one, two])
    assert pooled.times["A"] == [1.0] * 4 + [2.4] * 4 and len(pooled.order) == 16
    ratio = pooled.ratio("A", "B").summary
    assert ratio.median == pytest.approx(1.1) and ratio.q25 == pytest.approx(1.0) and ratio.q75 == pytest.approx(1.2)
    assert pooled.conditions.load_before == (0.1,) * 3 and pooled.conditions.load_after == (0.4,) * 3
    with pytest.raises(ValueError, match="same implementations"):
        pool([one, Comparison({"A": [1.0]}, ["A"], cond(None, None))])
    with pytest.raises(ValueError, match="nothing to pool"):
        pool([])
