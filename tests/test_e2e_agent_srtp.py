"""SDES-SRTP on the agent leg ([801] srtp): the IVR offers RTP/SAVP with its key, the agent's phone answers with
its own; what the IVR sends the agent is SRTP on the wire, decryptable with the key the INVITE offered. An agent
whose setting is `required` and whose phone answers plain RTP/AVP is hung up on, and the caller served by another.

The agent's phone is SIPp (signalling) with its SDP pointing at a UDP socket of the test (the media).
"""

from __future__ import annotations

import base64
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest
from pylibsrtp import Error as SrtpError
from pylibsrtp import Policy, Session

from .conftest import ROOT, IvrProcess, free_port, sipp, sipp_media_port
from .test_e2e_routing import agent_uas, customers
from .test_e2e_sip import crm_events, finished, wait_for_row

pytestmark = pytest.mark.e2e

AGENT_KEY = bytes(range(30))  # the agent phone's AES_CM_128 master key||salt
SILENCE_PCMU = b"\xff" * 160


def agent_phone(tmp: Path, scenario: str, port: int, rtp_port: int, proto: str, sdp_line: str,
                talk_ms: int = 3000) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["sipp", "-sf", str(ROOT / "tests" / "sipp" / f"{scenario}.xml"), "-i", "127.0.0.1", "-p", str(port),
         "-mi", "127.0.0.1", "-mp", str(sipp_media_port()), "-m", "1", "-d", str(talk_ms), "-nostdin",
         "-timeout", "90s", "-key", "agent_rtp_port", str(rtp_port), "-key", "agent_proto", proto,
         "-key", "agent_sdp_line", sdp_line, "-trace_msg", "-message_file", str(tmp / f"agent-{port}.msg"),
         "-trace_err", "-error_file", str(tmp / f"agent-{port}.err")],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
    )


def offered_key(tmp: Path, port: int) -> bytes:
    """The IVR's key, as the agent's phone read it from the INVITE's a=crypto line."""
    text = (tmp / f"agent-{port}.msg").read_text(errors="replace")
    found = re.search(r"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:([A-Za-z0-9+/=]+)", text)
    assert found, "the INVITE to the agent offers SDES keys"
    assert "RTP/SAVP" in text.split("a=crypto", 1)[0].rsplit("m=audio", 1)[1]
    return base64.b64decode(found.group(1))


def ivr_with_agents(ivr_factory, tmp_path: Path, port_801: int, port_811: int | None = None) -> IvrProcess:  # type: ignore[no-untyped-def]
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    extra = ("[queues]\nwrap_up_seconds = 0\noverflow = senior>middle\noverflow_after_seconds = 2\n"
             f"[801]\ntype = agent\nseat_group = senior\nhost = 127.0.0.1:{port_801}\nsecret = pw801\nsrtp = required\n")
    if port_811 is not None:
        extra += f"[811]\ntype = agent\nseat_group = middle\nhost = 127.0.0.1:{port_811}\nsecret = pw811\n"
    return ivr_factory(db_url=db_url, extra=extra)  # type: ignore[no-any-return]


def test_a_required_srtp_agent_answering_savp_gets_srtp_on_the_wire(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port()
    media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media.bind(("127.0.0.1", 0))
    ivr = ivr_with_agents(ivr_factory, tmp_path, port)
    line = f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(AGENT_KEY).decode()}"
    agent = agent_phone(tmp_path, "agent_srtp_uas", port, media.getsockname()[1], "RTP/SAVP", line, talk_ms=4000)
    caller = sipp(tmp_path, "survey_caller", ivr.port, extra=("-d", "14000"))
    packets: list[bytes] = []
    try:
        media.settimeout(20)
        packets.append(media.recv(2048))  # from the agent's answer on
        end = time.monotonic() + 2
        while time.monotonic() < end:
            media.settimeout(max(0.01, end - time.monotonic()))
            try:
                packets.append(media.recv(2048))
            except TimeoutError:
                break
        finished(caller)
        assert agent.wait(30) == 0
    finally:
        for proc in (agent, caller.proc):
            if proc.poll() is None:
                proc.kill()
        media.close()
    assert len(packets) > 20
    assert not any(SILENCE_PCMU in p for p in packets), "no clear G.711 to the agent"
    assert all(len(p) == 12 + 160 + 10 for p in packets), "each packet carries SRTP's 80-bit tag"
    inbound = Session(policy=Policy(key=offered_key(tmp_path, port), ssrc_type=Policy.SSRC_ANY_INBOUND,
                                    srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
    clear = []
    for packet in packets:
        try:
            clear.append(inbound.unprotect(packet))
        except SrtpError:
            pass
    assert len(clear) == len(packets), "every packet authenticates with the key the INVITE offered"
    assert any(c[12:] == SILENCE_PCMU for c in clear), "and decrypts to the leg's G.711"
    row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    assert (row["outcome"], row["agent_number"]) == ("completed", "801"), dict(row)


def test_a_required_srtp_agent_answering_plain_fails_and_the_caller_is_served_by_another(  # type: ignore[no-untyped-def]
        ivr_factory, tmp_path: Path) -> None:
    port, other = free_port(), free_port()
    media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media.bind(("127.0.0.1", 0))
    ivr = ivr_with_agents(ivr_factory, tmp_path, port, other)
    agent = agent_phone(tmp_path, "agent_refused_uas", port, media.getsockname()[1], "RTP/AVP", "a=sendrecv")
    served = agent_uas(tmp_path, ivr, other)
    caller = sipp(tmp_path, "survey_caller", ivr.port, extra=("-d", "16000"))
    try:
        assert agent.wait(30) == 0, "the IVR hung up on the plain answer (BYE after its ACK)"
        media.settimeout(0.5)
        with pytest.raises(TimeoutError):  # and sent it nothing in clear meanwhile
            media.recv(2048)
        finished(caller)
        finished(served)
    finally:
        for proc in (agent, caller.proc, served.proc):
            if proc.poll() is None:
                proc.kill()
        media.close()
    row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    assert (row["outcome"], row["agent_number"]) == ("completed", "811"), dict(row)
    assert "agent_no_answer" in [k for k, _ in crm_events(ivr, row["sip_call_id"])]
    log = ivr.log()
    assert re.search(r"event='agent_leg_refused'[^\n]*agent='801' reason='the agent answered plain media \(RTP/AVP\)", log)
    assert len(re.findall(r"event='agent_rung'[^\n]*agent=801", log)) == 1, "the paused agent is not rung again"
    assert re.search(r"event='agent_pause' agent='801' state='paused'", log)
