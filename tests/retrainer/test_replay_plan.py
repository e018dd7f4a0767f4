"""A retrain request names its training data; the retrainer decides what it may read.

Attacks from issue 11 item 2, each refused or defused before anything is read: another
topic, a range listed 50 times, thousands of ranges, an end offset of 2**62.
"""

from __future__ import annotations

import pytest

from retrainer.errors import RequestRefused
from retrainer.replay import ReplayLimits, plan_replay
from schemas import OffsetRange

LIMITS = ReplayLimits(topic="sla.telemetry", max_ranges=64, max_offsets=100_000)


def span(start: int, end: int, partition: int = 0, topic: str = "sla.telemetry") -> OffsetRange:
    return OffsetRange(topic=topic, partition=partition, start_offset=start, end_offset=end)


def test_a_range_on_another_topic_is_refused_naming_it() -> None:
    with pytest.raises(RequestRefused, match="attacker.rows"):
        plan_replay([span(0, 10), span(0, 700, topic="attacker.rows")], LIMITS)


def test_a_range_listed_fifty_times_is_read_once() -> None:
    assert plan_replay([span(0, 600)] * 50, LIMITS) == [span(0, 600)]


def test_overlapping_and_adjacent_ranges_merge_per_partition() -> None:
    ranges = [span(10, 20), span(0, 15), span(20, 30), span(40, 50), span(5, 8, partition=1)]
    assert plan_replay(ranges, LIMITS) == [span(0, 30), span(40, 50), span(5, 8, partition=1)]


def test_empty_ranges_are_dropped() -> None:
    assert plan_replay([span(5, 5), span(7, 3), span(1, 2)], LIMITS) == [span(1, 2)]


def test_too_many_ranges_are_refused_before_any_read() -> None:
    many = [span(i, i + 1) for i in range(8_000)]
    with pytest.raises(RequestRefused, match="8000 offset ranges; at most 64"):
        plan_replay(many, LIMITS)
    assert plan_replay(many[:64], LIMITS) == [span(0, 64)]  # the bound is inclusive


def test_an_endless_range_is_refused() -> None:
    with pytest.raises(RequestRefused, match="offsets; at most 100000"):
        plan_replay([span(0, 2**62)], LIMITS)
    assert plan_replay([span(0, 100_000)], LIMITS) == [span(0, 100_000)]
