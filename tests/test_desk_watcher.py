"""The desk's one watcher per process: N open agent pages cost the CRM one query per tick, and pops still
arrive within a second, in order, to the pages of the agent rung (and only to them)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from crm_bridge.db import make_engine, migrate
from crm_bridge.models import Call, CallEvent
from desk.config import load_desk_config
from desk.queries import AgentStates
from desk.watcher import DeskWatcher, Pop, State

CONF = """[general]
timezone = Asia/Shanghai
[database]
url = sqlite:///crm.db
[801]
type = agent
seat_group = senior
secret = pw801-secret
[802]
type = agent
seat_group = senior
secret = pw802-secret
[desk]
secret_key = 0123456789abcdef0123456789abcdef-test
"""
TICK_S = 0.1


@pytest.fixture
def crm(tmp_path: Path) -> tuple[Any, Any, list[str]]:
    conf = tmp_path / "sip.conf"
    conf.write_text(CONF, encoding="utf-8")
    config = load_desk_config(conf)
    engine = make_engine(config.database_url)
    migrate(engine)
    statements: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "call_events" in statement and statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    return config, engine, statements


def ring(engine: Any, agent: str) -> int:
    """What the IVR writes when it rings `agent`'s phone: an agent_rung event; its id."""
    with Session(engine) as s, s.begin():
        call = Call(sip_call_id=f"c-{time.monotonic_ns()}", caller="13800000001", callee="95000",
                    started_at=datetime.now(UTC))
        s.add(call)
        s.flush()
        rung = CallEvent(call_id=call.id, at=datetime.now(UTC), kind="agent_rung", detail=f"agent={agent}")
        s.add(rung)
        s.flush()
        return rung.id


async def watch(config: Any, engine: Any, statements: list[str], pages: int, seconds: float) -> tuple[int, int]:
    """`pages` pages (half 801, half 802) watched for `seconds`: (ticks, call_events queries)."""
    watcher = DeskWatcher(engine, AgentStates(config, engine), TICK_S)
    ticks = 0
    tick = watcher.tick

    async def counted(now: float) -> None:
        nonlocal ticks
        ticks += 1
        await tick(now)

    watcher.tick = counted  # type: ignore[method-assign]
    subscriptions = [watcher.subscribe("801" if n % 2 else "802", 0) for n in range(pages)]
    await asyncio.sleep(TICK_S * 2)  # the first tick: cursor and catch-up, counted apart
    before, ticks = len(statements), 0
    await asyncio.sleep(seconds)
    queries, seen = len(statements) - before, ticks
    for subscription in subscriptions:
        watcher.unsubscribe(subscription)
    await asyncio.sleep(TICK_S * 2)
    return seen, queries


def test_the_crm_sees_one_query_per_tick_whatever_the_number_of_open_pages(crm: tuple[Any, Any, list[str]]) -> None:
    config, engine, statements = crm
    for pages in (1, 300):
        ticks, queries = asyncio.run(watch(config, engine, statements, pages, 1.0))
        assert ticks >= 5
        assert queries <= ticks, f"{pages} pages: {queries} queries in {ticks} ticks"


def test_a_pop_reaches_every_page_of_the_agent_rung_within_a_second_and_no_other(  # type: ignore[no-untyped-def]
        crm: tuple[Any, Any, list[str]]) -> None:
    config, engine, _ = crm
    earlier = ring(engine, "801")  # before the pages opened: shown already (their `after`)

    async def run() -> None:
        watcher = DeskWatcher(engine, AgentStates(config, engine), 0.25)
        pages_801 = [watcher.subscribe("801", earlier) for _ in range(100)]
        pages_802 = [watcher.subscribe("802", earlier) for _ in range(100)]
        late = watcher.subscribe("801", 0)  # a page rendered before `earlier`: caught up with it
        await asyncio.sleep(0.5)
        started = time.monotonic()
        rung = await asyncio.to_thread(ring, engine, "801")
        for page in pages_801:
            item = await asyncio.wait_for(page.queue.get(), 1.0)
            while not isinstance(item, Pop):
                item = await asyncio.wait_for(page.queue.get(), 1.0)
            assert item.event_id == rung
        assert time.monotonic() - started < 1.0
        for page in pages_802:
            assert not any(isinstance(i, Pop) for i in list(page.queue._queue))  # type: ignore[attr-defined]
        pops = [i.event_id for i in list(late.queue._queue) if isinstance(i, Pop)]  # type: ignore[attr-defined]
        assert pops == [earlier, rung], "caught up first, in order"
        for page in [*pages_801, *pages_802, late]:
            watcher.unsubscribe(page)

    asyncio.run(run())


def status_file(path: Path, written_at: datetime, **states: str) -> None:
    """What the IVR writes once a second: each agent's state and when it wrote them."""
    agents = [{"agent": number.removeprefix("a"), "seat_group": "senior", "state": state, "call_id": None}
              for number, state in states.items()]
    path.write_text(json.dumps({"written_at": written_at.isoformat(), "agents": agents, "queues": {}}),
                    encoding="utf-8")


def test_the_card_says_ringing_with_the_pop_though_the_status_file_was_written_before_the_ring(
        crm: tuple[Any, Any, list[str]], tmp_path: Path) -> None:
    config, engine, _ = crm
    status = tmp_path / "var" / "ivr-status.json"
    assert config.status_file == status
    status.parent.mkdir(parents=True, exist_ok=True)

    async def run() -> None:
        watcher = DeskWatcher(engine, AgentStates(config, engine), TICK_S)
        page, other = watcher.subscribe("801", 0), watcher.subscribe("802", 0)
        status_file(status, datetime.now(UTC), a801="available", a802="available")
        await asyncio.sleep(TICK_S * 3)
        assert latest_state(page) == "available"
        status_file(status, datetime.now(UTC), a801="available", a802="available")  # the IVR's last write
        await asyncio.to_thread(ring, engine, "801")  # then it rings 801: the file says available for a while
        item = await asyncio.wait_for(page.queue.get(), 1.0)
        while not isinstance(item, Pop):
            item = await asyncio.wait_for(page.queue.get(), 1.0)
        state = await asyncio.wait_for(page.queue.get(), TICK_S)  # in the same tick as the pop
        assert isinstance(state, State) and state.view.state == "ringing"
        assert latest_state(other) == "available"  # 802 was not rung
        status_file(status, datetime.now(UTC), a801="talking", a802="available")  # the file catches up
        watcher._next_state = 0.0
        await asyncio.sleep(TICK_S * 3)
        assert latest_state(page) == "talking"
        status_file(status, datetime.now(UTC), a801="available", a802="available")  # after the call: available
        watcher._next_state = 0.0
        await asyncio.sleep(TICK_S * 3)
        assert latest_state(page) == "available", "a ring older than the file no longer counts"
        watcher.unsubscribe(page)
        watcher.unsubscribe(other)

    asyncio.run(run())


def latest_state(subscription: Any) -> str | None:
    states = [i.view.state for i in list(subscription.queue._queue) if isinstance(i, State)]
    subscription.queue._queue.clear()
    return states[-1] if states else None
