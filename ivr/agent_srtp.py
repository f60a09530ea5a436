"""SDES-SRTP on the agent leg: the IVR offers the keys, the agent's phone answers with its own.

On the caller's leg the IVR answers an offer (`ivr.srtp.negotiate_srtp`); on the
agent's leg it is the offerer. An agent's `srtp` setting (`[801] srtp = …`) says
what the INVITE to that agent's phone offers:

* `off`: plain RTP/AVP, as before;
* `optional`: RTP/SAVP with one `a=crypto` line (AES_CM_128_HMAC_SHA1_80, a
  fresh key per call); an answer in plain RTP/AVP is taken, in clear (some
  phones answer a SAVP offer that way rather than refuse it);
* `required`: RTP/SAVP likewise, and an answer that is not RTP/SAVP with our
  tag and suite fails the leg — the IVR hangs up on the agent and the caller
  goes back to the head of the queue (never a clear call on a secure seat).

Pure: no sockets. The RTP session is opened as an SRTP session before the
INVITE (its port is in the offer) and gets its keys, or is told to run in
clear, when the answer comes (`ivr.media.SrtpRtpSession`).
"""

from __future__ import annotations

import base64
import copy
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ivr.srtp import SECURE_PROTO, SUITES, CryptoLineError, SrtpContext, SrtpRefused, parse_crypto

if TYPE_CHECKING:
    from aiosipua.sdp import SdpMessage

OFFER_SUITE = "AES_CM_128_HMAC_SHA1_80"  # RFC 4568 §6.2.1: the suite every SDES phone has
OFFER_TAG = 1


@dataclass(frozen=True, slots=True)
class SrtpOffer:
    """What the agent leg's INVITE offered: the mode and our master key||salt."""

    mode: str
    local_key: bytes
    suite: str = OFFER_SUITE
    tag: int = OFFER_TAG

    def __repr__(self) -> str:  # keys stay out of logs and tracebacks
        return f"SrtpOffer(mode={self.mode!r}, suite={self.suite!r})"

    @property
    def crypto_line(self) -> str:
        return f"{self.tag} {self.suite} inline:{base64.b64encode(self.local_key).decode('ascii')}"


def srtp_offer(mode: str) -> SrtpOffer | None:
    """A fresh offer for an agent whose setting is `mode`; None for `off` (plain RTP)."""
    if mode == "off":
        return None
    return SrtpOffer(mode, secrets.token_bytes(SUITES[OFFER_SUITE].master_len))


def secure_offer(sdp: SdpMessage, offer: SrtpOffer | None) -> SdpMessage:
    """`sdp` as RTP/SAVP with our `a=crypto` line; unchanged without an offer."""
    if offer is None:
        return sdp
    secured = copy.deepcopy(sdp)
    assert secured.audio is not None  # build_sdp made the one audio section
    secured.audio.proto = SECURE_PROTO
    secured.audio.attributes["crypto"] = [offer.crypto_line]
    return secured


def accept_answer(answer: SdpMessage | None, offer: SrtpOffer) -> SrtpContext | None:
    """The agent's answer to our SAVP offer: the call's SRTP context, or None to run in clear
    (`optional` and a plain answer). Raises SrtpRefused when the leg must fail."""
    audio = answer.audio if answer is not None else None
    if audio is None:
        raise SrtpRefused("the agent's answer has no audio section")
    proto = audio.proto.upper()
    if "SAVP" not in proto:
        if offer.mode == "required":
            raise SrtpRefused(f"the agent answered plain media ({audio.proto}) but its srtp = required")
        return None
    if proto != SECURE_PROTO:
        raise SrtpRefused(f"the agent answered {audio.proto}; RTP/SAVP was offered")
    lines = audio.attributes.get("crypto", [])
    if len(lines) != 1:
        raise SrtpRefused(f"the agent's answer has {len(lines)} a=crypto lines; RFC 4568 §7.1.2 wants one")
    try:
        chosen = parse_crypto(lines[0])
    except CryptoLineError as exc:
        raise SrtpRefused(f"the agent's a=crypto line is unusable ({exc})") from None
    if (chosen.tag, chosen.suite) != (offer.tag, offer.suite):
        raise SrtpRefused(f"the agent answered tag {chosen.tag} {chosen.suite}; we offered {offer.tag} {offer.suite}")
    return SrtpContext(offer.suite, chosen.key, offer.local_key)
