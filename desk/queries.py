"""What the desk shows, read from the CRM: the screen-pop, agent states, the wallboard.

Only SQLAlchemy Core/ORM statements; every function opens a short session
and returns plain dataclasses, so the async web layer runs them in a thread.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, func, select
from sqlalchemy.orm import Session

from crm_bridge.customers import tier_of
from crm_bridge.models import Agent, Call, CallEvent, CallNote, Customer, Ticket, aware
from crm_bridge.report import (
    DailyReport,
    daily_report,
    local_today,
    low_scores,
    overdue_tickets,
)
from desk.config import DeskConfig

TIER_LABELS = {"senior": "高端", "middle": "中端", "junior": "低端"}
STATE_LABELS = {
    "logged_out": "未登录",
    "available": "空闲",
    "ringing": "振铃",
    "talking": "通话中",
    "wrap_up": "话后处理",
    "paused": "暂停",
    "offline": "IVR未运行",
}
OUTCOME_LABELS = {
    "completed": "已接通",
    "abandoned_queue": "排队放弃",
    "abandoned_ringing": "振铃放弃",
    "silent": "无声",
    "caller_hangup": "客户挂机",
    "failed": "失败",
    None: "进行中",
}
SURVEY_LABELS = {1: "满意", 2: "一般", 3: "不满意", None: "–"}
STATUS_FILE_FRESH = timedelta(seconds=5)  # the IVR rewrites it every second


def _detail(detail: str) -> dict[str, str]:
    """`seat_group=senior service=consulting` -> dict."""
    return dict(part.split("=", 1) for part in detail.split() if "=" in part)


def bracket(amount: float) -> str:
    """Assets / volume shown as a bracket, not the exact figure (enough to serve the caller)."""
    for limit, label in (
        (10_000_000, "1000万以上"),
        (5_000_000, "500万–1000万"),
        (1_000_000, "100万–500万"),
        (500_000, "50万–100万"),
        (100_000, "10万–50万"),
    ):
        if amount >= limit:
            return label
    return "10万以下" if amount > 0 else "–"


# --- screen-pop ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PastCall:
    id: int
    started_at: datetime
    service: str | None
    agent_number: str | None
    outcome: str | None
    survey_score: int | None
    talk_s: float | None


@dataclass(frozen=True, slots=True)
class Pop:
    event_id: int  # the agent_rung event
    call_id: int
    sip_call_id: str
    caller: str
    name: str | None
    tier: str
    assets_bracket: str
    volume_bracket: str
    service: str | None
    queue_wait_s: float | None
    rung_at: datetime
    history: tuple[PastCall, ...]
    open_tickets: tuple[Ticket, ...]
    note: CallNote | None = None
    followup_ticket: int | None = None  # a follow-up call (回访) the customer asked to hand to an agent: its ticket


def last_event_id(engine: Engine) -> int:
    with Session(engine) as s:
        return s.scalar(select(func.max(CallEvent.id))) or 0


def new_offers(engine: Engine, agent: str, after_id: int) -> list[tuple[int, int]]:
    """(event id, call id) of calls offered to `agent`'s phone since event `after_id`."""
    with Session(engine) as s:
        return [
            tuple(r)
            for r in s.execute(
                select(CallEvent.id, CallEvent.call_id)
                .where(CallEvent.id > after_id, CallEvent.kind == "agent_rung", CallEvent.detail == f"agent={agent}")
                .order_by(CallEvent.id)
            ).all()
        ]


def latest_offer(engine: Engine, agent: str, within: timedelta = timedelta(hours=2)) -> tuple[int, int] | None:
    with Session(engine) as s:
        row = s.execute(
            select(CallEvent.id, CallEvent.call_id)
            .where(
                CallEvent.kind == "agent_rung",
                CallEvent.detail == f"agent={agent}",
                CallEvent.at >= datetime.now(UTC) - within,
            )
            .order_by(CallEvent.id.desc())
            .limit(1)
        ).first()
    return (row[0], row[1]) if row else None


def agent_may_see_call(s: Session, call_id: int, agent: str) -> bool:
    """An agent sees a call served by them or offered to their phone — nobody else's."""
    served = s.scalar(select(func.count()).select_from(Call).where(Call.id == call_id, Call.agent_number == agent))
    offered = s.scalar(
        select(func.count())
        .select_from(CallEvent)
        .where(CallEvent.call_id == call_id, CallEvent.kind == "agent_rung", CallEvent.detail == f"agent={agent}")
    )
    return bool(served or offered)


def pop_for(engine: Engine, config: DeskConfig, call_id: int, event_id: int, agent: str | None) -> Pop | None:
    with Session(engine, expire_on_commit=False) as s:
        call = s.get(Call, call_id)
        if call is None:
            return None
        events = s.execute(
            select(CallEvent.id, CallEvent.at, CallEvent.kind, CallEvent.detail)
            .where(CallEvent.call_id == call_id)
            .order_by(CallEvent.id)
        ).all()
        customer = s.scalars(select(Customer).where(Customer.phone == call.caller)).first()
        past = s.execute(
            select(
                Call.id, Call.started_at, Call.service, Call.agent_number, Call.outcome, Call.survey_score, Call.talk_s
            )
            .where(Call.caller == call.caller, Call.id != call.id)
            .order_by(Call.started_at.desc())
            .limit(10)
        ).all()
        tickets = s.scalars(
            select(Ticket)
            .where(Ticket.customer_phone == call.caller, Ticket.status != "closed")
            .order_by(Ticket.opened_at.desc())
        ).all()
        note = (
            s.scalars(select(CallNote).where(CallNote.call_id == call_id, CallNote.agent_number == agent)).first()
            if agent
            else None
        )
        s.expunge_all()
    tier, service, queued_at, rung_at = call.tier, call.service, None, None
    followup_ticket: int | None = None
    for eid, at, kind, detail in events:
        d = _detail(detail)
        if kind == "followup_transfer" and d.get("ticket", "").isdigit():
            followup_ticket = int(d["ticket"])
        if kind == "identified" and "tier" in d:
            tier = tier or d["tier"]
        elif kind == "queued":
            queued_at, service = aware(at), service or d.get("service")
        elif kind == "agent_rung" and eid == event_id:
            rung_at = aware(at)
    if customer is not None:
        tier = tier or tier_of(customer.assets, customer.volume, customer.tier, config.tiers)
    rung_at = rung_at or aware(call.started_at)
    wait = call.queue_wait_s
    if wait is None and queued_at is not None:
        wait = (rung_at - queued_at).total_seconds()
    return Pop(
        event_id=event_id,
        call_id=call.id,
        sip_call_id=call.sip_call_id,
        caller=call.caller,
        name=customer.name if customer and customer.name else None,
        tier=tier or "junior",
        assets_bracket=bracket(customer.assets) if customer else "–",
        volume_bracket=bracket(customer.volume) if customer else "–",
        service=service,
        queue_wait_s=wait,
        rung_at=rung_at,
        history=tuple(PastCall(r[0], aware(r[1]), r[2], r[3], r[4], r[5], r[6]) for r in past),
        open_tickets=tuple(tickets),
        note=note,
        followup_ticket=followup_ticket,
    )


# --- agent states --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AgentView:
    number: str
    name: str
    seat_group: str
    state: str
    since: datetime | None
    call_id: str | None = None


class AgentStates:
    """Agent states from where the IVR keeps them: the status file (one IVR) or the agents table (workers).

    The status file has no time of the last change, so the desk notes when it
    first saw each state; with shared agents `state_changed_at` is exact.

    The IVR rewrites the file once a second, so for up to a second after it
    rings an agent the file still says available while the page already shows
    the screen-pop. `rung(agent, at)` (from the watcher's `agent_rung` events)
    lets the view say ringing until the file is newer than the ring.
    """

    def __init__(self, config: DeskConfig, engine: Engine) -> None:
        self.config, self.engine = config, engine
        self._seen: dict[str, tuple[str, datetime]] = {}
        self._rung: dict[str, datetime] = {}  # agent: when the IVR last rang its phone, until the file is newer

    def rung(self, agent: str, at: datetime) -> None:
        """The IVR rang `agent`'s phone at `at` (an agent_rung event)."""
        self._rung[agent] = max(at, self._rung.get(agent, at))

    def read(self, now: datetime | None = None) -> dict[str, AgentView]:
        now = now or datetime.now(UTC)
        agents = {a.number: a for a in self.config.agents}
        views: dict[str, AgentView] = {}
        if self.config.shared_agents:
            with Session(self.engine) as s:
                for row in s.scalars(select(Agent)):
                    if row.number in agents:
                        views[row.number] = AgentView(
                            row.number, row.name, row.seat_group, row.state, aware(row.state_changed_at), row.call_id
                        )
        else:
            status = self._status_file(now)
            written = aware(datetime.fromisoformat(status["written_at"])) if status else None
            for entry in status.get("agents", []) if status else []:
                number = entry.get("agent")
                if number in agents:
                    state = str(entry.get("state"))
                    rung = self._rung.get(number)
                    if rung is not None and written is not None:
                        if written >= rung:
                            del self._rung[number]  # the file has caught up with the ring
                        elif state == "available":
                            state = "ringing"  # written before the ring: its available is stale
                    views[number] = AgentView(
                        number,
                        agents[number].name,
                        agents[number].seat_group,
                        state,
                        self._since(number, state, now),
                        entry.get("call_id"),
                    )
        for number, agent in agents.items():
            if number not in views:
                views[number] = AgentView(
                    number, agent.name, agent.seat_group, "offline", self._since(number, "offline", now)
                )
        return views

    def _since(self, number: str, state: str, now: datetime) -> datetime:
        seen = self._seen.get(number)
        if seen is None or seen[0] != state:
            self._seen[number] = (state, now)
            return now
        return seen[1]

    def _status_file(self, now: datetime) -> dict[str, Any] | None:
        path = self.config.status_file
        try:
            status = json.loads(path.read_text(encoding="utf-8")) if path else None
            written = datetime.fromisoformat(status["written_at"]) if status else None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if written is None or now - aware(written) > STATUS_FILE_FRESH:
            return None  # the IVR is not running (or stuck): its last word is not the agents' state
        return status


# --- wallboard -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Waiting:
    sip_call_id: str
    seat_group: str
    waited_s: float


@dataclass(slots=True)
class GroupBoard:
    seat_group: str
    label: str
    waiting: int = 0
    longest_wait_s: float = 0.0
    agents: list[AgentView] = field(default_factory=list)
    calls: int = 0
    answered: int = 0
    abandoned: int = 0
    silent: int = 0
    service_level: float | None = None
    survey_avg: float | None = None


@dataclass(frozen=True, slots=True)
class Board:
    at: datetime
    day: str
    groups: tuple[GroupBoard, ...]
    total_calls: int
    total_silent: int
    overdue: tuple[Ticket, ...]
    bad_ratings: tuple[tuple[object, str, str], ...]


def waiting_callers(engine: Engine, now: datetime) -> list[Waiting]:
    """Callers queued now: an open call whose last `queued` step has no `agent_answered` after it."""
    since = now - timedelta(hours=6)
    with Session(engine) as s:
        rows = s.execute(
            select(Call.sip_call_id, CallEvent.kind, CallEvent.at, CallEvent.detail)
            .join(CallEvent, CallEvent.call_id == Call.id)
            .where(
                and_(
                    Call.ended_at.is_(None),
                    Call.started_at >= since,
                    CallEvent.kind.in_(("queued", "agent_answered", "ended")),
                )
            )
            .order_by(CallEvent.id)
        ).all()
    queued: dict[str, tuple[str, datetime]] = {}
    for sip_call_id, kind, at, detail in rows:
        if kind == "queued":
            queued[sip_call_id] = (_detail(detail).get("seat_group", ""), aware(at))
        else:
            queued.pop(sip_call_id, None)
    return [Waiting(c, g, max(0.0, (now - at).total_seconds())) for c, (g, at) in queued.items()]


def day_figures(engine: Engine, config: DeskConfig, now: datetime | None = None) -> DailyReport:
    """Today's report in the hotline's timezone: the wallboard's day totals (a query over all of today's calls)."""
    today = local_today(config.zone, now or datetime.now(UTC))
    return daily_report(engine, today, config.zone, service_level_seconds=config.service_level_seconds)


def wallboard(engine: Engine, config: DeskConfig, states: AgentStates, now: datetime | None = None,
              report: DailyReport | None = None) -> Board:
    """The live wallboard; `report` is today's `day_figures` if the caller has them (recomputed when not today's)."""
    from crm_bridge.report import SEAT_GROUP_LABELS

    now = now or datetime.now(UTC)
    zone = config.zone
    today = local_today(zone, now)
    if report is None or report.day != today:
        report = day_figures(engine, config, now)
    figures = {f.key: f for f in report.seat_groups}
    boards = {g: GroupBoard(g, label) for g, label in SEAT_GROUP_LABELS.items()}
    for w in waiting_callers(engine, now):
        if w.seat_group in boards:
            b = boards[w.seat_group]
            b.waiting += 1
            b.longest_wait_s = max(b.longest_wait_s, w.waited_s)
    for view in sorted(states.read(now).values(), key=lambda v: v.number):
        if view.seat_group in boards:
            boards[view.seat_group].agents.append(view)
    for g, b in boards.items():
        f = figures[g]
        b.calls, b.answered, b.abandoned, b.silent = f.calls, f.answered, f.abandoned, f.silent
        b.service_level, b.survey_avg = f.service_level, f.survey_avg
    return Board(
        now,
        today.isoformat(),
        tuple(boards.values()),
        report.total.calls,
        report.total.silent,
        tuple(overdue_tickets(engine, now)),
        tuple(low_scores(engine, today, zone)),
    )


def group_counts(values: list[AgentView]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for v in values:
        counts[v.state] += 1
    return dict(counts)
