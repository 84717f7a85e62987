"""The one retry policy (`streaming_rag.wire.backoff.Backoff`) and the worker's outage
classifier: pure logic, no server."""

from __future__ import annotations

import pytest
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ReadOnlyError,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)

from streaming_rag.exceptions import InvalidRequest
from streaming_rag.wire.backoff import Backoff
from streaming_rag.wire.ids import EntryIds, parse_entry_id, validate_cursor
from streaming_rag_worker._retry import is_transient


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_delays_double_up_to_the_cap_without_jitter() -> None:
    b = Backoff(initial_s=0.05, cap_s=0.3, jitter=0.0)
    assert [b.next_delay() for _ in range(5)] == [0.05, 0.1, 0.2, 0.3, 0.3]
    b.reset()
    assert b.next_delay() == 0.05


def test_jitter_stays_within_its_band() -> None:
    lows = Backoff(initial_s=1.0, cap_s=1.0, jitter=0.2, rand=lambda: 0.0)
    highs = Backoff(initial_s=1.0, cap_s=1.0, jitter=0.2, rand=lambda: 0.999999)
    assert lows.next_delay() == pytest.approx(0.8)
    assert highs.next_delay() == pytest.approx(1.2, rel=1e-5)


def test_the_deadline_counts_from_the_first_delay() -> None:
    clock = Clock()
    b = Backoff(deadline_s=2.0, clock=clock)
    assert not b.expired and b.elapsed_s == 0.0
    b.next_delay()
    clock.now += 1.9
    assert not b.expired
    clock.now += 0.2
    assert b.expired and b.attempts == 1
    b.reset()
    assert not b.expired


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        Backoff(initial_s=2.0, cap_s=1.0)
    with pytest.raises(ValueError):
        Backoff(jitter=1.0)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (RedisConnectionError("reset"), True),
        (BusyLoadingError("loading"), True),
        (ReadOnlyError("You can't write against a read only replica."), True),
        (ResponseError("UNBLOCKED force unblock from blocking operation"), True),
        (OSError("broken pipe"), True),
        (AuthenticationError("invalid password"), False),
        (ResponseError("ERR Error running script"), False),
        (ValueError("a bug"), False),
    ],
)
def test_the_worker_rides_through_outages_but_not_refusals(
    exc: BaseException, transient: bool
) -> None:
    assert is_transient(exc) is transient


def test_entry_ids_only_grow_even_when_the_clock_goes_back() -> None:
    ids = EntryIds()
    got = [ids.next(t) for t in (1000, 1000, 1001, 999, 1001, 1005)]
    assert got == ["1000-0", "1000-1", "1001-0", "1001-1", "1001-2", "1005-0"]
    assert [parse_entry_id(i) for i in got] == sorted(parse_entry_id(i) for i in got)


@pytest.mark.parametrize("bad", ["", "abc", "1-2-3", "1-", "-1", " 1-0", "1-0\n", None, 5])
def test_cursors_must_be_entry_ids(bad: object) -> None:
    with pytest.raises(InvalidRequest, match="stream entry id"):
        validate_cursor(bad)
    assert validate_cursor("1700000000000-3") == "1700000000000-3"
    assert validate_cursor("0") == "0"
