"""The post-call questionnaire walked as data by the call flow — fake clock, the example's questionnaires."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from ivr.callflow import CallFlow, FlowSettings, State
from ivr.events import (
    Aborted,
    AgentAnswered,
    AgentHungUp,
    CallerIdentified,
    CancelTimer,
    Digit,
    HangUp,
    HungUp,
    Invited,
    Play,
    PromptFinished,
    RecordEvent,
    RecordSurvey,
    RecordSurveyAnswer,
    RecordSurveyRun,
    StartTimer,
    StopPlayback,
    TimerFired,
)
from ivr.greeting import Greeting
from ivr.questionnaire import load_questionnaires

from .test_callflow import FakeClock, control, last_record

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = load_questionnaires(ROOT / "questionnaires.toml.example")
AFTER_SALES = EXAMPLE.questionnaires["after_sales"]
RESOLVED, CALLBACK, ATTITUDE, QUALITY = (f"survey_after_sales_{q}" for q in ("resolved", "callback", "attitude",
                                                                              "quality"))


def greeter(_moment: datetime) -> Greeting:
    return Greeting("normal", "greeting_normal")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def surveyed(clock: FakeClock, menu_digit: str = "4") -> tuple[CallFlow, list]:  # type: ignore[type-arg]
    """A senior caller who chose a service (4: 售后服务), talked with 801, and whose agent just hung up."""
    flow = CallFlow("c1", FlowSettings(ring_seconds=1, questionnaires=EXAMPLE), greeter)
    flow.handle(Invited(clock.now, "13800000001", "95000"))
    flow.handle(CallerIdentified(clock.advance(0.02), "senior", True))
    flow.handle(TimerFired(clock.advance(1), "ring"))
    flow.handle(Digit(clock.advance(2), "9"))
    flow.handle(Digit(clock.advance(1), menu_digit))
    flow.handle(AgentAnswered(clock.advance(1), "801", "senior"))
    flow.handle(PromptFinished(clock.advance(3), "agent_801"))
    actions = flow.handle(AgentHungUp(clock.advance(60)))
    assert flow.state is State.SURVEY
    return flow, actions


def answers(actions: list) -> list[tuple[str, str, str, int | None, bool]]:  # type: ignore[type-arg]
    return [(a.question, a.key, a.value, a.score, a.followup) for a in actions if isinstance(a, RecordSurveyAnswer)]


def runs(actions: list) -> list[tuple[str, str, int, int]]:  # type: ignore[type-arg]
    return [(r.questionnaire, r.status, r.asked, r.answered) for r in actions if isinstance(r, RecordSurveyRun)]


def steps(actions: list, kind: str) -> list[str]:  # type: ignore[type-arg]
    return [a.detail for a in actions if isinstance(a, RecordEvent) and a.kind == kind]


def press(flow: CallFlow, clock: FakeClock, prompt: str, key: str, actions: list) -> list:  # type: ignore[type-arg]
    """The prompt plays out, the caller presses `key`: the actions of both, appended to `actions`."""
    actions += flow.handle(PromptFinished(clock.advance(5), prompt))
    new = flow.handle(Digit(clock.advance(1), key))
    actions += new
    return new


def test_the_service_chooses_the_questionnaire_and_the_first_question_is_asked(clock: FakeClock) -> None:
    flow, actions = surveyed(clock)
    assert Play(RESOLVED) in control(actions)
    assert steps(actions, "survey_started") == [f"questionnaire=after_sales version={AFTER_SALES.version}"]
    assert steps(actions, "survey_prompt") == [f"question=resolved prompt={RESOLVED}"]
    # its own timeout (8 s in the example) counts from the end of the prompt
    assert StartTimer("survey", 8) in flow.handle(PromptFinished(clock.advance(5), RESOLVED))


def test_another_service_gets_the_default_single_question(clock: FakeClock) -> None:
    flow, started = surveyed(clock, menu_digit="1")  # 业务咨询: no route, the default
    assert Play("survey") in control(started)
    actions = press(flow, clock, "survey", "2", [])
    assert answers(actions) == [("rating", "2", "average", 2, False)]
    assert RecordSurvey("c1", clock.now, "801", "senior", 2, "average") in actions
    assert Play("thanks") in actions and runs(actions) == [("satisfaction", "complete", 1, 1)]


def test_three_answers_are_stored_with_the_version_and_the_scored_one_becomes_the_call_score(clock: FakeClock) -> None:
    flow, _ = surveyed(clock)
    actions: list = []  # type: ignore[type-arg]
    assert Play(ATTITUDE) in press(flow, clock, RESOLVED, "1", actions), "solved: the callback question is skipped"
    assert Play(QUALITY) in press(flow, clock, ATTITUDE, "5", actions)
    assert Play("thanks") in press(flow, clock, QUALITY, "4", actions)
    assert answers(actions) == [("resolved", "1", "yes", None, False), ("attitude", "5", "5", 1, False),
                                ("quality", "4", "4", None, False)]
    assert {a.version for a in actions if isinstance(a, RecordSurveyAnswer)} == {AFTER_SALES.version}
    assert runs(actions) == [("after_sales", "complete", 3, 3)]
    assert [(s.score, s.label) for s in actions if isinstance(s, RecordSurvey)] == [(1, "5")]
    assert last_record(actions).survey_score == 1
    actions = flow.handle(PromptFinished(clock.advance(3), "thanks"))
    assert control(actions) == [HangUp()] and last_record(actions).outcome == "completed"


def test_a_no_takes_the_callback_question_and_its_followup_flag_is_stored(clock: FakeClock) -> None:
    flow, _ = surveyed(clock)
    actions: list = []  # type: ignore[type-arg]
    assert Play(CALLBACK) in press(flow, clock, RESOLVED, "2", actions)
    assert Play(ATTITUDE) in press(flow, clock, CALLBACK, "1", actions)
    assert answers(actions) == [("resolved", "2", "no", None, False), ("callback", "1", "callback", None, True)]
    assert steps(actions, "survey_answer")[-1] == "question=callback key=1 value=callback followup=yes"


def test_a_wrong_key_reprompts_once_then_the_next_question(clock: FakeClock) -> None:
    flow, _ = surveyed(clock)
    actions: list = []  # type: ignore[type-arg]
    first = press(flow, clock, RESOLVED, "7", actions)
    assert control(first) == [CancelTimer("survey"), Play(RESOLVED)], "asked once more"
    assert steps(first, "survey_invalid") == ["question=resolved tries=1"]
    assert steps(first, "survey_reprompt") == [f"question=resolved prompt={RESOLVED}"]
    # a wrong key again (over the reprompt): no third asking, the next question without an answer
    second = flow.handle(Digit(clock.advance(1), "9"))
    assert control(second) == [StopPlayback(), CancelTimer("survey"), Play(CALLBACK)]
    assert answers(second) == [] and flow.question is not None and flow.question.id == "callback"


def test_no_key_in_time_reprompts_once_then_the_next_question(clock: FakeClock) -> None:
    flow, _ = surveyed(clock)
    flow.handle(PromptFinished(clock.advance(5), RESOLVED))
    actions = flow.handle(TimerFired(clock.advance(8), "survey"))
    assert control(actions) == [Play(RESOLVED)] and steps(actions, "survey_no_input") == ["question=resolved tries=1"]
    flow.handle(PromptFinished(clock.advance(5), RESOLVED))
    assert control(flow.handle(TimerFired(clock.advance(8), "survey"))) == [Play(CALLBACK)]


def test_silence_to_the_end_walks_every_question_and_is_skipped(clock: FakeClock) -> None:
    flow, _ = surveyed(clock, menu_digit="1")
    actions: list = []  # type: ignore[type-arg]
    for _ in range(2):
        actions += flow.handle(PromptFinished(clock.advance(5), "survey"))
        actions += flow.handle(TimerFired(clock.advance(8), "survey"))
    assert Play("thanks") in actions and runs(actions) == [("satisfaction", "skipped", 1, 0)]
    assert flow.record is not None and flow.record.survey_score is None


def test_a_caller_who_hangs_up_mid_questionnaire_leaves_a_partial_one(clock: FakeClock) -> None:
    flow, _ = surveyed(clock)
    actions: list = []  # type: ignore[type-arg]
    press(flow, clock, RESOLVED, "1", actions)
    actions += flow.handle(HungUp(clock.advance(2)))
    assert answers(actions) == [("resolved", "1", "yes", None, False)]
    assert runs(actions) == [("after_sales", "partial", 2, 1)]
    record = last_record(actions)
    assert (record.outcome, record.hangup_by, record.survey_score) == ("completed", "agent", None)
    assert flow.state is State.ENDED


def test_a_caller_who_hangs_up_before_any_answer_skipped_it(clock: FakeClock) -> None:
    flow, _ = surveyed(clock)
    assert runs(flow.handle(HungUp(clock.advance(2)))) == [("after_sales", "skipped", 1, 0)]


def test_a_call_that_fails_mid_questionnaire_leaves_a_partial_one(clock: FakeClock) -> None:
    flow, _ = surveyed(clock)
    press(flow, clock, RESOLVED, "2", [])
    actions = flow.handle(Aborted(clock.advance(1), "shutdown"))
    assert runs(actions) == [("after_sales", "partial", 2, 1)] and HangUp() in actions


def test_a_caller_who_hangs_up_before_the_agent_skipped_the_questionnaire_of_the_call(clock: FakeClock) -> None:
    flow = CallFlow("c1", FlowSettings(ring_seconds=1, questionnaires=EXAMPLE), greeter)
    flow.handle(Invited(clock.now, "13800000001", "95000"))
    flow.handle(TimerFired(clock.advance(1), "ring"))
    flow.handle(Digit(clock.advance(2), "9"))
    flow.handle(Digit(clock.advance(1), "4"))
    flow.handle(AgentAnswered(clock.advance(1), "821", "junior"))
    flow.handle(PromptFinished(clock.advance(3), "agent_821"))
    actions = flow.handle(HungUp(clock.advance(30)))
    assert runs(actions) == [("after_sales", "skipped", 0, 0)] and answers(actions) == []
