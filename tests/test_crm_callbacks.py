"""The callbacks table: rows written through the CRM writer (and its outbox), taken back at the next start."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from crm_bridge.db import make_engine, migrate
from crm_bridge.outbox import Outbox, decode, encode
from crm_bridge.writer import CrmWriter, open_callbacks
from ivr.callbacks import CallbackScheduler
from ivr.dialler import callback_row

T0 = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)


def test_callback_rows_are_upserted_and_open_requests_come_back_after_a_restart(tmp_path: Path) -> None:
    db = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(db)
    first = CallbackScheduler(max_attempts=3, retry_seconds=60)
    a = first.request("13800000001", tier="senior", service="consulting", seat_group="senior", call_id="call-a", now=T0)
    b = first.request("13900000002", tier="junior", service="complaint", seat_group="junior", call_id="call-b", now=T0)
    writer = CrmWriter(db, Outbox(tmp_path / "outbox"))
    writer.start()
    writer.submit(callback_row(a))
    writer.submit(callback_row(b))
    a = first.attempt_started(a.id, "attempt-1", T0)
    writer.submit(callback_row(a))  # cut off while dialled: the process stops here
    b = first.attempt_started(b.id, "attempt-2", T0)
    writer.submit(callback_row(first.attempt_result(b.id, "answered", T0 + timedelta(minutes=1))))
    assert writer.close() == 0

    with db.connect() as conn:
        rows = conn.exec_driver_sql("SELECT request_key, status, attempts, result, call_ids FROM callbacks ORDER BY id").all()
    assert rows == [("call-a", "dialling", 1, None, "call-a attempt-1"),
                    ("call-b", "completed", 1, "callback_completed", "call-b attempt-2")]

    later = CallbackScheduler(max_attempts=3, retry_seconds=60)
    (back,) = [later.restore_record(r) for r in open_callbacks(db)]
    assert (back.number, back.status, back.attempts, back.call_ids) == ("13800000001", "pending", 1, ("call-a", "attempt-1"))
    assert back.due_at == T0 and later.next_due(T0, {"senior"}) == back
    assert callback_row(back).request_key == "call-a"  # the same row is updated from now on


def test_a_callback_row_survives_the_outbox_journal() -> None:
    scheduler = CallbackScheduler()
    row = callback_row(scheduler.request("13800000001", tier="senior", service="consulting", seat_group="senior",
                                         call_id="call-a", now=T0, due_at=T0 + timedelta(hours=9)))
    assert decode(encode(7, row)) == (7, row)
