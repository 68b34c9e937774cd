"""bench.isolated: each system built and timed in its own process, round-robin; failures named."""

import time

import pytest

from slimformer.bench.isolated import time_isolated
from slimformer.errors import SlimformerError


def sleeper():
    """A 'system' whose call takes as many seconds as its input says."""
    return time.sleep


def slow_sleeper():
    return lambda s: time.sleep(2 * s)


def broken():
    raise RuntimeError("no such model dir")


def test_each_system_times_every_item_inside_its_worker():
    items = [0.05, 0.15, 0.1]
    times = time_isolated({"a": sleeper, "b": slow_sleeper}, items, warmup=0)
    assert set(times) == {"a", "b"}
    for name, factor in (("a", 1), ("b", 2)):
        assert len(times[name]) == len(items)
        for t, s in zip(times[name], items, strict=True):
            assert factor * s <= t < factor * s + 0.1  # the call alone: no pickling or process start


def test_a_worker_that_fails_is_named():
    with pytest.raises(SlimformerError, match="'bad' failed: RuntimeError: no such model dir"):
        time_isolated({"ok": sleeper, "bad": broken}, [0.01])
