"""The daily report: one local day (the [general] timezone, Asia/Shanghai) per seat group and per agent.

A day is local midnight to midnight: for Asia/Shanghai 2026-11-26 that is
2026-11-25 16:00 to 2026-11-26 16:00 UTC. A call belongs to the day it
started in. Definitions, so the figures can be checked by hand:

- answered: bridged to an agent (`talk_s` set); abandoned: `abandoned_queue`
  or `abandoned_ringing`; silent: `silent` (the [004] routine ran out).
- answer / abandonment rate and silent share: over the calls of the row.
- queue wait: `queue_wait_s` of the calls that queued; p90 by nearest rank
  (the ceil(0.9 n)-th smallest).
- service level: calls answered within N s of queueing, over the calls that
  queued (answered or not).
- complaints: opened (opened that day), closed (closed that day), overdue (not
  closed at the day's end and no feedback to the caller in the 24 h before
  it: [002] asks for feedback at least daily).
- surveys 1/2/3 and their average: the scored answers of the post-call
  questionnaires (`survey_answers.score`, 1 satisfied … 3 dissatisfied) of
  the row's calls; per question, how often each key was pressed
  (`questions`), and per questionnaire how its walks ended (`survey_runs`).
- follow-ups (回访): reach rate by kind, satisfaction at the end of the call
  against the follow-up's answer, re-opened complaints
  (`crm_bridge.followup_report`, which defines them).

Also the shared "what is overdue now" and "low scores of a day" queries used
by the CLI and the desk.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from crm_bridge.followup_report import FollowupFigures, csv_text, followup_figures, html
from crm_bridge.models import (
    SURVEY_LABELS,
    SURVEY_STATUSES,
    Call,
    SurveyAnswer,
    SurveyRun,
    Ticket,
    TicketHistory,
    aware,
)

SEAT_GROUP_LABELS = {"senior": "高级坐席组", "middle": "中级坐席组", "junior": "初级坐席组"}
ABANDONED = ("abandoned_queue", "abandoned_ringing")
FEEDBACK_EVERY = timedelta(days=1)  # [002] 坚持至少每天反馈一次


def day_bounds(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """The UTC start and end of local `day` in `zone` (DST-safe: midnight to next midnight)."""
    start = datetime.combine(day, time(0), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def local_today(zone: ZoneInfo, now: datetime | None = None) -> date:
    return (now or datetime.now(UTC)).astimezone(zone).date()


def p90(values: Sequence[float]) -> float | None:
    """Nearest-rank 90th percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(frozen=True, slots=True)
class Figures:
    """One row of the report: a seat group, an agent, or the whole day."""

    key: str
    label: str
    calls: int
    answered: int
    abandoned: int
    silent: int
    queued: int
    within_service_level: int
    wait_avg: float | None
    wait_p90: float | None
    talk_avg: float | None
    surveys: dict[int, int]
    greetings: dict[str, int]
    complaints_opened: int
    complaints_overdue: int
    complaints_closed: int

    @property
    def answer_rate(self) -> float | None:
        return self.answered / self.calls if self.calls else None

    @property
    def abandon_rate(self) -> float | None:
        return self.abandoned / self.calls if self.calls else None

    @property
    def silent_share(self) -> float | None:
        return self.silent / self.calls if self.calls else None

    @property
    def service_level(self) -> float | None:
        return self.within_service_level / self.queued if self.queued else None

    @property
    def survey_avg(self) -> float | None:
        total = sum(self.surveys.values())
        return sum(k * n for k, n in self.surveys.items()) / total if total else None


@dataclass(frozen=True, slots=True)
class QuestionFigures:
    """One question of a questionnaire on the day: how often each key was pressed (every version together)."""

    questionnaire: str
    question: str
    answered: int
    keys: tuple[tuple[str, str, int], ...]  # (key, label, answers) in key order
    followups: int  # answers asking to be called back

    def share(self, count: int) -> float | None:
        return count / self.answered if self.answered else None


@dataclass(frozen=True, slots=True)
class RunFigures:
    """One questionnaire on the day: how its walks ended (complete, partial, skipped)."""

    questionnaire: str
    statuses: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.statuses.values())


@dataclass(frozen=True, slots=True)
class DailyReport:
    day: date
    timezone: str
    start_utc: datetime
    end_utc: datetime
    service_level_seconds: float
    total: Figures
    seat_groups: tuple[Figures, ...]
    agents: tuple[Figures, ...]
    calls_by_hour: tuple[int, ...] = field(default=(0,) * 24)
    questions: tuple[QuestionFigures, ...] = ()
    survey_runs: tuple[RunFigures, ...] = ()
    followups: FollowupFigures | None = None  # None only for a report built by hand


@dataclass(frozen=True, slots=True)
class _TicketFacts:
    seat_group: str | None
    agent_number: str | None
    opened: bool
    closed: bool
    overdue: bool


def _figures(key: str, label: str, calls: Sequence[Call], tickets: Sequence[_TicketFacts], sl_s: float,
             scores: dict[int, list[int]]) -> Figures:
    """`scores`: the scored questionnaire answers by call row id."""
    scored = [score for c in calls for score in scores.get(c.id, ())]
    waits = [c.queue_wait_s for c in calls if c.queue_wait_s is not None]
    talks = [c.talk_s for c in calls if c.talk_s is not None]
    answered_in_time = sum(
        1 for c in calls if c.talk_s is not None and c.queue_wait_s is not None and c.queue_wait_s <= sl_s
    )
    return Figures(
        key=key,
        label=label,
        calls=len(calls),
        answered=len(talks),
        abandoned=sum(1 for c in calls if c.outcome in ABANDONED),
        silent=sum(1 for c in calls if c.outcome == "silent"),
        queued=len(waits),
        within_service_level=answered_in_time,
        wait_avg=mean(waits),
        wait_p90=p90(waits),
        talk_avg=mean(talks),
        surveys={score: scored.count(score) for score in SURVEY_LABELS},
        greetings=dict(Counter(c.greeting or "-" for c in calls).most_common()),
        complaints_opened=sum(t.opened for t in tickets),
        complaints_overdue=sum(t.overdue for t in tickets),
        complaints_closed=sum(t.closed for t in tickets),
    )


def daily_report(
    engine: Engine,
    day: date,
    zone: ZoneInfo,
    *,
    service_level_seconds: float = 20,
    agent_names: dict[str, str] | None = None,
) -> DailyReport:
    start, end = day_bounds(day, zone)
    with Session(engine) as s:
        calls = s.scalars(select(Call).where(Call.started_at >= start, Call.started_at < end).order_by(Call.id)).all()
        relevant = s.scalars(select(Ticket).where(Ticket.opened_at < end)).all()
        feedback: dict[int, datetime] = {
            ticket_id: at
            for ticket_id, at in s.execute(
                select(TicketHistory.ticket_id, func.max(TicketHistory.at))
                .where(TicketHistory.action == "feedback", TicketHistory.at < end)
                .group_by(TicketHistory.ticket_id)
            ).all()
        }
        answers = s.execute(
            select(SurveyAnswer.call_id, SurveyAnswer.questionnaire, SurveyAnswer.question, SurveyAnswer.key,
                   SurveyAnswer.label, SurveyAnswer.score, SurveyAnswer.followup)
            .join(Call, Call.id == SurveyAnswer.call_id)
            .where(Call.started_at >= start, Call.started_at < end)
            .order_by(SurveyAnswer.id)
        ).all()
        runs = s.execute(
            select(SurveyRun.questionnaire, SurveyRun.status, func.count())
            .join(Call, Call.id == SurveyRun.call_id)
            .where(Call.started_at >= start, Call.started_at < end)
            .group_by(SurveyRun.questionnaire, SurveyRun.status)
        ).all()
        followup = followup_figures(s, start, end)
        s.expunge_all()
    scores: dict[int, list[int]] = {}
    for a in answers:
        if a.score is not None:
            scores.setdefault(a.call_id, []).append(a.score)
    tickets: list[_TicketFacts] = []
    for t in relevant:
        opened_at, closed_at = aware(t.opened_at), aware(t.closed_at)
        fed_back = feedback.get(t.id)
        last = max(opened_at, aware(fed_back)) if fed_back is not None else opened_at
        still_open = t.status != "closed" or (closed_at is not None and closed_at >= end)
        facts = _TicketFacts(
            t.seat_group,
            t.agent_number,
            opened=start <= opened_at < end,
            closed=t.status == "closed" and closed_at is not None and start <= closed_at < end,
            overdue=still_open and last + FEEDBACK_EVERY < end,
        )
        if facts.opened or facts.closed or facts.overdue:
            tickets.append(facts)
    sl = service_level_seconds
    groups = tuple(
        _figures(g, label, [c for c in calls if c.seat_group == g], [t for t in tickets if t.seat_group == g], sl,
                 scores)
        for g, label in SEAT_GROUP_LABELS.items()
    )
    names = agent_names or {}
    numbers = sorted(
        {c.agent_number for c in calls if c.agent_number} | {t.agent_number for t in tickets if t.agent_number}
    )
    agents = tuple(
        _figures(
            a,
            f"{a} {names.get(a, '')}".strip(),
            [c for c in calls if c.agent_number == a],
            [t for t in tickets if t.agent_number == a],
            sl,
            scores,
        )
        for a in numbers
    )
    hours = Counter(aware(c.started_at).astimezone(zone).hour for c in calls)
    return DailyReport(
        day,
        str(zone),
        start,
        end,
        sl,
        _figures("all", "全部", calls, tickets, sl, scores),
        groups,
        agents,
        tuple(hours.get(h, 0) for h in range(24)),
        _question_figures(answers),
        _run_figures(runs),
        followup,
    )


def _question_figures(answers: Sequence[Any]) -> tuple[QuestionFigures, ...]:
    """Per (questionnaire, question): each key's count, the newest label naming it.

    Questionnaires by name; their questions in the order callers were asked
    them (skip rules only move forward, so the order of one call's answers is
    the file's), else in the order first answered.
    """
    pressed: dict[tuple[str, str], Counter[str]] = {}
    labels: dict[tuple[str, str, str], str] = {}
    followups: Counter[tuple[str, str]] = Counter()
    walks: dict[tuple[int, str], list[str]] = {}  # (call, questionnaire) -> its questions in answer order
    for a in answers:
        pressed.setdefault((a.questionnaire, a.question), Counter())[a.key] += 1
        labels[(a.questionnaire, a.question, a.key)] = a.label
        followups[(a.questionnaire, a.question)] += bool(a.followup)
        walks.setdefault((a.call_id, a.questionnaire), []).append(a.question)
    ordered: list[tuple[str, str]] = []
    for questionnaire in sorted({qn for qn, _ in pressed}):
        seen = [q for qn, q in pressed if qn == questionnaire]
        sorter: TopologicalSorter[str] = TopologicalSorter({q: set() for q in seen})
        for (_, qn), questions in walks.items():
            if qn == questionnaire:
                for before, after in zip(questions, questions[1:], strict=False):
                    sorter.add(after, before)
        try:
            sorter.prepare()
            order: list[str] = []
            while sorter.is_active():
                ready = sorted(sorter.get_ready(), key=seen.index)
                order.extend(ready)
                sorter.done(*ready)
        except CycleError:  # the file's order changed between versions: first answered first
            order = seen
        ordered.extend((questionnaire, q) for q in order)
    return tuple(
        QuestionFigures(qn, q, sum(pressed[qn, q].values()),
                        tuple((k, labels[(qn, q, k)], n) for k, n in sorted(pressed[qn, q].items())),
                        followups[(qn, q)])
        for qn, q in ordered
    )


def _run_figures(runs: Sequence[Any]) -> tuple[RunFigures, ...]:
    by: dict[str, dict[str, int]] = {}
    for questionnaire, status, count in runs:
        by.setdefault(questionnaire, dict.fromkeys(SURVEY_STATUSES, 0))[status] = count
    return tuple(RunFigures(q, statuses) for q, statuses in sorted(by.items()))


# --- follow-up lists ---------------------------------------------------------------


def overdue_tickets(engine: Engine, now: datetime | None = None, *, agent_number: str | None = None) -> list[Ticket]:
    """Complaints not closed whose daily feedback is due by `now` ([002]), most overdue first."""
    now = now or datetime.now(UTC)
    query = select(Ticket).where(Ticket.status != "closed", Ticket.next_feedback_due <= now)
    if agent_number is not None:
        query = query.where(Ticket.agent_number == agent_number)
    with Session(engine, expire_on_commit=False) as s:
        rows = s.scalars(query.order_by(Ticket.next_feedback_due, Ticket.id)).all()
        s.expunge_all()
    return list(rows)


@dataclass(frozen=True, slots=True)
class LowScore:
    """A scored questionnaire answer of 一般 or worse, with the call's agent ([004] morning review)."""

    at: datetime
    score: int
    value: str
    label: str
    questionnaire: str
    question: str
    agent_number: str | None
    seat_group: str | None


def low_scores(engine: Engine, day: date, zone: ZoneInfo, *, from_score: int = 2) -> list[tuple[LowScore, str, str]]:
    """The day's answers scored `from_score` or worse (一般/不满意), with caller and Call-ID ([004] morning review).

    Read from `survey_answers` (the scored question of each questionnaire; the
    single-question ratings before it were carried over by migration 0010).
    """
    start, end = day_bounds(day, zone)
    with Session(engine) as s:
        rows = s.execute(
            select(SurveyAnswer, Call.agent_number, Call.seat_group, Call.caller, Call.sip_call_id)
            .join(Call, Call.id == SurveyAnswer.call_id)
            .where(SurveyAnswer.answered_at >= start, SurveyAnswer.answered_at < end,
                   SurveyAnswer.score >= from_score)
            .order_by(SurveyAnswer.answered_at, SurveyAnswer.id)
        ).all()
        found = [
            (LowScore(aware(a.answered_at), a.score or 0, a.value, a.label, a.questionnaire, a.question, agent, group),
             caller, sip_call_id)
            for a, agent, group, caller, sip_call_id in rows
        ]
    return found


# --- output ------------------------------------------------------------------------------

CSV_COLUMNS = (
    "key",
    "label",
    "calls",
    "answered",
    "answer_rate",
    "abandoned",
    "abandon_rate",
    "silent",
    "silent_share",
    "queued",
    "service_level",
    "wait_avg_s",
    "wait_p90_s",
    "talk_avg_s",
    "survey_1",
    "survey_2",
    "survey_3",
    "survey_avg",
    "complaints_opened",
    "complaints_overdue",
    "complaints_closed",
    "greetings",
)


def _round(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def csv_row(f: Figures) -> list[str]:
    return [
        f.key,
        f.label,
        str(f.calls),
        str(f.answered),
        _round(f.answer_rate),
        str(f.abandoned),
        _round(f.abandon_rate),
        str(f.silent),
        _round(f.silent_share),
        str(f.queued),
        _round(f.service_level),
        _round(f.wait_avg, 1),
        _round(f.wait_p90, 1),
        _round(f.talk_avg, 1),
        str(f.surveys[1]),
        str(f.surveys[2]),
        str(f.surveys[3]),
        _round(f.survey_avg, 2),
        str(f.complaints_opened),
        str(f.complaints_overdue),
        str(f.complaints_closed),
        " ".join(f"{k}={n}" for k, n in f.greetings.items()),
    ]


def write_csv(report: DailyReport, directory: Path) -> list[Path]:
    """seat_groups-DAY.csv (with the day's total last), agents-DAY.csv, questions-DAY.csv and followups-DAY.csv
    in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, rows in (("seat_groups", (*report.seat_groups, report.total)), ("agents", report.agents)):
        path = directory / f"{name}-{report.day.isoformat()}.csv"
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(CSV_COLUMNS)
        writer.writerows(csv_row(f) for f in rows)
        path.write_text(buffer.getvalue(), encoding="utf-8-sig")  # BOM: Excel opens the Chinese labels right
        written.append(path)
    path = directory / f"questions-{report.day.isoformat()}.csv"
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(QUESTION_COLUMNS)
    writer.writerows(question_rows(report))
    path.write_text(buffer.getvalue(), encoding="utf-8-sig")
    written.append(path)
    if report.followups is not None:
        path = directory / f"followups-{report.day.isoformat()}.csv"
        path.write_text(csv_text(report.followups), encoding="utf-8-sig")
        written.append(path)
    return written


QUESTION_COLUMNS = ("questionnaire", "question", "key", "label", "answers", "share", "followups")


def question_rows(report: DailyReport) -> list[list[str]]:
    return [
        [q.questionnaire, q.question, key, label, str(n), _round(q.share(n)), str(q.followups)]
        for q in report.questions
        for key, label, n in q.keys
    ]



def png(fig: Any) -> bytes:
    """A matplotlib figure as PNG bytes (closed afterwards): the charts of the report and the scorecards."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()

def charts(report: DailyReport) -> dict[str, bytes]:
    """PNG charts: calls by seat group (answered/abandoned/other), survey scores by seat group, calls by hour."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import font_manager
    from matplotlib import pyplot as plt

    cjk = [
        f.name
        for f in font_manager.fontManager.ttflist
        if any(n in f.name for n in ("WenQuanYi", "Noto Sans CJK", "Noto Sans SC", "Source Han"))
    ]
    plt.rcParams["font.sans-serif"] = [*cjk[:1], "DejaVu Sans"]
    plt.rcParams["axes.unicode_minus"] = False

    # without a CJK font the labels would be empty boxes: fall back to the seat-group keys
    def label(f: Figures) -> str:
        return f.label if cjk else f.key

    out: dict[str, bytes] = {}

    def save(name: str, fig: Any) -> None:
        out[name] = png(fig)

    groups = report.seat_groups
    names = [label(f) for f in groups]
    fig, ax = plt.subplots(figsize=(5, 3))
    answered = [f.answered for f in groups]
    abandoned = [f.abandoned for f in groups]
    other = [f.calls - f.answered - f.abandoned for f in groups]
    ax.bar(names, answered, label="接通" if cjk else "answered", color="#2e7d32")
    ax.bar(names, abandoned, bottom=answered, label="放弃" if cjk else "abandoned", color="#c62828")
    ax.bar(
        names,
        other,
        bottom=[a + b for a, b in zip(answered, abandoned, strict=True)],
        label="其他" if cjk else "other",
        color="#9e9e9e",
    )
    ax.set_title("各坐席组来电" if cjk else "calls by seat group")
    ax.legend(fontsize=8)
    save("calls_by_group.png", fig)

    fig, ax = plt.subplots(figsize=(5, 3))
    width = 0.25
    colors = {1: "#2e7d32", 2: "#f9a825", 3: "#c62828"}
    for i, score in enumerate(SURVEY_LABELS):
        ax.bar(
            [x + (i - 1) * width for x in range(len(groups))],
            [f.surveys[score] for f in groups],
            width,
            label=SURVEY_LABELS[score] if cjk else str(score),
            color=colors[score],
        )
    ax.set_xticks(range(len(groups)), names)
    ax.set_title("满意度评价" if cjk else "survey scores")
    ax.legend(fontsize=8)
    save("surveys.png", fig)

    fig, ax = plt.subplots(figsize=(6, 2.6))
    ax.bar(range(24), report.calls_by_hour, color="#1565c0")
    ax.set_xticks(range(0, 24, 2))
    ax.set_title(("每小时来电" if cjk else "calls per hour") + f" ({report.timezone})")
    save("calls_by_hour.png", fig)
    return out


def iter_rows(report: DailyReport) -> Iterable[Figures]:
    yield from report.seat_groups
    yield report.total
    yield from report.agents


_TABLES = """\
<table class="report">
<thead><tr><th>{{ title }}</th><th>来电</th><th>接通</th><th>接通率</th><th>放弃率</th>
<th>平均排队</th><th>排队P90</th><th>服务水平({{ '%g' % sl }}秒)</th><th>平均通话</th>
<th>满意</th><th>一般</th><th>不满意</th><th>平均分</th><th>无声占比</th>
<th>投诉新增</th><th>投诉超期</th><th>投诉结案</th><th>问候语</th></tr></thead>
<tbody>
{% for f in rows %}<tr{% if f.key == 'all' %} class="total"{% endif %}>
<td>{{ f.label }}</td><td>{{ f.calls }}</td><td>{{ f.answered }}</td>
<td>{{ pct(f.answer_rate) }}</td><td>{{ pct(f.abandon_rate) }}</td>
<td>{{ sec(f.wait_avg) }}</td><td>{{ sec(f.wait_p90) }}</td>
<td>{{ pct(f.service_level) }}</td><td>{{ sec(f.talk_avg) }}</td>
<td>{{ f.surveys[1] }}</td><td>{{ f.surveys[2] }}</td><td>{{ f.surveys[3] }}</td>
<td>{{ num(f.survey_avg) }}</td><td>{{ pct(f.silent_share) }}</td>
<td>{{ f.complaints_opened }}</td><td>{{ f.complaints_overdue }}</td><td>{{ f.complaints_closed }}</td>
<td class="mix">{% for g, n in f.greetings.items() %}{{ g }}={{ n }} {% endfor %}</td></tr>
{% endfor %}</tbody></table>
"""

_QUESTIONS = """\
<table class="report questions">
<thead><tr><th>问卷</th><th>问题</th><th>按键</th><th>含义</th><th>次数</th><th>占比</th></tr></thead>
<tbody>
{% for q in r.questions %}{% for key, label, n in q.keys %}<tr>
<td>{{ q.questionnaire }}</td><td class="mix">{{ q.question }}</td><td>{{ key }}</td><td class="mix">{{ label }}</td>
<td>{{ n }}</td>
<td>{{ pct(q.share(n)) }}</td></tr>
{% endfor %}{% endfor %}</tbody></table>
<table class="report runs">
<thead><tr><th>问卷</th><th>完成</th><th>中途挂机</th><th>未作答</th></tr></thead>
<tbody>
{% for run in r.survey_runs %}<tr><td>{{ run.questionnaire }}</td><td>{{ run.statuses['complete'] }}</td>
<td>{{ run.statuses['partial'] }}</td><td>{{ run.statuses['skipped'] }}</td></tr>
{% endfor %}</tbody></table>
"""

_PAGE = """\
<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>日报 {{ r.day }}</title>
<style>body{font-family:"WenQuanYi Micro Hei","Noto Sans CJK SC",sans-serif;margin:1em}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #bbb;padding:3px 6px;text-align:right}
td:first-child,th:first-child,td.mix{text-align:left}tr.total{font-weight:bold;background:#eef}</style></head><body>
<h1>热线日报 {{ r.day }}</h1>
<p>{{ r.timezone }} 当日(UTC {{ r.start_utc.strftime('%Y-%m-%d %H:%M') }}
至 {{ r.end_utc.strftime('%Y-%m-%d %H:%M') }})</p>
{{ groups }}{{ agents }}{{ questions }}{% if followups %}<h2>回访</h2>{{ followups }}{% endif %}
{% for name, uri in images %}<img alt="{{ name }}" src="{{ uri }}">{% endfor %}
</body></html>
"""


def _env() -> Environment:
    env = Environment(autoescape=True)
    env.globals.update(
        pct=lambda v: "–" if v is None else f"{v * 100:.1f}%",
        sec=lambda v: "–" if v is None else f"{v:.1f}s",
        num=lambda v: "–" if v is None else f"{v:.2f}",
    )
    return env


def questions_html(report: DailyReport) -> str:
    """Per question of each questionnaire, the keys pressed; per questionnaire, how its walks ended (escaped HTML)."""
    html: str = _env().from_string(_QUESTIONS).render(r=report)
    return html


def tables_html(report: DailyReport) -> tuple[str, str]:
    """The seat-group table (with the day's total) and the agent table, as escaped HTML."""
    template = _env().from_string(_TABLES)
    groups = template.render(title="坐席组", rows=[*report.seat_groups, report.total], sl=report.service_level_seconds)
    agents = template.render(title="坐席", rows=report.agents, sl=report.service_level_seconds)
    return groups, agents


def standalone_html(report: DailyReport, images: dict[str, bytes]) -> str:
    """One self-contained HTML file: the tables and the charts as data: URIs."""
    import base64

    from markupsafe import Markup

    groups, agents = tables_html(report)
    uris = [(name, "data:image/png;base64," + base64.b64encode(png).decode()) for name, png in images.items()]
    page: str = _env().from_string(_PAGE).render(r=report, groups=Markup(groups), agents=Markup(agents),
                                                 questions=Markup(questions_html(report)),
                                                 followups=Markup(followups_html(report, links=False)),
                                                 images=uris)
    return page


def followups_html(report: DailyReport, *, links: bool = True) -> str:
    """The follow-up tables (reach rate, satisfaction before and after, re-opened complaints), escaped HTML;
    `links`: the re-opened tickets link to the desk's pages (not in a standalone file)."""
    if report.followups is None:
        return ""
    return html(report.followups, ZoneInfo(report.timezone), links=links)
