"""The served part of the call flow: menu, queue, agent, survey, complaint — fake clock."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from ivr.callflow import CallFlow, FlowSettings, State
from ivr.events import (
    AgentAnswered,
    AgentHungUp,
    AgentNoAnswer,
    AgentRinging,
    AnnouncePosition,
    Bridge,
    CallerIdentified,
    CancelTimer,
    Digit,
    HangUp,
    HangUpAgent,
    HungUp,
    Invited,
    JoinQueue,
    LeaveQueue,
    Music,
    OpenTicket,
    Play,
    PromptFinished,
    QueuePosition,
    RecordCall,
    RecordEvent,
    RecordSurvey,
    RelayDigit,
    StartTimer,
    StopPlayback,
    TimerFired,
    Unbridge,
)
from ivr.greeting import Greeting
from ivr.service import MenuConfig

from .test_callflow import T0, FakeClock, control, last_record


def greeter(_moment: datetime) -> Greeting:
    return Greeting("normal", "greeting_normal")


def in_menu(clock: FakeClock, tier: str = "junior", menu: MenuConfig | None = None) -> CallFlow:
    flow = CallFlow("c1", FlowSettings(ring_seconds=1, menu=menu or MenuConfig()), greeter)
    flow.handle(Invited(clock.now, "13800000001", "95000"))
    flow.handle(CallerIdentified(clock.advance(0.02), tier, tier != "junior"))
    flow.handle(TimerFired(clock.advance(1), "ring"))
    flow.handle(Digit(clock.advance(2), "9"))
    assert flow.state is State.MENU
    return flow


def queued(clock: FakeClock, tier: str = "senior", digit: str = "1") -> CallFlow:
    flow = in_menu(clock, tier)
    flow.handle(Digit(clock.advance(1), digit))
    assert flow.state is State.QUEUED
    return flow


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_engaged_caller_hears_the_menu_for_their_tier(clock: FakeClock) -> None:
    flow = CallFlow("c1", FlowSettings(ring_seconds=1), greeter)
    flow.handle(Invited(clock.now, "13800000001", "95000"))
    actions = flow.handle(CallerIdentified(clock.advance(0.02), "senior", True))
    assert last_record(actions).tier == "senior"
    flow.handle(TimerFired(clock.advance(1), "ring"))
    actions = flow.handle(Digit(clock.advance(2), "9"))
    assert Play("menu_senior") in actions


@pytest.mark.parametrize(
    ("tier", "digit", "service"),
    [("junior", "1", "consulting"), ("middle", "2", "recommendation"), ("senior", "3", "complaint"),
     ("junior", "4", "after_sales"), ("senior", "5", "personalised")],
)
def test_menu_digit_chooses_the_service_and_the_tier_chooses_the_group(
    clock: FakeClock, tier: str, digit: str, service: str
) -> None:
    flow = in_menu(clock, tier)
    actions = flow.handle(Digit(clock.advance(1), digit))
    assert JoinQueue(tier, service) in actions
    assert Play("hold") in actions
    record = last_record(actions)
    assert (record.service, record.seat_group, record.tier) == (service, tier, tier)


def test_personalised_service_is_senior_only(clock: FakeClock) -> None:
    flow = in_menu(clock, "middle")
    actions = flow.handle(Digit(clock.advance(1), "5"))
    assert flow.state is State.MENU and Play("menu_invalid") in actions


def test_invalid_or_no_input_reprompts_once_then_takes_the_default(clock: FakeClock) -> None:
    flow = in_menu(clock, "junior")
    flow.handle(PromptFinished(clock.advance(4), "menu"))
    actions = flow.handle(TimerFired(clock.advance(5), "menu"))
    assert control(actions) == [Play("menu")]
    actions = flow.handle(Digit(clock.advance(1), "7"))
    assert JoinQueue("junior", "consulting") in actions
    kinds = [a.detail for a in actions if isinstance(a, RecordEvent) and a.kind == "menu_retry"]
    assert kinds == ["reason=invalid tries=2"]


def test_menu_disabled_queues_with_the_default_service(clock: FakeClock) -> None:
    flow = CallFlow("c1", FlowSettings(ring_seconds=1, menu=MenuConfig(enabled=False, default_service="after_sales")), greeter)
    flow.handle(Invited(clock.now, "1", "95000"))
    flow.handle(TimerFired(clock.advance(1), "ring"))
    actions = flow.handle(Digit(clock.advance(1), "1"))
    assert JoinQueue("junior", "after_sales") in actions


def test_waiting_caller_hears_position_on_entering_then_at_intervals(clock: FakeClock) -> None:
    flow = queued(clock)
    actions = flow.handle(PromptFinished(clock.advance(2), "hold"))
    assert control(actions) == [AnnouncePosition()]  # at once on entering the queue
    assert control(flow.handle(QueuePosition(clock.now, 3))) == [Play("queue_position_3")]
    assert control(flow.handle(PromptFinished(clock.advance(3), "queue_position_3"))) == [StartTimer("position", 30.0)]
    assert control(flow.handle(TimerFired(clock.advance(30), "position"))) == [AnnouncePosition()]
    assert control(flow.handle(QueuePosition(clock.now, 12))) == [Play("queue_position_many")]


def test_agent_answers_caller_hears_number_then_they_are_bridged(clock: FakeClock) -> None:
    flow = queued(clock)
    flow.handle(AgentRinging(clock.advance(0.1), "801"))
    flow.handle(AgentNoAnswer(clock.advance(15), "801"))
    flow.handle(AgentRinging(clock.advance(0.1), "802"))
    actions = flow.handle(AgentAnswered(clock.advance(2), "802", "senior"))
    assert control(actions) == [StopPlayback(), CancelTimer("position"), Music(False), Play("agent_802")]
    record = last_record(actions)
    assert (record.agent_number, record.seat_group, record.queue_wait_s) == ("802", "senior", 17.2)
    actions = flow.handle(PromptFinished(clock.advance(3), "agent_802"))
    assert control(actions) == [Bridge()]
    assert flow.state is State.BRIDGED
    assert control(flow.handle(Digit(clock.advance(1), "#"))) == [RelayDigit("#")]


def talking(clock: FakeClock, digit: str = "1") -> CallFlow:
    flow = queued(clock, digit=digit)
    flow.handle(AgentAnswered(clock.advance(1), "801", "senior"))
    flow.handle(PromptFinished(clock.advance(3), "agent_801"))
    return flow


def test_agent_hangs_up_caller_rates_and_is_thanked(clock: FakeClock) -> None:
    flow = talking(clock)
    actions = flow.handle(AgentHungUp(clock.advance(60)))
    assert control(actions) == [Unbridge(), Play("survey")]
    assert last_record(actions).talk_s == 60.0
    flow.handle(PromptFinished(clock.advance(6), "survey"))
    actions = flow.handle(Digit(clock.advance(2), "1"))
    assert RecordSurvey("c1", clock.now, "801", "senior", 1, "satisfied") in actions
    assert Play("thanks") in actions and last_record(actions).survey_score == 1
    actions = flow.handle(PromptFinished(clock.advance(3), "thanks"))
    assert control(actions) == [HangUp()]
    record = last_record(actions)
    assert (record.outcome, record.hangup_by, record.survey_score) == ("completed", "agent", 1)


def test_survey_reprompts_once_then_closes_without_a_score(clock: FakeClock) -> None:
    flow = talking(clock)
    flow.handle(AgentHungUp(clock.advance(60)))
    flow.handle(PromptFinished(clock.advance(6), "survey"))
    # not a rating key: asked once more (the timer of the first asking is stopped)
    assert control(flow.handle(Digit(clock.advance(1), "7"))) == [CancelTimer("survey"), Play("survey")]
    flow.handle(PromptFinished(clock.advance(6), "survey"))
    assert control(flow.handle(TimerFired(clock.advance(8), "survey"))) == [Play("thanks")]
    actions = flow.handle(PromptFinished(clock.advance(3), "thanks"))
    assert last_record(actions).survey_score is None and last_record(actions).outcome == "completed"


def test_caller_hangs_up_first_survey_skipped(clock: FakeClock) -> None:
    flow = talking(clock)
    actions = flow.handle(HungUp(clock.advance(30)))
    assert control(actions) == [Unbridge(), HangUpAgent()]
    record = last_record(actions)
    assert (record.outcome, record.hangup_by, record.survey_score, record.talk_s) == ("completed", "caller", None, 30.0)
    assert ("survey_skipped", "caller hung up first") in [(a.kind, a.detail) for a in actions if isinstance(a, RecordEvent)]


def test_caller_hanging_up_in_queue_is_abandoned_queue_with_the_wait(clock: FakeClock) -> None:
    flow = queued(clock)
    actions = flow.handle(HungUp(clock.advance(42)))
    assert LeaveQueue() in actions
    record = last_record(actions)
    assert (record.outcome, record.hangup_by, record.queue_wait_s) == ("abandoned_queue", "caller", 42.0)


def test_complaint_opens_a_ticket_due_within_a_day(clock: FakeClock) -> None:
    flow = queued(clock, digit="3")
    actions = flow.handle(AgentAnswered(clock.advance(5), "801", "senior"))
    [ticket] = [a for a in actions if isinstance(a, OpenTicket)]
    assert (ticket.customer_phone, ticket.agent_number, ticket.seat_group) == ("13800000001", "801", "senior")
    assert ticket.next_feedback_due == clock.now + timedelta(hours=24)


def test_every_record_is_of_the_same_call() -> None:
    clock = FakeClock()
    flow = talking(clock)
    actions = flow.handle(AgentHungUp(clock.advance(1)))
    assert all(a.record.sip_call_id == "c1" for a in actions if isinstance(a, RecordCall))
    assert T0 < clock.now
