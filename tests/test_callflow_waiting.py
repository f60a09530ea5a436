"""Waiting callers in the call flow, on a fake clock: music, the expected wait, the callback key, business hours."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ivr.callflow import CallFlow, FlowSettings, State
from ivr.events import (
    AgentAnswered,
    AgentHungUp,
    AnnouncePosition,
    Answer,
    CallbackStarted,
    CancelTimer,
    CustomerAnswered,
    CustomerFailed,
    DialCustomer,
    Digit,
    HangUp,
    HangUpAgent,
    HungUp,
    Invited,
    JoinQueue,
    LeaveQueue,
    Listen,
    Music,
    OpenTicket,
    Play,
    PromptFinished,
    QueuePosition,
    RecordEvent,
    RecordSurvey,
    RequestCallback,
    StartTimer,
    StopPlayback,
    TimerFired,
    TransferRequested,
    Unbridge,
    Whisper,
    WhisperFinished,
)
from ivr.greeting import Greeting
from ivr.hours import BusinessHours, HoursConfig, parse_schedule
from ivr.service import MenuConfig

from .test_callflow import FakeClock, control, last_record

CALLER = "13800000001"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def greeter(_moment: datetime) -> Greeting:
    return Greeting("normal", "greeting_normal")


def settings(**kw: object) -> FlowSettings:
    return FlowSettings(ring_seconds=1, menu=MenuConfig(enabled=False), **kw)  # type: ignore[arg-type]


def queued(clock: FakeClock, caller: str = CALLER, **kw: object) -> tuple[CallFlow, list]:
    flow = CallFlow("c1", settings(**kw), greeter)
    flow.handle(Invited(clock.now, caller, "95000"))
    flow.handle(TimerFired(clock.advance(1), "ring"))
    actions = flow.handle(Digit(clock.advance(1), "1"))
    assert flow.state is State.QUEUED
    return flow, actions


def test_joining_the_queue_starts_the_music_and_the_hold_prompt(clock: FakeClock) -> None:
    _, actions = queued(clock)
    assert control(actions)[-3:] == [JoinQueue("junior", "consulting"), Music(True), Play("hold")]


def test_entering_the_queue_announces_position_and_expected_wait_then_music_until_the_next(clock: FakeClock) -> None:
    flow, _ = queued(clock)
    assert control(flow.handle(PromptFinished(clock.advance(2), "hold"))) == [AnnouncePosition()]
    actions = flow.handle(QueuePosition(clock.now, 3, True, 130.0))
    assert control(actions) == [Play("queue_position_3")]
    assert RecordEvent("c1", clock.now, "announced", "position=3 wait_s=130 agents_online=yes") in actions
    assert control(flow.handle(PromptFinished(clock.advance(3), "queue_position_3"))) == [Play("wait_minutes_2")]
    # after the last announcement prompt: music (still on) until the timer asks again
    assert control(flow.handle(PromptFinished(clock.advance(2), "wait_minutes_2"))) == [StartTimer("position", 30.0)]
    assert control(flow.handle(TimerFired(clock.advance(30), "position"))) == [AnnouncePosition()]
    assert control(flow.handle(QueuePosition(clock.now, 1, True, 20.0))) == [Play("queue_position_1")]
    assert control(flow.handle(PromptFinished(clock.advance(3), "queue_position_1"))) == [Play("wait_under_minute")]


@pytest.mark.parametrize(("wait", "prompts"), [
    (45.0, ["queue_position_2", "wait_under_minute"]),
    (299.0, ["queue_position_2", "wait_minutes_5"]),
    (300.0, ["queue_position_2", "wait_minutes_5", "callback_offer"]),  # max_wait_seconds: the callback offered
    (4000.0, ["queue_position_2", "wait_minutes_many", "callback_offer"]),
])
def test_the_announcement_says_the_wait_and_offers_a_callback_beyond_max_wait(
    clock: FakeClock, wait: float, prompts: list[str]
) -> None:
    flow, _ = queued(clock)
    flow.handle(PromptFinished(clock.advance(2), "hold"))
    heard = [a.prompt for a in control(flow.handle(QueuePosition(clock.now, 2, True, wait))) if isinstance(a, Play)]
    for _ in range(5):
        heard += [a.prompt for a in flow.handle(PromptFinished(clock.advance(1), heard[-1])) if isinstance(a, Play)]
    assert heard == prompts


def test_without_an_estimate_only_the_position_and_with_announce_wait_off_no_wait(clock: FakeClock) -> None:
    flow, _ = queued(clock)
    flow.handle(PromptFinished(clock.advance(2), "hold"))
    assert control(flow.handle(QueuePosition(clock.now, 2, True, None))) == [Play("queue_position_2")]
    flow, _ = queued(FakeClock(), announce_wait=False)
    flow.handle(PromptFinished(clock.advance(2), "hold"))
    assert control(flow.handle(QueuePosition(clock.now, 2, True, 100.0))) == [Play("queue_position_2")]


def test_nobody_logged_in_is_said_at_once_with_the_callback_offer(clock: FakeClock) -> None:
    flow, _ = queued(clock)
    flow.handle(PromptFinished(clock.advance(2), "hold"))
    assert control(flow.handle(QueuePosition(clock.now, 1, False, None))) == [Play("no_agent")]
    assert control(flow.handle(PromptFinished(clock.advance(5), "no_agent"))) == [Play("callback_offer")]


def test_a_withheld_number_is_never_offered_a_callback_and_its_key_does_nothing(clock: FakeClock) -> None:
    flow, _ = queued(clock, caller="anonymous")
    flow.handle(PromptFinished(clock.advance(2), "hold"))
    assert control(flow.handle(QueuePosition(clock.now, 1, False, None))) == [Play("no_agent")]
    assert control(flow.handle(Digit(clock.advance(1), "#"))) == []
    assert flow.state is State.QUEUED


def test_callback_key_in_the_queue_leaves_it_stores_the_request_and_says_goodbye(clock: FakeClock) -> None:
    flow, _ = queued(clock)
    flow.handle(PromptFinished(clock.advance(2), "hold"))
    flow.handle(QueuePosition(clock.now, 1, True, 400.0))
    actions = flow.handle(Digit(clock.advance(2), "#"))
    assert control(actions) == [
        LeaveQueue(), CancelTimer("position"), Music(False), StopPlayback(),
        RequestCallback("c1", clock.now, CALLER, "junior", "consulting", "junior", clock.now),
        Play("callback_confirmed"),
    ]
    assert flow.state is State.CALLBACK
    assert last_record(actions).queue_wait_s == 4.0
    actions = flow.handle(PromptFinished(clock.advance(4), "callback_confirmed"))
    assert control(actions) == [HangUp()]
    assert (last_record(actions).outcome, last_record(actions).hangup_by) == ("callback_requested", "ivr")


def test_another_key_in_the_queue_is_only_recorded(clock: FakeClock) -> None:
    flow, _ = queued(clock, callback_key="*")
    assert control(flow.handle(Digit(clock.advance(1), "#"))) == []
    assert flow.state is State.QUEUED
    assert any(isinstance(a, RequestCallback) for a in flow.handle(Digit(clock.advance(1), "*")))


# --- business hours ------------------------------------------------------------------

NINE_TO_FIVE = BusinessHours(HoursConfig(schedules={"default": parse_schedule("09:00-17:00")}), lambda _d: None)
EVENING = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # 20:00 in Shanghai: closed
NEXT_MORNING = datetime(2026, 11, 26, 1, 0, tzinfo=UTC)  # 09:00 the next day in Shanghai


def closed_call(clock: FakeClock) -> tuple[CallFlow, list]:
    clock.now = EVENING
    flow = CallFlow("c1", settings(hours=NINE_TO_FIVE), greeter)
    flow.handle(Invited(clock.now, CALLER, "95000"))
    return flow, flow.handle(TimerFired(clock.advance(1), "ring"))


def test_within_business_hours_the_greeting_plays(clock: FakeClock) -> None:
    flow = CallFlow("c1", settings(hours=NINE_TO_FIVE), greeter)  # T0 is 10:00 in Shanghai
    flow.handle(Invited(clock.now, CALLER, "95000"))
    assert Play("greeting_normal") in flow.handle(TimerFired(clock.advance(1), "ring"))
    assert flow.state is State.PROMPTING


def test_outside_business_hours_the_closed_message_then_the_callback_offer(clock: FakeClock) -> None:
    flow, actions = closed_call(clock)
    assert control(actions) == [Answer(), Play("closed_default")]
    assert Listen(True) not in actions
    assert flow.state is State.CLOSED
    assert control(flow.handle(PromptFinished(clock.advance(12), "closed_default"))) == [Play("callback_offer")]
    assert control(flow.handle(PromptFinished(clock.advance(3), "callback_offer"))) == [StartTimer("closed", 8.0)]
    actions = flow.handle(TimerFired(clock.advance(8), "closed"))
    assert control(actions) == [HangUp()]
    assert (last_record(actions).outcome, last_record(actions).hangup_by) == ("closed", "ivr")


def test_outside_business_hours_the_callback_key_leaves_a_request_due_at_the_opening(clock: FakeClock) -> None:
    flow, _ = closed_call(clock)
    actions = flow.handle(Digit(clock.advance(3), "#"))
    request = next(a for a in actions if isinstance(a, RequestCallback))
    assert (request.number, request.due_at) == (CALLER, NEXT_MORNING)
    assert flow.state is State.CALLBACK
    actions = flow.handle(PromptFinished(clock.advance(4), "callback_confirmed"))
    assert last_record(actions).outcome == "closed"


def test_outside_business_hours_a_caller_who_hangs_up_is_closed(clock: FakeClock) -> None:
    flow, _ = closed_call(clock)
    actions = flow.handle(HungUp(clock.advance(2)))
    assert (last_record(actions).outcome, last_record(actions).hangup_by) == ("closed", "caller")


# --- calling back ------------------------------------------------------------------------


def dialling(clock: FakeClock) -> tuple[CallFlow, list]:
    flow = CallFlow("cb1", settings(), greeter)
    return flow, flow.handle(CallbackStarted(clock.now, CALLER, "95000", "senior", "complaint", "senior"))


def test_a_callback_rings_an_agent_of_the_group_first_and_whispers_to_them(clock: FakeClock) -> None:
    flow, actions = dialling(clock)
    assert control(actions) == [JoinQueue("senior", "complaint"), StartTimer("dial", 120.0)]
    record = last_record(actions)
    assert (record.caller, record.callee, record.tier, record.seat_group, record.answered_at) == (
        CALLER, "95000", "senior", "senior", None)
    actions = flow.handle(AgentAnswered(clock.advance(2), "801", "senior"))
    assert control(actions) == [CancelTimer("dial"), Whisper(("whisper_senior", "whisper_complaint", "whisper_callback"))]
    assert control(flow.handle(WhisperFinished(clock.advance(3)))) == [DialCustomer()]
    assert flow.state is State.DIALLING


def test_the_customer_answers_hears_the_agent_number_then_is_bridged_and_rates(clock: FakeClock) -> None:
    flow, _ = dialling(clock)
    flow.handle(AgentAnswered(clock.advance(2), "801", "senior"))
    flow.handle(WhisperFinished(clock.advance(3)))
    actions = flow.handle(CustomerAnswered(clock.advance(4)))
    assert Play("agent_801") in actions and any(isinstance(a, OpenTicket) for a in actions)  # a complaint: a ticket
    assert last_record(actions).answered_at == clock.now
    flow.handle(PromptFinished(clock.advance(3), "agent_801"))
    flow.handle(AgentHungUp(clock.advance(60)))
    assert flow.state is State.SURVEY
    actions = flow.handle(Digit(clock.advance(3), "1"))
    survey = next(a for a in actions if isinstance(a, RecordSurvey))
    assert (survey.agent_number, survey.score) == ("801", 1)
    actions = flow.handle(PromptFinished(clock.advance(2), "thanks"))
    assert last_record(actions).outcome == "callback_completed"


@pytest.mark.parametrize("outcome", ["no_answer", "busy", "declined", "failed"])
def test_a_customer_not_reached_frees_the_agent_and_records_why(clock: FakeClock, outcome: str) -> None:
    flow, _ = dialling(clock)
    flow.handle(AgentAnswered(clock.advance(2), "801", "senior"))
    flow.handle(WhisperFinished(clock.advance(3)))
    actions = flow.handle(CustomerFailed(clock.advance(30), outcome, 480))
    assert control(actions) == [HangUpAgent()]
    assert (last_record(actions).outcome, flow.state) == (f"callback_{outcome}", State.ENDED)


def test_a_callback_no_agent_takes_in_time_is_a_failed_attempt(clock: FakeClock) -> None:
    flow, _ = dialling(clock)
    actions = flow.handle(TimerFired(clock.advance(120), "dial"))
    assert LeaveQueue() in actions and HangUpAgent() in actions
    assert last_record(actions).outcome == "callback_failed"


# --- transfers ---------------------------------------------------------------------------


def test_a_transfer_releases_the_agent_plays_music_and_the_survey_rates_the_last_agent(clock: FakeClock) -> None:
    flow, _ = queued(clock)
    flow.handle(AgentAnswered(clock.advance(5), "801", "junior"))
    flow.handle(PromptFinished(clock.advance(3), "agent_801"))
    actions = flow.handle(TransferRequested(clock.advance(40), "801", "middle", "complaint"))
    assert control(actions) == [Unbridge(), HangUpAgent(), Music(True), JoinQueue("middle", "consulting"), Play("transfer")]
    assert RecordEvent("c1", clock.now, "transferred", "from=801 to=complaint seat_group=middle") in actions
    assert flow.state is State.TRANSFERRING
    assert control(flow.handle(PromptFinished(clock.advance(2), "transfer"))) == []  # music until someone answers
    actions = flow.handle(AgentAnswered(clock.advance(8), "811", "middle"))
    assert control(actions) == [Music(False), Play("agent_811")]
    flow.handle(PromptFinished(clock.advance(3), "agent_811"))
    actions = flow.handle(AgentHungUp(clock.advance(20)))
    assert last_record(actions).talk_s == 60.0  # both agents' talk
    actions = flow.handle(Digit(clock.advance(3), "3"))
    survey = next(a for a in actions if isinstance(a, RecordSurvey))
    assert (survey.agent_number, survey.seat_group, survey.score) == ("811", "middle", 3)


def test_a_caller_who_has_waited_max_wait_seconds_is_offered_the_callback_whatever_the_estimate(clock: FakeClock) -> None:
    flow, _ = queued(clock, max_wait_seconds=60.0)
    flow.handle(PromptFinished(clock.advance(2), "hold"))
    assert control(flow.handle(QueuePosition(clock.now, 1, True, 20.0))) == [Play("queue_position_1")]
    for prompt in ("queue_position_1", "wait_under_minute"):
        flow.handle(PromptFinished(clock.advance(2), prompt))
    flow.handle(TimerFired(clock.advance(60), "position"))
    heard = [a.prompt for a in flow.handle(QueuePosition(clock.now, 1, True, 20.0)) if isinstance(a, Play)]
    for _ in range(3):
        heard += [a.prompt for a in flow.handle(PromptFinished(clock.advance(1), heard[-1])) if isinstance(a, Play)]
    assert heard == ["queue_position_1", "wait_under_minute", "callback_offer"]
