"""The benchmark's timing discipline and flop model (the timings themselves are not tested)."""

from __future__ import annotations

import pytest

from verify._bench_kfac import SETTINGS, flop_predicted_ratio
from verify._timing import interleaved_seconds


def test_interleaved_rounds_chain_every_call():
    """Each contestant's carry is threaded through warm-up and every call of every round."""
    counts = {"a": 0, "b": 0}

    def counter(name):
        def step(carry):
            counts[name] += 1
            return carry + 1
        return step

    seconds = interleaved_seconds({"a": (counter("a"), 0), "b": (counter("b"), 10)},
                                  calls=4, rounds=3)
    assert set(seconds) == {"a", "b"} and all(t >= 0 for t in seconds.values())
    assert counts == {"a": 2 + 4 * 3, "b": 2 + 4 * 3}


@pytest.mark.parametrize("key", SETTINGS)
def test_kfac_flop_model_amortizes_periodic_work(key):
    batch, stats_every, inverse_every = SETTINGS[key]
    ratio = flop_predicted_ratio(batch, stats_every, inverse_every)
    assert ratio > 1
    assert flop_predicted_ratio(batch, 10 ** 9, 10 ** 9) < ratio
    assert flop_predicted_ratio(batch, stats_every, inverse_every * 2) < ratio


def test_trajectory_section_times_every_family_and_the_port(monkeypatch):
    """The bench's trajectory rows (timings not tested): every family's schedule search, the
    port's run, their sum against the 60 s goal; on one problem and one family to stay
    fast."""
    import weakref

    import verify.harness
    import verify.strategies
    from ngd_ref import zoo
    from verify import _bench_trajectory

    tiny = zoo.get("mlp-3x4x3-tanh-mse-b1")
    families = ("shampoo",)
    monkeypatch.setattr(_bench_trajectory.zoo, "problems", lambda quick=False: (tiny,))
    monkeypatch.setattr(verify.strategies, "TRAJECTORY_FAMILIES", families)
    monkeypatch.setattr(verify.harness._trajectory, "FAMILIES", families)
    # a private cache for the section to clear: the suite's cached schedules stay
    monkeypatch.setattr(verify.harness._trajectory, "_SCHEDULES", weakref.WeakKeyDictionary())
    rows = _bench_trajectory.trajectory_section(quick=True)["trajectory"]
    reference = rows["trajectory_reference_seconds"]
    assert set(reference) == {"total", *families} and rows["families"] == list(families)
    assert reference["total"] == pytest.approx(sum(reference[f] for f in families))
    assert set(rows["trajectory_port_seconds"]) == {"numpy-port"}
    assert rows["trajectory_quick_zoo_seconds"] == pytest.approx(
        reference["total"] + rows["trajectory_port_seconds"]["numpy-port"])
    assert rows["within_goal"] == (rows["trajectory_quick_zoo_seconds"] <= 60.0)
def test_sampled_section_reports_seconds_draws_and_power_per_estimator(monkeypatch):
    """`bench`'s sampled rows: one per mean test, with the check's design and power."""
    from ngd_ref import zoo
    from verify import _bench_sampled

    problem = zoo.get("mlp-3x4x3-relu-sigmoid_cross_entropy-b3")
    monkeypatch.setattr(_bench_sampled, "SAMPLED_CAPABILITIES", ("mc_fisher_diag",))
    monkeypatch.setattr(zoo, "problems", lambda quick=False: [problem])
    section = _bench_sampled.sampled_section(quick=True)
    (row,) = section["sampled"]
    assert row["check"] == "mc_fisher_diag_mean" and row["problem"] == problem.name
    assert row["seconds"] > 0 and row["draws"] == row["draws_per_call"] * row["calls"] > 0
    assert row["power"] > 0 and row["status"] == "pass"
    assert "load" in section["sampled_note"]
