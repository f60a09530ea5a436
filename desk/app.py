"""The desk's web app: agent desk with screen-pop, complaint tickets, supervisor wallboard, daily report.

Starlette + Jinja2, server-sent events for the live parts, no front-end build.
Security, all enforced here on the server:

- sessions: signed cookies (itsdangerous via SessionMiddleware), HttpOnly,
  SameSite=Strict, Secure unless `[desk] cookie_secure = no`;
- CSRF: a per-session token in every form, checked on every POST before
  anything else (`_form`);
- logins: argon2 hashes, at most N attempts a minute per address and per
  account; the session is renewed at login;
- roles: an agent sees only calls offered to or served by their seat and
  only their own tickets; the wallboard and the report are for supervisors;
- input: ids are integers, choices are checked against their lists, text is
  bounded and stored as typed (the database gets it through bound
  parameters; the templates escape it);
- Content-Security-Policy without inline scripts or styles.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from crm_bridge import followups, scorecards
from crm_bridge.agent_commands import request_command
from crm_bridge.models import (
    AGENT_COMMANDS,
    MONITORING_MODES,
    Call,
    CallNote,
    Followup,
    Ticket,
    TicketHistory,
    aware,
)
from crm_bridge.report import (
    SEAT_GROUP_LABELS,
    charts,
    daily_report,
    followups_html,
    local_today,
    overdue_tickets,
    questions_html,
    tables_html,
)
from desk import qa_pages, queries, review, tickets
from desk.auth import LoginLimiter, SignedIn, authenticate
from desk.config import DeskConfig
from desk.metrics import DeskMetrics
from desk.quality import read_form
from desk.timeline import timeline_for_call
from desk.watcher import DeskWatcher, Pop
from ivr.phone_credentials import issue
from ivr.service import SERVICES

HERE = Path(__file__).parent
DAY_FIGURES_SECONDS = 5.0  # the wallboard's day totals at most this old; waiting callers and seats are a second old
T = TypeVar("T")
ERRORS = {
    400: "输入有误",
    403: "没有权限",
    404: "页面不存在",
    405: "不支持的操作",
    429: "尝试次数过多",
    500: "系统错误",
}
COMMAND_LABELS = {"pause": "暂停接听", "resume": "恢复接听", "end_wrap_up": "结束话后处理",
                  "pause_recording": "暂停录音", "resume_recording": "恢复录音"}  # the recording: *48 on the phone
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


class SecurityHeaders:
    """Plain ASGI middleware (it must not buffer the event streams)."""

    def __init__(self, app: Any, csp: str = CSP) -> None:
        self.app = app
        self.csp = csp.encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", self.csp),
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(config: DeskConfig, engine: Engine, *, secret_key: str | None = None) -> Starlette:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    zone = config.zone
    env.globals.update(
        tier_labels=queries.TIER_LABELS,
        service_labels=SERVICES,
        state_labels=queries.STATE_LABELS,
        outcome_labels=queries.OUTCOME_LABELS,
        survey_labels=queries.SURVEY_LABELS,
        status_labels=tickets.STATUS_LABELS,
        group_labels=SEAT_GROUP_LABELS,
        command_labels=COMMAND_LABELS,
        departments=config.departments,
        group_counts=queries.group_counts,
        wrap_up_codes=config.wrap_up_codes,
        followup_kinds=followups.KIND_LABELS,
        followup_statuses=followups.STATUS_LABELS,
        followup_results=followups.RESULT_LABELS,
        monitoring_phones=sorted(config.monitoring_phones),
        monitoring_labels={"listen": "监听", "whisper": "耳语", "barge": "强插"},
    )
    env.filters["local"] = lambda at, fmt="%m-%d %H:%M": aware(at).astimezone(zone).strftime(fmt) if at else "–"
    env.filters["secs"] = lambda v: "–" if v is None else (f"{v:.0f}秒" if v < 120 else f"{v / 60:.0f}分")
    env.filters["pct"] = lambda v: "–" if v is None else f"{v * 100:.0f}%"
    env.filters["num"] = lambda v: "–" if v is None else f"{v:.2f}"
    states = queries.AgentStates(config, engine)
    limiter = LoginLimiter(config.login_attempts_per_minute)
    poll_s = config.poll_ms / 1000
    watcher = DeskWatcher(engine, states, poll_s)
    metrics = DeskMetrics(engine, lambda: len(watcher.subscriptions))

    async def db(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # SQLAlchemy is synchronous: keep the event loop (and every event stream) free while it runs
        return await asyncio.to_thread(partial(fn, *args, **kwargs))

    # --- session, CSRF, roles ---------------------------------------------------------

    def csrf_token(request: Request) -> str:
        token = request.session.get("csrf")
        if not token:
            token = request.session["csrf"] = secrets.token_urlsafe(32)
        return token

    async def _form(request: Request) -> FormData:
        form = await request.form(max_files=0, max_fields=50, max_part_size=64 * 1024)
        sent, expected = form.get("csrf"), request.session.get("csrf")
        if not isinstance(sent, str) or not expected or not secrets.compare_digest(sent, expected):
            raise HTTPException(403, "表单已过期或来源不明(CSRF 校验失败),请刷新页面后重试。")
        return form

    def user_of(request: Request) -> SignedIn | None:
        data = request.session.get("user")
        if not isinstance(data, dict):
            return None
        return SignedIn(data["username"], data["role"], data.get("agent"))

    def need_agent(request: Request) -> tuple[SignedIn, str]:
        user = need(request, "agent")
        if user.agent_number is None:  # an agent account always has its seat; refuse rather than guess
            raise HTTPException(403)
        return user, user.agent_number

    def need(request: Request, role: str | None = None) -> SignedIn:
        user = user_of(request)
        if user is None:
            raise HTTPException(401)
        if role is not None and user.role != role:
            raise HTTPException(403, "此页面只对" + ("班长(主管)" if role == "supervisor" else "坐席") + "开放。")
        return user

    def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        context.update(user=user_of(request), csrf=csrf_token(request))
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    def fragment(request: Request, name: str, **context: Any) -> str:
        context.update(user=user_of(request), csrf=csrf_token(request))
        return env.get_template(name).render(**context)

    def text(form: FormData, key: str, *, limit: int = tickets.MAX_TEXT, what: str = "内容") -> str:
        value = form.get(key, "")
        if not isinstance(value, str):
            raise HTTPException(400, f"{what}格式不对。")
        try:
            return tickets.clean(value, limit=limit, field=what)
        except tickets.TicketError as exc:
            raise HTTPException(400, str(exc)) from None

    def choice(form: FormData, key: str, allowed: tuple[str, ...], what: str) -> str:
        value = form.get(key, "")
        if not isinstance(value, str) or value not in allowed:
            raise HTTPException(400, f"{what}无效,请从列表中选择。")
        return value

    def optional_choice(form: FormData, key: str, allowed: tuple[str, ...], what: str) -> str | None:
        return None if form.get(key, "") == "" else choice(form, key, allowed, what)

    def int_param(request: Request, key: str) -> int:
        raw = request.path_params.get(key, "")
        if not str(raw).isdigit() or len(str(raw)) > 12:
            raise HTTPException(404)
        return int(raw)

    # --- pages ---------------------------------------------------------------------------

    async def home(request: Request) -> Response:
        user = user_of(request)
        if user is None:
            return RedirectResponse("/login", 303)
        return RedirectResponse("/wallboard" if user.role == "supervisor" else "/desk", 303)

    async def login_page(request: Request) -> Response:
        return render(request, "login.html")

    async def login(request: Request) -> Response:
        form = await _form(request)
        username = form.get("username", "")
        password = form.get("password", "")
        if not isinstance(username, str) or not isinstance(password, str):
            raise HTTPException(400)
        username = username.strip()[:64]
        address = request.client.host if request.client else "?"
        if not limiter.allow(address, username):
            raise HTTPException(429, "登录尝试过多,请一分钟后再试。")
        signed = await db(authenticate, engine, config, username, password[:256]) if username and password else None
        if signed is None:
            return render(request, "login.html", 401, error="工号/用户名或密码不正确。", username=username)
        request.session.clear()  # a fresh session (and CSRF token) at every login
        request.session["user"] = {"username": signed.username, "role": signed.role, "agent": signed.agent_number}
        csrf_token(request)
        return RedirectResponse("/", 303)

    async def logout(request: Request) -> Response:
        await _form(request)
        request.session.clear()
        return RedirectResponse("/login", 303)

    def _desk_data(agent: str) -> dict[str, Any]:
        offer = queries.latest_offer(engine, agent)
        pop = queries.pop_for(engine, config, offer[1], offer[0], agent) if offer else None
        with Session(engine, expire_on_commit=False) as s:
            mine = s.scalars(
                select(Ticket)
                .where(Ticket.agent_number == agent, Ticket.status != "closed")
                .order_by(Ticket.next_feedback_due)
            ).all()
            calls = s.scalars(
                select(Call).where(Call.agent_number == agent).order_by(Call.started_at.desc()).limit(20)
            ).all()
            s.expunge_all()
        return {
            "pop": pop,
            "tickets": mine,
            "calls": calls,
            "after": queries.last_event_id(engine),
            "view": states.read()[agent],
        }

    async def desk_page(request: Request) -> Response:
        _, seat = need_agent(request)
        data = await db(_desk_data, seat)
        agent = config.agent(seat)
        return render(request, "desk.html", agent=agent, now=datetime.now(UTC), **data)

    async def desk_events(request: Request) -> Response:
        _, agent = need_agent(request)
        after = request.query_params.get("after", "0")
        last = int(after) if after.isdigit() else 0

        async def stream() -> AsyncIterator[str]:
            # one watcher per process reads the CRM for every open page (desk.watcher)
            subscription = watcher.subscribe(agent, last)
            try:
                yield "retry: 1000\n\n"
                while not await request.is_disconnected():
                    try:
                        item = await asyncio.wait_for(subscription.queue.get(), 1.0)
                    except TimeoutError:
                        continue
                    if isinstance(item, Pop):
                        pop = await db(queries.pop_for, engine, config, item.call_id, item.event_id, agent)
                        if pop is not None:
                            yield _sse("pop", fragment(request, "_pop.html", pop=pop), item.event_id)
                    else:
                        yield _sse("state", fragment(request, "_state.html", view=item.view, now=datetime.now(UTC)))
            finally:
                watcher.unsubscribe(subscription)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def desk_command(request: Request) -> Response:
        user, seat = need_agent(request)
        form = await _form(request)
        # an agent's own commands; "monitor" is a supervisor's, through /monitor
        command = choice(form, "command", tuple(c for c in AGENT_COMMANDS if c != "monitor"), "操作")
        await db(request_command, engine, seat, command, requested_by=user.username)
        return RedirectResponse("/desk?sent=" + command, 303)

    def _load_call(call_id: int, user: SignedIn) -> tuple[Call, CallNote | None, list[Ticket]]:
        with Session(engine, expire_on_commit=False) as s:
            call = s.get(Call, call_id)
            if call is None:
                raise HTTPException(404)
            if user.role == "agent" and not queries.agent_may_see_call(s, call_id, user.agent_number or ""):
                raise HTTPException(403, "只能查看分配给您的来电。")
            note = s.scalars(
                select(CallNote).where(CallNote.call_id == call_id, CallNote.agent_number == (user.agent_number or ""))
            ).first()
            ts = s.scalars(select(Ticket).where(Ticket.call_id == call_id)).all()
            s.expunge_all()
        return call, note, list(ts)

    async def call_page(request: Request) -> Response:
        user = need(request)
        call_id = int_param(request, "call_id")
        call, _, call_tickets = await db(_load_call, call_id, user)
        pop = await db(queries.pop_for, engine, config, call_id, 0, user.agent_number)
        timeline = await db(timeline_for_call, engine, call.sip_call_id)  # when recorded and analysed
        return render(request, "call.html", call=call, pop=pop, call_tickets=call_tickets, timeline=timeline)

    def _call_by_sip(sip_call_id: str) -> int | None:
        with Session(engine) as s:
            return s.scalar(select(Call.id).where(Call.sip_call_id == sip_call_id))

    async def call_by_sip(request: Request) -> Response:
        """The softphone's Call-Info link (ivr/screenpop.py): the call by its SIP Call-ID."""
        need(request)
        sip_call_id = request.query_params.get("call_id", "")
        call_id = await db(_call_by_sip, sip_call_id[:255]) if sip_call_id else None
        if call_id is None:
            raise HTTPException(404, "找不到这通来电(可能尚未写入 CRM,请稍后刷新)。")
        return RedirectResponse(f"/calls/{call_id}", 303)

    def _save_note(call_id: int, user: SignedIn, seat: str, note: str, code: str | None) -> None:
        _load_call(call_id, user)
        now = datetime.now(UTC)
        with Session(engine) as s, s.begin():
            row = s.scalars(select(CallNote).where(CallNote.call_id == call_id, CallNote.agent_number == seat)).first()
            if row is None:
                row = CallNote(call_id=call_id, agent_number=seat, created_at=now)
                s.add(row)
            row.note, row.wrap_up_code, row.updated_at = note, code, now

    async def save_note(request: Request) -> Response:
        user, seat = need_agent(request)
        call_id = int_param(request, "call_id")
        form = await _form(request)
        note = text(form, "note", what="备注")
        code = optional_choice(form, "wrap_up_code", config.wrap_up_codes, "话后代码")
        await db(_save_note, call_id, user, seat, note, code)
        return RedirectResponse(f"/calls/{call_id}?saved=1", 303)

    def _new_ticket(call_id: int, user: SignedIn, description: str, department: str | None) -> int:
        _load_call(call_id, user)
        with Session(engine) as s, s.begin():
            call = s.get_one(Call, call_id)
            try:
                t = tickets.open_ticket(
                    s,
                    call,
                    actor=user.username,
                    agent_number=user.agent_number or call.agent_number,
                    description=description,
                    department=department,
                )
            except tickets.TicketError as exc:
                raise HTTPException(400, str(exc)) from None
            return t.id

    async def new_ticket(request: Request) -> Response:
        user = need(request)
        call_id = int_param(request, "call_id")
        form = await _form(request)
        description = text(form, "description", what="投诉内容")
        department = optional_choice(form, "department", config.departments, "部门")
        ticket_id = await db(_new_ticket, call_id, user, description, department)
        return RedirectResponse(f"/tickets/{ticket_id}", 303)

    def _ticket(ticket_id: int, user: SignedIn) -> tuple[Ticket, list[TicketHistory]]:
        with Session(engine, expire_on_commit=False) as s:
            t = s.get(Ticket, ticket_id)
            if t is None:
                raise HTTPException(404)
            if user.role == "agent" and t.agent_number != user.agent_number:
                raise HTTPException(403, "只能查看自己负责的工单。")
            history = list(t.history)
            s.expunge_all()
        return t, history

    async def ticket_page(request: Request) -> Response:
        user = need(request)
        t, history = await db(_ticket, int_param(request, "ticket_id"), user)
        dnc, ticket_followups = await db(_ticket_followups, t)
        return render(
            request,
            "ticket.html",
            t=t,
            history=history,
            transitions=tickets.TRANSITIONS[t.status],
            overdue=t.status != "closed" and aware(t.next_feedback_due) <= datetime.now(UTC),
            dnc=dnc,
            followups=ticket_followups,
        )

    def _change(ticket_id: int, user: SignedIn, change: Callable[[Session, Ticket], None]) -> None:
        _ticket(ticket_id, user)
        with Session(engine) as s, s.begin():
            t = s.get_one(Ticket, ticket_id, with_for_update=engine.dialect.name == "postgresql")
            try:
                change(s, t)
            except tickets.TicketError as exc:
                raise HTTPException(400, str(exc)) from None

    async def ticket_edit(request: Request) -> Response:
        user = need(request)
        ticket_id = int_param(request, "ticket_id")
        form = await _form(request)
        description = text(form, "description", what="投诉内容") if "description" in form else None
        department = optional_choice(form, "department", config.departments, "部门")
        result = text(form, "result", what="处理结果") if "result" in form else None
        satisfied = optional_choice(form, "caller_satisfied", ("yes", "no"), "客户是否满意")
        await db(
            _change,
            ticket_id,
            user,
            lambda s, t: tickets.edit(
                s,
                t,
                actor=user.username,
                description=description,
                department=department,
                result=result,
                caller_satisfied=None if satisfied is None else satisfied == "yes",
            ),
        )
        return RedirectResponse(f"/tickets/{ticket_id}", 303)

    async def ticket_move(request: Request) -> Response:
        user = need(request)
        ticket_id = int_param(request, "ticket_id")
        form = await _form(request)
        to = choice(form, "to", tuple(tickets.STATUS_LABELS), "状态")
        note = text(form, "note", what="备注")
        await db(_change, ticket_id, user, lambda s, t: tickets.move(s, t, to, actor=user.username, note=note))
        return RedirectResponse(f"/tickets/{ticket_id}", 303)

    async def ticket_feedback(request: Request) -> Response:
        user = need(request)
        ticket_id = int_param(request, "ticket_id")
        form = await _form(request)
        feedback = text(form, "text", what="反馈内容")
        await db(_change, ticket_id, user, lambda s, t: tickets.log_feedback(s, t, actor=user.username, text=feedback))
        return RedirectResponse(f"/tickets/{ticket_id}", 303)

    def _ticket_list(user: SignedIn) -> tuple[list[Ticket], list[Ticket]]:
        query = select(Ticket).order_by(Ticket.status == "closed", Ticket.next_feedback_due.desc()).limit(200)
        if user.role == "agent":
            query = query.where(Ticket.agent_number == user.agent_number)
        with Session(engine, expire_on_commit=False) as s:
            rows = list(s.scalars(query))
            s.expunge_all()
        overdue = overdue_tickets(engine, agent_number=user.agent_number if user.role == "agent" else None)
        return rows, overdue

    async def ticket_list(request: Request) -> Response:
        user = need(request)
        rows, overdue = await db(_ticket_list, user)
        return render(request, "tickets.html", rows=rows, overdue_ids={t.id for t in overdue})

    # --- follow-up calls (回访) and the do-not-call list (谢绝来电) ------------------------------

    def _ticket_followups(t: Ticket) -> tuple[bool, list[Followup]]:
        with Session(engine, expire_on_commit=False) as s:
            dnc = followups.on_do_not_call(s, t.customer_phone)
            rows = list(s.scalars(select(Followup).where(Followup.ticket_id == t.id).order_by(Followup.id)))
            s.expunge_all()
        return dnc, rows

    async def ticket_dnc(request: Request) -> Response:
        """谢绝来电 for the ticket's customer: follow-up calls never dial the number (or may again)."""
        user = need(request)
        ticket_id = int_param(request, "ticket_id")
        form = await _form(request)
        action = choice(form, "action", ("add", "remove"), "操作")
        t, _ = await db(_ticket, ticket_id, user)
        if action == "add":
            await db(followups.add_do_not_call, engine, t.customer_phone, by=user.username, source="desk")
        else:
            await db(followups.remove_do_not_call, engine, t.customer_phone)
        return RedirectResponse(f"/tickets/{ticket_id}", 303)

    async def followups_page(request: Request) -> Response:
        need(request, "supervisor")
        kind = request.query_params.get("kind") or None
        if kind is not None and kind not in followups.KIND_LABELS:
            raise HTTPException(400, "回访类型无效。")
        rows = await db(followups.listing, engine, kind=kind)
        counts = await db(followups.counts, engine)
        return render(request, "followups.html", rows=rows, counts=counts, kind=kind,
                      kinds=followups.KIND_LABELS, statuses=followups.STATUS_LABELS,
                      results=followups.RESULT_LABELS)

    board_cache: dict[str, Any] = {"at": 0.0, "board": None, "day_at": 0.0, "day": None}
    board_lock = asyncio.Lock()

    async def current_board() -> queries.Board:
        # every open wallboard shares one computation a second; the day's totals, a query over all of
        # today's calls that grows through the day, are computed again every DAY_FIGURES_SECONDS
        async with board_lock:
            now = asyncio.get_running_loop().time()
            if board_cache["board"] is None or now - board_cache["at"] >= 0.9:
                if board_cache["day"] is None or now - board_cache["day_at"] >= DAY_FIGURES_SECONDS:
                    board_cache["day"] = await db(queries.day_figures, engine, config)
                    board_cache["day_at"] = now
                board_cache["board"] = await db(queries.wallboard, engine, config, states,
                                                report=board_cache["day"])
                board_cache["at"] = now
            board: queries.Board = board_cache["board"]
            return board

    async def wallboard_page(request: Request) -> Response:
        need(request, "supervisor")
        board = await current_board()
        return render(request, "wallboard.html", board=board, sl=config.service_level_seconds)

    async def wallboard_events(request: Request) -> Response:
        need(request, "supervisor")

        async def stream() -> AsyncIterator[str]:
            metrics.wallboards.inc()
            try:
                yield "retry: 1000\n\n"
                while not await request.is_disconnected():
                    board = await current_board()
                    yield _sse("board", fragment(request, "_board.html", board=board, sl=config.service_level_seconds))
                    await asyncio.sleep(1 - poll_s if poll_s < 1 else 0.5)
            finally:
                metrics.wallboards.dec()

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    def _day(raw: str | None) -> date:
        if not raw:
            return local_today(zone)
        try:
            return date.fromisoformat(raw)
        except ValueError:
            raise HTTPException(400, "日期格式应为 YYYY-MM-DD。") from None

    async def report_page(request: Request) -> Response:
        need(request, "supervisor")
        day = _day(request.query_params.get("date"))
        names = {a.number: a.name for a in config.agents}
        report = await db(
            daily_report, engine, day, zone, service_level_seconds=config.service_level_seconds, agent_names=names
        )
        groups, agents = tables_html(report)
        from markupsafe import Markup

        return render(
            request,
            "report.html",
            report=report,
            groups=Markup(groups),
            agents=Markup(agents),
            questions=Markup(questions_html(report)),
            followups=Markup(followups_html(report)),
            prev=(day - timedelta(days=1)).isoformat(),
            next=(day + timedelta(days=1)).isoformat(),
        )

    async def report_chart(request: Request) -> Response:
        need(request, "supervisor")
        day = _day(request.path_params["day"])
        name = request.path_params["name"]
        report = await db(daily_report, engine, day, zone, service_level_seconds=config.service_level_seconds)
        images = await db(charts, report)
        if name not in images:
            raise HTTPException(404)
        return Response(images[name], media_type="image/png", headers={"Cache-Control": "no-store"})

    # --- agent scorecards (crm_bridge.scorecards) ---------------------------------------

    def _period(request: Request) -> scorecards.Period:
        last = _day(request.query_params.get("to"))
        first = _day(request.query_params.get("from")) if request.query_params.get("from") else last - timedelta(6)
        try:
            return scorecards.Period(first, last, zone)
        except scorecards.PeriodError:
            why = "结束日期早于开始日期。" if last < first else f"一次最多查看{scorecards.MAX_DAYS}天。"
            raise HTTPException(400, why) from None

    def _cards(period: scorecards.Period) -> scorecards.Scorecards:
        return scorecards.scorecards(engine, period, agent_names={a.number: a.name for a in config.agents})

    async def scorecards_page(request: Request) -> Response:
        need(request, "supervisor")
        period = _period(request)
        cards = await db(_cards, period)
        from markupsafe import Markup

        return render(request, "scorecards.html", period=period, table=Markup(scorecards.table_html(cards)),
                      charts=scorecards.CHART_NAMES, figures=scorecards.FIGURES,
                      questions=Markup(scorecards.questions_html(cards)))

    async def scorecards_chart(request: Request) -> Response:
        need(request, "supervisor")
        period = _period(request)
        name = request.path_params["name"]
        if name not in scorecards.CHART_NAMES:
            raise HTTPException(404)
        images = await db(scorecards.charts, await db(_cards, period), (name,))
        return Response(images[name], media_type="image/png", headers={"Cache-Control": "no-store"})

    # --- live monitoring -------------------------------------------------------------------

    async def monitor(request: Request) -> Response:
        """A supervisor's listen / whisper / barge button: the IVR rings their phone into the agent's call."""
        form = await _form(request)  # the token first: a forged post is refused as such, whoever is logged in
        user = need(request, "supervisor")
        agent = form.get("agent", "")
        if not isinstance(agent, str) or config.agent(agent) is None:
            raise HTTPException(400, "坐席工号无效。")
        mode = choice(form, "mode", MONITORING_MODES, "监听方式")
        phone = choice(form, "phone", tuple(sorted(config.monitoring_phones)), "班长话机")
        await db(request_command, engine, agent, "monitor", supervisor=phone, mode=mode, requested_by=user.username)
        back = form.get("back", "")
        # back to the page the button was on: a path of this site only, never another host
        target = back if isinstance(back, str) and back.startswith("/") and not back.startswith("//") else "/wallboard"
        return RedirectResponse(f"{target}{'&' if '?' in target else '?'}monitor={mode}", 303)

    # --- the browser phone (desk/static/phone.js) ---------------------------------------------

    async def phone_credentials(request: Request) -> Response:
        """What the page's phone registers this session's seat with: short-lived derived credentials
        (ivr.phone_credentials), never the seat's SIP secret; the IVR's registrar derives the same."""
        await _form(request)  # the token first: a forged post gets no credentials, whoever is logged in
        _, seat = need_agent(request)
        agent, phone = config.agent(seat), config.browser_phone
        if agent is None or not agent.browser_phone:
            raise HTTPException(403, "此坐席未开通网页电话(sip.conf 坐席设置 phone = browser 或 both)。")
        issued = issue(phone.token_secret, seat, time.time(), phone.credential_seconds)
        body = {
            "ws_url": phone.ws_url,
            "uri": f"sip:{seat}@{urlsplit(phone.ws_url).hostname}",
            "authorization_user": issued.authorization_user,
            "password": issued.password,
            "expires": issued.expires,
            "lifetime": phone.credential_seconds,  # the page renews by its own clock, whatever its skew
            "auto_answer": agent.auto_answer,
        }
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    async def metrics_page(request: Request) -> Response:
        """desk.metrics: the CRM statements this process sent and the streams open.

        For a supervisor's session, or a scraper sending `Authorization: Bearer <[desk] metrics_token>`."""
        token = config.metrics_token
        offered = request.headers.get("authorization", "")
        if not (token and hmac.compare_digest(offered.encode(), f"Bearer {token}".encode())):
            need(request, "supervisor")
        return Response(metrics.render(), media_type="text/plain; version=0.0.4",
                        headers={"Cache-Control": "no-store"})

    # --- errors ------------------------------------------------------------------------

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 401:
            return RedirectResponse("/login", 303)
        detail = exc.detail if isinstance(exc, HTTPException) and exc.detail and not exc.detail.isascii() else ""
        return render(request, "error.html", status, status=status, title=ERRORS.get(status, "出错了"), detail=detail)

    def post(path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> Route:
        return Route(path, endpoint, methods=["POST"])

    routes = [
        Route("/", home),
        Route("/login", login_page),
        post("/login", login),
        post("/logout", logout),
        Route("/desk", desk_page),
        Route("/desk/events", desk_events),
        post("/desk/command", desk_command),
        Route("/calls/sip", call_by_sip),
        Route("/calls/{call_id}", call_page),
        post("/calls/{call_id}/note", save_note),
        post("/calls/{call_id}/tickets", new_ticket),
        Route("/tickets", ticket_list),
        Route("/tickets/{ticket_id}", ticket_page),
        post("/tickets/{ticket_id}/edit", ticket_edit),
        post("/tickets/{ticket_id}/move", ticket_move),
        post("/tickets/{ticket_id}/feedback", ticket_feedback),
        Route("/wallboard", wallboard_page),
        Route("/wallboard/events", wallboard_events),
        Route("/report", report_page),
        Route("/report/{day}/{name}", report_chart),
        Route("/scorecards", scorecards_page),
        Route("/scorecards/{name}", scorecards_chart),
        post("/tickets/{ticket_id}/dnc", ticket_dnc),
        Route("/followups", followups_page),
        post("/monitor", monitor),
        post("/phone/credentials", phone_credentials),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        Route("/metrics", metrics_page),
    ]
    # QA review (质检): the form is read and checked at start (FormError: file:line: reason), its version stored
    form = read_form(config.quality.form_path)
    form_id = review.register_form(engine, form, str(config.quality.form_path))
    helpers = qa_pages.Helpers(config, engine, db, need, render, _form, text, choice, int_param)
    routes += qa_pages.routes(helpers, form, form_id)
    middleware = [
        Middleware(SecurityHeaders, csp=_csp(config.browser_phone.ws_url)),
        Middleware(
            SessionMiddleware,
            secret_key=secret_key or config.secret_key or secrets.token_urlsafe(48),
            session_cookie="desk_session",
            max_age=12 * 3600,
            same_site="strict",
            https_only=config.cookie_secure,
        ),
    ]
    return Starlette(
        routes=routes, middleware=middleware, exception_handlers={HTTPException: http_error, Exception: http_error}
    )


def _csp(ws_url: str) -> str:
    """The policy, letting the page's phone open its SIP WebSocket (another origin: the IVR's)."""
    if not ws_url:
        return CSP
    parts = urlsplit(ws_url)
    return CSP.replace("connect-src 'self'", f"connect-src 'self' {parts.scheme}://{parts.netloc}")


def _sse(event: str, data: str, event_id: int | None = None) -> str:
    lines = [f"event: {event}"] + ([f"id: {event_id}"] if event_id is not None else [])
    lines += [f"data: {line}" for line in data.splitlines() or [""]]
    return "\n".join(lines) + "\n\n"
