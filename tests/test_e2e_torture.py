"""RFC 4475 (SIP torture test messages) against the IVR over real UDP.

Every message of RFC 4475 is in tests/rfc4475/ as sent on the wire. Each is
sent from 127.0.0.44; the IVR answers to the address in the top Via, which
for these messages is the source address (`received`) at port 5060, 5050
(quotbal) or 5070 (mpart01), so the test listens on all three. The expected
answer per message follows the RFC's text for a UAS; where the RFC allows a
choice, the one the IVR makes is noted.
"""

from __future__ import annotations

import re
import select
import socket
import time
from pathlib import Path

import pytest

from .conftest import IvrProcess, sipp
from .test_e2e_sip import finished

pytestmark = pytest.mark.e2e
MESSAGES = Path(__file__).parent / "rfc4475"
SOURCE = "127.0.0.44"
NO_ANSWER = None

EXPECTED: dict[str, int | None] = {
    # 3.1.1 valid messages: processed normally (our answers: 404 for users we don't
    # serve, 401 to a REGISTER without credentials, 200 to OPTIONS)
    "wsinv": 481,  # its To has a tag: an INVITE in a dialog we never had (RFC 3261 12.2.2)
    "intmeth": 501, "esc01": 404, "escnull": 401, "esc02": 501, "lwsdisp": 200,
    "longreq": 404, "dblreq": 401, "semiuri": 200, "transports": 200,
    "mpart01": 405,  # MESSAGE is a method we know and do not take
    "unreason": NO_ANSWER, "noreason": NO_ANSWER,  # responses to nothing we sent
    # 3.1.2 invalid messages
    "badinv01": 400, "clerr": 400, "ncl": 400, "scalar02": 400, "scalarlg": NO_ANSWER, "quotbal": 400,
    "ltgtruri": 400, "lwsruri": 400,
    "lwsstart": 400, "trws": 400,  # the RFC allows rejecting extra SP in the Request-Line
    "escruri": 400, "baddate": 400, "regbadct": 400, "badaspec": 400, "baddn": 400, "badvers": 505,
    "mismatch01": 400, "mismatch02": 501, "bigcode": NO_ANSWER,  # NEWMETHOD: 501 is what the RFC names first
    # 3.2 transaction layer
    "badbranch": 200,
    # 3.3 application layer
    "insuf": 400, "unkscm": 416, "novelsc": 416, "unksm2": 401, "bext01": 420,
    "invut": 404, "sdp01": 404,  # the user is unknown, which RFC 3261 8.2.2.1 checks first
    "regaut01": 401, "multi01": 400, "mcl01": 400, "bcast": NO_ANSWER, "zeromf": 200,
    "cparam01": 401, "cparam02": 401, "regescrt": 401,
    # 3.4 backward compatibility
    "inv2543": 404,
}


def _call_id(message: bytes) -> bytes | None:
    found = re.search(rb"^(?:call-id|i)\s*:\s*(\S+)", message, re.IGNORECASE | re.MULTILINE)
    return found.group(1) if found else None


def send_and_collect(socks: list[socket.socket], data: bytes, port: int, wait: float = 0.25) -> list[bytes]:
    """The answers to `data`: a retransmission of an earlier message's final response (Timer G,
    which the test never ACKs) may arrive meanwhile; it belongs to that message, not this one."""
    socks[0].sendto(data, ("127.0.0.1", port))
    got, end = [], time.monotonic() + wait
    while time.monotonic() < end:
        ready, _, _ = select.select(socks, [], [], 0.02)
        got += [s.recv(65535) for s in ready]
    sent = _call_id(data)
    return [g for g in got if not g.startswith(b"SIP/2.0 100 ") and (sent is None or _call_id(g) == sent)]


@pytest.fixture
def listeners() -> list[socket.socket]:
    socks = []
    for port in (5060, 5050, 5070):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((SOURCE, port))
        socks.append(s)
    yield socks
    for s in socks:
        s.close()


def test_every_rfc4475_message_gets_the_answer_the_rfc_expects(ivr_factory, listeners, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr: IvrProcess = ivr_factory(ring_seconds=1)
    files = {p.stem: p for p in MESSAGES.glob("*.sip")}
    assert set(files) == set(EXPECTED), "tests/rfc4475 holds the 49 messages of RFC 4475"
    wrong = {}
    for name, expected in sorted(EXPECTED.items()):
        answers = send_and_collect(listeners, files[name].read_bytes(), ivr.port)
        codes = [int(a.split(b" ", 2)[1]) for a in answers]
        if codes != ([] if expected is None else [expected]):
            wrong[name] = (expected, codes)
        if name == "bext01" and answers:
            assert re.search(rb"\r\nUnsupported: nothingSupportsThis, nothingSupportsThisEither\r\n", answers[0])
        time.sleep(0.2)  # stay under the per-source rates; this tests answers, not limits
    assert wrong == {}, f"message: (expected, got) {wrong}"

    assert ivr.proc.poll() is None
    log = ivr.log()
    assert "Traceback" not in log
    # each refusal is logged with where it came from
    assert len(re.findall(rf"sip_bad_request.*source='{SOURCE}:5060'", log)) >= 20
    finished(sipp(tmp_path, "options", ivr.port, timeout_s=10), 20)


def test_hotline_invites_with_a_body_or_accept_we_cannot_handle(ivr_factory, listeners) -> None:  # type: ignore[no-untyped-def]
    """invut and sdp01 sent to the hotline number itself: 415 and 406, both with Accept."""
    ivr: IvrProcess = ivr_factory(ring_seconds=1)
    for name, code in (("invut", 415), ("sdp01", 406)):
        data = (MESSAGES / f"{name}.sip").read_bytes()
        data = re.sub(rb"^INVITE sip:[^ ]+ ", f"INVITE sip:95000@127.0.0.1:{ivr.port} ".encode(), data)
        (answer,) = send_and_collect(listeners, data, ivr.port)
        assert answer.startswith(f"SIP/2.0 {code} ".encode()), answer[:60]
        assert b"\r\nAccept: application/sdp\r\n" in answer


def test_no_toll_fraud_path_refer_and_foreign_numbers_are_refused(ivr_factory) -> None:  # type: ignore[no-untyped-def]
    """A caller cannot make the IVR call anywhere: a transfer (REFER) in a call gets 501, other numbers 404."""
    ivr: IvrProcess = ivr_factory(ring_seconds=0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    port = sock.getsockname()[1]

    def request(method: str, uri: str, cseq: int, *, to_tag: str = "", body: str = "", extra: str = "") -> None:
        ctype = "Content-Type: application/sdp\r\n" if body else ""
        tag = f";tag={to_tag}" if to_tag else ""
        sock.sendto((f"{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKtf{method}{cseq};rport\r\n"
                     f"From: <sip:13800000001@127.0.0.1:{port}>;tag=fraud\r\nTo: <sip:95000@127.0.0.1:{ivr.port}>{tag}\r\n"
                     f"Call-ID: toll-fraud@127.0.0.1\r\nCSeq: {cseq} {method}\r\nContact: <sip:13800000001@127.0.0.1:{port}>\r\n"
                     f"Max-Forwards: 70\r\n{extra}{ctype}Content-Length: {len(body)}\r\n\r\n{body}").encode(), ("127.0.0.1", ivr.port))

    def final(method: str) -> bytes:
        while True:
            data = sock.recv(65535)
            if data.startswith(b"SIP/2.0 ") and not data.startswith((b"SIP/2.0 100", b"SIP/2.0 180")) and f" {method}\r\n".encode() in data:
                return data

    sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
    uri = f"sip:95000@127.0.0.1:{ivr.port}"
    request("INVITE", uri, 1, body=sdp)
    ok = final("INVITE")
    assert ok.startswith(b"SIP/2.0 200 ")
    to_tag = re.search(rb"\r\nTo: [^\r]*;tag=([^;\r]+)", ok).group(1).decode()  # type: ignore[union-attr]
    request("ACK", uri, 1, to_tag=to_tag)
    request("REFER", uri, 2, to_tag=to_tag, extra="Refer-To: <sip:0099123456789@203.0.113.5>\r\n")
    assert final("REFER").startswith(b"SIP/2.0 501 "), "the IVR does not transfer calls where a caller asks"
    request("BYE", uri, 3, to_tag=to_tag)
    assert final("BYE").startswith(b"SIP/2.0 200 ")
    sock.close()
    assert "agent_rung" not in ivr.log(), "the only calls the IVR places are to its agents, and none was rung"
