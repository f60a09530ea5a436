"""End to end: follow-up calls (回访). The real IVR dials a SIPp UAS standing in for the gateway and the
customer's phone, which answers and presses keys over RFC 4733; the CRM is the IVR's SQLite database."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from crm_bridge.db import make_engine
from crm_bridge.models import Call, Customer, Followup, Ticket, TicketHistory
from desk import tickets

from .conftest import ROOT, IvrProcess, sipp
from .test_e2e_waiting import customer_gateway

pytestmark = pytest.mark.e2e
CUSTOMER = "13900000001"
UNAVAILABLE = ROOT / "tests" / "sipp" / "customer_unavailable.xml"

# The customer's phone (loadtest/scenarios/followup_customer.xml, which loadtest/bench.py --followups runs as
# is): answers after 0.3 s of ringing, logs the INVITE (its From: the caller ID), presses 1 (RFC 4733) 2500 ms
# after the answer, then waits for the IVR's BYE. `customer_scenario` derives the other keys, delays and a
# customer who hangs up from it.
CUSTOMER_UAS = (ROOT / "loadtest" / "scenarios" / "followup_customer.xml").read_text(encoding="ascii")
PRESS = '<pause milliseconds="2500"/>\n  <nop><action><exec play_pcap_audio="/usr/share/sip-tester/dtmf_2833_1.pcap"/>'
FROM = '<ereg regexp=".*" search_in="hdr" header="From:"'
WAIT_FOR_BYE = """<recv request="BYE" timeout="60000"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0

    ]]>
  </send>"""
HANG_UP = """<pause milliseconds="HOLD"/>
  <send retrans="500">
    <![CDATA[
      BYE [$ivr_contact] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: [$me];tag=[pid]SIPpTag01[call_number]
      To: [$ivr_from]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0

    ]]>
  </send>
  <recv response="200" crlf="true"/>"""


def customer_scenario(tmp: Path, key: str, after_ms: int = 2500, hang_up_after_ms: int | None = None) -> Path:
    assert CUSTOMER_UAS.count(PRESS) == 1 and CUSTOMER_UAS.count(WAIT_FOR_BYE) == 1 and CUSTOMER_UAS.count(FROM) == 1
    text = CUSTOMER_UAS.replace(PRESS, PRESS.replace("2500", str(after_ms)).replace("dtmf_2833_1", f"dtmf_2833_{key}"))
    if hang_up_after_ms is not None:
        text = text.replace(WAIT_FOR_BYE, HANG_UP.replace("HOLD", str(hang_up_after_ms))).replace(
            FROM, '<ereg regexp="sip:[^>]*" search_in="hdr" header="Contact:" assign_to="ivr_contact"/>\n      ' + FROM)
    path = tmp / f"followup_customer_{key}_{time.monotonic_ns()}.xml"
    path.write_text(text, encoding="ascii")
    return path


def followup_conf(gateway_port: int, **settings: object) -> str:
    """[followup] with short delays, a calling window open at every hour (the tests run any day and hour)."""
    values: dict[str, object] = {
        "enabled": "yes", "gateway": f"127.0.0.1:{gateway_port}", "delay_seconds": 2, "scan_seconds": 1,
        "calling_hours": "00:00-24:00", "call_on_holidays": "yes", "call_on_weekends": "yes",
        "min_gap_seconds": 0, "retry_seconds": 3, "max_attempts": 2, "ring_seconds": 10, "answer_seconds": 4,
        "calls_per_second": 5, **settings,
    }
    return "[followup]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())


def crm(ivr: IvrProcess) -> Engine:
    return make_engine(ivr.db_url)


def informed_ticket(db: Engine, number: str = CUSTOMER, *, customer: bool = True) -> tuple[int, datetime]:
    """A complaint walked through the desk's workflow to 已告知客户 (the CRM call the desk's buttons make)."""
    now = datetime.now(UTC)
    with Session(db) as s, s.begin():
        if customer and s.scalar(select(Customer).where(Customer.phone == number)) is None:
            s.add(Customer(phone=number, name="王芳"))
        call = Call(sip_call_id=f"complaint-{number}-{time.monotonic_ns()}", caller=number, callee="95000",
                    started_at=now - timedelta(days=1), seat_group="junior")
        s.add(call)
        s.flush()
        t = tickets.open_ticket(s, call, actor="821", agent_number="821", description="退款未到账",
                                department="售后服务部", now=now - timedelta(days=1))
        tickets.move(s, t, "forwarded", actor="821")
        tickets.edit(s, t, actor="821", result="已重新退款", caller_satisfied=True)
        tickets.move(s, t, "result_received", actor="821")
        tickets.move(s, t, "caller_informed", actor="821")
        return t.id, datetime.now(UTC)


def wait_for(check: Callable[[], object], what: str, ivr: IvrProcess, timeout: float = 60) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{ivr.log()[-4000:]}")


def ticket_now(db: Engine, ticket_id: int) -> tuple[Ticket, list[TicketHistory]]:
    with Session(db, expire_on_commit=False) as s:
        t = s.get_one(Ticket, ticket_id)
        history = list(t.history)
        s.expunge_all()
    return t, history


def followup_rows(db: Engine) -> list[Followup]:
    with Session(db, expire_on_commit=False) as s:
        rows = list(s.scalars(select(Followup).order_by(Followup.id)))
        s.expunge_all()
    return rows


def log_time(ivr: IvrProcess, event: str) -> list[datetime]:
    return [datetime.fromisoformat(t) for t in re.findall(rf"timestamp='([^']+)'[^\n]*event='{event}'", ivr.log())]


def uas_log(tmp: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in tmp.glob("followup_customer_*_messages.log")) + "\n".join(
        p.read_text(errors="replace") for p in tmp.glob("*.log") if "followup_customer" in p.name)


def start_gateway(tmp: Path, scenario: Path, calls: int = 1) -> tuple[int, subprocess.Popen[str]]:
    return customer_gateway(tmp, scenario, calls=calls, extra=("-trace_logs",))


@pytest.mark.parametrize(("key", "status", "actor_entry"), [
    ("1", "closed", "closed"),  # satisfied: the ticket closes
    ("2", "forwarded", "forwarded"),  # not satisfied: back to the department
])
def test_a_ticket_told_its_result_is_followed_up_by_a_call_and_the_key_pressed_lands_on_the_ticket(
        ivr_factory, tmp_path: Path, key: str, status: str, actor_entry: str) -> None:  # type: ignore[no-untyped-def]
    port, gateway = start_gateway(tmp_path, customer_scenario(tmp_path, key))
    try:
        ivr = ivr_factory(extra=followup_conf(port))
        db = crm(ivr)
        ticket_id, moved_at = informed_ticket(db)
        wait_for(lambda: ticket_now(db, ticket_id)[0].status == status, f"ticket {status}", ivr)
        assert gateway.wait(30) == 0, (tmp_path / f"uas-{port}.err").read_text(errors="replace")
    finally:
        gateway.kill()
    t, history = ticket_now(db, ticket_id)
    last = history[-1]
    assert (last.actor, last.status_from, last.status_to) == ("回访", "caller_informed", actor_entry)
    assert f"satisfaction={key}" in last.detail
    [row] = followup_rows(db)
    assert (row.kind, row.status, row.result, row.attempts) == (
        "resolved", "done", "satisfied" if key == "1" else "dissatisfied", 1)
    # dialled within the configured delay (2 s), give or take the one-second scan and tick
    [dialled] = log_time(ivr, "customer_dialled")
    assert timedelta(seconds=1.5) <= dialled - moved_at <= timedelta(seconds=2 + 1 + 1 + 2), dialled - moved_at
    # the customer saw the hotline's number as the caller, and was called at the ticket's number
    sipp_log = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*_logs.log"))
    assert re.search(r"from +<sip:95000@127\.0\.0\.1:\d+>;tag=\S+ to +<sip:" + CUSTOMER + "@127.0.0.1:" + str(port),
                     sipp_log), sipp_log
    # the intro and the question were played from rendered fragments before the key
    for event in ("customer_answered", "followup_digit", "followup_result"):
        assert f"event='{event}'" in ivr.log()
    db.dispose()


def test_a_customer_who_never_answers_is_retried_then_the_ticket_is_flagged_unreachable(
        ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port, gateway = start_gateway(tmp_path, UNAVAILABLE, calls=2)
    try:
        ivr = ivr_factory(extra=followup_conf(port, max_attempts=2, retry_seconds=3))
        db = crm(ivr)
        ticket_id, _ = informed_ticket(db)
        wait_for(lambda: [r for r in followup_rows(db) if r.status == "unreachable"], "unreachable", ivr, 90)
        assert gateway.wait(30) == 0  # exactly the two INVITEs it was run for
    finally:
        gateway.kill()
    [row] = followup_rows(db)
    assert (row.attempts, row.result, len(row.call_ids.split())) == (2, "no_answer", 2)
    first, second = log_time(ivr, "customer_dialled")
    assert second - first >= timedelta(seconds=3)  # retry_seconds after the first
    t, history = ticket_now(db, ticket_id)
    assert t.status == "caller_informed" and t.needs_agent and "未接通" in t.needs_agent
    assert history[-1].actor == "回访"
    db.dispose()


def test_pressing_9_puts_the_customer_on_the_do_not_call_list(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port, gateway = start_gateway(tmp_path, customer_scenario(tmp_path, "9", after_ms=1500))
    try:
        ivr = ivr_factory(extra=followup_conf(port))
        db = crm(ivr)
        informed_ticket(db)
        wait_for(lambda: [r for r in followup_rows(db) if r.status == "done"], "follow-up done", ivr)
    finally:
        gateway.kill()
    out = subprocess.run([sys.executable, "-m", "crm_bridge", "--db-url", ivr.db_url, "dnc", "list"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and CUSTOMER in out.stdout and "ivr" in out.stdout, out.stdout + out.stderr
    assert followup_rows(db)[0].result == "do_not_call"
    db.dispose()


def test_numbers_on_the_do_not_call_list_not_domestic_or_of_deleted_customers_are_never_dialled(
        ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port, gateway = start_gateway(tmp_path, customer_scenario(tmp_path, "1"))
    try:
        ivr = ivr_factory(extra=followup_conf(port, delay_seconds=4))
        db = crm(ivr)
        informed_ticket(db, CUSTOMER)  # scheduled first …
        out = subprocess.run([sys.executable, "-m", "crm_bridge", "--db-url", ivr.db_url, "dnc", "add", CUSTOMER],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr  # … flagged before it is due
        informed_ticket(db, "+8613900000002", customer=False)
        informed_ticket(db, "0085298765432", customer=False)
        informed_ticket(db, "13900000003")
        wait_for(lambda: len(followup_rows(db)) == 4, "four scheduled", ivr)  # then the customer is deleted
        with Session(db) as s, s.begin():
            s.delete(s.scalars(select(Customer).where(Customer.phone == "13900000003")).one())
        wait_for(lambda: len([r for r in followup_rows(db) if r.status == "closed"]) == 4, "four closed", ivr)
        time.sleep(3)
        assert gateway.poll() is None  # still waiting: not one INVITE reached the gateway
    finally:
        gateway.kill()
    assert {r.number: r.result for r in followup_rows(db)} == {
        CUSTOMER: "on_do_not_call", "+8613900000002": "not_diallable", "0085298765432": "not_diallable",
        "13900000003": "customer_deleted"}
    assert "customer_dialled" not in ivr.log()
    db.dispose()


def concurrency(log_text: str) -> int:
    """The most calls up at once, from the customer phone's log: 'invite <id> <ms>' … 'ended <id> <ms>'."""
    marks = [(int(ms), +1) for ms in re.findall(r"^invite \S+ (\d+)", log_text, re.M)]
    marks += [(int(ms), -1) for ms in re.findall(r"^ended \S+ (\d+)", log_text, re.M)]
    up = most = 0
    for _, step in sorted(marks, key=lambda m: (m[0], m[1])):  # an end before a start at the same millisecond
        up += step
        most = max(most, up)
    return most


def due_followups(db: Engine, count: int, number_base: int = 13700000000) -> None:
    now = datetime.now(UTC)
    with Session(db) as s, s.begin():
        for n in range(count):
            s.add(Followup(trigger_key=f"load:{n}:{time.monotonic_ns()}", kind="survey", number=str(number_base + n),
                           status="due", created_at=now, due_at=now, attempts=0, reason="load"))


def test_two_hundred_due_follow_ups_never_have_more_than_max_concurrent_calls_up(
        ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    calls = 200
    port, gateway = start_gateway(tmp_path, customer_scenario(tmp_path, "5", after_ms=200, hang_up_after_ms=1500),
                                  calls=calls)
    try:
        ivr = ivr_factory(extra=followup_conf(port, max_concurrent=20, calls_per_second=20))
        db = crm(ivr)
        due_followups(db, calls)
        wait_for(lambda: all(r.status == "done" for r in followup_rows(db)), "all 200 done", ivr, 240)
        assert gateway.wait(30) == 0
    finally:
        gateway.kill()
    seen = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*_logs.log"))
    assert len(re.findall(r"^invite ", seen, re.M)) == calls
    most = concurrency(seen)
    assert 10 <= most <= 20, most  # the cap was reached, never passed
    assert {r.attempts for r in followup_rows(db)} == {1}
    db.dispose()


def test_no_follow_up_starts_while_more_inbound_callers_wait_than_the_threshold(
        ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port, gateway = start_gateway(tmp_path, customer_scenario(tmp_path, "1", after_ms=500, hang_up_after_ms=500),
                                  calls=3)
    try:
        ivr = ivr_factory(extra=followup_conf(port, queue_threshold=5))
        db = crm(ivr)
        # ten callers choose a service and wait in the queue (no agent logged in) for 25 s
        callers = sipp(tmp_path, "queue_abandon_caller", ivr.port, calls=10,
                       extra=("-d", "25000", "-r", "10", "-l", "10"))
        wait_for(lambda: ivr.log().count("event='queued'") >= 10, "ten callers queued", ivr)
        due_followups(db, 3)
        held_until = time.monotonic() + 8
        while time.monotonic() < held_until:
            assert "customer_dialled" not in ivr.log(), "a follow-up started while 10 callers waited"
            time.sleep(0.5)
        assert callers.wait(90) == 0, callers.errors()[-2000:]
        # once the callers have gone, the follow-ups go out
        wait_for(lambda: all(r.status == "done" for r in followup_rows(db)), "follow-ups done", ivr, 60)
        assert gateway.wait(30) == 0
    finally:
        gateway.kill()
    # the first follow-up went out only once at least five of the ten callers had left the queue
    first_dialled = min(log_time(ivr, "customer_dialled"))
    left = sorted(log_time(ivr, "ended"))
    assert len(left) >= 10 and first_dialled > left[4], (first_dialled, left)
    db.dispose()


def test_pressing_0_puts_the_customer_through_to_the_tickets_agent_with_the_ticket_named(
        ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from .conftest import free_port
    from .test_e2e_routing import agents_conf

    port, gateway = start_gateway(tmp_path, customer_scenario(tmp_path, "0", after_ms=1500, hang_up_after_ms=25000))
    agent_port = free_port()
    try:
        ivr = ivr_factory(extra=followup_conf(port) + "[queues]\nwrap_up_seconds = 0\n"
                          + agents_conf(**{"821": ("junior", f"127.0.0.1:{agent_port}")}))
        agent = sipp(tmp_path, "agent_uas", ivr.port, extra=("-d", "12000", "-p", str(agent_port)), timeout_s=120)
        db = crm(ivr)
        ticket_id, _ = informed_ticket(db)
        wait_for(lambda: [r for r in followup_rows(db) if r.status == "done"], "follow-up done", ivr)
        call_id = followup_rows(db)[0].call_ids.split()[0]
        assert agent.wait(60) == 0, agent.errors()[-2000:]
        assert gateway.wait(60) == 0
    finally:
        gateway.kill()
    [row] = followup_rows(db)
    assert (row.result, row.answers) == ("transferred", "satisfaction=0")
    t, history = ticket_now(db, ticket_id)
    assert t.needs_agent is None and "已转人工坐席" in history[-1].detail and history[-1].actor == "回访"
    with Session(db) as s:
        transferred = s.scalars(select(Call).where(Call.sip_call_id == call_id)).one()
        kinds = [e.kind for e in transferred.events]
        detail = next(e.detail for e in transferred.events if e.kind == "followup_transfer")
    assert (transferred.caller, transferred.agent_number, transferred.service) == (CUSTOMER, "821", "after_sales")
    assert transferred.talk_s and transferred.talk_s > 0
    order = ["callback_dialling", "followup_transfer", "agent_rung", "agent_answered", "customer_answered", "bridged"]
    assert [k for k in kinds if k in order] == order, kinds
    # the agent's screen-pop names the ticket
    assert f"ticket={ticket_id} " in detail and "queue=agent:821" in detail
    db.dispose()


@pytest.mark.postgres
def test_two_workers_sharing_a_postgresql_crm_dial_each_follow_up_once(tmp_path: Path, pg_url: str) -> None:
    from .conftest import free_port, start_ivr, write_ivr_config

    calls = 30
    port, gateway = start_gateway(tmp_path, customer_scenario(tmp_path, "5", after_ms=200, hang_up_after_ms=1000),
                                  calls=calls)
    workers: list[IvrProcess] = []
    try:
        for n in (1, 2):
            home = tmp_path / f"w{n}"
            home.mkdir()
            sip_port = free_port()
            conf = write_ivr_config(home, sip_port=sip_port, db_url=pg_url, extra=(
                f"[cluster]\nworker = w{n}\n" + followup_conf(port, max_concurrent=5, calls_per_second=5)))
            workers.append(start_ivr(home, conf, sip_port, pg_url))
        db = make_engine(pg_url)
        due_followups(db, calls)
        wait_for(lambda: all(r.status == "done" for r in followup_rows(db)), "all done", workers[0], 120)
        assert gateway.wait(30) == 0
    finally:
        gateway.kill()
        for ivr in workers:
            ivr.stop()
    seen = "".join(p.read_text(errors="replace") for p in tmp_path.glob("*_logs.log"))
    called = re.findall(r"^invite \S+ \d+ from .* to +<sip:(\d+)@", seen, re.M)
    assert len(called) == len(set(called)) == calls  # each number dialled once, by one worker or the other
    rows = followup_rows(db)
    assert {r.attempts for r in rows} == {1} and all(len(r.call_ids.split()) == 1 for r in rows)
    per_worker = [ivr.log().count("event='customer_dialled'") for ivr in workers]
    assert sum(per_worker) == calls and min(per_worker) > 0, per_worker
    db.dispose()
