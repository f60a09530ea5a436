"""The recording notice in the call flow, on a fake clock: heard once, before any recorded agent is put through."""

from __future__ import annotations

from datetime import datetime

import pytest

from ivr.callflow import RECORDING_NOTICE_PROMPT, CallFlow, FlowSettings, RecordingRule, State
from ivr.events import (
    AgentAnswered,
    Bridge,
    CallbackStarted,
    CustomerAnswered,
    Digit,
    Invited,
    Play,
    PromptFinished,
    QueuePosition,
    RecordEvent,
    TimerFired,
    TransferRequested,
    WhisperFinished,
)
from ivr.greeting import Greeting
from ivr.service import MenuConfig

from .test_callflow import FakeClock, control

RECORD_ALL = RecordingRule(enabled=True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def greeter(_moment: datetime) -> Greeting:
    return Greeting("normal", "greeting_normal")


def queued(clock: FakeClock, rule: RecordingRule = RECORD_ALL) -> tuple[CallFlow, list]:
    flow = CallFlow("c1", FlowSettings(ring_seconds=1, menu=MenuConfig(enabled=False), recording=rule), greeter)
    flow.handle(Invited(clock.now, "13800000001", "95000"))
    flow.handle(TimerFired(clock.advance(1), "ring"))
    actions = flow.handle(Digit(clock.advance(1), "1"))
    assert flow.state is State.QUEUED
    return flow, actions


def plays(actions: list) -> list[str]:
    return [a.prompt for a in actions if isinstance(a, Play)]


def steps(actions: list) -> list[str]:
    return [a.kind for a in actions if isinstance(a, RecordEvent)]


def test_a_recorded_caller_hears_the_notice_after_the_hold_prompt_and_before_the_position(clock: FakeClock) -> None:
    flow, actions = queued(clock)
    assert plays(actions) == ["hold"]
    assert plays(flow.handle(PromptFinished(clock.advance(2), "hold"))) == [RECORDING_NOTICE_PROMPT]
    finished = flow.handle(PromptFinished(clock.advance(4), RECORDING_NOTICE_PROMPT))
    assert steps(finished) == ["recording_notice"]  # call_events says when the caller had heard it
    assert control(finished)[-1].__class__.__name__ == "AnnouncePosition"
    assert flow.notice_heard


def test_the_agent_is_put_through_at_once_once_the_notice_was_heard(clock: FakeClock) -> None:
    flow, _ = queued(clock)
    flow.handle(PromptFinished(clock.advance(2), "hold"))
    flow.handle(PromptFinished(clock.advance(4), RECORDING_NOTICE_PROMPT))
    answered = flow.handle(AgentAnswered(clock.advance(5), "801", "junior"))
    assert plays(answered) == ["agent_801"]  # not told twice
    assert flow.recorded
    assert control(flow.handle(PromptFinished(clock.advance(2), "agent_801")))[-1] == Bridge()


def test_an_agent_who_answers_during_the_notice_waits_for_it_to_be_played_whole(clock: FakeClock) -> None:
    flow, _ = queued(clock)
    flow.handle(PromptFinished(clock.advance(2), "hold"))  # the notice starts
    answered = flow.handle(AgentAnswered(clock.advance(1), "801", "junior"))  # ... and is cut off
    assert plays(answered) == [RECORDING_NOTICE_PROMPT]
    assert flow.state is State.ANNOUNCING
    after_notice = flow.handle(PromptFinished(clock.advance(4), RECORDING_NOTICE_PROMPT))
    assert plays(after_notice) == ["agent_801"] and Bridge() not in after_notice
    assert steps(after_notice) == ["recording_notice"]
    assert flow.state is State.ANNOUNCING
    bridged = flow.handle(PromptFinished(clock.advance(2), "agent_801"))
    assert Bridge() in bridged and flow.state is State.BRIDGED


def test_no_notice_when_the_call_is_not_recorded(clock: FakeClock) -> None:
    flow, _ = queued(clock, RecordingRule(enabled=False))
    assert control(flow.handle(PromptFinished(clock.advance(2), "hold")))[-1].__class__.__name__ == "AnnouncePosition"
    assert plays(flow.handle(AgentAnswered(clock.advance(1), "801", "junior"))) == ["agent_801"]
    assert not flow.recorded


def test_no_notice_when_announce_is_off_but_the_call_is_still_recorded(clock: FakeClock) -> None:
    flow, _ = queued(clock, RecordingRule(enabled=True, announce=False))
    flow.handle(PromptFinished(clock.advance(2), "hold"))
    assert plays(flow.handle(AgentAnswered(clock.advance(1), "801", "junior"))) == ["agent_801"]
    assert flow.recorded


def test_only_the_configured_seat_groups_are_recorded_and_announced(clock: FakeClock) -> None:
    rule = RecordingRule(enabled=True, seat_groups=frozenset({"senior"}))
    flow, _ = queued(clock, rule)  # a junior caller: queued for the junior group
    assert control(flow.handle(PromptFinished(clock.advance(2), "hold")))[-1].__class__.__name__ == "AnnouncePosition"
    flow.handle(QueuePosition(clock.advance(0), 1, True, None))
    flow.handle(PromptFinished(clock.advance(2), "queue_position_1"))
    # answered by an agent of a recorded group after all (overflow): told first
    answered = flow.handle(AgentAnswered(clock.advance(1), "801", "senior"))
    assert plays(answered) == [RECORDING_NOTICE_PROMPT] and flow.recorded


def test_a_transferred_caller_is_not_told_again(clock: FakeClock) -> None:
    flow, _ = queued(clock)
    flow.handle(PromptFinished(clock.advance(2), "hold"))
    flow.handle(PromptFinished(clock.advance(4), RECORDING_NOTICE_PROMPT))
    flow.handle(AgentAnswered(clock.advance(5), "801", "junior"))
    flow.handle(PromptFinished(clock.advance(2), "agent_801"))
    flow.handle(TransferRequested(clock.advance(10), "801", "senior", "senior"))
    flow.handle(PromptFinished(clock.advance(2), "transfer"))
    assert plays(flow.handle(AgentAnswered(clock.advance(3), "802", "senior"))) == ["agent_802"]
    assert flow.recorded


def test_a_called_back_customer_hears_the_notice_before_the_agent(clock: FakeClock) -> None:
    rule = RECORD_ALL
    flow = CallFlow("cb1", FlowSettings(recording=rule), greeter)
    flow.handle(CallbackStarted(clock.now, "13800000001", "95000", "junior", "consulting", "junior"))
    flow.handle(AgentAnswered(clock.advance(3), "801", "junior"))
    flow.handle(WhisperFinished(clock.advance(2)))
    answered = flow.handle(CustomerAnswered(clock.advance(5)))
    assert plays(answered) == [RECORDING_NOTICE_PROMPT]
    assert plays(flow.handle(PromptFinished(clock.advance(4), RECORDING_NOTICE_PROMPT))) == ["agent_801"]
    assert Bridge() in flow.handle(PromptFinished(clock.advance(2), "agent_801"))
