"""The desk's side of follow-up calls (Starlette's TestClient): a ticket moved to 已告知客户 at the desk is
followed up, the do-not-call button, the ticket's flag and the supervisors' /followups page."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from crm_bridge import followups
from crm_bridge.models import Followup, Ticket
from ivr.campaign import CallingWindow

from .test_desk import csrf_of, desk, ids, login  # noqa: F401 — `desk` is the fixture

ALWAYS = followups.FollowupRules(window=CallingWindow(on_holidays=True, on_weekends=True,
                                                      start=datetime.min.time(), end=datetime.max.time()),
                                 delay=timedelta(seconds=0), min_gap=timedelta(0))


def walk_to_informed(client, ticket_id: int) -> None:  # type: ignore[no-untyped-def]
    token = csrf_of(client, f"/tickets/{ticket_id}")
    steps = [("edit", {"department": "客服部"}), ("move", {"to": "forwarded", "note": ""}),
             ("edit", {"result": "已处理", "caller_satisfied": "yes"}), ("move", {"to": "result_received", "note": ""}),
             ("move", {"to": "caller_informed", "note": "电话告知"})]
    for path, data in steps:
        r = client.post(f"/tickets/{ticket_id}/{path}", data={**data, "csrf": token})
        assert r.status_code == 200, r.text


def test_a_ticket_moved_to_caller_informed_at_the_desk_schedules_its_follow_up(desk) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    client, engine, _ = desk
    login(client, "801", "pw801-secret")
    ticket_id = ids(engine)["ticket801"]
    assert followups.scan(engine, ALWAYS) == 0  # not before 已告知客户
    walk_to_informed(client, ticket_id)
    assert followups.scan(engine, ALWAYS) == 1
    [claimed] = followups.claim(engine, ALWAYS, "w1", 5, datetime.now(UTC) + timedelta(seconds=1))
    assert (claimed.ticket_id, claimed.kind, claimed.number) == (ticket_id, "resolved", "13800000001")


def test_the_do_not_call_button_flags_the_customer_and_its_due_follow_ups_close(desk) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    client, engine, _ = desk
    login(client, "801", "pw801-secret")
    ticket_id = ids(engine)["ticket801"]
    walk_to_informed(client, ticket_id)
    followups.scan(engine, ALWAYS)
    token = csrf_of(client, f"/tickets/{ticket_id}")
    page = client.post(f"/tickets/{ticket_id}/dnc", data={"action": "add", "csrf": token})
    assert page.status_code == 200 and 'id="ticket-dnc"' in page.text and 'id="dnc-remove"' in page.text
    [row] = followups.do_not_call_list(engine)
    assert (row.number, row.source, row.added_by) == ("13800000001", "desk", "801")
    with Session(engine) as s:
        assert s.scalars(select(Followup.result)).all() == ["on_do_not_call"]
    assert followups.claim(engine, ALWAYS, "w1", 5) == []
    # an agent may not flag another agent's customer through their ticket
    other = ids(engine)["ticket802"]
    assert client.post(f"/tickets/{other}/dnc", data={"action": "add", "csrf": token}).status_code == 403
    page = client.post(f"/tickets/{ticket_id}/dnc", data={"action": "remove", "csrf": token})
    assert 'id="ticket-dnc"' not in page.text and followups.do_not_call_list(engine) == []
    assert client.post(f"/tickets/{ticket_id}/dnc", data={"action": "drop", "csrf": token}).status_code == 400


def test_supervisors_see_follow_ups_by_status_and_type_and_the_ticket_shows_its_flag(desk) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    client, engine, _ = desk
    login(client, "801", "pw801-secret")
    ticket_id = ids(engine)["ticket801"]
    walk_to_informed(client, ticket_id)
    followups.scan(engine, ALWAYS)
    rules = followups.FollowupRules(window=ALWAYS.window, delay=timedelta(0), min_gap=timedelta(0), max_attempts=1)
    [claimed] = followups.claim(engine, rules, "w1", 5)
    followups.finish(engine, claimed.id, "no_answer", rules)
    assert client.get("/followups").status_code == 403  # supervisors only
    page = client.get(f"/tickets/{ticket_id}")
    assert 'id="ticket-needs-agent"' in page.text and "未接通" in page.text and "电话回访" in page.text
    client.post("/logout", data={"csrf": csrf_of(client, "/desk")})
    login(client, "王经理", "supervisor-pw")
    page = client.get("/followups")
    assert page.status_code == 200
    assert 'id="count-resolved-unreachable">1<' in page.text
    unreachable = page.text.split('id="followups-unreachable"')[1].split("</table>")[0]
    assert "13800000001" in unreachable and f"/tickets/{ticket_id}" in unreachable
    assert client.get("/followups?kind=daily").status_code == 200
    assert client.get("/followups?kind=<script>").status_code == 400
    with Session(engine) as s:
        assert s.get_one(Ticket, ticket_id).needs_agent is not None


def test_the_screen_pop_of_a_follow_up_put_through_to_an_agent_names_its_ticket(desk) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    from crm_bridge.models import Call, CallEvent
    from desk.queries import pop_for

    client, engine, config = desk
    ticket_id = ids(engine)["ticket801"]
    now = datetime.now(UTC)
    with Session(engine) as s, s.begin():
        call = Call(sip_call_id="fu-transfer", caller="13800000001", callee="95000", started_at=now,
                    seat_group="senior", agent_number="801", service="after_sales")
        s.add(call)
        s.flush()
        s.add(CallEvent(call_id=call.id, at=now, kind="followup_transfer",
                        detail=f"ticket={ticket_id} followup=3 queue=agent:801"))
        s.add(CallEvent(call_id=call.id, at=now, kind="agent_rung", detail="agent=801"))
        call_id = call.id
    pop = pop_for(engine, config, call_id, 0, "801")
    assert pop is not None and pop.followup_ticket == ticket_id
    login(client, "801", "pw801-secret")
    page = client.get(f"/calls/{call_id}")
    assert 'id="pop-followup"' in page.text and f"工单 #{ticket_id}" in page.text
