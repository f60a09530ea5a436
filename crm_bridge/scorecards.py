"""Agent scorecards (绩效考核): per agent, for any run of local days.

A period is whole local days of the hotline's time zone ([general] timezone,
Asia/Shanghai by default): 2026-12-02 to 2026-12-02 in Shanghai is
2026-12-01 16:00 to 2026-12-02 16:00 UTC, so a call at 23:30 UTC on the 1st
belongs to the 2nd. Every figure counts what happened inside the period: a
step by its time, a survey by when it was given, a complaint by when it was
opened, a time-by-state span by the part of it inside the period.

Each figure is one `Figure` in `FIGURES`: its column name, its label, the
sentence defining it (the documentation quotes these sentences, see
`definitions_markdown`) and the function computing it from the period's
`Sources`. The queries live in `Sources`, one per kind of fact; a figure
from a new table (QA evaluations, say) is one more query there and one more
`Figure`.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from crm_bridge.models import (
    OUTCOMES,
    AgentStateChange,
    Call,
    CallEvent,
    Evaluation,
    Survey,
    SurveyAnswer,
    Ticket,
    aware,
)
from crm_bridge.report import day_bounds, png

Value = int | float | None
REPEAT_WINDOW = timedelta(days=7)
# the hotline calling a customer back is not the customer calling again (callback_requested is: they called in)
CALLS_OUT = tuple(o for o in OUTCOMES if o.startswith("callback_") and o != "callback_requested")
MAX_DAYS = 366  # a longer period is refused: one query pass over a year is the most a page should ask for
TIMED_STATES = ("available", "ringing", "talking", "wrap_up", "paused")  # logged_out is not counted
HANDLING = ("talking", "wrap_up")
_AGENT = re.compile(r"(?:^|\s)agent=(\S+)")
_FROM = re.compile(r"(?:^|\s)from=(\S+)")


class PeriodError(ValueError):
    """A period that cannot be reported (end before start, too long)."""


@dataclass(frozen=True, slots=True)
class Period:
    first: date
    last: date  # inclusive
    zone: ZoneInfo

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise PeriodError(f"the period ends ({self.last}) before it starts ({self.first})")
        if (self.last - self.first).days + 1 > MAX_DAYS:
            raise PeriodError(f"at most {MAX_DAYS} days at a time")

    @property
    def start_utc(self) -> datetime:
        return day_bounds(self.first, self.zone)[0]

    @property
    def end_utc(self) -> datetime:
        return day_bounds(self.last, self.zone)[1]

    @property
    def days(self) -> int:
        return (self.last - self.first).days + 1


def _by(rows: Iterable[tuple[str | None, Any]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = defaultdict(list)
    for agent, value in rows:
        if agent:
            out[agent].append(value)
    return out


class Sources:
    """The facts of one period, each read by one query the first time a figure asks for it."""

    def __init__(self, session: Session, period: Period, now: datetime | None = None) -> None:
        self.s = session
        self.period = period
        self.start, self.end = period.start_utc, period.end_utc
        self.now = now or datetime.now(UTC)

    def _steps(self, kind: str, pattern: re.Pattern[str]) -> dict[str, list[tuple[int, datetime]]]:
        """Steps of `kind` in the period by the agent their detail names: (call row id, time)."""
        rows = self.s.execute(
            select(CallEvent.call_id, CallEvent.at, CallEvent.detail)
            .where(CallEvent.kind == kind, CallEvent.at >= self.start, CallEvent.at < self.end)
        ).all()
        return _by((m.group(1) if (m := pattern.search(detail)) else None, (call_id, aware(at)))
                   for call_id, at, detail in rows)

    @functools.cached_property
    def answered(self) -> dict[str, list[tuple[int, datetime]]]:
        """`agent_answered` steps: each agent who took a call (the first and each after a transfer)."""
        return self._steps("agent_answered", _AGENT)

    @functools.cached_property
    def transfers(self) -> dict[str, list[tuple[int, datetime]]]:
        return self._steps("transferred", _FROM)

    @functools.cached_property
    def holds(self) -> dict[str, list[tuple[int, datetime]]] | None:
        """`held` steps naming the agent; None while the IVR writes none at all (holds are not recorded yet)."""
        if self.s.scalar(select(CallEvent.id).where(CallEvent.kind == "held").limit(1)) is None:
            return None
        return self._steps("held", _AGENT)

    @functools.cached_property
    def surveys(self) -> dict[str, list[int]]:
        return _by(self.s.execute(
            select(Survey.agent_number, Survey.score).where(Survey.at >= self.start, Survey.at < self.end)
        ).tuples())

    @functools.cached_property
    def complaints(self) -> dict[str, list[int]]:
        return _by(self.s.execute(
            select(Ticket.agent_number, Ticket.id).where(Ticket.opened_at >= self.start, Ticket.opened_at < self.end)
        ).tuples())

    @functools.cached_property
    def repeats(self) -> dict[str, tuple[int, int]]:
        """Per agent: (answered calls with a caller number, those followed by another call from it within 7 days)."""
        call_ids = {call_id for taken in self.answered.values() for call_id, _ in taken}
        if not call_ids:
            return {}
        calls = {cid: (caller, aware(at)) for cid, caller, at in self.s.execute(
            select(Call.id, Call.caller, Call.started_at).where(Call.id.in_(call_ids))).tuples()}
        callers = {caller for caller, _ in calls.values() if caller}
        later: dict[str, list[datetime]] = defaultdict(list)
        for caller, at in self.s.execute(
            select(Call.caller, Call.started_at)
            .where(Call.caller.in_(callers), Call.started_at >= self.start, Call.started_at < self.end + REPEAT_WINDOW,
                   Call.outcome.is_(None) | Call.outcome.not_in(CALLS_OUT))
        ).tuples():
            later[caller].append(aware(at))
        out: dict[str, tuple[int, int]] = {}
        for agent, taken in self.answered.items():
            mine = {cid for cid, _ in taken if cid in calls and calls[cid][0]}
            repeated = sum(
                1 for cid in mine
                if any(calls[cid][1] < at <= calls[cid][1] + REPEAT_WINDOW for at in later[calls[cid][0]])
            )
            out[agent] = (len(mine), repeated)
        return out

    @functools.cached_property
    def state_seconds(self) -> dict[str, dict[str, float]]:
        """Seconds per state inside the period: each agent_states row lasts until the agent's next row.

        The state an agent was in when the period began is their last row
        before it; the last row's span ends at the period's end, or now while
        the period is still running.
        """
        stop = min(self.end, self.now)
        before = (
            select(AgentStateChange.agent_number, func.max(AgentStateChange.at).label("at"))
            .where(AgentStateChange.at < self.start).group_by(AgentStateChange.agent_number).subquery()
        )
        opening = self.s.execute(
            select(AgentStateChange.agent_number, AgentStateChange.at, AgentStateChange.state, AgentStateChange.id)
            .join(before, (before.c.agent_number == AgentStateChange.agent_number)
                  & (before.c.at == AgentStateChange.at))
        ).tuples().all()
        inside = self.s.execute(
            select(AgentStateChange.agent_number, AgentStateChange.at, AgentStateChange.state, AgentStateChange.id)
            .where(AgentStateChange.at >= self.start, AgentStateChange.at < stop)
        ).tuples().all()
        rows: dict[str, list[tuple[datetime, int, str]]] = defaultdict(list)
        for agent, at, state, row_id in (*opening, *inside):
            rows[agent].append((max(aware(at), self.start), row_id, state))
        out: dict[str, dict[str, float]] = {}
        for agent, changes in rows.items():
            changes.sort()
            totals = dict.fromkeys(TIMED_STATES, 0.0)
            for (at, _, state), (until, _, _) in zip(changes, [*changes[1:], (stop, 0, "")], strict=True):
                if state in totals and until > at:
                    totals[state] += (until - at).total_seconds()
            out[agent] = totals
        return out

    @functools.cached_property
    def qa(self) -> dict[str, list[tuple[float, bool]]]:
        """QA evaluations made in the period (total, whether a fatal criterion failed it) by agent."""
        return _by((agent, (float(total), bool(fatal))) for agent, total, fatal in self.s.execute(
            select(Evaluation.agent_number, Evaluation.total, Evaluation.fatal)
            .where(Evaluation.created_at >= self.start, Evaluation.created_at < self.end)
        ).tuples())

    @functools.cached_property
    def scored_answers(self) -> list[tuple[str, str, str, str, str]]:
        """(agent, questionnaire, question, key, label) of the scored answers given in the period, oldest first."""
        return [(agent, qn, q, key, label) for agent, qn, q, key, label in self.s.execute(
            select(Call.agent_number, SurveyAnswer.questionnaire, SurveyAnswer.question, SurveyAnswer.key,
                   SurveyAnswer.label)
            .join(Call, Call.id == SurveyAnswer.call_id)
            .where(SurveyAnswer.score.is_not(None), SurveyAnswer.answered_at >= self.start,
                   SurveyAnswer.answered_at < self.end, Call.agent_number.is_not(None))
            .order_by(SurveyAnswer.answered_at, SurveyAnswer.id)
        ).tuples() if agent]


# --- per question: how each agent's callers answered ---------------------------------------------

QUESTIONS_DEFINITION = (
    "Per agent, for each scored question of each questionnaire (answers with `survey_answers.score` set), how "
    "often each key was pressed: answers given in the period (`answered_at`) on calls whose agent "
    "(`calls.agent_number`, the last agent who answered the call) is the agent. Unscored questions are left "
    "out: they rate the hotline, not the agent."
)


@dataclass(frozen=True, slots=True)
class QuestionDistribution:
    """One scored question in the period: every key pressed (newest label), and per agent how often."""

    questionnaire: str
    question: str
    keys: tuple[tuple[str, str], ...]  # (key, label) in key order
    counts: Mapping[str, Mapping[str, int]]  # agent -> key -> answers

    def total(self, agent: str) -> int:
        return sum(self.counts.get(agent, {}).values())


def _distributions(answers: list[tuple[str, str, str, str, str]]) -> tuple[QuestionDistribution, ...]:
    labels: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    counts: dict[tuple[str, str], dict[str, dict[str, int]]] = defaultdict(dict)
    for agent, qn, q, key, label in answers:
        labels[qn, q][key] = label  # oldest first: the newest label wins
        by_key = counts[qn, q].setdefault(agent, {})
        by_key[key] = by_key.get(key, 0) + 1
    return tuple(QuestionDistribution(qn, q, tuple(sorted(labels[qn, q].items())), counts[qn, q])
                 for qn, q in sorted(labels))


# --- the figures ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Figure:
    key: str  # the CSV column
    label: str  # the page's column heading
    unit: str  # count | seconds | share | score
    definition: str  # what it counts, in one or two sentences: the documentation quotes it
    compute: Callable[[Sources], Mapping[str, Value] | None]  # None: the figure has no source (yet)


def _count(facts: Mapping[str, list[Any]] | None) -> Mapping[str, Value] | None:
    return {a: len(v) for a, v in facts.items()} if facts is not None else None


def _aht(src: Sources) -> Mapping[str, Value]:
    out: dict[str, Value] = {}
    for agent, taken in src.answered.items():
        states = src.state_seconds.get(agent)
        if taken and states is not None:
            out[agent] = sum(states[s] for s in HANDLING) / len(taken)
    return out


def _survey_count(score: int) -> Callable[[Sources], Mapping[str, Value]]:
    return lambda src: {a: sum(1 for v in scores if v == score) for a, scores in src.surveys.items()}


def _survey_avg(src: Sources) -> Mapping[str, Value]:
    return {a: sum(v) / len(v) for a, v in src.surveys.items() if v}


def _csat(src: Sources) -> Mapping[str, Value]:
    return {a: sum(1 for s in v if s == 1) / len(v) for a, v in src.surveys.items() if v}


def _qa_avg(src: Sources) -> Mapping[str, Value] | None:
    return {a: sum(score for score, _ in v) / len(v) for a, v in src.qa.items() if v}


def _qa_fatal(src: Sources) -> Mapping[str, Value] | None:
    if not src.qa:
        return None  # nobody was evaluated in the period: —, not a count of 0 fatal errors
    return {a: sum(fatal for _, fatal in v) for a, v in src.qa.items()}


def _repeat_calls(src: Sources) -> Mapping[str, Value]:
    return {a: repeated for a, (_, repeated) in src.repeats.items()}


def _repeat_rate(src: Sources) -> Mapping[str, Value]:
    return {a: repeated / total for a, (total, repeated) in src.repeats.items() if total}


def _state(state: str) -> Callable[[Sources], Mapping[str, Value]]:
    return lambda src: {a: seconds[state] for a, seconds in src.state_seconds.items()}


def _occupancy(src: Sources) -> Mapping[str, Value]:
    out: dict[str, Value] = {}
    for agent, seconds in src.state_seconds.items():
        staffed = sum(v for s, v in seconds.items() if s != "paused")
        if staffed > 0:
            out[agent] = sum(seconds[s] for s in HANDLING) / staffed
    return out


FIGURES: tuple[Figure, ...] = (
    Figure("calls_answered", "接听量", "count",
           "Calls the agent answered: `agent_answered` steps naming the agent. A transferred call counts once for "
           "each agent who answered it.",
           lambda src: _count(src.answered)),
    Figure("aht_s", "平均处理时长", "seconds",
           "Average handle time: seconds in the `talking` and `wrap_up` states (agent state log) divided by the "
           "calls answered.",
           _aht),
    Figure("holds", "保持次数", "count",
           "Times the agent put a caller on hold: `held` steps, written when the agent's phone sends a hold "
           "re-INVITE (a=sendonly or inactive). — for a CRM that has none yet (older IVR versions wrote none).",
           lambda src: _count(src.holds)),
    Figure("transfers", "转接次数", "count",
           "Blind transfers the agent made: `transferred` steps whose `from=` is the agent.",
           lambda src: _count(src.transfers)),
    Figure("survey_1", "满意", "count", "Surveys scored 1 (满意, satisfied) against the agent, given in the period.",
           _survey_count(1)),
    Figure("survey_2", "一般", "count", "Surveys scored 2 (一般, average).", _survey_count(2)),
    Figure("survey_3", "不满意", "count", "Surveys scored 3 (不满意, dissatisfied).", _survey_count(3)),
    Figure("csat", "满意率", "share", "CSAT: surveys scored 1 over all the agent's surveys in the period.", _csat),
    Figure("survey_avg", "平均评分", "score",
           "Mean keypad score of the agent's surveys (1 satisfied … 3 dissatisfied: lower is better).",
           _survey_avg),
    Figure("qa_avg", "质检均分", "score",
           "Mean total (0-100) of the agent's QA evaluations made in the period (table `evaluations`; a fatal "
           "criterion makes an evaluation's total 0).",
           _qa_avg),
    Figure("qa_fatal", "质检致命项", "count",
           "QA evaluations of the agent made in the period that a fatal criterion failed.",
           _qa_fatal),
    Figure("complaints", "投诉", "count",
           "Complaint tickets opened in the period against the agent's calls (`tickets.agent_number`).",
           lambda src: _count(src.complaints)),
    Figure("repeat_calls", "7天内重复来电", "count",
           "Calls answered by the agent after which the same caller number called the hotline again within 7 days "
           "(a first-contact-resolution proxy; the later call may fall after the period; the hotline's own calls "
           "back to the number do not count).",
           _repeat_calls),
    Figure("repeat_rate", "重复来电率", "share",
           "Repeat calls over the agent's answered calls that have a caller number.",
           _repeat_rate),
    Figure("available_s", "空闲", "seconds",
           "Seconds in the `available` state inside the period (agent state log: each change lasts until the "
           "agent's next).",
           _state("available")),
    Figure("ringing_s", "振铃", "seconds", "Seconds in the `ringing` state (a call offered, not yet answered).",
           _state("ringing")),
    Figure("talking_s", "通话", "seconds", "Seconds in the `talking` state.", _state("talking")),
    Figure("wrap_up_s", "话后处理", "seconds", "Seconds in the `wrap_up` state (after-call work).",
           _state("wrap_up")),
    Figure("paused_s", "暂停", "seconds", "Seconds in the `paused` state (*46 or the desk's pause).",
           _state("paused")),
    Figure("occupancy", "占用率", "share",
           "Talking plus wrap-up over the time logged in and not paused (available + ringing + talking + wrap-up).",
           _occupancy),
)
FIGURE_KEYS = tuple(f.key for f in FIGURES)


@dataclass(frozen=True, slots=True)
class AgentCard:
    agent: str
    name: str
    values: Mapping[str, Value]

    def __getitem__(self, key: str) -> Value:
        return self.values.get(key)


@dataclass(frozen=True, slots=True)
class Scorecards:
    period: Period
    cards: tuple[AgentCard, ...]
    questions: tuple[QuestionDistribution, ...] = ()  # see QUESTIONS_DEFINITION


def scorecards(engine: Engine, period: Period, *, agent_names: Mapping[str, str] | None = None,
               now: datetime | None = None) -> Scorecards:
    """Every figure for every agent configured or seen in the period, by seat number."""
    names = dict(agent_names or {})
    with Session(engine) as s:
        src = Sources(s, period, now)
        columns = {f.key: f.compute(src) for f in FIGURES}
        questions = _distributions(src.scored_answers)
    seen = {a for values in columns.values() if values is not None for a in values}
    seen |= {a for d in questions for a in d.counts}
    cards = []
    for agent in sorted(seen | set(names)):
        values: dict[str, Value] = {}
        for f in FIGURES:
            found = columns[f.key]
            # nothing found for this agent: a count is 0, anything else unknown; no source at all: unknown
            values[f.key] = None if found is None else found.get(agent, 0 if f.unit == "count" else None)
        cards.append(AgentCard(agent, names.get(agent, ""), values))
    return Scorecards(period, tuple(cards), questions)


# --- output --------------------------------------------------------------------------------------


def cell(figure: Figure, value: Value) -> str:
    """A value as the CSV writes it: counts whole, seconds to 0.1, shares and scores to 0.001 / 0.01."""
    if value is None:
        return ""
    if figure.unit == "count":
        return str(int(value))
    if figure.unit == "seconds":
        return f"{value:.1f}"
    if figure.unit == "share":
        return f"{value:.3f}"
    return f"{value:.2f}"


def shown(figure: Figure, value: Value) -> str:
    """A value as the page shows it: — when unknown, times in s / min / h, shares in %."""
    if value is None:
        return "—"
    if figure.unit == "count":
        return str(int(value))
    if figure.unit == "share":
        return f"{value * 100:.1f}%"
    if figure.unit == "score":
        return f"{value:.2f}"
    if value < 120:
        return f"{value:.0f}秒"
    if value < 7200:
        return f"{value / 60:.1f}分"
    return f"{value / 3600:.1f}时"


def rows(cards: Scorecards) -> list[list[str]]:
    """The header and one row per agent, as the CSV has them."""
    return [["agent", "name", *FIGURE_KEYS],
            *([card.agent, card.name, *(cell(f, card[f.key]) for f in FIGURES)] for card in cards.cards)]


def csv_text(cards: Scorecards) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows(cards))
    return buffer.getvalue()


def question_rows(cards: Scorecards) -> list[list[str]]:
    """The header and one row per (question, agent, key) with answers, for the CLI and the CSV beside the cards."""
    return [["questionnaire", "question", "agent", "key", "label", "answers", "share"],
            *([d.questionnaire, d.question, agent, key, label, str(n), f"{n / d.total(agent):.3f}"]
              for d in cards.questions for agent in sorted(d.counts) for key, label in d.keys
              if (n := d.counts[agent].get(key, 0)))]


def question_csv_text(cards: Scorecards) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(question_rows(cards))
    return buffer.getvalue()


def definitions_markdown() -> str:
    """The table of definitions docs/quality.md quotes (a test keeps the two the same)."""
    lines = ["| Column | 页面 | Definition |", "|---|---|---|"]
    lines += [f"| `{f.key}` | {f.label} | {f.definition} |" for f in FIGURES]
    return "\n".join(lines) + "\n"


def charts(cards: Scorecards, names: Iterable[str] = ("calls.png", "states.png", "surveys.png")) -> dict[str, bytes]:
    """PNG charts (those of `names`): calls answered, time by state (stacked) and survey scores (stacked) per agent."""
    wanted = set(names)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import font_manager
    from matplotlib import pyplot as plt

    cjk = [f.name for f in font_manager.fontManager.ttflist
           if any(n in f.name for n in ("WenQuanYi", "Noto Sans CJK", "Noto Sans SC", "Source Han"))]
    plt.rcParams["font.sans-serif"] = [*cjk[:1], "DejaVu Sans"]
    plt.rcParams["axes.unicode_minus"] = False
    by_key = {f.key: f for f in FIGURES}

    def label(key: str) -> str:  # without a CJK font the labels would be empty boxes
        return by_key[key].label if cjk else key

    agents = [c.agent for c in cards.cards] or ["—"]
    height = max(2.2, 0.45 * len(agents) + 1.2)
    out: dict[str, bytes] = {}

    def save(name: str, fig: Any) -> None:
        out[name] = png(fig)

    def stacked(name: str, keys: tuple[str, ...], colors: tuple[str, ...], title: str, scale: float = 1.0) -> None:
        fig, ax = plt.subplots(figsize=(6, height))
        left = [0.0] * len(cards.cards)
        for key, color in zip(keys, colors, strict=True):
            values = [float(c[key] or 0) / scale for c in cards.cards]
            ax.barh([c.agent for c in cards.cards], values, left=left, color=color, label=label(key))
            left = [a + b for a, b in zip(left, values, strict=True)]
        ax.invert_yaxis()
        ax.set_title(title)
        ax.legend(fontsize=7, ncol=len(keys), loc="lower right")
        save(name, fig)

    if "calls.png" in wanted:
        fig, ax = plt.subplots(figsize=(6, height))
        ax.barh([c.agent for c in cards.cards], [float(c["calls_answered"] or 0) for c in cards.cards],
                color="#1565c0")
        ax.invert_yaxis()
        ax.set_title("接听量" if cjk else "calls answered")
        save("calls.png", fig)
    if "states.png" in wanted:
        stacked("states.png", ("talking_s", "wrap_up_s", "ringing_s", "available_s", "paused_s"),
                ("#c62828", "#f9a825", "#8e24aa", "#2e7d32", "#9e9e9e"),
                "各状态时长(小时)" if cjk else "time by state (hours)", scale=3600)
    if "surveys.png" in wanted:
        stacked("surveys.png", ("survey_1", "survey_2", "survey_3"), ("#2e7d32", "#f9a825", "#c62828"),
                "满意度评价" if cjk else "survey scores")
    return out


CHART_NAMES = ("calls.png", "states.png", "surveys.png")

_TABLE = """\
<table class="report scorecards">
<thead><tr><th>坐席</th>{% for f in figures %}<th title="{{ f.definition }}">{{ f.label }}</th>{% endfor %}</tr></thead>
<tbody>
{% for c in cards.cards %}<tr id="agent-{{ c.agent }}"><td>{{ c.agent }} {{ c.name }}</td>
{% for f in figures %}<td data-figure="{{ f.key }}">{{ shown(f, c[f.key]) }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table>
"""

_QUESTIONS = """\
{% for d in cards.questions %}<table class="report scorecard-question"
data-question="{{ d.questionnaire }}/{{ d.question }}">
<thead><tr><th title="{{ definition }}">{{ d.questionnaire }} / {{ d.question }}</th>
{% for key, label in d.keys %}<th>{{ key }} {{ label }}</th>{% endfor %}<th>合计</th></tr></thead>
<tbody>
{% for c in cards.cards %}{% if d.total(c.agent) %}<tr
id="question-{{ d.questionnaire }}-{{ d.question }}-{{ c.agent }}">
<td>{{ c.agent }} {{ c.name }}</td>
{% for key, label in d.keys %}{% set n = d.counts[c.agent].get(key, 0) %}<td data-key="{{ key }}">{{ n }}
({{ '%.0f' % (100 * n / d.total(c.agent)) }}%)</td>{% endfor %}<td>{{ d.total(c.agent) }}</td></tr>
{% endif %}{% endfor %}</tbody></table>
{% endfor %}"""

_PAGE = """\
<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>绩效考核 {{ p.first }} – {{ p.last }}</title>
<style>body{font-family:"WenQuanYi Micro Hei","Noto Sans CJK SC",sans-serif;margin:1em}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #bbb;padding:3px 6px;text-align:right}td:first-child,th:first-child{text-align:left}</style>
</head><body><h1>坐席绩效考核 {{ p.first }} 至 {{ p.last }}</h1>
<p>{{ p.zone }} 本地日(UTC {{ p.start_utc.strftime('%Y-%m-%d %H:%M') }}
至 {{ p.end_utc.strftime('%Y-%m-%d %H:%M') }})</p>
{{ table }}{% if questions %}<h2>各题评价分布</h2>{{ questions }}{% endif %}
{% for name, uri in images %}<img alt="{{ name }}" src="{{ uri }}">{% endfor %}
</body></html>
"""


def table_html(cards: Scorecards) -> str:
    env = Environment(autoescape=True)
    html: str = env.from_string(_TABLE).render(cards=cards, figures=FIGURES, shown=shown)
    return html


def questions_html(cards: Scorecards) -> str:
    """Per scored question, a table of each agent's answers by key (escaped HTML); empty when there were none."""
    html: str = Environment(autoescape=True).from_string(_QUESTIONS).render(cards=cards,
                                                                            definition=QUESTIONS_DEFINITION)
    return html


def standalone_html(cards: Scorecards, images: dict[str, bytes]) -> str:
    """One self-contained HTML file: the table and the charts as data: URIs."""
    import base64

    from markupsafe import Markup

    uris = [(name, "data:image/png;base64," + base64.b64encode(png).decode()) for name, png in images.items()]
    page: str = Environment(autoescape=True).from_string(_PAGE).render(
        p=cards.period, table=Markup(table_html(cards)), questions=Markup(questions_html(cards)), images=uris)
    return page

