"""The desk app in process (Starlette's TestClient): login, CSRF, roles, input, the complaint workflow."""

from __future__ import annotations

import re
import time
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

with warnings.catch_warnings():  # Starlette 1.x suggests httpx2 for its TestClient; httpx is what the project has
    warnings.simplefilter("ignore", DeprecationWarning)
    from starlette.testclient import TestClient

from crm_bridge.agent_commands import take_pending
from crm_bridge.db import make_engine, migrate
from crm_bridge.models import (
    AgentCommand,
    Call,
    CallEvent,
    CallNote,
    Customer,
    Ticket,
    TicketHistory,
)
from crm_bridge.report import overdue_tickets
from desk import tickets as workflow
from desk.app import create_app
from desk.auth import seed_agents, set_password
from desk.config import load_desk_config
from desk.queries import pop_for
from ivr.config import ConfigError

from .conftest import earlier_today

CONF = """[general]
timezone = Asia/Shanghai
[database]
url = sqlite:///crm.db
[801]
type = agent
seat_group = senior
secret = pw801-secret
name = 张敏
[802]
type = agent
seat_group = senior
secret = pw802-secret
name = 李强
[desk]
secret_key = 0123456789abcdef0123456789abcdef-test
departments = 客服部, 技术部
"""
EVIL = ["'); DROP TABLE tickets; --", "<script>alert(1)</script>", '" OR 1=1 --', "{{ 7*7 }}", "${jndi:ldap://x}"]


@pytest.fixture
def desk(tmp_path: Path):  # type: ignore[no-untyped-def]
    conf = tmp_path / "sip.conf"
    conf.write_text(CONF, encoding="utf-8")
    config = load_desk_config(conf)
    engine = make_engine(config.database_url)
    migrate(engine)
    seed_agents(engine, config)
    set_password(engine, "王经理", "supervisor-pw", role="supervisor")
    now = datetime.now(UTC)
    started = earlier_today(5)  # today's calls for the wallboard, also at 00:01
    with Session(engine) as s, s.begin():
        s.add(Customer(phone="13800000001", name="赵丽华", assets=9_000_000, volume=0))
        for n, agent in enumerate(("801", "802"), start=1):
            call = Call(
                sip_call_id=f"call-{agent}",
                caller=f"1380000000{n}",
                callee="95000",
                started_at=started,
                seat_group="senior",
                agent_number=agent,
                tier="senior",
                service="consulting",
                outcome="completed",
                talk_s=60,
            )
            s.add(call)
            s.flush()
            s.add_all(
                [
                    CallEvent(
                        call_id=call.id,
                        at=started,
                        kind="queued",
                        detail="seat_group=senior service=consulting",
                    ),
                    CallEvent(
                        call_id=call.id,
                        at=started + timedelta(seconds=3),
                        kind="agent_rung",
                        detail=f"agent={agent}",
                    ),
                ]
            )
            s.add(
                Ticket(
                    call_id=call.id,
                    customer_phone=call.caller,
                    agent_number=agent,
                    seat_group="senior",
                    status="open",
                    opened_at=now,
                    next_feedback_due=now + timedelta(days=1),
                    description=f"{agent} 的投诉",
                )
            )
    app = create_app(config, engine)
    with TestClient(app, base_url="https://testserver") as client:
        yield client, engine, config
    engine.dispose()


def csrf_of(client: TestClient, path: str = "/login") -> str:
    page = client.get(path)
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, page.text
    return match.group(1)


def login(client: TestClient, username: str, password: str):  # type: ignore[no-untyped-def]
    return client.post("/login", data={"csrf": csrf_of(client), "username": username, "password": password})


def snapshot(engine) -> tuple:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        return tuple(
            s.scalar(select(func.count()).select_from(m)) for m in (Ticket, TicketHistory, CallNote, AgentCommand)
        ) + (
            tuple(
                s.execute(
                    select(
                        Ticket.id,
                        Ticket.status,
                        Ticket.description,
                        Ticket.department,
                        Ticket.result,
                        Ticket.next_feedback_due,
                    )
                ).all()
            ),
        )


def ids(engine) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with Session(engine) as s:
        calls = dict(s.execute(select(Call.agent_number, Call.id)).all())
        ts = dict(s.execute(select(Ticket.agent_number, Ticket.id)).all())
    return {"call801": calls["801"], "call802": calls["802"], "ticket801": ts["801"], "ticket802": ts["802"]}


def test_session_cookie_is_signed_httponly_samesite_strict_and_secure(desk) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = desk
    cookie = client.get("/login").headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" in cookie
    assert "default-src 'self'" in client.get("/login").headers["content-security-policy"]


def test_wrong_password_is_refused_and_unknown_users_look_the_same(desk) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = desk
    for username in ("801", "999", "' OR '1'='1"):
        r = login(client, username, "wrong-password")
        assert r.status_code == 401 and "工号/用户名或密码不正确" in r.text
    assert client.get("/desk", follow_redirects=False).headers["location"] == "/login"
    r = login(client, "801", "pw801-secret")  # the SIP secret seeded the first password
    assert r.status_code == 200 and "坐席台" in r.text and "801号 张敏" in r.text


def test_login_attempts_are_rate_limited(desk) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = desk
    codes = [login(client, "801", f"guess-{i}").status_code for i in range(7)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
    assert "登录尝试过多" in login(client, "801", "pw801-secret").text  # even the right one, for the minute
    # the address gets four times as many (agents behind one NAT), then it is refused for every account
    codes = [login(client, f"9{i:02d}", "guess").status_code for i in range(14)]
    assert codes[:12] == [401] * 12 and codes[12:] == [429, 429]


def test_every_form_refuses_a_missing_or_wrong_csrf_token_and_changes_nothing(desk) -> None:  # type: ignore[no-untyped-def]
    client, engine, _ = desk
    login(client, "801", "pw801-secret")
    i = ids(engine)
    before = snapshot(engine)
    posts = {
        "/desk/command": {"command": "pause"},
        f"/calls/{i['call801']}/note": {"note": "x", "wrap_up_code": "已解决"},
        f"/calls/{i['call801']}/tickets": {"description": "x"},
        f"/tickets/{i['ticket801']}/edit": {"description": "changed", "department": "客服部"},
        f"/tickets/{i['ticket801']}/move": {"to": "forwarded", "note": ""},
        f"/tickets/{i['ticket801']}/feedback": {"text": "x"},
        f"/calls/{i['call801']}/evaluations": {"agent": "801", "comment": "x"},  # QA review (desk/qa_pages.py)
        "/evaluations/1/respond": {"action": "acknowledged", "comment": ""},
        f"/tickets/{i['ticket801']}/dnc": {"action": "add"},
        "/logout": {},
        "/login": {"username": "801", "password": "pw801-secret"},
        "/monitor": {"agent": "801", "phone": "880", "mode": "listen"},
        "/phone/credentials": {},  # the browser phone (desk/static/phone.js)
    }
    routes = {r.path for r in client.app.routes if "POST" in (getattr(r, "methods", None) or ())}
    assert {re.sub(r"/\d+", "/{id}", p) for p in posts} == {re.sub(r"\{\w+\}", "{id}", p) for p in routes}, (
        "a POST route is untested"
    )
    for path, data in posts.items():
        for token in (None, "forged-token"):
            r = client.post(path, data=data if token is None else {**data, "csrf": token})
            assert r.status_code == 403 and "CSRF" in r.text, path
    assert snapshot(engine) == before
    assert client.get("/desk").status_code == 200  # still logged in: /logout without a token did nothing


def test_an_agent_sees_only_their_own_calls_and_tickets(desk) -> None:  # type: ignore[no-untyped-def]
    client, engine, _ = desk
    login(client, "801", "pw801-secret")
    i = ids(engine)
    assert client.get(f"/tickets/{i['ticket801']}").status_code == 200
    r = client.get(f"/tickets/{i['ticket802']}")
    assert r.status_code == 403 and "只能查看自己负责的工单" in r.text and "802 的投诉" not in r.text
    assert client.get(f"/calls/{i['call802']}").status_code == 403
    assert "802 的投诉" not in client.get("/tickets").text
    before = snapshot(engine)
    token = csrf_of(client, "/desk")
    for path, data in (
        (f"/tickets/{i['ticket802']}/edit", {"description": "hijack"}),
        (f"/tickets/{i['ticket802']}/move", {"to": "forwarded"}),
        (f"/tickets/{i['ticket802']}/feedback", {"text": "hijack"}),
        (f"/calls/{i['call802']}/note", {"note": "hijack"}),
        (f"/calls/{i['call802']}/tickets", {"description": "hijack"}),
    ):
        assert client.post(path, data={**data, "csrf": token}).status_code == 403, path
    assert snapshot(engine) == before
    assert client.get("/wallboard").status_code == 403 and client.get("/report").status_code == 403
    assert client.get("/wallboard/events").status_code == 403


def test_injection_attempts_in_every_text_field_are_stored_inert(desk) -> None:  # type: ignore[no-untyped-def]
    client, engine, _ = desk
    i = ids(engine)
    for evil in EVIL:  # the login form: refused like any wrong password
        assert login(client, evil, evil).status_code == 401
    login(client, "801", "pw801-secret")
    token = csrf_of(client, "/desk")
    for evil in EVIL:
        assert (
            client.post(
                f"/calls/{i['call801']}/note", data={"csrf": token, "note": evil, "wrap_up_code": "已解决"}
            ).status_code
            == 200
        )
        with Session(engine) as s:
            assert s.scalar(select(CallNote.note)) == evil
        r = client.post(f"/calls/{i['call801']}/tickets", data={"csrf": token, "description": evil})
        ticket_url = str(r.url)
        assert r.status_code == 200 and "/tickets/" in ticket_url
        for field in ("description", "result"):
            assert client.post(ticket_url + "/edit", data={"csrf": token, field: evil + field}).status_code == 200
        assert client.post(ticket_url + "/feedback", data={"csrf": token, "text": evil}).status_code == 200
        page = client.get(ticket_url).text
        assert "<script>alert(1)</script>" not in page
        if "<script>" in evil:
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        if "7*7" in evil:
            assert "{{ 7*7 }}" in page  # shown as typed, never evaluated
        with Session(engine) as s:
            t = s.get(Ticket, int(ticket_url.rsplit("/", 1)[1]))
            assert (t.description, t.result) == (evil + "description", evil + "result")
    # every table is still there, and choices outside their lists are refused without a change
    assert {"tickets", "ticket_history", "calls", "desk_users"} <= set(inspect(engine).get_table_names())
    before = snapshot(engine)
    for evil in EVIL:
        for path, data in (
            (f"/tickets/{i['ticket801']}/edit", {"department": evil}),
            (f"/tickets/{i['ticket801']}/edit", {"caller_satisfied": evil}),
            (f"/tickets/{i['ticket801']}/move", {"to": evil}),
            (f"/calls/{i['call801']}/note", {"note": "ok", "wrap_up_code": evil}),
            ("/desk/command", {"command": evil}),
        ):
            r = client.post(path, data={**data, "csrf": token})
            assert r.status_code == 400 and "无效" in r.text, (path, data)
    for path in ("/tickets/1%20OR%201=1", "/calls/1;DROP", "/tickets/99999999999999"):
        assert client.get(path).status_code == 404
    assert client.get("/report?date=2026-13-45' OR 1=1").status_code == 403  # agents cannot see the report at all
    assert (
        client.post(f"/tickets/{i['ticket801']}/edit", data={"csrf": token, "description": "x" * 5000}).status_code
        == 400
    )
    assert snapshot(engine) == before


def test_complaint_walks_from_open_to_closed_with_history(desk) -> None:  # type: ignore[no-untyped-def]
    client, engine, _ = desk
    i = ids(engine)
    login(client, "801", "pw801-secret")
    token = csrf_of(client, "/desk")
    r = client.post(f"/calls/{i['call801']}/tickets", data={"csrf": token, "description": "账户资金到账延迟"})
    url = str(r.url)
    r = client.post(url + "/move", data={"csrf": token, "to": "forwarded"})
    assert r.status_code == 400 and "请先选择处理部门" in r.text
    client.post(url + "/edit", data={"csrf": token, "department": "技术部"})
    assert client.post(url + "/move", data={"csrf": token, "to": "forwarded"}).status_code == 200
    assert client.post(url + "/move", data={"csrf": token, "to": "closed"}).status_code == 400  # not from forwarded
    client.post(url + "/feedback", data={"csrf": token, "text": "已转技术部,正在处理"})
    client.post(url + "/edit", data={"csrf": token, "result": "已补发到账"})
    client.post(url + "/move", data={"csrf": token, "to": "result_received"})
    client.post(url + "/edit", data={"csrf": token, "caller_satisfied": "yes"})
    client.post(url + "/move", data={"csrf": token, "to": "caller_informed"})
    page = client.post(url + "/move", data={"csrf": token, "to": "closed"}).text
    assert 'id="ticket-status">已结案' in page
    with Session(engine) as s:
        t = s.get(Ticket, int(url.rsplit("/", 1)[1]))
        assert (t.status, t.department, t.result, t.caller_satisfied) == ("closed", "技术部", "已补发到账", True)
        assert t.closed_at is not None and t.last_feedback_at is not None
        history = [(h.actor, h.action, h.status_to) for h in t.history]
    assert history == [
        ("801", "opened", "open"),
        ("801", "edited", None),
        ("801", "status", "forwarded"),
        ("801", "feedback", None),
        ("801", "edited", None),
        ("801", "status", "result_received"),
        ("801", "edited", None),
        ("801", "status", "caller_informed"),
        ("801", "status", "closed"),
    ]


def test_daily_feedback_keeps_the_overdue_list_right_on_day_2_and_3(desk) -> None:  # type: ignore[no-untyped-def]
    _, engine, _ = desk
    day1 = datetime(2026, 11, 24, 1, 0, tzinfo=UTC)  # 09:00 Shanghai
    with Session(engine) as s, s.begin():
        call = s.scalars(select(Call)).first()
        t = workflow.open_ticket(
            s, call, actor="801", agent_number="801", description="投诉", department="客服部", now=day1
        )
        workflow.move(s, t, "forwarded", actor="801", now=day1)  # a forwarded ticket still needs feedback
        tid = t.id
    for ticket in overdue_tickets(engine, day1 + timedelta(days=5)):
        if ticket.id != tid:  # the fixture's tickets are not the subject here
            with Session(engine) as s, s.begin():
                s.get_one(Ticket, ticket.id).status = "closed"

    def overdue(at: datetime) -> bool:
        return tid in [x.id for x in overdue_tickets(engine, at)]

    def feedback(at: datetime) -> None:
        with Session(engine) as s, s.begin():
            workflow.log_feedback(s, s.get_one(Ticket, tid), actor="801", text="今日进展", now=at)

    assert not overdue(day1 + timedelta(hours=23, minutes=59))
    assert overdue(day1 + timedelta(days=1, minutes=30))  # day 2, 09:30: no feedback yet
    feedback(day1 + timedelta(days=1, hours=1))  # day 2, 10:00
    assert not overdue(day1 + timedelta(days=1, hours=2))
    assert not overdue(day1 + timedelta(days=2, minutes=59))  # day 3, 09:59
    assert overdue(day1 + timedelta(days=2, hours=1, minutes=1))  # day 3, 10:01
    feedback(day1 + timedelta(days=2, hours=2))
    assert not overdue(day1 + timedelta(days=2, hours=3))
    assert overdue(day1 + timedelta(days=3, hours=3))  # day 4


def test_the_softphone_link_finds_the_call_by_its_sip_call_id(desk) -> None:  # type: ignore[no-untyped-def]
    client, engine, _ = desk
    login(client, "801", "pw801-secret")
    i = ids(engine)
    r = client.get("/calls/sip", params={"call_id": "call-801"}, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, f"/calls/{i['call801']}")
    assert client.get("/calls/sip", params={"call_id": "call-802"}).status_code == 403  # someone else's
    assert client.get("/calls/sip", params={"call_id": "nope' OR 1=1"}).status_code == 404


def test_pause_button_queues_a_command_for_the_ivr(desk) -> None:  # type: ignore[no-untyped-def]
    client, engine, _ = desk
    login(client, "801", "pw801-secret")
    r = client.post("/desk/command", data={"csrf": csrf_of(client, "/desk"), "command": "pause"})
    assert r.status_code == 200 and "已发送" in r.text
    assert [(c.agent, c.command, c.taken_by) for c in take_pending(engine, taken_by="ivr")] == [("801", "pause", "ivr")]


def test_recording_buttons_queue_pause_and_resume_of_the_agents_recording(desk) -> None:  # type: ignore[no-untyped-def]
    client, engine, _ = desk
    login(client, "801", "pw801-secret")
    page = client.get("/desk").text
    assert 'id="cmd-pause_recording">暂停录音' in page and 'id="cmd-resume_recording">恢复录音' in page
    for command in ("pause_recording", "resume_recording"):
        client.post("/desk/command", data={"csrf": csrf_of(client, "/desk"), "command": command})
    assert [c.command for c in take_pending(engine, taken_by="ivr")] == ["pause_recording", "resume_recording"]


def test_pop_has_name_tier_service_wait_history_and_tickets(desk) -> None:  # type: ignore[no-untyped-def]
    client, engine, config = desk
    i = ids(engine)
    with Session(engine) as s:
        rung = s.scalar(select(CallEvent.id).where(CallEvent.kind == "agent_rung", CallEvent.detail == "agent=801"))
    pop = pop_for(engine, config, i["call801"], rung, "801")
    assert (pop.name, pop.tier, pop.service, pop.queue_wait_s, pop.assets_bracket) == (
        "赵丽华",
        "senior",
        "consulting",
        60 and pop.queue_wait_s,
        "500万–1000万",
    )
    assert [t.description for t in pop.open_tickets] == ["801 的投诉"]
    login(client, "801", "pw801-secret")
    page = client.get("/desk").text
    assert 'id="pop-name">赵丽华' in page and 'id="pop-tier">高端客户' in page and "业务咨询" in page


def test_supervisor_sees_wallboard_report_and_every_ticket(desk) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = desk
    assert login(client, "王经理", "supervisor-pw").status_code == 200
    board = client.get("/wallboard").text
    assert 'id="calls-senior">2<' in board and "高级坐席组" in board
    assert "IVR未运行 2" in board  # no IVR writes a status file here: both senior agents show as offline
    assert "801 的投诉" in client.get("/tickets").text and "802 的投诉" in client.get("/tickets").text
    report = client.get("/report")
    assert report.status_code == 200 and "热线日报" in report.text
    day = re.search(r'id="report-day">([\d-]+)<', report.text).group(1)
    chart = client.get(f"/report/{day}/calls_by_group.png")
    assert chart.status_code == 200 and chart.content[:4] == b"\x89PNG"
    r = client.get("/report?date=not-a-date")
    assert r.status_code == 400 and "日期格式应为" in r.text


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("colour = blue", r"sip.conf:\d+: \[desk\] colour: unknown key"),
        ("port = 99999", r"sip.conf:\d+: \[desk\] port: '99999' is not a port from 1 to 65535"),
        ("port = 6669", r"\[desk\] port: '6669' is not a port .* that browsers open \(Chromium and Firefox refuse"),
        ("bind = localhost", r"\[desk\] bind: 'localhost' is not an IP address"),
        ("secret_key = short", r"\[desk\] secret_key: needs 32 characters"),
        ("display_name = {name.__class__}", r"\[desk\] display_name: .*unknown field"),
        ("poll_ms = 1000", r"\[desk\] poll_ms"),
        ("not a setting", r"sip.conf:4: syntax: expected 'key = value'"),  # read as the IVR reads sip.conf
    ],
)
def test_desk_config_errors_name_file_line_key_and_reason(tmp_path: Path, line: str, error: str) -> None:
    conf = tmp_path / "sip.conf"
    conf.write_text("[general]\nport = 5060\n[desk]\n" + line + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=error) as info:
        load_desk_config(conf)
    assert info.value.line == 4


def test_desk_defaults(tmp_path: Path) -> None:
    conf = tmp_path / "sip.conf"
    conf.write_text("[general]\nport = 5060\n", encoding="utf-8")
    c = load_desk_config(conf)
    assert (c.bind, c.port, c.service_level_seconds, c.cookie_secure, c.display_name) == (
        "127.0.0.1",
        8080,
        20,
        True,
        "{name} {tier_label} {service_label}",
    )


def test_accounts_from_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    import io

    from desk.__main__ import main as desk_cli
    from desk.auth import authenticate

    conf = tmp_path / "sip.conf"
    conf.write_text(CONF, encoding="utf-8")
    monkeypatch.setattr("sys.stdin", io.StringIO("new-desk-password\n"))
    assert desk_cli(["--config", str(conf), "set-password", "801"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("boss-password\n"))
    assert desk_cli(["--config", str(conf), "add-supervisor", "王经理"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert desk_cli(["--config", str(conf), "add-supervisor", "赵主管"]) == 1
    assert desk_cli(["--config", str(conf), "set-password", "999"]) == 1
    out, err = capsys.readouterr()
    assert "password set for agent 801" in out and "supervisor 王经理 created" in out
    assert "at least 8 characters" in err and "no agent [999]" in err
    config = load_desk_config(conf)
    engine = make_engine(config.database_url)
    assert authenticate(engine, config, "801", "new-desk-password") is not None
    assert authenticate(engine, config, "王经理", "boss-password").role == "supervisor"
    assert authenticate(engine, config, "赵主管", "short") is None
    from crm_bridge.models import DeskUser

    with Session(engine) as s:  # only hashes are stored
        hashes = s.scalars(select(DeskUser.password_hash)).all()
    assert all(h.startswith("$argon2id$") for h in hashes) and not any("password" in h for h in hashes)
    engine.dispose()


def test_add_supervisor_if_missing_creates_once_and_then_leaves_the_password_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What scripts/run-ivr.sh relies on to create the demo supervisor without resetting a changed password."""
    import io

    from desk.__main__ import main as desk_main
    from desk.auth import authenticate

    conf = tmp_path / "sip.conf"
    conf.write_text(CONF, encoding="utf-8")
    for password in ("first-password", "second-password"):
        monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
        assert desk_main(["--config", str(conf), "add-supervisor", "值班主管", "--if-missing"]) == 0
    assert capsys.readouterr().out.splitlines() == ["supervisor 值班主管 created", "supervisor 值班主管 exists: left as it is"]
    config = load_desk_config(conf)
    engine = make_engine(config.database_url)
    assert authenticate(engine, config, "值班主管", "first-password") is not None
    assert authenticate(engine, config, "值班主管", "second-password") is None
    engine.dispose()


def test_the_wallboard_average_and_bad_ratings_read_the_questionnaire_answers(desk) -> None:  # type: ignore[no-untyped-def]
    from crm_bridge.models import SurveyAnswer

    client, engine, _ = desk
    now = datetime.now(UTC)
    with Session(engine) as s, s.begin():
        calls = dict(s.execute(select(Call.agent_number, Call.id)).all())
        # 801's caller: 服务态度 2 (score 3, 不满意) and an unscored answer; 802's: 5 (score 1)
        for agent, question, key, label, score in (("801", "attitude", "2", "不满意", 3),
                                                   ("801", "quality", "1", "非常不满意", None),
                                                   ("802", "attitude", "5", "非常满意", 1)):
            s.add(SurveyAnswer(call_id=calls[agent], questionnaire="after_sales", version="v1", question=question,
                               key=key, value=key, label=label, score=score, answered_at=now))
    assert login(client, "王经理", "supervisor-pw").status_code == 200
    board = client.get("/wallboard").text
    assert 'id="survey-avg-senior">2.00<' in board, "the mean of the scored answers, 3 and 1"
    bad = re.search(r'id="bad-ratings">(.*?)</ul>', board, re.S).group(1)  # type: ignore[union-attr]
    assert "不满意 坐席801 客户 13800000001" in bad and "坐席802" not in bad
    assert "after_sales" in client.get("/report").text  # the report's questionnaire table



def test_the_wallboards_day_totals_are_reused_for_seconds_and_never_carried_into_the_next_day(
    desk, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from desk import queries

    client, engine, _ = desk
    counted: list[object] = []
    real = queries.day_figures
    monkeypatch.setattr(queries, "day_figures", lambda *a, **k: counted.append(a) or real(*a, **k))
    assert login(client, "王经理", "supervisor-pw").status_code == 200  # a supervisor lands on the wallboard
    for _ in range(3):  # a board a second for three seconds: the day's totals (all of today's calls) once
        page = client.get("/wallboard")
        assert page.status_code == 200, page.text[:300]
        time.sleep(1.0)
    assert len(counted) == 1
    # a report computed just before midnight is not today's: the board counts today's calls again
    config = load_desk_config(tmp_path / "sip.conf")
    yesterday = real(engine, config, datetime.now(UTC) - timedelta(days=1))
    board = queries.wallboard(engine, config, queries.AgentStates(config, engine), report=yesterday)
    assert board.day == datetime.now(config.zone).date().isoformat() and board.total_calls == 2
