"""The demo never claims a budget it did not meet here: over-budget picks are skipped or labelled."""

from __future__ import annotations

from slimformer.demo import Candidate, choose, verdict


def row(accuracy: float, p50: float) -> dict:
    return {"metrics": {"accuracy": accuracy}, "latency_ms": {"p50": p50, "p99": p50 * 1.2}}


def test_over_budget_pick_is_refused_for_the_next_candidate():
    measured = {"shipped-pick": 0.978, "next": 0.990, "never-tried": 0.999}  # fp32: 0.994, budget 1 pt
    found = [Candidate(r, "test") for r in measured]
    pick, rejected = choose(found, measured.__getitem__, base=0.994, max_drop=0.01)
    assert pick.recipe == "next" and pick.accuracy == 0.990
    assert [c.recipe for c in rejected] == ["shipped-pick"]
    assert found[2].accuracy is None  # stops at the first that passes


def test_no_candidate_within_budget_keeps_the_closest_and_lists_the_rest():
    measured = {"a": 0.95, "b": 0.97, "c": 0.96}
    pick, rejected = choose([Candidate(r, "test") for r in measured], measured.__getitem__, base=0.994)
    assert pick.recipe == "b" and sorted(c.recipe for c in rejected) == ["a", "c"]


def test_verdict_labels_a_fake_over_budget_measurement():
    base = row(0.994, 40.0)
    over = verdict(base, row(0.983, 15.0), max_drop=0.01)  # -1.1 pt against a 1 pt budget
    assert over.startswith("OVER BUDGET") and "-1.10 pt" in over and "within budget" not in over
    ok = verdict(base, row(0.9917, 15.0), max_drop=0.01)
    assert ok.startswith("within budget") and "2.67x" in ok
    slow = verdict(base, row(0.994, 50.0), max_drop=0.01)
    assert "NOT faster" in slow
    assert verdict(base, {"metrics": {}, "latency_ms": {"p50": 1.0}}) == "accuracy not measured"
