"""The daily report's follow-up figures (回访) against values computed by hand from a seeded CRM.

The day is the Shanghai day 2026-11-26: 2026-11-25 16:00 to 2026-11-26 16:00 UTC. The seed puts facts on
both sides of its edges and on both sides of UTC midnight inside it (07:59:59 / 08:00 local), where a
report that cut days at UTC midnight would split them.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from crm_bridge.__main__ import main as crm_cli
from crm_bridge.db import make_engine, migrate
from crm_bridge.followup_report import DEFINITIONS, definitions_markdown
from crm_bridge.models import Call, Followup, SurveyAnswer, Ticket, TicketHistory
from crm_bridge.report import daily_report, standalone_html

from .conftest import ROOT
from .test_desk import desk, login  # noqa: F401 (the desk fixture)

SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 26)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


BEFORE_UTC_MIDNIGHT = utc(2026, 11, 25, 23, 59, 59)  # 07:59:59 local on the 26th
UTC_MIDNIGHT = utc(2026, 11, 26, 0, 0, 0)  # 08:00 local on the 26th
LAST_SECOND = utc(2026, 11, 26, 15, 59, 59)  # 23:59:59 local: still the 26th
NEXT_DAY = utc(2026, 11, 26, 16, 0, 0)  # 00:00 local on the 27th
DAY_BEFORE = utc(2026, 11, 25, 15, 59, 59)  # 23:59:59 local on the 25th


def seed(engine: Engine) -> dict[str, int]:
    """Calls a..d with their scored answers, tickets T1..T6, follow-ups 1..13; returns the ticket ids by name."""
    ids: dict[str, int] = {}
    with Session(engine) as s, s.begin():
        calls: dict[str, Call] = {}
        for name in "abcd":
            calls[name] = Call(sip_call_id=name, caller=f"1390000000{'abcd'.index(name)}", callee="95000",
                               started_at=utc(2026, 11, 20, 2), agent_number="801", seat_group="senior")
            s.add(calls[name])
        s.flush()
        # the scored answer at the end of each call: a 1, b 3, c first 1 then 2 (the latest counts), d none
        for name, score, later in (("a", 1, 0), ("b", 3, 0), ("c", 1, 0), ("c", 2, 5)):
            s.add(SurveyAnswer(call_id=calls[name].id, questionnaire="satisfaction", version="v1",
                               question="rating" if later == 0 else "rating_again", key=str(score), value=str(score),
                               label="x", score=score, answered_at=utc(2026, 11, 20, 2, 10 + later)))
        for name, call in (("T1", "b"), ("T2", "a"), ("T3", "a"), ("T4", "a"), ("T5", "b"), ("T6", "b")):
            t = Ticket(call_id=calls[call].id, customer_phone=calls[call].caller, agent_number="801",
                       seat_group="senior", status="forwarded", opened_at=utc(2026, 11, 20, 3),
                       next_feedback_due=utc(2026, 11, 21, 3), department="售后服务部")
            s.add(t)
            s.flush()
            ids[name] = t.id
        reopen = [("T1", BEFORE_UTC_MIDNIGHT, "回访"), ("T5", UTC_MIDNIGHT, "回访"),
                  ("T5", utc(2026, 11, 26, 8), "回访"),  # again the same day: one ticket
                  ("T3", NEXT_DAY, "回访"), ("T4", DAY_BEFORE, "回访"),
                  ("T6", utc(2026, 11, 26, 5), "821")]  # an agent sent it back at the desk: not a follow-up
        for name, at, actor in reopen:
            s.add(TicketHistory(ticket_id=ids[name], at=at, actor=actor, action="status",
                                status_from="caller_informed", status_to="forwarded", detail="电话回访: 不满意"))
        s.add(TicketHistory(ticket_id=ids["T2"], at=utc(2026, 11, 26, 1), actor="回访", action="status",
                            status_from="caller_informed", status_to="closed"))  # satisfied: closed, not re-opened
        # (kind, status, result, last attempt, closed, sip_call_id, ticket)
        followups = [
            ("resolved", "done", "satisfied", BEFORE_UTC_MIDNIGHT, utc(2026, 11, 26, 0, 0, 30), None, "T2"),  # 1
            ("resolved", "done", "dissatisfied", UTC_MIDNIGHT, utc(2026, 11, 26, 0, 1), None, "T1"),  # 2
            ("resolved", "due", "no_answer", utc(2026, 11, 26, 3), None, None, "T3"),  # 3
            ("resolved", "unreachable", "busy", LAST_SECOND, LAST_SECOND, None, "T4"),  # 4
            ("resolved", "done", "satisfied", NEXT_DAY, utc(2026, 11, 26, 16, 0, 30), None, "T2"),  # 5: the 27th
            ("survey", "done", "satisfied", utc(2026, 11, 26, 2), utc(2026, 11, 26, 2, 1), "c", None),  # 6
            ("survey", "done", "dissatisfied", utc(2026, 11, 26, 2), utc(2026, 11, 26, 2, 1), "d", None),  # 7
            ("survey", "done", "agent", utc(2026, 11, 26, 2), utc(2026, 11, 26, 2, 1), "a", None),  # 8
            ("daily", "done", "heard", utc(2026, 11, 26, 5), utc(2026, 11, 26, 5, 1), None, "T5"),  # 9
            ("daily", "dialling", None, utc(2026, 11, 26, 6), None, None, "T5"),  # 10: still on the phone
            ("wrap_up", "closed", "on_do_not_call", utc(2026, 11, 26, 7), utc(2026, 11, 26, 7), "a", None),  # 11
            ("resolved", "done", "satisfied", utc(2026, 11, 25, 15, 59), DAY_BEFORE, None, "T2"),  # 12: the 25th
            ("wrap_up", "due", "declined", utc(2026, 11, 25, 16), None, "b", None),  # 13: 00:00 local, the 26th
        ]
        for n, (kind, status, result, last, closed, sip, ticket) in enumerate(followups, start=1):
            s.add(Followup(trigger_key=f"seed:{n}", kind=kind, number="13900000000", status=status, result=result,
                           created_at=utc(2026, 11, 20), due_at=utc(2026, 11, 20), attempts=1, last_attempt_at=last,
                           closed_at=closed, sip_call_id=sip, ticket_id=ids[ticket] if ticket else None))
    return ids


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def seeded(request, tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'crm.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = make_engine(url)
    migrate(engine)
    ids = seed(engine)
    yield engine, url, ids
    engine.dispose()


def test_reach_rate_counts_each_followup_on_the_shanghai_day_of_its_latest_attempt(seeded) -> None:  # type: ignore[no-untyped-def]
    engine, _, _ = seeded
    f = daily_report(engine, DAY, SHANGHAI).followups
    assert f is not None
    reach = {r.kind: (r.attempted, r.reached) for r in f.reach}
    # resolved: 1 (07:59:59) and 2 (08:00) reached, 3 and 4 (23:59:59) not; 5 is the 27th, 12 the 25th
    # wrap_up: 13 (00:00 local) not reached; 11 was closed at dial time (do-not-call): not an attempt
    # daily: 9 heard; 10 still dialling: not counted yet. survey: 6, 7, 8 all reached
    assert reach == {"resolved": (4, 2), "wrap_up": (1, 0), "daily": (1, 1), "survey": (3, 3), "all": (9, 6)}
    assert [r.kind for r in f.reach] == ["resolved", "wrap_up", "daily", "survey", "all"]
    rates = {r.kind: r.rate for r in f.reach}
    assert rates["resolved"] == 0.5 and rates["wrap_up"] == 0.0 and rates["all"] == pytest.approx(6 / 9)


def test_satisfaction_pairs_the_followup_answer_with_the_calls_latest_scored_answer(seeded) -> None:  # type: ignore[no-untyped-def]
    engine, _, _ = seeded
    f = daily_report(engine, DAY, SHANGHAI).followups
    assert f is not None
    # 1: ticket T2 -> call a (1) satisfied; 2: T1 -> b (3) dissatisfied; 6: call c (1 then 2: 2) satisfied;
    # 7: call d has no score; 8 answered "agent"; 5 and 12 were answered on other days
    assert {k: n for k, n in f.pairs.items() if n} == {(1, "satisfied"): 1, (3, "dissatisfied"): 1,
                                                        (2, "satisfied"): 1}
    assert f.pair_count == 3
    assert f.satisfied_at_call == pytest.approx(1 / 3)
    assert f.satisfied_after_followup == pytest.approx(2 / 3)


def test_reopened_complaints_are_the_followups_sends_back_to_the_department_one_per_ticket(seeded) -> None:  # type: ignore[no-untyped-def]
    engine, _, ids = seeded
    f = daily_report(engine, DAY, SHANGHAI).followups
    assert f is not None
    # T1 at 07:59:59 and T5 at 08:00 (and again at 16:00 local); T3 is the 27th, T4 the 25th, T6 an agent's
    assert [r.ticket_id for r in f.reopened] == [ids["T1"], ids["T5"]]
    assert f.reopened[0].at == BEFORE_UTC_MIDNIGHT and f.reopened[0].department == "售后服务部"
    # the next day holds T3 and follow-up 5 only
    nxt = daily_report(engine, DAY + timedelta(days=1), SHANGHAI).followups
    assert nxt is not None
    assert [r.ticket_id for r in nxt.reopened] == [ids["T3"]]
    assert {r.kind: (r.attempted, r.reached) for r in nxt.reach} == {"resolved": (1, 1), "all": (1, 1)}


def test_a_day_without_followups_has_no_rates_rather_than_zero(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(engine)
    f = daily_report(engine, DAY, SHANGHAI).followups
    assert f is not None
    assert [(r.kind, r.attempted, r.rate) for r in f.reach] == [("all", 0, None)]
    assert f.satisfied_at_call is None and f.reopened == ()


def test_report_cli_prints_and_writes_the_followup_figures(seeded, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    _, url, ids = seeded
    out = tmp_path / "out"
    html = tmp_path / "report.html"
    assert crm_cli(["--db-url", url, "report", "--date", "2026-11-26", "--csv", str(out), "--html", str(html)]) == 0
    text = capsys.readouterr().out
    assert "reach\tresolved\t4\t2\t0.500" in text and "reach\tall\t9\t6\t0.667" in text
    assert "satisfaction\tpairs 3\tsatisfied at the call 0.333\tafter the follow-up 0.667" in text
    assert f"reopened\t2\t#{ids['T1']} #{ids['T5']}" in text
    rows = (out / "followups-2026-11-26.csv").read_text(encoding="utf-8-sig").splitlines()
    assert rows[0] == "figure,row,column,value"
    assert "reach,survey,reach_rate,1.000" in rows and "satisfaction_pairs,call_score_3,followup_dissatisfied,1" in rows
    assert "reopened,all,tickets,2" in rows
    page = html.read_text(encoding="utf-8")
    assert "回访" in page and 'data-kind="resolved"' in page and "通话后 33.3% → 回访后 66.7%" in page
    assert f"<td>#{ids['T1']}</td>" in page and 'href="/tickets/' not in page  # no desk to link to


def test_report_html_escapes_what_the_crm_holds(seeded) -> None:  # type: ignore[no-untyped-def]
    engine, _, ids = seeded
    with Session(engine) as s, s.begin():
        s.get_one(Ticket, ids["T1"]).department = "<script>x</script>"
    page = standalone_html(daily_report(engine, DAY, SHANGHAI), {})
    assert "<script>x" not in page and "&lt;script&gt;x" in page


def test_the_desk_report_page_shows_the_followup_tables(desk) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    client, engine, _ = desk
    ids = seed(engine)
    assert login(client, "王经理", "supervisor-pw").status_code == 200
    page = client.get("/report?date=2026-11-26").text
    assert 'id="report-followups"' in page
    assert f'href="/tickets/{ids["T1"]}"' in page and f'href="/tickets/{ids["T3"]}"' not in page
    assert "66.7%" in page  # the reach rate of all kinds, and the share satisfied after the follow-up


def test_the_docs_quote_every_followup_figure_definition() -> None:
    docs = (ROOT / "docs" / "surveys-and-followups.md").read_text(encoding="utf-8")
    assert len(DEFINITIONS) == len({d.key for d in DEFINITIONS})
    assert definitions_markdown() in docs, "paste crm_bridge.followup_report.definitions_markdown() into the docs"
