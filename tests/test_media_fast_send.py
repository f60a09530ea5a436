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


def test_a_bridged_sessions_audio_goes_to_its_payload_sink_undecoded_and_digits_still_arrive() -> None:
    phone = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone.bind(("127.0.0.1", 0))
    first = free_port(even=True)

    def packet(pt: int, seq: int, payload: bytes, first_byte: int = 0x80) -> bytes:
        return struct.pack("!BBHII", first_byte, pt, seq, seq * 160, 0xABCD) + payload

    async def receive() -> tuple[list[tuple[bytes, int]], list[str], int]:
        session, port = await open_rtp(RtpPortPool(first, first + 40), "127.0.0.1", phone.getsockname(), 0)
        sunk: list[tuple[bytes, int]] = []
        digits: list[str] = []
        session.payload_sink = lambda payload, seq: sunk.append((payload, seq))
        session.on_dtmf = lambda digit, _duration: digits.append(digit)
        to = ("127.0.0.1", port)
        phone.sendto(packet(0, 1, b"\x11" * 160), to)
        phone.sendto(packet(0 | 0x80, 2, b"\x22" * 240), to)  # marker bit set, 30 ms
        phone.sendto(packet(8, 3, b"\x33" * 160), to)  # not the session's payload type: not for the sink
        for seq, end in ((4, 0), (5, 0), (6, 0x80)):  # RFC 4733: digit 5, ended by the E bit
            phone.sendto(packet(101, seq, struct.pack("!BBH", 5, end | 10, 800)), to)
        await asyncio.sleep(0.3)
        stats = session._stream_stats  # noqa: SLF001
        received = stats.packets_received if stats is not None else 0
        await session.close()
        return sunk, digits, received

    try:
        sunk, digits, received = asyncio.run(receive())
    finally:
        phone.close()
    assert sunk == [(b"\x11" * 160, 1), (b"\x22" * 240, 2)]  # as they came: no decoding, no jitter buffer
    assert digits == ["5"]
    assert received == 6  # every packet counts in the receive statistics RTCP reports
