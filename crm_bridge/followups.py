"""Follow-up calls (回访) in the CRM: what asks for one, who may be called when, and where the answers land.

Theory of operation. The schedule is the `followups` table, so it survives
restarts and is shared by every IVR worker on the same CRM.

Triggers (`scan`, run by each IVR worker every few seconds; each switchable
in `[followup]`): a complaint ticket reaching 已告知客户 (its history row of
that change), a call's wrap-up code 需回访 at the desk, and the daily status
call of an open complaint nobody has given feedback on that day ([002]
"坚持至少每天反馈一次"). Other code asks with `request_for_call` (a survey
answer that asked for a follow-up). Every trigger has a unique
`trigger_key`, so workers scanning the same rows add each follow-up once.

Dialling (`claim`): a worker takes due rows with one conditional UPDATE each
(`… WHERE id = :id AND status = 'due'`, counted by rowcount; on PostgreSQL
the candidates are also selected `FOR UPDATE SKIP LOCKED`), so two workers
never dial the same follow-up. Only inside the calling window
(`ivr.campaign.CallingWindow`). A claimed row that must not be dialled is
closed with its reason instead: the number is on the do-not-call list
(谢绝来电), is not a plain domestic number, its customer was deleted from the
CRM, or its ticket moved on. A customer called less than `min_gap` ago, or
called `daily_cap` times today already, waits (the row goes back to due,
later). `may_dial` checks the do-not-call list once more right before the
INVITE: a number flagged after it was scheduled, or while it was claimed, is
never dialled.

Results (`finish`): satisfied → the ticket closes, with a history entry by
"回访"; not satisfied → back to 已转部门 with the answers in the history (and
on the supervisor's list, `dissatisfied`); 0 → the ticket is flagged for an
agent (`needs_agent`); 9 → the number goes on the do-not-call list; the
daily call logs the feedback and moves `next_feedback_due` as the desk's
记录反馈 button does (`desk.tickets.log_feedback`). Not reached → retried
with backoff, then `unreachable` and the ticket flagged for an agent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from crm_bridge.models import Call, CallNote, Customer, DoNotCall, Followup, Ticket, TicketHistory, aware
from desk import tickets
from ivr.callbacks import is_diallable
from ivr.campaign import CallingWindow, retry_delay

ACTOR = "回访"  # who the ticket history names for what a follow-up call did
DUE, DIALLING, DONE, UNREACHABLE, CLOSED = "due", "dialling", "done", "unreachable", "closed"
NOT_REACHED = ("no_answer", "busy", "failed", "declined")
# what a customer's answer means, as results of a follow-up
SATISFIED, DISSATISFIED, AGENT, DO_NOT_CALL, NO_INPUT = "satisfied", "dissatisfied", "agent", "do_not_call", "no_input"
RESULT_LABELS = {
    SATISFIED: "满意", DISSATISFIED: "不满意", AGENT: "要求人工服务", DO_NOT_CALL: "谢绝回访", NO_INPUT: "未作选择",
    "heard": "已收听进度", "hung_up": "接听后挂断", "transferred": "已转人工坐席",
    "no_answer": "未接通", "busy": "占线", "failed": "呼叫失败", "declined": "拒接",
    "customer_deleted": "客户已删除", "not_diallable": "号码不可外呼", "on_do_not_call": "谢绝来电",
    "ticket_closed": "工单已结案", "ticket_moved": "工单状态已变", "ticket_deleted": "工单已删除",
    "feedback_logged": "当天已反馈", "expired": "已过期", "call_unknown": "来电不存在",
}
KIND_LABELS = {"resolved": "处理结果回访", "wrap_up": "话后回访", "daily": "每日进度", "survey": "评价回访"}
STATUS_LABELS = {DUE: "待拨打", DIALLING: "拨打中", DONE: "已完成", UNREACHABLE: "未接通", CLOSED: "已关闭"}


class FollowupError(ValueError):
    """A follow-up that cannot be asked for (an unknown call, say); the message says why."""


@dataclass(frozen=True, slots=True)
class FollowupRules:
    """`[followup]` as the CRM side applies it (ivr.config.FollowupConfig builds it)."""

    window: CallingWindow = field(default_factory=CallingWindow)
    on_resolved: bool = True
    on_wrap_up: bool = True
    on_daily: bool = True
    wrap_up_code: str = "需回访"
    delay: timedelta = timedelta(minutes=30)  # after the trigger, before the first attempt
    daily_at: time = time(17, 0)  # local time after which an open complaint without feedback that day is called
    min_gap: timedelta = timedelta(hours=2)  # between two calls to the same customer
    daily_cap: int = 3  # attempts a day per customer
    max_attempts: int = 3
    retry_seconds: float = 1800.0


@dataclass(frozen=True, slots=True)
class Claimed:
    """A follow-up a worker has claimed and may dial: what its flow needs to say."""

    id: int
    kind: str
    number: str
    ticket_id: int | None
    attempt: int
    month: int  # of the complaint (or call) being followed up, local
    day: int
    department: str | None
    agent_number: str | None = None  # who handled the ticket (or the call): pressing 0 queues to them …
    seat_group: str | None = None  # … or to their seat group


def _now(now: datetime | None) -> datetime:
    return now or datetime.now(UTC)


def _add(s: Session, values: dict[str, Any]) -> bool:
    """Insert unless its trigger_key is there already (another worker scanned first); True when added."""
    insert = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = insert(Followup).values(**values).on_conflict_do_nothing(index_elements=["trigger_key"])
    return s.execute(statement.returning(Followup.id)).scalar() is not None


def _values(key: str, kind: str, number: str, due: datetime, now: datetime, **more: Any) -> dict[str, Any]:
    return {"trigger_key": key, "kind": kind, "number": number, "status": DUE, "created_at": now, "due_at": due,
            "attempts": 0, "reason": "", "answers": "", "call_ids": "", **more}


def _customer_id(s: Session, number: str) -> int | None:
    return s.scalar(select(Customer.id).where(Customer.phone == number))


def scan(engine: Engine, rules: FollowupRules, now: datetime | None = None, *, lookback: timedelta = timedelta(days=7),
         ) -> int:
    """Add the follow-ups the switched-on triggers ask for; returns how many were new."""
    now = _now(now)
    since = now - lookback
    added = 0
    with Session(engine) as s, s.begin():
        if rules.on_resolved:
            rows = s.execute(
                select(TicketHistory.id, TicketHistory.at, Ticket.id, Ticket.customer_phone)
                .join(Ticket, Ticket.id == TicketHistory.ticket_id)
                .where(TicketHistory.action == "status", TicketHistory.status_to == "caller_informed",
                       TicketHistory.at >= since, Ticket.status == "caller_informed")
            ).all()
            for history_id, at, ticket_id, number in rows:
                added += _add(s, _values(f"resolved:{ticket_id}:{history_id}", "resolved", number,
                                         aware(at) + rules.delay, now, ticket_id=ticket_id,
                                         customer_id=_customer_id(s, number), reason="工单已告知客户处理结果"))
        if rules.on_wrap_up:
            notes = s.execute(
                select(CallNote.id, CallNote.updated_at, Call.caller, Call.sip_call_id, Call.id)
                .join(Call, Call.id == CallNote.call_id)
                .where(CallNote.wrap_up_code == rules.wrap_up_code, CallNote.updated_at >= since)
            ).all()
            for note_id, at, number, sip_call_id, call_id in notes:
                ticket_id = s.scalar(select(Ticket.id).where(Ticket.call_id == call_id).order_by(Ticket.id.desc()))
                added += _add(s, _values(f"wrap_up:{note_id}", "wrap_up", number, aware(at) + rules.delay, now,
                                         ticket_id=ticket_id, sip_call_id=sip_call_id,
                                         customer_id=_customer_id(s, number),
                                         reason=f"话后代码「{rules.wrap_up_code}」"))
        if rules.on_daily:
            zone = rules.window.zone
            local = now.astimezone(zone)
            if local.time() >= rules.daily_at:
                start_of_day = datetime.combine(local.date(), time(0), zone).astimezone(UTC)
                open_tickets = s.execute(
                    select(Ticket.id, Ticket.customer_phone, Ticket.last_feedback_at)
                    .where(Ticket.status.in_(("open", "forwarded", "result_received")),
                           Ticket.opened_at < start_of_day)
                ).all()
                for ticket_id, number, last in open_tickets:
                    if last is not None and aware(last) >= start_of_day:
                        continue  # somebody gave feedback today
                    added += _add(s, _values(f"daily:{ticket_id}:{local.date().isoformat()}", "daily", number, now,
                                             now, ticket_id=ticket_id, customer_id=_customer_id(s, number),
                                             reason="每日进度反馈(当天尚无人反馈)"))
    return added


def request_for_call(session: Session, sip_call_id: str, reason: str, now: datetime | None = None,
                     delay: timedelta = timedelta(0)) -> Followup:
    """A follow-up for the customer of call `sip_call_id` (e.g. a survey answer asked for one); one per call.

    Runs in the caller's transaction. Raises FollowupError for a call the CRM does not have.
    """
    now = _now(now)
    call = session.scalar(select(Call).where(Call.sip_call_id == sip_call_id))
    if call is None:
        raise FollowupError(f"no call {sip_call_id!r} in the CRM")
    ticket_id = session.scalar(select(Ticket.id).where(Ticket.call_id == call.id).order_by(Ticket.id.desc()))
    key = f"survey:{sip_call_id}"
    _add(session, _values(key, "survey", call.caller, now + delay, now, ticket_id=ticket_id,
                          sip_call_id=sip_call_id, customer_id=_customer_id(session, call.caller),
                          reason=tickets.clean(reason, limit=500, field="原因")))
    found = session.scalar(select(Followup).where(Followup.trigger_key == key))
    assert found is not None
    return found


# --- do-not-call (谢绝来电) ------------------------------------------------------------------


def on_do_not_call(s: Session, number: str) -> bool:
    return s.get(DoNotCall, number) is not None


def add_do_not_call(engine: Engine, number: str, *, by: str, source: str, now: datetime | None = None) -> bool:
    """Put `number` on the do-not-call list; False when it was on it already. Its due follow-ups close."""
    number = number.strip()
    if not number or len(number) > 32:
        raise FollowupError("号码无效(1-32 个字符)")
    with Session(engine) as s, s.begin():
        if on_do_not_call(s, number):
            return False
        s.add(DoNotCall(number=number, added_at=_now(now), added_by=by[:128], source=source))
        s.execute(update(Followup).where(Followup.number == number, Followup.status == DUE)
                  .values(status=CLOSED, result="on_do_not_call", closed_at=_now(now)))
        return True


def remove_do_not_call(engine: Engine, number: str) -> bool:
    with Session(engine) as s, s.begin():
        row = s.get(DoNotCall, number.strip())
        if row is None:
            return False
        s.delete(row)
        return True


def do_not_call_list(engine: Engine) -> list[DoNotCall]:
    with Session(engine, expire_on_commit=False) as s:
        rows = list(s.scalars(select(DoNotCall).order_by(DoNotCall.added_at)))
        s.expunge_all()
    return rows


# --- dialling --------------------------------------------------------------------------------


def claim(engine: Engine, rules: FollowupRules, worker: str, limit: int, now: datetime | None = None,
          ) -> list[Claimed]:
    """Take up to `limit` due follow-ups for this worker to dial now (none outside the calling window)."""
    now = _now(now)
    if limit <= 0 or not rules.window.allows(now):
        return []
    claimed: list[Claimed] = []
    postgres = engine.dialect.name == "postgresql"
    with Session(engine) as s, s.begin():
        query = (select(Followup.id).where(Followup.status == DUE, Followup.due_at <= now)
                 .order_by(Followup.due_at, Followup.id).limit(limit * 4))
        if postgres:
            query = query.with_for_update(skip_locked=True)
        for followup_id in s.scalars(query).all():
            if len(claimed) >= limit:
                break
            taken = s.execute(update(Followup).where(Followup.id == followup_id, Followup.status == DUE)
                              .values(status=DIALLING, claimed_by=worker))
            if cast(CursorResult[Any], taken).rowcount != 1:
                continue  # another worker took it first
            row = s.get_one(Followup, followup_id)
            ready = _check(s, row, rules, now)
            if ready is not None:
                claimed.append(ready)
    return claimed


def _close(row: Followup, reason: str, now: datetime) -> None:
    row.status, row.result, row.closed_at, row.claimed_by = CLOSED, reason, now, None


def _later(row: Followup, due: datetime) -> None:
    row.status, row.due_at, row.claimed_by = DUE, due, None


def _check(s: Session, row: Followup, rules: FollowupRules, now: datetime) -> Claimed | None:
    """The rules that decide at dial time whether a claimed row is dialled, waits, or closes."""
    if on_do_not_call(s, row.number):
        _close(row, "on_do_not_call", now)
        return None
    if not is_diallable(row.number):
        _close(row, "not_diallable", now)
        return None
    if row.customer_id is not None and s.get(Customer, row.customer_id) is None:
        _close(row, "customer_deleted", now)
        return None
    ticket = s.get(Ticket, row.ticket_id) if row.ticket_id is not None else None
    if row.ticket_id is not None and ticket is None:
        _close(row, "ticket_deleted", now)
        return None
    local_day = rules.window.day_of(now)
    if ticket is not None:
        if ticket.status == "closed":
            _close(row, "ticket_closed", now)
            return None
        if row.kind == "resolved" and ticket.status != "caller_informed":
            _close(row, "ticket_moved", now)
            return None
        if row.kind == "daily":
            if rules.window.day_of(aware(row.created_at)) != local_day:
                _close(row, "expired", now)  # today's scan adds today's
                return None
            if ticket.last_feedback_at is not None and rules.window.day_of(aware(ticket.last_feedback_at)) == local_day:
                _close(row, "feedback_logged", now)
                return None
    last = s.scalar(select(func.max(Followup.last_attempt_at)).where(Followup.number == row.number))
    if last is not None and aware(last) + rules.min_gap > now:
        _later(row, aware(last) + rules.min_gap)
        return None
    start_of_day = datetime.combine(local_day, time(0), rules.window.zone).astimezone(UTC)
    today = sum(len([c for c in calls.split() if c]) for calls in s.scalars(
        select(Followup.call_ids).where(Followup.number == row.number, Followup.last_attempt_at >= start_of_day)))
    if today >= rules.daily_cap:
        _later(row, rules.window.next_opening(start_of_day + timedelta(days=1)))
        return None
    row.attempts += 1
    row.last_attempt_at = now
    if ticket is not None:
        about = aware(ticket.opened_at)
    elif row.sip_call_id is not None:
        about = aware(s.scalar(select(Call.started_at).where(Call.sip_call_id == row.sip_call_id)) or row.created_at)
    else:
        about = aware(row.created_at)
    local = about.astimezone(rules.window.zone)
    agent, group = (ticket.agent_number, ticket.seat_group) if ticket is not None else (None, None)
    if ticket is None and row.sip_call_id is not None:
        agent, group = s.execute(select(Call.agent_number, Call.seat_group)
                                 .where(Call.sip_call_id == row.sip_call_id)).one_or_none() or (None, None)
    return Claimed(row.id, row.kind, row.number, row.ticket_id, row.attempts, local.month, local.day,
                   ticket.department if ticket is not None else None, agent, group)


def attempt_call(engine: Engine, followup_id: int, sip_call_id: str) -> bool:
    """Right before the INVITE: the attempt's Call-ID is noted, and False when the number must not be dialled
    (put on the do-not-call list since it was claimed); the row is then closed."""
    with Session(engine) as s, s.begin():
        row = s.get(Followup, followup_id)
        if row is None or row.status != DIALLING:
            return False
        if on_do_not_call(s, row.number):
            row.attempts -= 1
            _close(row, "on_do_not_call", datetime.now(UTC))
            return False
        row.call_ids = " ".join([*row.call_ids.split(), sip_call_id])
        return True


def _note(s: Session, ticket: Ticket, now: datetime, detail: str) -> None:
    s.add(TicketHistory(ticket_id=ticket.id, at=now, actor=ACTOR, action="followup", detail=detail))
    ticket.updated_at = now


def finish(engine: Engine, followup_id: int, outcome: str, rules: FollowupRules, now: datetime | None = None,
           answers: Sequence[tuple[str, str]] = ()) -> Followup:
    """An attempt ended. `outcome`: a result the customer gave (satisfied, dissatisfied, agent, do_not_call,
    no_input, heard), or how the call failed (no_answer, busy, failed, declined). `answers`: (question, key)."""
    now = _now(now)
    with Session(engine, expire_on_commit=False) as s, s.begin():
        row = s.get_one(Followup, followup_id, with_for_update=engine.dialect.name == "postgresql")
        row.claimed_by = None
        ticket = s.get(Ticket, row.ticket_id) if row.ticket_id is not None else None
        said = ", ".join(f"{q}={k}" for q, k in answers)
        if outcome in NOT_REACHED:
            if row.attempts < rules.max_attempts:
                _later(row, now + retry_delay(row.attempts, rules.retry_seconds))
                row.result = outcome
                return row
            row.status, row.result, row.closed_at = UNREACHABLE, outcome, now
            if ticket is not None and ticket.status != "closed":
                ticket.needs_agent = f"回访{row.attempts}次未接通,请人工联系客户"
                _note(s, ticket, now, f"{KIND_LABELS.get(row.kind, row.kind)}: {row.attempts}次未接通({outcome}),"
                                      "请人工联系客户")
            return row
        row.status, row.result, row.closed_at, row.answers = DONE, outcome, now, said
        if outcome == DO_NOT_CALL:
            if not on_do_not_call(s, row.number):
                s.add(DoNotCall(number=row.number, added_at=now, added_by=ACTOR, source="ivr"))
        if ticket is None or ticket.status == "closed":
            return row
        heard = f"电话回访({KIND_LABELS.get(row.kind, row.kind)}): {RESULT_LABELS.get(outcome, outcome)}"
        detail = heard + (f"; 按键 {said}" if said else "")
        if row.kind == "daily":
            tickets.log_feedback(s, ticket, actor=ACTOR, text=detail, now=now)  # as the desk's 记录反馈 does
        elif outcome == SATISFIED and ticket.status == "caller_informed":
            tickets.edit(s, ticket, actor=ACTOR, caller_satisfied=True, now=now)
            tickets.move(s, ticket, "closed", actor=ACTOR, note=detail, now=now)
        elif outcome == DISSATISFIED and ticket.status == "caller_informed":
            tickets.move(s, ticket, "forwarded", actor=ACTOR, note=detail, now=now)
        else:
            _note(s, ticket, now, detail)
        if outcome == AGENT:  # no agent was put through (agent_transfer = no): one must call back
            ticket.needs_agent = "回访中客户要求人工服务"
        if outcome == DO_NOT_CALL:
            _note(s, ticket, now, "客户在回访中按9谢绝来电,已加入谢绝来电名单")
        return row


def release_claims(engine: Engine, worker: str) -> int:
    """At a worker's start: rows it was dialling when it stopped are due again (the attempt counts)."""
    with Session(engine) as s, s.begin():
        result = s.execute(update(Followup).where(Followup.status == DIALLING, Followup.claimed_by == worker)
                           .values(status=DUE, claimed_by=None))
        return cast(CursorResult[Any], result).rowcount


def listing(engine: Engine, *, status: str | None = None, kind: str | None = None, limit: int = 500,
            ) -> list[Followup]:
    query = select(Followup).order_by(Followup.due_at.desc(), Followup.id.desc()).limit(limit)
    if status is not None:
        query = query.where(Followup.status == status)
    if kind is not None:
        query = query.where(Followup.kind == kind)
    with Session(engine, expire_on_commit=False) as s:
        rows = list(s.scalars(query))
        s.expunge_all()
    return rows


def counts(engine: Engine) -> dict[tuple[str, str], int]:
    """(kind, status) -> how many follow-ups."""
    with Session(engine) as s:
        return {(k, st): n for k, st, n in s.execute(
            select(Followup.kind, Followup.status, func.count()).group_by(Followup.kind, Followup.status))}
