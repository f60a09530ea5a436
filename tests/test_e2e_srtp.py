"""SRTP end to end: a scripted phone offers RTP/SAVP with SDES keys and checks what crosses the wire.

The phone is a plain UDP socket (tests/test_e2e_retransmission.py's
ScriptedPhone) with pylibsrtp keyed from the SDP alone, as a real phone
would be: it must be able to decrypt every RTP packet the IVR sends with
the key of the IVR's a=crypto answer, and none of those packets may carry
the greeting's G.711 in clear.
"""

from __future__ import annotations

import base64
import time

import pytest
from aiosipua import parse_sdp
from pylibsrtp import Policy, Session

from .test_e2e_retransmission import ScriptedPhone, cseq_of, status_line, to_tags

pytestmark = pytest.mark.e2e

PHONE_KEY = bytes(range(100, 130))  # the phone's AES_CM_128 master key||salt (16 + 14 bytes)
# tag 1 names a suite the IVR lacks (RFC 6188's AES-256): the answer must pick tag 3 and echo it
CRYPTO = (
    f"a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{base64.b64encode(bytes(46)).decode()}\n"
    f"a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(PHONE_KEY).decode()}\n"
)
SILENCE_PCMU = b"\xff" * 160


def final_answer(phone: ScriptedPhone, branch: str, proto: str, extra_sdp: str) -> str:
    phone.send(phone.invite(branch, body_proto=proto, extra_sdp=extra_sdp))
    got = phone.until(lambda t: status_line(t).startswith(("SIP/2.0 2", "SIP/2.0 4", "SIP/2.0 5"))
                      and "INVITE" in cseq_of(t))
    return next(t for _, t in got if not status_line(t).startswith("SIP/2.0 1"))


def receive_rtp(phone: ScriptedPhone, seconds: float) -> list[bytes]:
    packets: list[bytes] = []
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        phone.rtp.settimeout(left)
        try:
            packets.append(phone.rtp.recv(2048))
        except TimeoutError:
            break
    return packets


def test_an_srtp_offer_is_answered_savp_and_the_greeting_crosses_the_wire_encrypted(ivr_factory) -> None:
    ivr = ivr_factory(extra="[media]\nsrtp = optional\n")
    phone = ScriptedPhone(ivr)
    try:
        ok = final_answer(phone, "z9hG4bK-srtp-ok", "RTP/SAVP", CRYPTO)
        assert status_line(ok).startswith("SIP/2.0 200"), f"{status_line(ok)}\n{ivr.log()[-2000:]}"
        phone.to_tag = to_tags(ok)[0]
        phone.send(phone.in_dialog("ACK", 1, "z9hG4bK-srtp-ack"))
        answer = parse_sdp(ok.split("\r\n\r\n", 1)[1])
        assert answer.audio is not None and answer.audio.proto == "RTP/SAVP"
        crypto = answer.audio.attributes.get("crypto", [])
        assert len(crypto) == 1, crypto
        tag, suite, inline = crypto[0].split()
        assert (tag, suite) == ("3", "AES_CM_128_HMAC_SHA1_80") and inline.startswith("inline:")
        ivr_key = base64.b64decode(inline.removeprefix("inline:"), validate=True)
        assert len(ivr_key) == 30 and ivr_key != PHONE_KEY

        wire = receive_rtp(phone, 4.0)  # ring 1 s, then the greeting
        phone.send(phone.in_dialog("BYE", 2, "z9hG4bK-srtp-bye"))
        phone.until(lambda t: status_line(t).startswith("SIP/2.0 200") and "BYE" in cseq_of(t))
    finally:
        phone.close()

    rtp = [d for d in wire if not 192 <= d[1] <= 223]  # RTCP (SR/RR/SDES/BYE) aside
    assert len(rtp) >= 100, f"{len(rtp)} RTP packets in 4 s"
    inbound = Session(policy=Policy(key=ivr_key, ssrc_type=Policy.SSRC_ANY_INBOUND,
                                    srtp_profile=Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
    clear = [inbound.unprotect(d) for d in rtp]  # raises on any packet that fails authentication
    assert all(len(d) == len(c) + 10 for d, c in zip(rtp, clear, strict=True)), "an 80-bit tag on every packet"
    assert {c[1] & 0x7F for c in clear} <= {0, 101}, "PCMU (and telephone-event) only"
    spoken = [c[12:] for c in clear if c[1] & 0x7F == 0 and c[12:] != SILENCE_PCMU]
    assert len(spoken) >= 20, "the greeting was sent (decrypted frames that are not silence)"
    for frame in spoken:
        assert not any(frame[:16] in d for d in rtp), "a frame of the greeting crossed the wire in clear"
    assert not any(d[12:] == SILENCE_PCMU for d in rtp), "silence crossed the wire in clear"


@pytest.mark.parametrize(("mode", "proto", "extra_sdp"), [
    ("off", "RTP/SAVP", CRYPTO),  # today's behaviour, kept when SRTP is switched off
    ("required", "RTP/AVP", ""),  # plain media refused when SRTP is required
    ("optional", "RTP/SAVP", ""),  # RTP/SAVP without keys: never a clear-text answer
])
def test_an_offer_the_srtp_mode_cannot_honour_gets_488(ivr_factory, mode: str, proto: str, extra_sdp: str) -> None:
    ivr = ivr_factory(extra=f"[media]\nsrtp = {mode}\n")
    phone = ScriptedPhone(ivr)
    try:
        final = final_answer(phone, f"z9hG4bK-srtp-{mode}", proto, extra_sdp)
        heard = receive_rtp(phone, 0.5)
    finally:
        phone.close()
    assert status_line(final).startswith("SIP/2.0 488"), status_line(final)
    assert heard == [], "no media for a refused call"
