"""The records the CRM stores, as the IVR hands them over: one call's row, its steps, the survey,
complaint tickets, callback requests, and recording files with their paused spans.

They live here, beside the writer that stores them and the outbox that journals them, so the CRM
side needs nothing from the IVR; the call flow (`ivr.events`) emits them as actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class CallRecord:
    """The CRM row of one call (table `calls`), as it stands now."""

    sip_call_id: str
    caller: str
    callee: str
    started_at: datetime
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    greeting: str | None = None
    silent_attempts: int = 0
    outcome: str | None = None
    hangup_by: str | None = None
    tier: str | None = None
    service: str | None = None
    seat_group: str | None = None
    agent_number: str | None = None
    queue_wait_s: float | None = None
    talk_s: float | None = None
    survey_score: int | None = None


@dataclass(frozen=True, slots=True)
class RecordCall:
    """Write the call's row (insert or update) to the CRM."""

    record: CallRecord


@dataclass(frozen=True, slots=True)
class RecordEvent:
    """Append one step to the call's history (table `call_events`)."""

    sip_call_id: str
    at: datetime
    kind: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class RecordSurvey:
    """The caller's post-call rating (table `surveys`)."""

    sip_call_id: str
    at: datetime
    agent_number: str | None
    seat_group: str | None
    score: int
    label: str


@dataclass(frozen=True, slots=True)
class OpenTicket:
    """A complaint to follow up (table `tickets`), feedback due within a day ([002])."""

    sip_call_id: str
    at: datetime
    customer_phone: str
    agent_number: str | None
    seat_group: str | None
    next_feedback_due: datetime


@dataclass(frozen=True, slots=True)
class RecordCallback:
    """A callback request's row (table `callbacks`, upserted on `request_key`), as it stands now."""

    request_key: str  # the Call-ID of the call that asked: unique, and the same after a restart
    number: str
    tier: str
    service: str
    seat_group: str
    requested_at: datetime
    due_at: datetime
    status: str
    attempts: int = 0
    result: str | None = None
    call_ids: str = ""  # the call that asked, then each attempt's call, space-separated


@dataclass(frozen=True, slots=True)
class RecordAgentState:
    """An agent's state changed (table `agent_states`): time-by-state and occupancy come from these."""

    agent_number: str
    state: str
    at: datetime
    seat_group: str | None = None
    sip_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class RecordSurveyAnswer:
    """One answer to a question of the post-call questionnaire (table `survey_answers`), written as it is given."""

    sip_call_id: str
    at: datetime
    questionnaire: str
    version: str  # the questionnaire's content hash when it was asked (ivr.questionnaire)
    question: str
    key: str
    value: str
    label: str
    score: int | None = None  # 1 satisfied, 2 average, 3 dissatisfied: the scored question's answer only
    followup: bool = False  # the customer asks to be called back


@dataclass(frozen=True, slots=True)
class RecordSurveyRun:
    """How a call's questionnaire ended (table `survey_runs`): one of crm_bridge.models.SURVEY_STATUSES.

    complete: walked to its end; partial: the caller hung up (or the call failed) after one answer or more;
    skipped: no answer at all (hung up before answering, or before the agent).
    """

    sip_call_id: str
    at: datetime
    questionnaire: str
    version: str
    status: str
    asked: int  # questions asked (reprompts not counted)
    answered: int


@dataclass(frozen=True, slots=True)
class RecordMonitoring:
    """A supervisor's monitoring session (table `monitoring_sessions`, upserted on `session_key`), as it stands now."""

    session_key: str  # the supervisor's own call's SIP Call-ID: unique, and the same in every update
    sip_call_id: str  # the monitored caller's call
    agent_number: str
    supervisor: str
    via: str  # phone | desk
    mode: str  # listen | whisper | barge: the mode now
    started_at: datetime
    ended_at: datetime | None = None
    end_reason: str | None = None


@dataclass(frozen=True, slots=True)
class RecordMonitoringMode:
    """A monitoring session entered a mode (table `monitoring_mode_changes`); its first is the starting mode."""

    session_key: str
    at: datetime
    mode: str


@dataclass(frozen=True, slots=True)
class RecordRecording:
    """A recording file's row (table `recordings`, upserted on `path`), as it stands now.

    Submitted when the file is opened (`recording`) and again when it is
    `complete` (size, duration, SHA-256) or `failed` (a write error: `error`).
    """

    path: str  # relative to [recording] directory; made from the call's id and the time only
    sip_call_id: str
    agent_number: str | None
    seat_group: str | None
    format: str
    channels: int
    started_at: datetime
    state: str
    ivr_worker: str | None = None
    ended_at: datetime | None = None
    duration_s: float | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class RecordRecordingPause:
    """A span of a recording paused for sensitive data (table `recording_pauses`), once it has ended."""

    path: str  # the recording's
    paused_by: str
    started_at: datetime
    offset_s: float
    duration_s: float


@dataclass(frozen=True, slots=True)
class RecordCharacteristics:
    """A complete recording's conversation characteristics (crm_bridge.characteristics), as JSON for its row."""

    path: str  # the recording's row, by its path
    characteristics: str
