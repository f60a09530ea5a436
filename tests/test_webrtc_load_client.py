"""The lean WebRTC load client (loadtest/webrtc_load_client.py): against the IVR's DTLS peer, then the real IVR.

First, in one event loop, a lean agent's ICE checks and DTLS client handshake against the
IVR's own ICE-lite/DTLS peer (ivr.webrtc.WebRtcPeer) on loopback UDP: the keys both sides
export protect and unprotect each other's packets, and a certificate that does not match the
offer's fingerprint is refused. Then end to end: the bench's webrtc phase with its default agents, the lean client: three SIPp callers reach
three browser agents that live in one process, talk through DTLS-SRTP (the IVR offers PCMA,
what SIPp's callers speak) and are hung up by the IVR. Then one lean agent alone, with a
caller whose ears are measured: the caller hears the agent's 1500 Hz tone through the bridge
(PCMU this time), the agent hears the caller's 500 Hz tone as sound, and when the agent's time
runs out in the call it sends the BYE itself, which the CRM records as the agent's hang-up.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ivr.srtp import SrtpContext
from ivr.webrtc import PeerState, WebRtcAnswer, WebRtcPeer, classify, local_certificate

from .audio import RtpPeer, strength
from .conftest import ROOT, sipp
from .test_e2e_monitoring import wait_for_log
from .test_e2e_routing import customers
from .test_e2e_sip import finished, wait_for_row
from .test_e2e_websocket import ws_ivr

BENCH = ROOT / "loadtest" / "webrtc_bridged_bench.py"
CLIENT = ROOT / "loadtest" / "webrtc_load_client.py"
CALLER_HZ, AGENT_HZ = 500.0, 1500.0
_spec = importlib.util.spec_from_file_location("webrtc_load_client", CLIENT)
assert _spec is not None and _spec.loader is not None
lean = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lean)


class _IvrSide(asyncio.DatagramProtocol):
    """The IVR's media socket in miniature: STUN and DTLS datagrams to its WebRtcPeer (the rest: ivr/media.py)."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.peer = WebRtcPeer(local_certificate(), lambda data, addr: self.transport.sendto(data, addr)
                               if self.transport is not None else None)
        self.srtp: SrtpContext | None = None
        self.peer.on_connected = lambda srtp, addr: setattr(self, "srtp", srtp)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # a datagram endpoint's

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        kind = classify(data)
        if kind == "stun":
            self.peer.stun(data, addr)
        elif kind == "dtls":
            self.peer.dtls(data, addr)


async def _lean_against_the_ivr_peer(*, fingerprint: str | None = None) -> tuple[Any, _IvrSide]:
    loop = asyncio.get_running_loop()
    ivr = _IvrSide()
    await loop.create_datagram_endpoint(lambda: ivr, local_addr=("127.0.0.1", 0))
    assert ivr.transport is not None
    agent = lean.Agent(lean.Process(), "801", {})
    agent.transport, _ = await loop.create_datagram_endpoint(lambda: agent, local_addr=("127.0.0.1", 0))
    agent.remote = ivr.transport.get_extra_info("sockname")
    agent.remote_ufrag, agent.remote_pwd = ivr.peer.ufrag, ivr.peer.pwd
    agent.remote_fingerprint = fingerprint or local_certificate().fingerprint.split(" ", 1)[1]
    ivr.peer.accept(WebRtcAnswer("sha-256", agent.shared.certificate.fingerprint.split(" ", 1)[1], agent.ufrag,
                                 agent.pwd, "active", (0,)))
    await agent.connect()
    return agent, ivr


def test_a_lean_agent_checks_and_handshakes_with_the_ivr_peer_and_their_srtp_keys_match() -> None:
    async def run() -> None:
        agent, ivr = await _lean_against_the_ivr_peer()
        assert ivr.peer.state is PeerState.CONNECTED and ivr.srtp is not None, ivr.peer.failure
        assert "error" not in agent.result and agent.result["connect_ms"] > 0, agent.result
        # the ICE-lite peer took our check (our USERNAME, our MESSAGE-INTEGRITY with its pwd) and our nomination
        assert ivr.peer.selected == agent.transport.get_extra_info("sockname")
        rtp = bytes([0x80, 0, 0, 1]) + bytes(8) + b"\xff" * 160
        assert ivr.srtp.unprotect(agent.outbound.protect(rtp)) == rtp
        assert agent.inbound.unprotect(ivr.srtp.protect(rtp)) == rtp
        agent.stop_media()
        assert ivr.transport is not None
        ivr.transport.close()

    asyncio.run(run())


def test_a_lean_agent_refuses_an_ivr_certificate_that_does_not_match_the_offers_fingerprint() -> None:
    async def run() -> None:
        agent, ivr = await _lean_against_the_ivr_peer(fingerprint=":".join(["AB"] * 32))
        assert "does not match the a=fingerprint" in agent.result.get("error", ""), agent.result
        assert agent.outbound is None and "connect_ms" not in agent.result
        assert ivr.transport is not None
        ivr.transport.close()

    asyncio.run(run())


@pytest.mark.e2e
def test_the_webrtc_bench_with_lean_agents_bridges_every_call_with_audio_both_ways_and_handshake_times(
        tmp_path: Path) -> None:
    report = tmp_path / "webrtc-lean.json"
    done = subprocess.run([sys.executable, str(BENCH), "--calls", "3", "--talk-seconds", "8", "--rate", "3",
                           "--phases", "webrtc", "--rtp-base", "50000", "--report", str(report)],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["config"]["agent_kind"] == "lean"

    webrtc = data["webrtc"]
    assert webrtc["calls_bridged"] == 3 and webrtc["completed_calls_in_crm"] == 3
    assert webrtc["failed_calls"] == {"callers": 0, "agents": 0} and webrtc["ivr_log_tracebacks"] == 0
    # every leg's DTLS handshake, timed by the IVR and by the client (its 200 OK to its SRTP keys)
    assert webrtc["legs_connected"] == 3 and webrtc["legs_failed"] == 0
    assert 0 < webrtc["handshake_ms_p50"] <= webrtc["handshake_ms_p99"] <= webrtc["handshake_ms_max"]
    agents = webrtc["agents"]
    assert agents["client"] == "lean" and agents["processes"] == 1, agents
    assert agents["hung_up_after_a_call"] == 3 and agents["errors"] == [], agents
    assert 0 < agents["client_connect_ms_p50"] <= agents["client_connect_ms_p99"], agents
    # audio both ways: each agent sent its tone and heard the caller's speech through SRTP ... (8 s of talk
    # is 400 frames; a CI run on a busy machine counted exactly 300, so 5 s of it is the bar)
    assert agents["frames_sent_min"] >= 250 and agents["frames_heard_min"] >= 250, agents
    assert agents["loud_share"] > 0.1, agents
    # ... and the listening caller got the agent's frames through the bridge, at the IVR's pace
    assert webrtc["rtp_sink"]["streams"] == 1 and webrtc["rtp_sink"]["packets"] > 200, webrtc["rtp_sink"]
    assert "agents_cpu_percent_of_one_core" in webrtc and "agents_cpu_us_per_call_second" in webrtc


@pytest.mark.e2e
def test_a_lean_agent_is_heard_by_its_caller_and_hangs_up_itself_when_its_time_runs_out(  # type: ignore[no-untyped-def]
        ivr_factory, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    ivr, ws_port = ws_ivr(ivr_factory, tmp_path, db_url=db_url,
                          extra="[queues]\nwrap_up_seconds = 0\n[survey]\ntimeout_seconds = 2\n"
                          "[801]\ntype = agent\nseat_group = senior\nhost = dynamic\nsecret = pw801\n")
    result = tmp_path / "agents.json"
    spec = {"agents": ["801"], "sip_port": ivr.port, "ws_port": ws_port, "seconds": 20, "result": str(result)}
    client = subprocess.Popen([sys.executable, str(CLIENT), "--spec", json.dumps(spec)], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    caller_peer = RtpPeer(CALLER_HZ)
    caller = None
    try:
        assert client.stdout is not None
        assert client.stdout.readline().strip() == "registered 1", client.stderr.read() if client.stderr else ""
        caller = sipp(tmp_path, "monitored_caller", ivr.port, extra=("-key", "sink_port", str(caller_peer.port)),
                      timeout_s=120)
        wait_for_log(ivr, r"event='bridged'")
        caller_peer.talking.set()
        talk_from = time.monotonic() + 1  # the peer learns the IVR's address, the bridge fills
        assert client.wait(60) == 0, client.stderr.read() if client.stderr else ""
        talk_to = time.monotonic() - 0.5
        finished(caller)
    finally:
        caller_peer.stop()
        if caller is not None and caller.proc.poll() is None:
            caller.proc.kill()
        if client.poll() is None:
            client.kill()

    agent = json.loads(result.read_text())[0]
    assert agent["registered"] and agent["acked"] and "error" not in agent, agent
    assert (agent["hung_up"], agent["by"]) == (True, "agent"), agent
    assert agent["connect_ms"] > 0 and agent["frames_sent"] > 100, agent
    # the agent heard the caller's tone as sound, through the IVR's SRTP
    assert agent["frames_heard"] > 100 and agent["loud_frames"] > 50, agent
    # the caller heard the agent's tone, from the lean client's SRTP through the bridge to plain RTP
    heard = caller_peer.heard(talk_from, talk_to)
    assert len(heard) > 100 * 160, f"the caller got {len(heard)} samples in the talk"
    assert strength(heard, AGENT_HZ) > 0.05, strength(heard, AGENT_HZ)
    row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    assert (row["outcome"], row["agent_number"], row["hangup_by"]) == ("completed", "801", "agent"), dict(row)
