"""The complaint workflow ([000] 投诉处理流程, [002] daily feedback) over the CRM's tickets.

    open ──forward──▶ forwarded ──result──▶ result_received ──inform──▶ caller_informed ──close──▶ closed
                          ▲                                                   │
                          └──────────────── forward again ────────────────────┘

Each change and each daily feedback to the caller is a `ticket_history` row
(who, when, from and to). Feedback moves `next_feedback_due` to a day after
it: [002] "坚持至少每天反馈一次", so a ticket is overdue once 24 h pass
without feedback, on day 2, 3, … alike.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from crm_bridge.models import Call, Ticket, TicketHistory

FEEDBACK_EVERY = timedelta(days=1)
MAX_TEXT = 4000
STATUS_LABELS = {
    "open": "已登记",
    "forwarded": "已转部门",
    "result_received": "已收到处理结果",
    "caller_informed": "已告知客户",
    "closed": "已结案",
}
# status -> {next status: what the button says}
TRANSITIONS: dict[str, dict[str, str]] = {
    "open": {"forwarded": "转交部门"},
    "forwarded": {"result_received": "登记处理结果"},
    "result_received": {"caller_informed": "已告知客户结果"},
    "caller_informed": {"closed": "结案", "forwarded": "客户不满意,再次转交"},
    "closed": {},
}


class TicketError(ValueError):
    """A change the workflow does not allow; the message is for the agent (Chinese)."""


def clean(text: str, *, limit: int = MAX_TEXT, field: str = "内容") -> str:
    """Text as typed, minus control characters other than newline and tab; bounded."""
    kept = "".join(ch for ch in text.replace("\r\n", "\n") if ch in "\n\t" or (ord(ch) >= 32 and ord(ch) != 127))
    kept = kept.strip()
    if len(kept) > limit:
        raise TicketError(f"{field}过长(最多 {limit} 字)")
    return kept


def _history(
    s: Session,
    ticket: Ticket,
    actor: str,
    action: str,
    now: datetime,
    detail: str = "",
    status_from: str | None = None,
    status_to: str | None = None,
) -> None:
    s.add(
        TicketHistory(
            ticket_id=ticket.id,
            at=now,
            actor=actor,
            action=action,
            status_from=status_from,
            status_to=status_to,
            detail=detail,
        )
    )
    ticket.updated_at = now


def open_ticket(
    s: Session,
    call: Call,
    *,
    actor: str,
    agent_number: str | None,
    description: str,
    department: str | None,
    now: datetime | None = None,
) -> Ticket:
    now = now or datetime.now(UTC)
    ticket = Ticket(
        call_id=call.id,
        customer_phone=call.caller,
        agent_number=agent_number,
        seat_group=call.seat_group,
        status="open",
        opened_at=now,
        next_feedback_due=now + FEEDBACK_EVERY,
        description=clean(description, field="投诉内容"),
        department=department,
    )
    if not ticket.description:
        raise TicketError("请填写投诉内容")
    s.add(ticket)
    s.flush()
    _history(s, ticket, actor, "opened", now, ticket.description, None, "open")
    return ticket


def edit(
    s: Session,
    ticket: Ticket,
    *,
    actor: str,
    description: str | None = None,
    department: str | None = None,
    result: str | None = None,
    caller_satisfied: bool | None = None,
    now: datetime | None = None,
) -> None:
    """Change the free fields; each changed one is a history line."""
    now = now or datetime.now(UTC)
    if ticket.status == "closed":
        raise TicketError("工单已结案,不能再修改")
    changes = []
    if description is not None and (d := clean(description, field="投诉内容")) != ticket.description:
        if not d:
            raise TicketError("投诉内容不能为空")
        changes.append(f"投诉内容: {d}")
        ticket.description = d
    if department is not None and department != ticket.department:
        changes.append(f"部门: {department}")
        ticket.department = department
    if result is not None and (r := clean(result, field="处理结果")) != (ticket.result or ""):
        changes.append(f"处理结果: {r}")
        ticket.result = r or None
    if caller_satisfied is not None and caller_satisfied != ticket.caller_satisfied:
        changes.append(f"客户满意: {'是' if caller_satisfied else '否'}")
        ticket.caller_satisfied = caller_satisfied
    if changes:
        _history(s, ticket, actor, "edited", now, "\n".join(changes))


def move(s: Session, ticket: Ticket, to: str, *, actor: str, note: str = "", now: datetime | None = None) -> None:
    """One step of the workflow; TicketError when it is not allowed or a field it needs is missing."""
    now = now or datetime.now(UTC)
    if to not in TRANSITIONS.get(ticket.status, {}):
        raise TicketError(
            f"工单状态为「{STATUS_LABELS.get(ticket.status, ticket.status)}」,不能改为「{STATUS_LABELS.get(to, to)}」"
        )
    if to == "forwarded" and not ticket.department:
        raise TicketError("请先选择处理部门")
    if to == "result_received" and not ticket.result:
        raise TicketError("请先填写部门的处理结果")
    if to == "caller_informed" and ticket.caller_satisfied is None:
        raise TicketError("请先记录客户是否满意")
    if to == "forwarded" and ticket.status == "caller_informed":
        ticket.result, ticket.caller_satisfied = None, None  # a new round: the department answers again
    before = ticket.status
    ticket.status = to
    if to == "closed":
        ticket.closed_at = now
    _history(s, ticket, actor, "status", now, clean(note, field="备注"), before, to)


def log_feedback(s: Session, ticket: Ticket, *, actor: str, text: str, now: datetime | None = None) -> None:
    """The daily feedback to the caller ([002]): logged, and the next one is due a day later."""
    now = now or datetime.now(UTC)
    if ticket.status == "closed":
        raise TicketError("工单已结案")
    detail = clean(text, field="反馈内容")
    if not detail:
        raise TicketError("请填写反馈内容")
    ticket.last_feedback_at = now
    ticket.next_feedback_due = now + FEEDBACK_EVERY
    _history(s, ticket, actor, "feedback", now, detail)
