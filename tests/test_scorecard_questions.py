"""Scorecards: per agent, how the callers answered each scored question, on a Shanghai day.

Period: the Shanghai day 2026-12-02 = 2026-12-01 16:00 to 2026-12-02 16:00 UTC; the seed has answers on both of
its edges and on both sides of UTC midnight inside it. Expected values are counted by hand from the seed.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from crm_bridge.__main__ import main as crm_cli
from crm_bridge.db import make_engine, migrate
from crm_bridge.models import Call, SurveyAnswer
from crm_bridge.scorecards import QUESTIONS_DEFINITION, Period, question_rows, questions_html, scorecards

from .conftest import ROOT
from .test_desk import desk, login  # noqa: F401 (the desk fixture)

SHANGHAI = ZoneInfo("Asia/Shanghai")
DEC2 = Period(date(2026, 12, 2), date(2026, 12, 2), SHANGHAI)


def utc(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    return datetime(2026, 12, day, hour, minute, second, tzinfo=UTC)


# (agent, questionnaire, question, key, label, score, answered)
ANSWERS = [
    ("801", "satisfaction", "rating", "1", "满意", 1, utc(1, 23, 59, 59)),  # 07:59:59 local, Dec 2
    ("801", "satisfaction", "rating", "1", "满意", 1, utc(2, 0, 0, 0)),  # 08:00 local
    ("801", "satisfaction", "rating", "3", "不满意", 3, utc(2, 15, 59, 59)),  # 23:59:59 local: still Dec 2
    ("801", "satisfaction", "rating", "2", "一般", 2, utc(1, 15, 59, 59)),  # 23:59:59 local, Dec 1: out
    ("801", "satisfaction", "resolved", "1", "已解决", None, utc(2, 1)),  # not scored: out
    ("802", "satisfaction", "rating", "2", "一般", 2, utc(2, 3)),
    ("802", "satisfaction", "rating", "2", "一般", 2, utc(2, 16, 0, 0)),  # 00:00 local, Dec 3: out
    ("802", "complaint", "handling", "3", "不满意", 3, utc(2, 4)),
    (None, "satisfaction", "rating", "3", "不满意", 3, utc(2, 5)),  # no agent took the call: out
]


def seed(engine: Engine) -> None:
    with Session(engine) as s, s.begin():
        for n, (agent, qn, q, key, label, score, at) in enumerate(ANSWERS):
            call = Call(sip_call_id=f"q{n}", caller=f"1380000{n:04d}", callee="95000", started_at=at,
                        agent_number=agent, seat_group="senior")
            s.add(call)
            s.flush()
            s.add(SurveyAnswer(call_id=call.id, questionnaire=qn, version="v1", question=q, key=key, value=key,
                               label=label, score=score, answered_at=at))


@pytest.fixture
def crm(tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = make_engine(url)
    migrate(engine)
    seed(engine)
    yield engine, url
    engine.dispose()


def test_each_agents_answers_to_each_scored_question_are_counted_by_key_on_the_local_day(crm) -> None:  # type: ignore[no-untyped-def]
    engine, _ = crm
    cards = scorecards(engine, DEC2)
    got = {(d.questionnaire, d.question): (d.keys, d.counts) for d in cards.questions}
    assert got == {
        ("complaint", "handling"): ((("3", "不满意"),), {"802": {"3": 1}}),
        ("satisfaction", "rating"): ((("1", "满意"), ("2", "一般"), ("3", "不满意")),
                                     {"801": {"1": 2, "3": 1}, "802": {"2": 1}}),
    }
    assert [c.agent for c in cards.cards] == ["801", "802"]


def test_the_rows_give_each_agents_share_of_each_key(crm) -> None:  # type: ignore[no-untyped-def]
    engine, _ = crm
    rows = question_rows(scorecards(engine, DEC2))
    assert rows == [
        ["questionnaire", "question", "agent", "key", "label", "answers", "share"],
        ["complaint", "handling", "802", "3", "不满意", "1", "1.000"],
        ["satisfaction", "rating", "801", "1", "满意", "2", "0.667"],
        ["satisfaction", "rating", "801", "3", "不满意", "1", "0.333"],
        ["satisfaction", "rating", "802", "2", "一般", "1", "1.000"],
    ]


def test_the_day_before_has_only_its_own_answer(crm) -> None:  # type: ignore[no-untyped-def]
    engine, _ = crm
    dec1 = scorecards(engine, Period(date(2026, 12, 1), date(2026, 12, 1), SHANGHAI))
    assert [(d.question, d.counts) for d in dec1.questions] == [("rating", {"801": {"2": 1}})]


def test_the_command_prints_and_writes_the_per_question_csv_and_the_page_shows_it(crm, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                                   capsys: pytest.CaptureFixture[str],
                                                                                   ) -> None:
    _, url = crm
    out, html = tmp_path / "week.csv", tmp_path / "week.html"
    assert crm_cli(["--db-url", url, "scorecard", "--from", "2026-12-02", "--to", "2026-12-02", "--csv", str(out),
                    "--html", str(html)]) == 0
    assert "satisfaction\trating\t801\t1\t满意\t2\t0.667" in capsys.readouterr().out
    lines = (tmp_path / "week-questions.csv").read_text(encoding="utf-8-sig").splitlines()
    assert lines[0] == "questionnaire,question,agent,key,label,answers,share" and len(lines) == 5
    page = html.read_text(encoding="utf-8")
    assert 'id="question-satisfaction-rating-801"' in page and "2\n(67%)" in page


def test_no_scored_answers_no_table(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    migrate(engine)
    assert questions_html(scorecards(engine, DEC2)) == ""


def test_the_desk_scorecards_page_shows_the_distributions(desk) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    client, engine, _ = desk
    seed(engine)
    assert login(client, "王经理", "supervisor-pw").status_code == 200
    page = client.get("/scorecards?from=2026-12-02&to=2026-12-02").text
    assert 'id="scorecard-questions"' in page and 'id="question-complaint-handling-802"' in page


def test_the_docs_quote_the_definition() -> None:
    docs = (ROOT / "docs" / "surveys-and-followups.md").read_text(encoding="utf-8")
    assert QUESTIONS_DEFINITION in docs.replace("\n", " ")
