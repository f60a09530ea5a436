"""The durable outbox: journal first, apply exactly once, replay after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from crm_bridge.models import CallEvent, OutboxCheckpoint
from crm_bridge.outbox import Outbox, OutboxError, decode, encode
from crm_bridge.writer import CrmWriter
from crm_bridge.writer_process import CrmWriterProcess
from ivr.events import OpenTicket, RecordSurvey
from tests.test_crm import T0, WriterFactory, call_records, counts, db, make_writer  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parent.parent


def died(outbox: Outbox) -> None:
    """The process that had `outbox` open is gone: the kernel would drop its lock, as closing does."""
    outbox.close()


def done_with(writer: CrmWriter) -> None:
    """Let go of a writer whose records are all applied: its process exits (writer = process), its outbox closes."""
    if isinstance(writer, CrmWriterProcess):
        writer.close()
    else:
        assert writer.outbox is not None
        died(writer.outbox)


def test_every_record_kind_round_trips_through_the_journal_format() -> None:
    records = [
        *call_records("rt"),
        RecordSurvey("rt", T0, "801", "senior", 1, "satisfied"),
        OpenTicket("rt", T0, "13800000001", "801", "senior", T0 + timedelta(days=1)),
    ]
    for seq, record in enumerate(records, 1):
        assert decode(encode(seq, record)) == (seq, record)


def test_a_record_is_on_disk_when_submit_returns_and_survives_a_crash(db: Engine, tmp_path: Path,  # noqa: F811
                                                                      make_writer: WriterFactory) -> None:  # noqa: F811
    # the writer thread never runs: as if the process died right after the calls
    first = Outbox(tmp_path / "outbox")
    crashed = CrmWriter(db, first)
    for record in call_records("crash-a") + call_records("crash-b"):
        crashed.submit(record)
    assert counts(db) == (0, 0)
    died(first)

    restarted = make_writer(db, Outbox(tmp_path / "outbox"))
    assert restarted.recover() == 12
    assert counts(db) == (2, 6)
    done_with(restarted)
    # a second restart finds everything applied: nothing twice
    again = make_writer(db, Outbox(tmp_path / "outbox"))
    assert again.recover() == 0
    assert counts(db) == (2, 6)
    done_with(again)


def test_replay_skips_what_the_crm_already_has(db: Engine, tmp_path: Path,  # noqa: F811
                                              make_writer: WriterFactory) -> None:  # noqa: F811
    writer = make_writer(db, Outbox(tmp_path / "outbox"))
    writer.start()
    for record in call_records("done"):
        writer.submit(record)
    assert writer.close() == 0
    late = Outbox(tmp_path / "outbox")
    CrmWriter(db, late).submit(call_records("late")[0])  # journaled, then the process died
    died(late)
    again = make_writer(db, Outbox(tmp_path / "outbox"))
    assert again.recover() == 1
    assert counts(db) == (2, 3)
    with Session(db) as s:
        assert s.scalar(select(func.count(CallEvent.id)).where(CallEvent.kind == "ended")) == 1
        assert s.scalar(select(OutboxCheckpoint.seq).where(OutboxCheckpoint.stream == again.stream)) == 7
    done_with(again)


def test_a_torn_last_line_is_ignored_and_the_rest_replayed(db: Engine, tmp_path: Path,  # noqa: F811
                                                           make_writer: WriterFactory) -> None:  # noqa: F811
    outbox = Outbox(tmp_path / "outbox")
    writer = CrmWriter(db, outbox)
    for record in call_records("torn"):
        writer.submit(record)
    (segment,) = (tmp_path / "outbox").glob("*.jsonl")
    with segment.open("ab") as f:
        f.write(b'{"seq":7,"kind":"event","r":{"sip_ca')  # died inside write(2)
    died(outbox)
    restarted = make_writer(db, Outbox(tmp_path / "outbox"))
    assert restarted.recover() == 6
    assert counts(db) == (1, 3)
    # the torn bytes are cut before the next append: what is journaled after them is not glued to them
    for record in call_records("after-torn"):
        restarted.submit(record)
    done_with(restarted)
    later = make_writer(db, Outbox(tmp_path / "outbox"))
    later.recover()
    assert counts(db) == (2, 6)
    done_with(later)


def test_segments_rotate_and_applied_ones_are_deleted(db: Engine, tmp_path: Path,  # noqa: F811
                                                      make_writer: WriterFactory) -> None:  # noqa: F811
    outbox = Outbox(tmp_path / "outbox", segment_bytes=2000)
    writer = make_writer(db, outbox, batch_max=5)
    for n in range(20):
        for record in call_records(f"rot-{n}", T0 + timedelta(minutes=n)):
            writer.submit(record)
    assert len(list((tmp_path / "outbox").glob("*.jsonl"))) > 5
    writer.start()
    assert writer.close() == 0
    assert counts(db) == (20, 60)
    assert len(list((tmp_path / "outbox").glob("*.jsonl"))) == 1  # only the active segment stays
    # numbering carries on across restarts
    assert Outbox(tmp_path / "outbox").last_seq == 120


def test_an_unusable_outbox_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(OutboxError, match="outbox directory"):
        Outbox(tmp_path / "file" / "outbox")


# --- one process per outbox directory -------------------------------------------------

# A process that opens the outbox, says so, and holds it until its stdin closes.
HOLDER = """
import sys
from pathlib import Path
from crm_bridge.outbox import Outbox, OutboxError
try:
    outbox = Outbox(Path(sys.argv[1]))
except OutboxError as exc:
    print(exc, file=sys.stderr)
    sys.exit(3)
print("holding", flush=True)
sys.stdin.read()
outbox.close()
"""


def holder(directory: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)], cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def holding(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "holding\n", f"the first process did not get the outbox: {proc.communicate(timeout=10)}"


def test_a_second_process_on_the_same_outbox_refuses_to_start_and_names_the_holder(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    first = holder(directory)
    try:
        holding(first)
        second = holder(directory)
        out, err = second.communicate(timeout=30)
        assert second.returncode == 3 and out == ""
        assert f"outbox directory {directory} is in use by process {first.pid}" in err
        assert "own [database] outbox_dir" in err
    finally:
        first.communicate("", timeout=30)  # closing stdin ends it cleanly
    assert first.returncode == 0
    # released on close: the next process starts
    third = holder(directory)
    holding(third)
    third.communicate("", timeout=30)
    assert third.returncode == 0


def test_a_holder_killed_with_sigkill_does_not_block_the_next_start(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    crashed = holder(directory)
    holding(crashed)
    os.kill(crashed.pid, signal.SIGKILL)
    crashed.communicate(timeout=30)
    assert crashed.returncode == -signal.SIGKILL
    assert (directory / "lock").read_text().strip() == str(crashed.pid)  # the stale PID stays behind, harmless
    restarted = holder(directory)
    holding(restarted)
    assert (directory / "lock").read_text().strip() == str(restarted.pid)
    restarted.communicate("", timeout=30)
    assert restarted.returncode == 0


def test_a_second_outbox_in_the_same_process_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    first = Outbox(tmp_path / "outbox")
    with pytest.raises(OutboxError, match=f"in use by process {os.getpid()}"):
        Outbox(tmp_path / "outbox")
    first.close()
    first.close()  # twice is harmless
    Outbox(tmp_path / "outbox").close()


def test_a_failed_start_leaves_the_directory_unlocked(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    directory.mkdir()
    (directory / "000000000001.jsonl").write_bytes(b"not json\n")
    with pytest.raises(OutboxError, match="unreadable outbox record"):
        Outbox(directory)
    (directory / "000000000001.jsonl").unlink()
    Outbox(directory).close()
