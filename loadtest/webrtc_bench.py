#!/usr/bin/env python3
"""What a browser agent leg costs: DTLS handshake time, and CPU per packet against a plain RTP leg.

    .venv/bin/python loadtest/webrtc_bench.py                          # 20 legs, 10 s per mode
    .venv/bin/python loadtest/webrtc_bench.py --legs 50 --seconds 20 --report out.json

One process, real sockets on 127.0.0.1 only. Three phases:

1. `plain`: `--legs` plain RTP legs (`open_rtp`), each served by the shared
   `MediaClock` (a PCMU frame every 20 ms, as an agent leg's keep-alive) and
   fed a PCMU packet every 20 ms by its "phone" (a plain socket);
2. `handshakes`: while the plain legs run, `--legs` browser legs
   (`open_webrtc`) are set up one every `--interval` seconds. Each far end is a minimal
   browser built from `ivr.webrtc.WebRtcPeer` itself (a STUN check with
   USE-CANDIDATE, then the DTLS client): the handshake time is the session's
   `handshake_seconds` (answer taken to SRTP keys), both ends' CPU included;
   `ivr_step_ms_max` is the most CPU the IVR's side spent on the event loop for
   one DTLS datagram; the clock's lateness is compared with the plain
   phase's (the handshakes must not disturb it; the far ends' own DTLS work
   runs on the same loop here, which a real browser's does not);
3. `webrtc`: the plain legs stop; the browser legs run as the plain ones did,
   the phones sending SRTP packets protected before the measurement starts (so
   the phones' own encryption is not counted; they only send and drain).

CPU is the process's CPU time per wall second in phases 1 and 3; per packet
it is divided by the packets the IVR side handled (50 sent and 50 received per
leg per second). Printed and written as JSON. The run is bounded by --legs and
--seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import socket
import struct
import sys
import time
from pathlib import Path
from statistics import quantiles

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog  # noqa: E402
import uvloop  # noqa: E402
from aioice import stun  # noqa: E402

from ivr.media import (  # noqa: E402
    MediaClock,
    RtpPortPool,
    RtpSession,
    WebRtcSession,
    open_rtp,
    open_webrtc,
)
from ivr.srtp import SrtpContext  # noqa: E402
from ivr.webrtc import DtlsCertificate, WebRtcAnswer, WebRtcPeer, classify  # noqa: E402

PCMU_SPEECHLIKE = bytes((i * 37) & 0x7F | 0x80 for i in range(160))  # non-silent µ-law payload


class ClockLeg:
    """What the media clock serves for an agent leg: one PCMU frame per tick."""

    def __init__(self, rtp: RtpSession) -> None:
        self.rtp = rtp
        self.ts = 0
        self.heard = 0
        rtp.on_audio = self.on_audio

    def on_audio(self, _pcm: bytes, _ts: int) -> None:
        self.heard += 1

    def send_next_frame(self, tick: int) -> bool:
        self.ts = (self.ts + 160) & 0xFFFFFFFF
        self.rtp.send_audio(PCMU_SPEECHLIKE, self.ts)
        return False

    def prompt_done(self) -> None:
        pass


class Phone:
    """The far end of one leg: a socket, and the packets it will send, made in advance."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.addr: tuple[str, int] = self.sock.getsockname()
        self.target: tuple[str, int] = ("127.0.0.1", 0)
        self.packets: list[bytes] = []
        self.next = 0
        self.received = 0

    def prepare(self, count: int, srtp: SrtpContext | None) -> None:
        ssrc = 0x1234ABCD
        self.packets = []
        for seq in range(1, count + 1):
            packet = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, seq * 160 & 0xFFFFFFFF, ssrc) + PCMU_SPEECHLIKE
            self.packets.append(srtp.protect(packet) if srtp is not None else packet)
        self.next = 0

    def tick(self) -> None:
        if self.next < len(self.packets):
            self.sock.sendto(self.packets[self.next], self.target)
            self.next += 1
        try:
            while True:
                self.sock.recv(2048)
                self.received += 1
        except BlockingIOError:
            pass


async def talk(phones: list[Phone], seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = start = loop.time()
    while loop.time() - start < seconds:
        for phone in phones:
            phone.tick()
        deadline += 0.020
        await asyncio.sleep(max(0.0, deadline - loop.time()))


async def measure(clock: MediaClock, phones: list[Phone], seconds: float) -> dict[str, float]:
    await talk(phones, 1.0)  # settle
    clock.lateness.clear()
    cpu, wall = time.process_time(), time.perf_counter()
    await talk(phones, seconds)
    cpu_per_s = (time.process_time() - cpu) / (time.perf_counter() - wall)
    stats = clock.stats()
    packets_per_s = 100 * len(phones)  # 50 in, 50 out per leg
    return {"cpu_s_per_s": round(cpu_per_s, 4), "cpu_us_per_packet": round(1e6 * cpu_per_s / packets_per_s, 2),
            "clock_lateness_ms_p50": float(stats.get("lateness_ms_p50", 0.0)),
            "clock_lateness_ms_p99": float(stats.get("lateness_ms_p99", 0.0)),
            "clock_lateness_ms_max": float(stats.get("lateness_ms_max", 0.0)),
            "clock_resyncs": int(stats.get("resyncs", 0))}


async def browser_leg(pool: RtpPortPool, browser_cert: DtlsCertificate,
                      phone: Phone) -> tuple[WebRtcSession, SrtpContext]:
    """A browser leg and its far end, through ICE and DTLS; the far end's SRTP context."""
    loop = asyncio.get_running_loop()
    session, port, _offer = await open_webrtc(pool, "127.0.0.1", 0)
    ivr = ("127.0.0.1", port)
    phone.target = ivr
    browser = WebRtcPeer(browser_cert, lambda data, addr: phone.sock.sendto(data, addr))
    browser.consented.add(ivr)  # an ICE-lite peer sends no checks: the browser's own success is consent
    browser.selected = ivr
    keys: asyncio.Future[SrtpContext] = loop.create_future()
    browser.on_connected = lambda srtp, _addr: keys.set_result(srtp)
    browser.on_failed = lambda reason: keys.set_exception(RuntimeError(reason))

    def readable() -> None:
        try:
            while True:
                data = phone.sock.recv(2048)
                if classify(data) == "dtls":
                    browser.dtls(data, ivr)
        except BlockingIOError:
            pass

    loop.add_reader(phone.sock.fileno(), readable)
    try:
        session.accept_answer("\r\n".join([
            "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", f"m=audio {phone.addr[1]} UDP/TLS/RTP/SAVPF 0",
            "c=IN IP4 127.0.0.1", f"a=ice-ufrag:{browser.ufrag}", f"a=ice-pwd:{browser.pwd}",
            f"a=fingerprint:{browser_cert.fingerprint}", "a=setup:active", "a=rtcp-mux", ""]))
        check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, attributes={
            "USERNAME": f"{session.peer.ufrag}:{browser.ufrag}", "PRIORITY": 2130706431,
            "ICE-CONTROLLING": 1, "USE-CANDIDATE": None})
        check.add_message_integrity(session.peer.pwd.encode())
        phone.sock.sendto(bytes(check), ivr)
        browser.accept(WebRtcAnswer("sha-256", session.peer.certificate.fingerprint.split()[1], session.peer.ufrag,
                                    session.peer.pwd, "passive", (0,)))  # the IVR is the DTLS server
        srtp = await asyncio.wait_for(keys, 10)
        await asyncio.wait_for(session.connected(), 10)
    finally:
        loop.remove_reader(phone.sock.fileno())
    return session, srtp


def pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return quantiles(values, n=100, method="inclusive")[q - 1]


async def run(opts: argparse.Namespace) -> dict[str, object]:
    pool = RtpPortPool(opts.port_min, opts.port_min + 4 * opts.legs + 100)
    clock = MediaClock()
    count = int(50 * (opts.seconds + 2)) + 50  # packets each phone sends in a phase

    # 1. plain RTP legs
    plain_phones = [Phone() for _ in range(opts.legs)]
    plain_legs: list[ClockLeg] = []
    for phone in plain_phones:
        rtp, port = await open_rtp(pool, "127.0.0.1", phone.addr, 0)
        phone.target = ("127.0.0.1", port)
        phone.prepare(count + 50 * 30, None)  # also talks through the handshakes
        plain_legs.append(ClockLeg(rtp))
        clock.serve(plain_legs[-1])
    plain = await measure(clock, plain_phones, opts.seconds)

    # 2. browser legs' handshakes while the plain legs keep the clock busy
    browser_cert = DtlsCertificate.generate()
    web_phones = [Phone() for _ in range(opts.legs)]
    background = asyncio.ensure_future(talk(plain_phones, 3600))
    clock.lateness.clear()
    web: list[tuple[WebRtcSession, SrtpContext]] = []
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    handshake_cpu = 0.0
    for phone in web_phones:  # one browser answering every --interval seconds, like agent legs being set up
        next_at += opts.interval
        cpu = time.process_time()
        web.append(await browser_leg(pool, browser_cert, phone))
        handshake_cpu += (time.process_time() - cpu) / opts.legs
        await asyncio.sleep(max(0.0, next_at - loop.time()))
    during = clock.stats()
    background.cancel()
    times = [1000 * (s.handshake_seconds or 0.0) for s, _ in web]
    handshakes = {"count": len(times), "ms_p50": round(pct(times, 50), 2), "ms_p99": round(pct(times, 99), 2),
                  "ms_max": round(max(times), 2),
                  "ivr_step_ms_max": round(1000 * max(s.dtls_step_max for s, _ in web), 3),
                  "cpu_ms_each_both_ends": round(1000 * handshake_cpu, 2),
                  "clock_lateness_ms_p50": float(during.get("lateness_ms_p50", 0.0)),
                  "clock_lateness_ms_p99": float(during.get("lateness_ms_p99", 0.0))}
    for leg in plain_legs:
        clock.stop(leg)

    # 3. the same load over the browser legs
    web_legs: list[ClockLeg] = []
    for (session, srtp), phone in zip(web, web_phones, strict=True):
        phone.prepare(count, srtp)
        web_legs.append(ClockLeg(session))
        clock.serve(web_legs[-1])
    webrtc = await measure(clock, web_phones, opts.seconds)
    heard = sum(leg.heard for leg in web_legs)
    sent_to_browsers = sum(phone.received for phone in web_phones)
    stray = sum(session.stray for session, _ in web)
    unauthenticated = sum(session.unauthenticated for session, _ in web)

    for leg in web_legs:
        clock.stop(leg)
    await clock.close()
    for leg in plain_legs + web_legs:
        await leg.rtp.close()
    for phone in plain_phones + web_phones:
        phone.sock.close()
    extra = webrtc["cpu_us_per_packet"] - plain["cpu_us_per_packet"]
    return {"legs": opts.legs, "seconds": opts.seconds, "handshakes": handshakes, "plain": plain, "webrtc": webrtc,
            "webrtc_extra_cpu_us_per_packet": round(extra, 2),
            "webrtc_frames_heard": heard, "webrtc_packets_to_browsers": sent_to_browsers,
            "webrtc_stray": stray, "webrtc_unauthenticated": unauthenticated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--legs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between two browser legs' set-ups")
    parser.add_argument("--port-min", type=int, default=42000)
    parser.add_argument("--report", type=Path, default=None, help="write the numbers as JSON here")
    opts = parser.parse_args()
    # one webrtc_connected line per leg would bury the numbers
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if not 1 <= opts.legs <= 500 or not 1 <= opts.seconds <= 120:
        parser.error("--legs 1..500, --seconds 1..120")
    results = uvloop.run(run(opts))
    text = json.dumps(results, indent=2)
    print(text)
    if opts.report is not None:
        opts.report.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
