"""The CRM write path on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from crm_bridge.db import make_engine, migrate, reconcile_interrupted
from crm_bridge.models import Base, Call, CallEvent
from crm_bridge.outbox import Outbox
from crm_bridge.writer import CrmWriter
from crm_bridge.writer_process import CrmWriterProcess
from ivr.events import CallRecord, RecordCall, RecordEvent

T0 = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    url = f"sqlite:///{tmp_path / 'crm.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    engine = make_engine(url)
    migrate(engine)
    return engine


WriterFactory = Callable[..., CrmWriter]


@pytest.fixture(params=["thread", "process"])
def make_writer(request: pytest.FixtureRequest, tmp_path: Path) -> WriterFactory:
    """`[database] writer`, both ways: the thread inside the IVR, or the writer process tailing the outbox
    (which needs one: a fresh directory unless the test gives its own)."""
    made = itertools.count()

    def make(engine: Engine, outbox: Outbox | None = None, **kw: object) -> CrmWriter:
        if request.param == "thread":
            return CrmWriter(engine, outbox, **kw)  # type: ignore[arg-type]
        return CrmWriterProcess(engine, outbox or Outbox(tmp_path / f"outbox-{next(made)}"), **kw)  # type: ignore[arg-type]

    return make


def call_records(sip_call_id: str, start: datetime = T0) -> list:
    rec = CallRecord(sip_call_id, "13800000001", "95000", started_at=start)
    answered = CallRecord(sip_call_id, "13800000001", "95000", started_at=start,
                          answered_at=start + timedelta(seconds=6), greeting="morning")
    ended = CallRecord(sip_call_id, "13800000001", "95000", started_at=start,
                       answered_at=start + timedelta(seconds=6), greeting="morning",
                       ended_at=start + timedelta(seconds=40), outcome="silent", hangup_by="ivr", silent_attempts=3)
    return [
        RecordCall(rec), RecordEvent(sip_call_id, start, "invited"),
        RecordCall(answered), RecordEvent(sip_call_id, start + timedelta(seconds=6), "answered", "greeting=morning"),
        RecordCall(ended), RecordEvent(sip_call_id, start + timedelta(seconds=40), "ended", "outcome=silent"),
    ]


def wait_until(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def counts(engine: Engine) -> tuple[int, int]:
    with Session(engine) as s:
        return s.scalar(select(func.count(Call.id))) or 0, s.scalar(select(func.count(CallEvent.id))) or 0


def test_migrations_match_the_models(db: Engine) -> None:
    with db.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_writer_records_rows_and_events_with_the_latest_state(db: Engine, make_writer: WriterFactory) -> None:
    writer = make_writer(db)
    writer.start()
    for record in call_records("call-a") + call_records("call-b", T0 + timedelta(minutes=1)):
        writer.submit(record)
    assert writer.close() == 0
    with Session(db) as s:
        calls = s.scalars(select(Call).order_by(Call.sip_call_id)).all()
        assert [(c.sip_call_id, c.outcome, c.hangup_by, c.silent_attempts, c.greeting) for c in calls] == [
            ("call-a", "silent", "ivr", 3, "morning"),
            ("call-b", "silent", "ivr", 3, "morning"),
        ]
        ended = calls[0].ended_at
        assert ended.replace(tzinfo=ended.tzinfo or UTC) == T0 + timedelta(seconds=40)
        assert [e.kind for e in calls[0].events] == ["invited", "answered", "ended"]
    assert writer.written == 12


def test_sqlite_lock_outage_queues_records_and_retries(tmp_path: Path, make_writer: WriterFactory) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(engine)
    locker = sqlite3.connect(tmp_path / "crm.db", timeout=0)
    locker.execute("BEGIN EXCLUSIVE")  # the database is unavailable for writing
    writer = make_writer(engine)
    writer.start()
    for i in range(20):
        for record in call_records(f"call-{i}", T0 + timedelta(seconds=i)):
            writer.submit(record)
    wait_until(lambda: writer.failures >= 1)  # after SQLite's 5 s busy timeout
    assert writer.depth == 120, "records wait in the queue while the database is locked"
    locker.rollback()
    locker.close()
    wait_until(lambda: writer.depth == 0)
    assert writer.close() == 0
    assert counts(engine) == (20, 60)


@pytest.mark.postgres
def test_postgres_stopped_and_restarted_loses_no_record(postgres, pg_url: str, make_writer: WriterFactory) -> None:  # type: ignore[no-untyped-def]
    engine = make_engine(pg_url)
    migrate(engine)
    writer = make_writer(engine)
    writer.start()
    for record in call_records("before"):
        writer.submit(record)
    wait_until(lambda: writer.depth == 0)
    postgres.stop()
    try:
        for i in range(10):
            for record in call_records(f"during-{i}"):
                writer.submit(record)
        time.sleep(1.0)
        assert writer.depth == 60 and writer.failures >= 1
    finally:
        postgres.start()
    wait_until(lambda: writer.depth == 0, timeout=60)
    assert writer.close() == 0
    assert counts(engine) == (11, 33)


def test_submit_never_blocks_while_the_database_is_down(tmp_path: Path, make_writer: WriterFactory) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(engine)
    locker = sqlite3.connect(tmp_path / "crm.db", timeout=0)
    locker.execute("BEGIN EXCLUSIVE")
    writer = make_writer(engine)
    writer.start()
    started = time.perf_counter()
    for i in range(2000):
        writer.submit(RecordCall(CallRecord(f"c{i}", "1", "95000", started_at=T0)))
    assert time.perf_counter() - started < 0.5
    locker.rollback()
    locker.close()
    assert writer.close() == 0


def test_reconcile_closes_calls_left_open_by_a_crash(db: Engine, make_writer: WriterFactory) -> None:
    writer = make_writer(db)
    writer.start()
    for record in call_records("done")[:4] + call_records("done")[4:]:
        writer.submit(record)
    for record in call_records("crashed")[:4]:  # answered, never ended
        writer.submit(record)
    writer.close()
    assert reconcile_interrupted(db) == 1
    with Session(db) as s:
        crashed = s.scalars(select(Call).where(Call.sip_call_id == "crashed")).one()
        ended = crashed.ended_at
        assert (crashed.outcome, crashed.hangup_by) == ("failed", "ivr")
        assert ended.replace(tzinfo=ended.tzinfo or UTC) == T0 + timedelta(seconds=6)  # its last event
        assert crashed.events[-1].kind == "reconciled"
        assert s.scalars(select(Call.outcome).where(Call.sip_call_id == "done")).one() == "silent"
    assert reconcile_interrupted(db) == 0


def test_a_restarting_worker_reconciles_only_its_own_calls(db: Engine, make_writer: WriterFactory) -> None:
    """Workers behind a balancer share the CRM: one restarting must not close the other's live calls."""
    for worker, call in (("ivr-1", "on-1"), ("ivr-2", "on-2")):
        writer = make_writer(db, worker=worker)
        writer.start()
        for record in call_records(call)[:4]:  # answered, not ended
            writer.submit(record)
        writer.close()
    assert reconcile_interrupted(db, worker="ivr-1") == 1
    with Session(db) as s:
        outcomes = dict(s.execute(select(Call.sip_call_id, Call.outcome)).tuples().all())
        assert s.scalars(select(Call.ivr_worker).where(Call.sip_call_id == "on-2")).one() == "ivr-2"
    assert outcomes == {"on-1": "failed", "on-2": None}, "ivr-2's call is still in progress"


def test_writer_survives_concurrent_submitters(tmp_path: Path, make_writer: WriterFactory) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(engine)
    writer = make_writer(engine)
    writer.start()

    def submit(prefix: str) -> None:
        for i in range(50):
            for record in call_records(f"{prefix}-{i}"):
                writer.submit(record)

    threads = [threading.Thread(target=submit, args=(f"t{n}",)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert writer.close() == 0
    assert counts(engine) == (200, 600)


def test_the_sqlite_upserts_are_compiled_once_not_for_every_batch(tmp_path: Path) -> None:
    """SQLAlchemy caches no dialect INSERT … ON CONFLICT: the writer compiles each upsert once, and the
    rows (the datetimes bound as before) and the outbox checkpoint still come out right batch after batch."""
    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(engine)
    writer = CrmWriter(engine, Outbox(tmp_path / "outbox"))
    compiled: list[str] = []
    make_compiler = engine.dialect.statement_compiler

    def counting(dialect, statement, *args, **kw):  # type: ignore[no-untyped-def]
        sql = getattr(statement, "text", None)  # the upserts run as text(); other statements name a table
        table = getattr(statement, "table", None)
        compiled.append(sql.split(" (")[0] if sql else f"INSERT INTO {table}" if table is not None else "")
        return make_compiler(dialect, statement, *args, **kw)

    engine.dialect.statement_compiler = counting  # type: ignore[method-assign]
    for batch in range(3):
        records = call_records(f"call-{batch}", T0 + timedelta(minutes=batch))
        writer._apply(list(enumerate(records, 1 + 6 * batch)))
    assert compiled.count("INSERT INTO calls") == 1  # the first batch; before, every batch
    assert compiled.count("INSERT INTO outbox_checkpoints") == 1
    with Session(engine) as s:
        calls = s.scalars(select(Call).order_by(Call.sip_call_id)).all()
        assert [(c.sip_call_id, c.outcome, c.ended_at.replace(tzinfo=UTC)) for c in calls] == [
            (f"call-{n}", "silent", T0 + timedelta(minutes=n, seconds=40)) for n in range(3)]
    with sqlite3.connect(tmp_path / "crm.db") as conn:
        assert conn.execute("SELECT seq FROM outbox_checkpoints").fetchall() == [(18,)]
        started = conn.execute("SELECT started_at FROM calls WHERE sip_call_id = 'call-0'").fetchone()[0]
    assert started == "2026-11-25 02:00:00.000000"  # SQLAlchemy's SQLite DATETIME format, as before
    writer.outbox.close()  # type: ignore[union-attr]


def test_the_writer_thread_lingers_asleep_but_batch_max_and_close_end_the_linger(tmp_path: Path) -> None:
    """The writer thread sleeps through its linger instead of waking for every flush; reaching batch_max
    records, or closing, still ends the wait at once (a linger of 60 s would otherwise hold them)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(engine)
    writer = CrmWriter(engine, batch_max=6, linger=60.0)
    batches: list[int] = []
    apply = writer._apply

    def counting(batch):  # type: ignore[no-untyped-def]
        batches.append(len(batch))
        apply(batch)

    writer._apply = counting  # type: ignore[method-assign]
    writer.start()
    started = time.monotonic()
    for record in call_records("call-a"):  # six records, each flushed on its own (no event loop)
        writer.submit(record)
    wait_until(lambda: writer.written == 6, timeout=10)
    assert batches == [6]
    writer.submit(call_records("call-b")[0])
    assert writer.close(timeout=10) == 0
    assert time.monotonic() - started < 10
    assert batches == [6, 1]
    assert counts(engine) == (2, 3)
