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
