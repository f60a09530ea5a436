"""The hotline call flow: a sans-IO state machine, one instance per call.

Theory of operation
-------------------
The engine adapter turns SIP and RTP happenings into events (`ivr.events`)
and feeds them to `CallFlow.handle`, which returns the actions to carry out.
The flow owns no socket and reads no clock: each event says when it happened,
and waits are `StartTimer` actions that come back as `TimerFired` events.

    INIT --Invited--> RINGING --ring timer--> PROMPTING <--> WAITING
                         |                        |  speech/digit  |
                         +--Cancelled--> ENDED    +---> HOLDING <--+
                                                  |              |
          third silent wait expires / caller BYE / abort ---> ENDED

Rule 1: every transition lives in `_TRANSITIONS` below; a handler may change
the state only to one listed there for it. An event that is not allowed in
the current state raises `CallFlowError` (the adapter logs it and goes on).

The silent-call routine ([004], spec §3) is data: `SilentRoutine.prompts` is
walked in order, each prompt followed by `wait_seconds` of listening. Only
when the last wait expires in silence does the IVR hang up — never before the
third attempt ("严禁未做到重复三次就挂线"); the config loader refuses a
routine with fewer than three prompts.

Every step appends a `RecordEvent`; every change to the call's row is a
`RecordCall` with the whole row, so the writer can apply them in any batch.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from ivr.events import (
    Aborted,
    Action,
    Answer,
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

GREETING = "{greeting}"  # placeholder in SilentRoutine.prompts for the chosen greeting
HOLD_PROMPT = "hold"
RING_TIMER = "ring"
SILENCE_TIMER = "silence"
HOLD_TIMER = "hold"


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
    hold_repeat_seconds: float = 20.0


class State(enum.Enum):
    INIT = "init"
    RINGING = "ringing"
    PROMPTING = "prompting"  # a silent-routine prompt is playing
    WAITING = "waiting"  # listening in silence after a prompt
    HOLDING = "holding"  # the caller is engaged; held until routing takes over
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
        self.state = State.HOLDING
        actions.append(Play(HOLD_PROMPT))

    def _on_hold_prompt_finished(self, event: PromptFinished, actions: list[Action]) -> None:
        actions.append(StartTimer(HOLD_TIMER, self.settings.hold_repeat_seconds))

    def _on_hold_timer(self, event: TimerFired, actions: list[Action]) -> None:
        if event.timer != HOLD_TIMER:
            raise CallFlowError(self.state, event)
        actions.append(Play(HOLD_PROMPT))

    def _on_hold_digit(self, event: Digit, actions: list[Action]) -> None:
        self._step(actions, event.at, "digit", f"digit={event.digit} via={event.via}")

    def _on_hold_speech(self, event: SpeechStarted, actions: list[Action]) -> None:
        pass  # a late VAD report after Listen(False); nothing to do

    def _on_caller_bye(self, event: HungUp, actions: list[Action]) -> None:
        actions.extend((CancelTimer(SILENCE_TIMER), CancelTimer(HOLD_TIMER), Listen(False), StopPlayback()))
        self._step(actions, event.at, "caller_bye")
        self._end(actions, event.at, "caller_hangup", "caller")

    def _on_aborted(self, event: Aborted, actions: list[Action]) -> None:
        self._step(actions, event.at, "aborted", event.reason)
        if self.state is State.RINGING:
            actions.append(CancelTimer(RING_TIMER))
            actions.append(Reject(503, "Service Unavailable"))
        else:
            actions.extend((CancelTimer(SILENCE_TIMER), CancelTimer(HOLD_TIMER), Listen(False), StopPlayback()))
            actions.append(HangUp())
        self._end(actions, event.at, "failed", "ivr")

    def _ignore_late(self, event: Event, actions: list[Action]) -> None:
        pass  # a BYE crossing ours, a timer or prompt end racing the hang-up


_Handler = Callable[[CallFlow, Event, list[Action]], None]
_LIVE = {HungUp: CallFlow._on_caller_bye, Aborted: CallFlow._on_aborted}

_TRANSITIONS: dict[State, dict[type, _Handler]] = {  # type: ignore[dict-item]
    State.INIT: {Invited: CallFlow._on_invited},
    State.RINGING: {
        TimerFired: CallFlow._on_ring_timer,  # -> PROMPTING
        Cancelled: CallFlow._on_cancelled,  # -> ENDED
        Aborted: CallFlow._on_aborted,  # -> ENDED
    },
    State.PROMPTING: {
        PromptFinished: CallFlow._on_prompt_finished,  # -> WAITING
        SpeechStarted: CallFlow._on_engaged,  # -> HOLDING
        Digit: CallFlow._on_engaged,  # -> HOLDING
        **_LIVE,  # -> ENDED
    },
    State.WAITING: {
        TimerFired: CallFlow._on_silence_timer,  # -> PROMPTING, or ENDED after the last attempt
        SpeechStarted: CallFlow._on_engaged,  # -> HOLDING
        Digit: CallFlow._on_engaged,  # -> HOLDING
        **_LIVE,  # -> ENDED
    },
    State.HOLDING: {
        PromptFinished: CallFlow._on_hold_prompt_finished,
        TimerFired: CallFlow._on_hold_timer,
        Digit: CallFlow._on_hold_digit,
        SpeechStarted: CallFlow._on_hold_speech,
        **_LIVE,  # -> ENDED
    },
    State.ENDED: {
        HungUp: CallFlow._ignore_late,
        TimerFired: CallFlow._ignore_late,
        PromptFinished: CallFlow._ignore_late,
        SpeechStarted: CallFlow._ignore_late,
        Digit: CallFlow._ignore_late,
        Aborted: CallFlow._ignore_late,
        Cancelled: CallFlow._ignore_late,
    },
}
