"""Events into the call flow and actions out of it.

Every event carries `at`, the moment it happened (an aware datetime supplied
by whoever drives the flow: the engine adapter in production, a fake clock in
tests). Actions are instructions for the adapter; the flow never performs I/O
itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

# the records the CRM stores are the CRM's types; the flow emits them as actions (re-exported here)
from crm_bridge.records import CallRecord as CallRecord
from crm_bridge.records import OpenTicket as OpenTicket
from crm_bridge.records import RecordCall as RecordCall
from crm_bridge.records import RecordCallback as RecordCallback
from crm_bridge.records import RecordEvent as RecordEvent
from crm_bridge.records import RecordSurvey as RecordSurvey
from crm_bridge.records import RecordSurveyAnswer as RecordSurveyAnswer
from crm_bridge.records import RecordSurveyRun as RecordSurveyRun


def utc_now() -> datetime:
    """The time events carry: aware, in UTC (the CRM stores UTC; ivr.greeting converts for the caller)."""
    return datetime.now(UTC)


# --- events: what happened on the call ------------------------------------


@dataclass(frozen=True, slots=True)
class Invited:
    """A new INVITE for one of our numbers, with an acceptable offer."""

    at: datetime
    caller: str
    callee: str


@dataclass(frozen=True, slots=True)
class CallerIdentified:
    """The CRM look-up of the caller's number finished (while it rang)."""

    at: datetime
    tier: str  # senior, middle or junior; unknown callers are junior ([001])
    known: bool
    # the prompt that greets this caller by surname ("张先生,"), played before the greeting; None: not by name
    salutation: str | None = None


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The caller sent CANCEL while we were ringing."""

    at: datetime


@dataclass(frozen=True, slots=True)
class TimerFired:
    """A timer the flow asked for with `StartTimer` has elapsed."""

    at: datetime
    timer: str


@dataclass(frozen=True, slots=True)
class PromptFinished:
    """The last frame of a prompt started with `Play` has been sent."""

    at: datetime
    prompt: str


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Voice activity was detected on the caller's audio."""

    at: datetime


@dataclass(frozen=True, slots=True)
class Digit:
    """The caller pressed a key (RFC 4733 telephone-event or SIP INFO)."""

    at: datetime
    digit: str
    via: Literal["rfc4733", "info"] = "rfc4733"


@dataclass(frozen=True, slots=True)
class HungUp:
    """The caller sent BYE."""

    at: datetime


@dataclass(frozen=True, slots=True)
class Aborted:
    """The call cannot go on: engine error, missing ACK, or IVR shutdown."""

    at: datetime
    reason: str


@dataclass(frozen=True, slots=True)
class QueuePosition:
    """Where the caller stands in the seat group's queue (1 = next), asked for by `AnnouncePosition`.

    `agents_online`: whether any agent of the group (or of its overflow) is logged in and not paused;
    `wait_seconds`: the expected wait (`ivr.waiting`), None when there is no estimate to give.
    """

    at: datetime
    position: int
    agents_online: bool = True
    wait_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class AgentRinging:
    """The ACD chose an agent for this caller and the IVR is ringing them."""

    at: datetime
    agent: str


@dataclass(frozen=True, slots=True)
class AgentNoAnswer:
    """The agent did not answer in time (or refused); the caller is back at the head of the queue."""

    at: datetime
    agent: str


@dataclass(frozen=True, slots=True)
class AgentAnswered:
    at: datetime
    agent: str
    seat_group: str


@dataclass(frozen=True, slots=True)
class AgentHungUp:
    """The agent's leg ended (BYE from the agent, or its media failed)."""

    at: datetime
    gone: str = ""  # why the IVR ended it: the agent's phone went silent, its browser's media failed; "": a BYE


@dataclass(frozen=True, slots=True)
class CallbackStarted:
    """The dialler takes a callback request: an agent of its group first, then the customer ("回拨")."""

    at: datetime
    number: str  # the stored number of the request, the only one this call may dial
    callee: str  # the hotline number the call row names
    tier: str
    service: str
    seat_group: str


@dataclass(frozen=True, slots=True)
class WhisperFinished:
    """The agent has heard the whisper (tier, service, "回拨"); the customer can be dialled."""

    at: datetime


@dataclass(frozen=True, slots=True)
class CustomerAnswered:
    """The customer answered the callback (200 OK from the gateway)."""

    at: datetime


@dataclass(frozen=True, slots=True)
class CustomerFailed:
    """The customer did not take the callback: no_answer, busy, declined or failed (ivr.callbacks.OUTCOMES)."""

    at: datetime
    outcome: str
    status: int = 0  # the SIP final response, 0 when none came


@dataclass(frozen=True, slots=True)
class TransferRequested:
    """The bridged agent transferred the caller (SIP REFER, accepted): to a seat group's queue."""

    at: datetime
    by_agent: str
    seat_group: str
    target: str  # as the agent asked: the group, or "complaint" for [queues] complaint_group


@dataclass(frozen=True, slots=True)
class AgentHold:
    """The agent's phone put the caller on hold (re-INVITE sendonly or inactive), or took them off it."""

    at: datetime
    agent: str
    held: bool


Event = (
    Invited | CallerIdentified | Cancelled | TimerFired | PromptFinished | SpeechStarted | Digit | HungUp | Aborted
    | QueuePosition | AgentRinging | AgentNoAnswer | AgentAnswered | AgentHungUp
    | CallbackStarted | WhisperFinished | CustomerAnswered | CustomerFailed | TransferRequested | AgentHold
)

# --- actions: what the adapter must do --------------------------------------


@dataclass(frozen=True, slots=True)
class Ring:
    """Send 180 Ringing."""


@dataclass(frozen=True, slots=True)
class Answer:
    """Send 200 OK with our SDP answer; media may flow from now on."""


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer the (unanswered) INVITE with a final error status."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class Play:
    """Send a prompt's audio to the caller, then report `PromptFinished`."""

    prompt: str


@dataclass(frozen=True, slots=True)
class StopPlayback:
    """Stop the prompt being played; no `PromptFinished` follows for it."""


@dataclass(frozen=True, slots=True)
class StartTimer:
    """Fire `TimerFired(timer)` after `seconds`; restarting a name replaces it."""

    timer: str
    seconds: float


@dataclass(frozen=True, slots=True)
class CancelTimer:
    timer: str


@dataclass(frozen=True, slots=True)
class Listen:
    """Run voice activity detection on the caller's audio (or stop it)."""

    on: bool


@dataclass(frozen=True, slots=True)
class Music:
    """Between prompts, send hold music (on) or keep-alive silence (off); prompts interrupt the music,
    which resumes where it stopped."""

    on: bool


@dataclass(frozen=True, slots=True)
class HangUp:
    """Send BYE to the caller."""


@dataclass(frozen=True, slots=True)
class JoinQueue:
    """Put the caller in the seat group's queue for the ACD."""

    seat_group: str
    service: str


@dataclass(frozen=True, slots=True)
class LeaveQueue:
    """The caller is gone: take them out of the queue (and stop ringing an agent for them)."""


@dataclass(frozen=True, slots=True)
class AnnouncePosition:
    """Report the caller's queue position back as a `QueuePosition` event."""


@dataclass(frozen=True, slots=True)
class Bridge:
    """Relay audio and DTMF between the caller and the agent."""


@dataclass(frozen=True, slots=True)
class Unbridge:
    """Stop relaying; the caller stays with the IVR."""


@dataclass(frozen=True, slots=True)
class RelayDigit:
    """Send the caller's key to the agent (RFC 4733)."""

    digit: str


@dataclass(frozen=True, slots=True)
class HangUpAgent:
    """End the agent's leg (BYE, or CANCEL while it rings)."""


@dataclass(frozen=True, slots=True)
class Whisper:
    """Play these prompts to the agent (not the caller), then report `WhisperFinished`."""

    prompts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DialCustomer:
    """Call the callback's stored number through `[callbacks] gateway`.

    `CustomerAnswered` or `CustomerFailed` follows.
    """


@dataclass(frozen=True, slots=True)
class RequestCallback:
    """The caller asked to be called back (table `callbacks`): store the request, dial it when an agent is free."""

    sip_call_id: str
    at: datetime
    number: str
    tier: str
    service: str
    seat_group: str
    due_at: datetime  # not dialled before this (the next opening when asked outside business hours)


Action = (
    Ring
    | Answer
    | Reject
    | Play
    | StopPlayback
    | StartTimer
    | CancelTimer
    | Listen
    | HangUp
    | RecordCall
    | RecordEvent
    | JoinQueue
    | LeaveQueue
    | AnnouncePosition
    | Bridge
    | Unbridge
    | RelayDigit
    | HangUpAgent
    | RecordSurvey
    | OpenTicket
    | Music
    | RequestCallback
    | Whisper
    | DialCustomer
    | RecordSurveyAnswer
    | RecordSurveyRun
)
