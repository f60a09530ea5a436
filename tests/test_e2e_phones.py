"""End to end with phones nobody here wrote, over UDP on loopback: baresip 1.0.0 and pyVoIP 1.6.8.

baresip calls the hotline (silent, then with RFC 4733 digits) and serves a
senior SIPp caller as agent 801; pyVoIP, as agent 811, serves a middle-tier
caller played by baresip, so both ends of that call are third-party phones,
and calls the hotline itself.
Neither registers with the strict RFC 7616 digest every agent gets by default
(the xfail tests say why); each registers with the weaker policy its agent's
section names (`digest = md5` for baresip, `digest = legacy` for pyVoIP), and
serves its calls as a registered agent.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .baresip_phone import Baresip, start_baresip
from .conftest import ROOT, IvrProcess, free_port, sipp
from .test_e2e_routing import MIDDLE, customers, wait_line
from .test_e2e_sip import crm_events, crm_rows, finished, wait_for_row

pytestmark = pytest.mark.e2e
IvrFactory = Callable[..., IvrProcess]


def agent_section(number: str, seat_group: str, host: str) -> str:
    return f"[{number}]\ntype = agent\nseat_group = {seat_group}\nhost = {host}\nsecret = pw{number}\n"


def wait_for_event(ivr: IvrProcess, sip_call_id: str, kind: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while kind not in [k for k, _ in crm_events(ivr, sip_call_id)]:
        assert time.monotonic() < deadline, f"no {kind} for {sip_call_id}: {crm_events(ivr, sip_call_id)}"
        time.sleep(0.1)


def caller_phone(tmp: Path, number: str = "13800000001") -> Baresip:
    # regint=0: a caller does not register; the IVR answers anyone who dials 95000
    return start_baresip(tmp / "baresip-caller", f"<sip:{number}@127.0.0.1>;regint=0")


def test_baresip_silent_caller_hears_the_greeting_and_is_hung_up_on(ivr_factory: IvrFactory, tmp_path: Path) -> None:
    ivr = ivr_factory(extra="[silence]\nwait_seconds = 1\n")
    phone = caller_phone(tmp_path)
    try:
        phone.command("dial", f"sip:95000@127.0.0.1:{ivr.port}")
        call_id = phone.wait_event("CALL_ESTABLISHED")["id"]
        assert phone.wait_event("CALL_RTPESTAB")["param"] == "audio", "the IVR's audio reached baresip"
        closed = phone.wait_event("CALL_CLOSED", timeout=40)
    finally:
        phone.stop()
    assert closed["id"] == call_id
    assert re.search(rf"^BYE sip:13800000001-\w+@127\.0\.0\.1:{phone.sip_port} SIP/2\.0", phone.log(), re.M), \
        "the IVR hung up, not baresip"
    row = wait_for_row(ivr, call_id)
    assert (row["caller"], row["outcome"], row["hangup_by"]) == ("13800000001", "silent", "ivr")
    assert row["silent_attempts"] == 3
    prompts = [detail for kind, detail in crm_events(ivr, call_id) if kind == "prompt"]
    assert prompts and "greeting" in prompts[0], prompts


def test_baresip_caller_presses_keys_and_picks_after_sales(ivr_factory: IvrFactory, tmp_path: Path) -> None:
    ivr = ivr_factory()
    phone = caller_phone(tmp_path, number="13900000000")
    try:
        phone.command("dial", f"sip:95000@127.0.0.1:{ivr.port}")
        call_id = phone.wait_event("CALL_ESTABLISHED")["id"]
        time.sleep(1.5)
        phone.key("9")  # any key leaves the silent routine for the menu
        wait_for_event(ivr, call_id, "engaged")
        phone.key("4")  # 售后服务
        wait_for_event(ivr, call_id, "queued")
        phone.command("hangup")
        phone.wait_event("CALL_CLOSED")
    finally:
        phone.stop()
    row = wait_for_row(ivr, call_id)
    assert (row["service"], row["seat_group"], row["outcome"], row["hangup_by"]) == (
        "after_sales", "junior", "abandoned_queue", "caller")
    digits = [detail for kind, detail in crm_events(ivr, call_id) if kind in ("digit", "menu_digit")]
    assert "digit=9 via=rfc4733" in digits and "digit=4" in digits, digits


def test_baresip_agent_801_answers_a_senior_caller_and_hangs_up(ivr_factory: IvrFactory, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    # a registered agent; baresip 1.0.0 needs `digest = md5` (test_baresip_registers_as_agent_801)
    ivr = ivr_factory(db_url=db_url, extra="[queues]\nwrap_up_seconds = 0\n"
                      + agent_section("801", "senior", "dynamic") + "digest = md5\n")
    phone = start_baresip(tmp_path / "baresip-801",
                          f"<sip:801@127.0.0.1:{ivr.port}>;auth_pass=pw801;regint=300;answermode=auto")
    try:
        assert phone.wait_event(("REGISTER_OK", "REGISTER_FAIL"))["type"] == "REGISTER_OK"
        caller = sipp(tmp_path, "survey_caller", ivr.port, extra=("-d", "11000"))
        phone.wait_event("CALL_ESTABLISHED", timeout=20)
        time.sleep(5)  # the announcement (~3 s), then talk
        phone.command("hangup")
        phone.wait_event("CALL_CLOSED")
        finished(caller, 40)
    finally:
        phone.stop()
    row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    assert (row["tier"], row["seat_group"], row["agent_number"]) == ("senior", "senior", "801")
    assert (row["outcome"], row["hangup_by"], row["survey_score"]) == ("completed", "agent", 1)
    assert row["talk_s"] > 0
    assert "bridged" in [k for k, _ in crm_events(ivr, row["sip_call_id"])]


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "baresip 1.0.0 (libre) gives up with ENOSYS on a 401 holding any algorithm=SHA-256 challenge, "
    "even beside an MD5 one; the IVR always offers SHA-256 and MD5"))
def test_baresip_registers_as_agent_801(ivr_factory: IvrFactory, tmp_path: Path) -> None:
    ivr = ivr_factory(extra=agent_section("801", "senior", "dynamic"))
    phone = start_baresip(tmp_path / "baresip-801", f"<sip:801@127.0.0.1:{ivr.port}>;auth_pass=pw801;regint=300")
    try:
        outcome = phone.wait_event(("REGISTER_OK", "REGISTER_FAIL"))
    finally:
        phone.stop()
    assert outcome["type"] == "REGISTER_OK", f"{outcome}\n{phone.log()[-2500:]}"
    assert "agent_registered" in ivr.log()


def pyvoip_agent(ivr: IvrProcess, agent: str, sip_port: int, *, register: bool,
                 talk: float = 5) -> subprocess.Popen[str]:
    rtp = free_port(even=True)
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "pyvoip_agent.py"), "--ivr-port", str(ivr.port), "--agent", agent,
         "--password", f"pw{agent}", "--sip-port", str(sip_port), "--rtp-low", str(rtp), "--rtp-high", str(rtp + 20),
         "--talk", str(talk), "--timeout", "30", *(() if register else ("--no-register",))],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_pyvoip_agent_811_answers_a_middle_caller_and_talks(ivr_factory: IvrFactory, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    sip_port = free_port()
    # a registered agent; pyVoIP 1.6.8 needs `digest = legacy` (test_pyvoip_registers_as_agent_811)
    ivr = ivr_factory(db_url=db_url, extra="[queues]\nwrap_up_seconds = 0\n"
                      + agent_section("811", "middle", "dynamic") + "digest = legacy\n")
    phone = pyvoip_agent(ivr, "811", sip_port, register=True)  # 5 s: the announcement (~3 s), then talk
    # the caller is baresip, which sends RTP all along (silence), so the bridge has audio to carry to
    # pyVoIP; SIPp's survey caller sends only its RFC 4733 digits
    caller = caller_phone(tmp_path, number=MIDDLE)
    try:
        assert wait_line(phone, "registered")
        caller.command("dial", f"sip:95000@127.0.0.1:{ivr.port}")
        call_id = caller.wait_event("CALL_ESTABLISHED")["id"]
        time.sleep(1.5)
        caller.key("9")
        wait_for_event(ivr, call_id, "engaged")
        caller.key("2")  # 产品推荐
        assert wait_line(phone, "answered").split()[1] in ("PCMU", "PCMA")
        sent, received = map(int, re.findall(r"\d+", wait_line(phone, "sent")))
        # the IVR relays the caller to the agent once bridged, after the announcement (~2 s of the 5)
        assert sent > 200 and received > 50, f"sent {sent} frames, received {received} RTP packets from the IVR"
        assert wait_line(phone, "hung up")
        assert phone.wait(10) == 0
        wait_for_event(ivr, call_id, "survey_prompt")
        caller.key("1")
        caller.wait_event("CALL_CLOSED", timeout=20)
    finally:
        phone.kill()
        caller.stop()
    row = wait_for_row(ivr, call_id)
    assert (row["caller"], row["tier"], row["seat_group"], row["agent_number"]) == (MIDDLE, "middle", "middle", "811")
    assert (row["outcome"], row["hangup_by"], row["survey_score"]) == ("completed", "agent", 1)
    assert row["talk_s"] > 0
    assert "bridged" in [k for k, _ in crm_events(ivr, call_id)]


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "pyVoIP 1.6.8 answers RFC 2069 style (no qop, nc, cnonce) with uri 'sip:127.0.0.1;transport=UDP' "
    "for Request-URI 'sip:127.0.0.1'; the IVR requires qop=auth and uri = Request-URI: 403"))
def test_pyvoip_registers_as_agent_811(ivr_factory: IvrFactory, tmp_path: Path) -> None:
    ivr = ivr_factory(extra=agent_section("811", "middle", "dynamic"))
    phone = pyvoip_agent(ivr, "811", free_port(), register=True)
    try:
        status = wait_line(phone, "register")
    finally:
        phone.kill()
        phone.wait()
    assert status == "registered", f"{status}; IVR: {re.findall(r'event=.auth_failed.*', ivr.log())}"
    assert not crm_rows(ivr)


def test_baresip_registers_as_agent_801_with_digest_md5(ivr_factory: IvrFactory, tmp_path: Path) -> None:
    """`digest = md5` for that agent: a challenge with MD5 alone, still qop=auth, uri and nonce count checked."""
    ivr = ivr_factory(extra=agent_section("801", "senior", "dynamic") + "digest = md5\n")
    phone = start_baresip(tmp_path / "baresip-801", f"<sip:801@127.0.0.1:{ivr.port}>;auth_pass=pw801;regint=300")
    try:
        outcome = phone.wait_event(("REGISTER_OK", "REGISTER_FAIL"))
    finally:
        phone.stop()
    assert outcome["type"] == "REGISTER_OK", f"{outcome}\n{phone.log()[-2500:]}"
    log = ivr.log()
    assert "event='agent_registered' agent='801'" in log
    assert "event='agent_digest_weakened' agent='801' digest='md5'" in log


def test_pyvoip_registers_as_agent_811_with_digest_legacy(ivr_factory: IvrFactory, tmp_path: Path) -> None:
    """`digest = legacy`: RFC 2069 answers (no qop) and a uri differing in parameters are taken for that agent."""
    ivr = ivr_factory(extra=agent_section("811", "middle", "dynamic") + "digest = legacy\n")
    phone = pyvoip_agent(ivr, "811", free_port(), register=True)
    try:
        status = wait_line(phone, "register")
    finally:
        phone.kill()
        phone.wait()
    assert status == "registered", f"{status}; IVR: {re.findall(r'event=.auth_failed.*', ivr.log())}"
    assert "event='agent_registered' agent='811'" in ivr.log()


def test_pyvoip_caller_is_answered_hears_the_greeting_and_hangs_up(ivr_factory: IvrFactory) -> None:
    """pyVoIP as a caller (no registration: the IVR answers anyone who dials a hotline number)."""
    ivr = ivr_factory()
    rtp = free_port(even=True)
    phone = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "pyvoip_agent.py"), "--ivr-port", str(ivr.port), "--agent",
         "13700000001", "--password", "-", "--sip-port", str(free_port()), "--rtp-low", str(rtp), "--rtp-high",
         str(rtp + 20), "--talk", "3", "--timeout", "20", "--no-register", "--call", "95000"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_line(phone, "answered").split()[1] in ("PCMU", "PCMA")
        received = int(re.findall(r"\d+", wait_line(phone, "received"))[0])
        assert received > 100, f"{received} RTP packets of the greeting in 3 s"
        assert wait_line(phone, "hung up")
        assert phone.wait(10) == 0
    finally:
        phone.kill()
    deadline = time.monotonic() + 10
    while not crm_rows(ivr, "outcome IS NOT NULL") and time.monotonic() < deadline:
        time.sleep(0.2)
    (row,) = crm_rows(ivr)
    assert (row["caller"], row["outcome"], row["hangup_by"]) == ("13700000001", "caller_hangup", "caller")
