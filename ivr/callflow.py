"""The hotline call flow: a sans-IO state machine, one instance per call.

Theory of operation
-------------------
The engine adapter turns SIP and RTP happenings into events (`ivr.events`)
and feeds them to `CallFlow.handle`, which returns the actions to carry out.
The flow owns no socket and reads no clock: each event says when it happened,
and waits are `StartTimer` actions that come back as `TimerFired` events.

    INIT --Invited--> RINGING --ring timer--> PROMPTING <--> WAITING
                         |                        |  speech/digit  |
                         +--Cancelled--> ENDED    +---> MENU <-----+
                                                         | digit / default service
           third silent wait expires ---> ENDED          v
                                   QUEUED --agent answers--> ANNOUNCING --> BRIDGED
                                                                              | agent hangs up
                                                  ENDED <-- CLOSING <-- SURVEY <-+
                  (caller BYE or abort from any live state ---> ENDED)

Rule 1: every transition lives in `_TRANSITIONS` below; a handler may change
the state only to one listed there for it. An event that is not allowed in
the current state raises `CallFlowError` (the adapter logs it and goes on).

The silent-call routine ([004], spec §3) is data: `SilentRoutine.prompts` is
walked in order, each prompt followed by `wait_seconds` of listening. Only
when the last wait expires in silence does the IVR hang up — never before the
third attempt ("严禁未做到重复三次就挂线"); the config loader refuses a
routine with fewer than three prompts.

A caller who speaks or presses a key leaves the routine for the service menu
(spec §4), then the queue of the seat group that serves their tier. When an
agent answers, the caller hears the agent's number ([003]/[004]) and the two
are bridged. If the agent hangs up first, the caller stays for the rating
survey ([000]/[003]); if the caller hangs up first, the survey is skipped.

Every step appends a `RecordEvent`; every change to the call's row is a
`RecordCall` with the whole row, so the writer can apply them in any batch.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType

from ivr.events import (
    Aborted,
    Action,
    AgentAnswered,
    AgentHungUp,
    AgentNoAnswer,
    AgentRinging,
    AnnouncePosition,
    Answer,
    Bridge,
    CallerIdentified,
    HangUpAgent,
    JoinQueue,
    LeaveQueue,
    OpenTicket,
    QueuePosition,
    RecordSurvey,
    RelayDigit,
    Unbridge,
    CallRecord,
    CancelTimer,
    Cancelled,
    Digit,
    Event,
    HangUp,
    HungUp,
    Invited,
    Listen,
    Play,
    PromptFinished,
    RecordCall,
    RecordEvent,
    Reject,
    Ring,
    SpeechStarted,
    StartTimer,
    StopPlayback,
    TimerFired,
)
from ivr.greeting import Greeting
from ivr.service import MenuConfig

GREETING = "{greeting}"  # placeholder in SilentRoutine.prompts for the chosen greeting
HOLD_PROMPT = "hold"  # [004] "现在为您查询,请稍等…"
SURVEY_PROMPT = "survey"
THANKS_PROMPT = "thanks"  # [000] "感谢您的来电,祝您生活愉快!"
RING_TIMER = "ring"
SILENCE_TIMER = "silence"
MENU_TIMER = "menu"
POSITION_TIMER = "position"
SURVEY_TIMER = "survey"
MAX_POSITION_PROMPT = 9  # beyond this the caller hears "多位"
TICKET_FEEDBACK_DUE = timedelta(hours=24)  # [002] "坚持至少每天反馈一次"


def menu_prompt(tier: str) -> str:
    return "menu_senior" if tier == "senior" else "menu"


def position_prompt(position: int) -> str:
    return f"queue_position_{position}" if position <= MAX_POSITION_PROMPT else "queue_position_many"


def agent_prompt(agent: str) -> str:
    return f"agent_{agent}"


@dataclass(frozen=True, slots=True)
class SilentRoutine:
    """The prompts played to a caller who says nothing, and the wait after each."""

    prompts: tuple[str, ...] = (GREETING, "silent_2", "silent_3")
    wait_seconds: float = 5.0

    @property
    def attempts(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True, slots=True)
class FlowSettings:
    ring_seconds: float = 6.0
    silent_routine: SilentRoutine = SilentRoutine()
    menu: MenuConfig = MenuConfig()
    position_every_seconds: float = 30.0
    survey_timeout_seconds: float = 8.0
    survey_labels: MappingProxyType[str, str] = field(
        default_factory=lambda: MappingProxyType({"1": "satisfied", "2": "average", "3": "dissatisfied"})
    )


class State(enum.Enum):
    INIT = "init"
    RINGING = "ringing"
    PROMPTING = "prompting"  # a silent-routine prompt is playing
    WAITING = "waiting"  # listening in silence after a prompt
    MENU = "menu"  # choosing a service by keypad
    QUEUED = "queued"  # waiting for an agent of the seat group
    ANNOUNCING = "announcing"  # an agent answered; the caller hears their number
    BRIDGED = "bridged"  # caller and agent talk
    SURVEY = "survey"  # the agent hung up; the caller rates the service
    CLOSING = "closing"  # thanks and goodbye, then BYE
    ENDED = "ended"


class CallFlowError(Exception):
    """An event arrived that the flow does not allow in its current state."""

    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"{type(event).__name__} is not allowed in state {state.value}")
        self.state = state
        self.event = event


class CallFlow:
    """One call through the hotline, from INVITE to the end of its record."""

    def __init__(self, sip_call_id: str, settings: FlowSettings, greeter: Callable[[datetime], Greeting]) -> None:
        self.sip_call_id = sip_call_id
        self.settings = settings
        self._greeter = greeter
        self.state = State.INIT
        self.record: CallRecord | None = None
        self.attempt = 0  # index into the silent routine of the prompt last played
        self.tier = "junior"
        self.tries = 0  # menu or survey prompts without a valid answer
        self.playing = False
        self.queued_at: datetime | None = None
        self.bridged_at: datetime | None = None
        self._greeting: Greeting | None = None

    # --- public API -------------------------------------------------------------

    def handle(self, event: Event) -> list[Action]:
        handler = _TRANSITIONS.get(self.state, {}).get(type(event))
        if handler is None:
            raise CallFlowError(self.state, event)
        actions: list[Action] = []
        handler(self, event, actions)
        return actions

    @property
    def ended(self) -> bool:
        return self.state is State.ENDED

    # --- helpers ----------------------------------------------------------------

    def _step(self, actions: list[Action], at: datetime, kind: str, detail: str = "") -> None:
        actions.append(RecordEvent(self.sip_call_id, at, kind, detail))

    def _update(self, actions: list[Action], **fields: object) -> None:
        assert self.record is not None
        self.record = replace(self.record, **fields)  # type: ignore[arg-type]
        actions.append(RecordCall(self.record))

    def _end(self, actions: list[Action], at: datetime, outcome: str, hangup_by: str) -> None:
        self.state = State.ENDED
        self._update(actions, ended_at=at, outcome=outcome, hangup_by=hangup_by)
        self._step(actions, at, "ended", f"outcome={outcome} hangup_by={hangup_by}")

    def _prompt_at(self, attempt: int) -> str:
        prompt = self.settings.silent_routine.prompts[attempt]
        if prompt == GREETING:
            assert self._greeting is not None
            return self._greeting.prompt
        return prompt

    def _play_attempt(self, actions: list[Action], at: datetime) -> None:
        prompt = self._prompt_at(self.attempt)
        self.state = State.PROMPTING
        actions.append(Play(prompt))
        self._step(actions, at, "prompt", f"attempt={self.attempt + 1} prompt={prompt}")

    # --- transitions --------------------------------------------------------------

    def _on_invited(self, event: Invited, actions: list[Action]) -> None:
        self.record = CallRecord(self.sip_call_id, event.caller, event.callee, started_at=event.at)
        actions.append(RecordCall(self.record))
        self._step(actions, event.at, "invited", f"caller={event.caller} callee={event.callee}")
        self.state = State.RINGING
        actions.append(Ring())
        # [002]: answer after the second ring, always within three.
        actions.append(StartTimer(RING_TIMER, self.settings.ring_seconds))

    def _on_ring_timer(self, event: TimerFired, actions: list[Action]) -> None:
        if event.timer != RING_TIMER:
            raise CallFlowError(self.state, event)
        self._greeting = self._greeter(event.at)
        actions.append(Answer())
        self._update(actions, answered_at=event.at, greeting=self._greeting.kind)
        self._step(actions, event.at, "answered", f"greeting={self._greeting.kind}")
        actions.append(Listen(True))
        self.attempt = 0
        self._play_attempt(actions, event.at)

    def _on_identified(self, event: CallerIdentified, actions: list[Action]) -> None:
        self.tier = event.tier
        self._update(actions, tier=event.tier)
        self._step(actions, event.at, "identified", f"tier={event.tier} known={'yes' if event.known else 'no'}")

    def _on_cancelled(self, event: Cancelled, actions: list[Action]) -> None:
        actions.append(CancelTimer(RING_TIMER))
        self._step(actions, event.at, "cancelled")
        self._end(actions, event.at, "abandoned_ringing", "caller")

    def _on_prompt_finished(self, event: PromptFinished, actions: list[Action]) -> None:
        # [004]: the 5 s wait counts from the end of each prompt.
        self.state = State.WAITING
        actions.append(StartTimer(SILENCE_TIMER, self.settings.silent_routine.wait_seconds))

    def _on_silence_timer(self, event: TimerFired, actions: list[Action]) -> None:
        if event.timer != SILENCE_TIMER:
            raise CallFlowError(self.state, event)
        assert self.record is not None
        self._update(actions, silent_attempts=self.record.silent_attempts + 1)
        self._step(actions, event.at, "silence", f"attempt={self.attempt + 1}")
        if self.attempt + 1 < self.settings.silent_routine.attempts:
            self.attempt += 1
            self._play_attempt(actions, event.at)
            return
        # [004]: only now, after every attempt went unanswered, may we hang up.
        actions.append(Listen(False))
        actions.append(HangUp())
        self._end(actions, event.at, "silent", "ivr")

    def _on_engaged(self, event: SpeechStarted | Digit, actions: list[Action]) -> None:
        if self.state is State.PROMPTING:
            actions.append(StopPlayback())
        actions.append(CancelTimer(SILENCE_TIMER))
        actions.append(Listen(False))
        if isinstance(event, Digit):
            self._step(actions, event.at, "digit", f"digit={event.digit} via={event.via}")
        else:
            self._step(actions, event.at, "speech")
        self._step(actions, event.at, "engaged", f"after_attempt={self.attempt + 1}")
        if self.settings.menu.enabled:
            self.state, self.tries = State.MENU, 0
            self._play(actions, menu_prompt(self.tier))
        else:
            self._queue(actions, event.at, self.settings.menu.default_service)

    def _play(self, actions: list[Action], prompt: str) -> None:
        self.playing = True
        actions.append(Play(prompt))

    # --- menu ([001]/[004]: the caller's choice selects the service) ---

    def _on_menu_prompt_finished(self, event: PromptFinished, actions: list[Action]) -> None:
        self.playing = False
        actions.append(StartTimer(MENU_TIMER, self.settings.menu.timeout_seconds))

    def _on_menu_digit(self, event: Digit, actions: list[Action]) -> None:
        self._step(actions, event.at, "menu_digit", f"digit={event.digit}")
        service = self.settings.menu.service_for(event.digit, self.tier)
        if self.playing:
            actions.append(StopPlayback())
            self.playing = False
        actions.append(CancelTimer(MENU_TIMER))
        if service is not None:
            self._queue(actions, event.at, service)
        else:
            self._menu_retry(actions, event.at, "invalid")

    def _on_menu_timer(self, event: TimerFired, actions: list[Action]) -> None:
        if event.timer != MENU_TIMER:
            raise CallFlowError(self.state, event)
        self._menu_retry(actions, event.at, "no_input")

    def _menu_retry(self, actions: list[Action], at: datetime, why: str) -> None:
        self.tries += 1
        self._step(actions, at, "menu_retry", f"reason={why} tries={self.tries}")
        if self.tries >= 2:  # one reprompt, then the default service
            self._queue(actions, at, self.settings.menu.default_service)
        else:
            self._play(actions, "menu_invalid_senior" if why == "invalid" and self.tier == "senior"
                       else "menu_invalid" if why == "invalid" else menu_prompt(self.tier))

    # --- queue (the tier selects the seat group) ---

    def _queue(self, actions: list[Action], at: datetime, service: str) -> None:
        self.state, self.queued_at = State.QUEUED, at
        self._update(actions, service=service, seat_group=self.tier, tier=self.tier)
        actions.append(JoinQueue(self.tier, service))
        self._step(actions, at, "queued", f"seat_group={self.tier} service={service}")
        self._play(actions, HOLD_PROMPT)

    def _on_queue_prompt_finished(self, event: PromptFinished, actions: list[Action]) -> None:
        self.playing = False
        actions.append(StartTimer(POSITION_TIMER, self.settings.position_every_seconds))

    def _on_position_timer(self, event: TimerFired, actions: list[Action]) -> None:
        if event.timer != POSITION_TIMER:
            raise CallFlowError(self.state, event)
        actions.append(AnnouncePosition())

    def _on_queue_position(self, event: QueuePosition, actions: list[Action]) -> None:
        self._play(actions, position_prompt(event.position))

    def _on_agent_ringing(self, event: AgentRinging, actions: list[Action]) -> None:
        self._step(actions, event.at, "agent_rung", f"agent={event.agent}")

    def _on_agent_no_answer(self, event: AgentNoAnswer, actions: list[Action]) -> None:
        self._step(actions, event.at, "agent_no_answer", f"agent={event.agent}")

    def _on_agent_answered(self, event: AgentAnswered, actions: list[Action]) -> None:
        assert self.record is not None and self.queued_at is not None
        if self.playing:
            actions.append(StopPlayback())
        actions.append(CancelTimer(POSITION_TIMER))
        wait = round((event.at - self.queued_at).total_seconds(), 3)
        self._update(actions, agent_number=event.agent, seat_group=event.seat_group, queue_wait_s=wait)
        self._step(actions, event.at, "agent_answered", f"agent={event.agent} seat_group={event.seat_group} queue_wait_s={wait}")
        if self.record.service == "complaint":
            # [003] "如用户有抱怨倾向将问题转给专人跟踪处理": a ticket to follow up
            actions.append(OpenTicket(self.sip_call_id, event.at, self.record.caller, event.agent,
                                      event.seat_group, event.at + TICKET_FEEDBACK_DUE))
        self.state = State.ANNOUNCING
        self._play(actions, agent_prompt(event.agent))  # [004] "您好,801号客服为您服务"

    def _on_queue_digit(self, event: Digit, actions: list[Action]) -> None:
        self._step(actions, event.at, "digit", f"digit={event.digit} via={event.via}")

    def _on_queue_bye(self, event: HungUp, actions: list[Action]) -> None:
        assert self.queued_at is not None
        actions.extend((LeaveQueue(), CancelTimer(POSITION_TIMER), StopPlayback()))
        self._update(actions, queue_wait_s=round((event.at - self.queued_at).total_seconds(), 3))
        self._step(actions, event.at, "caller_bye")
        self._end(actions, event.at, "abandoned_queue", "caller")

    # --- with the agent ---

    def _on_announced(self, event: PromptFinished, actions: list[Action]) -> None:
        self.playing = False
        self.state, self.bridged_at = State.BRIDGED, event.at
        actions.append(Bridge())
        self._step(actions, event.at, "bridged")

    def _on_bridged_digit(self, event: Digit, actions: list[Action]) -> None:
        actions.append(RelayDigit(event.digit))

    def _talk_s(self, at: datetime) -> float:
        return round((at - self.bridged_at).total_seconds(), 3) if self.bridged_at else 0.0

    def _on_caller_bye_with_agent(self, event: HungUp, actions: list[Action]) -> None:
        bridged = self.state is State.BRIDGED
        if self.playing:
            actions.append(StopPlayback())
        actions.extend((Unbridge(), HangUpAgent()))
        self._update(actions, talk_s=self._talk_s(event.at))
        self._step(actions, event.at, "caller_bye")
        self._step(actions, event.at, "survey_skipped", "caller hung up first")
        self._end(actions, event.at, "completed" if bridged else "caller_hangup", "caller")

    def _on_agent_bye(self, event: AgentHungUp, actions: list[Action]) -> None:
        if self.playing:
            actions.append(StopPlayback())
        actions.append(Unbridge())
        self._update(actions, talk_s=self._talk_s(event.at), hangup_by="agent")
        self._step(actions, event.at, "agent_bye")
        # [000]/[003]: the caller stays on the line to rate the service
        self.state, self.tries = State.SURVEY, 0
        self._play(actions, SURVEY_PROMPT)
        self._step(actions, event.at, "survey_prompt")

    # --- survey ---

    def _on_survey_prompt_finished(self, event: PromptFinished, actions: list[Action]) -> None:
        self.playing = False
        actions.append(StartTimer(SURVEY_TIMER, self.settings.survey_timeout_seconds))

    def _on_survey_digit(self, event: Digit, actions: list[Action]) -> None:
        assert self.record is not None
        self._step(actions, event.at, "survey_digit", f"digit={event.digit}")
        label = self.settings.survey_labels.get(event.digit)
        if label is None:
            return  # not a rating key; the timer still runs
        if self.playing:
            actions.append(StopPlayback())
        actions.append(CancelTimer(SURVEY_TIMER))
        score = int(event.digit)
        self._update(actions, survey_score=score)
        actions.append(RecordSurvey(self.sip_call_id, event.at, self.record.agent_number, self.record.seat_group, score, label))
        self._close(actions)

    def _on_survey_timer(self, event: TimerFired, actions: list[Action]) -> None:
        if event.timer != SURVEY_TIMER:
            raise CallFlowError(self.state, event)
        self.tries += 1
        self._step(actions, event.at, "survey_no_input", f"tries={self.tries}")
        if self.tries < 2:  # one reprompt
            self._play(actions, SURVEY_PROMPT)
        else:
            self._close(actions)

    def _close(self, actions: list[Action]) -> None:
        self.state = State.CLOSING
        self._play(actions, THANKS_PROMPT)

    def _on_thanks_finished(self, event: PromptFinished, actions: list[Action]) -> None:
        self.playing = False
        actions.append(HangUp())
        self._end(actions, event.at, "completed", "agent")

    def _on_caller_bye_after_agent(self, event: HungUp, actions: list[Action]) -> None:
        actions.extend((CancelTimer(SURVEY_TIMER), StopPlayback()))
        self._step(actions, event.at, "caller_bye")
        self._end(actions, event.at, "completed", "agent")

    def _on_caller_bye(self, event: HungUp, actions: list[Action]) -> None:
        actions.extend((CancelTimer(SILENCE_TIMER), CancelTimer(MENU_TIMER), Listen(False), StopPlayback()))
        self._step(actions, event.at, "caller_bye")
        self._end(actions, event.at, "caller_hangup", "caller")

    def _on_aborted(self, event: Aborted, actions: list[Action]) -> None:
        self._step(actions, event.at, "aborted", event.reason)
        if self.state is State.RINGING:
            actions.append(CancelTimer(RING_TIMER))
            actions.append(Reject(503, "Service Unavailable"))
        else:
            for timer in (SILENCE_TIMER, MENU_TIMER, POSITION_TIMER, SURVEY_TIMER):
                actions.append(CancelTimer(timer))
            actions.extend((Listen(False), StopPlayback()))
            if self.state is State.QUEUED:
                actions.append(LeaveQueue())
            if self.state in (State.ANNOUNCING, State.BRIDGED):
                actions.extend((Unbridge(), HangUpAgent()))
            actions.append(HangUp())
        self._end(actions, event.at, "failed", "ivr")

    def _ignore_late(self, event: Event, actions: list[Action]) -> None:
        pass  # a BYE crossing ours, a timer or prompt end racing the hang-up


_Handler = Callable[[CallFlow, Event, list[Action]], None]
_LIVE = {HungUp: CallFlow._on_caller_bye, Aborted: CallFlow._on_aborted, CallerIdentified: CallFlow._on_identified}

_TRANSITIONS: dict[State, dict[type, _Handler]] = {  # type: ignore[dict-item]
    State.INIT: {Invited: CallFlow._on_invited},
    State.RINGING: {
        TimerFired: CallFlow._on_ring_timer,  # -> PROMPTING
        CallerIdentified: CallFlow._on_identified,
        Cancelled: CallFlow._on_cancelled,  # -> ENDED
        Aborted: CallFlow._on_aborted,  # -> ENDED
    },
    State.PROMPTING: {
        PromptFinished: CallFlow._on_prompt_finished,  # -> WAITING
        SpeechStarted: CallFlow._on_engaged,  # -> MENU or QUEUED
        Digit: CallFlow._on_engaged,  # -> MENU or QUEUED
        **_LIVE,  # -> ENDED
    },
    State.WAITING: {
        TimerFired: CallFlow._on_silence_timer,  # -> PROMPTING, or ENDED after the last attempt
        SpeechStarted: CallFlow._on_engaged,  # -> MENU or QUEUED
        Digit: CallFlow._on_engaged,  # -> MENU or QUEUED
        **_LIVE,  # -> ENDED
    },
    State.MENU: {
        PromptFinished: CallFlow._on_menu_prompt_finished,
        Digit: CallFlow._on_menu_digit,  # -> QUEUED (or a reprompt)
        TimerFired: CallFlow._on_menu_timer,  # reprompt, then -> QUEUED with the default service
        SpeechStarted: CallFlow._ignore_late,
        **_LIVE,  # -> ENDED
    },
    State.QUEUED: {
        CallerIdentified: CallFlow._ignore_late,
        PromptFinished: CallFlow._on_queue_prompt_finished,
        TimerFired: CallFlow._on_position_timer,
        QueuePosition: CallFlow._on_queue_position,
        AgentRinging: CallFlow._on_agent_ringing,
        AgentNoAnswer: CallFlow._on_agent_no_answer,
        AgentAnswered: CallFlow._on_agent_answered,  # -> ANNOUNCING
        Digit: CallFlow._on_queue_digit,
        SpeechStarted: CallFlow._ignore_late,
        HungUp: CallFlow._on_queue_bye,  # -> ENDED (abandoned_queue)
        Aborted: CallFlow._on_aborted,  # -> ENDED
    },
    State.ANNOUNCING: {
        CallerIdentified: CallFlow._ignore_late,
        PromptFinished: CallFlow._on_announced,  # -> BRIDGED
        AgentHungUp: CallFlow._on_agent_bye,  # -> SURVEY
        Digit: CallFlow._on_queue_digit,
        HungUp: CallFlow._on_caller_bye_with_agent,  # -> ENDED
        Aborted: CallFlow._on_aborted,  # -> ENDED
    },
    State.BRIDGED: {
        CallerIdentified: CallFlow._ignore_late,
        Digit: CallFlow._on_bridged_digit,
        AgentHungUp: CallFlow._on_agent_bye,  # -> SURVEY
        HungUp: CallFlow._on_caller_bye_with_agent,  # -> ENDED (survey skipped)
        Aborted: CallFlow._on_aborted,  # -> ENDED
        TimerFired: CallFlow._ignore_late,
        PromptFinished: CallFlow._ignore_late,
    },
    State.SURVEY: {
        CallerIdentified: CallFlow._ignore_late,
        PromptFinished: CallFlow._on_survey_prompt_finished,
        Digit: CallFlow._on_survey_digit,  # -> CLOSING
        TimerFired: CallFlow._on_survey_timer,  # reprompt, then -> CLOSING
        HungUp: CallFlow._on_caller_bye_after_agent,  # -> ENDED
        Aborted: CallFlow._on_aborted,  # -> ENDED
    },
    State.CLOSING: {
        CallerIdentified: CallFlow._ignore_late,
        PromptFinished: CallFlow._on_thanks_finished,  # -> ENDED
        Digit: CallFlow._ignore_late,
        TimerFired: CallFlow._ignore_late,
        HungUp: CallFlow._on_caller_bye_after_agent,  # -> ENDED
        Aborted: CallFlow._on_aborted,  # -> ENDED
    },
    State.ENDED: {event: CallFlow._ignore_late for event in (
        HungUp, TimerFired, PromptFinished, SpeechStarted, Digit, Aborted, Cancelled, CallerIdentified,
        QueuePosition, AgentRinging, AgentNoAnswer, AgentAnswered, AgentHungUp,
    )},
}
