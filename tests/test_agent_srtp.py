"""The agent leg's SDES offer and the answers it takes ([801] srtp): pure, no sockets."""

from __future__ import annotations

import base64

import pytest
from aiosipua import build_sdp
from aiosipua.sdp import parse_sdp

from ivr.agent_srtp import accept_answer, secure_offer, srtp_offer
from ivr.srtp import SrtpContext, SrtpRefused

PHONE_KEY = bytes(range(30))


def answer(proto: str, crypto: str = "") -> object:
    return parse_sdp("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                     f"m=audio 40000 {proto} 0\r\na=rtpmap:0 PCMU/8000\r\n{crypto}")


def line(tag: int = 1, suite: str = "AES_CM_128_HMAC_SHA1_80") -> str:
    return f"a=crypto:{tag} {suite} inline:{base64.b64encode(PHONE_KEY).decode()}\r\n"


def test_off_offers_plain_rtp_and_the_others_one_fresh_sdes_key() -> None:
    assert srtp_offer("off") is None
    first, second = srtp_offer("required"), srtp_offer("optional")
    assert first is not None and second is not None and first.local_key != second.local_key
    sdp = secure_offer(build_sdp("127.0.0.1", 40000, 0, "PCMU"), first)
    assert sdp.audio is not None and sdp.audio.proto == "RTP/SAVP"
    assert sdp.audio.attributes["crypto"] == [first.crypto_line]
    assert first.crypto_line.startswith("1 AES_CM_128_HMAC_SHA1_80 inline:")
    assert "inline" not in repr(first), "keys stay out of logs"


def test_a_savp_answer_with_our_tag_keys_the_leg_both_ways() -> None:
    offer = srtp_offer("required")
    assert offer is not None
    context = accept_answer(answer("RTP/SAVP", line()), offer)  # type: ignore[arg-type]
    assert isinstance(context, SrtpContext)
    phone = SrtpContext("AES_CM_128_HMAC_SHA1_80", offer.local_key, PHONE_KEY)  # the phone's view of the keys
    packet = bytes([0x80, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]) + b"\xff" * 160
    assert phone.unprotect(context.protect(packet)) == packet
    assert context.unprotect(phone.protect(packet)) == packet


@pytest.mark.parametrize(("mode", "proto", "crypto", "why"), [
    ("required", "RTP/AVP", "", "answered plain media"),
    ("optional", "RTP/SAVPF", line(), "RTP/SAVP was offered"),
    ("optional", "RTP/SAVP", line(tag=2), "tag 2"),
    ("required", "RTP/SAVP", "", "0 a=crypto lines"),
    ("required", "RTP/SAVP", line(suite="AES_CM_128_HMAC_SHA1_32"), "we offered 1 AES_CM_128_HMAC_SHA1_80"),
])
def test_answers_the_leg_cannot_take_are_refused(mode: str, proto: str, crypto: str, why: str) -> None:
    offer = srtp_offer(mode)
    assert offer is not None
    with pytest.raises(SrtpRefused, match=why):
        accept_answer(answer(proto, crypto), offer)  # type: ignore[arg-type]


def test_optional_takes_a_plain_answer_in_clear() -> None:
    offer = srtp_offer("optional")
    assert offer is not None
    assert accept_answer(answer("RTP/AVP"), offer) is None  # type: ignore[arg-type]
