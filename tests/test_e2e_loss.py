"""200 calls through 10 % packet loss in both directions: every call completes and is recorded once.

The IVR and SIPp run inside a network namespace of the test's own whose `lo`
drops 10 % of all packets (tests/lossy.py: netem, or an nftables rule where the
kernel has no netem), so every SIP message and every retransmission crosses a
lossy path both ways. What must hold (RFC 3261's timers at work):

- every call completes on SIPp's side: a lost INVITE, 100/180/200, ACK or BYE is
  retransmitted, a retransmitted INVITE is absorbed (one call, one To tag), and a
  retransmitted BYE gets the 200 already sent (a 481 would fail SIPp's scenario);
- the IVR's own BYE (silent callers) is resent until the caller's 200 arrives: a
  silent caller whose BYE was lost would otherwise wait until SIPp's timeout;
- the CRM has exactly one row per Call-ID, as many as SIPp placed, none left open.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from .conftest import ROOT, SCENARIOS, write_ivr_config
from .lossy import Namespace, lossy_namespace_or_skip

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("namespaces_alone")]  # see conftest.namespaces_alone
# 100 silent callers: each has its BYE's 200 lost with p = 0.1, so that no BYE at all is resent
# (the last assertion) has p = 0.9^100, 3e-5; with 50 it was 0.5 %, and it happened
SHORT_CALLS, SILENT_CALLS = 100, 100


def sipp_in(ns: Namespace, tmp: Path, scenario: str, calls: int, port: int, media_port: int, *,
            rate: int, extra: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    return ns.popen(
        "sipp", "127.0.0.1:5060", "-sf", str(SCENARIOS / f"{scenario}.xml"), "-inf", str(SCENARIOS / "callers.csv"),
        "-s", "95000", "-m", str(calls), "-r", str(rate), "-l", str(calls), "-i", "127.0.0.1", "-p", str(port),
        "-mp", str(media_port), "-nostdin", "-timeout", "150s", "-timeout_error", "-bind_local",
        "-trace_err", "-error_file", str(tmp / f"{scenario}.err"), "-trace_msg", "-message_file",
        str(tmp / f"{scenario}.msg"), "-trace_stat", "-stf", str(tmp / f"{scenario}.csv"), *extra,
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def received_byes(message_log: Path) -> Counter[str]:
    """Call-ID -> how many BYEs SIPp received for it (its -trace_msg log)."""
    byes: Counter[str] = Counter()
    for block in message_log.read_text(errors="replace").split("message received")[1:]:
        body = block.split("\n", 2)[-1]
        if body.lstrip().startswith("BYE "):
            found = re.search(r"^Call-ID:\s*(\S+)", body, re.MULTILINE | re.IGNORECASE)
            if found:
                byes[found.group(1)] += 1
    return byes


def test_two_hundred_calls_through_ten_percent_loss_all_complete_and_are_recorded_once(tmp_path: Path) -> None:
    db = tmp_path / "crm.db"
    conf = write_ivr_config(tmp_path, sip_port=5060, db_url=f"sqlite:///{db}", ring_seconds=0.5,
                            extra="[silence]\nwait_seconds = 1\n[limits]\ninvite_per_second = 100\n")
    with lossy_namespace_or_skip(10.0) as ns:
        log = tmp_path / "ivr.log"
        ivr = ns.popen(sys.executable, str(ROOT / "run_ivr.py"), "--config", str(conf), cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=open(log, "w"))  # noqa: SIM115
        try:
            assert ivr.stdout is not None
            deadline = time.monotonic() + 60
            while "ready on" not in ivr.stdout.readline():
                assert time.monotonic() < deadline and ivr.poll() is None, log.read_text()[-3000:]
            short = sipp_in(ns, tmp_path, "lossy_caller", SHORT_CALLS, 5070, 6000, rate=15)
            silent = sipp_in(ns, tmp_path, "lossy_silent_caller", SILENT_CALLS, 5080, 7000, rate=10)
            codes = (short.wait(240), silent.wait(240))
            dropped = ns.dropped()
            time.sleep(1.5)  # the last records reach the CRM
        finally:
            for proc in (ivr,):
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(30)
    errors = "\n".join(p.read_text(errors="replace")[-2000:] for p in tmp_path.glob("*.err"))
    assert codes == (0, 0), f"every call completed on SIPp's side (a 481 to a retransmitted BYE fails it):\n{errors}"
    assert dropped > 200, f"only {dropped} packets dropped: the calls did not cross a lossy path"

    rows = sqlite3.connect(db).execute("SELECT sip_call_id, outcome FROM calls").fetchall()
    assert len(rows) == SHORT_CALLS + SILENT_CALLS, "one CRM row per call placed"
    assert len({call_id for call_id, _ in rows}) == len(rows), "one row per Call-ID"
    outcomes = Counter(outcome for _, outcome in rows)
    assert outcomes == {"caller_hangup": SHORT_CALLS, "silent": SILENT_CALLS}, outcomes
    assert log.read_text().count("event='invited'") == SHORT_CALLS + SILENT_CALLS, "a retransmitted INVITE is not a call"

    byes = received_byes(tmp_path / "lossy_silent_caller.msg")
    assert set(byes) and len(byes) == SILENT_CALLS, "every silent caller got the IVR's BYE"
    assert any(n > 1 for n in byes.values()), "some BYE was resent (its 200 was lost): Timer E at work"


def test_sixty_calls_with_sipp_dropping_ten_percent_of_its_messages_all_complete(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """SIPp's own loss (`-lost 10`: a tenth of what it sends and receives is dropped), no namespace needed."""
    from .conftest import free_port, sipp_media_port

    ivr = ivr_factory(ring_seconds=0.5, extra="[limits]\ninvite_per_second = 100\n")
    calls = 60
    run = subprocess.run(
        ["sipp", f"127.0.0.1:{ivr.port}", "-sf", str(SCENARIOS / "lossy_caller.xml"), "-inf",
         str(SCENARIOS / "callers.csv"), "-s", "95000", "-m", str(calls), "-r", "10", "-l", str(calls), "-lost", "10",
         "-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(sipp_media_port()), "-nostdin", "-timeout", "120s",
         "-timeout_error", "-trace_stat", "-stf", str(tmp_path / "stat.csv"), "-trace_err", "-error_file",
         str(tmp_path / "sipp.err")],
        cwd=tmp_path, capture_output=True, text=True, timeout=180)
    errors = (tmp_path / "sipp.err").read_text(errors="replace")[-2000:] if (tmp_path / "sipp.err").exists() else ""
    assert run.returncode == 0, errors
    header, *rows = [line.split(";") for line in (tmp_path / "stat.csv").read_text().splitlines() if line.strip()]
    assert int(rows[-1][header.index("Retransmissions(C)")]) > 0, "messages were lost and resent"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows_db = sqlite3.connect(ivr.db_url.removeprefix("sqlite:///")).execute(
            "SELECT sip_call_id, outcome FROM calls").fetchall()
        if len(rows_db) == calls and all(outcome for _, outcome in rows_db):
            break
        time.sleep(0.3)
    assert len(rows_db) == calls and len({c for c, _ in rows_db}) == calls
    assert Counter(outcome for _, outcome in rows_db) == {"caller_hangup": calls}
