"""The media clock's RTP send path (ivr.media.CycleFreeRtpSession.send_audio) puts on the wire what aiortp's does."""

from __future__ import annotations

import asyncio
import socket
import struct

import aiortp

from ivr.media import SILENCE_FRAMES, RtpPortPool, open_rtp
from tests.conftest import free_port


def test_fast_send_writes_aiortps_bytes_and_counts_for_rtcp() -> None:
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone.bind(("127.0.0.1", 0))
    phone.settimeout(2)
    first = free_port(even=True)

    async def send_both() -> tuple[int, int]:
        session, _ = await open_rtp(RtpPortPool(first, first + 40), "127.0.0.1", phone.getsockname(), 8)
        session.send_audio(SILENCE_FRAMES[8], 1000)  # ours
        aiortp.RTPSession.send_audio(session, SILENCE_FRAMES[8], 1160)  # aiortp's own
        sender = session._sender  # noqa: SLF001
        assert sender is not None
        counts = sender.packets_sent, sender.octets_sent
        await session.close()
        return counts

    try:
        counts = asyncio.run(send_both())
        ours, theirs = phone.recv(2048), phone.recv(2048)
    finally:
        phone.close()
    assert counts == (2, 320)
    v1, pt1, seq1, ts1, ssrc1 = struct.unpack_from("!BBHII", ours)
    v2, pt2, seq2, ts2, ssrc2 = struct.unpack_from("!BBHII", theirs)
    assert (v1, pt1, ssrc1) == (v2, pt2, ssrc2) == (0x80, 8, ssrc1)
    assert seq2 == (seq1 + 1) & 0xFFFF and (ts1, ts2) == (1000, 1160)
    assert ours[12:] == theirs[12:] == SILENCE_FRAMES[8] and len(ours) == len(theirs) == 172
