"""The QA review pages of the desk (质检): review queue, scoring a call beside its recording, the agent's answer.

    GET  /review                      supervisors: the week's calls to review (不满意, complaints, a sample)
    GET  /calls/{id}/evaluate         supervisors: the player, the call's steps and the form
    POST /calls/{id}/evaluations      supervisors: save a scored form
    GET  /evaluations                 supervisors: all recent; agents: their own
    GET  /evaluations/{id}            supervisors, and the agent evaluated
    POST /evaluations/{id}/respond    the agent acknowledges or disputes; a supervisor answers a dispute
    GET  /recordings/{id}             the audio, with byte ranges (seekable <audio>)

Recordings are for supervisors; an agent hears a recording of their own
only with `[desk] agents_hear_own_recordings = yes`, never another agent's.
A file is found by the recording's id in the CRM, never by a name from the
request, and must resolve inside the recording directory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any, TypeVar

import structlog
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route

from crm_bridge.models import Recording
from crm_bridge.report import local_today
from desk import review
from desk.auth import SignedIn
from desk.config import DeskConfig
from desk.quality import AnswerError, Form

log = structlog.get_logger("desk.quality")
T = TypeVar("T")
MAX_COMMENT = 2000


@dataclass(frozen=True, slots=True)
class Helpers:
    """What the QA pages use of the desk app (desk/app.py builds them: sessions, CSRF, roles, templates)."""

    config: DeskConfig
    engine: Engine
    db: Callable[..., Awaitable[Any]]
    need: Callable[..., SignedIn]
    render: Callable[..., Response]
    form: Callable[[Request], Awaitable[FormData]]
    text: Callable[..., str]
    choice: Callable[[FormData, str, tuple[str, ...], str], str]
    int_param: Callable[[Request, str], int]


def routes(h: Helpers, form: Form, form_id: int) -> list[Route]:
    config, engine, directory = h.config, h.engine, h.config.recording_directory

    async def db(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        result: T = await h.db(fn, *args, **kwargs)
        return result

    # --- the review queue ----------------------------------------------------------------------

    async def review_page(request: Request) -> Response:
        h.need(request, "supervisor")
        raw = request.query_params.get("week", "")
        try:
            monday = review.parse_week(raw) if raw else review.week_of(local_today(config.zone))
        except ValueError:
            raise HTTPException(400, "周的格式应为 2026-W49。") from None
        items = await db(review.review_queue, engine, monday, config.zone,
                         per_agent=config.quality.sample_per_agent_week, seed=config.quality.sample_seed)
        return h.render(
            request,
            "review.html",
            items=items,
            week=review.week_label(monday),
            monday=monday,
            prev=review.week_label(monday - timedelta(days=7)),
            next=review.week_label(monday + timedelta(days=7)),
            per_agent=config.quality.sample_per_agent_week,
            todo=sum(1 for i in items if i.evaluation_id is None),
        )

    # --- scoring a call ---------------------------------------------------------------------------

    def _call_review(call_id: int) -> review.CallReview:
        found = review.call_review(engine, directory, call_id)
        if found is None:
            raise HTTPException(404)
        if not found.agents:
            raise HTTPException(400, "这通来电没有坐席接听,无需质检。")
        return found

    def _agent_of(request_value: str, found: review.CallReview) -> str:
        if not request_value:
            return found.agents[0]
        if request_value not in found.agents:
            raise HTTPException(400, "所选坐席无效,请从列表中选择。")
        return request_value

    def _auto(found: review.CallReview, agent: str) -> dict[str, str]:
        """The answers the form's auto rules give for this agent's part of the call."""
        values = review.rule_values(found, agent)
        return {c.key: a for c in form.criteria if (a := c.auto_answer(values)) is not None}

    def _form_page(request: Request, found: review.CallReview, agent: str, auto: dict[str, str],
                   chosen: dict[str, str], error: str | None = None, comment: str = "") -> Response:
        return h.render(
            request,
            "evaluate.html",
            400 if error else 200,
            r=found,
            call=found.call,
            agent=agent,
            agent_names={a.number: a.name for a in config.agents},
            recordings=[x for x in found.recordings if x.agent_number in (agent, None)],
            form=form,
            auto=auto,
            chosen=chosen,
            error=error,
            comment=comment,
        )

    async def evaluate_page(request: Request) -> Response:
        h.need(request, "supervisor")
        found = await db(_call_review, h.int_param(request, "call_id"))
        agent = _agent_of(request.query_params.get("agent", ""), found)
        auto = _auto(found, agent)
        return _form_page(request, found, agent, auto, chosen=auto)

    async def save_evaluation(request: Request) -> Response:
        data = await h.form(request)  # CSRF first, before anything else
        user = h.need(request, "supervisor")
        call_id = h.int_param(request, "call_id")
        found = await db(_call_review, call_id)
        agent = _agent_of(str(data.get("agent", "")), found)
        answers = {c.key: h.choice(data, f"answer.{c.key}", c.answers(), f"「{c.title}」的答案")
                   for c in form.criteria if data.get(f"answer.{c.key}", "") != ""}
        comment = h.text(data, "comment", limit=MAX_COMMENT, what="评语")
        auto = _auto(found, agent)
        recording = next((x.id for x in found.recordings if x.agent_number in (agent, None) and x.playable), None)
        try:
            evaluation_id = await db(
                review.save_evaluation, engine, form_id=form_id, form=form, call_id=call_id, agent_number=agent,
                recording_id=recording, evaluator=user.username, answers=answers, auto=auto, comment=comment,
            )
        except AnswerError as exc:  # the form again, as filled in, with what is missing
            return _form_page(request, found, agent, auto, chosen=answers, error=str(exc), comment=comment)
        log.info("evaluation_saved", call_id=found.call.sip_call_id, evaluation=evaluation_id, agent=agent,
                 evaluator=user.username)
        return RedirectResponse(f"/evaluations/{evaluation_id}", 303)

    # --- evaluations ------------------------------------------------------------------------------

    async def evaluation_list(request: Request) -> Response:
        user = h.need(request)
        mine = user.agent_number if user.role == "agent" else None
        if user.role == "agent" and mine is None:
            raise HTTPException(403)
        rows = await db(review.evaluation_list, engine, mine)
        since = datetime.combine(local_today(config.zone) - timedelta(days=29), time(0), config.zone)
        summary = await db(review.evaluation_summary, engine, since) if mine is None else []
        return h.render(request, "evaluations.html", rows=rows, status_labels=review.STATUS_LABELS, summary=summary,
                        agent_names={a.number: a.name for a in config.agents})

    def _evaluation(evaluation_id: int, user: SignedIn) -> tuple[Any, review.CallReview, Form, str]:
        e = review.load_evaluation(engine, evaluation_id)
        if e is None:
            raise HTTPException(404)
        if user.role != "supervisor" and e.agent_number != user.agent_number:
            raise HTTPException(403, "只能查看自己的质检评分。")
        found = review.call_review(engine, directory, e.call_id,
                                   agent=None if user.role == "supervisor" else e.agent_number)
        assert found is not None  # the call's evaluations go with it (ON DELETE CASCADE)
        used, version = review.form_version(engine, e.form_id)
        return e, found, used, version

    async def evaluation_page(request: Request) -> Response:
        user = h.need(request)
        e, found, used, version = await db(_evaluation, h.int_param(request, "evaluation_id"), user)
        hear = user.role == "supervisor" or config.agents_hear_own_recordings
        answers = {a.criterion: a for a in e.answers}
        return h.render(
            request,
            "evaluation.html",
            e=e,
            r=found,
            call=found.call,
            used=used,
            version=version,
            answers=answers,
            fatal_keys=set(e.fatal.split()),
            recordings=[x for x in found.recordings if x.agent_number in (e.agent_number, None)] if hear else [],
            hear=hear,
            status_labels=review.STATUS_LABELS,
            agent_names={a.number: a.name for a in config.agents},
        )

    async def respond(request: Request) -> Response:
        data = await h.form(request)
        user = h.need(request)
        evaluation_id = h.int_param(request, "evaluation_id")
        e, *_ = await db(_evaluation, evaluation_id, user)
        if user.role == "supervisor":
            action = h.choice(data, "action", ("resolved",), "操作")
        else:
            if e.agent_number != user.agent_number:  # _evaluation refused already; said twice for a reader
                raise HTTPException(403)
            action = h.choice(data, "action", ("acknowledged", "disputed"), "操作")
        comment = h.text(data, "comment", limit=MAX_COMMENT, what="说明")
        try:
            await db(review.respond, engine, evaluation_id, actor=user.username, action=action, comment=comment)
        except review.ResponseError as exc:
            raise HTTPException(400, str(exc)) from None
        return RedirectResponse(f"/evaluations/{evaluation_id}", 303)

    # --- the audio ----------------------------------------------------------------------------------

    def _recording(recording_id: int, user: SignedIn) -> tuple[Recording, Any]:
        with Session(engine, expire_on_commit=False) as s:
            rec = s.get(Recording, recording_id)
            if rec is None:
                raise HTTPException(404)
            if user.role != "supervisor":
                if not config.agents_hear_own_recordings:
                    raise HTTPException(403, "录音只对班长开放。")
                if rec.agent_number is None or rec.agent_number != user.agent_number:
                    raise HTTPException(403, "只能收听自己的通话录音。")
            s.expunge_all()
        try:
            path = review.recording_file(directory, rec)
        except PermissionError:
            log.warning("recording_outside_directory", recording=rec.id, call_id=rec.sip_call_id)
            raise HTTPException(403, "录音文件不在录音目录中,已拒绝。") from None
        if path is None:
            raise HTTPException(404, "录音文件已删除。" if rec.state in ("deleted", "complete", "interrupted")
                                else "录音尚未完成。")
        return rec, path

    async def recording_audio(request: Request) -> Response:
        user = h.need(request)
        rec, path = await db(_recording, h.int_param(request, "recording_id"), user)
        # the name a browser saves it under is the recording's id: never a caller's number or other input
        return FileResponse(
            path,
            media_type=review.media_type(rec),
            filename=f"recording-{rec.id}{path.suffix}",
            content_disposition_type="inline",
            headers={"Cache-Control": "private, no-store"},
        )

    def post(path: str, endpoint: Callable[[Request], Awaitable[Response]]) -> Route:
        return Route(path, endpoint, methods=["POST"])

    return [
        Route("/review", review_page),
        Route("/calls/{call_id}/evaluate", evaluate_page),
        post("/calls/{call_id}/evaluations", save_evaluation),
        Route("/evaluations", evaluation_list),
        Route("/evaluations/{evaluation_id}", evaluation_page),
        post("/evaluations/{evaluation_id}/respond", respond),
        Route("/recordings/{recording_id}", recording_audio),
    ]
