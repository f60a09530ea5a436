"""Agents shared by two workers through the database (ivr.shared_acd), on SQLite and PostgreSQL.

Two `SharedAcd` objects on one database stand for two IVR workers behind the
balancer; time is passed in, so nothing here waits on a clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from crm_bridge.db import make_engine, migrate, sync_seat_groups
from crm_bridge.models import Agent
from ivr.acd import AgentState
from ivr.config import AgentConfig, QueueConfig
from ivr.service import SEAT_GROUPS
from ivr.shared_acd import SharedAcd

T0 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
PHONE = ("127.0.0.1", 5070)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'crm.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = make_engine(url)
    migrate(engine)
    yield engine
    engine.dispose()


def workers(db: Engine, *agents: AgentConfig, wrap_up: float = 0) -> Iterator[SharedAcd]:
    sync_seat_groups(db, agents, SEAT_GROUPS)
    settings = QueueConfig(wrap_up_seconds=wrap_up)
    made = []
    for name in ("w1", "w2"):
        acd = SharedAcd(settings, tuple(SEAT_GROUPS), db, name, worker_timeout_s=10)
        acd.start(agents, T0)
        made.append(acd)
    return iter(made)


def claim(acd: SharedAcd, seconds: float):  # type: ignore[no-untyped-def]
    return asyncio.run(acd.claim(at(seconds)))


def settle(*acds: SharedAcd) -> None:
    for acd in acds:
        acd._run(lambda conn: None)  # noqa: SLF001 (wait for queued changes)


def state(db: Engine, number: str) -> tuple[str, str | None, str | None]:
    with db.connect() as conn:
        row = conn.execute(select(Agent.state, Agent.call_id, Agent.worker).where(Agent.number == number)).one()
    return row.state, row.call_id, row.worker


def test_one_agent_two_workers_the_oldest_caller_anywhere_gets_them(db: Engine) -> None:
    w1, w2 = workers(db, AgentConfig("821", "junior", "", PHONE))
    w2.join("old-on-w2", "junior", "enquiry", at(1))
    w1.join("new-on-w1", "junior", "enquiry", at(2))
    settle(w1, w2)

    assert claim(w1, 3) == [], "w1's caller is younger than w2's: the agent is left for w2"
    [offer] = claim(w2, 3)
    assert (offer.call_id, offer.agent, offer.contact) == ("old-on-w2", "821", PHONE)
    assert state(db, "821") == ("ringing", "old-on-w2", "w2")
    assert claim(w1, 3) == [], "a ringing agent is nobody else's"

    w2.answered("821")
    settle(w2)
    assert state(db, "821")[0] == "talking"
    assert w2.released("821", at(30)) == 0
    w2.wrap_up_done("821", at(30))
    settle(w2)
    [offer] = claim(w1, 31)
    assert (offer.call_id, offer.agent) == ("new-on-w1", "821")
    for acd in (w1, w2):
        acd.close(at(40))


def test_an_agent_who_does_not_answer_goes_back_and_the_caller_keeps_their_place(db: Engine) -> None:
    w1, w2 = workers(db, AgentConfig("821", "junior", "", PHONE), AgentConfig("822", "junior", "", ("127.0.0.1", 5072)))
    w1.join("c1", "junior", "enquiry", at(1))
    settle(w1)
    [first] = claim(w1, 2)
    waiting = w1.no_answer(first.agent, at(20))
    assert waiting is not None and w1.position("c1") == 1
    settle(w1)
    assert state(db, first.agent) == ("available", None, None)
    [second] = claim(w1, 21)
    assert second.agent != first.agent, "the longest-idle agent is tried next"
    # the caller hangs up while the second agent rings: the agent is free again
    assert w1.leave("c1") == second.agent
    settle(w1)
    assert state(db, second.agent)[0] == "available"
    for acd in (w1, w2):
        acd.close(at(40))


def test_a_worker_passes_over_the_agents_it_lets_rest(db: Engine) -> None:
    w1, w2 = workers(db, AgentConfig("821", "junior", "", PHONE), AgentConfig("822", "junior", "", ("127.0.0.1", 5072)))
    w1.join("c1", "junior", "enquiry", at(1))
    w1.join("c2", "junior", "enquiry", at(2))
    settle(w1)
    # 821 is first by idle order, but its phone refused at once: this worker leaves it out for now
    [offer] = asyncio.run(w1.claim(at(3), frozenset({"821"})))
    assert (offer.call_id, offer.agent) == ("c1", "822")
    assert state(db, "821") == ("available", None, None) and w1.position("c2") == 1
    assert asyncio.run(w1.claim(at(4), frozenset({"821"}))) == [], "the other free agent rests: c2 waits"
    [offer] = claim(w1, 5)  # the rest is over
    assert (offer.call_id, offer.agent) == ("c2", "821")
    for acd in (w1, w2):
        acd.close(at(40))


def test_agents_held_by_a_silent_worker_are_freed_by_the_others(db: Engine) -> None:
    w1, w2 = workers(db, AgentConfig("801", "senior", "", PHONE))
    w1.join("on-w1", "senior", "enquiry", at(1))
    w2.join("on-w2", "senior", "enquiry", at(2))
    settle(w1, w2)
    [offer] = claim(w1, 3)
    w1.answered(offer.agent)
    settle(w1)
    # w1 is killed: it beats no more. After the timeout, w2 frees its agent and its queue entries.
    asyncio.run(w2.refresh(at(8)))
    assert state(db, "801")[0] == "talking", "not yet: w1 beat at start-up, 8 s ago"
    asyncio.run(w2.refresh(at(14)))
    assert state(db, "801") == ("available", None, None)
    assert w2.seats["801"].state is AgentState.AVAILABLE
    [offer] = claim(w2, 14)
    assert offer.call_id == "on-w2"
    w2.close(at(20))


def test_registrations_and_wrap_up_end_even_if_the_worker_that_started_them_is_gone(db: Engine) -> None:
    w1, w2 = workers(db, AgentConfig("801", "senior", "pw", None), wrap_up=5)
    w1.login("801", PHONE, at(0), until=at(60))
    w1.join("c1", "senior", "enquiry", at(1))
    settle(w1)
    [offer] = claim(w1, 1)
    w1.answered("801")
    assert w1.released("801", at(10)) == 5
    settle(w1)
    asyncio.run(w2.refresh(at(12)))
    assert state(db, "801")[0] == "wrap_up"
    asyncio.run(w2.refresh(at(17)))
    assert state(db, "801")[0] == "available", "wrap-up ran out (w1's timer may never fire)"
    asyncio.run(w2.refresh(at(61)))
    assert state(db, "801")[0] == "logged_out", "the registration expired"
    for acd in (w1, w2):
        acd.close(at(70))


def test_two_workers_claiming_at_once_never_share_an_agent(db: Engine) -> None:
    numbers = [str(820 + n) for n in range(5)]
    w1, w2 = workers(db, *(AgentConfig(n, "junior", "", ("127.0.0.1", 6000 + i)) for i, n in enumerate(numbers)))
    for n in range(20):  # interleaved ages, so neither worker's callers are all older
        (w1 if n % 2 else w2).join(f"c{n}", "junior", "enquiry", at(n / 10))
    settle(w1, w2)

    async def both():  # type: ignore[no-untyped-def]
        return await asyncio.gather(w1.claim(at(5)), w2.claim(at(5)))

    offers = [o for batch in asyncio.run(both()) for o in batch]
    for _ in range(3):  # a worker that stood back for an older caller elsewhere tries again next tick
        offers += claim(w1, 6) + claim(w2, 6)
    assert sorted(o.agent for o in offers) == numbers, "each agent offered exactly once"
    assert sorted(o.call_id for o in offers) == sorted(f"c{n}" for n in range(5)), "the five oldest callers"
    with db.connect() as conn:
        assert set(conn.scalars(select(Agent.state))) == {"ringing"}
    for acd in (w1, w2):
        acd.close(at(10))


def test_shut_down_while_the_database_is_locked_does_not_hang(tmp_path: Path) -> None:
    import sqlite3
    import time

    db = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(db)
    w1, _ = workers(db, AgentConfig("801", "senior", "", PHONE))
    lock = sqlite3.connect(tmp_path / "crm.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # the database is away for writers
    w1.pause("801", True, at(1))  # queued, retried
    started = time.monotonic()
    w1.close(at(2), timeout_s=1.0)
    assert time.monotonic() - started < 3
    lock.execute("ROLLBACK")
    lock.close()
    assert w1.pending <= 1


def test_a_worker_restarted_under_its_name_frees_the_agents_its_old_calls_held(tmp_path: Path) -> None:
    db = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(db)
    w1, w2 = workers(db, AgentConfig("801", "senior", "", PHONE))
    w1.join("c1", "senior", "enquiry", at(1))
    settle(w1)
    [offer] = claim(w1, 2)
    w1.answered(offer.agent)
    settle(w1)
    asyncio.run(w2.refresh(at(30)))  # w1 (killed) presumed gone: its worker row is removed, the agent freed
    w2.join("c2", "senior", "enquiry", at(31))
    settle(w2)
    claim(w2, 31)
    assert state(db, "801") == ("ringing", "c2", "w2")
    # and a restart of w2 (killed with the agent ringing) gives the agent back at once
    again = SharedAcd(QueueConfig(), tuple(SEAT_GROUPS), db, "w2")
    again.start((AgentConfig("801", "senior", "", PHONE),), at(40))
    assert state(db, "801") == ("available", None, None)
    again.close(at(41))


def test_metrics_show_shared_agent_changes_pending_and_failed_claims(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from prometheus_client import generate_latest

    from ivr.media import MediaClock as Pacer
    from ivr.metrics import Metrics

    db = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(db)
    w1, _ = workers(db, AgentConfig("801", "senior", "", PHONE))
    w1.pending, w1.claims_failed = 3, 2
    engine = SimpleNamespace(legs={}, acd=w1, pacer=Pacer(), writer=SimpleNamespace(depth=0, written=0),
                             guard=SimpleNamespace(dropped=0))
    metrics = Metrics()
    metrics.watch(engine)  # type: ignore[arg-type]
    text = generate_latest(metrics.registry).decode()
    assert "hotline_shared_agent_changes_pending 3.0" in text
    assert "hotline_shared_agent_claims_failed_total 2.0" in text
    assert 'hotline_agents{seat_group="senior",state="available"} 1.0' in text


def test_a_path_stored_by_one_worker_rings_the_agent_through_it_from_the_other(db: Engine) -> None:
    """A browser behind Kamailio's WebSocket registered with w1: w2 claims it with the same Route set (RFC 3327)."""
    w1, w2 = workers(db, AgentConfig("821", "junior", "pw", None))
    path = ("<sip:10.77.0.2:5060;lr;received=sip:10.77.0.20:40312%3Btransport%3Dws>", "<sip:10.1.1.1;lr>")
    w1.login("821", ("10.77.0.2", 5060), at(0), until=at(600), uri="sip:821@x1.invalid;transport=ws", path=path)
    w2.join("caller-on-w2", "junior", "enquiry", at(1))
    settle(w1, w2)
    [offer] = claim(w2, 2)
    assert (offer.contact, offer.contact_uri, offer.path) == (("10.77.0.2", 5060), "sip:821@x1.invalid;transport=ws",
                                                              path)
    asyncio.run(w1.refresh(at(2)))
    assert w1.seats["821"].path == path, "every worker's copy of the table knows the Path"
    w2.no_answer("821", at(3))
    w1.logout("821")
    settle(w1, w2)
    asyncio.run(w2.refresh(at(4)))
    assert w2.seats["821"].path == () and w2.seats["821"].state is AgentState.LOGGED_OUT
    for acd in (w1, w2):
        acd.close(at(5))
