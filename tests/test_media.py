"""The media seam: RTP ports held by another process are skipped, and RTP never stops while a call is up."""

from __future__ import annotations

import asyncio
import socket
import time

from ivr.media import SAMPLES_PER_FRAME, SILENCE_FRAMES, MediaClock, RtpPortPool, open_rtp
from tests.conftest import free_port


def test_a_port_held_by_another_process_is_skipped_not_fatal() -> None:
    first = free_port(even=True)
    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.bind(("127.0.0.1", first))  # a second IVR worker on this host holds it
    pool = RtpPortPool(first, first + 40)

    async def scenario() -> int:
        session, port = await open_rtp(pool, "127.0.0.1", ("127.0.0.1", 9), 0)
        await session.close()
        return port

    try:
        port = asyncio.run(scenario())
    finally:
        held.close()
    assert port != first and port % 2 == 0
    assert pool.bind_retries == 1
    assert first in list(pool._free)  # noqa: SLF001 — it comes round again later


class _Leg:
    """A call leg as the clock sees it: one short prompt, then nothing to say."""

    def __init__(self, rtp, frames: int) -> None:  # type: ignore[no-untyped-def]
        self.rtp = rtp
        self.frames = tuple(b"\x7f" * SAMPLES_PER_FRAME for _ in range(frames))
        self.index = 0
        self.prompt: str | None = "greeting"
        self.done_at: float | None = None

    def send_next_frame(self, tick: int) -> bool:
        if self.index < len(self.frames):
            self.rtp.send_audio(self.frames[self.index], tick * SAMPLES_PER_FRAME)
            self.index += 1
            return False
        self.rtp.send_audio(SILENCE_FRAMES[0], tick * SAMPLES_PER_FRAME)
        return self.prompt is not None

    def prompt_done(self) -> None:
        self.prompt, self.done_at = None, time.monotonic()


def test_rtp_keeps_flowing_after_a_prompt_ends() -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink.setblocking(False)
    first = free_port(even=True)

    async def scenario() -> tuple[list[float], _Leg]:
        session, _ = await open_rtp(RtpPortPool(first, first + 20), "127.0.0.1", sink.getsockname(), 0)
        clock, leg = MediaClock(), _Leg(session, frames=25)  # a 0.5 s prompt
        clock.serve(leg)
        arrivals: list[float] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + 1.5
        while loop.time() < end:
            try:
                sink.recv(2048)
                arrivals.append(loop.time())
            except BlockingIOError:
                await asyncio.sleep(0.002)
        await clock.close()
        await session.close()
        return arrivals, leg

    try:
        arrivals, leg = asyncio.run(scenario())
    finally:
        sink.close()
    assert leg.done_at is not None, "the prompt was reported played out"
    assert len(arrivals) >= 65, f"{len(arrivals)} packets in 1.5 s: RTP stopped after the prompt"
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert max(gaps) < 0.1, f"longest gap {max(gaps) * 1000:.0f} ms"
