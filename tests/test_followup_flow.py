"""The follow-up call's flow (ivr.followup_flow), driven with a fake clock: events in, actions out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ivr.events import (
    Aborted,
    CancelTimer,
    CustomerAnswered,
    CustomerFailed,
    Digit,
    HangUp,
    HungUp,
    Play,
    PromptFinished,
    StartTimer,
    StopPlayback,
    TimerFired,
)
from ivr.followup_flow import (
    _TRANSITIONS,
    ANSWER_TIMER,
    Choice,
    DialFollowup,
    FollowupEnded,
    FollowupFlow,
    FollowupFlowError,
    FollowupStarted,
    Question,
    Script,
    State,
    TransferToAgent,
    script_for,
)
from prompts.followup import followup_texts

T0 = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
DEPARTMENTS = ("客服部", "技术部", "财务部", "售后服务部", "合规部")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self, seconds: float = 0) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def started(kind: str = "resolved") -> tuple[FollowupFlow, Clock, list[object]]:
    flow, clock = FollowupFlow(), Clock()
    actions = flow.handle(FollowupStarted(clock(), 7, "13800000001", script_for(kind, 11, 25, "售后服务部", DEPARTMENTS)))
    return flow, clock, actions


def play_out(flow: FollowupFlow, clock: Clock, actions: list[object]) -> list[object]:
    """Let every prompt play to its end, as the media clock would; the actions of the last one."""
    while any(isinstance(a, Play) for a in actions):
        prompt = next(a.prompt for a in actions if isinstance(a, Play))
        actions = flow.handle(PromptFinished(clock(2), prompt))
    return actions


def played(flow: FollowupFlow, clock: Clock, actions: list[object]) -> list[str]:
    prompts = []
    while any(isinstance(a, Play) for a in actions):
        prompt = next(a.prompt for a in actions if isinstance(a, Play))
        prompts.append(prompt)
        actions = flow.handle(PromptFinished(clock(2), prompt))
    return prompts


def ended(actions: list[object]) -> FollowupEnded:
    return next(a for a in actions if isinstance(a, FollowupEnded))


def test_the_call_is_dialled_then_says_who_calls_and_why_from_rendered_fragments() -> None:
    flow, clock, actions = started()
    assert DialFollowup(7) in actions and flow.state is State.DIALLING
    actions = flow.handle(CustomerAnswered(clock(5)))
    assert played(flow, clock, actions) == [
        "followup_intro", "followup_month_11", "followup_day_25", "followup_resolved_by",
        "followup_department_4", "followup_resolved", "followup_question"]
    texts = followup_texts(DEPARTMENTS)
    # 您好,这里是客服热线,您在十一月二十五日反映的问题已由售后服务部处理完毕。
    intro = "".join(texts[p] for p in script_for("resolved", 11, 25, "售后服务部", DEPARTMENTS).intro)
    assert intro == "您好,这里是{company}客服热线,您在十一月二十五日反映的问题已由售后服务部处理完毕。"
    assert flow.state is State.ASKING


def test_every_fragment_a_script_names_is_rendered() -> None:
    texts = followup_texts(DEPARTMENTS)
    for kind in ("resolved", "daily", "wrap_up", "survey"):
        for month, day in ((1, 1), (2, 29), (12, 31)):
            for department in (*DEPARTMENTS, "未知部门", None):
                script = script_for(kind, month, day, department, DEPARTMENTS)
                names = [*script.intro] + [p for q in script.questions for p in (q.prompt, q.invalid_prompt,
                                                                                 q.no_input_reply) if p]
                names += [c.reply for q in script.questions for c in q.choices]
                assert set(names) <= set(texts), set(names) - set(texts)


@pytest.mark.parametrize(("key", "outcome", "reply"), [
    ("1", "satisfied", "followup_thanks"),
    ("2", "dissatisfied", "followup_sorry"),
    ("0", "agent", "followup_agent"),
    ("9", "do_not_call", "followup_do_not_call"),
])
def test_a_key_answers_the_question_the_reply_is_played_then_the_call_ends(key: str, outcome: str, reply: str) -> None:
    flow, clock, actions = started()
    actions = play_out(flow, clock, flow.handle(CustomerAnswered(clock(5))))
    assert StartTimer(ANSWER_TIMER, 8.0) in actions
    actions = flow.handle(Digit(clock(1), key, "rfc4733"))
    assert Play(reply) in actions and flow.state is State.REPLYING
    actions = flow.handle(PromptFinished(clock(3), reply))
    assert HangUp() in actions
    assert (ended(actions).outcome, ended(actions).answers) == (outcome, (("satisfaction", key),))
    assert flow.ended


def test_a_key_during_the_intro_stops_it_and_answers() -> None:
    flow, clock, _ = started()
    flow.handle(CustomerAnswered(clock(5)))
    actions = flow.handle(Digit(clock(1), "1", "rfc4733"))
    assert StopPlayback() in actions and Play("followup_thanks") in actions


def test_no_key_asks_once_more_then_says_goodbye_with_no_input() -> None:
    flow, clock, actions = started()
    play_out(flow, clock, flow.handle(CustomerAnswered(clock(5))))
    actions = flow.handle(TimerFired(clock(8), ANSWER_TIMER))
    assert Play("followup_question") in actions
    play_out(flow, clock, actions)
    actions = flow.handle(TimerFired(clock(8), ANSWER_TIMER))
    assert Play("followup_goodbye") in actions
    assert ended(flow.handle(PromptFinished(clock(2), "followup_goodbye"))).outcome == "no_input"


def test_a_wrong_key_says_so_and_asks_again() -> None:
    flow, clock, actions = started()
    play_out(flow, clock, flow.handle(CustomerAnswered(clock(5))))
    actions = flow.handle(Digit(clock(1), "5", "rfc4733"))
    assert Play("followup_invalid") in actions and flow.state is State.ASKING
    actions = flow.handle(PromptFinished(clock(2), "followup_invalid"))
    assert Play("followup_question") in actions


@pytest.mark.parametrize(("outcome", "expected"), [("no_answer", "no_answer"), ("busy", "busy"),
                                                   ("declined", "declined"), ("weird", "failed")])
def test_a_customer_not_reached_ends_the_call_with_how(outcome: str, expected: str) -> None:
    flow, clock, _ = started()
    assert ended(flow.handle(CustomerFailed(clock(30), outcome, 480))).outcome == expected


def test_hanging_up_after_answering_keeps_the_answer() -> None:
    flow, clock, _ = started()
    play_out(flow, clock, flow.handle(CustomerAnswered(clock(5))))
    flow.handle(Digit(clock(1), "2", "rfc4733"))
    actions = flow.handle(HungUp(clock(1)))
    assert ended(actions).outcome == "dissatisfied" and CancelTimer(ANSWER_TIMER) in actions
    flow2, clock2, _ = started()
    flow2.handle(CustomerAnswered(clock2(5)))
    assert ended(flow2.handle(HungUp(clock2(1)))).outcome == "hung_up"


def test_the_daily_status_call_says_the_progress_and_offers_only_agent_and_do_not_call() -> None:
    flow, clock, _ = started("daily")
    prompts = played(flow, clock, flow.handle(CustomerAnswered(clock(5))))
    assert prompts[3:] == ["followup_progress_by", "followup_department_4", "followup_progress",
                           "followup_progress_question"]
    assert Play("followup_invalid") in flow.handle(Digit(clock(1), "1", "rfc4733"))  # nothing to rate yet


def test_a_department_without_a_rendered_prompt_is_said_as_related_department() -> None:
    assert "followup_department_other" in script_for("resolved", 1, 2, "外包部", DEPARTMENTS).intro


def test_a_script_is_data_a_questionnaire_can_replace() -> None:
    script = Script(("followup_intro",), (
        Question("first", "q1", (Choice("1", "next", "r1", final=False),)),
        Question("second", "q2", (Choice("3", "done", "r2"),)),
    ))
    flow, clock = FollowupFlow(), Clock()
    flow.handle(FollowupStarted(clock(), 1, "1", script))
    play_out(flow, clock, flow.handle(CustomerAnswered(clock(1))))
    actions = flow.handle(Digit(clock(1), "1", "rfc4733"))
    assert played(flow, clock, actions) == ["r1", "q2"]
    flow.handle(Digit(clock(1), "3", "rfc4733"))
    assert ended(flow.handle(PromptFinished(clock(1), "r2"))).answers == (("first", "1"), ("second", "3"))


def test_events_the_table_does_not_list_are_refused_and_late_ones_ignored() -> None:
    flow, clock, _ = started()
    with pytest.raises(FollowupFlowError):
        flow.handle(PromptFinished(clock(1), "x"))  # nothing plays while it rings
    flow.handle(Aborted(clock(1), "shutdown"))
    assert flow.handle(HungUp(clock(1))) == []
    assert all(key[0] in State for key in _TRANSITIONS)


def test_with_agent_transfer_0_says_so_and_hands_the_call_over_instead_of_hanging_up() -> None:
    flow, clock = FollowupFlow(), Clock()
    script = script_for("resolved", 11, 25, "售后服务部", DEPARTMENTS, transfer=True)
    flow.handle(FollowupStarted(clock(), 7, "13800000001", script))
    play_out(flow, clock, flow.handle(CustomerAnswered(clock(5))))
    assert Play("followup_transfer") in flow.handle(Digit(clock(1), "0", "rfc4733"))
    actions = flow.handle(PromptFinished(clock(2), "followup_transfer"))
    assert TransferToAgent(7) in actions and HangUp() not in actions
    assert (ended(actions).outcome, ended(actions).answers) == ("transferred", (("satisfaction", "0"),))
    assert "followup_transfer" in followup_texts(DEPARTMENTS)


def followup_diagram() -> str:
    """The follow-up flow's states from its table, drawn as scripts/state_diagram.py draws the call flow's."""
    edges: dict[tuple[State, State], list[str]] = {}
    for key, (_, next_states) in _TRANSITIONS.items():
        state, event_type, *detail = key
        label = f"{event_type.__name__}({detail[0]})" if detail else event_type.__name__
        for after in sorted(next_states, key=list(State).index):
            if after is not state and label not in edges.setdefault((state, after), []):
                edges[state, after].append(label)
    order = list(State).index
    lines = ["stateDiagram-v2", f"    [*] --> {State.INIT.name}"]
    for source, target in sorted(edges, key=lambda edge: (order(edge[0]), order(edge[1]))):
        lines.append(f"    {source.name} --> {target.name} : {', '.join(edges[source, target])}")
    lines.append(f"    {State.ENDED.name} --> [*]")
    return "\n".join(lines) + "\n"


def test_the_documented_diagram_is_the_transition_table() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "surveys-and-followups.md").read_text(encoding="utf-8")
    drawn = doc.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert drawn == followup_diagram(), followup_diagram()
