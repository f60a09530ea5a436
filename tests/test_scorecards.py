"""Agent scorecards on a seeded CRM whose calls straddle UTC midnight's Shanghai twin.

The calls run 15:30–16:30 UTC on 2026-12-01, which is 23:30–00:30 in
Shanghai: everything before 16:00 UTC belongs to the local day 2026-12-01,
everything after to 2026-12-02. Every expected value below is worked out by
hand from the seed (the comments show the sums).
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from crm_bridge.db import make_engine, migrate
from crm_bridge.models import AgentStateChange, Call, CallEvent, Survey, Ticket
from crm_bridge.scorecards import FIGURES, Period, PeriodError, csv_text, definitions_markdown, scorecards

SHANGHAI = ZoneInfo("Asia/Shanghai")
DEC2 = Period(date(2026, 12, 2), date(2026, 12, 2), SHANGHAI)  # 2026-12-01 16:00 to 2026-12-02 16:00 UTC
NOW = datetime(2026, 12, 10, tzinfo=UTC)
ROOT = Path(__file__).resolve().parent.parent


def utc(day: int, hh: int, mm: int, ss: int = 0) -> datetime:
    return datetime(2026, 12, day, hh, mm, ss, tzinfo=UTC) if day > 0 else datetime(2026, 11, 30, hh, mm, tzinfo=UTC)


# (call key, started, caller, outcome, last agent); day 0 is 2026-11-30
CALLS = [
    ("c0", utc(0, 10, 0), "13800000006", "abandoned_queue", None),
    ("c1", utc(1, 15, 30), "13800000001", "completed", "801"),  # 23:30 Shanghai, Dec 1
    ("c2", utc(1, 15, 50), "13800000002", "completed", "801"),  # answered 15:58: still Dec 1
    ("c3", utc(1, 16, 5), "13800000001", "completed", "802"),  # 00:05 Dec 2: 801 answers, transfers to 802
    ("c4", utc(1, 16, 12), "13800000003", "completed", "801"),
    ("c5", utc(1, 16, 20), "13800000003", "completed", "802"),  # the caller of c4 again: c4 is a repeat
    ("c6", utc(1, 16, 25), "13800000004", "abandoned_queue", None),
    ("c8", utc(2, 3, 0), "13800000006", "completed", "801"),  # its caller called before (c0), never after
    ("c7", utc(2, 16, 10), "13800000002", "completed", "802"),  # 00:10 Dec 3: outside
    ("c9", utc(5, 9, 0), "13800000001", "completed", None),  # c3's caller again within 7 days
    ("c10", utc(3, 2, 0), "13800000006", "callback_completed", "801"),  # the hotline calls c8's caller: no repeat
]
# (call key, at, kind, detail)
STEPS = [
    ("c1", utc(1, 15, 31), "agent_answered", "agent=801 seat_group=senior queue_wait_s=60.0"),
    ("c2", utc(1, 15, 58), "agent_answered", "agent=801 seat_group=senior queue_wait_s=480.0"),
    ("c3", utc(1, 16, 6), "agent_answered", "agent=801 seat_group=senior queue_wait_s=60.0"),
    ("c3", utc(1, 16, 10), "transferred", "from=801 to=junior seat_group=junior"),
    ("c3", utc(1, 16, 11), "agent_answered", "agent=802 seat_group=junior transfer=yes"),
    ("c4", utc(1, 16, 15), "agent_answered", "agent=801 seat_group=senior queue_wait_s=180.0"),
    ("c5", utc(1, 16, 22), "agent_answered", "agent=802 seat_group=junior queue_wait_s=120.0"),
    ("c8", utc(2, 3, 1), "agent_answered", "agent=801 seat_group=senior queue_wait_s=60.0"),
    ("c7", utc(2, 16, 11), "agent_answered", "agent=802 seat_group=junior queue_wait_s=60.0"),
]
# (call key, at, agent, score)
SURVEYS = [
    ("c1", utc(1, 15, 40), "801", 1),  # Dec 1
    ("c2", utc(1, 16, 3), "801", 2),  # the survey of a Dec 1 call, given on Dec 2
    ("c3", utc(1, 16, 19), "802", 1),
    ("c4", utc(1, 16, 25), "801", 3),
    ("c7", utc(2, 16, 20), "802", 3),  # Dec 3
]
# (call key, opened, agent)
TICKETS = [("c1", utc(1, 15, 31), "801"), ("c3", utc(1, 16, 6), "801"), ("c5", utc(1, 16, 22), "802")]
# (agent, at, state): each lasts until the agent's next row
STATES = [
    ("801", utc(1, 15, 57), "ringing"),
    ("801", utc(1, 15, 58), "talking"),  # 2 min of it (16:00-16:02) fall in Dec 2
    ("801", utc(1, 16, 2), "wrap_up"),
    ("801", utc(1, 16, 4), "available"),
    ("801", utc(1, 16, 5, 30), "ringing"),
    ("801", utc(1, 16, 6), "talking"),
    ("801", utc(1, 16, 10), "wrap_up"),
    ("801", utc(1, 16, 12), "available"),
    ("801", utc(1, 16, 14, 30), "ringing"),
    ("801", utc(1, 16, 15), "talking"),
    ("801", utc(1, 16, 24), "wrap_up"),
    ("801", utc(1, 16, 26), "available"),
    ("801", utc(1, 17, 0), "paused"),
    ("801", utc(1, 18, 0), "logged_out"),
    ("801", utc(2, 2, 0), "available"),
    ("801", utc(2, 3, 0, 30), "ringing"),
    ("801", utc(2, 3, 1), "talking"),
    ("801", utc(2, 3, 5), "wrap_up"),
    ("801", utc(2, 3, 6), "available"),
    ("801", utc(2, 3, 10), "logged_out"),
    ("802", utc(1, 15, 40), "available"),  # the state 802 is in when Dec 2 begins
    ("802", utc(1, 16, 10, 30), "ringing"),
    ("802", utc(1, 16, 11), "talking"),
    ("802", utc(1, 16, 18), "wrap_up"),
    ("802", utc(1, 16, 20), "available"),
    ("802", utc(1, 16, 21, 30), "ringing"),
    ("802", utc(1, 16, 22), "talking"),
    ("802", utc(1, 16, 30), "wrap_up"),
    ("802", utc(1, 16, 33), "available"),
    ("802", utc(1, 16, 45), "logged_out"),
    ("802", utc(2, 15, 50), "available"),  # runs past the day's end: 10 min counted
    ("802", utc(2, 16, 5), "logged_out"),
]

# Dec 2 (Shanghai), by hand:
# 801 answered c3 16:06, c4 16:15, c8 03:01 = 3 (c1, c2 answered before 16:00 UTC: Dec 1)
#     talking 120 (16:00-16:02) + 240 + 540 + 240 = 1140; wrap-up 120 + 120 + 120 + 60 = 420
#     ringing 30 * 3 = 90; paused 3600; available 90 + 150 + 2040 + 3630 + 240 = 6150
#     AHT (1140 + 420) / 3 = 520; occupancy 1560 / (6150 + 90 + 1560) = 0.2
#     surveys 2 (c2's, given 16:03) and 3: avg 2.5, CSAT 0; complaint c3; transfer c3
#     repeats: c3 (caller 01 again on Dec 5) and c4 (caller 03 again at 16:20), not c8: 2 of 3
# 802 answered c3 16:11 (after the transfer), c5 16:22 = 2 (c7 is Dec 3)
#     talking 420 + 480 = 900; wrap-up 120 + 180 = 300; ringing 60
#     available 630 (16:00-16:10:30) + 90 + 720 + 600 (15:50-16:00 Dec 2) = 2040
#     AHT 1200 / 2 = 600; occupancy 1200 / 3300 = 0.364
#     survey 1: avg 1, CSAT 1; complaint c5; repeats: c3 yes, c5 no (nobody calls from 03 after it): 1 of 2
EXPECTED_DEC2 = {
    "801": {"calls_answered": 3, "aht_s": 520.0, "holds": None, "transfers": 1, "survey_1": 0, "survey_2": 1,
            "survey_3": 1, "csat": 0.0, "survey_avg": 2.5, "qa_avg": None, "qa_fatal": None, "complaints": 1,
            "repeat_calls": 2, "repeat_rate": 2 / 3, "available_s": 6150.0, "ringing_s": 90.0,
            "talking_s": 1140.0, "wrap_up_s": 420.0, "paused_s": 3600.0, "occupancy": 0.2},
    "802": {"calls_answered": 2, "aht_s": 600.0, "holds": None, "transfers": 0, "survey_1": 1, "survey_2": 0,
            "survey_3": 0, "csat": 1.0, "survey_avg": 1.0, "qa_avg": None, "qa_fatal": None, "complaints": 1,
            "repeat_calls": 1, "repeat_rate": 0.5, "available_s": 2040.0, "ringing_s": 60.0,
            "talking_s": 900.0, "wrap_up_s": 300.0, "paused_s": 0.0, "occupancy": 1200 / 3300},
}
EXPECTED_CSV_DEC2 = [
    ["agent", "name", *(f.key for f in FIGURES)],
    ["801", "张敏", "3", "520.0", "", "1", "0", "1", "1", "0.000", "2.50", "", "", "1", "2", "0.667",
     "6150.0", "90.0", "1140.0", "420.0", "3600.0", "0.200"],
    ["802", "李强", "2", "600.0", "", "0", "1", "0", "0", "1.000", "1.00", "", "", "1", "1", "0.500",
     "2040.0", "60.0", "900.0", "300.0", "0.0", "0.364"],
    ["803", "王芳", "0", "", "", "0", "0", "0", "0", "", "", "", "", "0", "0", "", "", "", "", "", "", ""],
]
NAMES = {"801": "张敏", "802": "李强", "803": "王芳"}


def seed(engine: Engine) -> None:
    with Session(engine) as s, s.begin():
        ids: dict[str, int] = {}
        for key, started, caller, outcome, agent in CALLS:
            call = Call(sip_call_id=f"{key}@seed", caller=caller, callee="95555", started_at=started,
                        answered_at=started, ended_at=started + timedelta(minutes=10), outcome=outcome,
                        agent_number=agent, talk_s=300.0 if agent else None)
            s.add(call)
            s.flush()
            ids[key] = call.id
        s.add_all(CallEvent(call_id=ids[key], at=at, kind=kind, detail=detail) for key, at, kind, detail in STEPS)
        s.add_all(Survey(call_id=ids[key], at=at, agent_number=agent, seat_group=None, score=score, label=str(score))
                  for key, at, agent, score in SURVEYS)
        s.add_all(Ticket(call_id=ids[key], customer_phone="x", agent_number=agent, opened_at=at,
                         next_feedback_due=at + timedelta(days=1)) for key, at, agent in TICKETS)
        s.add_all(AgentStateChange(agent_number=agent, at=at, state=state) for agent, at, state in STATES)


@pytest.fixture
def crm(tmp_path: Path) -> tuple[Engine, str]:
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    engine = make_engine(url)
    migrate(engine)
    seed(engine)
    return engine, url


@pytest.mark.parametrize("key", [f.key for f in FIGURES])
def test_each_figure_on_the_local_day_after_utc_midnight_matches_the_hand_computed_value(crm, key: str) -> None:  # type: ignore[no-untyped-def]
    cards = scorecards(crm[0], DEC2, agent_names=NAMES, now=NOW)
    by_agent = {c.agent: c for c in cards.cards}
    for agent, expected in EXPECTED_DEC2.items():
        assert by_agent[agent][key] == pytest.approx(expected[key]), (agent, key)
    counts = {"calls_answered", "transfers", "survey_1", "survey_2", "survey_3", "complaints", "repeat_calls"}
    assert by_agent["803"][key] == (0 if key in counts else None)  # configured, did nothing


def test_the_local_day_before_takes_the_calls_before_16_utc(crm) -> None:  # type: ignore[no-untyped-def]
    dec1 = Period(date(2026, 12, 1), date(2026, 12, 1), SHANGHAI)
    card = {c.agent: c for c in scorecards(crm[0], dec1, now=NOW).cards}["801"]
    # c1 and c2 answered at 15:31 and 15:58 UTC; c1's survey and complaint; 1 min ringing, 2 min talking to 16:00
    assert (card["calls_answered"], card["survey_1"], card["survey_2"], card["complaints"]) == (2, 1, 0, 1)
    assert (card["ringing_s"], card["talking_s"], card["available_s"]) == (60.0, 120.0, 0.0)
    # c1's caller called again at 16:05 (c3), c2's on Dec 3 (c7): within 7 days, though after the period
    assert (card["repeat_calls"], card["repeat_rate"]) == (2, 1.0)


def test_a_period_of_two_days_adds_them_up(crm) -> None:  # type: ignore[no-untyped-def]
    both = Period(date(2026, 12, 1), date(2026, 12, 2), SHANGHAI)
    card = {c.agent: c for c in scorecards(crm[0], both, now=NOW).cards}["801"]
    assert card["calls_answered"] == 5 and card["talking_s"] == 120.0 + 1140.0
    assert (card["survey_1"], card["survey_2"], card["survey_3"]) == (1, 1, 1)


def test_a_running_period_counts_the_open_state_only_until_now(crm) -> None:  # type: ignore[no-untyped-def]
    # 802 became available at 15:50 UTC on Dec 2; asked at 15:55 only 5 of those minutes have happened
    card = {c.agent: c for c in scorecards(crm[0], DEC2, now=utc(2, 15, 55)).cards}["802"]
    assert card["available_s"] == 2040.0 - 300.0


def test_a_period_ending_before_it_starts_or_too_long_is_refused() -> None:
    with pytest.raises(PeriodError, match="before it starts"):
        Period(date(2026, 12, 2), date(2026, 12, 1), SHANGHAI)
    with pytest.raises(PeriodError, match="at most"):
        Period(date(2025, 1, 1), date(2026, 12, 1), SHANGHAI)


def test_the_csv_has_the_hand_computed_figures(crm) -> None:  # type: ignore[no-untyped-def]
    text = csv_text(scorecards(crm[0], DEC2, agent_names=NAMES, now=NOW))
    assert list(csv.reader(io.StringIO(text))) == EXPECTED_CSV_DEC2


def test_the_command_writes_the_same_csv_and_an_html_with_charts(crm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from crm_bridge.__main__ import main

    out, html = tmp_path / "out" / "cards.csv", tmp_path / "out" / "cards.html"
    conf = tmp_path / "sip.conf"
    conf.write_text(f"[database]\nurl = {crm[1]}\n"
                    + "".join(f"[{n}]\ntype = agent\nseat_group = senior\nname = {name}\nhost = 127.0.0.1:5070\n"
                              for n, name in NAMES.items()), encoding="utf-8")
    assert main(["--config", str(conf), "scorecard", "--from", "2026-12-02", "--to", "2026-12-02",
                 "--csv", str(out), "--html", str(html)]) == 0
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8-sig"))))
    assert rows == EXPECTED_CSV_DEC2
    page = html.read_text(encoding="utf-8")
    assert "8.7分" in page  # 801's average handle time, 520 s
    assert page.count("data:image/png;base64,") == 3 and "张敏" in page
    assert main(["--config", str(conf), "scorecard", "--from", "2026-12-03", "--to", "2026-12-02"]) == 2


def test_the_documentation_quotes_every_definition_as_the_code_has_it() -> None:
    docs = (ROOT / "docs" / "quality.md").read_text(encoding="utf-8")
    assert definitions_markdown() in docs, "paste crm_bridge.scorecards.definitions_markdown() into the docs"


def test_qa_figures_come_from_the_evaluations_of_the_local_day(crm) -> None:  # type: ignore[no-untyped-def]
    """801 scored 90 and failed by a red line (total 0) on Dec 2 Shanghai; an evaluation on Dec 1 is not counted."""
    from crm_bridge.models import Evaluation, EvaluationForm

    engine = crm[0]
    with Session(engine) as s, s.begin():
        form = EvaluationForm(name="f", version="v" * 64, definition="{}", source="f.toml",
                              first_loaded_at=utc(1, 0, 0))
        s.add(form)
        s.flush()
        call_id = s.execute(select(Call.id).where(Call.sip_call_id == "c3@seed")).scalar_one()
        for at, total, fatal in ((utc(1, 16, 30), 90.0, ""), (utc(2, 15, 59), 0.0, "rude_language"),
                                 (utc(1, 15, 59), 50.0, "")):  # the last one: 23:59 on Dec 1 in Shanghai
            s.add(Evaluation(call_id=call_id, form_id=form.id, agent_number="801", evaluator="王经理",
                             created_at=at, total=total, passed=not fatal and total >= 80, fatal=fatal))
    card = {c.agent: c for c in scorecards(engine, DEC2, agent_names=NAMES, now=NOW).cards}
    assert card["801"].values["qa_avg"] == 45.0
    assert card["801"].values["qa_fatal"] == 1
    assert card["802"].values["qa_avg"] is None
