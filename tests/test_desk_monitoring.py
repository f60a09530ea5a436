"""The desk's live-monitoring button: supervisors only, with CSRF, checked input, a monitor command for the IVR."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.testclient import TestClient

from crm_bridge.agent_commands import take_pending
from crm_bridge.db import make_engine, migrate
from crm_bridge.models import AgentCommand, Call
from desk.app import create_app
from desk.auth import seed_agents, set_password
from desk.config import load_desk_config

from .test_desk import CONF, csrf_of, login

MONITORING = "[880]\ntype = agent\nseat_group = junior\nsecret = pw880-secret\n[monitoring]\nsupervisors = 880\n"


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[tuple[TestClient, Any, int]]:
    conf = tmp_path / "sip.conf"
    conf.write_text(CONF + MONITORING, encoding="utf-8")
    config = load_desk_config(conf)
    engine = make_engine(config.database_url)
    migrate(engine)
    seed_agents(engine, config)
    set_password(engine, "王经理", "supervisor-pw", role="supervisor")
    from datetime import UTC, datetime

    with Session(engine) as s, s.begin():  # a call in progress with agent 801
        call = Call(sip_call_id="call-801", caller="13800000001", callee="95000", started_at=datetime.now(UTC),
                    seat_group="senior", agent_number="801")
        s.add(call)
        s.flush()
        call_id = call.id
    with TestClient(create_app(config, engine), base_url="https://testserver") as client:
        yield client, engine, call_id
    engine.dispose()


def commands(engine: Any) -> list[tuple[str | None, ...]]:
    with Session(engine) as s:
        return [(c.command, c.agent, c.supervisor, c.mode, c.requested_by)
                for c in s.scalars(select(AgentCommand).order_by(AgentCommand.id))]


def test_a_supervisor_sees_the_buttons_on_an_open_call_and_queues_a_monitor_command(desk) -> None:  # type: ignore[no-untyped-def]
    client, engine, call_id = desk
    login(client, "王经理", "supervisor-pw")
    page = client.get(f"/calls/{call_id}").text
    assert 'id="monitor-801"' in page and 'value="whisper"' in page and '<option value="880"' in page
    r = client.post("/monitor", data={"csrf": csrf_of(client, f"/calls/{call_id}"), "agent": "801", "phone": "880",
                                      "mode": "whisper", "back": f"/calls/{call_id}"})
    assert r.status_code == 200 and r.url.path == f"/calls/{call_id}" and 'id="monitor-sent"' in r.text
    assert commands(engine) == [("monitor", "801", "880", "whisper", "王经理")]
    [taken] = take_pending(engine)  # what the IVR's one-second loop gets
    assert (taken.command, taken.agent, taken.supervisor, taken.mode) == ("monitor", "801", "880", "whisper")


def test_an_agent_gets_no_buttons_and_403(desk) -> None:  # type: ignore[no-untyped-def]
    client, engine, call_id = desk
    login(client, "801", "pw801-secret")
    assert 'id="monitor-801"' not in client.get(f"/calls/{call_id}").text
    r = client.post("/monitor", data={"csrf": csrf_of(client, "/desk"), "agent": "802", "phone": "880",
                                      "mode": "listen"})
    assert r.status_code == 403
    assert commands(engine) == []


@pytest.mark.parametrize(("field", "value", "message"), [
    ("agent", "999", "坐席工号无效"),
    ("phone", "801", "班长话机无效"),  # an agent's phone, not a supervisor's
    ("mode", "spy", "监听方式无效"),
])
def test_bad_input_gets_a_clear_400_and_queues_nothing(desk, field: str, value: str, message: str) -> None:  # type: ignore[no-untyped-def]
    client, engine, _ = desk
    login(client, "王经理", "supervisor-pw")
    data = {"csrf": csrf_of(client, "/wallboard"), "agent": "801", "phone": "880", "mode": "listen", field: value}
    r = client.post("/monitor", data=data)
    assert r.status_code == 400 and message in r.text
    assert commands(engine) == []


def test_the_way_back_stays_on_the_desk(desk) -> None:  # type: ignore[no-untyped-def]
    client, _, _ = desk
    login(client, "王经理", "supervisor-pw")
    r = client.post("/monitor", data={"csrf": csrf_of(client, "/wallboard"), "agent": "801", "phone": "880",
                                      "mode": "barge", "back": "//evil.example/x"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/wallboard?monitor=barge"
