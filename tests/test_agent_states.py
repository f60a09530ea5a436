"""The agent_states log: every state change the IVR sees goes through the durable writer to the CRM."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from crm_bridge.db import make_engine, migrate
from crm_bridge.models import AgentStateChange
from crm_bridge.outbox import Outbox, decode, encode
from crm_bridge.records import RecordAgentState
from crm_bridge.writer import CrmWriter
from ivr.acd import Acd
from ivr.agents import Agents
from ivr.config import AgentConfig, QueueConfig
from ivr.media import MediaClock
from ivr.service import SEAT_GROUPS

T0 = datetime(2026, 12, 1, 15, 30, tzinfo=UTC)


def test_an_agent_state_record_round_trips_through_the_journal() -> None:
    record = RecordAgentState("801", "talking", T0, "senior", "call-1@host")
    assert decode(encode(7, record)) == (7, record)


def test_the_writer_stores_agent_states_and_a_replay_after_a_crash_stores_them_once(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(engine)
    crashed = CrmWriter(engine, Outbox(tmp_path / "outbox"), worker="ivr-a")
    crashed.submit(RecordAgentState("801", "available", T0, "senior"))
    crashed.submit(RecordAgentState("801", "talking", T0 + timedelta(seconds=5), "senior", "call-1"))
    assert crashed.outbox is not None
    crashed.outbox.close()  # died before the writer thread ran
    writer = CrmWriter(engine, Outbox(tmp_path / "outbox"), worker="ivr-a")
    assert writer.recover() == 2
    writer.start()
    writer.submit(RecordAgentState("801", "wrap_up", T0 + timedelta(seconds=65), "senior"))
    assert writer.close() == 0
    with Session(engine) as s:
        rows = s.execute(select(AgentStateChange.state, AgentStateChange.sip_call_id, AgentStateChange.worker)
                         .order_by(AgentStateChange.at)).all()
    assert [tuple(r) for r in rows] == [("available", None, "ivr-a"), ("talking", "call-1", "ivr-a"),
                                        ("wrap_up", None, "ivr-a")]


def test_the_agent_side_logs_each_change_once_and_logs_everyone_out_when_it_stops() -> None:
    pool = Acd.from_agents((AgentConfig("801", "senior", "pw", None), AgentConfig("802", "junior", "pw", None)),
                           QueueConfig(), tuple(SEAT_GROUPS))
    config = SimpleNamespace(queues=QueueConfig(), agents=())
    agents = Agents(pool, config, None, None, {}, lambda coro: coro.close(), "127.0.0.1",  # type: ignore[arg-type]
                    MediaClock())
    logged: list[RecordAgentState] = []
    agents.state_log = logged.append
    agents.publish_states()
    pool.login("801", ("127.0.0.1", 5070), T0)
    agents.publish_states()
    agents.publish_states()  # nothing changed: nothing logged
    asyncio.run(pool.set_paused("801", True, T0))
    agents.publish_states()
    assert [(r.agent_number, r.state) for r in logged] == [
        ("801", "logged_out"), ("802", "logged_out"), ("801", "available"), ("801", "paused")]
    asyncio.run(agents.close())
    assert [(r.agent_number, r.state) for r in logged[4:]] == [("801", "logged_out")]


@pytest.mark.e2e
def test_a_real_call_leaves_the_agents_states_in_the_crm_and_the_scorecard_counts_it(  # type: ignore[no-untyped-def]
        ivr_factory, tmp_path: Path) -> None:
    from crm_bridge.scorecards import Period, scorecards

    from .conftest import free_port, sipp
    from .test_e2e_routing import agent_uas, agents_conf, customers
    from .test_e2e_sip import finished, wait_for_row

    agent_port = free_port()
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    ivr = ivr_factory(db_url=db_url, extra="[queues]\nwrap_up_seconds = 1\n"
                      + agents_conf(**{"801": ("senior", f"127.0.0.1:{agent_port}")}))
    agent = agent_uas(tmp_path, ivr, agent_port, talk_ms=3000)
    caller = sipp(tmp_path, "survey_caller", ivr.port, extra=("-d", "11000"))
    finished(caller)
    finished(agent)
    wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    assert ivr.stop() == 0
    engine = make_engine(db_url)
    with Session(engine) as s:
        rows = s.execute(select(AgentStateChange.state, AgentStateChange.at, AgentStateChange.sip_call_id)
                         .where(AgentStateChange.agent_number == "801").order_by(AgentStateChange.id)).all()
    assert [r.state for r in rows] == ["available", "ringing", "talking", "wrap_up", "available", "logged_out"]
    assert rows[2].sip_call_id == f"1-{caller.proc.pid}@127.0.0.1"  # talking with that caller
    talked = (rows[3].at - rows[2].at).total_seconds()
    assert talked == pytest.approx(3.0, abs=1.5)  # the agent's 3 s of media, give or take signalling
    assert 0.95 <= (rows[4].at - rows[3].at).total_seconds() < 2.5  # wrap_up_seconds, and a busy machine's lag

    today = datetime.now(ZoneInfo("Asia/Shanghai")).date()
    period = Period(today - timedelta(days=1), today, ZoneInfo("Asia/Shanghai"))  # a call at midnight is in it too
    card = {c.agent: c for c in scorecards(engine, period).cards}["801"]
    assert card["calls_answered"] == 1
    assert card["talking_s"] == pytest.approx(talked, abs=0.01)
    assert card["aht_s"] == pytest.approx(talked + (rows[4].at - rows[3].at).total_seconds(), abs=0.01)
    engine.dispose()
