"""Desk -> IVR commands: queued by the desk, claimed once by the IVR's one-second loop."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from crm_bridge.agent_commands import request_command, take_pending
from crm_bridge.db import make_engine, migrate
from crm_bridge.models import AgentCommand

T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request, tmp_path: Path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'crm.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = make_engine(url)
    migrate(engine)
    yield engine
    engine.dispose()


def test_pending_commands_are_taken_in_order_and_only_once(engine) -> None:  # type: ignore[no-untyped-def]
    request_command(engine, "801", "pause", requested_by="801", now=T0)
    request_command(engine, "802", "end_wrap_up", requested_by="802", now=T0 + timedelta(seconds=1))
    request_command(engine, "801", "resume", requested_by="801", now=T0 + timedelta(seconds=2))
    taken = take_pending(engine, taken_by="ivr-1", now=T0 + timedelta(seconds=3))
    assert [(c.agent, c.command) for c in taken] == [("801", "pause"), ("802", "end_wrap_up"), ("801", "resume")]
    assert {c.taken_by for c in taken} == {"ivr-1"}
    assert take_pending(engine, now=T0 + timedelta(seconds=4)) == []


def test_a_worker_takes_only_its_own_agents_commands(engine) -> None:  # type: ignore[no-untyped-def]
    request_command(engine, "801", "pause", now=T0)
    request_command(engine, "821", "pause", now=T0)
    assert [c.agent for c in take_pending(engine, agents={"821"}, now=T0)] == ["821"]
    assert [c.agent for c in take_pending(engine, agents={"801", "802"}, now=T0)] == ["801"]


def test_a_stale_command_is_expired_not_applied(engine) -> None:  # type: ignore[no-untyped-def]
    request_command(engine, "801", "pause", now=T0)
    assert take_pending(engine, now=T0 + timedelta(minutes=5)) == []
    with Session(engine) as s:
        assert s.scalars(select(AgentCommand.taken_by)).all() == ["expired"]


def test_unknown_command_is_refused(engine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="unknown agent command"):
        request_command(engine, "801", "logout")


def test_two_workers_polling_together_never_both_take_a_command(engine) -> None:  # type: ignore[no-untyped-def]
    for i in range(40):
        request_command(engine, "801", "pause" if i % 2 else "resume", now=T0)
    got: dict[str, list[int]] = {"a": [], "b": []}

    def poll(name: str) -> None:
        for _ in range(10):
            try:
                got[name] += [c.id for c in take_pending(engine, taken_by=name, now=T0)]
            except Exception:  # noqa: BLE001, S110 - SQLite may report "database is locked" to the loser; it polls again
                pass

    threads = [threading.Thread(target=poll, args=(n,)) for n in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got["a"] + got["b"]) == list(range(1, 41)) and not set(got["a"]) & set(got["b"])
