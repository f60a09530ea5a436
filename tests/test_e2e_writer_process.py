"""End to end: SIPp calls whose CRM rows go through `[database] writer` (the writer process, or the thread)."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crm_bridge.db import make_engine
from crm_bridge.models import Call, CallEvent

from .conftest import IvrProcess, free_port, sipp, start_ivr, write_ivr_config
from .test_e2e_faults import wait_for
from .test_e2e_sip import finished


def rows(db_url: str) -> tuple[int, int, int]:
    """(calls, events, events that appear twice for one call) in the CRM."""
    engine = make_engine(db_url)
    try:
        with Session(engine) as s:
            doubled = s.execute(select(CallEvent.call_id, CallEvent.kind, CallEvent.at)
                                .group_by(CallEvent.call_id, CallEvent.kind, CallEvent.at).having(func.count() > 1)).all()
            return (s.scalar(select(func.count(Call.id))) or 0, s.scalar(select(func.count(CallEvent.id))) or 0,
                    len(doubled))
    finally:
        engine.dispose()


def writer_pids(ivr: IvrProcess) -> list[int]:
    return [int(p) for p in re.findall(r"crm_writer_process_started'.*?pid=(\d+)", ivr.log())]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("writer", ["process", "thread"])
def test_a_call_lands_in_the_crm_with_either_writer(tmp_path: Path, writer: str) -> None:
    port, db_url = free_port(), f"sqlite:///{tmp_path / 'crm.db'}"
    conf = write_ivr_config(tmp_path, sip_port=port, db_url=db_url, ring_seconds=0)
    conf.write_text(conf.read_text().replace("[database]\n", f"[database]\nwriter = {writer}\n"))
    ivr = start_ivr(tmp_path, conf, port, db_url)
    try:
        assert bool(writer_pids(ivr)) == (writer == "process")
        finished(sipp(tmp_path, "short_call", ivr.port, timeout_s=30), 40)
        wait_for(lambda: rows(db_url)[0] == 1, 20, "the call's row")
    finally:
        assert ivr.stop() == 0
    assert re.search(rf"event='stopped'.*crm_writer='{writer}'", ivr.log())
    calls, events, doubled = rows(db_url)
    assert (calls, doubled) == (1, 0) and events >= 3


def test_a_killed_writer_process_is_restarted_and_sigterm_drains_it_before_the_ivr_exits(tmp_path: Path) -> None:
    port, db_url = free_port(), f"sqlite:///{tmp_path / 'crm.db'}"
    conf = write_ivr_config(tmp_path, sip_port=port, db_url=db_url, ring_seconds=0)
    conf.write_text(conf.read_text().replace("[database]\n", "[database]\nwriter = process\n"))
    ivr: IvrProcess = start_ivr(tmp_path, conf, port, db_url)
    try:
        (first,) = writer_pids(ivr)
        assert parent_of(first) == ivr.proc.pid, "the writer is the IVR's child"
        finished(sipp(tmp_path, "short_call", ivr.port, timeout_s=30), 40)
        wait_for(lambda: rows(ivr.db_url)[0] == 1, 20, "the first call's row")

        os.kill(first, signal.SIGKILL)
        wait_for(lambda: len(writer_pids(ivr)) == 2, 20, "a new writer process")
        assert re.search(rf"crm_writer_process_died' pid={first} exit_code=-9", ivr.log())
        finished(sipp(tmp_path, "short_call", ivr.port, calls=3, extra=("-r", "3"), timeout_s=30), 40)
        wait_for(lambda: rows(ivr.db_url)[0] == 4, 20, "the later calls' rows")

        second = writer_pids(ivr)[1]
        ivr.proc.send_signal(signal.SIGTERM)
        assert ivr.proc.wait(60) == 0
    finally:
        if ivr.proc.poll() is None:
            ivr.stop()
    assert not alive(second), "the writer process exits before the IVR does"
    calls, events, doubled = rows(ivr.db_url)
    assert (calls, doubled) == (4, 0) and events >= 4 * 3
    log = ivr.log()
    assert re.search(r"crm_writer_process_stopped'.*exit_code=0", log)
    stopped = re.search(r"event='stopped'.*", log)
    assert stopped and "deferred_to_outbox=0" in stopped.group(0) and "crm_writer='process'" in stopped.group(0)
    written = re.search(r"crm_records_written=(\d+)", stopped.group(0))
    assert written and int(written.group(1)) > 0
