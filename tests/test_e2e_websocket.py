"""SIP over WebSocket (RFC 7118) and connection-bound registrations, end to end on loopback.

A `websockets` client plays the agent's browser: it registers with digest over
the WebSocket and is rung down that same connection; closing it while a call
rings sends the caller back to the head of the queue, to another agent (SIPp).
A page from a foreign Origin is refused at the handshake and counted towards a
ban; an SDES offer over a WebSocket is refused 488; a phone registered over TCP
whose connection closes is logged out at once and never rung over UDP.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus

from .browser_agent import DESK, WsPhone, header, register
from .conftest import IvrProcess, free_port, sipp
from .test_e2e_retransmission import status_line
from .test_e2e_routing import SENIOR, agent_uas, customers
from .test_e2e_sip import crm_events, finished, wait_for_row
from .test_e2e_tcp import StreamPhone, self_signed_certificate

pytestmark = pytest.mark.e2e

def ws_ivr(ivr_factory, tmp_path: Path, *, extra: str = "", **kwargs) -> tuple[IvrProcess, int]:  # type: ignore[no-untyped-def]
    ws_port = free_port(socket.SOCK_STREAM)
    extra += f"[websocket]\nenabled = yes\nport = {ws_port}\norigins = {DESK}\nping_seconds = 5\n"
    return ivr_factory(extra=extra, **kwargs), ws_port


def agent_state(tmp_path: Path, agent: str) -> str:
    status = json.loads((tmp_path / "var" / "ivr-status.json").read_text())
    return str(next(a["state"] for a in status["agents"] if a["agent"] == agent))


def wait_state(tmp_path: Path, agent: str, state: str, seconds: float) -> float:
    """Seconds until the status file (the wallboard's source) shows `agent` in `state`."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            if agent_state(tmp_path, agent) == state:
                return time.monotonic() - started
        except (FileNotFoundError, json.JSONDecodeError, StopIteration):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{agent} not {state} within {seconds} s")


@pytest.mark.parametrize("how", ["closes", "rejects"])
def test_a_browser_registered_over_websocket_is_rung_on_that_connection_and_the_caller_is_requeued_when_it(  # type: ignore[no-untyped-def]
        ivr_factory, tmp_path: Path, how: str) -> None:
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    sipp_port = free_port()
    ivr, ws_port = ws_ivr(
        ivr_factory, tmp_path, db_url=db_url,
        extra="[queues]\nwrap_up_seconds = 0\noverflow = senior>middle\noverflow_after_seconds = 2\n"
        "ring_agent_seconds = 3\n"
        + "[801]\ntype = agent\nseat_group = senior\nhost = dynamic\nsecret = pw801\n"
        + f"[811]\ntype = agent\nseat_group = middle\nhost = 127.0.0.1:{sipp_port}\nsecret = pw811\n")
    (tmp_path / "var").mkdir(exist_ok=True)
    browser = WsPhone(ivr, ws_port)
    caller = agent = None
    try:
        _, status = register(browser, ivr, "801", f"sip:801@{browser.host};transport=ws")  # type: ignore[arg-type]
        assert status.startswith("SIP/2.0 200"), status
        wait_state(tmp_path, "801", "available", 3)
        agent = agent_uas(tmp_path, ivr, sipp_port)
        caller = sipp(tmp_path, "survey_caller", ivr.port, extra=("-d", "16000"))
        got = browser.until(lambda t: t.startswith("INVITE "), seconds=20)
        invite = next(t for _, t in got if t.startswith("INVITE "))
        # RFC 7118 §5.2: the browser is reached at its .invalid Contact, down its own WebSocket
        assert invite.startswith(f"INVITE sip:801@{browser.host};transport=ws SIP/2.0")
        assert header(invite, "Via").startswith(f"SIP/2.0/WS 127.0.0.1:{ws_port};")
        assert header(invite, "Contact") == f"<sip:127.0.0.1:{ws_port};transport=ws>"
        assert SENIOR in invite
        if how == "closes":
            browser.close()  # while it rings
            assert wait_state(tmp_path, "801", "logged_out", 1) < 1, "the status file (the wallboard's source) at once"
        else:
            echoed = "\r\n".join(line for line in invite.split("\r\n")
                                 if line.lower().split(":")[0] in ("via", "from", "call-id", "cseq"))
            to = header(invite, "To") + ";tag=browser"
            browser.ws.send(f"SIP/2.0 486 Busy Here\r\n{echoed}\r\nTo: {to}\r\nContent-Length: 0\r\n\r\n")
            got = browser.until(lambda t: t.startswith("ACK "), seconds=5)
            assert header(got[-1][1], "Via").startswith(f"SIP/2.0/WS 127.0.0.1:{ws_port};"), "ACKed down the WebSocket"
        finished(caller)
        finished(agent)
    finally:
        for run in (caller, agent):
            if run is not None and run.proc.poll() is None:
                run.proc.kill()
        browser.close()
    row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    # never lost: back to the head of the queue, then served by the other agent
    assert (row["outcome"], row["agent_number"]) == ("completed", "811"), dict(row)
    kinds = [k for k, _ in crm_events(ivr, row["sip_call_id"])]
    assert kinds.count("agent_rung") >= 2 and "agent_no_answer" in kinds
    log = ivr.log()
    if how == "closes":
        assert re.search(r"event='agent_unregistered' agent='801' reason='WS connection closed'", log)
        assert re.search(r"event='agent_not_answering'[^\n]*agent='801' reason='connection closed'", log)
    else:
        assert re.search(r"event='agent_not_answering'[^\n]*agent='801' reason='486 Busy Here'", log)


def test_a_foreign_origin_is_refused_at_the_handshake_and_repeats_ban_the_source(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr, ws_port = ws_ivr(ivr_factory, tmp_path, extra="[limits]\nauth_failures = 3\n"
                          "[801]\ntype = agent\nseat_group = senior\nhost = dynamic\nsecret = pw801\n")
    for _ in range(4):
        with pytest.raises(InvalidStatus) as refused:
            WsPhone(ivr, ws_port, origin="https://evil.example.net")
        assert refused.value.response.status_code == 403
    assert len(re.findall(r"event='auth_failed'[^\n]*reason='origin https://evil.example.net not allowed'",
                          ivr.log())) >= 3
    assert "event='auth_banned' source='127.0.0.1:" in ivr.log()
    with pytest.raises(InvalidStatus) as banned:  # the desk's own origin too, from the banned source
        WsPhone(ivr, ws_port)
    assert banned.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as wrong_path:
        WsPhone(ivr, ws_port, path="/other")
    assert wrong_path.value.response.status_code == 403  # still banned: nothing is served to it


def test_wrong_credentials_over_websocket_get_403_and_count(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr, ws_port = ws_ivr(ivr_factory, tmp_path,
                          extra="[801]\ntype = agent\nseat_group = senior\nhost = dynamic\nsecret = pw801\n")
    browser = WsPhone(ivr, ws_port)
    try:
        _, status = register(browser, ivr, "801", f"sip:801@{browser.host};transport=ws",  # type: ignore[arg-type]
                             password="guessed")
        assert status.startswith("SIP/2.0 403")
        with pytest.raises(InvalidStatus) as wrong_path:
            WsPhone(ivr, ws_port, path="/other")
        assert wrong_path.value.response.status_code == 404
    finally:
        browser.close()
    assert re.search(r"event='auth_failed' source='127\.0\.0\.1:\d+' user='801' reason='wrong password'", ivr.log())


@pytest.mark.parametrize("proto", ["RTP/SAVP", "RTP/AVP"])
def test_an_sdes_or_plain_offer_over_websocket_is_refused_488(ivr_factory, tmp_path: Path, proto: str) -> None:  # type: ignore[no-untyped-def]
    ivr, ws_port = ws_ivr(ivr_factory, tmp_path)
    browser = WsPhone(ivr, ws_port)
    try:
        crypto = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\n" if "SAVP" in proto else ""
        sdp = (f"v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\n"
               f"m=audio 40000 {proto} 0\na=rtpmap:0 PCMU/8000\n{crypto}").replace("\n", "\r\n")
        browser.send(f"INVITE sip:95000@127.0.0.1:{ivr.port};transport=ws SIP/2.0\n"
                     f"Via: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK{uuid.uuid4().hex}\nMax-Forwards: 70\n"
                     f"From: <sip:13800000001@127.0.0.1>;tag=ws1\nTo: <sip:95000@127.0.0.1>\n"
                     f"Call-ID: {uuid.uuid4().hex}@ws\nCSeq: 1 INVITE\n"
                     f"Contact: <sip:caller@{browser.host};transport=ws>\nContent-Type: application/sdp\n"
                     f"Content-Length: {len(sdp)}\n\n" + sdp)
        got = browser.until(lambda t: status_line(t).startswith("SIP/2.0 488"))
        refusal = got[-1][1]
        assert header(refusal, "Via").startswith(f"SIP/2.0/WS {browser.host};"), "answered down the WebSocket"
    finally:
        browser.close()
    assert f"{proto} offered over a WebSocket" in ivr.log()


def test_a_tcp_registered_phone_whose_connection_closes_is_unavailable_at_once_and_never_rung_over_udp(  # type: ignore[no-untyped-def]
        ivr_factory, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    ivr = ivr_factory(db_url=db_url, general="transports = udp, tcp\n",
                      extra="[queues]\nring_agent_seconds = 3\n"
                            "[801]\ntype = agent\nseat_group = senior\nhost = dynamic\nsecret = pw801\n")
    (tmp_path / "var").mkdir(exist_ok=True)
    phone = StreamPhone(ivr)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller = None
    try:
        udp.bind(("127.0.0.1", phone.port))  # the phone's address as a UDP port: an INVITE there would be a bug
        _, status = register(phone, ivr, "801", f"sip:801@127.0.0.1:{phone.port}")  # type: ignore[arg-type]
        assert status.startswith("SIP/2.0 200")
        wait_state(tmp_path, "801", "available", 3)
        phone.sock.close()
        assert wait_state(tmp_path, "801", "logged_out", 2) < 2
        caller = sipp(tmp_path, "queue_abandon_caller", ivr.port, extra=("-d", "4000"))
        udp.settimeout(6)
        with pytest.raises(TimeoutError):
            udp.recvfrom(65535)
        finished(caller)
    finally:
        if caller is not None and caller.proc.poll() is None:
            caller.proc.kill()
        udp.close()
        phone.rtp.close()
    assert "event='agent_unregistered' agent='801' reason='TCP connection closed'" in ivr.log()
    assert "agent='801'" not in "".join(re.findall(r"event='agent_state'[^\n]*state='ringing'[^\n]*", ivr.log()))


def test_a_phone_registered_over_tcp_gets_crlf_pings_and_an_unregistered_connection_does_not(  # type: ignore[no-untyped-def]
        ivr_factory, tmp_path: Path) -> None:
    ivr = ivr_factory(general="transports = udp, tcp\ntcp_keepalive_seconds = 1\n",
                      extra="[801]\ntype = agent\nseat_group = senior\nhost = dynamic\nsecret = pw801\n")
    phone, idle = StreamPhone(ivr), StreamPhone(ivr)
    try:
        _, status = register(phone, ivr, "801", f"sip:801@127.0.0.1:{phone.port};transport=tcp")  # type: ignore[arg-type]
        assert status.startswith("SIP/2.0 200")
        phone.buffer = b""
        phone.sock.settimeout(4)
        assert phone.sock.recv(16) == b"\r\n\r\n", "RFC 5626 ping on the registration's connection"
        idle.sock.settimeout(2.5)
        with pytest.raises(TimeoutError):
            idle.sock.recv(16)
    finally:
        phone.close()
        idle.close()


def test_a_pjsua2_phone_registered_over_tcp_that_dies_is_logged_out_within_2_s_and_not_rung_over_udp(  # type: ignore[no-untyped-def]
        ivr_factory, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from .conftest import ROOT
    from .test_e2e_routing import wait_line

    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    ivr = ivr_factory(db_url=db_url, general="transports = udp, tcp\n",
                      extra="[801]\ntype = agent\nseat_group = senior\nhost = dynamic\nsecret = pw801\n")
    (tmp_path / "var").mkdir(exist_ok=True)
    phone = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "softphone_agent.py"), "--ivr-port", str(ivr.port), "--agent", "801",
         "--password", "pw801", "--calls", "1", "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PJSUA_OUTBOUND": f"sip:127.0.0.1:{ivr.port};transport=tcp"},
    )
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    caller = None
    try:
        assert wait_line(phone, "registered") == "registered 200"
        registered = re.search(r"event='agent_registered' agent='801' contact='127\.0\.0\.1:(\d+)'", ivr.log())
        assert registered, ivr.log()[-2000:]
        wait_state(tmp_path, "801", "available", 3)
        phone.kill()  # the phone's process dies: its kernel closes the connection
        phone.wait(10)
        assert wait_state(tmp_path, "801", "logged_out", 2) < 2
        udp.bind(("127.0.0.1", int(registered.group(1))))  # the phone's address over UDP: nothing may come
        caller = sipp(tmp_path, "queue_abandon_caller", ivr.port, extra=("-d", "4000"))
        udp.settimeout(6)
        with pytest.raises(TimeoutError):
            udp.recvfrom(65535)
        finished(caller)
    finally:
        for proc in (phone, caller.proc if caller is not None else None):
            if proc is not None and proc.poll() is None:
                proc.kill()
        udp.close()
    assert "event='agent_unregistered' agent='801' reason='TCP connection closed'" in ivr.log()
    assert not re.search(r"event='agent_rung'[^\n]*agent=801", ivr.log())


def test_wss_with_the_general_certificate_registers_and_answers_down_the_connection(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    self_signed_certificate(tmp_path)
    ws_port = free_port(socket.SOCK_STREAM)
    ivr = ivr_factory(general="tls_certificate = cert.pem\ntls_key = key.pem\n",
                      extra=f"[websocket]\nenabled = yes\nport = {ws_port}\ntls = yes\norigins = {DESK}\n"
                            "[801]\ntype = agent\nseat_group = senior\nhost = dynamic\nsecret = pw801\n")
    browser = WsPhone(ivr, ws_port, tls=True)
    try:
        _, status = register(browser, ivr, "801", f"sip:801@{browser.host};transport=wss")  # type: ignore[arg-type]
        assert status.startswith("SIP/2.0 200"), status
    finally:
        browser.close()
    assert re.search(r"event='sip_connection_opened' transport='WSS' peer='127\.0\.0\.1:\d+'", ivr.log())
    deadline = time.monotonic() + 3
    while "reason='WSS connection closed'" not in ivr.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "event='agent_unregistered' agent='801' reason='WSS connection closed'" in ivr.log()


@pytest.mark.usefixtures("namespaces_alone")  # an nftables rule (see conftest.namespaces_alone)
def test_a_half_open_tcp_connection_is_found_by_the_keepalive_ping_and_its_agent_logged_out(  # type: ignore[no-untyped-def]
        ivr_factory, tmp_path: Path) -> None:
    """The phone's machine stops answering (its packets dropped on lo, the socket never closed): the IVR's
    CRLF ping goes unacknowledged, TCP_USER_TIMEOUT closes the connection, and the agent is logged out."""
    if subprocess.run(["nft", "list", "tables"], capture_output=True).returncode != 0:
        pytest.skip("needs nft and root to drop the phone's packets")
    ivr = ivr_factory(general="transports = udp, tcp\ntcp_keepalive_seconds = 1\n",
                      extra="[801]\ntype = agent\nseat_group = senior\nhost = dynamic\nsecret = pw801\n")
    (tmp_path / "var").mkdir(exist_ok=True)
    phone = StreamPhone(ivr)
    table = f"ivr_halfopen_{phone.port}"
    try:
        _, status = register(phone, ivr, "801", f"sip:801@127.0.0.1:{phone.port};transport=tcp")  # type: ignore[arg-type]
        assert status.startswith("SIP/2.0 200")
        wait_state(tmp_path, "801", "available", 3)
        for command in (f"add table inet {table}",
                        f"add chain inet {table} input {{ type filter hook input priority -10 ; }}",
                        f"add rule inet {table} input tcp sport {phone.port} drop"):
            subprocess.run(["nft", *command.split()], check=True, capture_output=True)
        assert wait_state(tmp_path, "801", "logged_out", 10) < 10
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], capture_output=True)
        phone.close()
    assert f"event='sip_connection_closed' transport='TCP' peer='127.0.0.1:{phone.port}' reason='lost: " in ivr.log()
