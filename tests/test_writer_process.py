"""The CRM writer process: killed, restarted, orphaned, drained — every journaled record applied exactly once."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import structlog
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from crm_bridge.db import make_engine, migrate
from crm_bridge.models import CallEvent, OutboxCheckpoint
from crm_bridge.outbox import Outbox, OutboxError
from crm_bridge.writer import CrmWriter
from crm_bridge.writer_process import CrmWriterProcess, JournalTail
from tests.test_crm import T0, call_records, counts, wait_until

ROOT = Path(__file__).resolve().parent.parent


def sqlite_crm(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(engine)
    return engine


def checkpoint(engine: Engine, stream: str | None) -> int:
    with Session(engine) as s:
        return s.scalar(select(OutboxCheckpoint.seq).where(OutboxCheckpoint.stream == stream)) or 0


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) is not alive either
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def submit_calls(writer: CrmWriter, prefix: str, n: int) -> None:
    for i in range(n):
        for record in call_records(f"{prefix}-{i}", T0 + timedelta(seconds=i)):
            writer.submit(record)


def test_the_writer_process_applies_what_the_ivr_journals_and_exits_on_close(tmp_path: Path) -> None:
    engine = sqlite_crm(tmp_path)
    writer = CrmWriterProcess(engine, Outbox(tmp_path / "outbox"))
    writer.start()
    submit_calls(writer, "p", 100)
    wait_until(lambda: writer.depth == 0)
    assert writer.written == 600
    assert writer.pid is not None and writer.pid != os.getpid()
    pid = writer.pid
    submit_calls(writer, "q", 10)
    assert writer.close() == 0, "close waits for the child to apply the last records"
    assert counts(engine) == (110, 330)
    assert writer.written == 660 and writer.depth == 0
    assert not alive(pid), "the writer process exits when the IVR closes it"


def test_a_writer_process_killed_mid_batch_is_restarted_and_every_record_lands_once(tmp_path: Path) -> None:
    engine = sqlite_crm(tmp_path)
    writer = CrmWriterProcess(engine, Outbox(tmp_path / "outbox"), batch_max=200)
    writer.start()
    submit_calls(writer, "before", 50)
    wait_until(lambda: writer.depth == 0)
    # the database is locked: the child takes the next batch and is stuck inside it
    locker = sqlite3.connect(tmp_path / "crm.db", timeout=0)
    locker.execute("BEGIN EXCLUSIVE")
    submit_calls(writer, "during", 50)
    wait_until(lambda: writer.failures >= 1)  # after SQLite's 5 s busy timeout: the batch is taken, not applied
    first = writer.pid
    assert first is not None
    with structlog.testing.capture_logs() as logs:
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: writer.pid != first and writer.restarts == 1)
        submit_calls(writer, "while-restarting", 50)  # the IVR journals on, whatever the child does
        locker.rollback()
        locker.close()
        wait_until(lambda: writer.depth == 0)
    died = [e for e in logs if e["event"] == "crm_writer_process_died"]
    assert died and died[0]["pid"] == first and died[0]["exit_code"] == -signal.SIGKILL
    # and killed again while busy: whatever it was doing is rolled back and applied by the next one
    submit_calls(writer, "burst", 300)
    time.sleep(0.2)
    second = writer.pid
    assert second is not None
    os.kill(second, signal.SIGKILL)
    wait_until(lambda: writer.pid != second)
    assert writer.close() == 0
    assert counts(engine) == (450, 1350), "every call once, every event once"
    with Session(engine) as s:
        doubled = s.execute(
            select(CallEvent.call_id, CallEvent.kind).group_by(CallEvent.call_id, CallEvent.kind)
            .having(func.count() > 1)).all()
    assert doubled == []
    assert checkpoint(engine, writer.stream) == 2700 == writer.journal.last_seq


@pytest.mark.postgres
def test_a_writer_process_killed_inside_its_transaction_on_postgres_leaves_nothing_half_done(
        pg_url: str, tmp_path: Path) -> None:
    engine = make_engine(pg_url)
    migrate(engine)
    writer = CrmWriterProcess(engine, Outbox(tmp_path / "outbox"))
    writer.start()
    submit_calls(writer, "first", 5)
    wait_until(lambda: writer.depth == 0)
    # hold the checkpoint row: the child writes its calls and events, then waits at the checkpoint, uncommitted
    blocker = engine.connect()
    blocker.execute(text("SELECT seq FROM outbox_checkpoints FOR UPDATE"))
    submit_calls(writer, "inside", 20)

    def waiting_on_lock() -> bool:
        with engine.connect() as conn:
            return bool(conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE '%outbox_checkpoints%'")).scalar())

    wait_until(waiting_on_lock)
    pid = writer.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # mid-transaction: calls and events written, checkpoint not
    blocker.rollback()
    blocker.close()
    wait_until(lambda: writer.restarts == 1 and writer.depth == 0)
    assert writer.close() == 0
    assert counts(engine) == (25, 75)
    assert checkpoint(engine, writer.stream) == 150


def test_records_journaled_while_no_writer_ran_are_replayed_at_start_exactly_once(tmp_path: Path) -> None:
    engine = sqlite_crm(tmp_path)
    crashed = Outbox(tmp_path / "outbox", segment_bytes=4000)
    ivr = CrmWriterProcess(engine, crashed)  # the IVR journals; it dies before its writer process ever starts
    submit_calls(ivr, "gone", 30)
    crashed.close()
    restarted = CrmWriterProcess(engine, Outbox(tmp_path / "outbox", segment_bytes=4000))
    assert restarted.recover() == 180, "recover returns once the replay is in"
    assert counts(engine) == (30, 90)
    assert len(list((tmp_path / "outbox").glob("*.jsonl"))) == 1, "applied segments are deleted"
    assert restarted.close() == 0
    again = CrmWriterProcess(engine, Outbox(tmp_path / "outbox"))
    assert again.recover() == 0
    assert again.close() == 0
    assert counts(engine) == (30, 90)


def test_a_database_down_at_close_leaves_the_rest_in_the_outbox_for_the_next_start(tmp_path: Path) -> None:
    engine = sqlite_crm(tmp_path)
    writer = CrmWriterProcess(engine, Outbox(tmp_path / "outbox"))
    writer.start()
    submit_calls(writer, "ok", 5)
    wait_until(lambda: writer.depth == 0)
    locker = sqlite3.connect(tmp_path / "crm.db", timeout=0)
    locker.execute("BEGIN EXCLUSIVE")
    submit_calls(writer, "late", 5)
    started = time.monotonic()
    assert writer.close(timeout=1) == 30
    assert time.monotonic() - started < 15, "close gives up on a database that stays down"
    assert writer.pid is not None and not alive(writer.pid)
    locker.rollback()
    locker.close()
    assert counts(engine) == (5, 15)
    after = CrmWriterProcess(engine, Outbox(tmp_path / "outbox"))
    assert after.recover() == 30
    assert after.close() == 0
    assert counts(engine) == (10, 30)


def test_a_writer_process_whose_ivr_is_gone_applies_the_journal_and_exits(tmp_path: Path) -> None:
    engine = sqlite_crm(tmp_path)
    outbox = Outbox(tmp_path / "outbox")
    ivr = CrmWriter(engine, outbox)
    submit_calls(ivr, "orphan", 4)
    outbox.close()
    settings = {"url": str(engine.url), "outbox": str(tmp_path / "outbox"), "batch_max": 1000, "linger": 0.05,
                "webhook": False, "worker": None, "log_level": "info", "log_format": "console"}
    child = subprocess.run(  # stdin: the settings, then end of file (what a killed IVR leaves it)
        [sys.executable, "-m", "crm_bridge.writer_process"], input=json.dumps(settings) + "\n", cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )
    assert child.returncode == 0, child.stderr
    statuses = [json.loads(line) for line in child.stdout.splitlines()]
    assert statuses[0] == {"ready": 0} and statuses[-1]["applied"] == 24
    assert counts(engine) == (4, 12)


def test_a_second_writer_process_waits_until_the_first_one_lets_go(tmp_path: Path) -> None:
    engine = sqlite_crm(tmp_path)
    outbox = Outbox(tmp_path / "outbox")
    ivr = CrmWriter(engine, outbox)
    submit_calls(ivr, "lock", 2)
    outbox.close()
    import fcntl

    holder = os.open(tmp_path / "outbox" / "applier.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)  # an earlier writer process, still applying this journal
    writer = CrmWriterProcess(engine, Outbox(tmp_path / "outbox"))
    result: list[int] = []
    recovering = threading.Thread(target=lambda: result.append(writer.recover()))
    recovering.start()
    time.sleep(2.0)
    assert counts(engine) == (0, 0) and not result, "nothing is applied while the other holds the journal"
    os.close(holder)
    recovering.join(30)
    assert result == [12]
    assert writer.close() == 0
    assert counts(engine) == (2, 6)


def test_the_tail_follows_rotations_and_takes_only_whole_lines(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox", segment_bytes=1500)
    writer = CrmWriter(sqlite_crm(tmp_path), outbox)
    tail = JournalTail(tmp_path / "outbox", after=3)
    submit_calls(writer, "r", 10)
    assert len(list((tmp_path / "outbox").glob("*.jsonl"))) > 3
    seen = [seq for seq, _ in tail.poll(1000)]
    assert seen == list(range(4, 61))
    with (tmp_path / "outbox" / sorted(p.name for p in (tmp_path / "outbox").glob("*.jsonl"))[-1]).open("ab") as f:
        f.write(b'{"seq":61,"kind":"event","r":{"sip_ca')  # being written
    assert tail.poll(1000) == []
    tail.close()
    outbox.close()


def test_a_writer_process_that_cannot_start_stops_the_ivr_start_with_a_clear_error(tmp_path: Path) -> None:
    writer = CrmWriterProcess(sqlite_crm(tmp_path), Outbox(tmp_path / "outbox"))
    writer.settings["url"] = "nosuchdatabase://nowhere"  # the child dies at once, every time
    with pytest.raises(OutboxError, match="exited 4 times before it was ready.*writer = thread"):
        writer.recover()
    writer.journal.close()
