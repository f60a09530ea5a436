"""Faults on loopback with real UDP, real SIPp callers and a real database.

A REGISTER flood held to its limit, a sipvicious scan, RTP from strangers,
SIGTERM with calls in flight, kill -9 mid-call, and a 60 s database outage
under 50 concurrent calls (SQLite locked; PostgreSQL stopped).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from crm_bridge.db import make_engine
from crm_bridge.models import Call, CallEvent

from .conftest import IvrProcess, free_port, sipp
from .test_e2e_sip import finished

pytestmark = pytest.mark.e2e
SHORT_SILENCE = "[silence]\nwait_seconds = 1\n"  # the silent routine in about 20 s


def outcomes(db_url: str) -> Counter[str]:
    engine = make_engine(db_url)
    try:
        with Session(engine) as s:
            return Counter(o or "open" for o in s.scalars(select(Call.outcome)))
    finally:
        engine.dispose()


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


def completed_calls(run) -> int:  # type: ignore[no-untyped-def]
    """Calls SIPp saw through to the IVR's BYE (the scenario logs one 'bye' line per call)."""
    return len(re.findall(r"^bye \d+", run.logged(), re.M))


# --- abuse -------------------------------------------------------------------------------


def test_register_flood_is_held_to_the_limit_while_calls_succeed(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr: IvrProcess = ivr_factory(ring_seconds=1, extra="[limits]\nregister_per_second = 10\nexcess = reply\n")
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.bind(("127.0.0.2", 0))
    flood.setblocking(False)
    port = flood.getsockname()[1]
    replies: Counter[str] = Counter()
    retry_after = 0

    def drain() -> None:
        nonlocal retry_after
        while True:
            try:
                data = flood.recv(65535)
            except BlockingIOError:
                return
            replies[data.split(b" ", 2)[1].decode()] += 1
            retry_after += b"\r\nRetry-After: " in data

    calls = sipp(tmp_path, "short_call", ivr.port, calls=5, extra=("-d", "1000", "-r", "1"), timeout_s=30)
    sent, started = 0, time.monotonic()
    while time.monotonic() - started < 5.0:  # 1000 REGISTERs a second for 5 s
        for _ in range(20):
            sent += 1
            flood.sendto(
                (f"REGISTER sip:127.0.0.1:{ivr.port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.2:{port};branch=z9hG4bKfl{sent}\r\n"
                 f"From: <sip:801@127.0.0.1>;tag=f{sent}\r\nTo: <sip:801@127.0.0.1>\r\nCall-ID: flood-{sent}\r\n"
                 f"CSeq: 1 REGISTER\r\nContact: <sip:801@127.0.0.2:{port}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode(),
                ("127.0.0.1", ivr.port),
            )
        drain()
        time.sleep(0.02)
    time.sleep(0.5)
    drain()
    seconds = time.monotonic() - started
    print(f"REGISTER flood: {sent} sent in {seconds:.1f} s ({sent / seconds:.0f}/s); answers {dict(replies)}")
    finished(calls, 40)
    assert completed_calls(calls) == 0 and calls.logged().count("answered") == 5, "all 5 normal calls were answered"
    # 10/s over ~5.5 s (moving window) lets about 55 through; 503s are capped at 5/s; the rest is dropped
    assert 40 <= replies["401"] <= 70, replies
    assert 0 < replies["503"] <= 5 * (seconds + 1) and retry_after == replies["503"]
    assert sum(replies.values()) < sent / 5
    assert re.search(r"rate_limited.*source='127\.0\.0\.2' method='REGISTER'", ivr.log())


@pytest.mark.skipif(shutil.which("sipvicious_svmap", path=os.path.dirname(sys.executable)) is None,
                    reason="sipvicious is installed from requirements.txt")
def test_sipvicious_scan_finds_nothing_it_can_use(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr: IvrProcess = ivr_factory(ring_seconds=1, extra="[limits]\nauth_failures = 10\n")
    tools = Path(sys.executable).parent

    def run(tool: str, *args: str) -> str:
        done = subprocess.run(
            [str(tools / f"sipvicious_{tool}"), *args, "-b", "127.0.0.5", "-P", str(free_port()), "127.0.0.1", "-p", str(ivr.port)],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )
        return done.stdout + done.stderr

    found = run("svmap")
    assert "hotline-ivr" in found and not re.search(r"hotline-ivr[ /]\d", found), "no software version to look up exploits for"
    for method in ("REGISTER", "INVITE", "OPTIONS"):
        war = run("svwar", "-e800-830", "-m", method, "--force")
        assert "found nothing" in war, f"svwar -m {method} enumerated extensions:\n{war}"
    words = tmp_path / "words.txt"  # the real password after 30 wrong ones: the ban comes first
    words.write_text("".join(f"guess{n}\n" for n in range(30)) + "change-me-801\n")
    # once banned, the IVR stops answering; svcrack gives up after 10 s of silence
    cracked = run("svcrack", "-u", "801", "-d", str(words), "--maximumtime", "10")
    assert "change-me-801" not in cracked, cracked
    # svcrack 0.3.8 takes the first challenge, SHA-256 (RFC 7616 puts the preferred one first), and
    # cannot compute it; whatever it did try was refused, and enough of it banned the source.
    # tests/test_e2e_agent_phone.py guesses with MD5 until the ban.
    log = ivr.log()
    tried = len(re.findall(r"auth_failed' source='127\.0\.0\.\d+:\d+' user='801'", log))
    assert tried < 10 or re.search(r"auth_banned' source='127\.0\.0\.\d+:\d+' failures=10", log)


def test_rtp_from_strangers_does_not_corrupt_a_call(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Loud RTP and garbage sprayed at every RTP port must not count as the caller speaking."""
    ivr: IvrProcess = ivr_factory(ring_seconds=1, extra=SHORT_SILENCE)
    conf = (tmp_path / "sip.conf").read_text()
    low = int(re.search(r"rtp_port_min = (\d+)", conf).group(1))  # type: ignore[union-attr]
    call = sipp(tmp_path, "silent_caller", ivr.port, timeout_s=60)
    spray = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    spray.bind(("127.0.0.7", 0))
    rng = random.Random(3550)
    stop = time.monotonic() + 8
    seq = 0
    while time.monotonic() < stop:  # 50 packets a second to each port the first calls get
        seq += 1
        loud = bytes(rng.choice((0x00, 0x80, 0x0F, 0x8F)) for _ in range(160))  # PCMU near full scale
        for port in range(low, low + 20, 2):
            spray.sendto(struct.pack("!BBHII", 0x80, 0, seq, seq * 160, rng.getrandbits(32)) + loud, ("127.0.0.1", port))
            spray.sendto(rng.randbytes(rng.randint(1, 40)), ("127.0.0.1", port))
        time.sleep(0.02)
    finished(call, 60)
    assert completed_calls(call) == 1, "the IVR hung up on the silent caller: the noise did not count as speech"
    assert outcomes(ivr.db_url) == Counter({"silent": 1})
    dropped = re.search(r"rtp_dropped'.* stray=(\d+) malformed=(\d+)", ivr.log())
    assert dropped and int(dropped.group(1)) > 100, "the leg reports what it dropped"
    assert "Failed to parse RTP packet" not in ivr.log() and "Failed to parse RTCP packet" not in ivr.log()


# --- process faults ----------------------------------------------------------------------


def test_sigterm_drains_calls_in_flight_then_a_restart_takes_calls(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr: IvrProcess = ivr_factory(ring_seconds=1, extra=SHORT_SILENCE, general="drain_seconds = 60")
    calls = sipp(tmp_path, "silent_caller", ivr.port, calls=5, extra=("-r", "5"), timeout_s=60)
    wait_for(lambda: calls.logged().count("answered") == 5, 15, "5 answered calls")
    ivr.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    finished(sipp(tmp_path, "busy_caller", ivr.port, timeout_s=10), 20)  # a new call: 503 + Retry-After
    assert ivr.proc.wait(60) == 0
    finished(calls, 30)
    assert completed_calls(calls) == 5, "every call in flight ran its full routine"
    assert outcomes(ivr.db_url) == Counter({"silent": 5})
    log = ivr.log()
    assert re.search(r"event='draining'.*active_calls=5", log)
    assert re.search(r"event='stopping' calls_cut_short=0", log)
    assert re.search(r"invite_rejected.*status=503 reason='shutting down'", log)

    started = time.monotonic()
    again: IvrProcess = ivr_factory(ring_seconds=1)
    ready = time.monotonic() - started
    finished(sipp(tmp_path, "options", again.port, timeout_s=10), 20)
    print(f"restart: ready for calls {ready:.1f} s after the process started")
    assert ready < 15


def test_drain_limit_ends_the_calls_still_up(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr: IvrProcess = ivr_factory(ring_seconds=1, general="drain_seconds = 2")
    calls = sipp(tmp_path, "silent_caller", ivr.port, calls=3, extra=("-r", "3"), timeout_s=60)
    wait_for(lambda: calls.logged().count("answered") == 3, 15, "3 answered calls")
    ivr.proc.send_signal(signal.SIGTERM)
    assert ivr.proc.wait(30) == 0
    finished(calls, 30)  # each got a BYE from the IVR
    assert completed_calls(calls) == 3
    assert re.search(r"event='stopping' calls_cut_short=3", ivr.log())
    rows = outcomes(ivr.db_url)
    assert sum(rows.values()) == 3 and "open" not in rows


def test_kill_9_mid_call_then_restart_reconciles(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr: IvrProcess = ivr_factory(ring_seconds=1)
    calls = sipp(tmp_path, "silent_caller", ivr.port, calls=4, extra=("-r", "4"), timeout_s=20)
    wait_for(lambda: calls.logged().count("answered") == 4, 15, "4 answered calls")
    time.sleep(1.0)
    ivr.proc.kill()  # SIGKILL: no drain, no flush
    ivr.proc.wait(10)
    calls.proc.terminate()
    calls.proc.wait(10)

    again: IvrProcess = ivr_factory(ring_seconds=1)
    engine = make_engine(again.db_url)
    with Session(engine) as s:
        rows = s.scalars(select(Call)).all()
        assert len(rows) == 4, "every call that was up is in the CRM"
        for row in rows:
            last_step = s.scalar(select(func.max(CallEvent.at)).where(CallEvent.call_id == row.id, CallEvent.kind != "reconciled"))
            assert row.outcome == "failed" and row.ended_at is not None
            assert row.ended_at == last_step, "ended at its last recorded step"
            assert row.answered_at is not None and row.ended_at >= row.answered_at
            kinds = s.scalars(select(CallEvent.kind).where(CallEvent.call_id == row.id)).all()
            assert kinds[-1] == "reconciled"
    engine.dispose()
    assert re.search(r"calls_reconciled' count=4", again.log())


# --- database outage ---------------------------------------------------------------------

OUTAGE_S = 60
OUTAGE_CALLS = 125  # 5 every 2 s for 50 s, each about 20 s long: about 50 at once


def run_outage(ivr: IvrProcess, tmp_path: Path, down, up) -> None:  # type: ignore[no-untyped-def]
    calls = sipp(tmp_path, "silent_caller", ivr.port, calls=OUTAGE_CALLS,
                 extra=("-r", "5", "-rp", "2000", "-l", "60"), timeout_s=150)
    time.sleep(1.0)
    down()
    outage_started = time.monotonic()
    peak = 0
    try:
        while time.monotonic() - outage_started < OUTAGE_S:
            time.sleep(1.0)
            status = (tmp_path / "var" / "ivr-status.json")
            if status.exists():
                m = re.search(r'"calls": (\d+)', status.read_text())
                peak = max(peak, int(m.group(1)) if m else 0)
    finally:
        up()
    finished(calls, 120)
    made = completed_calls(calls)
    wait_for(lambda: sum(outcomes(ivr.db_url).values()) >= made, 90, "every record after the outage")
    rows = outcomes(ivr.db_url)
    print(f"outage {OUTAGE_S} s: {made} calls completed by SIPp, {sum(rows.values())} CRM rows {dict(rows)}, "
          f"peak {peak} concurrent calls")
    assert made == OUTAGE_CALLS
    assert rows == Counter({"silent": OUTAGE_CALLS}), "zero records lost"
    assert peak >= 45
    assert "crm_write_retry" in ivr.log()


@pytest.mark.slow
def test_sqlite_locked_for_60_s_under_50_calls_loses_no_record(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr: IvrProcess = ivr_factory(ring_seconds=1, extra=SHORT_SILENCE)
    db_file = ivr.db_url.removeprefix("sqlite:///")
    locker: dict[str, sqlite3.Connection] = {}

    def down() -> None:
        conn = sqlite3.connect(db_file, timeout=10, check_same_thread=False)
        conn.execute("BEGIN EXCLUSIVE")  # no writer gets in until it ends
        locker["conn"] = conn

    def up() -> None:
        locker["conn"].rollback()
        locker["conn"].close()

    run_outage(ivr, tmp_path, down, up)


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_stopped_for_60_s_under_50_calls_loses_no_record(ivr_factory, postgres, pg_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr: IvrProcess = ivr_factory(ring_seconds=1, db_url=pg_url, extra=SHORT_SILENCE)
    run_outage(ivr, tmp_path, postgres.stop, postgres.start)
    assert "caller_lookup_failed" in ivr.log(), "callers were still served (as unknown) while the CRM was down"

