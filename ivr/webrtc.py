"""Browser media for agent legs: ICE-lite, DTLS-SRTP and the SDP that offers them.

Pure of sockets and of aiortp: `ivr.media.WebRtcSession` owns the UDP socket
and feeds every datagram it receives to a `WebRtcPeer`, which answers STUN,
drives the DTLS handshake and, once both are done and the browser's
certificate matches the `a=fingerprint` of its SDP answer, hands the session
its SRTP keys. Everything here runs on the event loop in small steps (one
datagram, one timer); nothing waits.

What a browser requires of the far end, and what it gets here:
- DTLS-SRTP (RFC 5763/5764): browsers refuse SDES keys (RFC 8827). One
  self-signed ECDSA P-256 certificate per process (`local_certificate`), its
  SHA-256 fingerprint in the SDP; the SRTP master keys are exported from the
  handshake ("EXTRACTOR-dtls_srtp", SRTP_AES128_CM_SHA1_80) into the same
  libsrtp contexts SDES calls use (`ivr.srtp.SrtpContext`).
- ICE-lite (RFC 8445 §2.5): we have one host candidate and answer the
  browser's connectivity checks (STUN Binding, MESSAGE-INTEGRITY with our
  `a=ice-pwd`, FINGERPRINT); the browser is the controlling agent and
  nominates. We send to the address its checks came from.
- rtcp-mux (RFC 5761) and demultiplexing by the first byte (RFC 7983): STUN,
  DTLS and SRTP/SRTCP share one port.
- Codecs: PCMU or PCMA (RFC 7874 makes both mandatory in every browser) and
  telephone-event: the agent leg carries G.711 as the caller's leg does, never
  transcoded.

The IVR offers (it sends the INVITE to the agent's browser), so its SDP says
`a=setup:actpass` and the browser's answer picks the DTLS role: `active`
(what browsers answer) makes us the DTLS server, `passive` the client.
"""

from __future__ import annotations

import datetime
import enum
import hmac
import os
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from aioice import stun
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL, crypto

from ivr.srtp import SrtpContext

__all__ = [
    "DTLS_SRTP_SUITE", "WEBRTC_PROTO", "AnswerError", "DtlsCertificate", "PeerState", "WebRtcAnswer",
    "WebRtcPeer", "classify", "local_certificate", "offer_sdp", "parse_answer",
]

WEBRTC_PROTO = "UDP/TLS/RTP/SAVPF"
DTLS_SRTP_SUITE = "AES_CM_128_HMAC_SHA1_80"  # SRTP_AES128_CM_SHA1_80, the profile every browser offers
_SRTP_KEY_LEN, _SRTP_SALT_LEN = 16, 14
CERT_LIFETIME = datetime.timedelta(days=365)
CERT_RENEW_BEFORE = datetime.timedelta(days=1)  # a long-running process makes a new one in time
EARLY_DTLS_KEPT = 8  # DTLS datagrams kept while the SDP answer is still on its way
ICE_CHARS = string.ascii_letters + string.digits + "+/"  # ice-char (RFC 8839 §5.4)
_CIPHERS = b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA"

Kind = Literal["stun", "dtls", "rtp", "other"]
FINGERPRINT_MISMATCH = "the browser's certificate does not match the a=fingerprint of its SDP answer"


def classify(data: bytes) -> Kind:
    """What a datagram on the shared port is, by its first byte (RFC 7983 §7).

    0-3 STUN, 20-63 DTLS, 128-191 RTP or RTCP (rtcp-mux tells them apart by
    the payload type); anything else (ZRTP, TURN channels, junk) is dropped.
    """
    if not data:
        return "other"
    first = data[0]
    if first <= 3:
        return "stun"
    if 20 <= first <= 63:
        return "dtls"
    if 128 <= first <= 191:
        return "rtp"
    return "other"


# --- the certificate ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DtlsCertificate:
    """This process's DTLS identity: an ECDSA P-256 key, its self-signed certificate, the SDP fingerprint."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    fingerprint: str  # "sha-256 AB:CD:…", the value of a=fingerprint

    @classmethod
    def generate(cls) -> DtlsCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, os.urandom(8).hex())])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + CERT_LIFETIME)
                .sign(key, hashes.SHA256()))
        return cls(key, cert, "sha-256 " + fingerprint_of(cert))

    def context(self) -> SSL.Context:
        """A DTLS context offering SRTP_AES128_CM_SHA1_80 that asks the peer for its certificate.

        Any certificate is taken in the handshake (browsers' are self-signed);
        the peer is authenticated afterwards against its SDP fingerprint. Made
        once per certificate: loading the key into OpenSSL costs as much as a
        handshake step, and every leg's connection shares the context.
        """
        ctx = _contexts.get(self.fingerprint)
        if ctx is None:
            ctx = _contexts[self.fingerprint] = self._new_context()
        return ctx

    def _new_context(self) -> SSL.Context:
        ctx = SSL.Context(SSL.DTLS_METHOD)
        # The keys are exported once, from the certificate checked once: no renegotiation afterwards.
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_against_sdp)
        ctx.use_certificate(self.cert)
        ctx.use_privatekey(self.key)
        ctx.set_cipher_list(_CIPHERS)
        ctx.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80")
        return ctx


@dataclass(slots=True)
class _Expected:
    """A connection's app data: the fingerprint the browser's SDP answer named, and whether it was met."""

    fingerprint: str
    mismatch: bool = False


def _verify_against_sdp(conn: SSL.Connection, cert: crypto.X509, _errno: int, depth: int, _ok: int) -> bool:
    """OpenSSL's verdict on the browser's certificate, in the handshake: does it match the SDP fingerprint?

    Self-signed is expected (there is no chain to check). A mismatch aborts the
    handshake with a fatal alert (OpenSSL sends unknown_ca), so the browser
    learns at once. One
    function for the shared context; each connection carries its expectation
    as app data (no per-connection callback, no reference back to the peer).
    """
    if depth != 0:
        return True
    expected = conn.get_app_data()
    if not isinstance(expected, _Expected):
        return False
    if hmac.compare_digest(fingerprint_of(cert.to_cryptography()), expected.fingerprint):
        return True
    expected.mismatch = True
    return False


def fingerprint_of(cert: x509.Certificate) -> str:
    """The SHA-256 fingerprint as SDP writes it: upper-case hex pairs joined by colons."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


_certificate: DtlsCertificate | None = None
_contexts: dict[str, SSL.Context] = {}


def local_certificate() -> DtlsCertificate:
    """The process's certificate, made on first use (and again a day before it would expire)."""
    global _certificate
    if _certificate is None or _certificate.cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC) \
            < CERT_RENEW_BEFORE:
        _certificate = DtlsCertificate.generate()
    return _certificate


# --- SDP --------------------------------------------------------------------------------------

CODECS = {0: "PCMU", 8: "PCMA"}


def offer_sdp(*, address: str, port: int, payload_type: int, ufrag: str, pwd: str, fingerprint: str, ssrc: int,
              dtmf_payload_type: int = 101, session_id: int | None = None) -> str:
    """The whole SDP offer for a browser agent leg: one audio section, ICE-lite, DTLS actpass, rtcp-mux."""
    if payload_type not in CODECS:
        raise ValueError(f"a browser leg carries PCMU (0) or PCMA (8), not payload type {payload_type}")
    sid = session_id if session_id is not None else secrets.randbelow(2**62)
    return "\r\n".join([
        "v=0",
        f"o=- {sid} 1 IN IP4 {address}",
        "s=-",
        "t=0 0",
        "a=ice-lite",  # session-level only (RFC 8839 §5.3)
        "a=group:BUNDLE 0",
        f"m=audio {port} {WEBRTC_PROTO} {payload_type} {dtmf_payload_type}",
        f"c=IN IP4 {address}",
        "a=mid:0",
        "a=sendrecv",
        "a=rtcp-mux",
        f"a=rtpmap:{payload_type} {CODECS[payload_type]}/8000",
        f"a=rtpmap:{dtmf_payload_type} telephone-event/8000",
        f"a=fmtp:{dtmf_payload_type} 0-15",
        "a=ptime:20",
        f"a=ice-ufrag:{ufrag}",
        f"a=ice-pwd:{pwd}",
        f"a=fingerprint:{fingerprint}",
        "a=setup:actpass",
        f"a=candidate:1 1 udp 2130706431 {address} {port} typ host",
        "a=end-of-candidates",
        f"a=ssrc:{ssrc} cname:ivr",
        "",
    ])


class AnswerError(ValueError):
    """A browser's SDP answer we cannot use; the message says why (the leg is ended)."""


@dataclass(frozen=True, slots=True)
class WebRtcAnswer:
    """What the media layer needs from the browser's SDP answer."""

    fingerprint_algorithm: str  # "sha-256"
    fingerprint: str  # upper-case hex pairs with colons
    ice_ufrag: str
    ice_pwd: str
    setup: str  # "active" (we are the DTLS server) or "passive" (we are the client)
    payload_types: tuple[int, ...]


def parse_answer(sdp: str, payload_type: int) -> WebRtcAnswer:
    """Read the browser's answer to our offer; AnswerError when it cannot carry the call.

    Media-level attributes win over session-level ones (RFC 8839/8842 allow
    ICE credentials and the fingerprint at either level).
    """
    session: dict[str, list[str]] = {}
    media: dict[str, list[str]] | None = None
    m_line: list[str] | None = None
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            if m_line is not None:
                break  # we offered one section: the first audio section is the answer to it
            m_line = line[2:].split()
            media = {}
            continue
        if line.startswith("a="):
            name, _, value = line[2:].partition(":")
            (media if media is not None else session).setdefault(name, []).append(value.strip())
    if m_line is None or media is None:
        raise AnswerError("the answer has no media section")
    if len(m_line) < 4 or m_line[0] != "audio":
        raise AnswerError(f"the answer's first section is not audio: m={' '.join(m_line)[:60]!r}")
    if m_line[1] == "0":
        raise AnswerError("the browser rejected the audio section (port 0)")
    if "SAVP" not in m_line[2] or "TLS" not in m_line[2]:
        raise AnswerError(f"the answer's profile is {m_line[2][:40]!r}, not {WEBRTC_PROTO}")
    payload_types = tuple(int(f) for f in m_line[3:] if f.isdigit())
    if payload_type not in payload_types:
        raise AnswerError(f"the browser did not accept {CODECS.get(payload_type, payload_type)} "
                          f"(answered payload types {list(payload_types)})")

    def attr(name: str) -> str:
        values = media.get(name) or session.get(name)
        if not values or not values[0]:
            raise AnswerError(f"the answer has no a={name}")
        return values[0]

    # Several a=fingerprint lines (one per hash, RFC 8122 §5) are allowed: we check the SHA-256 one.
    fingerprints = [f.partition(" ") for f in (media.get("fingerprint") or session.get("fingerprint") or [])]
    if not fingerprints:
        raise AnswerError("the answer has no a=fingerprint")
    value = next((v for algorithm, _, v in fingerprints if algorithm.lower() == "sha-256"), "")
    if not value:
        algorithms = ", ".join(a[:20] for a, _, _ in fingerprints)
        raise AnswerError(f"fingerprint algorithm {algorithms} is not supported (sha-256 only)")
    value = value.strip().upper()
    if len(value) != 95 or any(c not in "0123456789ABCDEF:" for c in value):
        raise AnswerError(f"malformed sha-256 fingerprint {value[:100]!r}")
    setup = attr("setup").lower() if (media.get("setup") or session.get("setup")) else "active"
    if setup not in ("active", "passive"):  # actpass/holdconn are not answers (RFC 4145 §4.1, 5763 §5)
        raise AnswerError(f"a=setup:{setup[:20]} is not a valid answer to actpass")
    return WebRtcAnswer("sha-256", value, attr("ice-ufrag"), attr("ice-pwd"), setup, payload_types)


def _ice_string(length: int) -> str:
    return "".join(secrets.choice(ICE_CHARS) for _ in range(length))


# --- the peer ---------------------------------------------------------------------------------


class PeerState(enum.Enum):
    NEW = "new"  # offer made, waiting for the answer and the browser's checks
    CONNECTING = "connecting"  # DTLS handshake under way
    CONNECTED = "connected"  # keys exported: media may flow
    FAILED = "failed"
    CLOSED = "closed"


Addr = tuple[str, int]


class WebRtcPeer:
    """The ICE-lite agent and DTLS endpoint of one browser leg, sans-IO.

    `send(data, addr)` puts a datagram on the wire as it is (STUN and DTLS are
    never SRTP-protected); `on_connected(srtp, addr)` fires once, when ICE has
    a consented address, the handshake is done, the fingerprint matched and
    the keys are exported; `on_failed(reason)` fires once on any failure.
    The owner calls `stun` and `dtls` with each such datagram, `accept` with
    the browser's answer, and `timer` when `next_timeout()` seconds have
    passed (the DTLS retransmission timer).
    """

    def __init__(self, certificate: DtlsCertificate, send: Callable[[bytes, Addr], None]) -> None:
        self.certificate = certificate
        self.ufrag = _ice_string(8)
        self.pwd = _ice_string(24)
        self._send = send
        self.state = PeerState.NEW
        self.answer: WebRtcAnswer | None = None
        self.consented: set[Addr] = set()  # addresses whose connectivity check passed
        self.selected: Addr | None = None  # where we send: the nominated pair, else the last checked
        self.failure = ""
        self.on_connected: Callable[[SrtpContext, Addr], None] | None = None
        self.on_failed: Callable[[str], None] | None = None
        self._ssl: SSL.Connection | None = None
        self._early: list[tuple[bytes, Addr]] = []
        self._expected: _Expected | None = None
        self.stun_answered = self.stun_rejected = self.dtls_dropped = 0

    # ICE ------------------------------------------------------------------------------------
    def stun(self, data: bytes, addr: Addr) -> None:
        """Answer a Binding request that proves knowledge of our password; drop anything else."""
        try:
            request = stun.parse_message(data)  # checks FINGERPRINT when present
        except ValueError:
            self.stun_rejected += 1
            return
        if request.message_method != stun.Method.BINDING or request.message_class != stun.Class.REQUEST:
            return  # indications (keep-alives), responses: nothing to answer
        username = request.attributes.get("USERNAME", "")
        if not (isinstance(username, str) and username.split(":", 1)[0] == self.ufrag
                and request.check_message_integrity(self.pwd.encode())):
            self.stun_rejected += 1  # a stranger's check, or a stale session's: no answer, no consent
            return
        response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=request.transaction_id,
                                attributes={"XOR-MAPPED-ADDRESS": addr})
        response.add_message_integrity(self.pwd.encode())  # adds FINGERPRINT after it
        self._send(bytes(response), addr)
        self.stun_answered += 1
        new = addr not in self.consented
        self.consented.add(addr)
        if "USE-CANDIDATE" in request.attributes or self.selected is None:
            self.selected = addr  # the controlling browser nominated it (or it is all we have yet)
        if new:
            self._start_if_ready()

    # SDP answer ---------------------------------------------------------------------------
    def accept(self, answer: WebRtcAnswer) -> None:
        if self.answer is not None:
            raise AnswerError("the answer was already taken")
        self.answer = answer
        self._start_if_ready()

    # DTLS -----------------------------------------------------------------------------------
    def _start_if_ready(self) -> None:
        if self._ssl is not None or self.answer is None or self.state is not PeerState.NEW:
            return
        if self.answer.setup == "active":
            self._ssl = self._connection()
            self._ssl.set_accept_state()
            self.state = PeerState.CONNECTING
            early, self._early = self._early, []
            for data, addr in early:
                self.dtls(data, addr)
        elif self.consented:  # we are the client: start once the browser's checks reach us
            self._ssl = self._connection()
            self._ssl.set_connect_state()
            self.state = PeerState.CONNECTING
            self._step(self.selected)

    def _connection(self) -> SSL.Connection:
        assert self.answer is not None
        ssl = SSL.Connection(self.certificate.context(), None)  # None: memory BIOs
        self._expected = _Expected(self.answer.fingerprint)
        ssl.set_app_data(self._expected)  # what _verify_against_sdp checks the browser's certificate against
        return ssl

    def dtls(self, data: bytes, addr: Addr) -> None:
        """One DTLS datagram from `addr`: only from an address that passed a connectivity check."""
        if addr not in self.consented or self.state in (PeerState.FAILED, PeerState.CLOSED):
            self.dtls_dropped += 1
            return
        if self._ssl is None:  # the ClientHello outran the SDP answer (which comes over SIP, and later)
            # the browser repeats it on its timer until answered: one copy of each is enough
            if len(self._early) < EARLY_DTLS_KEPT and all(data != kept for kept, _ in self._early):
                self._early.append((data, addr))
            return
        self._ssl.bio_write(data)
        if self.state is PeerState.CONNECTING:
            self._step(addr)
            return
        try:  # after the handshake: alerts, close_notify, a retransmitted flight
            self._ssl.recv(1500)
        except SSL.ZeroReturnError:
            self.state = PeerState.CLOSED
        except SSL.Error:
            pass
        self._flush(addr)

    def next_timeout(self) -> float | None:
        """Seconds until the DTLS retransmission timer fires, None when none runs."""
        if self._ssl is None or self.state is not PeerState.CONNECTING:
            return None
        timeout = self._ssl.DTLSv1_get_timeout()
        return None if timeout is None else float(timeout)

    def timer(self) -> None:
        """The DTLS timer ran out: OpenSSL resends its last flight (doubling its timer), if any."""
        if self._ssl is not None and self.state is PeerState.CONNECTING:
            self._ssl.DTLSv1_handle_timeout()
            self._flush(self.selected)

    def _step(self, addr: Addr | None) -> None:
        assert self._ssl is not None
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            self._flush(addr)
            return
        except SSL.Error as exc:
            self._flush(addr)  # the alert
            mismatch = self._expected is not None and self._expected.mismatch
            self.fail(FINGERPRINT_MISMATCH if mismatch else f"DTLS handshake failed: {exc}")
            return
        self._flush(addr)
        if self._ssl is not None and self.state is PeerState.CONNECTING:  # (not ended while sending)
            self._handshake_done()

    def _flush(self, addr: Addr | None) -> None:
        ssl = self._ssl  # sending may re-enter this peer and end it (a peer in memory, in tests)
        if ssl is None:
            return
        while True:
            try:
                data = ssl.bio_read(1500)
            except SSL.WantReadError:
                return
            if addr is not None:
                self._send(data, addr)

    def _handshake_done(self) -> None:
        assert self._ssl is not None and self.answer is not None
        peer = self._ssl.get_peer_certificate(as_cryptography=True)
        if peer is None:
            self.fail("the browser presented no certificate")
            return
        if not hmac.compare_digest(fingerprint_of(peer), self.answer.fingerprint):  # as _verify_against_sdp did
            self.fail(FINGERPRINT_MISMATCH)
            return
        if self._ssl.get_selected_srtp_profile() != b"SRTP_AES128_CM_SHA1_80":
            self.fail("no SRTP protection profile was agreed in the DTLS handshake (use_srtp)")
            return
        km = self._ssl.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (_SRTP_KEY_LEN + _SRTP_SALT_LEN))
        k, s = _SRTP_KEY_LEN, _SRTP_SALT_LEN  # client key | server key | client salt | server salt (RFC 5764 §4.2)
        client = km[:k] + km[2 * k:2 * k + s]
        server = km[k:2 * k] + km[2 * k + s:]
        server_role = self.answer.setup == "active"
        srtp = SrtpContext(DTLS_SRTP_SUITE, remote_key=client if server_role else server,
                           local_key=server if server_role else client)
        self.state = PeerState.CONNECTED
        assert self.selected is not None  # DTLS is only taken from consented addresses
        if self.on_connected is not None:
            self.on_connected(srtp, self.selected)

    def fail(self, reason: str) -> None:
        if self.state in (PeerState.FAILED, PeerState.CLOSED):
            return
        self.state = PeerState.FAILED
        self.failure = reason
        self._ssl = None  # no more DTLS; and the connection's verify callback holds this peer
        if self.on_failed is not None:
            self.on_failed(reason)

    def close(self) -> None:
        """Tell the browser with a close_notify (when connected) and stop."""
        if self._ssl is not None and self.state is PeerState.CONNECTED:
            try:
                self._ssl.shutdown()
            except SSL.Error:
                pass
            self._flush(self.selected)
        if self.state not in (PeerState.FAILED,):
            self.state = PeerState.CLOSED
        self._ssl = None
        self.on_connected = None
        self.on_failed = None
