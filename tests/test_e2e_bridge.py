"""End to end: the bridge keeps RTP flowing to the agent's phone behind a silent caller (SIPp over UDP on loopback)."""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from .conftest import free_port, sipp
from .test_e2e_routing import agents_conf, customers
from .test_e2e_sip import crm_events, finished, wait_for_row

pytestmark = pytest.mark.e2e


class RtpSink:
    """A UDP socket standing in for the agent phone's RTP port: arrival time, sequence and payload of each packet."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", free_port(even=True)))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.packets: list[tuple[float, int, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(2048)
            except TimeoutError:
                continue
            if len(data) >= 12 and data[1] & 0x7F in (0, 8):  # audio, not RTCP or telephone-event
                self.packets.append((time.monotonic(), struct.unpack_from("!H", data, 2)[0], data[12:]))

    def stop(self) -> list[tuple[float, int, bytes]]:
        self._stop.set()
        self._thread.join()
        self.sock.close()
        return self.packets


def test_agent_phone_behind_a_silent_caller_gets_a_frame_every_20_ms(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A phone that ends calls without RTP must never see a dead line: during the announcement and the talk."""
    agent_port, sink = free_port(), RtpSink()
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    ivr = ivr_factory(db_url=db_url, extra="[queues]\nwrap_up_seconds = 0\n" + agents_conf(
        **{"801": ("senior", f"127.0.0.1:{agent_port}")}))
    # the agent talks 4 s; the caller (survey_caller: digits, then silent, no RTP at all) waits for the survey
    agent = sipp(tmp_path, "agent_sink_uas", ivr.port,
                 extra=("-d", "4000", "-p", str(agent_port), "-key", "sink_port", str(sink.port)), timeout_s=120)
    caller = sipp(tmp_path, "survey_caller", ivr.port, extra=("-d", "11000"))
    finished(caller)
    finished(agent)
    packets = sink.stop()
    row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    assert (row["outcome"], row["agent_number"]) == ("completed", "801")

    assert packets, "the agent's phone received no RTP at all"
    arrivals = [at for at, _, _ in packets]
    span = arrivals[-1] - arrivals[0]
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    # the agent's 4 s from answer to BYE: the caller's announcement of the agent, then the talk
    assert span > 3.8, f"RTP to the agent lasted {span:.2f} s"
    assert max(gaps) <= 0.060, f"a {max(gaps) * 1000:.0f} ms gap in the agent's RTP"
    assert len(packets) >= 0.95 * span / 0.020, f"{len(packets)} packets in {span:.2f} s"
    sequence = [seq for _, seq, _ in packets]
    assert all((b - a) & 0xFFFF == 1 for a, b in zip(sequence, sequence[1:], strict=False)), "one stream, no sequence jumps"
    # the silent caller is heard as silence (µ-law 0xFF), not as noise or stale audio
    assert all(set(payload) <= {0xFF, 0x7F} for _, _, payload in packets)


def test_an_agent_who_puts_the_caller_on_hold_and_back_keeps_the_call(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A phone's hold (re-INVITE a=sendonly) is answered recvonly, not 481 (which ends the call), and counted."""
    agent_port = free_port()
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    ivr = ivr_factory(db_url=db_url, extra="[queues]\nwrap_up_seconds = 0\n" + agents_conf(
        **{"801": ("senior", f"127.0.0.1:{agent_port}")}))
    agent = sipp(tmp_path, "agent_hold_uas", ivr.port, extra=("-d", "2000", "-p", str(agent_port)), timeout_s=120)
    caller = sipp(tmp_path, "survey_caller", ivr.port, extra=("-d", "11000"))
    finished(caller)
    finished(agent)
    logged = agent.logged()
    assert "sendonly answered recvonly" in logged and "sendrecv answered sendrecv" in logged, logged[-2000:]
    row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    assert (row["outcome"], row["hangup_by"], row["survey_score"]) == ("completed", "agent", 1)
    steps = [(kind, detail) for kind, detail in crm_events(ivr, row["sip_call_id"]) if kind in ("held", "resumed")]
    assert steps == [("held", "agent=801"), ("resumed", "agent=801")]


def test_an_agent_phone_that_goes_quiet_in_talk_is_hung_up_and_the_caller_rates_the_call(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """No RTP and no BYE from the agent (powered off, a vanished browser): after [media] agent_media_timeout the
    IVR hangs up on the phone and the caller goes on to the survey instead of waiting in dead air."""
    agent_port, sink = free_port(), RtpSink()
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    ivr = ivr_factory(db_url=db_url, extra="[media]\nagent_media_timeout = 3\n[queues]\nwrap_up_seconds = 0\n"
                      + agents_conf(**{"801": ("senior", f"127.0.0.1:{agent_port}")}))
    agent = sipp(tmp_path, "quiet_agent_uas", ivr.port,
                 extra=("-p", str(agent_port), "-key", "sink_port", str(sink.port)), timeout_s=120)
    caller = sipp(tmp_path, "survey_caller", ivr.port, extra=("-d", "11000"))
    finished(caller)
    finished(agent)  # it got the IVR's BYE (it never sends one)
    sink.stop()
    row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    assert (row["outcome"], row["agent_number"], row["hangup_by"]) == ("completed", "801", "ivr")
    kinds = [kind for kind, _ in crm_events(ivr, row["sip_call_id"])]
    assert kinds.index("bridged") < kinds.index("agent_gone") < kinds.index("survey_prompt"), kinds
    assert "agent_bye" not in kinds
    assert re.search(r"event='agent_media_timeout' call_id='[^']+' agent='801' silent_s=3 ", ivr.log())
