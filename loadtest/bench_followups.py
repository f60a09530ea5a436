"""`loadtest/bench.py --followups N`: outbound follow-up calls (回访) beside the inbound callers.

    .venv/bin/python loadtest/bench.py --steps 400 --followups 100      # 100 follow-up calls beside 400 callers

The first media step (loadtest/bench_steps.py) runs outbound beside inbound: N
complaints told their result (已告知客户) are put in the CRM as the step
starts, the IVR's `[followup]` trigger makes each a follow-up due at once,
and the IVR dials them (10 a second, at most 50 up) through a SIPp UAS
standing in for the gateway and the customers' phones
(loadtest/scenarios/followup_customer.xml: answers, presses 1 over RFC 4733,
waits for the BYE) while the silent callers run. The step reports the
gateway's calls, each follow-up's status and result and the tickets closed
by "回访"; every follow-up must end `done`/`satisfied` with its ticket
closed.
One worker only: its CRM holds the follow-ups.
"""

from __future__ import annotations

import argparse
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_common import ROOT, SCENARIOS, Ivr, free_port, pct, sipp_counts  # loadtest/, beside bench.py (run by path)

sys.path.insert(0, str(ROOT))  # crm_bridge and desk, to put the complaints in the CRM as the desk would

FOLLOWUP_NUMBERS = 13900100000  # the bench's customers: 139 0010 0000 and up, one number each (per-customer rules)


@dataclass
class Gateway:
    """The SIPp UAS the IVR dials for follow-ups: up before the IVR starts (its port is in sip.conf)."""

    proc: subprocess.Popen[bytes]
    port: int
    calls: int
    stat: Path
    used: bool = False  # its follow-ups were put in the CRM (the first media step)

    def stop(self) -> None:
        """Killed if still up (the IVR did not start, the bench was stopped); it exits by itself after its calls."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def start_followups(work: Path, opts: argparse.Namespace) -> Gateway:
    """`--followups N`: the gateway for N calls, and the [followup] section naming it in the IVR's sip.conf.

    The IVR is started after this, with `opts.extra_conf` (one worker: bench.py refuses more); the gateway is
    bounded in seconds by the steps' callers and the follow-ups together.
    """
    gateway = start_gateway(work, opts.followups, 300 + 40 * len(opts.steps.split(",")))
    opts.extra_conf += followup_conf(gateway.port)
    return gateway


def start_gateway(work: Path, calls: int, seconds: float) -> Gateway:
    """loadtest/scenarios/followup_customer.xml for `calls` calls, then it exits (SIPp -m); bounded by `seconds`."""
    for _ in range(5):
        port, media = free_port(), free_media_port()
        stat = work / f"gateway-{port}.csv"
        proc = subprocess.Popen(
            ["sipp", "-sf", str(SCENARIOS / "followup_customer.xml"), "-i", "127.0.0.1", "-p", str(port),
             "-mi", "127.0.0.1", "-mp", str(media), "-m", str(calls), "-nostdin", "-timeout", f"{int(seconds)}s",
             "-timeout_error", "-trace_stat", "-stf", str(stat), "-fd", "1", "-trace_err",
             "-error_file", str(work / "gateway.err")],
            cwd=work, stdout=subprocess.DEVNULL, stderr=open(work / "gateway.stderr", "w"),  # noqa: SIM115
        )
        time.sleep(0.5)
        if proc.poll() is None:  # still up: it has its port (a failed bind ends SIPp at once)
            return Gateway(proc, port, calls, stat)
    raise SystemExit(f"the follow-up gateway (SIPp) would not start:\n{(work / 'gateway.stderr').read_text()[-2000:]}")


def free_media_port() -> int:
    """An even UDP port (and the next) below the IVRs' RTP ranges (30000 and up) for SIPp's media."""
    for port in range(20000, 29998, 2):
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, socket.socket(socket.AF_INET,
                                                                                      socket.SOCK_DGRAM) as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
                return port
        except OSError:
            continue
    raise SystemExit("no free UDP port pair in 20000-29999 for SIPp's media")


def followup_conf(gateway_port: int) -> str:
    """[followup]: complaints told their result are called at once, any day and hour, each customer once."""
    return (
        f"[followup]\nenabled = yes\ngateway = 127.0.0.1:{gateway_port}\ndelay_seconds = 0\nscan_seconds = 1\n"
        "on_wrap_up = no\non_daily = no\non_survey = no\n"
        "calling_hours = 00:00-24:00\ncall_on_holidays = yes\ncall_on_weekends = yes\n"
        # one attempt: a follow-up that fails is counted failed, not retried out of sight
        "min_gap_seconds = 0\nmax_attempts = 1\nring_seconds = 10\nanswer_seconds = 8\n"
        # the bench's queue callers (--music-share) would hold every follow-up back (inbound first): not measured here
        "max_concurrent = 50\ncalls_per_second = 10\nqueue_threshold = 10000\n"
    )


def seed_complaints(db: Path, n: int) -> None:
    """N complaints walked to 已告知客户 as the desk's buttons do, one customer each; the IVR's scan (every
    second, delay 0) makes each a due follow-up."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy.orm import Session

    from crm_bridge.db import make_engine
    from crm_bridge.models import Call, Customer
    from desk import tickets

    engine = make_engine(f"sqlite:///{db}")
    now = datetime.now(UTC)
    try:
        with Session(engine) as s, s.begin():
            for i in range(n):
                number = str(FOLLOWUP_NUMBERS + i)
                s.add(Customer(phone=number, name=f"回访客户{i}"))
                call = Call(sip_call_id=f"bench-complaint-{i}-{time.monotonic_ns()}", caller=number, callee="95000",
                            started_at=now - timedelta(days=1), seat_group="junior", agent_number="821")
                s.add(call)
                s.flush()
                t = tickets.open_ticket(s, call, actor="821", agent_number="821", description="退款未到账",
                                        department="售后服务部", now=now - timedelta(days=1))
                tickets.move(s, t, "forwarded", actor="821")
                tickets.edit(s, t, actor="821", result="已重新退款", caller_satisfied=True)
                tickets.move(s, t, "result_received", actor="821")
                tickets.move(s, t, "caller_informed", actor="821")
    finally:
        engine.dispose()


def followup_results(ivr: Ivr, gateway: Gateway, n: int, seeded: float, callers_done: float,
                     timeout: float = 120) -> dict[str, object]:
    """Wait (bounded) for the N follow-ups to end and the gateway to exit; what the gateway and the CRM saw.

    `seeded`, `callers_done`: when the complaints were put in the CRM and when the step's last inbound caller
    was done (time.time()); the first dial and the last end are given in seconds after `seeded`, beside the
    inbound callers' end, to show the two ran side by side.
    """
    deadline = time.monotonic() + timeout

    def query(sql: str) -> list[tuple[object, ...]]:
        conn = sqlite3.connect(ivr.db, timeout=10)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    ended = "status IN ('done', 'unreachable', 'closed')"
    while time.monotonic() < deadline:
        if query(f"SELECT count(*) FROM followups WHERE {ended}")[0][0] >= n and gateway.proc.poll() is not None:
            break
        time.sleep(1.0)
    try:
        code = gateway.proc.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        gateway.proc.kill()
        code = gateway.proc.wait(10)
    calls = sipp_counts(gateway.stat, code)
    by = {f"{status}/{result}": count for status, result, count in query(
        "SELECT status, result, count(*) FROM followups GROUP BY status, result ORDER BY status, result")}
    closed = query("SELECT count(DISTINCT ticket_id) FROM ticket_history WHERE actor = '回访' AND action = 'status' "
                   "AND status_from = 'caller_informed' AND status_to = 'closed'")[0][0]
    spans = sorted(float(x) for (x,) in query(
        f"SELECT (julianday(closed_at) - julianday(last_attempt_at)) * 86400 FROM followups WHERE {ended} "
        "AND last_attempt_at IS NOT NULL"))
    first, last = query(f"SELECT min(julianday(last_attempt_at)), max(julianday(closed_at)) FROM followups "
                        f"WHERE {ended}")[0]
    epoch = 2440587.5  # the Julian day of 1970-01-01 00:00 UTC (SQLite keeps the CRM's times as naive UTC)

    def after_seed(julian: object) -> float | None:
        return round((float(julian) - epoch) * 86400 - seeded, 1) if isinstance(julian, float) else None

    done = by.get("done/satisfied", 0)
    return {
        "first_dialled_s": after_seed(first),
        "last_ended_s": after_seed(last),
        "inbound_callers_done_s": round(callers_done - seeded, 1),
        "offered": n,
        "gateway_sipp": [calls["successful"], calls["failed"]],
        "crm_by_status_result": by,
        "completed_satisfied": done,
        "tickets_closed_by_followup": closed,
        "failed": n - done,
        "call_seconds_p50": round(pct(spans, 0.5), 1),
        "call_seconds_max": round(max(spans, default=0.0), 1),
        "all_ok": done == n and closed == n and calls["successful"] == n and calls["failed"] == 0,
    }


def followups_target(report: dict[str, Any], n: int) -> bool:
    """The report's `followups_beside_inbound` target; whether all N ended done/satisfied, tickets closed."""
    steps = report["media_steps"]
    outbound = [s["followups"] for s in steps if "followups" in s]
    fu = outbound[0] if outbound else {"offered": n, "failed": n, "all_ok": False}
    report["targets"]["followups_beside_inbound"] = {
        "measured": {"completed_satisfied": fu.get("completed_satisfied", 0), "failed": fu["failed"],
                     "inbound_failed": steps[0]["sipp_failed"]},
        "target": f"{n} done/satisfied with their tickets closed, 0 failed either way"}
    return bool(outbound and outbound[0]["all_ok"])
