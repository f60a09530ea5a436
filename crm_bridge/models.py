"""CRM tables, as typed SQLAlchemy 2 models.

`calls` and `call_events` are a contract read by ops reports and acceptance
tests: column names and outcome values are not renamed lightly. Schema
changes go through an Alembic revision in `crm_bridge/migrations/versions`.
"""

from __future__ import annotations

from datetime import datetime

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


# what the desk may ask of the IVR (as *46 / *47 do; *48 pauses and resumes the call's recording)
AGENT_COMMANDS = ("pause", "resume", "end_wrap_up", "pause_recording", "resume_recording")


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
