"""End to end: tiered routing to agents, announcement, survey — SIPp and pjsua2 over UDP on loopback."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, IvrProcess, SippRun, free_port, load_customers, sipp
from .test_e2e_sip import crm_events, crm_rows, finished, ivr_prompts, wait_for_row

pytestmark = pytest.mark.e2e
SENIOR, MIDDLE = "13800000001", "13700000001"  # loadtest/scenarios/callers.csv has the senior one


def customers(tmp: Path, db_url: str) -> None:
    load_customers(tmp, db_url, f"phone,name,assets,volume\n{SENIOR},王总,9000000,0\n{MIDDLE},李先生,800000,0\n")


def agents_conf(**agents: tuple[str, str]) -> str:
    """[801] sections: number=(seat_group, host)."""
    return "".join(
        f"[{number}]\ntype = agent\nseat_group = {group}\nhost = {host}\nsecret = pw{number}\n"
        for number, (group, host) in agents.items()
    )


def agent_uas(tmp: Path, ivr: IvrProcess, port: int, *, calls: int = 1, talk_ms: int = 4000) -> SippRun:
    return sipp(tmp, "agent_uas", ivr.port, calls=calls, extra=("-d", str(talk_ms), "-p", str(port)), timeout_s=120)


def test_senior_customer_reaches_senior_agent_hears_number_and_rates(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    senior_port, junior_port = free_port(), free_port()
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    ivr = ivr_factory(db_url=db_url, extra="[queues]\nwrap_up_seconds = 0\n" + agents_conf(
        **{"801": ("senior", f"127.0.0.1:{senior_port}"), "821": ("junior", f"127.0.0.1:{junior_port}")}))
    agent = agent_uas(tmp_path, ivr, senior_port)
    caller = sipp(tmp_path, "survey_caller", ivr.port, extra=("-d", "11000"))
    finished(caller)
    finished(agent)

    row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    assert (row["tier"], row["service"], row["seat_group"], row["agent_number"]) == ("senior", "recommendation", "senior", "801")
    assert (row["outcome"], row["hangup_by"], row["survey_score"]) == ("completed", "agent", 1)
    assert 0 < row["queue_wait_s"] < 2 and row["talk_s"] > 0
    events = crm_events(ivr, row["sip_call_id"])
    kinds = [k for k, _ in events]
    for step in ("identified", "engaged", "menu_digit", "queued", "agent_rung", "agent_answered", "bridged",
                 "agent_bye", "survey_prompt", "survey_digit", "ended"):
        assert step in kinds, step
    assert kinds.index("agent_answered") < kinds.index("bridged") < kinds.index("agent_bye") < kinds.index("survey_digit")

    # the caller heard the agent's number: bridging waited for the whole announcement
    log = ivr.log()
    answered = re.search(rf"timestamp='([^']+)'[^\n]*event='agent_answered' call_id='{re.escape(row['sip_call_id'])}'", log)
    bridged = re.search(rf"timestamp='([^']+)'[^\n]*event='bridged' call_id='{re.escape(row['sip_call_id'])}'", log)
    from datetime import datetime

    announced_s = (datetime.fromisoformat(bridged.group(1)) - datetime.fromisoformat(answered.group(1))).total_seconds()
    assert announced_s == pytest.approx(ivr_prompts(tmp_path)["agent_801"].seconds, abs=0.3)

    import sqlite3

    conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
    surveys = conn.execute("SELECT agent_number, seat_group, score, label FROM surveys").fetchall()
    assert surveys == [("801", "senior", 1, "satisfied")]

    # the agent's states are in the log, one line per change
    states = re.findall(r"event='agent_state'[^\n]* agent='801' seat_group='senior' state='(\w+)'", ivr.log())
    assert states == ["available", "ringing", "talking", "wrap_up", "available"]


def test_unknown_caller_goes_to_the_junior_group(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    senior_port, junior_port = free_port(), free_port()
    ivr = ivr_factory(extra="[queues]\nwrap_up_seconds = 0\n" + agents_conf(
        **{"801": ("senior", f"127.0.0.1:{senior_port}"), "821": ("junior", f"127.0.0.1:{junior_port}")}))
    agent = agent_uas(tmp_path, ivr, junior_port)
    caller = sipp(tmp_path, "survey_caller", ivr.port, callers="unknown_callers.csv", extra=("-d", "11000"))
    finished(caller)
    finished(agent)
    row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    assert (row["caller"], row["tier"], row["seat_group"], row["agent_number"]) == ("13900000000", "junior", "junior", "821")
    assert ("identified", "tier=junior known=no") in crm_events(ivr, row["sip_call_id"])


def test_caller_who_hangs_up_in_the_queue_is_abandoned_queue(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    # the senior agent exists but never answers (no phone at that address): the caller waits, then gives up
    ivr = ivr_factory(db_url=db_url, extra="[queues]\nring_agent_seconds = 3\n" + agents_conf(
        **{"801": ("senior", f"127.0.0.1:{free_port()}")}))
    caller = sipp(tmp_path, "queue_abandon_caller", ivr.port, extra=("-d", "6000"))
    finished(caller)
    row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    assert (row["outcome"], row["hangup_by"], row["seat_group"], row["agent_number"]) == ("abandoned_queue", "caller", "senior", None)
    assert 5.5 < row["queue_wait_s"] < 7.5
    kinds = [k for k, _ in crm_events(ivr, row["sip_call_id"])]
    assert "agent_rung" in kinds and "agent_no_answer" in kinds, "the silent agent was skipped after the ring time"


@pytest.mark.parametrize("retry_seconds", [2, 0])
def test_a_phone_on_do_not_disturb_is_offered_again_only_after_retry_seconds(
        ivr_factory, tmp_path: Path, retry_seconds: float) -> None:  # type: ignore[no-untyped-def]
    from .test_e2e_waiting import customer_gateway

    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    # the only senior agent's phone answers every INVITE with 486 at once; the caller waits 6 s, then hangs up
    port, phone = customer_gateway(tmp_path, ROOT / "tests" / "sipp" / "agent_dnd_uas.xml", calls=10_000)
    try:
        ivr = ivr_factory(db_url=db_url, extra=f"[queues]\nretry_seconds = {retry_seconds}\n" + agents_conf(
            **{"801": ("senior", f"127.0.0.1:{port}")}))
        caller = sipp(tmp_path, "queue_abandon_caller", ivr.port, extra=("-d", "6000"))
        finished(caller)
        row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    finally:
        phone.kill()
    assert (row["outcome"], row["agent_number"]) == ("abandoned_queue", None)
    refused = [k for k, _ in crm_events(ivr, row["sip_call_id"])].count("agent_no_answer")
    if retry_seconds:  # rung about every 2 s (the next once-a-second offer after the rest) of the 6 s wait
        assert 2 <= refused <= 5, refused
    else:  # at once: the loop retry_seconds is there to stop (thousands in 6 s, as fast as SIPp refuses)
        assert refused > 50, refused


def test_ten_callers_two_agents_all_served_in_queue_order(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b = free_port(), free_port()
    ivr = ivr_factory(extra="[queues]\nwrap_up_seconds = 0\n[survey]\ntimeout_seconds = 2\n" + agents_conf(
        **{"821": ("junior", f"127.0.0.1:{a}"), "822": ("junior", f"127.0.0.1:{b}")}))
    agents = [agent_uas(tmp_path, ivr, port, calls=5, talk_ms=1000) for port in (a, b)]
    callers = sipp(tmp_path, "served_caller", ivr.port, calls=10, callers="unknown_callers.csv",
                   extra=("-r", "5", "-l", "10"), timeout_s=170)
    finished(callers, 180)
    for agent in agents:
        finished(agent, 30)

    deadline = time.monotonic() + 10
    while len(crm_rows(ivr, "outcome = 'completed'")) < 10 and time.monotonic() < deadline:
        time.sleep(0.2)
    rows = crm_rows(ivr)
    assert len(rows) == 10 and {r["outcome"] for r in rows} == {"completed"}, [dict(r) for r in rows]
    assert sorted(r["caller"] for r in rows) == [f"1390000000{i}" for i in range(10)]
    assert {r["agent_number"] for r in rows} == {"821", "822"}

    def first(sip_call_id: str, kind: str) -> int:
        import sqlite3

        conn = sqlite3.connect(ivr.db_url.removeprefix("sqlite:///"))
        return conn.execute(
            "SELECT min(e.id) FROM call_events e JOIN calls c ON c.id = e.call_id WHERE c.sip_call_id = ? AND kind = ?",
            (sip_call_id, kind),
        ).fetchone()[0]

    queued = sorted(rows, key=lambda r: first(r["sip_call_id"], "queued"))
    answered = sorted(rows, key=lambda r: first(r["sip_call_id"], "agent_answered"))
    assert [r["sip_call_id"] for r in queued] == [r["sip_call_id"] for r in answered], "served out of queue order"


def softphone_agent(port: int, agent: str, password: str, *, talk: float = 3, calls: int = 1,
                    dial: tuple[str, ...] = (), dial_delay: float = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "softphone_agent.py"), "--ivr-port", str(port), "--agent", agent,
         "--password", password, "--talk", str(talk), "--calls", str(calls), "--timeout", "90",
         "--dial-delay", str(dial_delay), *(arg for code in dial for arg in ("--dial", code))],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def wait_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 20) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line.strip()
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no '{prefix}' line from the softphone")


def test_pjsua2_agent_registers_with_digest_and_serves_a_senior_caller(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    ivr = ivr_factory(db_url=db_url, extra="[queues]\nwrap_up_seconds = 0\n" + agents_conf(**{"801": ("senior", "dynamic")}))
    phone = softphone_agent(ivr.port, "801", "pw801", talk=4)
    assert wait_line(phone, "registered") == "registered 200"
    assert re.search(r"event='agent_registered'.*agent='801'", ivr.log())
    time.sleep(1.5)  # the status file is rewritten once a second
    status = subprocess.run([sys.executable, "-m", "ivr", "status", "--config", str(tmp_path / "sip.conf")],
                            capture_output=True, text=True, cwd=ROOT)
    assert status.returncode == 0, status.stderr
    assert re.search(r"^senior\s+801\s+available", status.stdout, re.M), status.stdout

    caller = sipp(tmp_path, "survey_caller", ivr.port, extra=("-d", "11000"))
    finished(caller)
    assert wait_line(phone, "answered")
    phone.wait(30)
    row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    assert (row["tier"], row["seat_group"], row["agent_number"], row["survey_score"]) == ("senior", "senior", "801", 1)
    assert row["outcome"] == "completed"


def test_wrong_password_is_refused_and_logged_for_fail2ban(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr = ivr_factory(extra=agents_conf(**{"801": ("senior", "dynamic")}))
    phone = softphone_agent(ivr.port, "801", "not-the-password")
    assert wait_line(phone, "registered") == "registered 403"
    phone.wait(20)
    assert re.search(r"event='auth_failed' source='127\.0\.0\.1:\d+' user='801' reason='wrong password'", ivr.log())
    assert "agent_registered" not in ivr.log()


def test_agent_pauses_and_resumes_with_feature_codes(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr = ivr_factory(extra=agents_conf(**{"801": ("senior", "dynamic")}))
    phone = softphone_agent(ivr.port, "801", "pw801", calls=0, dial=("*46", "*47"))
    assert wait_line(phone, "registered") == "registered 200"
    assert wait_line(phone, "dialled") == "dialled *46 480 Agent 801 paused"
    assert wait_line(phone, "dialled") == "dialled *47 480 Agent 801 available"
    phone.wait(20)
    states = re.findall(r"event='agent_state'[^\n]* agent='801' seat_group='senior' state='(\w+)'", ivr.log())
    assert states == ["logged_out", "available", "paused", "available"]
    # the same codes from a phone that is not a registered agent's are just unknown numbers
    run = sipp(tmp_path, "unknown_number_caller", ivr.port, service="*46", timeout_s=10)
    finished(run, 20)
