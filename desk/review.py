"""QA review (质检) in the CRM: form versions, evaluations, the agent's answer, the review queue, recording files.

Plain functions over short sessions, like desk/queries.py: the web layer
runs them in a thread and checks roles before it calls them.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, case, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from crm_bridge.models import (
    Call,
    CallEvent,
    CallNote,
    Evaluation,
    EvaluationAnswer,
    EvaluationForm,
    EvaluationResponse,
    Recording,
    Ticket,
    aware,
)
from desk.quality import NA, Form, characteristics_values, score

DISSATISFIED = 3  # the survey key of 不满意
SERVED = ("completed", "callback_completed")  # calls an agent talked on: the sample is drawn from these
STATUS_LABELS = {"open": "待确认", "acknowledged": "已确认", "disputed": "有异议", "resolved": "已复核"}
STEP_LABELS = {
    "invited": "来电",
    "identified": "识别客户",
    "answered": "IVR 接听",
    "prompt": "播放提示",
    "silence": "静音",
    "speech": "客户说话",
    "digit": "按键",
    "engaged": "客户响应",
    "menu_digit": "菜单选择",
    "menu_retry": "菜单重选",
    "queued": "进入排队",
    "announced": "报位",
    "callback_requested": "预约回电",
    "agent_rung": "坐席振铃",
    "agent_no_answer": "坐席未接",
    "no_agent_answered": "无坐席接听",
    "agent_answered": "坐席接起",
    "bridged": "接通",
    "transferred": "转接",
    "agent_bye": "坐席挂机",
    "agent_gone": "坐席断线",
    "survey_prompt": "满意度评价",
    "survey_digit": "评价按键",
    "survey_no_input": "未评价",
    "survey_skipped": "跳过评价",
    "caller_bye": "客户挂机",
    "cancelled": "客户放弃",
    "aborted": "异常中断",
    "ended": "结束",
    "reconciled": "重启后补记",
}
MEDIA_TYPES = {"flac": "audio/flac", "ogg-opus": "audio/ogg"}  # wav-pcm16, wav-alaw, wav-ulaw: audio/wav


# --- form versions -------------------------------------------------------------------------------


def register_form(engine: Engine, form: Form, source: str, now: datetime | None = None) -> int:
    """The form's row, added the first time this version is seen (by content hash)."""
    version = form.version
    with Session(engine) as s:
        found = s.scalar(select(EvaluationForm.id).where(EvaluationForm.version == version))
        if found is not None:
            return found
        row = EvaluationForm(
            name=form.name,
            version=version,
            definition=form.definition(),
            source=source[:512],
            first_loaded_at=now or datetime.now(UTC),
        )
        s.add(row)
        try:
            s.commit()
        except IntegrityError:  # another desk process added it meanwhile
            s.rollback()
            return s.scalar(select(EvaluationForm.id).where(EvaluationForm.version == version)) or 0
        return row.id


@lru_cache(maxsize=64)
def _form_of(definition: str) -> Form:
    return Form.from_definition(definition)


def form_version(engine: Engine, form_id: int) -> tuple[Form, str]:
    """A stored form version (as it was when the evaluation was made) and its hash."""
    with Session(engine) as s:
        row = s.get_one(EvaluationForm, form_id)
        return _form_of(row.definition), row.version


# --- recordings ----------------------------------------------------------------------------------


def recording_file(directory: Path, recording: Recording) -> Path | None:
    """The file of a recording, or None when it is deleted, not finished, or not inside the recording directory.

    The path comes from the CRM, never from the request; still, a row whose path
    leaves the directory (`../`, an absolute path, a symlink out) is refused.
    """
    if recording.state not in ("complete", "interrupted"):
        return None
    base = directory.resolve()
    target = (base / recording.path).resolve()
    if not target.is_relative_to(base) or target == base:
        raise PermissionError(recording.path)
    return target if target.is_file() else None


def media_type(recording: Recording) -> str:
    return MEDIA_TYPES.get(recording.format, "audio/wav")


@dataclass(frozen=True, slots=True)
class RecordingView:
    id: int
    agent_number: str | None
    started_at: datetime
    duration_s: float | None
    state: str
    playable: bool
    characteristics: dict[str, float]


def _recording_views(s: Session, directory: Path, sip_call_id: str) -> list[RecordingView]:
    views = []
    for r in s.scalars(select(Recording).where(Recording.sip_call_id == sip_call_id).order_by(Recording.started_at)):
        try:
            playable = recording_file(directory, r) is not None
        except PermissionError:
            playable = False
        views.append(
            RecordingView(r.id, r.agent_number, aware(r.started_at), r.duration_s, r.state, playable,
                          characteristics_values(r.characteristics))
        )
    return views


# --- a call for review -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Step:
    at: datetime
    offset_s: float
    kind: str
    label: str
    detail: str


@dataclass(frozen=True, slots=True)
class CallReview:
    call: Call
    steps: tuple[Step, ...]
    recordings: tuple[RecordingView, ...]
    notes: tuple[CallNote, ...]
    tickets: tuple[Ticket, ...]
    evaluations: tuple[Evaluation, ...]
    agents: tuple[str, ...]  # who served the call, last first (a transferred call has several)
    transferred: bool


def call_review(engine: Engine, directory: Path, call_id: int, agent: str | None = None) -> CallReview | None:
    """Everything beside the player: the call's steps, recordings, notes, tickets and past evaluations.

    `agent`: only what concerns this agent (their recordings and evaluations).
    """
    with Session(engine, expire_on_commit=False) as s:
        call = s.get(Call, call_id)
        if call is None:
            return None
        events = s.scalars(select(CallEvent).where(CallEvent.call_id == call_id).order_by(CallEvent.id)).all()
        recordings = _recording_views(s, directory, call.sip_call_id)
        notes = s.scalars(select(CallNote).where(CallNote.call_id == call_id).order_by(CallNote.id)).all()
        tickets = s.scalars(select(Ticket).where(Ticket.call_id == call_id).order_by(Ticket.id)).all()
        query = select(Evaluation).where(Evaluation.call_id == call_id).order_by(Evaluation.id.desc())
        if agent is not None:
            query = query.where(Evaluation.agent_number == agent)
        evaluations = s.scalars(query).all()
        s.expunge_all()
    start = aware(call.started_at)
    steps = tuple(
        Step(aware(e.at), (aware(e.at) - start).total_seconds(), e.kind, STEP_LABELS.get(e.kind, e.kind), e.detail)
        for e in events
    )
    served = [e.detail.split("agent=", 1)[1].split()[0] for e in events
              if e.kind == "agent_answered" and "agent=" in e.detail]
    agents = list(dict.fromkeys(([call.agent_number] if call.agent_number else []) + served[::-1]))
    if agent is not None:
        recordings = [r for r in recordings if r.agent_number == agent]
        notes = [n for n in notes if n.agent_number == agent]
    return CallReview(
        call=call,
        steps=steps,
        recordings=tuple(recordings),
        notes=tuple(notes),
        tickets=tuple(tickets),
        evaluations=tuple(evaluations),
        agents=tuple(agents),
        transferred=any(e.kind == "transferred" for e in events),
    )


def rule_values(review: CallReview, agent: str) -> dict[str, float]:
    """What an auto rule may test for this agent's part of the call: the recording's characteristics and call facts."""
    values: dict[str, float] = {}
    for r in review.recordings:
        if r.agent_number in (agent, None):
            values.update(r.characteristics)
    rung: datetime | None = None
    for step in review.steps:
        if step.kind == "agent_rung" and f"agent={agent}" in step.detail.split():
            rung = step.at
        elif step.kind == "agent_answered" and rung is not None and f"agent={agent}" in step.detail.split():
            values["agent_ring_s"] = (step.at - rung).total_seconds()
    if review.call.queue_wait_s is not None:
        values.setdefault("queue_wait_s", review.call.queue_wait_s)
    if review.call.talk_s is not None:
        values.setdefault("talk_s", review.call.talk_s)
    return values


# --- evaluations ---------------------------------------------------------------------------------


def save_evaluation(
    engine: Engine,
    *,
    form_id: int,
    form: Form,
    call_id: int,
    agent_number: str,
    recording_id: int | None,
    evaluator: str,
    answers: dict[str, str],
    auto: dict[str, str],
    comment: str,
    now: datetime | None = None,
) -> int:
    """Score and store an evaluation; AnswerError (for the supervisor) when the form is not fully answered."""
    result = score(form, answers)
    with Session(engine) as s, s.begin():
        evaluation = Evaluation(
            call_id=call_id,
            form_id=form_id,
            recording_id=recording_id,
            agent_number=agent_number,
            evaluator=evaluator,
            created_at=now or datetime.now(UTC),
            total=result.total,
            passed=result.passed,
            fatal=" ".join(result.fatal),
            comment=comment,
            status="open",
        )
        s.add(evaluation)
        s.flush()
        for c in form.criteria:
            answer = answers[c.key]
            s.add(
                EvaluationAnswer(
                    evaluation_id=evaluation.id,
                    criterion=c.key,
                    answer=answer,
                    points=None if answer == NA else c.points_of(answer),
                    weight=c.weight,
                    auto=auto.get(c.key) == answer,
                )
            )
        return evaluation.id


def load_evaluation(engine: Engine, evaluation_id: int) -> Evaluation | None:
    with Session(engine, expire_on_commit=False) as s:
        e = s.get(Evaluation, evaluation_id)
        if e is None:
            return None
        _ = e.answers, e.responses
        s.expunge_all()
        return e


@dataclass(frozen=True, slots=True)
class AgentSummary:
    agent_number: str
    evaluations: int
    average: float
    passed: int
    fatal: int  # failed by a red line
    disputed: int  # disputes waiting for a supervisor's answer


def evaluation_summary(engine: Engine, since: datetime) -> list[AgentSummary]:
    """Per agent, the evaluations made since `since`: how many, the average total, passed, red lines, open disputes."""
    with Session(engine) as s:
        rows = s.execute(
            select(
                Evaluation.agent_number,
                func.count(),
                func.avg(Evaluation.total),
                func.sum(case((Evaluation.passed, 1), else_=0)),
                func.sum(case((Evaluation.fatal != "", 1), else_=0)),
                func.sum(case((Evaluation.status == "disputed", 1), else_=0)),
            )
            .where(Evaluation.created_at >= since)
            .group_by(Evaluation.agent_number)
            .order_by(Evaluation.agent_number)
        ).all()
    return [AgentSummary(a, int(n), round(float(avg), 1), int(p or 0), int(f or 0), int(d or 0))
            for a, n, avg, p, f, d in rows]


class ResponseError(ValueError):
    """A response the evaluation's state does not allow; the message is for the user (Chinese)."""


def respond(engine: Engine, evaluation_id: int, *, actor: str, action: str, comment: str,
            now: datetime | None = None) -> None:
    """The agent acknowledges or disputes (once, while open); a supervisor answers a dispute (resolved)."""
    with Session(engine) as s, s.begin():
        e = s.get_one(Evaluation, evaluation_id, with_for_update=engine.dialect.name == "postgresql")
        if action in ("acknowledged", "disputed") and e.status != "open":
            raise ResponseError(f"该评分已是「{STATUS_LABELS[e.status]}」,不能再确认或申诉")
        if action == "disputed" and not comment:
            raise ResponseError("请写明申诉理由")
        if action == "resolved" and e.status != "disputed":
            raise ResponseError("只有「有异议」的评分需要复核答复")
        if action == "resolved" and not comment:
            raise ResponseError("请填写复核意见")
        e.status = action
        s.add(EvaluationResponse(evaluation_id=e.id, at=now or datetime.now(UTC), actor=actor, action=action,
                                 comment=comment))


def evaluation_list(engine: Engine, agent: str | None = None, limit: int = 200) -> list[tuple[Evaluation, Call]]:
    query = (
        select(Evaluation, Call)
        .join(Call, Call.id == Evaluation.call_id)
        .order_by(Evaluation.created_at.desc())
        .limit(limit)
    )
    if agent is not None:
        query = query.where(Evaluation.agent_number == agent)
    with Session(engine, expire_on_commit=False) as s:
        rows = [(e, c) for e, c in s.execute(query).all()]
        s.expunge_all()
    return rows


# --- the review queue ----------------------------------------------------------------------------


def week_of(day: date) -> date:
    """The Monday of the ISO week of `day`."""
    return day - timedelta(days=day.weekday())


def parse_week(raw: str) -> date:
    """`2026-W49` -> its Monday; ValueError otherwise."""
    year, _, week = raw.partition("-W")
    if not (year.isdigit() and week.isdigit() and len(year) == 4 and 1 <= len(week) <= 2):
        raise ValueError(raw)
    return date.fromisocalendar(int(year), int(week), 1)


def week_label(monday: date) -> str:
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


def sample_rank(seed: str, sip_call_id: str) -> str:
    """A call's place in the random sample: a keyed hash, so a seed draws the same calls every time.

    Ranking by hash (rather than shuffling the week's list) keeps the sample
    stable while the week fills up: a new call only enters it when its own
    rank is among the lowest, and no call already drawn is replaced by another.
    """
    return hashlib.sha256(f"{seed}\x00{sip_call_id}".encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ReviewItem:
    call_id: int
    started_at: datetime
    caller: str
    agent_number: str
    seat_group: str | None
    survey_score: int | None
    reasons: tuple[str, ...]  # 不满意, 投诉工单, 抽检
    evaluation_id: int | None
    total: float | None
    passed: bool | None
    recording: str  # 有, 录音中, 已删除, 无


def _recording_word(states: set[str]) -> str:
    if states & {"complete", "interrupted"}:
        return "有"
    if "recording" in states:
        return "录音中"
    return "已删除" if "deleted" in states else "无"


def review_queue(engine: Engine, monday: date, zone: ZoneInfo, *, per_agent: int, seed: str) -> list[ReviewItem]:
    """The calls of a week (Monday to Sunday in `zone`) to review: every 不满意, every complaint, a sample per agent."""
    start = datetime.combine(monday, time(0), zone).astimezone(UTC)
    end = datetime.combine(monday + timedelta(days=7), time(0), zone).astimezone(UTC)
    # joins on the week rather than IN lists of its calls: a busy week has more calls than SQLite takes parameters
    week = (Call.started_at >= start) & (Call.started_at < end) & Call.agent_number.is_not(None)
    with Session(engine) as s:
        calls = s.execute(
            select(Call.id, Call.sip_call_id, Call.started_at, Call.caller, Call.agent_number, Call.seat_group,
                   Call.survey_score, Call.outcome)
            .where(week)
            .order_by(Call.started_at)
        ).all()
        complaints = set(s.scalars(select(Ticket.call_id).join(Call, Call.id == Ticket.call_id).where(week)))
        evaluated: dict[int, tuple[int, float, bool]] = {}
        for row in s.execute(select(Evaluation.call_id, Evaluation.id, Evaluation.total, Evaluation.passed)
                             .join(Call, Call.id == Evaluation.call_id).where(week).order_by(Evaluation.id)):
            evaluated[row.call_id] = (row.id, row.total, row.passed)  # the latest evaluation of the call
        recorded: dict[str, set[str]] = defaultdict(set)
        for sip_call_id, state in s.execute(select(Recording.sip_call_id, Recording.state)
                                            .join(Call, Call.sip_call_id == Recording.sip_call_id).where(week)):
            recorded[sip_call_id].add(state)
    reasons: dict[int, list[str]] = defaultdict(list)
    candidates: dict[str, list[tuple[bool, str, int]]] = defaultdict(list)
    for c in calls:
        if c.survey_score == DISSATISFIED:
            reasons[c.id].append("不满意")
        if c.id in complaints:
            reasons[c.id].append("投诉工单")
        if c.id not in reasons and c.outcome in SERVED:
            # a call with a recording to listen to is drawn before one without (the recorder may skip calls)
            heard = bool(recorded.get(c.sip_call_id, set()) & {"complete", "interrupted", "recording"})
            candidates[c.agent_number].append((not heard, sample_rank(seed, c.sip_call_id), c.id))
    for drawn in candidates.values():
        for *_, call_id in sorted(drawn)[:per_agent]:
            reasons[call_id].append("抽检")
    items = []
    for c in calls:
        if c.id not in reasons:
            continue
        e = evaluated.get(c.id)
        items.append(
            ReviewItem(
                call_id=c.id,
                started_at=aware(c.started_at),
                caller=c.caller,
                agent_number=c.agent_number,
                seat_group=c.seat_group,
                survey_score=c.survey_score,
                reasons=tuple(reasons[c.id]),
                evaluation_id=e[0] if e else None,
                total=e[1] if e else None,
                passed=e[2] if e else None,
                recording=_recording_word(recorded.get(c.sip_call_id, set())),
            )
        )
    # what is left to do first, then the rule-chosen calls before the sample, oldest first
    items.sort(key=lambda i: (i.evaluation_id is not None, "抽检" in i.reasons, i.started_at))
    return items
