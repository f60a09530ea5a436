"""Follow-up calls in the CRM (crm_bridge.followups), on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from crm_bridge import followups
from crm_bridge.db import make_engine, migrate
from crm_bridge.followups import FollowupError, FollowupRules
from crm_bridge.models import Call, CallNote, Customer, Followup, Ticket, TicketHistory
from desk import tickets
from ivr.campaign import CallingWindow
from ivr.greeting import HolidayCalendar

SHANGHAI = ZoneInfo("Asia/Shanghai")
# Wednesday 2026-11-25 10:00 in Shanghai: inside the calling hours of a working day
T0 = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
CUSTOMER = "13800000001"
RULES = FollowupRules(window=CallingWindow(zone=SHANGHAI, day_off=HolidayCalendar().is_day_off),
                      delay=timedelta(minutes=5), min_gap=timedelta(seconds=0), daily_cap=10,
                      max_attempts=2, retry_seconds=60)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    url = f"sqlite:///{tmp_path / 'crm.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = make_engine(url)
    migrate(engine)
    return engine


def a_call(s: Session, sip_call_id: str = "call-1", caller: str = CUSTOMER, at: datetime = T0) -> Call:
    call = Call(sip_call_id=sip_call_id, caller=caller, callee="95000", started_at=at, seat_group="junior")
    s.add(call)
    s.flush()
    return call


def informed_ticket(engine: Engine, caller: str = CUSTOMER, at: datetime = T0, *, customer: bool = True) -> int:
    """A complaint walked to 已告知客户 at `at`, as the desk's buttons do."""
    with Session(engine) as s, s.begin():
        if customer and s.scalar(select(Customer).where(Customer.phone == caller)) is None:
            s.add(Customer(phone=caller, name="李雷"))
        call = a_call(s, f"call-{caller}-{at.timestamp()}", caller, at)
        t = tickets.open_ticket(s, call, actor="801", agent_number="801", description="扣费有误",
                                department="售后服务部", now=at)
        tickets.move(s, t, "forwarded", actor="801", now=at)
        tickets.edit(s, t, actor="801", result="已退费", caller_satisfied=True, now=at)
        tickets.move(s, t, "result_received", actor="801", now=at)
        tickets.move(s, t, "caller_informed", actor="801", now=at)
        return t.id


def ticket(engine: Engine, ticket_id: int) -> tuple[Ticket, list[TicketHistory]]:
    with Session(engine, expire_on_commit=False) as s:
        t = s.get_one(Ticket, ticket_id)
        history = list(t.history)
        s.expunge_all()
    return t, history


def test_a_ticket_told_its_result_is_followed_up_after_the_delay_once_however_many_workers_scan(db: Engine) -> None:
    ticket_id = informed_ticket(db)
    assert followups.scan(db, RULES, T0) == 1
    assert followups.scan(db, RULES, T0 + timedelta(seconds=1)) == 0  # a second worker's scan adds nothing
    assert followups.claim(db, RULES, "w1", 10, T0 + timedelta(minutes=4)) == []  # not due before the delay
    [claimed] = followups.claim(db, RULES, "w1", 10, T0 + timedelta(minutes=5))
    assert (claimed.kind, claimed.number, claimed.ticket_id, claimed.attempt) == ("resolved", CUSTOMER, ticket_id, 1)
    # 11月25日, 售后服务部: what the call says
    assert (claimed.month, claimed.day, claimed.department) == (11, 25, "售后服务部")


def test_satisfied_closes_the_ticket_with_a_history_entry_by_the_follow_up(db: Engine) -> None:
    ticket_id = informed_ticket(db)
    followups.scan(db, RULES, T0)
    [claimed] = followups.claim(db, RULES, "w1", 10, T0 + timedelta(minutes=5))
    assert followups.attempt_call(db, claimed.id, "fu-1")
    followups.finish(db, claimed.id, "satisfied", RULES, T0 + timedelta(minutes=6), answers=[("satisfaction", "1")])
    t, history = ticket(db, ticket_id)
    assert t.status == "closed"
    assert (history[-1].actor, history[-1].status_to) == ("回访", "closed")
    assert "满意" in history[-1].detail and "satisfaction=1" in history[-1].detail


def test_dissatisfied_sends_the_ticket_back_to_the_department_with_the_answers(db: Engine) -> None:
    ticket_id = informed_ticket(db)
    followups.scan(db, RULES, T0)
    [claimed] = followups.claim(db, RULES, "w1", 10, T0 + timedelta(minutes=5))
    row = followups.finish(db, claimed.id, "dissatisfied", RULES, T0 + timedelta(minutes=6),
                           answers=[("satisfaction", "2")])
    t, history = ticket(db, ticket_id)
    assert t.status == "forwarded"
    assert (history[-1].actor, history[-1].status_from, history[-1].status_to) == ("回访", "caller_informed",
                                                                                   "forwarded")
    assert "satisfaction=2" in history[-1].detail
    assert (row.status, row.result) == ("done", "dissatisfied")  # the supervisor's list
    assert [f.id for f in followups.listing(db, status="done")] == [claimed.id]


def test_no_answer_is_retried_with_backoff_then_unreachable_and_the_ticket_flagged(db: Engine) -> None:
    ticket_id = informed_ticket(db)
    followups.scan(db, RULES, T0)
    at = T0 + timedelta(minutes=5)
    [first] = followups.claim(db, RULES, "w1", 10, at)
    row = followups.finish(db, first.id, "no_answer", RULES, at)
    assert (row.status, row.attempts) == ("due", 1)
    assert followups.claim(db, RULES, "w1", 10, at + timedelta(seconds=59)) == []  # retry_seconds = 60
    [second] = followups.claim(db, RULES, "w1", 10, at + timedelta(seconds=60))
    assert second.attempt == 2
    row = followups.finish(db, second.id, "busy", RULES, at + timedelta(seconds=70))
    assert (row.status, row.result, row.attempts) == ("unreachable", "busy", 2)
    t, history = ticket(db, ticket_id)
    assert t.status == "caller_informed" and t.needs_agent is not None
    assert history[-1].actor == "回访" and "未接通" in history[-1].detail


def test_two_workers_claiming_at_once_never_take_the_same_follow_up(db: Engine) -> None:
    with Session(db) as s, s.begin():
        for n in range(200):
            s.add(Followup(trigger_key=f"t{n}", kind="survey", number=f"1390000{n:04d}", status="due",
                           created_at=T0, due_at=T0, attempts=0))
    taken: dict[str, list[int]] = {"a": [], "b": []}

    start = threading.Barrier(2)

    def worker(name: str) -> None:
        engine = make_engine(db.url.render_as_string(hide_password=False))
        start.wait()
        while got := followups.claim(engine, RULES, name, 5, T0 + timedelta(minutes=1)):
            taken[name] += [c.id for c in got]
        engine.dispose()

    threads = [threading.Thread(target=worker, args=(name,)) for name in taken]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    both = taken["a"] + taken["b"]
    assert len(both) == len(set(both)) == 200


def test_a_number_put_on_the_do_not_call_list_after_scheduling_is_never_dialled(db: Engine) -> None:
    informed_ticket(db)
    followups.scan(db, RULES, T0)
    assert followups.add_do_not_call(db, CUSTOMER, by="cli", source="cli")
    assert followups.claim(db, RULES, "w1", 10, T0 + timedelta(minutes=5)) == []
    [row] = followups.listing(db)
    assert (row.status, row.result) == ("closed", "on_do_not_call")


def test_a_number_flagged_while_claimed_is_refused_at_dial_time(db: Engine) -> None:
    informed_ticket(db)
    followups.scan(db, RULES, T0)
    [claimed] = followups.claim(db, RULES, "w1", 10, T0 + timedelta(minutes=5))
    followups.add_do_not_call(db, CUSTOMER, by="801", source="desk")
    assert not followups.attempt_call(db, claimed.id, "fu-1")
    [row] = followups.listing(db)
    assert (row.status, row.result, row.call_ids) == ("closed", "on_do_not_call", "")


def test_pressing_9_puts_the_number_on_the_do_not_call_list(db: Engine) -> None:
    ticket_id = informed_ticket(db)
    followups.scan(db, RULES, T0)
    [claimed] = followups.claim(db, RULES, "w1", 10, T0 + timedelta(minutes=5))
    followups.finish(db, claimed.id, "do_not_call", RULES, T0 + timedelta(minutes=6), answers=[("satisfaction", "9")])
    assert [d.number for d in followups.do_not_call_list(db)] == [CUSTOMER]
    assert followups.do_not_call_list(db)[0].source == "ivr"
    _, history = ticket(db, ticket_id)
    assert any("谢绝来电" in h.detail for h in history)


@pytest.mark.parametrize("number", ["0085212345678", "+8613800000001", "anonymous", "12"])
def test_a_number_that_is_not_plain_domestic_is_never_dialled(db: Engine, number: str) -> None:
    informed_ticket(db, number, customer=False)
    followups.scan(db, RULES, T0)
    assert followups.claim(db, RULES, "w1", 10, T0 + timedelta(minutes=5)) == []
    [row] = followups.listing(db)
    assert (row.status, row.result, row.attempts) == ("closed", "not_diallable", 0)


def test_a_follow_up_for_a_customer_deleted_from_the_crm_is_closed_with_its_reason(db: Engine) -> None:
    informed_ticket(db)
    followups.scan(db, RULES, T0)
    with Session(db) as s, s.begin():
        s.delete(s.scalars(select(Customer).where(Customer.phone == CUSTOMER)).one())
    assert followups.claim(db, RULES, "w1", 10, T0 + timedelta(minutes=5)) == []
    [row] = followups.listing(db)
    assert (row.status, row.result) == ("closed", "customer_deleted")
    assert followups.claim(db, RULES, "w1", 10, T0 + timedelta(days=1)) == []  # not retried


def test_outside_the_calling_hours_nothing_is_claimed_until_they_open(db: Engine) -> None:
    informed_ticket(db, at=datetime(2026, 11, 25, 12, 0, tzinfo=UTC))  # 20:00 Shanghai
    followups.scan(db, RULES, datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
    assert followups.claim(db, RULES, "w1", 10, datetime(2026, 11, 25, 13, 30, tzinfo=UTC)) == []  # 21:30
    assert followups.claim(db, RULES, "w1", 10, datetime(2026, 11, 26, 0, 59, tzinfo=UTC)) == []  # 08:59
    assert len(followups.claim(db, RULES, "w1", 10, datetime(2026, 11, 26, 1, 0, tzinfo=UTC))) == 1  # 09:00


def test_the_minimum_gap_and_the_daily_cap_hold_a_customer_back(db: Engine) -> None:
    rules = FollowupRules(window=RULES.window, delay=timedelta(0), min_gap=timedelta(hours=1), daily_cap=2)
    with Session(db) as s, s.begin():
        for n in range(3):
            s.add(Followup(trigger_key=f"t{n}", kind="survey", number=CUSTOMER, status="due", created_at=T0,
                           due_at=T0, attempts=0))
    [first] = followups.claim(db, rules, "w1", 1, T0)
    followups.attempt_call(db, first.id, "fu-1")
    followups.finish(db, first.id, "heard", rules, T0)
    assert followups.claim(db, rules, "w1", 1, T0 + timedelta(minutes=30)) == []  # an hour between calls
    [second] = followups.claim(db, rules, "w1", 1, T0 + timedelta(hours=1))
    followups.attempt_call(db, second.id, "fu-2")
    followups.finish(db, second.id, "heard", rules, T0 + timedelta(hours=1))
    assert followups.claim(db, rules, "w1", 1, T0 + timedelta(hours=3)) == []  # two calls today: the cap
    # the next calling day, 09:00 Shanghai
    assert len(followups.claim(db, rules, "w1", 1, datetime(2026, 11, 26, 1, 0, tzinfo=UTC))) == 1


def test_a_wrap_up_code_asking_for_a_follow_up_schedules_one(db: Engine) -> None:
    with Session(db) as s, s.begin():
        call = a_call(s)
        s.add(CallNote(call_id=call.id, agent_number="801", note="", wrap_up_code="需回访", created_at=T0,
                       updated_at=T0))
        other = a_call(s, "call-2")
        s.add(CallNote(call_id=other.id, agent_number="801", note="", wrap_up_code="已解决", created_at=T0,
                       updated_at=T0))
    assert followups.scan(db, RULES, T0) == 1
    [row] = followups.listing(db)
    assert (row.kind, row.sip_call_id, row.number) == ("wrap_up", "call-1", CUSTOMER)
    off = FollowupRules(window=RULES.window, on_wrap_up=False, on_resolved=False, on_daily=False)
    with Session(db) as s, s.begin():
        s.add(CallNote(call_id=a_call(s, "call-3").id, agent_number="801", note="", wrap_up_code="需回访",
                       created_at=T0, updated_at=T0))
    assert followups.scan(db, off, T0) == 0  # switched off


def test_the_daily_call_logs_the_feedback_and_moves_the_next_due_as_the_desk_does(db: Engine) -> None:
    opened = T0 - timedelta(days=1)
    with Session(db) as s, s.begin():
        t = tickets.open_ticket(s, a_call(s, at=opened), actor="801", agent_number="801", description="未到账",
                                department="财务部", now=opened)
        ticket_id = t.id
    evening = datetime(2026, 11, 25, 9, 30, tzinfo=UTC)  # 17:30 Shanghai, nobody gave feedback today
    assert followups.scan(db, RULES, datetime(2026, 11, 25, 8, 0, tzinfo=UTC)) == 0  # before daily_at 17:00
    assert followups.scan(db, RULES, evening) == 1
    [claimed] = followups.claim(db, RULES, "w1", 10, evening)
    assert (claimed.kind, claimed.month, claimed.day, claimed.department) == ("daily", 11, 24, "财务部")
    followups.finish(db, claimed.id, "heard", RULES, evening + timedelta(minutes=1))
    t2, history = ticket(db, ticket_id)
    assert (history[-1].actor, history[-1].action) == ("回访", "feedback")
    from crm_bridge.models import aware

    assert aware(t2.next_feedback_due) == evening + timedelta(minutes=1) + tickets.FEEDBACK_EVERY
    assert followups.scan(db, RULES, evening + timedelta(minutes=5)) == 0  # one a day


def test_request_for_call_schedules_a_follow_up_for_the_calls_customer_once(db: Engine) -> None:
    with Session(db) as s, s.begin():
        a_call(s, "survey-call")
    with Session(db) as s, s.begin():
        row = followups.request_for_call(s, "survey-call", "问卷中客户要求回访", now=T0)
        assert (row.kind, row.number, row.status, row.reason) == ("survey", CUSTOMER, "due", "问卷中客户要求回访")
        first = row.id
    with Session(db) as s, s.begin():
        again = followups.request_for_call(s, "survey-call", "again", now=T0)
        assert again.id == first
        with pytest.raises(FollowupError):
            followups.request_for_call(s, "no-such-call", "x", now=T0)


def test_a_claim_left_by_a_stopped_worker_is_due_again_at_its_start(db: Engine) -> None:
    informed_ticket(db)
    followups.scan(db, RULES, T0)
    followups.claim(db, RULES, "w1", 10, T0 + timedelta(minutes=5))
    assert followups.release_claims(db, "w2") == 0
    assert followups.release_claims(db, "w1") == 1
    assert [r.status for r in followups.listing(db)] == ["due"]


def test_a_follow_up_due_on_a_spring_festival_evening_waits_for_the_first_working_day() -> None:
    window = CallingWindow(zone=SHANGHAI, day_off=HolidayCalendar().is_day_off)
    due = datetime(2027, 2, 6, 21, 30, tzinfo=SHANGHAI)  # 春节
    opening = window.next_opening(due)
    assert opening == datetime(2027, 2, 11, 9, 0, tzinfo=SHANGHAI)
    assert window.calling_day(date(2027, 2, 11)) and not window.calling_day(date(2027, 2, 10))
    # 2026: the Saturday worked for the Spring Festival (调休) is a calling day, the Sunday after it not
    assert window.calling_day(date(2026, 2, 14)) and not window.calling_day(date(2026, 2, 15))
    # configured to call on holidays: the same evening's next opening is the next morning
    assert CallingWindow(zone=SHANGHAI, day_off=HolidayCalendar().is_day_off, on_holidays=True,
                         on_weekends=True).next_opening(due) == datetime(2027, 2, 7, 9, 0, tzinfo=SHANGHAI)
    assert window.start == time(9, 0)


def test_a_follow_up_due_at_2130_on_a_spring_festival_holiday_is_dialled_at_0900_on_the_first_working_day(
        db: Engine) -> None:
    due = datetime(2027, 2, 6, 21, 30, tzinfo=SHANGHAI)  # 春节 (the holidays library's 2027 dates)
    with Session(db) as s, s.begin():
        s.add(Followup(trigger_key="t", kind="survey", number=CUSTOMER, status="due", created_at=due, due_at=due,
                       attempts=0))
    for moment in (datetime(2027, 2, 6, 21, 30), datetime(2027, 2, 7, 9, 0), datetime(2027, 2, 8, 10, 0),
                   datetime(2027, 2, 10, 19, 59), datetime(2027, 2, 11, 8, 59)):
        assert followups.claim(db, RULES, "w1", 5, moment.replace(tzinfo=SHANGHAI)) == [], moment
    [claimed] = followups.claim(db, RULES, "w1", 5, datetime(2027, 2, 11, 9, 0, tzinfo=SHANGHAI))
    assert claimed.attempt == 1


def test_the_ops_holiday_file_decides_calling_days_first() -> None:
    calendar = HolidayCalendar(overrides={date(2027, 2, 13): "workday", date(2027, 4, 5): "other",
                                          date(2027, 2, 8): "none"})
    window = CallingWindow(zone=SHANGHAI, day_off=calendar.is_day_off)
    assert window.calling_day(date(2027, 2, 13))  # a Saturday worked for the Spring Festival (调休)
    assert calendar.holiday_on(date(2027, 2, 13)) is None  # and no holiday greeting that day
    assert not window.calling_day(date(2027, 4, 5)) and calendar.holiday_on(date(2027, 4, 5)) is None  # 清明
    assert not window.calling_day(date(2027, 2, 8))  # "none" only drops the greeting: still the libraries' holiday
