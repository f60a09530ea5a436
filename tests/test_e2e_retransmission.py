"""Retransmissions over real UDP: the field bugs of the old SIP layer, each pinned by a test.

A scripted caller (a plain UDP socket) plays the parts SIPp cannot stage
exactly: the same INVITE twice, the same BYE twice, an IVR BYE left
unanswered. Each would have failed on the old aiosipua transaction layer.
"""

from __future__ import annotations

import re
import socket
import time
import uuid

import pytest

from .conftest import IvrProcess
from .test_e2e_sip import crm_rows

pytestmark = pytest.mark.e2e


class ScriptedPhone:
    """A UDP socket that sends hand-written SIP and collects what comes back."""

    def __init__(self, ivr: IvrProcess, host: str = "127.0.0.1") -> None:
        self.ivr = ivr
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the IVR's audio lands here, unread
        self.rtp.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.call_id = f"{uuid.uuid4().hex}@127.0.0.1"
        self.from_tag = uuid.uuid4().hex[:8]
        self.to_tag = ""

    def close(self) -> None:
        self.sock.close()
        self.rtp.close()

    def send(self, text: str) -> None:
        self.sock.sendto(text.replace("\n", "\r\n").encode(), ("127.0.0.1", self.ivr.port))

    def invite(self, branch: str, body_proto: str = "RTP/AVP", extra_sdp: str = "") -> str:
        sdp = (f"v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\n"
               f"m=audio {self.rtp.getsockname()[1]} {body_proto} 0 101\na=rtpmap:0 PCMU/8000\n"
               f"a=rtpmap:101 telephone-event/8000\n{extra_sdp}").replace("\n", "\r\n")
        return (f"INVITE sip:95000@127.0.0.1:{self.ivr.port} SIP/2.0\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch}\n"
                f"Max-Forwards: 70\nFrom: <sip:13800000001@127.0.0.1>;tag={self.from_tag}\n"
                f"To: <sip:95000@127.0.0.1>\nCall-ID: {self.call_id}\nCSeq: 1 INVITE\n"
                f"Contact: <sip:13800000001@127.0.0.1:{self.port}>\nContent-Type: application/sdp\n"
                f"Content-Length: {len(sdp)}\n\n") + sdp.replace("\r\n", "\n")

    def in_dialog(self, method: str, cseq: int, branch: str) -> str:
        return (f"{method} sip:95000@127.0.0.1:{self.ivr.port} SIP/2.0\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch}\n"
                f"Max-Forwards: 70\nFrom: <sip:13800000001@127.0.0.1>;tag={self.from_tag}\n"
                f"To: <sip:95000@127.0.0.1>;tag={self.to_tag}\nCall-ID: {self.call_id}\nCSeq: {cseq} {method}\n"
                f"Content-Length: 0\n\n")

    def collect(self, seconds: float) -> list[tuple[float, str]]:
        """Every message received within `seconds`, with its arrival time."""
        got: list[tuple[float, str]] = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                break
            got.append((time.monotonic(), data.decode("utf-8", "replace")))
        return got

    def until(self, predicate, seconds: float = 10) -> list[tuple[float, str]]:  # type: ignore[no-untyped-def]
        got: list[tuple[float, str]] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            got += self.collect(0.1)
            if any(predicate(text) for _, text in got):
                return got
        raise AssertionError(f"not seen in {seconds} s: {[t.splitlines()[0] for _, t in got]}\n{self.ivr.log()[-3000:]}")


def status_line(text: str) -> str:
    return text.split("\r\n", 1)[0]


def to_tags(text: str) -> list[str]:
    to = next(line for line in text.split("\r\n") if line.lower().startswith(("to:", "t:")))
    return re.findall(r";\s*tag=([^;>\s]+)", to)


def cseq_of(text: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in text.split("\r\n") if line.lower().startswith("cseq:"))


def answer_call(phone: ScriptedPhone, *, duplicate_invite: bool = False) -> list[tuple[float, str]]:
    phone.send(phone.invite("z9hG4bK-inv1"))
    if duplicate_invite:
        time.sleep(0.2)
        phone.send(phone.invite("z9hG4bK-inv1"))  # the same INVITE, as after a lost 100/180
    got = phone.until(lambda t: status_line(t).startswith("SIP/2.0 200") and "INVITE" in cseq_of(t))
    ok = next(t for _, t in got if status_line(t).startswith("SIP/2.0 200"))
    phone.to_tag = to_tags(ok)[0]
    phone.send(phone.in_dialog("ACK", 1, "z9hG4bK-ack1"))
    return got


def test_a_retransmitted_invite_is_one_call_not_two(ivr_factory) -> None:
    ivr = ivr_factory()
    phone = ScriptedPhone(ivr)
    try:
        got = answer_call(phone, duplicate_invite=True)
        got += phone.collect(1.0)
        phone.send(phone.in_dialog("BYE", 2, "z9hG4bK-bye1"))
        got += phone.until(lambda t: "BYE" in cseq_of(t) and status_line(t).startswith("SIP/2.0 200"))
    finally:
        phone.close()
    tags = {to_tags(t)[0] for _, t in got if status_line(t).startswith("SIP/2.0 1") is False and to_tags(t)}
    assert tags == {phone.to_tag}, f"responses under more than one To tag: {tags}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not crm_rows(ivr, "outcome is not null"):
        time.sleep(0.2)
    rows = crm_rows(ivr)
    assert len(rows) == 1 and rows[0]["outcome"] == "caller_hangup", [dict(r) for r in rows]
    assert ivr.log().count("event='invited'") == 1


def test_a_retransmitted_bye_gets_the_same_200_not_481(ivr_factory) -> None:
    ivr = ivr_factory()
    phone = ScriptedPhone(ivr)
    try:
        answer_call(phone)
        phone.send(phone.in_dialog("BYE", 2, "z9hG4bK-bye1"))
        first = phone.until(lambda t: "BYE" in cseq_of(t))
        phone.send(phone.in_dialog("BYE", 2, "z9hG4bK-bye1"))  # our 200 was "lost": the BYE again
        again = phone.until(lambda t: "BYE" in cseq_of(t))
    finally:
        phone.close()
    answers = [status_line(t) for _, t in first + again if "BYE" in cseq_of(t)]
    assert answers and all(a.startswith("SIP/2.0 200") for a in answers), answers


def test_the_ivr_resends_its_bye_until_it_is_answered(ivr_factory) -> None:
    ivr = ivr_factory(extra="[silence]\nwait_seconds = 1")  # a silent caller: the IVR hangs up itself
    phone = ScriptedPhone(ivr)
    try:
        answer_call(phone)
        byes = phone.until(lambda t: t.startswith("BYE "), seconds=40)
        byes += phone.collect(2.0)  # unanswered: Timer E resends at 0.5, 1.5 s …
        sent = [(at, t) for at, t in byes if t.startswith("BYE ")]
        assert len(sent) >= 3, f"BYE sent {len(sent)} times in 2 s without an answer"
        bye = sent[-1][1]
        reply = "\r\n".join(line for line in bye.split("\r\n")
                            if line.lower().split(":")[0] in ("via", "from", "to", "call-id", "cseq"))
        phone.sock.sendto(f"SIP/2.0 200 OK\r\n{reply}\r\nContent-Length: 0\r\n\r\n".encode(),
                          ("127.0.0.1", ivr.port))
        after = [t for _, t in phone.collect(3.0) if t.startswith("BYE ")]
    finally:
        phone.close()
    assert after == [], "the IVR kept resending its BYE after the 200"
    assert len({cseq_of(t) for _, t in sent}) == 1, "retransmissions are the same request"


def test_a_481_to_a_bye_with_a_to_tag_carries_exactly_one_tag(ivr_factory) -> None:
    ivr = ivr_factory()
    phone = ScriptedPhone(ivr)
    phone.to_tag = "abc123"  # a dialog the IVR never had
    try:
        phone.send(phone.in_dialog("BYE", 2, "z9hG4bK-stray"))
        got = phone.until(lambda t: t.startswith("SIP/2.0 481"))
    finally:
        phone.close()
    answer = next(t for _, t in got if t.startswith("SIP/2.0 481"))
    assert to_tags(answer) == ["abc123"]


def test_an_srtp_offer_the_ivr_cannot_honour_gets_488_never_clear_audio(ivr_factory) -> None:
    ivr = ivr_factory()
    phone = ScriptedPhone(ivr)
    crypto = "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVzcyAoc2VxdWVuY2Up\n"
    try:
        phone.send(phone.invite("z9hG4bK-srtp", body_proto="RTP/SAVP", extra_sdp=crypto))
        got = phone.until(lambda t: status_line(t).startswith(("SIP/2.0 2", "SIP/2.0 4", "SIP/2.0 5")))
    finally:
        phone.close()
    finals = [status_line(t) for _, t in got if not status_line(t).startswith("SIP/2.0 1")]
    assert finals[0].startswith("SIP/2.0 488"), finals
