"""SRTP with SDES keys: the `a=crypto` offer/answer (RFC 4568) and the key contexts (RFC 3711).

Pure: no sockets, no clock. The caller's SDP offers one or more `a=crypto`
lines, each a tag, a crypto suite and a master key||salt sent in the SDP
itself (`inline:` base64). We answer the first line we can honour, in the
offerer's order (RFC 4568 §7.1.1 lists them by preference), with the same
tag and suite and a key of our own (§6.1, §7.1.2). Inbound packets are then
checked and decrypted with the caller's key, outbound ones protected with
ours. The cryptography is libsrtp's, through pylibsrtp; nothing here
encrypts, hashes or authenticates by itself.

`negotiate_srtp` decides, from the `[media] srtp` mode, whether an offer is
answered in clear, answered RTP/SAVP, or refused with `SrtpRefused` (488).
An RTP/SAVP offer is never answered in clear: a secure label over clear audio
would mislead the caller (RFC 4568 §7.1.2 keeps the answer's profile).
"""

from __future__ import annotations

import base64
import binascii
import copy
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pylibsrtp import Error as SrtpError
from pylibsrtp import Policy, Session

if TYPE_CHECKING:
    from aiosipua.sdp import MediaDescription, SdpMessage

__all__ = [
    "SRTP_MODES", "SUITES", "CryptoLineError", "CryptoOffer", "SrtpContext", "SrtpError", "SrtpRefused", "Suite",
    "answer_crypto", "choose_crypto", "negotiate_srtp", "parse_crypto", "secure_answer",
]

SRTP_MODES = ("off", "optional", "required")
SECURE_PROTO = "RTP/SAVP"
# We cannot re-key in mid-call, so a master key must outlive any call: 2^31 packets
# is 497 days at 50 packets/s (and libsrtp's own limit for SRTCP). Shorter lifetimes
# are refused rather than silently overrun (RFC 4568 §6.1: honour it or decline the line).
MIN_LIFETIME = 2**31


@dataclass(frozen=True, slots=True)
class Suite:
    """A crypto suite we support: its libsrtp profile and key sizes in bytes."""

    name: str
    profile: int
    key_len: int
    salt_len: int
    tag_len: int  # authentication tag appended to each SRTP packet

    @property
    def master_len(self) -> int:
        return self.key_len + self.salt_len


# RFC 4568 §6.2 (AES_CM_128_HMAC_SHA1_80/_32) and RFC 7714 §12 (AEAD_AES_128_GCM).
SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite("AES_CM_128_HMAC_SHA1_80", Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14, 10),
        Suite("AES_CM_128_HMAC_SHA1_32", Policy.SRTP_PROFILE_AES128_CM_SHA1_32, 16, 14, 4),
        Suite("AEAD_AES_128_GCM", Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16, 12, 16),
    )
}


class CryptoLineError(ValueError):
    """An `a=crypto` line we cannot honour; the message says why."""


class SrtpRefused(Exception):
    """The offer cannot be answered under the `[media] srtp` mode: answer 488 with `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class CryptoOffer:
    """One usable `a=crypto` line of an offer: tag, suite and the offerer's master key||salt."""

    tag: int
    suite: str
    key: bytes

    def __repr__(self) -> str:  # keys stay out of logs and tracebacks
        return f"CryptoOffer(tag={self.tag}, suite={self.suite!r}, key=<{len(self.key)} bytes>)"


def parse_crypto(value: str) -> CryptoOffer:
    """Parse the value of one `a=crypto:` attribute (without the `crypto:` prefix).

    Raises CryptoLineError for a suite we lack, a malformed or wrong-length key,
    an MKI, several keys, a lifetime shorter than MIN_LIFETIME, or a session
    parameter we cannot honour.
    """
    fields = value.split()
    if len(fields) < 3:
        raise CryptoLineError(f"expected 'tag suite inline:key', got {value[:60]!r}")
    tag_text, suite_name, key_params, *session_params = fields
    if not (tag_text.isdigit() and len(tag_text) <= 9):  # RFC 4568 §9.1: tag = 1*9DIGIT
        raise CryptoLineError(f"bad tag {tag_text[:12]!r}")
    suite = SUITES.get(suite_name)
    if suite is None:
        raise CryptoLineError(f"unsupported crypto suite {suite_name[:40]!r}")
    if ";" in key_params:  # several master keys are told apart only by MKI
        raise CryptoLineError("several master keys (MKI) are not supported")
    if not key_params.startswith("inline:"):
        raise CryptoLineError(f"key method must be inline:, got {key_params.split(':', 1)[0][:20]!r}")
    key_b64, *key_extra = key_params[len("inline:"):].split("|")
    try:
        key = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CryptoLineError(f"key is not base64 ({exc})") from None
    if len(key) != suite.master_len:
        raise CryptoLineError(f"{suite.name} needs a {suite.master_len}-byte key||salt, got {len(key)}")
    if len(key_extra) > 2:
        raise CryptoLineError("too many '|' fields after the key")
    for extra in key_extra:
        if ":" in extra:  # MKI:length — pylibsrtp offers no MKI
            raise CryptoLineError("MKI is not supported")
        lifetime = _lifetime(extra)
        if lifetime < MIN_LIFETIME:
            raise CryptoLineError(f"key lifetime {extra} is shorter than 2^31 packets (no re-keying here)")
    for param in session_params:
        name, _, arg = param.partition("=")
        if name == "WSH" and arg.isdigit():  # window size hint: advisory (RFC 4568 §6.3.7)
            continue
        if name == "KDR" and arg == "0":  # no key derivation rate: libsrtp's default
            continue
        # UNENCRYPTED_SRTP and friends would put clear audio on the wire; FEC/KDR we cannot do
        raise CryptoLineError(f"session parameter {param[:40]!r} is not supported")
    return CryptoOffer(int(tag_text), suite.name, key)


def _lifetime(text: str) -> int:
    if text.startswith("2^") and text[2:].isdigit():
        return 1 << int(text[2:])
    if text.isdigit():
        return int(text)
    raise CryptoLineError(f"bad key lifetime {text[:20]!r}")


def choose_crypto(media: MediaDescription) -> CryptoOffer | None:
    """The first `a=crypto` line of the audio section we can honour, or None."""
    return _choose(media)[0]


def _choose(media: MediaDescription) -> tuple[CryptoOffer | None, list[str]]:
    reasons: list[str] = []
    for value in media.attributes.get("crypto", []):
        try:
            return parse_crypto(value), reasons
        except CryptoLineError as exc:
            reasons.append(str(exc))
    return None, reasons


def answer_crypto(offer: CryptoOffer, local_key: bytes | None = None) -> tuple[str, bytes]:
    """Our `a=crypto` value for the answer (same tag and suite, our key) and that key.

    `local_key` is for tests; in service the key is fresh from `secrets`.
    """
    suite = SUITES[offer.suite]
    if local_key is None:
        local_key = secrets.token_bytes(suite.master_len)
    elif len(local_key) != suite.master_len:
        raise ValueError(f"{suite.name} needs a {suite.master_len}-byte key||salt")
    line = f"{offer.tag} {suite.name} inline:{base64.b64encode(local_key).decode('ascii')}"
    return line, local_key


class SrtpContext:
    """The two SRTP contexts of a call: inbound with the caller's key, outbound with ours.

    protect/unprotect (RTP) and protect_rtcp/unprotect_rtcp (RTCP) raise
    SrtpError (pylibsrtp.Error) when a packet fails authentication or replay
    checks, or cannot be protected.
    """

    def __init__(self, suite: str, remote_key: bytes, local_key: bytes, answer_line: str = "") -> None:
        profile = SUITES[suite].profile
        self.suite = suite
        self.answer_line = answer_line  # our a=crypto value, for the SDP answer
        self._inbound = Session(policy=Policy(key=remote_key, ssrc_type=Policy.SSRC_ANY_INBOUND,
                                              srtp_profile=profile))
        outbound = Policy(key=local_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile)
        # aiortp resends a datagram unchanged (duplicate_tx, NACK retransmission):
        # libsrtp refuses a repeated index unless told that is intended.
        outbound.allow_repeat_tx = True
        self._outbound = Session(policy=outbound)

    @classmethod
    def answering(cls, offer: CryptoOffer, local_key: bytes | None = None) -> SrtpContext:
        """The context for answering `offer`, with a fresh key of ours (or `local_key`)."""
        line, key = answer_crypto(offer, local_key)
        return cls(offer.suite, offer.key, key, answer_line=line)

    def __repr__(self) -> str:
        return f"SrtpContext(suite={self.suite!r})"

    def protect(self, packet: bytes) -> bytes:
        return self._outbound.protect(packet)

    def unprotect(self, packet: bytes) -> bytes:
        return self._inbound.unprotect(packet)

    def protect_rtcp(self, packet: bytes) -> bytes:
        return self._outbound.protect_rtcp(packet)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        return self._inbound.unprotect_rtcp(packet)


def secure_answer(answer_sdp: SdpMessage, srtp: SrtpContext | None) -> SdpMessage:
    """`answer_sdp` with its audio section made RTP/SAVP carrying our crypto line; unchanged when srtp is None.

    For an answer written again later (with the bound RTP port) under the
    context `negotiate_srtp` already chose: the key must not change.
    """
    if srtp is None:
        return answer_sdp
    answer = copy.deepcopy(answer_sdp)
    audio = answer.audio
    if audio is None:
        raise SrtpRefused("the answer has no audio section to secure")
    audio.proto = SECURE_PROTO
    audio.attributes["crypto"] = [srtp.answer_line]
    return answer


def negotiate_srtp(offer_sdp: SdpMessage, answer_sdp: SdpMessage, mode: str) -> tuple[SdpMessage, SrtpContext | None]:
    """Fix aiosipua's answer for SRTP under `mode` (off, optional, required).

    Returns the answer (RTP/SAVP with our `a=crypto`, or plain as given) and the
    call's SrtpContext (None for plain RTP). Raises SrtpRefused, to be answered
    488, when the offer cannot be honoured under the mode.
    """
    if mode not in SRTP_MODES:
        raise ValueError(f"srtp mode must be one of {', '.join(SRTP_MODES)}, got {mode!r}")
    offered = offer_sdp.audio
    if offered is None:
        raise SrtpRefused("offer has no audio section")
    proto = offered.proto.upper()
    if "SAVP" not in proto:
        if mode == "required":
            raise SrtpRefused(f"plain media ({offered.proto}) offered but [media] srtp = required")
        return answer_sdp, None
    if mode == "off":
        raise SrtpRefused(f"secure media ({offered.proto}) offered but [media] srtp = off")
    if proto != SECURE_PROTO:  # UDP/TLS/RTP/SAVP is DTLS-SRTP, RTP/SAVPF needs RTCP feedback
        raise SrtpRefused(f"secure media profile {offered.proto} is not supported (only RTP/SAVP with SDES keys)")
    chosen, reasons = _choose(offered)
    if chosen is None:
        why = "; ".join(reasons) if reasons else "none offered"
        raise SrtpRefused(f"no usable a=crypto line ({why})")
    srtp = SrtpContext.answering(chosen)
    return secure_answer(answer_sdp, srtp), srtp
