"""SRTP with SDES keys: the a=crypto answer, the key contexts, and SRTP on real sockets.

The far end is always plain pylibsrtp, set up from the SDP alone, as a phone
would be: what the IVR answers must be enough for it to decrypt our audio
and for us to decrypt its.
"""

from __future__ import annotations

import asyncio
import base64
import re
import struct

import pytest
from aiortp.codecs import get_codec
from aiosipua import negotiate_sdp, parse_sdp, serialize_sdp
from aiosipua.sdp import MediaDescription
from pylibsrtp import Error, Policy, Session

from ivr.media import RtpPortPool, SrtpRtpSession, StrictSrtpRtpSession, open_rtp
from ivr.srtp import (
    CryptoLineError,
    CryptoOffer,
    SrtpContext,
    SrtpRefused,
    answer_crypto,
    choose_crypto,
    negotiate_srtp,
    parse_crypto,
    secure_answer,
)
from tests.conftest import free_port

PHONE_KEY = bytes(range(30))  # the phone's master key||salt (AES_CM_128: 16 + 14)
PHONE_INLINE = base64.b64encode(PHONE_KEY).decode()
PROFILES = {"AES_CM_128_HMAC_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
            "AES_CM_128_HMAC_SHA1_32": Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
            "AEAD_AES_128_GCM": Policy.SRTP_PROFILE_AEAD_AES_128_GCM}


def rtp_packet(seq: int, payload: bytes, ssrc: int = 0x1234ABCD, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 160, ssrc) + payload


def audio(*crypto: str, proto: str = "RTP/SAVP") -> MediaDescription:
    return MediaDescription(media="audio", port=4000, proto=proto, formats=["0"],
                            attributes={"crypto": list(crypto)} if crypto else {})


def phone_sessions(suite: str, phone_key: bytes, ivr_key: bytes) -> tuple[Session, Session]:
    """The phone's own pylibsrtp sessions: (outbound with its key, inbound with the IVR's)."""
    profile = PROFILES[suite]
    out = Session(policy=Policy(key=phone_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile))
    inbound = Session(policy=Policy(key=ivr_key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=profile))
    return out, inbound


# --- the a=crypto line -----------------------------------------------------------------


def test_the_answer_keeps_the_offers_tag_and_suite_with_a_key_of_our_own() -> None:
    offer = parse_crypto(f"7 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE}")
    line, key = answer_crypto(offer)
    assert re.fullmatch(r"7 AES_CM_128_HMAC_SHA1_80 inline:[A-Za-z0-9+/]{40}", line), line
    assert base64.b64decode(line.rsplit(":", 1)[1]) == key
    assert len(key) == 30 and key != PHONE_KEY
    assert answer_crypto(offer)[1] != key, "every answer gets a fresh key"


def test_an_answer_line_parses_back_as_the_same_suite_and_key() -> None:
    offer = parse_crypto(f"1 AEAD_AES_128_GCM inline:{base64.b64encode(bytes(28)).decode()}")
    line, key = answer_crypto(offer)
    assert parse_crypto(line) == CryptoOffer(1, "AEAD_AES_128_GCM", key)
    logged = repr(parse_crypto(f"1 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE}"))
    assert "30 bytes" in logged and PHONE_INLINE not in logged and repr(PHONE_KEY) not in logged, "no key in logs"


@pytest.mark.parametrize(("lines", "chosen"), [
    ([f"1 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE}", f"2 AES_CM_128_HMAC_SHA1_32 inline:{PHONE_INLINE}"], 1),
    ([f"1 AES_CM_128_HMAC_SHA1_32 inline:{PHONE_INLINE}", f"2 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE}"], 1),
    ([f"1 F8_128_HMAC_SHA1_80 inline:{PHONE_INLINE}", f"2 AES_CM_128_HMAC_SHA1_32 inline:{PHONE_INLINE}"], 2),
    ([f"1 AES_256_CM_HMAC_SHA1_80 inline:{PHONE_INLINE}", f"3 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE}|1:4",
      f"4 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE}"], 4),
    ([f"5 AEAD_AES_128_GCM inline:{base64.b64encode(bytes(28)).decode()}"], 5),
])
def test_the_first_line_we_can_honour_in_the_offerers_order_is_chosen(lines: list[str], chosen: int) -> None:
    offer = choose_crypto(audio(*lines))
    assert offer is not None and offer.tag == chosen


@pytest.mark.parametrize(("value", "why"), [
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(bytes(29)).decode()}", "30-byte"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(bytes(42)).decode()}", "30-byte"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:not*base64!", "base64"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:", "30-byte"),
    ("1 AES_CM_128_HMAC_SHA1_80", "expected"),
    (f"x AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE}", "tag"),
    (f"1 NULL_HMAC_SHA1_80 inline:{PHONE_INLINE}", "unsupported crypto suite"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE}|2^31|1:4", "MKI"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE}|1:4;inline:{PHONE_INLINE}|2:4", "several"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE}|2^20", "lifetime"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE}|forever", "lifetime"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE} UNENCRYPTED_SRTP", "UNENCRYPTED_SRTP"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE} KDR=24", "KDR"),
    ("1 AES_CM_128_HMAC_SHA1_80 uri:https://keys.example/1", "inline"),
])
def test_a_crypto_line_we_cannot_honour_is_refused_with_the_reason(value: str, why: str) -> None:
    with pytest.raises(CryptoLineError, match=why):
        parse_crypto(value)


@pytest.mark.parametrize("tail", ["|2^31", "|2147483648", " WSH=64", " KDR=0", "|2^48 WSH=128"])
def test_lifetimes_no_call_can_reach_and_advisory_parameters_are_accepted(tail: str) -> None:
    assert parse_crypto(f"1 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE}{tail}").key == PHONE_KEY


def test_no_crypto_line_or_none_usable_chooses_nothing() -> None:
    assert choose_crypto(audio()) is None
    assert choose_crypto(audio(f"1 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE}|1:4")) is None


# --- the contexts: round trips with plain pylibsrtp on the phone's side ------------------


@pytest.mark.parametrize("suite", list(PROFILES))
def test_audio_round_trips_between_the_ivr_and_a_phone_keyed_from_the_sdp(suite: str) -> None:
    phone_key = bytes(range(len(PHONE_KEY) - (2 if suite.startswith("AEAD") else 0)))
    offer = parse_crypto(f"3 {suite} inline:{base64.b64encode(phone_key).decode()}")
    ivr = SrtpContext.answering(offer)
    ivr_key = base64.b64decode(ivr.answer_line.rsplit(":", 1)[1])
    phone_out, phone_in = phone_sessions(suite, phone_key, ivr_key)
    for seq in range(1, 6):
        clear = rtp_packet(seq, bytes([seq]) * 160)
        wire = ivr.protect(clear)
        assert wire[:12] == clear[:12] and wire[12:172] != clear[12:], "header in clear, payload not"
        assert phone_in.unprotect(wire) == clear
        from_phone = rtp_packet(seq, bytes([0x55 + seq]) * 160, ssrc=0x0BADCAFE)
        assert ivr.unprotect(phone_out.protect(from_phone)) == from_phone
    sr = struct.pack("!BBHI", 0x80, 200, 6, 0x1234ABCD) + bytes(20)  # an empty RTCP SR
    assert phone_in.unprotect_rtcp(ivr.protect_rtcp(sr)) == sr
    rr = struct.pack("!BBHI", 0x80, 201, 1, 0x0BADCAFE)
    assert ivr.unprotect_rtcp(phone_out.protect_rtcp(rr)) == rr


def test_a_tampered_replayed_or_wrongly_keyed_packet_fails_authentication() -> None:
    ivr = SrtpContext.answering(parse_crypto(f"1 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE}"))
    phone_out, _ = phone_sessions("AES_CM_128_HMAC_SHA1_80", PHONE_KEY, bytes(30))
    wire = phone_out.protect(rtp_packet(1, b"\xff" * 160, ssrc=7))
    tampered = wire[:20] + bytes([wire[20] ^ 1]) + wire[21:]
    with pytest.raises(Error, match="authentication"):
        ivr.unprotect(tampered)
    assert ivr.unprotect(wire)[12:] == b"\xff" * 160
    with pytest.raises(Error, match="replay"):
        ivr.unprotect(wire)
    with pytest.raises(Error):
        ivr.unprotect(rtp_packet(2, b"\xff" * 160, ssrc=7))  # clear RTP: no tag, not accepted


def test_the_same_packet_may_be_protected_twice_for_aiortps_duplicate_sends() -> None:
    ivr = SrtpContext.answering(parse_crypto(f"1 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE}"))
    packet = rtp_packet(9, b"\x00" * 160)
    assert ivr.protect(packet) == ivr.protect(packet)


# --- negotiate_srtp: the [media] srtp modes ----------------------------------------------


def offer_sdp(proto: str, *crypto: str) -> str:
    lines = "".join(f"a=crypto:{c}\r\n" for c in crypto)
    return (f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio 4000 {proto} 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n{lines}")


def negotiate(proto: str, mode: str, *crypto: str):  # type: ignore[no-untyped-def]
    offer = parse_sdp(offer_sdp(proto, *crypto))
    answer, _ = negotiate_sdp(offer, local_ip="127.0.0.1", rtp_port=30000, supported_codecs=[0, 8])
    return negotiate_srtp(offer, answer, mode)


GOOD = f"4 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE}"


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_an_savp_offer_with_a_usable_key_is_answered_savp_with_our_crypto_line(mode: str) -> None:
    answer, srtp = negotiate("RTP/SAVP", mode, f"1 F8_128_HMAC_SHA1_80 inline:{PHONE_INLINE}", GOOD)
    assert srtp is not None
    assert answer.audio.proto == "RTP/SAVP"
    assert answer.audio.attributes["crypto"] == [srtp.answer_line]
    assert srtp.answer_line.startswith("4 AES_CM_128_HMAC_SHA1_80 inline:")
    text = serialize_sdp(answer)
    assert "m=audio 30000 RTP/SAVP 0 101" in text and f"a=crypto:{srtp.answer_line}" in text


@pytest.mark.parametrize("mode", ["off", "optional"])
def test_a_plain_offer_is_answered_plain_unless_srtp_is_required(mode: str) -> None:
    answer, srtp = negotiate("RTP/AVP", mode)
    assert srtp is None and answer.audio.proto == "RTP/AVP" and "crypto" not in answer.audio.attributes


@pytest.mark.parametrize(("proto", "mode", "crypto", "why"), [
    ("RTP/AVP", "required", (), "srtp = required"),
    ("RTP/SAVP", "off", (GOOD,), "srtp = off"),
    ("RTP/SAVP", "optional", (), "none offered"),
    ("RTP/SAVP", "required", (f"1 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE}|1:4",), "MKI"),
    ("UDP/TLS/RTP/SAVP", "optional", (GOOD,), "not supported"),
    ("RTP/SAVPF", "optional", (GOOD,), "not supported"),
])
def test_an_offer_the_mode_cannot_honour_is_refused_never_answered_in_clear(
    proto: str, mode: str, crypto: tuple[str, ...], why: str
) -> None:
    with pytest.raises(SrtpRefused, match=why):
        negotiate(proto, mode, *crypto)


def test_an_answer_written_again_with_the_bound_port_keeps_the_same_key() -> None:
    offer = parse_sdp(offer_sdp("RTP/SAVP", GOOD))
    first, srtp = negotiate_srtp(offer, negotiate_sdp(offer, local_ip="127.0.0.1", rtp_port=0)[0], "optional")
    again = secure_answer(negotiate_sdp(offer, local_ip="127.0.0.1", rtp_port=30002)[0], srtp)
    assert again.audio.port == 30002 and again.audio.attributes["crypto"] == first.audio.attributes["crypto"]
    plain = negotiate_sdp(parse_sdp(offer_sdp("RTP/AVP")), local_ip="127.0.0.1", rtp_port=30004)[0]
    assert secure_answer(plain, None) is plain


# --- SRTP on real sockets: two sessions through a relay that sees the wire -----------------


class _Wire(asyncio.DatagramProtocol):
    """One side of a loopback relay: records every datagram and forwards it to the other session."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.peers: dict[tuple[str, int], tuple[str, int]] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.seen.append(data)
        if addr in self.peers and self.transport is not None:
            self.transport.sendto(data, self.peers[addr])


def test_audio_sent_through_srtp_arrives_decrypted_and_the_wire_carries_no_clear_g711() -> None:
    ivr_ctx = SrtpContext.answering(parse_crypto(f"1 AES_CM_128_HMAC_SHA1_80 inline:{PHONE_INLINE}"))
    ivr_key = base64.b64decode(ivr_ctx.answer_line.rsplit(":", 1)[1])
    phone_ctx = SrtpContext("AES_CM_128_HMAC_SHA1_80", remote_key=ivr_key, local_key=PHONE_KEY)
    frames = [bytes((i * 7 + j) % 251 for j in range(160)) for i in range(30)]  # no frame repeats a byte run
    relay_port, first = free_port(even=True), free_port(even=True)

    async def scenario():  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        rtp_wire, rtcp_wire = _Wire(), _Wire()
        rtp_t, _ = await loop.create_datagram_endpoint(lambda: rtp_wire, local_addr=("127.0.0.1", relay_port))
        rtcp_t, _ = await loop.create_datagram_endpoint(lambda: rtcp_wire, local_addr=("127.0.0.1", relay_port + 1))
        pool = RtpPortPool(first, first + 40)
        relay = ("127.0.0.1", relay_port)
        ivr, ivr_port = await open_rtp(pool, "127.0.0.1", relay, 0, srtp=ivr_ctx)
        phone, phone_port = await open_rtp(pool, "127.0.0.1", relay, 0, srtp=phone_ctx)
        rtp_wire.peers = {("127.0.0.1", ivr_port): ("127.0.0.1", phone_port),
                          ("127.0.0.1", phone_port): ("127.0.0.1", ivr_port)}
        rtcp_wire.peers = {("127.0.0.1", ivr_port + 1): ("127.0.0.1", phone_port + 1),
                           ("127.0.0.1", phone_port + 1): ("127.0.0.1", ivr_port + 1)}
        heard: list[bytes] = []
        phone.on_audio = lambda pcm, _ts: heard.append(pcm)
        for i, frame in enumerate(frames):
            ivr.send_audio(frame, i * 160)
            await asyncio.sleep(0.005)
        ivr._send_rtcp_report()  # noqa: SLF001 — an SR now rather than in 2.5-7.5 s
        # a stranger who knows the address but not the key: clear RTP via the relay's socket
        rtp_t.sendto(rtp_packet(999, frames[0], ssrc=ivr._ssrc), ("127.0.0.1", phone_port))  # noqa: SLF001
        await asyncio.sleep(0.2)
        state = (list(heard), phone._last_sr_ntp, phone.unauthenticated, phone.stray)  # noqa: SLF001
        await ivr.close()
        await phone.close()
        rtp_t.close()
        rtcp_t.close()
        return state, rtp_wire.seen, rtcp_wire.seen, type(ivr)

    (heard, last_sr, unauthenticated, stray), rtp_seen, rtcp_seen, kind = asyncio.run(scenario())
    assert kind is StrictSrtpRtpSession and issubclass(kind, SrtpRtpSession)
    decode = get_codec(0).decode
    assert len(heard) >= len(frames) - 4, f"{len(heard)} frames heard"  # the jitter buffer may hold the tail
    assert heard == [decode(f) for f in frames[: len(heard)]], "the phone hears exactly what the IVR sent"
    assert last_sr is not None, "the SRTCP sender report was decrypted and parsed"
    assert unauthenticated == 1 and stray == 0, "the clear packet was dropped and counted"

    ivr_packets = [d for d in rtp_seen if struct.unpack_from("!H", d, 2)[0] != 999]
    assert len(ivr_packets) >= len(frames)
    assert all(len(d) == 12 + 160 + 10 for d in ivr_packets), "each packet carries the 80-bit tag"
    for frame in frames:
        for d in ivr_packets:
            assert frame[:16] not in d, "a G.711 frame crossed the wire in clear"
    # SRTCP appends E-flag||index (4 bytes) and the tag (10): E set means the report is encrypted
    assert rtcp_seen and all(d[-14] & 0x80 for d in rtcp_seen), "RTCP crossed the wire as encrypted SRTCP"
