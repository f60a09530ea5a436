"""CRM tables, as typed SQLAlchemy 2 models.

`calls` and `call_events` are a contract read by ops reports and acceptance
tests: column names and outcome values are not renamed lightly. Schema
changes go through an Alembic revision in `crm_bridge/migrations/versions`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, String, Table, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

OUTCOMES = (
    "abandoned_ringing", "silent", "caller_hangup", "completed", "abandoned_queue", "failed",
    "closed",  # outside business hours ([hours]): the closed message, a callback request if the caller asked
    "callback_requested",  # the caller left the queue to be called back (table callbacks)
    # the IVR calling a customer back (the call row of each attempt; the request's row in callbacks)
    "callback_completed", "callback_no_answer", "callback_busy", "callback_declined", "callback_failed",
)
HANGUP_BY = ("caller", "ivr", "agent")


@overload
def aware(at: datetime) -> datetime: ...
@overload
def aware(at: None) -> None: ...
def aware(at: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; everything is stored as UTC."""
    if at is None:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True)}


def table_of(model: type[Base]) -> Table:
    """A mapped class's Table (declared as a FromClause by SQLAlchemy; every model here maps one table)."""
    table = model.__table__
    assert isinstance(table, Table)
    return table


class Call(Base):
    """One call to the hotline, from INVITE to its end."""

    __tablename__ = "calls"

    id: Mapped[int] = mapped_column(primary_key=True)
    sip_call_id: Mapped[str] = mapped_column(String(255), unique=True)
    caller: Mapped[str] = mapped_column(String(128))  # From user part
    callee: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime]
    answered_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    greeting: Mapped[str | None] = mapped_column(String(64))  # morning, normal, holiday:national_day
    silent_attempts: Mapped[int] = mapped_column(default=0)
    outcome: Mapped[str | None] = mapped_column(String(32))  # one of OUTCOMES; NULL while in progress
    hangup_by: Mapped[str | None] = mapped_column(String(16))  # one of HANGUP_BY
    tier: Mapped[str | None] = mapped_column(String(16))
    service: Mapped[str | None] = mapped_column(String(64))
    seat_group: Mapped[str | None] = mapped_column(String(64))
    agent_number: Mapped[str | None] = mapped_column(String(32))
    queue_wait_s: Mapped[float | None]
    talk_s: Mapped[float | None]
    survey_score: Mapped[int | None]
    ivr_worker: Mapped[str | None] = mapped_column(String(128))  # the IVR process that took the call ([cluster] worker)

    events: Mapped[list[CallEvent]] = relationship(back_populates="call", order_by="CallEvent.id")

    __table_args__ = (Index("ix_calls_started_at", "started_at"), Index("ix_calls_caller", "caller"))


class CallEvent(Base):
    """One step of a call: invited, answered, prompt, silence, digit, ended …"""

    __tablename__ = "call_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")

    call: Mapped[Call] = relationship(back_populates="events")

    # the scorecards read one kind of step over a period (agent_answered, transferred)
    __table_args__ = (Index("ix_call_events_kind_at", "kind", "at"),)


class Callback(Base):
    """A caller's request to be called back ("稍后给您回过去"), and how the calls back went.

    Written by the IVR (`ivr.callbacks`): one row per request, keyed by the
    Call-ID of the call that asked; `call_ids` lists that call, then each
    attempt's call. `result` says why it closed (callback_completed,
    callback_no_answer, callback_failed, callback_declined, callback_cancelled).
    """

    __tablename__ = "callbacks"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_key: Mapped[str] = mapped_column(String(255), unique=True)
    number: Mapped[str] = mapped_column(String(32), index=True)
    tier: Mapped[str] = mapped_column(String(16))
    service: Mapped[str] = mapped_column(String(64))
    seat_group: Mapped[str] = mapped_column(String(64))
    requested_at: Mapped[datetime]
    due_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16))  # pending, dialling, completed, failed
    attempts: Mapped[int] = mapped_column(default=0)
    result: Mapped[str | None] = mapped_column(String(32))
    call_ids: Mapped[str] = mapped_column(Text, default="")  # space-separated SIP Call-IDs

    __table_args__ = (Index("ix_callbacks_status_due", "status", "due_at"),)


# --- tiered service (spec §4-7) --------------------------------------------------

TIERS = ("senior", "middle", "junior")  # 高端 / 中端 / 低端 customers, served by the group of the same name


class Customer(Base):
    """A customer known to the CRM; `tier` set here overrides the thresholds."""

    __tablename__ = "customers"

    id: Mapped[int] = mapped_column(primary_key=True)
    phone: Mapped[str] = mapped_column(String(32), unique=True)  # looked up by caller number: one indexed query
    name: Mapped[str] = mapped_column(String(128), default="")
    assets: Mapped[float] = mapped_column(default=0.0)
    volume: Mapped[float] = mapped_column(default=0.0)
    tier: Mapped[str | None] = mapped_column(String(16))  # explicit tier, or NULL to derive from assets/volume
    # "male" / "female" for the title of a greeting by name (先生/女士); NULL: not known, no greeting by name
    gender: Mapped[str | None] = mapped_column(String(8))


class SeatGroup(Base):
    __tablename__ = "seat_groups"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)  # senior, middle, junior
    label: Mapped[str] = mapped_column(String(64))  # 高级坐席组 …


class Agent(Base):
    """An agent (seat), and — when workers share agents (`[cluster] shared_agents`) — their live state.

    The state columns are written by `ivr.shared_acd`: every IVR worker behind
    the balancer offers calls to the same agents, and an offer is an atomic
    claim of an `available` row. A single IVR process keeps agent state in
    memory and leaves them alone.
    """

    __tablename__ = "agents"

    number: Mapped[str] = mapped_column(String(32), primary_key=True)  # the seat number announced to callers
    name: Mapped[str] = mapped_column(String(128), default="")
    seat_group: Mapped[str] = mapped_column(ForeignKey("seat_groups.name"))
    state: Mapped[str] = mapped_column(String(16), default="logged_out", server_default="logged_out")
    contact_host: Mapped[str | None] = mapped_column(String(64))  # where the agent's phone is reached
    contact_port: Mapped[int | None]
    contact_uri: Mapped[str | None] = mapped_column(String(255))  # the Contact URI the phone registered
    # the Path (RFC 3327) it registered through, an entry a line: the Route set every worker rings it with
    contact_path: Mapped[str | None] = mapped_column(String(1024))
    registered_until: Mapped[datetime | None]  # NULL for a static contact (host = … in sip.conf)
    idle_since: Mapped[datetime | None]  # longest idle is offered first
    call_id: Mapped[str | None] = mapped_column(String(255))  # the caller's Call-ID while ringing or talking
    worker: Mapped[str | None] = mapped_column(String(128))  # the worker that holds that call
    wrap_up_until: Mapped[datetime | None]
    state_changed_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_agents_group_state", "seat_group", "state"),)


class AcdWorker(Base):
    """An IVR worker sharing the agents, with its heartbeat; a silent worker's calls are presumed gone."""

    __tablename__ = "acd_workers"

    worker: Mapped[str] = mapped_column(String(128), primary_key=True)
    started_at: Mapped[datetime]
    seen_at: Mapped[datetime]


class AcdWaiting(Base):
    """A caller queued on some worker, so the oldest caller across workers gets the next agent."""

    __tablename__ = "acd_queue"

    call_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    worker: Mapped[str] = mapped_column(String(128))
    seat_group: Mapped[str] = mapped_column(String(32))
    service: Mapped[str] = mapped_column(String(64))
    joined_at: Mapped[datetime]

    __table_args__ = (Index("ix_acd_queue_group_joined", "seat_group", "joined_at"),)


class Survey(Base):
    """A post-call rating: the caller's keypad score against the call, agent and seat group."""

    __tablename__ = "surveys"

    id: Mapped[int] = mapped_column(primary_key=True)
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime]
    agent_number: Mapped[str | None] = mapped_column(String(32))
    seat_group: Mapped[str | None] = mapped_column(String(32))
    score: Mapped[int]
    label: Mapped[str] = mapped_column(String(32))


class Ticket(Base):
    """A complaint followed up by a specialist; feedback to the customer at least daily ([002])."""

    __tablename__ = "tickets"

    id: Mapped[int] = mapped_column(primary_key=True)
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    customer_phone: Mapped[str] = mapped_column(String(32))
    agent_number: Mapped[str | None] = mapped_column(String(32))
    seat_group: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="open")  # one of TICKET_STATUSES
    opened_at: Mapped[datetime]
    next_feedback_due: Mapped[datetime] = mapped_column(index=True)  # last feedback (or opening) + 1 day
    last_feedback_at: Mapped[datetime | None]
    description: Mapped[str] = mapped_column(Text, default="", server_default="")  # what the caller reported
    department: Mapped[str | None] = mapped_column(String(64))  # the department it was forwarded to
    result: Mapped[str | None] = mapped_column(Text)  # the department's result
    caller_satisfied: Mapped[bool | None]  # asked when the result was reported to the caller
    updated_at: Mapped[datetime | None]
    closed_at: Mapped[datetime | None]
    # why an agent should call the customer in person (a follow-up call found nobody, or they asked for one)
    needs_agent: Mapped[str | None] = mapped_column(String(128))

    history: Mapped[list[TicketHistory]] = relationship(back_populates="ticket", order_by="TicketHistory.id")


# [000] complaint flow: record -> forward -> department's result -> tell the caller -> closed, or forward again
TICKET_STATUSES = ("open", "forwarded", "result_received", "caller_informed", "closed")


class TicketHistory(Base):
    """Every change to a ticket, and every daily feedback to the caller: who, when, what."""

    __tablename__ = "ticket_history"

    id: Mapped[int] = mapped_column(primary_key=True)
    ticket_id: Mapped[int] = mapped_column(ForeignKey("tickets.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(128))  # the desk user (seat number or supervisor name)
    action: Mapped[str] = mapped_column(String(32))  # opened, status, edited, feedback
    status_from: Mapped[str | None] = mapped_column(String(16))
    status_to: Mapped[str | None] = mapped_column(String(16))
    detail: Mapped[str] = mapped_column(Text, default="", server_default="")

    ticket: Mapped[Ticket] = relationship(back_populates="history")


class CallNote(Base):
    """The agent's note and wrap-up code for a call, written at the desk during and after it."""

    __tablename__ = "call_notes"

    id: Mapped[int] = mapped_column(primary_key=True)
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    agent_number: Mapped[str] = mapped_column(String(32))
    note: Mapped[str] = mapped_column(Text, default="", server_default="")
    wrap_up_code: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (UniqueConstraint("call_id", "agent_number", name="uq_call_notes_call_agent"),)


# what the desk may ask of the IVR: as *46 / *47 do; as *48 does (the call's recording); and "monitor", to ring a
# supervisor's phone into the agent's call (ivr.monitoring)
AGENT_COMMANDS = ("pause", "resume", "end_wrap_up", "pause_recording", "resume_recording", "monitor")


class AgentCommand(Base):
    """A request from the agent desk to the IVR, which holds agent state; claimed once by one IVR."""

    __tablename__ = "agent_commands"

    id: Mapped[int] = mapped_column(primary_key=True)
    agent: Mapped[str] = mapped_column(String(32))
    command: Mapped[str] = mapped_column(String(16))  # one of AGENT_COMMANDS
    requested_at: Mapped[datetime]
    requested_by: Mapped[str | None] = mapped_column(String(128))
    taken_at: Mapped[datetime | None]
    taken_by: Mapped[str | None] = mapped_column(String(128))  # the IVR worker, or "expired"
    # a monitor command: the supervisor's phone (agent number) to ring, and listen | whisper | barge
    supervisor: Mapped[str | None] = mapped_column(String(32))
    mode: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (Index("ix_agent_commands_pending", "taken_at", "requested_at"),)


DESK_ROLES = ("agent", "supervisor")


class DeskUser(Base):
    """A login of the agent desk: an agent by seat number, or a supervisor by name. Only an argon2 hash is kept."""

    __tablename__ = "desk_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # one of DESK_ROLES
    agent_number: Mapped[str | None] = mapped_column(String(32))  # set for role agent
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]


class OutboxCheckpoint(Base):
    """How far each IVR process's local outbox has been applied (see `crm_bridge.outbox`).

    Updated in the same transaction as the records it covers, so a replay
    after a crash applies every record exactly once.
    """

    __tablename__ = "outbox_checkpoints"

    stream: Mapped[str] = mapped_column(String(64), primary_key=True)  # one per outbox directory
    seq: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class WebhookDelivery(Base):
    """A finished call waiting to be pushed to the external CRM (transactional outbox)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(primary_key=True)
    sip_call_id: Mapped[str] = mapped_column(String(255))
    payload: Mapped[str] = mapped_column(Text)  # the JSON body, exactly as signed and sent
    created_at: Mapped[datetime]
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]


class WebhookDeadLetter(Base):
    """A push that failed every attempt; ops re-queue it with `python -m crm_bridge webhook-retry`."""

    __tablename__ = "webhook_dead_letters"

    id: Mapped[int] = mapped_column(primary_key=True)
    sip_call_id: Mapped[str] = mapped_column(String(255), index=True)
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]
    failed_at: Mapped[datetime]
    attempts: Mapped[int]
    last_error: Mapped[str | None] = mapped_column(Text)


# failed: a write error (full disk …) ended the file early; it is kept, marked, and never passes as complete
RECORDING_STATES = ("recording", "complete", "interrupted", "failed", "deleted")


class Recording(Base):
    """One recording file of a bridged call: stereo, the caller on the left and the agent on the right.

    `path` is relative to `[recording] directory` and is made by the IVR from
    the call's row id and the time, never from caller-supplied text. A row is
    `recording` while the file is written under a temporary name, `complete`
    once renamed with its size and SHA-256, `interrupted` when the process
    died meanwhile (found at the next start), `deleted` after retention.
    """

    __tablename__ = "recordings"

    id: Mapped[int] = mapped_column(primary_key=True)
    sip_call_id: Mapped[str] = mapped_column(String(255), index=True)
    agent_number: Mapped[str | None] = mapped_column(String(32), index=True)
    seat_group: Mapped[str | None] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(512), unique=True)
    format: Mapped[str] = mapped_column(String(16))  # wav-pcm16, wav-alaw, wav-ulaw, flac, ogg-opus
    channels: Mapped[int] = mapped_column(default=2)
    started_at: Mapped[datetime] = mapped_column(index=True)
    ended_at: Mapped[datetime | None]
    duration_s: Mapped[float | None]
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), index=True)  # one of RECORDING_STATES
    error: Mapped[str | None] = mapped_column(Text)  # why it is interrupted, or a write error
    # conversation characteristics computed after the call (talk times, silences, over-talk), JSON
    characteristics: Mapped[str | None] = mapped_column(Text)
    deleted_at: Mapped[datetime | None]
    # the IVR process that wrote it: a restart marks only its own unfinished files interrupted
    ivr_worker: Mapped[str | None] = mapped_column(String(128), index=True)
    pauses: Mapped[list[RecordingPause]] = relationship(
        back_populates="recording", order_by="RecordingPause.started_at")


class RecordingPause(Base):
    """A span of a recording paused for sensitive data (silence in the file): who paused it, when, how long."""

    __tablename__ = "recording_pauses"

    id: Mapped[int] = mapped_column(primary_key=True)
    recording_id: Mapped[int] = mapped_column(ForeignKey("recordings.id"), index=True)
    paused_by: Mapped[str] = mapped_column(String(64))  # the agent number, or a desk user name
    started_at: Mapped[datetime]
    offset_s: Mapped[float]  # where the pause starts in the file
    duration_s: Mapped[float | None]  # None while still paused
    recording: Mapped[Recording] = relationship(back_populates="pauses")


# --- QA review (质检): evaluation forms, evaluations, the agent's answer ------------------------

EVALUATION_STATUSES = ("open", "acknowledged", "disputed", "resolved")
EVALUATION_ACTIONS = ("acknowledged", "disputed", "resolved")


class EvaluationForm(Base):
    """One version of an evaluation form, as read from its TOML file (desk/quality.py).

    `version` is the SHA-256 of the canonical JSON in `definition`: an edited
    file is a new row, and every evaluation keeps the version it was made with.
    """

    __tablename__ = "evaluation_forms"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64), unique=True)
    definition: Mapped[str] = mapped_column(Text)  # the form as JSON: sections, criteria, weights, scales
    source: Mapped[str] = mapped_column(String(512))  # the file it was first read from
    first_loaded_at: Mapped[datetime]


class Evaluation(Base):
    """A supervisor's scoring of one agent's handling of a call, with the form version used."""

    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(primary_key=True)
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    form_id: Mapped[int] = mapped_column(ForeignKey("evaluation_forms.id"))
    recording_id: Mapped[int | None] = mapped_column(ForeignKey("recordings.id"))  # the file listened to
    agent_number: Mapped[str] = mapped_column(String(32), index=True)  # the agent evaluated
    evaluator: Mapped[str] = mapped_column(String(64))  # the supervisor's desk name
    created_at: Mapped[datetime]
    total: Mapped[float]  # 0-100, weighted over the applicable criteria; 0 when a fatal criterion failed it
    passed: Mapped[bool]
    fatal: Mapped[str] = mapped_column(Text, default="", server_default="")  # keys of fatal criteria violated
    comment: Mapped[str] = mapped_column(Text, default="", server_default="")
    status: Mapped[str] = mapped_column(String(16), default="open")  # one of EVALUATION_STATUSES

    answers: Mapped[list[EvaluationAnswer]] = relationship(back_populates="evaluation", order_by="EvaluationAnswer.id")
    responses: Mapped[list[EvaluationResponse]] = relationship(
        back_populates="evaluation", order_by="EvaluationResponse.id")


class EvaluationAnswer(Base):
    """The answer to one criterion of an evaluation; `points` is None for 不适用 (its weight dropped out)."""

    __tablename__ = "evaluation_answers"

    id: Mapped[int] = mapped_column(primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), index=True)
    criterion: Mapped[str] = mapped_column(String(64))  # the criterion's key in the form version
    answer: Mapped[str] = mapped_column(String(64))  # the scale's label, 不适用, or 未发生 / 发生 (fatal)
    points: Mapped[float | None]  # 0-1 of the weight
    weight: Mapped[float]
    auto: Mapped[bool]  # the answer its auto rule gave from the recording's characteristics (kept as is)

    evaluation: Mapped[Evaluation] = relationship(back_populates="answers")

    __table_args__ = (UniqueConstraint("evaluation_id", "criterion", name="uq_evaluation_answers_criterion"),)


class EvaluationResponse(Base):
    """The agent acknowledging or disputing an evaluation, and the supervisor's answer to a dispute."""

    __tablename__ = "evaluation_responses"

    id: Mapped[int] = mapped_column(primary_key=True)
    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))  # one of EVALUATION_ACTIONS
    comment: Mapped[str] = mapped_column(Text, default="", server_default="")

    evaluation: Mapped[Evaluation] = relationship(back_populates="responses")

AGENT_STATES = ("logged_out", "available", "ringing", "talking", "wrap_up", "paused")  # ivr.acd.AgentState


class AgentStateChange(Base):
    """An agent's state from `at` until their next row: the log time-by-state and occupancy are computed from.

    Written by the IVR through its durable writer (`RecordAgentState`) each
    time it sees an agent's state change. With shared agents every worker logs
    the changes it sees, so a change may appear once per worker, seconds
    apart; spans are measured from each row to the agent's next row, so a
    repeated state only splits a span in two.
    """

    __tablename__ = "agent_states"

    id: Mapped[int] = mapped_column(primary_key=True)
    agent_number: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16))  # one of AGENT_STATES
    at: Mapped[datetime]
    seat_group: Mapped[str | None] = mapped_column(String(32))
    sip_call_id: Mapped[str | None] = mapped_column(String(255))  # the caller's call while ringing or talking
    worker: Mapped[str | None] = mapped_column(String(128))  # the IVR process that saw the change

    __table_args__ = (Index("ix_agent_states_agent_at", "agent_number", "at"),)


SURVEY_STATUSES = ("complete", "partial", "skipped")  # crm_bridge.records.RecordSurveyRun
SURVEY_LABELS = {1: "满意", 2: "一般", 3: "不满意"}  # survey_answers.score as the reports name it


class SurveyAnswer(Base):
    """One answer of a post-call questionnaire: which questionnaire (and its version), which question, which key.

    `version` is the questionnaire's content hash when it was asked, so a
    changed file never changes what a stored answer meant; rows carried over
    from the single-question `surveys` table (migration 0010) have `legacy`.
    `score` is set for the scored question only (1 satisfied … 3
    dissatisfied, as calls.survey_score); `followup`: the customer asked to be
    called back.
    """

    __tablename__ = "survey_answers"

    id: Mapped[int] = mapped_column(primary_key=True)
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    questionnaire: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(16))
    question: Mapped[str] = mapped_column(String(32))
    key: Mapped[str] = mapped_column(String(4))
    value: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(64))
    score: Mapped[int | None]
    followup: Mapped[bool] = mapped_column(default=False)
    answered_at: Mapped[datetime] = mapped_column(index=True)


class SurveyRun(Base):
    """How a call's questionnaire ended: complete, partial (hung up midway) or skipped (no answer)."""

    __tablename__ = "survey_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    questionnaire: Mapped[str] = mapped_column(String(32))
    version: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # one of SURVEY_STATUSES
    asked: Mapped[int]
    answered: Mapped[int]
    ended_at: Mapped[datetime] = mapped_column(index=True)


# --- follow-up calls (回访) ------------------------------------------------------------

FOLLOWUP_KINDS = ("resolved", "wrap_up", "daily", "survey")  # what asked for the call
FOLLOWUP_STATUSES = ("due", "dialling", "done", "unreachable", "closed")


class Followup(Base):
    """A call the IVR places to a customer by itself (回访), and how its attempts went.

    Written by `crm_bridge.followups`: one row per trigger (`trigger_key`
    unique, so several IVR workers scanning the same tickets add it once).
    An IVR worker claims a `due` row atomically before it dials (`dialling`,
    `claimed_by`); the attempt ends `done` with the customer's answer, `due`
    again for a retry, `unreachable` once the attempts are used up, or
    `closed` with its reason when it must not be dialled (谢绝来电, a number
    that is not domestic, a deleted customer, the ticket moved on).
    """

    __tablename__ = "followups"

    id: Mapped[int] = mapped_column(primary_key=True)
    trigger_key: Mapped[str] = mapped_column(String(255), unique=True)  # resolved:<ticket>:<history id> …
    kind: Mapped[str] = mapped_column(String(16))  # one of FOLLOWUP_KINDS
    number: Mapped[str] = mapped_column(String(32), index=True)  # the customer's number, as the CRM has it
    ticket_id: Mapped[int | None] = mapped_column(index=True)  # no foreign key: a deleted ticket closes it
    customer_id: Mapped[int | None]  # the customer row when scheduled; NULL for a caller the CRM did not know
    sip_call_id: Mapped[str | None] = mapped_column(String(255))  # the call it follows up, if any
    reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    status: Mapped[str] = mapped_column(String(16))  # one of FOLLOWUP_STATUSES
    created_at: Mapped[datetime]
    due_at: Mapped[datetime]  # not dialled before this (nor outside the calling hours)
    attempts: Mapped[int] = mapped_column(default=0)
    last_attempt_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(128))  # the IVR worker dialling it
    result: Mapped[str | None] = mapped_column(String(32))  # satisfied, dissatisfied, agent, do_not_call, …
    answers: Mapped[str] = mapped_column(Text, default="", server_default="")  # the keys pressed, as label=key
    call_ids: Mapped[str] = mapped_column(Text, default="", server_default="")  # each attempt's SIP Call-ID
    closed_at: Mapped[datetime | None]

    __table_args__ = (Index("ix_followups_status_due", "status", "due_at"),)


class DoNotCall(Base):
    """谢绝来电: a number the IVR never dials by itself (follow-ups); checked again at dial time."""

    __tablename__ = "do_not_call"

    number: Mapped[str] = mapped_column(String(32), primary_key=True)
    added_at: Mapped[datetime]
    added_by: Mapped[str] = mapped_column(String(128))  # a desk user, "cli", or "回访" (pressed 9 in a call)
    source: Mapped[str] = mapped_column(String(16))  # cli, desk, ivr


MONITORING_MODES = ("listen", "whisper", "barge")
MONITORING_VIA = ("phone", "desk")  # a feature code dialled from the supervisor's phone, or the desk's button


class MonitoringSession(Base):
    """A supervisor monitoring an agent's call (ivr.monitoring): who, whose call, how reached, from when to when.

    Written through the durable write path, upserted on `session_key` (the
    supervisor's own SIP Call-ID) as the session goes on; `mode` is the mode
    it is in now (or ended in), its history is in `monitoring_mode_changes`.
    """

    __tablename__ = "monitoring_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_key: Mapped[str] = mapped_column(String(255), unique=True)
    sip_call_id: Mapped[str] = mapped_column(String(255), index=True)  # the monitored caller's call
    agent_number: Mapped[str] = mapped_column(String(32), index=True)
    supervisor: Mapped[str] = mapped_column(String(32), index=True)
    via: Mapped[str] = mapped_column(String(8))  # one of MONITORING_VIA
    mode: Mapped[str] = mapped_column(String(16))  # one of MONITORING_MODES
    started_at: Mapped[datetime] = mapped_column(index=True)
    ended_at: Mapped[datetime | None]
    end_reason: Mapped[str | None] = mapped_column(String(64))  # supervisor hung up, call ended, ...
    changes: Mapped[list[MonitoringModeChange]] = relationship(
        back_populates="session", order_by="MonitoringModeChange.at")


class MonitoringModeChange(Base):
    """One mode a monitoring session entered (the first row is the mode it started in)."""

    __tablename__ = "monitoring_mode_changes"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("monitoring_sessions.id"), index=True)
    at: Mapped[datetime]
    mode: Mapped[str] = mapped_column(String(16))  # one of MONITORING_MODES
    session: Mapped[MonitoringSession] = relationship(back_populates="changes")
