"""End to end: an agent in a browser (aiortc, over SIP in a WebSocket) takes a routed caller, audio both ways.

A second, independent WebRTC implementation plays the agent's browser: it
registers over the IVR's WebSocket, is rung down that connection with the
IVR's DTLS-SRTP offer (UDP/TLS/RTP/SAVPF, ICE-lite, rtcp-mux), answers with
aiortc's own ICE and DTLS, and talks with a SIPp caller (a senior customer)
through the bridge: each side's tone is measured at the other end.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aioice.ice
import numpy as np
import pytest

from .audio import RtpPeer, strength
from .browser_agent import ToneTrack, WsPhone, browser_answer, header, register, reply
from .conftest import sipp
from .test_e2e_monitoring import wait_for_log
from .test_e2e_routing import customers
from .test_e2e_sip import finished, wait_for_row
from .test_e2e_websocket import ws_ivr

pytestmark = pytest.mark.e2e

CALLER_HZ, BROWSER_HZ = 500.0, 1500.0


@pytest.fixture
def browser_loop(monkeypatch: pytest.MonkeyPatch) -> Iterator[asyncio.AbstractEventLoop]:
    """aiortc's event loop, in a thread of its own (the SIP side of the test is synchronous)."""
    # aiortc gathers host candidates on 127.0.0.1 only (aioice skips loopback by default)
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_an_aiortc_browser_agent_over_websocket_talks_with_a_caller_over_dtls_srtp(  # type: ignore[no-untyped-def]
        ivr_factory, tmp_path: Path, browser_loop: asyncio.AbstractEventLoop) -> None:
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    ivr, ws_port = ws_ivr(ivr_factory, tmp_path, db_url=db_url,
                          extra="[queues]\nwrap_up_seconds = 0\n[survey]\ntimeout_seconds = 2\n"
                          "[801]\ntype = agent\nseat_group = senior\nhost = dynamic\nsecret = pw801\n")
    browser = WsPhone(ivr, ws_port)
    contact = f"sip:801@{browser.host};transport=ws"
    caller_peer = RtpPeer(CALLER_HZ)
    caller = None
    pc = None
    try:
        _, status = register(browser, ivr, "801", contact)  # type: ignore[arg-type]
        assert status.startswith("SIP/2.0 200"), status
        caller = sipp(tmp_path, "monitored_caller", ivr.port, extra=("-key", "sink_port", str(caller_peer.port)),
                      timeout_s=120)
        got = browser.until(lambda t: t.startswith("INVITE "), seconds=30)
        invite = next(t for _, t in got if t.startswith("INVITE "))
        offer = invite.split("\r\n\r\n", 1)[1]
        # what a browser requires (RFC 8827, 8445 §2.5, 5761): DTLS-SRTP, ICE-lite, rtcp-mux; G.711 only
        assert "m=audio" in offer and "UDP/TLS/RTP/SAVPF" in offer and "a=ice-lite" in offer, offer
        assert "a=rtcp-mux" in offer and re.search(r"a=fingerprint:sha-256 ([0-9A-F]{2}:){31}[0-9A-F]{2}", offer)
        assert "a=crypto" not in offer, "never SDES keys towards a page"

        pc, answer, frames = asyncio.run_coroutine_threadsafe(
            browser_answer(offer, ToneTrack(BROWSER_HZ)), browser_loop).result(15)
        browser.ws.send(reply(invite, "200 OK", to_tag="browser", contact=contact, body=answer))
        browser.until(lambda t: t.startswith("ACK "), seconds=5)

        wait_for_log(ivr, r"event='bridged'")
        caller_peer.talking.set()
        talk_from = time.monotonic() + 1  # the peer learns the IVR's address, the bridge fills
        asyncio.run_coroutine_threadsafe(asyncio.sleep(4), browser_loop).result(10)
        talk_to = time.monotonic()

        # the browser hangs up; the caller stays to rate the call
        bye = (f"BYE sip:127.0.0.1:{ws_port};transport=ws SIP/2.0\r\n"
               f"Via: SIP/2.0/WS {browser.host};branch=z9hG4bKbye{browser.port}\r\nMax-Forwards: 70\r\n"
               f"From: {header(invite, 'To')};tag=browser\r\nTo: {header(invite, 'From')}\r\n"
               f"Call-ID: {header(invite, 'Call-ID')}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n")
        browser.ws.send(bye)
        browser.until(lambda t: t.startswith("SIP/2.0 200") and "BYE" in header(t, "CSeq"), seconds=5)
        finished(caller)
    finally:
        if pc is not None:
            asyncio.run_coroutine_threadsafe(pc.close(), browser_loop).result(10)
        caller_peer.stop()
        if caller is not None and caller.proc.poll() is None:
            caller.proc.kill()
        browser.close()

    # the caller heard the browser's tone, through the bridge, from DTLS-SRTP to plain RTP
    heard_by_caller = caller_peer.heard(talk_from, talk_to)
    assert len(heard_by_caller) > 100 * 160, f"the caller got {len(heard_by_caller)} samples in the talk"
    assert strength(heard_by_caller, BROWSER_HZ) > 0.05, strength(heard_by_caller, BROWSER_HZ)
    # ... and the browser heard the caller's, decoded by aiortc from the SRTP the IVR sent
    received = []
    while not frames.empty():
        received.append(frames.get_nowait().to_ndarray().reshape(-1).astype(np.int16))
    at_browser = np.concatenate(received) if received else np.zeros(1, np.int16)
    assert len(at_browser) > 100 * 160, f"the browser got {len(at_browser)} samples"
    assert strength(at_browser[-100 * 160:], CALLER_HZ) > 0.05, strength(at_browser[-100 * 160:], CALLER_HZ)

    row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    assert (row["outcome"], row["agent_number"], row["hangup_by"]) == ("completed", "801", "agent"), dict(row)
    log = ivr.log()
    assert "event='webrtc_connected'" in log, log[-3000:]
