"""Follow-up (回访) figures of the daily report: reach rate, satisfaction before and after, re-opened complaints.

The day is the report's local day (`crm_bridge.report.day_bounds`). Each
figure's definition is written once, in `DEFINITIONS`; the documentation
quotes `definitions_markdown()` (a test keeps the two the same).

What the `followups` table keeps: one row per follow-up, with its attempts
counted and the time of the LATEST attempt (`last_attempt_at`) — not one row
per attempt. So a follow-up dialled on two days (no answer on Monday,
reached on Tuesday) counts once, on the day of its latest attempt.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from jinja2 import Environment
from sqlalchemy import select
from sqlalchemy.orm import Session

from crm_bridge.followups import ACTOR, DIALLING, DISSATISFIED, DONE, KIND_LABELS, NOT_REACHED, SATISFIED
from crm_bridge.models import (
    FOLLOWUP_KINDS,
    SURVEY_LABELS,
    Call,
    Followup,
    SurveyAnswer,
    Ticket,
    TicketHistory,
    aware,
)


@dataclass(frozen=True, slots=True)
class Definition:
    key: str  # the CSV's figure name
    label: str  # the page's heading
    definition: str  # quoted by the documentation


DEFINITIONS: tuple[Definition, ...] = (
    Definition("attempted", "回访拨打",
               "Follow-ups whose latest attempt (`followups.last_attempt_at`) fell in the day and has ended: the "
               "customer answered (status `done`) or did not (result no_answer, busy, failed or declined; due again "
               "or `unreachable`). A follow-up dialled on several days counts on the day of its latest attempt only; "
               "rows still dialling, and rows closed at dial time (do-not-call list), are not counted."),
    Definition("reached", "接通客户", "Of those, the follow-ups that reached the customer: status `done`."),
    Definition("reach_rate", "接通率", "Reached over attempted, per kind (resolved, wrap_up, daily, survey) and "
               "for all kinds together."),
    Definition("satisfaction_pairs", "前后满意度",
               "Follow-ups answered 满意 (1) or 不满意 (2) on the day (`closed_at` in the day) whose original call "
               "has a scored questionnaire answer (`survey_answers.score`, the latest if several): the call is the "
               "follow-up's `sip_call_id`, else its ticket's call. Counted by (score at the end of the call, answer "
               "in the follow-up)."),
    Definition("satisfied_at_call", "通话后满意",
               "Share of those pairs whose end-of-call score was 1 (满意)."),
    Definition("satisfied_after_followup", "回访后满意",
               "Share of those pairs whose follow-up answer was 满意."),
    Definition("reopened", "投诉重新处理",
               "Complaints sent back to 已转部门 by a follow-up's 不满意: ticket history rows written by \"回访\" "
               "moving the ticket from 已告知客户 to 已转部门 in the day, one per ticket."),
)


def definitions_markdown() -> str:
    """The table of definitions docs/surveys-and-followups.md quotes."""
    lines = ["| Figure | 页面 | Definition |", "|---|---|---|"]
    lines += [f"| `{d.key}` | {d.label} | {d.definition} |" for d in DEFINITIONS]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Reach:
    """One kind of follow-up (or all, key "all") on the day."""

    kind: str
    label: str
    attempted: int
    reached: int

    @property
    def rate(self) -> float | None:
        return self.reached / self.attempted if self.attempted else None


@dataclass(frozen=True, slots=True)
class Reopened:
    ticket_id: int
    at: datetime
    agent_number: str | None
    department: str | None


@dataclass(frozen=True, slots=True)
class FollowupFigures:
    reach: tuple[Reach, ...]  # the kinds with attempts, in FOLLOWUP_KINDS order, then "all"
    pairs: dict[tuple[int, str], int]  # (score at the end of the call 1..3, satisfied | dissatisfied) -> follow-ups
    reopened: tuple[Reopened, ...]

    @property
    def pair_count(self) -> int:
        return sum(self.pairs.values())

    @property
    def satisfied_at_call(self) -> float | None:
        n = self.pair_count
        return sum(self.pairs[1, r] for r in (SATISFIED, DISSATISFIED)) / n if n else None

    @property
    def satisfied_after_followup(self) -> float | None:
        n = self.pair_count
        return sum(self.pairs[s, SATISFIED] for s in SURVEY_LABELS) / n if n else None


def followup_figures(s: Session, start: datetime, end: datetime) -> FollowupFigures:
    """The day's figures (`start`, `end`: its UTC bounds)."""
    attempted: Counter[str] = Counter()
    reached: Counter[str] = Counter()
    for kind, status, result in s.execute(
        select(Followup.kind, Followup.status, Followup.result)
        .where(Followup.last_attempt_at >= start, Followup.last_attempt_at < end, Followup.status != DIALLING)
    ).tuples():
        if status == DONE:
            attempted[kind] += 1
            reached[kind] += 1
        elif result in NOT_REACHED:
            attempted[kind] += 1
    kinds = [k for k in FOLLOWUP_KINDS if attempted[k]] + sorted(k for k in attempted if k not in FOLLOWUP_KINDS)
    reach = tuple(Reach(k, KIND_LABELS.get(k, k), attempted[k], reached[k]) for k in kinds)
    reach += (Reach("all", "全部", sum(attempted.values()), sum(reached.values())),)

    answered = s.execute(
        select(Followup.result, Followup.sip_call_id, Followup.ticket_id)
        .where(Followup.status == DONE, Followup.result.in_((SATISFIED, DISSATISFIED)),
               Followup.closed_at >= start, Followup.closed_at < end)
    ).tuples().all()
    by_sip = {sip: cid for sip, cid in s.execute(
        select(Call.sip_call_id, Call.id).where(Call.sip_call_id.in_({sip for _, sip, _ in answered if sip}))
    ).tuples()}
    by_ticket = {tid: cid for tid, cid in s.execute(
        select(Ticket.id, Ticket.call_id).where(Ticket.id.in_({t for _, _, t in answered if t is not None}))
    ).tuples()}
    calls = [by_sip.get(sip) if sip else by_ticket.get(tid) if tid is not None else None for _, sip, tid in answered]
    scores: dict[int, int] = {}
    for call_id, score in s.execute(
        select(SurveyAnswer.call_id, SurveyAnswer.score)
        .where(SurveyAnswer.call_id.in_({c for c in calls if c is not None}), SurveyAnswer.score.is_not(None))
        .order_by(SurveyAnswer.answered_at, SurveyAnswer.id)
    ).tuples():
        if score is not None:  # filtered out by the query; mypy does not know
            scores[call_id] = score  # the latest wins
    pairs = {(score, r): 0 for score in SURVEY_LABELS for r in (SATISFIED, DISSATISFIED)}
    for (result, _, _), about in zip(answered, calls, strict=True):
        at_call = scores.get(about) if about is not None else None
        if at_call in SURVEY_LABELS and result is not None:
            pairs[at_call, result] += 1

    reopened: dict[int, Reopened] = {}
    for ticket_id, at, agent, department in s.execute(
        select(TicketHistory.ticket_id, TicketHistory.at, Ticket.agent_number, Ticket.department)
        .join(Ticket, Ticket.id == TicketHistory.ticket_id)
        .where(TicketHistory.actor == ACTOR, TicketHistory.action == "status",
               TicketHistory.status_from == "caller_informed", TicketHistory.status_to == "forwarded",
               TicketHistory.at >= start, TicketHistory.at < end)
        .order_by(TicketHistory.at, TicketHistory.id)
    ).tuples():
        reopened.setdefault(ticket_id, Reopened(ticket_id, aware(at), agent, department))
    return FollowupFigures(reach, pairs, tuple(reopened.values()))


# --- output ------------------------------------------------------------------------------------

RESULT_NAMES = {SATISFIED: "满意", DISSATISFIED: "不满意"}
CSV_COLUMNS = ("figure", "row", "column", "value")


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def csv_rows(f: FollowupFigures) -> list[list[str]]:
    """Long form: (figure, row, column, value), so each of the three figures keeps its own shape."""
    out = [["reach", r.kind, column, value] for r in f.reach
           for column, value in (("attempted", str(r.attempted)), ("reached", str(r.reached)),
                                 ("reach_rate", _share(r.rate)))]
    out += [["satisfaction_pairs", f"call_score_{score}", f"followup_{result}", str(n)]
            for (score, result), n in f.pairs.items()]
    out += [["satisfied_at_call", "all", "share", _share(f.satisfied_at_call)],
            ["satisfied_after_followup", "all", "share", _share(f.satisfied_after_followup)],
            ["reopened", "all", "tickets", str(len(f.reopened))]]
    out += [["reopened", f"ticket_{r.ticket_id}", "agent", r.agent_number or ""] for r in f.reopened]
    return out


def csv_text(f: FollowupFigures) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(csv_rows(f))
    return buffer.getvalue()


def text_lines(f: FollowupFigures) -> list[str]:
    """The CLI's lines."""
    lines = ["followups\tkind\tattempted\treached\treach_rate"]
    lines += [f"reach\t{r.kind}\t{r.attempted}\t{r.reached}\t{_share(r.rate)}" for r in f.reach]
    lines.append(f"satisfaction\tpairs {f.pair_count}\tsatisfied at the call {_share(f.satisfied_at_call)}"
                 f"\tafter the follow-up {_share(f.satisfied_after_followup)}")
    lines += [f"satisfaction\tcall {score} {SURVEY_LABELS[score]}\tfollow-up 满意 {f.pairs[score, SATISFIED]}"
              f"\t不满意 {f.pairs[score, DISSATISFIED]}" for score in SURVEY_LABELS]
    lines.append(f"reopened\t{len(f.reopened)}\t" + " ".join(f"#{r.ticket_id}" for r in f.reopened))
    return lines


_HTML = """\
<table class="report followup-reach">
<thead><tr><th>回访类型</th><th>拨打</th><th>接通客户</th><th>接通率</th></tr></thead>
<tbody>
{% for r in f.reach %}<tr{% if r.kind == 'all' %} class="total"{% endif %} data-kind="{{ r.kind }}">
<td>{{ r.label }}</td><td>{{ r.attempted }}</td><td>{{ r.reached }}</td><td>{{ pct(r.rate) }}</td></tr>
{% endfor %}</tbody></table>
<table class="report followup-satisfaction">
<thead><tr><th>通话后评价 \\ 回访</th><th>满意</th><th>不满意</th></tr></thead>
<tbody>
{% for score, label in labels.items() %}<tr data-score="{{ score }}"><td>{{ label }}</td>
<td>{{ f.pairs[(score, 'satisfied')] }}</td><td>{{ f.pairs[(score, 'dissatisfied')] }}</td></tr>
{% endfor %}<tr class="total"><td>满意率({{ f.pair_count }} 对)</td>
<td colspan="2">通话后 {{ pct(f.satisfied_at_call) }} → 回访后 {{ pct(f.satisfied_after_followup) }}</td></tr>
</tbody></table>
<table class="report followup-reopened">
<thead><tr><th>重新转部门的投诉</th><th>时间</th><th>坐席</th><th>部门</th></tr></thead>
<tbody>
{% for r in f.reopened %}<tr><td>{% if links %}<a href="/tickets/{{ r.ticket_id }}">#{{ r.ticket_id }}</a>
{%- else %}#{{ r.ticket_id }}{% endif %}</td>
<td>{{ r.at.astimezone(zone).strftime('%H:%M') }}</td><td>{{ r.agent_number or '–' }}</td>
<td class="mix">{{ r.department or '–' }}</td></tr>
{% else %}<tr><td colspan="4">无</td></tr>
{% endfor %}</tbody></table>
"""


def html(f: FollowupFigures, zone: object, *, links: bool = True) -> str:
    """The three tables, escaped HTML (`zone`: the report's time zone, for the times; `links`: the re-opened
    tickets link to the desk's ticket pages, which a standalone file cannot reach)."""
    env = Environment(autoescape=True)
    env.globals["pct"] = lambda v: "–" if v is None else f"{v * 100:.1f}%"
    rendered: str = env.from_string(_HTML).render(f=f, labels=SURVEY_LABELS, zone=zone, links=links)
    return rendered
