"""Callback scheduling on a fake clock: due order, free seat groups, retries with back-off, the dialling guard."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta

import pytest

from ivr.callbacks import (
    CANCELLED_REASON,
    COMPLETED,
    COMPLETED_REASON,
    DECLINED_REASON,
    DIALLING,
    FAILED,
    FAILED_REASON,
    NO_ANSWER_REASON,
    PENDING,
    CallbackError,
    CallbackScheduler,
    is_diallable,
)

T0 = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def ask(s: CallbackScheduler, clock: FakeClock, number: str = "13800000001", group: str = "junior", call: str = "c1"):
    return s.request(number, tier=group, service="consulting", seat_group=group, call_id=call, now=clock.now)


def test_request_is_stored_pending_and_due_at_once(clock: FakeClock) -> None:
    s = CallbackScheduler()
    r = ask(s, clock)
    assert (r.status, r.attempts, r.due_at, r.call_ids, r.result) == (PENDING, 0, T0, ("c1",), None)
    with pytest.raises(FrozenInstanceError):
        r.status = DIALLING  # type: ignore[misc]


def test_one_open_request_per_number(clock: FakeClock) -> None:
    s = CallbackScheduler()
    first = ask(s, clock, call="c1")
    assert ask(s, clock, call="c2") == first
    assert len(list(s)) == 1


def test_next_due_waits_for_a_free_agent_of_the_requests_seat_group(clock: FakeClock) -> None:
    s = CallbackScheduler()
    junior = ask(s, clock, "13800000001", "junior")
    clock.advance(10)
    senior = ask(s, clock, "13800000002", "senior")
    assert s.next_due(clock.now, free_groups=set()) is None
    assert s.next_due(clock.now, free_groups={"senior"}) == senior
    assert s.next_due(clock.now, free_groups={"senior", "junior"}) == junior  # asked first


def test_answered_callback_completes(clock: FakeClock) -> None:
    s = CallbackScheduler()
    r = ask(s, clock)
    r = s.attempt_started(r.id, "out-1", clock.advance(5))
    assert (r.status, r.attempts, r.call_ids) == (DIALLING, 1, ("c1", "out-1"))
    assert s.next_due(clock.now, {"junior"}) is None, "a request being dialled is not offered twice"
    r = s.attempt_result(r.id, "answered", clock.advance(20))
    assert (r.status, r.result) == (COMPLETED, COMPLETED_REASON)
    assert s.next_due(clock.advance(3600), {"junior"}) is None


def test_no_answer_is_retried_with_exponential_back_off_then_closed(clock: FakeClock) -> None:
    s = CallbackScheduler(max_attempts=3, retry_seconds=300)
    r = ask(s, clock)
    for attempt, backoff in ((1, 300), (2, 600)):
        r = s.attempt_started(r.id, f"out-{attempt}", clock.now)
        r = s.attempt_result(r.id, "no_answer", clock.advance(30))
        assert (r.status, r.attempts, r.due_at) == (PENDING, attempt, clock.now + timedelta(seconds=backoff))
        assert s.next_due(clock.advance(backoff - 1), {"junior"}) is None, "not before the back-off"
        assert s.next_due(clock.advance(1), {"junior"}) == r
        with pytest.raises(CallbackError, match="not due"):
            s.attempt_started(r.id, "early", clock.now - timedelta(seconds=1))
    r = s.attempt_started(r.id, "out-3", clock.now)
    r = s.attempt_result(r.id, "busy", clock.advance(30))
    assert (r.status, r.attempts, r.result) == (FAILED, 3, NO_ANSWER_REASON)
    assert r.call_ids == ("c1", "out-1", "out-2", "out-3")
    assert s.next_due(clock.advance(86400), {"junior"}) is None


@pytest.mark.parametrize(
    ("last", "reason"), [("no_answer", NO_ANSWER_REASON), ("busy", NO_ANSWER_REASON), ("failed", FAILED_REASON)]
)
def test_closing_reason_follows_the_last_outcome(clock: FakeClock, last: str, reason: str) -> None:
    s = CallbackScheduler(max_attempts=1)
    r = ask(s, clock)
    s.attempt_started(r.id, "out-1", clock.now)
    assert s.attempt_result(r.id, last, clock.now).result == reason


def test_declined_is_never_retried(clock: FakeClock) -> None:
    s = CallbackScheduler(max_attempts=5)
    r = ask(s, clock)
    s.attempt_started(r.id, "out-1", clock.now)
    r = s.attempt_result(r.id, "declined", clock.now)
    assert (r.status, r.result, r.attempts) == (FAILED, DECLINED_REASON, 1)


def test_cancel_closes_an_open_request_and_frees_the_number(clock: FakeClock) -> None:
    s = CallbackScheduler()
    r = ask(s, clock)
    r = s.cancel(r.id)
    assert (r.status, r.result) == (FAILED, CANCELLED_REASON)
    assert s.cancel(r.id) == r
    assert ask(s, clock, call="c9").id != r.id, "a new request may follow a closed one"


def test_next_deadline_is_the_earliest_pending_due_time(clock: FakeClock) -> None:
    s = CallbackScheduler(retry_seconds=60)
    assert s.next_deadline() is None
    r = ask(s, clock)
    s.attempt_started(r.id, "out-1", clock.now)
    assert s.next_deadline() is None
    s.attempt_result(r.id, "no_answer", clock.now)
    assert s.next_deadline() == T0 + timedelta(seconds=60)


def test_only_a_stored_number_being_dialled_is_handed_out(clock: FakeClock) -> None:
    s = CallbackScheduler()
    r = ask(s, clock, "13800000001")
    with pytest.raises(CallbackError, match="pending: nothing to dial"):
        s.number_to_dial(r.id)
    s.attempt_started(r.id, "out-1", clock.now)
    assert s.number_to_dial(r.id) == "13800000001"
    s.attempt_result(r.id, "answered", clock.now)
    with pytest.raises(CallbackError, match="completed: nothing to dial"):
        s.number_to_dial(r.id)
    with pytest.raises(CallbackError, match="no callback request 99"):
        s.number_to_dial(99)


@pytest.mark.parametrize(
    ("number", "ok"),
    [
        ("13800000001", True),  # mobile
        ("02150000000", True),  # Shanghai landline with area code
        ("95000", True),
        ("0085212345678", False),  # international prefix: a toll-fraud favourite
        ("+8613800000001", False),
        ("anonymous", False),  # withheld caller ID
        ("", False),
        ("12", False),
        ("1380000000*", False),
        ("sip:attacker@example.com", False),
        ("1" * 16, False),
    ],
)
def test_only_plain_domestic_numbers_may_be_called_back(clock: FakeClock, number: str, ok: bool) -> None:
    assert is_diallable(number) is ok
    s = CallbackScheduler()
    if ok:
        assert ask(s, clock, number).number == number
    else:
        with pytest.raises(CallbackError, match="may not be called back"):
            ask(s, clock, number)


def test_wrong_state_and_unknown_outcome_are_refused(clock: FakeClock) -> None:
    s = CallbackScheduler()
    r = ask(s, clock)
    with pytest.raises(CallbackError, match="not dialling"):
        s.attempt_result(r.id, "answered", clock.now)
    s.attempt_started(r.id, "out-1", clock.now)
    with pytest.raises(CallbackError, match="not pending"):
        s.attempt_started(r.id, "out-2", clock.now)
    with pytest.raises(CallbackError, match="unknown outcome 'maybe'"):
        s.attempt_result(r.id, "maybe", clock.now)
    with pytest.raises(ValueError):
        CallbackScheduler(max_attempts=0)
