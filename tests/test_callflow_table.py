"""The call flow's transition table, walked: every state reachable, every row driven, the table enforced.

The scenarios below are event sequences on a fake clock. Together they must
take every (row, next state) the table lists, unless it is named in
DEFENSIVE_ONLY with the reason no sequence can take it; so a row added to the
table needs a scenario (or a reason) here, and a listed next state that no
handler ever reaches shows up as a failure instead of a wrong diagram.
"""

from __future__ import annotations

import importlib.util
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import NamedTuple, get_args

import pytest

from ivr.callflow import (
    _TRANSITIONS,
    FINAL_STATE,
    CallFlow,
    CallFlowBug,
    CallFlowError,
    FlowSettings,
    RecordingRule,
    State,
    Transition,
    TransitionKey,
    _check_table,
    find_transition,
)
from ivr.events import (
    Aborted,
    AgentAnswered,
    AgentHold,
    AgentHungUp,
    AgentNoAnswer,
    AgentRinging,
    CallbackStarted,
    CallerIdentified,
    Cancelled,
    CustomerAnswered,
    CustomerFailed,
    Digit,
    Event,
    HungUp,
    Invited,
    PromptFinished,
    QueuePosition,
    SpeechStarted,
    TimerFired,
    TransferRequested,
    WhisperFinished,
)
from ivr.greeting import Greeting
from ivr.hours import ALWAYS_OPEN, BusinessHours, HoursConfig, parse_schedule
from ivr.service import MenuConfig

from .test_callflow import T0, FakeClock

ROOT = Path(__file__).resolve().parent.parent

Step = tuple  # (event type, *its fields after `at`)


def greeter(_moment: datetime) -> Greeting:
    return Greeting("normal", "greeting_normal")


# --- paths from INIT to each state --------------------------------------------------

RINGING_ = [(Invited, "13800000001", "95000"), (CallerIdentified, "senior", True)]
PROMPTING_ = [*RINGING_, (TimerFired, "ring")]
WAITING_ = [*PROMPTING_, (PromptFinished, "greeting_normal")]
MENU_ = [*PROMPTING_, (Digit, "9")]
QUEUED_ = [*MENU_, (Digit, "1")]
ANNOUNCING_ = [*QUEUED_, (AgentRinging, "801"), (AgentAnswered, "801", "senior")]
BRIDGED_ = [*ANNOUNCING_, (PromptFinished, "agent_801")]
SURVEY_ = [*BRIDGED_, (AgentHungUp,)]
CLOSING_ = [*SURVEY_, (Digit, "1")]
ENDED_ = [*RINGING_, (Cancelled,)]
CLOSED_NUMBER = "95999"  # the flows below are never open on this number (see HOURS)
CLOSED_ = [(Invited, "13800000001", CLOSED_NUMBER), (TimerFired, "ring")]
CALLBACK_ = [*QUEUED_, (Digit, "#")]
DIALLING_ = [(CallbackStarted, "13800000001", "95000", "senior", "consulting", "senior")]
TRANSFERRING_ = [*BRIDGED_, (TransferRequested, "801", "middle", "complaint")]
CALLED_BACK_ = [*DIALLING_, (AgentRinging, "801"), (AgentAnswered, "801", "senior"), (WhisperFinished,)]

PATH_TO: dict[State, list[Step]] = {
    State.INIT: [], State.RINGING: RINGING_, State.PROMPTING: PROMPTING_, State.WAITING: WAITING_,
    State.MENU: MENU_, State.QUEUED: QUEUED_, State.ANNOUNCING: ANNOUNCING_, State.BRIDGED: BRIDGED_,
    State.SURVEY: SURVEY_, State.CLOSING: CLOSING_, State.ENDED: ENDED_,
    State.CLOSED: CLOSED_, State.CALLBACK: CALLBACK_, State.DIALLING: DIALLING_,
    State.TRANSFERRING: TRANSFERRING_,
}

# One event of each type, for the rows a state does not have.
SAMPLE: dict[type, Step] = {
    Invited: (Invited, "13800000001", "95000"),
    CallerIdentified: (CallerIdentified, "junior", False),
    Cancelled: (Cancelled,),
    TimerFired: (TimerFired, "no_such_timer"),
    PromptFinished: (PromptFinished, "silent_2"),
    SpeechStarted: (SpeechStarted,),
    Digit: (Digit, "1"),
    HungUp: (HungUp,),
    Aborted: (Aborted, "shutdown"),
    QueuePosition: (QueuePosition, 2),
    AgentRinging: (AgentRinging, "801"),
    AgentNoAnswer: (AgentNoAnswer, "801"),
    AgentAnswered: (AgentAnswered, "801", "senior"),
    AgentHungUp: (AgentHungUp,),
    CallbackStarted: DIALLING_[0],
    WhisperFinished: (WhisperFinished,),
    CustomerAnswered: (CustomerAnswered,),
    CustomerFailed: (CustomerFailed, "no_answer", 480),
    TransferRequested: (TransferRequested, "801", "middle", "middle"),
    AgentHold: (AgentHold, "801", True),
}


class Scenario(NamedTuple):
    steps: list[Step]
    ends_in: State
    menu: bool = True
    recording: bool = False  # [recording] on for every call: the notice before the agent


MENU_OFF = False

SCENARIOS: dict[str, Scenario] = {
    "silent caller, identified at each step": Scenario([
        *RINGING_, (TimerFired, "ring"), (CallerIdentified, "senior", True),
        (PromptFinished, "greeting_normal"), (CallerIdentified, "senior", True), (TimerFired, "silence"),
        (PromptFinished, "silent_2"), (TimerFired, "silence"),
        (PromptFinished, "silent_3"), (TimerFired, "silence"),
    ], State.ENDED),
    "cancelled while ringing": Scenario([*RINGING_, (Cancelled,)], State.ENDED),
    "aborted while ringing": Scenario([*RINGING_, (Aborted, "shutdown")], State.ENDED),
    "speaks during the greeting": Scenario([*PROMPTING_, (SpeechStarted,)], State.MENU),
    "senior greeted by name, then silent": Scenario([
        (Invited, "13800000001", "95000"), (CallerIdentified, "senior", True, "salutation_张先生"),
        (TimerFired, "ring"), (PromptFinished, "salutation_张先生"), (PromptFinished, "greeting_normal"),
        (TimerFired, "silence"),
    ], State.PROMPTING),
    "speaks over the salutation": Scenario([
        (Invited, "13800000001", "95000"), (CallerIdentified, "senior", True, "salutation_张先生"),
        (TimerFired, "ring"), (SpeechStarted,),
    ], State.MENU),
    "speaks in a silent wait": Scenario([*WAITING_, (SpeechStarted,)], State.MENU),
    "presses a key in a silent wait": Scenario([*WAITING_, (Digit, "5")], State.MENU),
    "hangs up during the greeting": Scenario([*PROMPTING_, (HungUp,)], State.ENDED),
    "hangs up in a silent wait": Scenario([*WAITING_, (HungUp,)], State.ENDED),
    "aborted during the greeting": Scenario([*PROMPTING_, (Aborted, "shutdown")], State.ENDED),
    "aborted in a silent wait": Scenario([*WAITING_, (Aborted, "shutdown")], State.ENDED),
    "menu off: speaks during the greeting": Scenario([*PROMPTING_, (SpeechStarted,)], State.QUEUED, MENU_OFF),
    "menu off: key during the greeting": Scenario([*PROMPTING_, (Digit, "1")], State.QUEUED, MENU_OFF),
    "menu off: speaks in a silent wait": Scenario([*WAITING_, (SpeechStarted,)], State.QUEUED, MENU_OFF),
    "menu off: key in a silent wait": Scenario([*WAITING_, (Digit, "1")], State.QUEUED, MENU_OFF),
    "menu: wrong key, then no input, then the default service": Scenario([
        *MENU_, (SpeechStarted,), (CallerIdentified, "senior", True), (PromptFinished, "menu_senior"),
        (Digit, "0"), (PromptFinished, "menu_invalid_senior"), (TimerFired, "menu"),
    ], State.QUEUED),
    "menu: no input twice": Scenario([
        *MENU_, (PromptFinished, "menu_senior"), (TimerFired, "menu"),
        (PromptFinished, "menu_senior"), (TimerFired, "menu"),
    ], State.QUEUED),
    "hangs up in the menu": Scenario([*MENU_, (HungUp,)], State.ENDED),
    "aborted in the menu": Scenario([*MENU_, (Aborted, "shutdown")], State.ENDED),
    "waits in the queue, hears the position, hangs up": Scenario([
        *QUEUED_, (CallerIdentified, "senior", True), (SpeechStarted,), (Digit, "1"), (PromptFinished, "hold"),
        (TimerFired, "position"), (QueuePosition, 3), (PromptFinished, "queue_position_3"),
        (AgentRinging, "801"), (AgentNoAnswer, "801"), (HungUp,),
    ], State.ENDED),
    "aborted in the queue": Scenario([*QUEUED_, (Aborted, "shutdown")], State.ENDED),
    "agent hangs up during the announcement": Scenario([
        *ANNOUNCING_, (CallerIdentified, "senior", True), (Digit, "1"), (AgentHungUp,),
    ], State.SURVEY),
    "caller hangs up during the announcement": Scenario([*ANNOUNCING_, (HungUp,)], State.ENDED),
    "aborted during the announcement": Scenario([*ANNOUNCING_, (Aborted, "shutdown")], State.ENDED),
    "bridged, late events, caller hangs up first": Scenario([
        *BRIDGED_, (CallerIdentified, "senior", True), (Digit, "5"), (TimerFired, "position"),
        (PromptFinished, "agent_801"), (HungUp,),
    ], State.ENDED),
    "aborted while bridged": Scenario([*BRIDGED_, (Aborted, "shutdown")], State.ENDED),
    "the agent holds during the announcement, then resumes and holds while bridged": Scenario([
        *ANNOUNCING_, (AgentHold, "801", True), (AgentHold, "801", False), (PromptFinished, "agent_801"),
        (AgentHold, "801", True), (HungUp,),
    ], State.ENDED),
    "survey: a wrong key, a rating, late events, thanks": Scenario([
        *SURVEY_, (CallerIdentified, "senior", True), (PromptFinished, "survey"), (Digit, "7"), (Digit, "1"),
        (CallerIdentified, "senior", True), (Digit, "2"), (TimerFired, "survey"), (PromptFinished, "thanks"),
    ], State.ENDED),
    "survey: no input twice, caller hangs up during the thanks": Scenario([
        *SURVEY_, (PromptFinished, "survey"), (TimerFired, "survey"),
        (PromptFinished, "survey"), (TimerFired, "survey"), (HungUp,),
    ], State.ENDED),
    "hangs up in the survey": Scenario([*SURVEY_, (HungUp,)], State.ENDED),
    "aborted in the survey": Scenario([*SURVEY_, (Aborted, "shutdown")], State.ENDED),
    "aborted during the thanks": Scenario([*CLOSING_, (Aborted, "shutdown")], State.ENDED),
    "music and the expected wait in the queue, then the callback key": Scenario([
        *QUEUED_, (PromptFinished, "hold"), (QueuePosition, 2, True, 90.0), (PromptFinished, "queue_position_2"),
        (PromptFinished, "wait_minutes_2"), (Digit, "#"), (TimerFired, "position"), (QueuePosition, 2),
        (AgentRinging, "801"), (AgentNoAnswer, "801"), (Digit, "1"), (CallerIdentified, "senior", True),
        (PromptFinished, "callback_confirmed"),
    ], State.ENDED),
    "hangs up during the callback confirmation": Scenario([*CALLBACK_, (HungUp,)], State.ENDED),
    "aborted during the callback confirmation": Scenario([*CALLBACK_, (Aborted, "shutdown")], State.ENDED),
    "closed: the message, a wrong key, the callback key": Scenario([
        *CLOSED_, (CallerIdentified, "senior", True), (PromptFinished, "closed_95999"), (Digit, "5"), (Digit, "#"),
    ], State.CALLBACK),
    "closed: nobody presses a key": Scenario([
        *CLOSED_, (PromptFinished, "closed_95999"), (PromptFinished, "callback_offer"), (TimerFired, "closed"),
    ], State.ENDED),
    "closed: hangs up": Scenario([*CLOSED_, (HungUp,)], State.ENDED),
    "closed: aborted": Scenario([*CLOSED_, (Aborted, "shutdown")], State.ENDED),
    "callback: an agent misses it, the next is whispered to, the customer answers, is served": Scenario([
        *DIALLING_, (AgentRinging, "801"), (AgentNoAnswer, "801"), (AgentRinging, "802"),
        (AgentAnswered, "802", "senior"), (WhisperFinished,), (CustomerAnswered,), (PromptFinished, "agent_802"),
        (AgentHungUp,),
    ], State.SURVEY),
    "callback: the customer does not answer": Scenario([*CALLED_BACK_, (CustomerFailed, "no_answer", 480)], State.ENDED),
    "callback: the agent hangs up before the customer answers": Scenario([*CALLED_BACK_, (AgentHungUp,)], State.ENDED),
    "callback: no agent answers in time": Scenario([*DIALLING_, (TimerFired, "dial")], State.ENDED),
    "callback: aborted": Scenario([*DIALLING_, (Aborted, "shutdown")], State.ENDED),
    "transferred: music and the transfer prompt, a missed agent, the next answers, the caller rates them": Scenario([
        *TRANSFERRING_, (PromptFinished, "transfer"), (Digit, "5"), (CallerIdentified, "senior", True),
        (AgentRinging, "811"), (AgentNoAnswer, "811"), (AgentRinging, "812"), (AgentAnswered, "812", "middle"),
        (PromptFinished, "agent_812"), (AgentHungUp,), (Digit, "1"),
    ], State.CLOSING),
    "transferred: hangs up while the next agent rings": Scenario([*TRANSFERRING_, (HungUp,)], State.ENDED),
    "transferred: aborted": Scenario([*TRANSFERRING_, (Aborted, "shutdown")], State.ENDED),
    "recorded: the agent answers during the notice, it plays whole, then the agent's number": Scenario([
        *QUEUED_, (PromptFinished, "hold"), (AgentAnswered, "801", "senior"),
        (PromptFinished, "recording_notice"), (PromptFinished, "agent_801"),
    ], State.BRIDGED, recording=True),
    "late events after the end": Scenario(
        [*ENDED_, *(step for t, step in SAMPLE.items() if t not in (Invited, CallbackStarted))], State.ENDED),
}

# (row, next state) pairs that the table keeps for safety but no event sequence
# can take, each with the reason. Empty today: every listed move is driven above.
DEFENSIVE_ONLY: dict[tuple[TransitionKey, State], str] = {}


HOURS = BusinessHours(HoursConfig(schedules={"default": ALWAYS_OPEN, CLOSED_NUMBER: parse_schedule("closed")}),
                      lambda _day: None)


def new_flow(menu: bool = True, recording: bool = False) -> CallFlow:
    return CallFlow("call-1", FlowSettings(ring_seconds=1, menu=MenuConfig(enabled=menu), hours=HOURS,
                                           recording=RecordingRule(enabled=recording)), greeter)


def drive(flow: CallFlow, clock: FakeClock, steps: list[Step]) -> list[tuple[TransitionKey, State]]:
    """Feed the steps one second apart; the (row, state after) each one took."""
    taken = []
    for event_type, *fields in steps:
        event = event_type(clock.advance(1), *fields)
        found = find_transition(flow.state, event)
        assert found is not None, f"{event} is not allowed in {flow.state}"
        flow.handle(event)
        taken.append((found[0], flow.state))
    return taken


def describe(key: TransitionKey) -> str:
    state, event_type, *timer = key
    return f"{state.name} + {event_type.__name__}" + (f"({timer[0]})" if timer else "")


def moves() -> set[tuple[TransitionKey, State]]:
    return {(key, after) for key, transition in _TRANSITIONS.items() for after in transition.next_states}


# --- the shape of the table ---------------------------------------------------------


def test_every_state_is_reachable_from_init_through_listed_transitions() -> None:
    seen, todo = {State.INIT}, deque([State.INIT])
    while todo:
        state = todo.popleft()
        for (before, *_), transition in _TRANSITIONS.items():
            if before is state:
                todo.extend(transition.next_states - seen)
                seen |= transition.next_states
    assert seen == set(State)


def test_the_end_is_reachable_from_every_state_and_never_left() -> None:
    for state in State:
        seen, todo = {state}, deque([state])
        while todo:
            current = todo.popleft()
            for (before, *_), transition in _TRANSITIONS.items():
                if before is current:
                    todo.extend(transition.next_states - seen)
                    seen |= transition.next_states
        assert FINAL_STATE in seen, f"no way from {state} to {FINAL_STATE}"
    assert all(t.next_states == {FINAL_STATE} for (state, *_), t in _TRANSITIONS.items() if state is FINAL_STATE)


_IGNORE = CallFlow._ignore_late


@pytest.mark.parametrize("rows", [
    {(State.BRIDGED, TimerFired): Transition(_IGNORE, {State.BRIDGED}),  # any timer, and one by name: ambiguous
     (State.BRIDGED, TimerFired, "position"): Transition(_IGNORE, {State.BRIDGED})},
    {(State.MENU, Digit, "1"): Transition(_IGNORE, {State.MENU})},  # only a TimerFired row names a detail
    {(State.MENU, str): Transition(_IGNORE, {State.MENU})},  # not an event of ivr.events.Event
    {(State.MENU, Digit): Transition(_IGNORE, set())},  # nowhere to go
], ids=["timer-twice", "detail-on-digit", "not-an-event", "no-next-state"])
def test_a_malformed_row_is_refused(rows: dict) -> None:
    with pytest.raises(ValueError, match="malformed row"):
        _check_table(rows)


def test_every_event_type_has_a_sample() -> None:
    assert set(SAMPLE) == set(get_args(Event))


# --- driven -------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_ends_in_its_state(name: str) -> None:
    scenario = SCENARIOS[name]
    flow = new_flow(scenario.menu, scenario.recording)
    drive(flow, FakeClock(), scenario.steps)
    assert flow.state is scenario.ends_in


@pytest.mark.parametrize("state", list(State))
def test_path_to_each_state_gets_there(state: State) -> None:
    flow = new_flow()
    drive(flow, FakeClock(), PATH_TO[state])
    assert flow.state is state


def test_every_listed_transition_is_driven_or_listed_as_defensive_only() -> None:
    taken: set[tuple[TransitionKey, State]] = set()
    for scenario in SCENARIOS.values():
        taken |= set(drive(new_flow(scenario.menu, scenario.recording), FakeClock(), scenario.steps))
    untaken = moves() - taken
    missing = sorted(f"{describe(key)} -> {after.name}" for key, after in untaken - DEFENSIVE_ONLY.keys())
    assert not missing, "rows no scenario takes (add a scenario, or DEFENSIVE_ONLY with the reason):\n" + "\n".join(missing)
    assert DEFENSIVE_ONLY.keys() <= moves(), "DEFENSIVE_ONLY names a move the table does not list"
    assert not DEFENSIVE_ONLY.keys() & taken, "DEFENSIVE_ONLY names a move a scenario takes"


# --- enforced -----------------------------------------------------------------------


def test_handler_landing_in_an_unlisted_state_raises_callflowbug(monkeypatch: pytest.MonkeyPatch) -> None:
    def close_by_hanging_up(self: CallFlow, actions: list) -> None:  # a rating should lead to CLOSING
        self.state = State.ENDED

    monkeypatch.setattr(CallFlow, "_close", close_by_hanging_up)
    flow, clock = new_flow(), FakeClock()
    drive(flow, clock, SURVEY_)
    with pytest.raises(CallFlowBug, match="Digit in state survey led to ended, not to one of: closing, survey") as bug:
        flow.handle(Digit(clock.advance(1), "1"))
    assert (bug.value.before, bug.value.after) == (State.SURVEY, State.ENDED)
    assert not isinstance(bug.value, CallFlowError)


def test_a_row_whose_handler_strays_raises_callflowbug(monkeypatch: pytest.MonkeyPatch) -> None:
    def bridge_on_speech(self: CallFlow, event: Event, actions: list) -> None:
        self.state = State.BRIDGED

    monkeypatch.setitem(_TRANSITIONS, (State.MENU, SpeechStarted), Transition(bridge_on_speech, {State.MENU}))
    flow, clock = new_flow(), FakeClock()
    drive(flow, clock, MENU_)
    with pytest.raises(CallFlowBug, match="SpeechStarted in state menu led to bridged"):
        flow.handle(SpeechStarted(clock.advance(1)))


def _missing_rows() -> list[tuple[State, Step]]:
    """Every (state, event) no row takes: each event type a state has no row for, and unknown timers."""
    missing = []
    for state in State:
        for event_type, step in SAMPLE.items():
            if find_transition(state, event_type(T0, *step[1:])) is None:
                missing.append((state, step))
    return missing


@pytest.mark.parametrize(("state", "step"), _missing_rows(), ids=lambda x: getattr(x, "name", None) or x[0].__name__)
def test_an_event_without_a_row_raises_callflowerror_and_changes_nothing(state: State, step: Step) -> None:
    flow, clock = new_flow(), FakeClock()
    drive(flow, clock, PATH_TO[state])
    event_type, *fields = step
    with pytest.raises(CallFlowError, match=f"is not allowed in state {state.value}"):
        flow.handle(event_type(clock.advance(1), *fields))
    assert flow.state is state


def test_a_timer_the_state_does_not_name_is_refused() -> None:
    flow, clock = new_flow(), FakeClock()
    drive(flow, clock, WAITING_)
    with pytest.raises(CallFlowError, match=r"TimerFired\(menu\) is not allowed in state waiting"):
        flow.handle(TimerFired(clock.advance(1), "menu"))
    drive(flow, clock, [(TimerFired, "silence")])
    assert flow.state is State.PROMPTING


# --- the diagram in docs/architecture.md ---------------------------------------------


def test_architecture_doc_diagram_is_the_one_generated_from_the_table() -> None:
    spec = importlib.util.spec_from_file_location("state_diagram", ROOT / "scripts" / "state_diagram.py")
    assert spec is not None and spec.loader is not None
    state_diagram = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(state_diagram)
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    begin, end = doc.index(state_diagram.BEGIN), doc.index(state_diagram.END) + len(state_diagram.END)
    assert doc[begin:end] == state_diagram.doc_block(), (
        "docs/architecture.md's call flow diagram is stale: run .venv/bin/python scripts/state_diagram.py --write"
    )
