"""The agent_states log: every state change the IVR sees goes through the durable writer to the CRM."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

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
    agents = Agents(pool, config, None, None, {}, lambda coro: coro.close(), "127.0.0.1")  # type: ignore[arg-type]
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
