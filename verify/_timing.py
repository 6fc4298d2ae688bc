"""Interleaved wall-clock timing for `ngd-verify bench` (PROTOCOL s7: ratios in one run).

A ratio of two timings is only as good as the conditions they share. Timing A for a while and
then B lets any drift of the machine (another process, frequency scaling, a cache left cold)
fall on one side of the ratio. `interleaved_seconds` therefore times the contestants in rounds,
each round running every contestant once in turn, and reports per contestant the median over
rounds: a disturbance that lasts a round hits every contestant in it, and one that lasts less
is outvoted by the median.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax

__all__ = ["interleaved_seconds"]


def interleaved_seconds(contestants: Mapping[str, tuple[Callable[[Any], Any], Any]],
                        *, calls: int, rounds: int) -> dict[str, float]:
    """Seconds per call of each contestant, timed in interleaved rounds.

    Args:
        contestants: name -> `(step, carry)`. A step is called as `carry = step(carry)`, so a
            stateful step (an optimizer) runs `calls` consecutive updates and a stateless one
            (`lambda c: f()`) repeats; every call is jit-compiled by the caller.
        calls: calls per contestant per round, blocked on the result once at the end
            (amortizes dispatch and periodic work such as K-FAC's decompositions).
        rounds: rounds; each contestant's time is the median over rounds of (round time) /
            `calls`.

    Returns:
        name -> median seconds per call. Two warm-up calls per contestant (compilation and
        first execution of every branch reachable at step 0 and 1) precede the rounds.
    """
    carries = {}
    for name, (step, carry) in contestants.items():
        carries[name] = jax.block_until_ready(step(step(carry)))
    times: dict[str, list[float]] = {name: [] for name in contestants}
    for _ in range(rounds):
        for name, (step, _) in contestants.items():
            carry = carries[name]
            start = time.perf_counter()
            for _ in range(calls):
                carry = step(carry)
            carries[name] = jax.block_until_ready(carry)
            times[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(t) for name, t in times.items()}
