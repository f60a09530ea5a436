"""The call flow, driven by events with a fake clock; assertions on the actions it returns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ivr.callflow import CallFlow, CallFlowError, FlowSettings, SilentRoutine, State
from ivr.events import (
    Aborted,
    Answer,
    CallerIdentified,
    CallRecord,
    Cancelled,
    CancelTimer,
    Digit,
    HangUp,
    HungUp,
    Invited,
    Listen,
    Play,
    PromptFinished,
    RecordCall,
    RecordEvent,
    RecordSurveyAnswer,
    RecordSurveyRun,
    Reject,
    Ring,
    SpeechStarted,
    StartTimer,
    StopPlayback,
    TimerFired,
)
from ivr.greeting import Greeting

T0 = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def greeter(_moment: datetime) -> Greeting:
    return Greeting("morning", "greeting_morning")


def control(actions: list) -> list:
    """The actions that drive the call (records left out)."""
    return [a for a in actions if not isinstance(a, (RecordCall, RecordEvent, RecordSurveyAnswer, RecordSurveyRun))]


def last_record(actions: list) -> CallRecord:
    return [a for a in actions if isinstance(a, RecordCall)][-1].record


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def answered_flow(clock: FakeClock, settings: FlowSettings | None = None) -> tuple[CallFlow, list]:
    flow = CallFlow("call-1", settings or FlowSettings(ring_seconds=6), greeter)
    flow.handle(Invited(clock.now, "13800000001", "95000"))
    actions = flow.handle(TimerFired(clock.advance(6), "ring"))
    return flow, actions


def test_invite_rings_then_answers_after_ring_seconds(clock: FakeClock) -> None:
    flow = CallFlow("call-1", FlowSettings(ring_seconds=6), greeter)
    actions = flow.handle(Invited(clock.now, "13800000001", "95000"))
    assert control(actions) == [Ring(), StartTimer("ring", 6)]
    assert last_record(actions) == CallRecord("call-1", "13800000001", "95000", started_at=T0)

    actions = flow.handle(TimerFired(clock.advance(6), "ring"))
    assert control(actions) == [Answer(), Listen(True), Play("greeting_morning")]
    record = last_record(actions)
    assert record.answered_at == T0 + timedelta(seconds=6)
    assert record.greeting == "morning"


def test_silent_caller_hears_three_prompts_before_hangup(clock: FakeClock) -> None:
    flow, actions = answered_flow(clock)
    played = [a.prompt for a in actions if isinstance(a, Play)]
    timeline: list = []
    for prompt_seconds in (7.0, 3.4, 6.7):
        actions = flow.handle(PromptFinished(clock.advance(prompt_seconds), played[-1]))
        timeline += control(actions)
        assert control(actions) == [StartTimer("silence", 5.0)], "the 5 s wait counts from the end of the prompt"
        actions = flow.handle(TimerFired(clock.advance(5), "silence"))
        timeline += control(actions)
        played += [a.prompt for a in actions if isinstance(a, Play)]

    assert played == ["greeting_morning", "silent_2", "silent_3"]
    assert timeline == [
        StartTimer("silence", 5.0), Play("silent_2"),
        StartTimer("silence", 5.0), Play("silent_3"),
        StartTimer("silence", 5.0), Listen(False), HangUp(),
    ]
    record = last_record(actions)
    assert (record.outcome, record.hangup_by, record.silent_attempts) == ("silent", "ivr", 3)
    assert record.ended_at == T0 + timedelta(seconds=6 + 7.0 + 3.4 + 6.7 + 15)
    assert flow.state is State.ENDED


def test_no_hangup_before_the_third_attempt_even_with_early_timers(clock: FakeClock) -> None:
    flow, _ = answered_flow(clock)
    # a silence timer while the greeting still plays is a bug upstream: refused, never a hang-up
    with pytest.raises(CallFlowError):
        flow.handle(TimerFired(clock.advance(5), "silence"))
    flow.handle(PromptFinished(clock.advance(1), "greeting_morning"))
    actions = flow.handle(TimerFired(clock.advance(5), "silence"))
    assert HangUp() not in actions


def test_longer_routine_repeats_the_second_prompt(clock: FakeClock) -> None:
    routine = SilentRoutine(("{greeting}", "silent_2", "silent_2", "silent_3"), 5.0)
    flow, actions = answered_flow(clock, FlowSettings(ring_seconds=6, silent_routine=routine))
    played = [a.prompt for a in actions if isinstance(a, Play)]
    while not flow.ended:
        flow.handle(PromptFinished(clock.advance(3), played[-1]))
        actions = flow.handle(TimerFired(clock.advance(5), "silence"))
        played += [a.prompt for a in actions if isinstance(a, Play)]
    assert played == ["greeting_morning", "silent_2", "silent_2", "silent_3"]
    assert last_record(actions).silent_attempts == 4


@pytest.mark.parametrize("silent_waits", [0, 1, 2])
@pytest.mark.parametrize("while_playing", [True, False])
@pytest.mark.parametrize("engage", ["speech", "digit"])
def test_speech_or_digit_ends_the_routine_at_each_attempt(
    clock: FakeClock, silent_waits: int, while_playing: bool, engage: str
) -> None:
    flow, actions = answered_flow(clock)
    prompt = [a.prompt for a in actions if isinstance(a, Play)][-1]
    for _ in range(silent_waits):
        flow.handle(PromptFinished(clock.advance(3), prompt))
        actions = flow.handle(TimerFired(clock.advance(5), "silence"))
        prompt = [a.prompt for a in actions if isinstance(a, Play)][-1]
    if not while_playing:
        flow.handle(PromptFinished(clock.advance(3), prompt))
    event = SpeechStarted(clock.advance(1)) if engage == "speech" else Digit(clock.advance(1), "1")
    actions = flow.handle(event)

    expected = [StopPlayback()] if while_playing else []
    expected += [CancelTimer("silence"), Listen(False), Play("menu")]
    assert control(actions) == expected
    assert flow.state is State.MENU
    kinds = [a.kind for a in actions if isinstance(a, RecordEvent)]
    assert kinds == [engage, "engaged"]

    # and the IVR never hangs up on an engaged caller: only the caller ends it
    actions = flow.handle(HungUp(clock.advance(30)))
    assert HangUp() not in actions
    record = last_record(actions)
    assert (record.outcome, record.hangup_by, record.silent_attempts) == ("caller_hangup", "caller", silent_waits)


def test_cancel_while_ringing_is_abandoned_ringing(clock: FakeClock) -> None:
    flow = CallFlow("call-1", FlowSettings(ring_seconds=6), greeter)
    flow.handle(Invited(clock.now, "13800000001", "95000"))
    actions = flow.handle(Cancelled(clock.advance(2)))
    assert control(actions) == [CancelTimer("ring")]
    record = last_record(actions)
    assert (record.outcome, record.hangup_by, record.answered_at) == ("abandoned_ringing", "caller", None)
    assert record.ended_at == T0 + timedelta(seconds=2)
    # the ring timer that raced the CANCEL is ignored
    assert flow.handle(TimerFired(clock.advance(4), "ring")) == []


def test_caller_hangs_up_during_the_silent_routine(clock: FakeClock) -> None:
    flow, _ = answered_flow(clock)
    flow.handle(PromptFinished(clock.advance(7), "greeting_morning"))
    actions = flow.handle(HungUp(clock.advance(2)))
    assert CancelTimer("silence") in actions and HangUp() not in actions
    record = last_record(actions)
    assert (record.outcome, record.hangup_by, record.silent_attempts) == ("caller_hangup", "caller", 0)


def test_shutdown_ends_answered_calls_with_bye_and_ringing_calls_with_503(clock: FakeClock) -> None:
    flow, _ = answered_flow(clock)
    actions = flow.handle(Aborted(clock.advance(1), "shutdown"))
    assert HangUp() in actions
    assert (last_record(actions).outcome, last_record(actions).hangup_by) == ("failed", "ivr")

    ringing = CallFlow("call-2", FlowSettings(), greeter)
    ringing.handle(Invited(clock.now, "1", "95000"))
    actions = ringing.handle(Aborted(clock.advance(1), "shutdown"))
    assert Reject(503, "Service Unavailable") in actions
    assert last_record(actions).outcome == "failed"


def test_every_step_is_recorded_with_its_time(clock: FakeClock) -> None:
    flow = CallFlow("call-1", FlowSettings(ring_seconds=6), greeter)
    steps = []
    steps += flow.handle(Invited(clock.now, "13800000001", "95000"))
    steps += flow.handle(TimerFired(clock.advance(6), "ring"))
    steps += flow.handle(PromptFinished(clock.advance(7), "greeting_morning"))
    steps += flow.handle(TimerFired(clock.advance(5), "silence"))
    steps += flow.handle(Digit(clock.advance(1), "#", "info"))
    steps += flow.handle(HungUp(clock.advance(3)))
    events = [(e.kind, e.detail) for e in steps if isinstance(e, RecordEvent)]
    assert events == [
        ("invited", "caller=13800000001 callee=95000"),
        ("answered", "greeting=morning"),
        ("prompt", "attempt=1 prompt=greeting_morning"),
        ("silence", "attempt=1"),
        ("prompt", "attempt=2 prompt=silent_2"),
        ("digit", "digit=# via=info"),
        ("engaged", "after_attempt=2"),
        ("caller_bye", ""),
        ("ended", "outcome=caller_hangup hangup_by=caller"),
    ]
    assert all(e.sip_call_id == "call-1" for e in steps if isinstance(e, RecordEvent))


def test_event_not_allowed_in_state_raises_named_error(clock: FakeClock) -> None:
    flow = CallFlow("call-1", FlowSettings(), greeter)
    with pytest.raises(CallFlowError, match="Digit is not allowed in state init"):
        flow.handle(Digit(clock.now, "1"))
    flow.handle(Invited(clock.now, "1", "95000"))
    with pytest.raises(CallFlowError, match="SpeechStarted is not allowed in state ringing"):
        flow.handle(SpeechStarted(clock.now))


def test_late_events_after_the_end_are_ignored(clock: FakeClock) -> None:
    flow, _ = answered_flow(clock)
    flow.handle(HungUp(clock.advance(1)))
    for late in (HungUp(clock.now), TimerFired(clock.now, "silence"), PromptFinished(clock.now, "silent_2"), Digit(clock.now, "1")):
        assert flow.handle(late) == []


# --- greeting senior callers by name ([tiers] greet_senior_by_name) ---------------------


def greeted_by_name(clock: FakeClock) -> tuple[CallFlow, list]:
    flow = CallFlow("call-1", FlowSettings(ring_seconds=6), greeter)
    flow.handle(Invited(clock.now, "13800000001", "95000"))
    flow.handle(CallerIdentified(clock.advance(0.1), "senior", True, "salutation_张先生"))
    return flow, flow.handle(TimerFired(clock.advance(6), "ring"))


def test_a_senior_caller_hears_the_salutation_then_the_greeting_then_the_silent_wait(clock: FakeClock) -> None:
    flow, actions = greeted_by_name(clock)
    assert control(actions) == [Answer(), Listen(True), Play("salutation_张先生")]
    assert "salutation=salutation_张先生" in [a for a in actions if isinstance(a, RecordEvent)][-1].detail
    assert control(flow.handle(PromptFinished(clock.advance(0.8), "salutation_张先生"))) == [Play("greeting_morning")]
    assert flow.state is State.PROMPTING, "still greeting: speech now is barge-in, not an answer to silence"
    assert control(flow.handle(PromptFinished(clock.advance(7), "greeting_morning"))) == [StartTimer("silence", 5.0)]
    # the routine's next attempts are not said by name
    assert control(flow.handle(TimerFired(clock.advance(5), "silence"))) == [Play("silent_2")]


def test_speaking_over_the_salutation_skips_the_greeting(clock: FakeClock) -> None:
    flow, _ = greeted_by_name(clock)
    actions = flow.handle(SpeechStarted(clock.advance(0.3)))
    assert StopPlayback() in actions and flow.state is State.MENU
    menu = [a.prompt for a in actions if isinstance(a, Play)]
    assert menu == ["menu_senior"]
    actions = flow.handle(PromptFinished(clock.advance(4), "menu_senior"))
    assert not [a for a in actions if isinstance(a, Play)], "the greeting never follows once the caller spoke"


def test_an_identification_after_the_greeting_began_does_not_greet_by_name(clock: FakeClock) -> None:
    flow, actions = answered_flow(clock)
    assert control(actions)[-1] == Play("greeting_morning")
    flow.handle(CallerIdentified(clock.advance(0.5), "senior", True, "salutation_张先生"))
    assert control(flow.handle(PromptFinished(clock.advance(7), "greeting_morning"))) == [StartTimer("silence", 5.0)]
    flow.handle(TimerFired(clock.advance(5), "silence"))
    assert flow.salutation is None


def test_without_a_salutation_the_greeting_is_as_always(clock: FakeClock) -> None:
    flow = CallFlow("call-1", FlowSettings(ring_seconds=6), greeter)
    flow.handle(Invited(clock.now, "13800000001", "95000"))
    flow.handle(CallerIdentified(clock.advance(0.1), "senior", True))
    assert control(flow.handle(TimerFired(clock.advance(6), "ring"))) == [Answer(), Listen(True), Play("greeting_morning")]
