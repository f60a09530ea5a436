"""An agent's phone played by pyVoIP 1.6.8: registers to the IVR, answers one call, talks, hangs up.

Run as a separate process by tests/test_e2e_phones.py (pyVoIP runs its own threads):

    python tests/pyvoip_agent.py --ivr-port 5060 --agent 811 --password s3cret --sip-port 5099 --talk 3

Prints `registered`, or `register failed <error>` and exits 1; then `answered`,
`answered <codec>`, `sent <n> frames, received <m> packets` (RTP from the IVR), `hung up`.
With `--no-register` the phone skips REGISTER (a fixed-host agent, `host = 127.0.0.1:<sip-port>`): pyVoIP
1.6.8 has no such option, so this swaps its SIP client's register() for a no-op.

With `--call NUMBER` it is a caller instead: dials NUMBER at the IVR, prints `answered <codec>` once the
IVR answers, listens for `--talk` seconds, prints `received <m> packets` and hangs up (`hung up`).
"""

from __future__ import annotations

import argparse
import math
import queue
import sys
import time

from pyVoIP.RTP import RTPClient
from pyVoIP.VoIP import CallState, PhoneStatus, VoIPCall, VoIPPhone

FRAME = 160  # 20 ms at 8 kHz; pyVoIP takes 8-bit unsigned linear samples


def tone(seconds: float, hz: float = 440) -> bytes:
    return bytes(128 + int(60 * math.sin(2 * math.pi * hz * i / 8000)) for i in range(int(seconds * 8000)))


def counted(rtp: RTPClient, received: list[int]) -> None:
    """Count the RTP packets this client parses (pyVoIP keeps no such counter)."""
    parse = rtp.parse_packet

    def parse_and_count(packet: bytes) -> None:
        received[0] += 1
        parse(packet)

    rtp.parse_packet = parse_and_count  # type: ignore[method-assign]


def main() -> int:
    args = argparse.ArgumentParser()
    args.add_argument("--ivr-port", type=int, required=True)
    args.add_argument("--agent", required=True)
    args.add_argument("--password", required=True)
    args.add_argument("--sip-port", type=int, required=True)
    args.add_argument("--rtp-low", type=int, default=42000)
    args.add_argument("--rtp-high", type=int, default=42100)
    args.add_argument("--talk", type=float, default=3.0, help="seconds of audio before the agent hangs up")
    args.add_argument("--timeout", type=float, default=60)
    args.add_argument("--no-register", action="store_true")
    args.add_argument("--call", metavar="NUMBER", help="call NUMBER instead of waiting for a call")
    opts = args.parse_args()

    calls: queue.Queue[VoIPCall] = queue.Queue()

    def ring(call: VoIPCall) -> None:  # runs on a pyVoIP timer thread
        calls.put(call)

    phone = VoIPPhone("127.0.0.1", opts.ivr_port, opts.agent, opts.password, myIP="127.0.0.1",
                      callCallback=ring, sipPort=opts.sip_port, rtpPortLow=opts.rtp_low, rtpPortHigh=opts.rtp_high)
    if opts.no_register:
        phone.sip.register = lambda: True  # type: ignore[method-assign]
    try:
        phone.start()
    except Exception as exc:  # noqa: BLE001 — the test wants pyVoIP's own words
        print(f"register failed {type(exc).__name__}: {exc}", flush=True)
        return 1
    if not opts.no_register and phone.get_status() != PhoneStatus.REGISTERED:
        print(f"register failed status {phone.get_status().name}", flush=True)
        phone.stop()
        return 1
    print("registered" if not opts.no_register else "listening", flush=True)
    if opts.call:
        try:
            return place_call(phone, opts.call, opts.talk, opts.timeout)
        finally:
            phone.stop()
    try:
        call = calls.get(timeout=opts.timeout)
        received = [0]
        for rtp in call.RTPClients:
            counted(rtp, received)
        call.answer()
        print(f"answered {call.RTPClients[0].preference.name}", flush=True)
        audio, frames = tone(opts.talk), 0
        started = time.monotonic()
        for offset in range(0, len(audio), FRAME):
            if call.state != CallState.ANSWERED:
                break
            call.write_audio(audio[offset:offset + FRAME])
            frames += 1
            call.read_audio(FRAME, blocking=False)  # what the caller says, unheard
            time.sleep(max(0.0, started + frames * 0.02 - time.monotonic()))
        print(f"sent {frames} frames, received {received[0]} packets", flush=True)
        if call.state == CallState.ANSWERED:
            call.hangup()
        print("hung up", flush=True)
        time.sleep(0.5)  # let the BYE's 200 arrive before the socket closes
    except queue.Empty:
        print("no call", flush=True)
        return 1
    finally:
        phone.stop()
    return 0


def place_call(phone: VoIPPhone, number: str, listen: float, timeout: float) -> int:
    call = phone.call(number)
    deadline = time.monotonic() + timeout
    while call.state != CallState.ANSWERED:
        if time.monotonic() > deadline or call.state == CallState.ENDED:
            print(f"not answered ({call.state.name})", flush=True)
            return 1
        time.sleep(0.05)
    received = [0]
    for rtp in call.RTPClients:
        counted(rtp, received)
    print(f"answered {call.RTPClients[0].preference.name}", flush=True)
    end = time.monotonic() + listen
    while time.monotonic() < end and call.state == CallState.ANSWERED:
        call.read_audio(FRAME, blocking=False)  # the greeting, unheard
        time.sleep(0.02)
    print(f"received {received[0]} packets", flush=True)
    if call.state == CallState.ANSWERED:
        call.hangup()
    print("hung up", flush=True)
    time.sleep(0.5)  # let the BYE's 200 arrive before the socket closes
    return 0


if __name__ == "__main__":
    sys.exit(main())
