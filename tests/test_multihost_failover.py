"""Failover and rolling restarts of the two workers behind Kamailio, on separate hosts (tests/multihost.py).

Steady load from the caller host: short calls (answer, 3 s up, BYE) at 4 a
second through the balancer.

- A worker killed with SIGKILL: the calls it had up fail (their BYE finds
  nobody), new calls keep succeeding on the other worker, and Kamailio stops
  sending INVITEs to the dead one within a few seconds (an INVITE left
  unanswered for fr_timer, 2 s, marks it inactive and is retried on the other
  worker; the OPTIONS probe every 2 s keeps it out). Started again, the worker
  replays its outbox and closes the calls it had up as failed, with a
  `reconciled` step: every call SIPp placed is one row, none left open.
- A rolling restart (SIGTERM: drain, start again, then the other): no call fails.
- The database host down for 8 s: no call fails, and once it is back every
  call is a row of the CRM (the workers journal to their outboxes meanwhile).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROMPT_CACHE, SCENARIOS
from tests.multihost import (
    Layout,
    LayoutUnavailable,
    ip_of,
    pg_ctl,
    psql,
    read_capture,
    running_layout,
    sipp_totals,
    start_callers,
    start_sniffer,
)

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.usefixtures("namespaces_alone")]  # see conftest.namespaces_alone
RATE = 4
SHORT = SCENARIOS / "short_call.xml"


@pytest.fixture
def layout(tmp_path: Path) -> Iterator[Layout]:
    try:
        with running_layout(tmp_path / "layout", PROMPT_CACHE) as running:
            time.sleep(2.5)  # a first OPTIONS round from the balancer: both workers in rotation
            yield running
    except LayoutUnavailable as exc:
        pytest.skip(f"multi-host layout unavailable: {exc}")


def load(layout: Layout, seconds: float, name: str) -> subprocess.Popen[bytes]:
    calls = int(seconds * RATE)
    return start_callers(layout.hosts["caller"], layout.state, calls, RATE, scenario=SHORT, name=name,
                         extra=("-d", "3000", "-l", "100", "-recv_timeout", "8000", "-default_behaviors", "all,-bye"))


def test_a_killed_worker_leaves_the_rotation_within_seconds_and_its_cut_calls_are_closed_at_restart(
        layout: Layout) -> None:
    sniffer = start_sniffer(layout.hosts["worker1"], layout.state / "worker1.cap")
    try:
        run = load(layout, 16, "failover")
        time.sleep(6)
        killed_at = time.time()
        os.kill(layout.workers[0].pid, signal.SIGKILL)
        layout.workers[0].wait(5)
        assert run.wait(90) != 0, "the killed worker's calls in progress fail (nothing answers their BYE)"
    finally:
        if sniffer.poll() is None:
            os.killpg(sniffer.pid, signal.SIGTERM)
            sniffer.wait(10)
    totals = sipp_totals(layout.state / "failover.csv")
    times = [t for t in invite_times(layout.state / "worker1.cap", ip_of("worker1")) if t > killed_at]
    routed_for = max(times) - killed_at if times else 0.0
    # figures for docs/deployment.md
    print(f"failover: {totals}, new calls sent to the dead worker after the kill: {len(times)}, "
          f"the last {routed_for:.1f} s after it")
    assert routed_for <= 6.0, f"Kamailio still sent new calls to the dead worker {routed_for:.1f} s after the kill"
    cut = totals["failed"]
    assert 1 <= cut <= 3 * 3 * RATE // 2, f"only the calls up on the killed worker fail: {totals}"

    layout.restart_worker(1)
    rows = psql(layout.hosts["db"], "SELECT c.ivr_worker, c.outcome, c.ended_at IS NULL,"
                                    " bool_or(e.kind = 'reconciled') FROM calls c JOIN call_events e"
                                    " ON e.call_id = c.id GROUP BY c.id")
    assert len(rows) == totals["created"], "every call SIPp placed is one row of the CRM"
    assert not [r for r in rows if r[2] == "t"], "no call left open"
    reconciled = [r for r in rows if r[3] == "t"]
    assert len(reconciled) == cut and all(r[:2] == ["ivr-1", "failed"] for r in reconciled), rows


def invite_times(capture: Path, to: str) -> list[float]:
    """When new calls' INVITEs arrived at `to`: the first of each Call-ID (the sniffer's clock is the test's:
    one machine). Kamailio's retransmissions of an INVITE sent before the worker died go on for its
    fr_timer (4 s) and say nothing of where new calls go."""
    first: dict[bytes, float] = {}
    for d in read_capture(capture):
        if d.dst == to and d.data.startswith(b"INVITE "):
            found = re.search(rb"(?im)^(?:call-id|i)\s*:\s*(\S+)", d.data)
            first.setdefault(found.group(1) if found else d.data, d.at)
    return sorted(first.values())


def test_a_rolling_restart_under_load_fails_no_call(layout: Layout) -> None:
    run = load(layout, 24, "rolling")
    time.sleep(3)
    for n in (1, 2):
        proc = layout.workers[n - 1]
        proc.send_signal(signal.SIGTERM)  # drain: 503 to OPTIONS and new INVITEs, calls up finish
        assert proc.wait(30) == 0
        layout.restart_worker(n)
        time.sleep(2.5)  # back in rotation at the next OPTIONS probe
    assert run.wait(90) == 0, (layout.state / "rolling.err").read_text(errors="replace")[-2000:]
    totals = sipp_totals(layout.state / "rolling.csv")
    print(f"rolling restart: {totals}")
    assert totals["failed"] == 0 and totals["successful"] == totals["created"]
    deadline = time.monotonic() + 10
    while True:  # the last calls' rows are written a moment after SIPp saw them end
        rows = psql(layout.hosts["db"], "SELECT outcome, count(*) FROM calls GROUP BY outcome")
        if rows == [["caller_hangup", str(totals["created"])]] or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert rows == [["caller_hangup", str(totals["created"])]], rows


def test_the_database_host_down_for_seconds_fails_no_call_and_loses_no_record(layout: Layout) -> None:
    db = layout.hosts["db"]
    assert layout.pg_base is not None
    run = load(layout, 16, "dbdown")
    time.sleep(3)
    stopped = pg_ctl(db, layout.pg_base, "stop")
    assert stopped.returncode == 0, stopped.stderr
    time.sleep(8)
    started = pg_ctl(db, layout.pg_base, "start")
    assert started.returncode == 0, started.stderr
    assert run.wait(90) == 0, (layout.state / "dbdown.err").read_text(errors="replace")[-2000:]
    totals = sipp_totals(layout.state / "dbdown.csv")
    deadline = time.monotonic() + 30  # the writers retry with backoff, then apply what they journaled
    while True:
        rows = psql(db, "SELECT outcome, count(*) FROM calls GROUP BY outcome")
        if rows == [["caller_hangup", str(totals["created"])]] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print(f"database down 8 s: {totals}, CRM {rows}")
    assert totals["failed"] == 0
    assert rows == [["caller_hangup", str(totals["created"])]], rows
    for conf in layout.configs:  # it was down: each worker's writer retried, and came through
        assert "event='crm_write_retry'" in (conf.parent / "ivr.log").read_text(errors="replace")
