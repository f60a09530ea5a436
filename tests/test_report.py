"""The daily report against figures computed by hand from a seeded CRM; the day is a Shanghai day."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.orm import Session

from crm_bridge.__main__ import main as crm_cli
from crm_bridge.db import make_engine, migrate
from crm_bridge.models import Call, Survey, SurveyAnswer, SurveyRun, Ticket, TicketHistory
from crm_bridge.report import daily_report, day_bounds, low_scores, overdue_tickets, p90

SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 26)  # Shanghai day = 2026-11-25 16:00 to 2026-11-26 16:00 UTC


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# (started_at, seat_group, agent, outcome, wait, talk, survey, greeting)
CALLS = [
    (utc(2026, 11, 25, 15, 59, 59), "senior", "801", "completed", 1, 10, 1, "normal"),  # 23:59:59 the day before
    (utc(2026, 11, 25, 16, 0, 0), "senior", "801", "completed", 5, 100, 1, "morning"),  # 00:00 local: the first second
    (utc(2026, 11, 25, 23, 30), "senior", "801", "completed", 30, 200, 3, "morning"),
    (utc(2026, 11, 26, 0, 30), "senior", None, "abandoned_queue", 40, None, None, "morning"),
    (utc(2026, 11, 26, 5, 0), "middle", "811", "completed", 10, 60, 2, "normal"),
    (utc(2026, 11, 26, 6, 0), None, None, "silent", None, None, None, "normal"),
    (utc(2026, 11, 26, 7, 0), None, None, "abandoned_ringing", None, None, None, None),
    (utc(2026, 11, 26, 15, 59, 59), "junior", "821", "completed", 2, 30, None, "normal"),  # 23:59:59 local
    (utc(2026, 11, 26, 16, 0, 0), "junior", "821", "completed", 3, 30, 3, "normal"),  # the next day
]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def seeded(request, tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'crm.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = make_engine(url)
    migrate(engine)
    with Session(engine) as s, s.begin():
        for n, (at, group, agent, outcome, wait, talk, score, greeting) in enumerate(CALLS):
            call = Call(
                sip_call_id=f"c{n}",
                caller=f"1380000000{n}",
                callee="95000",
                started_at=at,
                ended_at=at,
                seat_group=group,
                agent_number=agent,
                outcome=outcome,
                queue_wait_s=wait,
                talk_s=talk,
                survey_score=score,
                greeting=greeting,
            )
            s.add(call)
            s.flush()
            if score:
                s.add(
                    Survey(
                        call_id=call.id,
                        at=at,
                        agent_number=agent,
                        seat_group=group,
                        score=score,
                        label={1: "satisfied", 2: "average", 3: "dissatisfied"}[score],
                    )
                )
                # as the IVR writes it: the questionnaire's scored answer (which the figures read) and the run
                s.add(SurveyAnswer(call_id=call.id, questionnaire="satisfaction", version="v1", question="rating",
                                   key=str(score), value={1: "satisfied", 2: "average", 3: "dissatisfied"}[score],
                                   label={1: "满意", 2: "一般", 3: "不满意"}[score], score=score, answered_at=at))
                s.add(SurveyRun(call_id=call.id, questionnaire="satisfaction", version="v1", status="complete",
                                asked=1, answered=1, ended_at=at))
        first = 1
        tickets = [  # (opened, group, agent, status, closed_at, feedback)
            (utc(2026, 11, 25, 17, 0), "senior", "801", "open", None, None),  # opened on the day, not yet due
            (
                utc(2026, 11, 24, 10, 0),
                "middle",
                "811",
                "forwarded",
                None,
                utc(2026, 11, 25, 9, 0),
            ),  # overdue at day end
            (utc(2026, 11, 24, 10, 0), "senior", "801", "closed", utc(2026, 11, 26, 3, 0), None),  # closed on the day
            (utc(2026, 11, 24, 10, 0), "junior", "821", "caller_informed", None, utc(2026, 11, 26, 10, 0)),  # fed back
            (utc(2026, 11, 26, 16, 30), "junior", "821", "open", None, None),  # the next day
        ]
        for opened, group, agent, status, closed_at, feedback in tickets:
            t = Ticket(
                call_id=first,
                customer_phone="13800000000",
                agent_number=agent,
                seat_group=group,
                status=status,
                opened_at=opened,
                next_feedback_due=(feedback or opened).replace(day=(feedback or opened).day + 1),
                closed_at=closed_at,
                last_feedback_at=feedback,
            )
            s.add(t)
            s.flush()
            if feedback:
                s.add(TicketHistory(ticket_id=t.id, at=feedback, actor="801", action="feedback", detail="每日反馈"))
    yield engine, url
    engine.dispose()


def test_shanghai_day_is_utc_16_to_16() -> None:
    assert day_bounds(DAY, SHANGHAI) == (utc(2026, 11, 25, 16), utc(2026, 11, 26, 16))


def test_p90_is_nearest_rank() -> None:
    assert p90([5, 30, 40]) == 40 and p90([2, 5, 10, 30, 40]) == 40 and p90(list(range(1, 11))) == 9 and p90([]) is None


def test_report_figures_match_the_hand_computed_ones(seeded) -> None:  # type: ignore[no-untyped-def]
    engine, _ = seeded
    r = daily_report(engine, DAY, SHANGHAI, service_level_seconds=20, agent_names={"801": "张敏"})
    senior, middle, junior = r.seat_groups
    # senior: calls 2, 3, 4 (the 23:59:59 one belongs to the day before)
    assert (senior.calls, senior.answered, senior.abandoned, senior.silent) == (3, 2, 1, 0)
    assert senior.answer_rate == pytest.approx(2 / 3) and senior.abandon_rate == pytest.approx(1 / 3)
    assert (senior.wait_avg, senior.wait_p90, senior.talk_avg) == (25, 40, 150)
    assert senior.surveys == {1: 1, 2: 0, 3: 1} and senior.survey_avg == 2
    assert (senior.queued, senior.within_service_level) == (3, 1) and senior.service_level == pytest.approx(1 / 3)
    assert (senior.complaints_opened, senior.complaints_overdue, senior.complaints_closed) == (1, 0, 1)
    assert (middle.calls, middle.answered, middle.wait_avg, middle.talk_avg, middle.surveys[2]) == (1, 1, 10, 60, 1)
    assert (middle.complaints_opened, middle.complaints_overdue, middle.complaints_closed) == (0, 1, 0)
    # junior: the 23:59:59 local call counts, the 00:00 one of the next day does not
    assert (junior.calls, junior.wait_avg, junior.talk_avg, junior.surveys[3]) == (1, 2, 30, 0)
    assert (junior.complaints_opened, junior.complaints_overdue, junior.complaints_closed) == (0, 0, 0)

    t = r.total
    assert (t.calls, t.answered, t.abandoned, t.silent) == (7, 4, 2, 1)
    assert t.silent_share == pytest.approx(1 / 7) and t.answer_rate == pytest.approx(4 / 7)
    assert (t.wait_avg, t.wait_p90, t.talk_avg) == (pytest.approx(17.4), 40, 97.5)
    assert t.greetings == {"morning": 3, "normal": 3, "-": 1}
    assert (t.complaints_opened, t.complaints_overdue, t.complaints_closed) == (1, 1, 1)

    agents = {a.key: a for a in r.agents}
    assert set(agents) == {"801", "811", "821"}
    assert agents["801"].label == "801 张敏"
    assert (agents["801"].calls, agents["801"].wait_avg, agents["801"].wait_p90, agents["801"].talk_avg) == (
        2,
        17.5,
        30,
        150,
    )
    assert (agents["801"].complaints_opened, agents["801"].complaints_closed) == (1, 1)
    assert (
        r.calls_by_hour[0] == 1 and r.calls_by_hour[7] == 1 and r.calls_by_hour[23] == 1 and sum(r.calls_by_hour) == 7
    )


def test_low_scores_and_overdue_use_the_shanghai_day(seeded) -> None:  # type: ignore[no-untyped-def]
    engine, _ = seeded
    # the score-3 survey at 2026-11-25 23:30 UTC is 07:30 on the 26th in Shanghai; the 16:00 UTC one is the 27th
    assert [(s.score, caller) for s, caller, _ in low_scores(engine, DAY, SHANGHAI)] == [
        (3, "13800000002"),
        (2, "13800000004"),
    ]
    assert [s.score for s, _, _ in low_scores(engine, date(2026, 11, 27), SHANGHAI)] == [3]
    # now = the day's end: the forwarded middle ticket (fed back 25th 09:00) is due 26th 09:00 and overdue
    assert [t.seat_group for t in overdue_tickets(engine, utc(2026, 11, 26, 16))] == ["middle"]


def test_report_cli_writes_csv_html_and_charts(seeded, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    _, url = seeded
    html, csv_dir = tmp_path / "r" / "report.html", tmp_path / "csv"
    cli = ["--db-url", url, "--config", str(tmp_path / "none.conf")]
    assert crm_cli([*cli, "report", "--date", "2026-11-26", "--html", str(html), "--csv", str(csv_dir)]) == 0
    out = capsys.readouterr().out
    assert "UTC 2026-11-25 16:00 to 2026-11-26 16:00" in out
    rows = (csv_dir / "seat_groups-2026-11-26.csv").read_text(encoding="utf-8-sig").splitlines()
    assert rows[1].startswith("senior,高级坐席组,3,2,0.667,1,0.333,0,0.000,3,0.333,25.0,40.0,150.0,1,0,1,2.00,1,0,1,")
    assert rows[-1].startswith("all,全部,7,4,0.571,2,0.286,1,0.143,5,")
    assert (csv_dir / "agents-2026-11-26.csv").read_text(encoding="utf-8-sig").count("\n") == 4
    page = html.read_text(encoding="utf-8")
    assert "热线日报 2026-11-26" in page and page.count("data:image/png;base64,") == 3
    assert "<td>高级坐席组</td><td>3</td><td>2</td>" in page


def test_the_report_counts_each_questions_keys_and_how_the_questionnaires_ended(seeded, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                               capsys: pytest.CaptureFixture[str]) -> None:
    engine, url = seeded
    with Session(engine) as s, s.begin():
        junior = s.query(Call).filter_by(sip_call_id="c7").one()  # 821's call at 23:59:59 local, no score
        for question, key, label, followup in (("resolved", "2", "否", False), ("callback", "1", "需要回访", True)):
            s.add(SurveyAnswer(call_id=junior.id, questionnaire="after_sales", version="v2", question=question,
                               key=key, value=key, label=label, followup=followup, answered_at=junior.started_at))
        s.add(SurveyRun(call_id=junior.id, questionnaire="after_sales", version="v2", status="partial", asked=3,
                        answered=2, ended_at=junior.started_at))
    r = daily_report(engine, DAY, SHANGHAI)
    questions = {(q.questionnaire, q.question): q for q in r.questions}
    assert questions["satisfaction", "rating"].keys == (("1", "满意", 1), ("2", "一般", 1), ("3", "不满意", 1))
    assert questions["satisfaction", "rating"].answered == 3  # the day's three scored calls; the 27th's is not in
    assert (questions["after_sales", "callback"].keys, questions["after_sales", "callback"].followups) == (
        (("1", "需要回访", 1),), 1)
    assert {run.questionnaire: run.statuses for run in r.survey_runs} == {
        "after_sales": {"complete": 0, "partial": 1, "skipped": 0},
        "satisfaction": {"complete": 3, "partial": 0, "skipped": 0},
    }
    # answers without a score change no score figure
    assert {g.key: g.surveys for g in r.seat_groups}["junior"] == {1: 0, 2: 0, 3: 0}

    cli = ["--db-url", url, "--config", str(tmp_path / "none.conf")]
    assert crm_cli([*cli, "report", "--date", "2026-11-26", "--csv", str(tmp_path / "csv"),
                    "--html", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert "satisfaction/rating\tanswered 3\t1 满意 1  2 一般 1  3 不满意 1" in out
    assert "after_sales\tcomplete 0\tpartial 1\tskipped 0" in out
    rows = (tmp_path / "csv" / "questions-2026-11-26.csv").read_text(encoding="utf-8-sig").splitlines()
    assert rows[0] == "questionnaire,question,key,label,answers,share,followups"
    assert "after_sales,callback,1,需要回访,1,1.000,1" in rows
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert '<td>after_sales</td><td class="mix">callback</td><td>1</td><td class="mix">需要回访</td>\n<td>1</td>' in page
    # questionnaires by name, questions in the order they were asked
    assert [(q.questionnaire, q.question) for q in r.questions] == [
        ("after_sales", "resolved"), ("after_sales", "callback"), ("satisfaction", "rating")]
