"""Backup and restore of the CRM (`python -m crm_bridge backup / restore`), taken while calls are written.

A writer thread stores calls the way the CRM writer does, each call's row and
its steps in one transaction, as fast as the database takes them, while the
backup runs. The backup must hold whole calls only (every call with all its
steps: a torn snapshot would show a call without them), the restore must go
into an empty database only, and the restored CRM must be what the desk and
the daily report read. Both databases: SQLite (WAL, the online backup API)
and PostgreSQL (pg_dump in an exported snapshot).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from crm_bridge.__main__ import main as crm_cli
from crm_bridge.db import make_engine, migrate
from crm_bridge.models import Call, CallEvent
from tests.conftest import PgServer, write_ivr_config

STEPS = ("invited", "answered", "queued", "agent_rung", "ended")


class CallWriter(threading.Thread):
    """Writes calls, each with its steps in one transaction, until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.engine = make_engine(url)
        self.stop = threading.Event()
        self.written = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                now = datetime.now(UTC)
                with Session(self.engine) as s, s.begin():
                    n = self.written
                    call = Call(sip_call_id=f"bk-{n}@10.0.0.1", caller=f"1380000{n % 10000:04d}", callee="95000",
                                started_at=now, answered_at=now, ended_at=now, outcome="completed",
                                hangup_by="caller", tier="junior", seat_group="junior", agent_number="821",
                                queue_wait_s=3.0, talk_s=20.0, ivr_worker="ivr-1")
                    s.add(call)
                    s.flush()
                    for kind in STEPS:
                        s.add(CallEvent(call_id=call.id, at=now, kind=kind,
                                        detail="agent=821" if kind == "agent_rung" else ""))
                self.written += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.engine.dispose()


def make_recordings(folder: Path) -> dict[str, bytes]:
    files = {"2026/12/06/call-1-20261206T010203.wav": os.urandom(40_000),
             "2026/12/06/call-2-20261206T010207.wav": os.urandom(12_345)}
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return files


def back_up_while_writing(url: str, to: Path, recordings: Path, capsys: pytest.CaptureFixture[str]) -> tuple[
        dict, int, int]:  # type: ignore[type-arg]
    migrate_engine = make_engine(url)
    migrate(migrate_engine)
    migrate_engine.dispose()
    writer = CallWriter(url)
    writer.start()
    while writer.written < 200 and writer.error is None:
        time.sleep(0.01)
    before = writer.written
    code = crm_cli(["--config", str(to.parent / "none.conf"), "--db-url", url, "backup", "--to", str(to),
                    "--recordings", str(recordings)])
    after = writer.written
    time.sleep(0.1)
    writer.stop.set()
    writer.join(10)
    assert writer.error is None, writer.error
    out = capsys.readouterr()
    assert code == 0, out.err
    assert after > before, "calls were written while the backup ran"
    manifest = json.loads((to / "manifest.json").read_text())
    return manifest, before, writer.written


def check_restored(url: str, tmp: Path, manifest: dict, before: int, total: int,  # type: ignore[type-arg]
                   capsys: pytest.CaptureFixture[str]) -> None:
    from desk.config import load_desk_config
    from desk.queries import AgentStates, latest_offer, pop_for, wallboard

    engine = make_engine(url)
    try:
        with Session(engine) as s:
            calls = s.scalar(select(func.count()).select_from(Call))
            torn = s.scalar(select(func.count()).select_from(Call).where(
                select(func.count()).where(CallEvent.call_id == Call.id).scalar_subquery() != len(STEPS)))
        assert calls == manifest["database"]["rows"]["calls"]
        assert before <= calls <= total  # the snapshot: everything before the backup, nothing torn
        assert torn == 0, "a call restored without all the steps of its transaction"
        # what the desk reads: the wallboard's calls of today, an agent's screen-pop
        conf = write_ivr_config(tmp, sip_port=5999, db_url=url)
        desk = load_desk_config(conf)
        board = wallboard(engine, desk, AgentStates(desk, engine))
        assert board.total_calls == calls
        offer = latest_offer(engine, "821", within=timedelta(days=1))
        assert offer is not None
        pop = pop_for(engine, desk, offer[1], offer[0], "821")
        assert pop is not None and pop.caller.startswith("1380000")
    finally:
        engine.dispose()
    # and the daily report, from the command line
    day = datetime.now(UTC).astimezone(ZoneInfo("Asia/Shanghai")).date()
    capsys.readouterr()
    assert crm_cli(["--config", str(tmp / "none.conf"), "--db-url", url, "report", "--date", day.isoformat()]) == 0
    out = capsys.readouterr().out
    total_row = next(line for line in out.splitlines() if line.split("\t")[0] == "全部")
    assert total_row.split("\t")[1] == str(calls), out


def test_sqlite_backup_while_calls_are_written_restores_whole_calls_the_desk_and_report_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'live' / 'hotline.db'}"
    recordings = tmp_path / "recordings"
    files = make_recordings(recordings)
    to = tmp_path / "backups" / "b1"
    manifest, before, total = back_up_while_writing(url, to, recordings, capsys)
    assert manifest["backend"] == "sqlite"
    assert {f["path"] for f in manifest["recordings"]["files"]} == set(files)
    assert not (tmp_path / "backups" / "b1.partial").exists()

    restored = f"sqlite:///{tmp_path / 'restored' / 'hotline.db'}"
    back = tmp_path / "restored-recordings"
    assert crm_cli(["--config", str(tmp_path / "none.conf"), "--db-url", restored, "restore", "--from", str(to),
                    "--recordings", str(back)]) == 0
    assert {rel: (back / rel).read_bytes() for rel in files} == files
    check_restored(restored, tmp_path, manifest, before, total, capsys)

    # a second restore over the now full database is refused, and says why
    assert crm_cli(["--config", str(tmp_path / "none.conf"), "--db-url", restored, "restore", "--from", str(to),
                    "--recordings", str(back)]) == 1
    assert "not empty" in capsys.readouterr().err


def test_damaged_backup_is_named_and_nothing_is_restored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'hotline.db'}"
    engine = make_engine(url)
    migrate(engine)
    engine.dispose()
    recordings = tmp_path / "recordings"
    make_recordings(recordings)
    to = tmp_path / "b"
    assert crm_cli(["--config", "none.conf", "--db-url", url, "backup", "--to", str(to),
                    "--recordings", str(recordings)]) == 0
    assert crm_cli(["verify-backup", str(to)]) == 0
    damaged = to / "recordings" / "2026/12/06/call-2-20261206T010207.wav"
    damaged.write_bytes(b"x" + damaged.read_bytes()[1:])
    capsys.readouterr()
    assert crm_cli(["verify-backup", str(to)]) == 1
    assert "recordings/2026/12/06/call-2-20261206T010207.wav: SHA-256" in capsys.readouterr().err
    target = tmp_path / "new.db"
    assert crm_cli(["--config", "none.conf", "--db-url", f"sqlite:///{target}", "restore", "--from", str(to),
                    "--recordings", str(tmp_path / "out")]) == 1
    assert "damaged, nothing restored" in capsys.readouterr().err
    assert not target.exists()
    # an unfinished backup (still .partial, no manifest) is not taken for one
    (tmp_path / "half").mkdir()
    assert crm_cli(["verify-backup", str(tmp_path / "half")]) == 1
    assert "no manifest.json" in capsys.readouterr().err


@pytest.fixture
def two_pg_databases(postgres: PgServer) -> Iterator[tuple[str, str]]:
    admin = create_engine(postgres.url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    names = [f"bk{os.getpid()}_{time.monotonic_ns()}_{i}" for i in (1, 2)]
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    base = postgres.url.rsplit("/", 1)[0]
    yield f"{base}/{names[0]}", f"{base}/{names[1]}"
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.postgres
def test_postgres_backup_while_calls_are_written_restores_whole_calls_the_desk_and_report_read(
        two_pg_databases: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    live, empty = two_pg_databases
    recordings = tmp_path / "recordings"
    files = make_recordings(recordings)
    to = tmp_path / "backups" / "pg1"
    manifest, before, total = back_up_while_writing(live, to, recordings, capsys)
    assert manifest["backend"] == "postgresql" and manifest["database"]["file"] == "crm.pgdump"
    assert manifest["database"]["revision"]
    back = tmp_path / "restored-recordings"
    assert crm_cli(["--config", "none.conf", "--db-url", empty, "restore", "--from", str(to),
                    "--recordings", str(back)]) == 0, capsys.readouterr().err
    assert {rel: (back / rel).read_bytes() for rel in files} == files
    check_restored(empty, tmp_path, manifest, before, total, capsys)
    # the live database is not a restore target: it has tables
    assert crm_cli(["--config", "none.conf", "--db-url", live, "restore", "--from", str(to),
                    "--recordings", str(tmp_path / "x")]) == 1
    assert "not empty" in capsys.readouterr().err
