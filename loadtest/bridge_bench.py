#!/usr/bin/env python3
"""What a bridged call costs in the IVR's process: the bridge on the media clock against a packet relay.

    .venv/bin/python loadtest/bridge_bench.py                       # 200 calls, 3 rounds of 10 s per mode
    .venv/bin/python loadtest/bridge_bench.py --calls 300 --seconds 20 --rounds 5 --report out.json

One process, real aiortp sessions over UDP on 127.0.0.1. For each call, two
"phones" (plain sockets) send 20 ms G.711 packets to the IVR's two RTP
sessions (caller and agent) and drain what comes back; the IVR side is run
in each mode for `--seconds`, with the process's CPU time measured; the modes
take turns for `--rounds` rounds and the medians are reported:

- `idle`: the phones send, the IVR's sessions take the packets but nobody
  listens (aiortp does not decode): the floor every mode shares;
- `relay`: each decoded packet is re-encoded and sent to the other side as
  it arrives (how bridges worked before the media clock carried them);
- `bridge`: `ivr.bridge.MediaBridge` on the shared `MediaClock`, no tap;
- `bridge_tap`: the same with a µ-law tap taking both sides' frames each tick
  (what a recorder's tap does on the clock: a bounded queue put).

Printed and written as JSON: CPU seconds per wall second per mode (median), the cost
per call above the floor, and the ratio bridge/relay of those costs. Only
127.0.0.1 is used; the run is bounded by --calls and --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import statistics
import struct
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog  # noqa: E402
import uvloop  # noqa: E402

from ivr.bridge import MediaBridge  # noqa: E402
from ivr.media import MediaClock, RtpPortPool, RtpSession, open_rtp  # noqa: E402

MODES = ("idle", "relay", "bridge", "bridge_tap")
PCMU_SPEECHLIKE = bytes((i * 37) & 0x7F | 0x80 for i in range(160))  # non-silent µ-law payload


class Party:
    """One IVR-side session of a bridge (a caller's or an agent's leg, as the bridge sees it)."""

    def __init__(self, rtp: RtpSession) -> None:
        self.rtp: RtpSession | None = rtp
        self.payload_type = 0
        self._ts = 0

    def next_timestamp(self) -> int:
        self._ts = (self._ts + 160) & 0xFFFFFFFF
        return self._ts


class NullTap:
    """A recorder's share of the clock: both µ-law frames onto a bounded queue, nothing else."""

    def __init__(self) -> None:
        self.queue: deque[tuple[bytes, bytes]] = deque(maxlen=256)

    def frame(self, caller: bytes, agent: bytes) -> None:
        self.queue.append((caller, agent))

    def close(self) -> None:
        pass


async def run(opts: argparse.Namespace) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    pool = RtpPortPool(opts.port_min, opts.port_min + 8 * opts.calls + 100)
    phones: list[socket.socket] = []
    sessions: list[tuple[Party, Party]] = []
    targets: list[tuple[socket.socket, tuple[str, int]]] = []  # each phone and the IVR session it talks to
    for _ in range(opts.calls):
        pair = []
        for _side in range(2):
            phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            phone.bind(("127.0.0.1", 0))
            phone.setblocking(False)
            rtp, port = await open_rtp(pool, "127.0.0.1", phone.getsockname(), 0)
            phones.append(phone)
            targets.append((phone, ("127.0.0.1", port)))
            pair.append(Party(rtp))
        sessions.append((pair[0], pair[1]))

    seq = [0]

    def send_all() -> None:
        """Every phone sends its 20 ms packet; and drains what the IVR sent it."""
        seq[0] += 1
        header = struct.pack("!BBHII", 0x80, 0, seq[0] & 0xFFFF, seq[0] * 160 & 0xFFFFFFFF, 0x1234)
        for phone, addr in targets:
            phone.sendto(header + PCMU_SPEECHLIKE, addr)
            try:
                while True:
                    phone.recv(2048)
            except BlockingIOError:
                pass

    async def phones_talk(seconds: float) -> None:
        deadline = start = loop.time()
        while loop.time() - start < seconds:
            send_all()
            deadline += 0.020
            await asyncio.sleep(max(0.0, deadline - loop.time()))

    clock = MediaClock()
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    # the modes in turn, round after round: a machine whose speed drifts shifts every mode alike
    for mode in [m for _ in range(opts.rounds) for m in MODES]:
        bridges: list[MediaBridge] = []
        for caller, agent in sessions:
            assert caller.rtp is not None and agent.rtp is not None
            caller.rtp.on_audio = agent.rtp.on_audio = None
            if mode == "relay":
                caller.rtp.on_audio = lambda pcm, _ts, to=agent: to.rtp.send_audio_pcm(pcm, to.next_timestamp())
                agent.rtp.on_audio = lambda pcm, _ts, to=caller: to.rtp.send_audio_pcm(pcm, to.next_timestamp())
            elif mode.startswith("bridge"):
                bridge = MediaBridge(caller, agent)
                bridge.connect()
                if mode == "bridge_tap":
                    bridge.add_ulaw_tap(NullTap())
                clock.serve(bridge)
                bridges.append(bridge)
        await phones_talk(1.0)  # settle
        cpu, wall = time.process_time(), time.perf_counter()
        await phones_talk(opts.seconds)
        samples[mode].append((time.process_time() - cpu) / (time.perf_counter() - wall))
        for bridge in bridges:
            clock.stop(bridge)
            bridge.close()
    await clock.close()
    for caller, agent in sessions:
        for party in (caller, agent):
            if party.rtp is not None:
                await party.rtp.close()
    for phone in phones:
        phone.close()

    results = {mode: statistics.median(values) for mode, values in samples.items()}
    floor = results["idle"]
    per_call_us = {mode: round((cpu - floor) / opts.calls * 1e6, 1) for mode, cpu in results.items() if mode != "idle"}
    return {
        "calls": opts.calls, "seconds": opts.seconds, "rounds": opts.rounds, "rtp_streams": 2 * opts.calls,
        "cpu_per_wall_second_median": {mode: round(cpu, 4) for mode, cpu in results.items()},
        "cpu_per_wall_second_runs": {mode: [round(v, 4) for v in values] for mode, values in samples.items()},
        "cpu_us_per_call_second_above_idle": per_call_us,
        "ratio_bridge_to_relay": round(per_call_us["bridge"] / per_call_us["relay"], 3),
        "ratio_bridge_tap_to_relay": round(per_call_us["bridge_tap"] / per_call_us["relay"], 3),
        "clock": clock.stats(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=200, help="bridged calls (two RTP sessions each)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per mode")
    p.add_argument("--rounds", type=int, default=3, help="each mode this many times, in turn; medians reported")
    p.add_argument("--port-min", type=int, default=40000, help="first RTP port of the IVR side")
    p.add_argument("--report", type=Path, help="JSON report path")
    opts = p.parse_args()
    # the bridges' and ports' info lines (one per call) would bury the figures
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    report = uvloop.run(run(opts))
    print(json.dumps(report, indent=2))
    if opts.report:
        opts.report.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
