"""Hardening on loopback: a flood of malformed datagrams, then normal calls; the concurrent-call cap."""

from __future__ import annotations

import random
import re
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from .conftest import IvrProcess, sipp
from .test_e2e_sip import finished

pytestmark = pytest.mark.e2e
FUZZ_DATAGRAMS = 100_000


def seeds(ivr_port: int, source_port: int) -> list[bytes]:
    """Well-formed requests to mutate; INVITEs go to a number the IVR does not serve (404)."""
    via = f"Via: SIP/2.0/UDP 127.0.0.1:{source_port};branch=z9hG4bK{{n}};rport\r\n"
    common = (
        f"From: <sip:13800000001@127.0.0.1:{source_port}>;tag=fz{{n}}\r\nTo: <sip:99999@127.0.0.1:{ivr_port}>\r\n"
        f"Call-ID: fuzz-{{n}}@127.0.0.1\r\nMax-Forwards: 70\r\nContact: <sip:fz@127.0.0.1:{source_port}>\r\n"
    )
    sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\n"
    out = []
    for method, body in (("INVITE", sdp), ("OPTIONS", ""), ("REGISTER", ""), ("BYE", ""), ("CANCEL", ""),
                         ("ACK", ""), ("INFO", "Signal=5\r\n"), ("SUBSCRIBE", "")):
        ctype = "Content-Type: application/sdp\r\n" if method == "INVITE" else ""
        text = (f"{method} sip:99999@127.0.0.1:{ivr_port} SIP/2.0\r\n{via}{common}CSeq: 1 {method}\r\n{ctype}"
                f"Content-Length: {len(body)}\r\n\r\n{body}")
        out.append(text.encode())
    return out


def mutate(rng: random.Random, seed: bytes, n: int) -> bytes:
    data = bytearray(seed.replace(b"{n}", str(n).encode()))
    kind = rng.randrange(10)
    if kind == 0:  # flip bytes
        for _ in range(rng.randint(1, 12)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:  # truncate
        del data[rng.randrange(1, len(data)):]
    elif kind == 2:  # insert junk
        at = rng.randrange(len(data))
        data[at:at] = rng.randbytes(rng.randint(1, 200))
    elif kind == 3:  # drop a line
        lines = bytes(data).split(b"\r\n")
        del lines[rng.randrange(len(lines))]
        data = bytearray(b"\r\n".join(lines))
    elif kind == 4:  # repeat a header many times
        lines = bytes(data).split(b"\r\n")
        line = lines[rng.randrange(1, max(2, len(lines) - 3))]
        lines[1:1] = [line] * rng.randint(2, 300)
        data = bytearray(b"\r\n".join(lines))
    elif kind == 5:  # lie about the body length
        data = bytearray(re.sub(rb"Content-Length: \d+", b"Content-Length: " + str(rng.choice([-1, 99999999, 10**30])).encode(), bytes(data)))
    elif kind == 6:  # bare LF, or no line ends
        data = bytearray(bytes(data).replace(b"\r\n", rng.choice([b"\n", b"", b"\r"])))
    elif kind == 7:  # random bytes
        data = bytearray(rng.randbytes(rng.randint(0, 1500)))
    elif kind == 8:  # oversized
        data += b"X-Pad: " + b"a" * rng.randint(10_000, 60_000) + b"\r\n"
    else:  # non-UTF-8 in the start line
        data[0:0] = rng.randbytes(rng.randint(1, 8))
    return bytes(data[:65000])


def test_flood_of_malformed_datagrams_then_a_normal_call_succeeds(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # the fuzzing source is trusted (no per-source limits) and the overload budget is out of
    # reach, so every datagram reaches the parser: 503 here would be overload control answering
    ivr: IvrProcess = ivr_factory(ring_seconds=1, extra="[limits]\ntrusted = 127.0.0.1\nmax_invites_per_second = 100000\n")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    source_port = sock.getsockname()[1]
    rng = random.Random(4475)
    corpus = seeds(ivr.port, source_port)
    replies: Counter[str] = Counter()

    def drain() -> None:
        while True:
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                return
            status = data.split(b" ", 2)[1][:3].decode(errors="replace") if data.startswith(b"SIP/2.0 ") else "other"
            replies[status] += 1

    started = time.monotonic()
    for n in range(FUZZ_DATAGRAMS):
        try:
            sock.sendto(mutate(rng, rng.choice(corpus), n), ("127.0.0.1", ivr.port))
        except OSError:
            pass  # e.g. a datagram the kernel refuses; the IVR never saw it
        if n % 200 == 199:
            drain()
            time.sleep(0.002)  # bursts of 200: the IVR's socket buffer is not the thing under test
    time.sleep(1)
    drain()
    seconds = time.monotonic() - started
    print(f"fuzz: {FUZZ_DATAGRAMS} datagrams in {seconds:.1f} s; replies by status: {dict(sorted(replies.items()))}")

    assert ivr.proc.poll() is None, "the IVR died under malformed input"
    assert replies["404"] > 0, "well-formed INVITEs to an unknown number still get 404"
    # 501 (unknown method) and 505 (SIP version) are answers to the input; any other 5xx is our failure
    assert not {s for s in replies if s.startswith("5") and s not in ("501", "505")}, f"server errors: {replies}"
    finished(sipp(tmp_path, "options", ivr.port, timeout_s=10), 20)
    finished(sipp(tmp_path, "cancel_caller", ivr.port, timeout_s=10), 20)
    log = ivr.log()
    assert "Traceback" not in log
    bad_lines = log.count("Failed to parse SIP message") + log.count("event='sip_bad_request'")
    assert 0 < bad_lines <= 5 * (seconds + 5), f"{bad_lines} bad-input lines: the log is not rate-limited"
    assert re.search(r"more suppressed|suppressed_before=", log)
    assert replies["400"] > 0


def test_calls_beyond_max_calls_get_503_with_retry_after(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr = ivr_factory(ring_seconds=1, general="max_calls = 1")
    first = sipp(tmp_path, "silent_caller", ivr.port)
    time.sleep(2)
    try:
        finished(sipp(tmp_path, "busy_caller", ivr.port, timeout_s=10), 20)
    finally:
        first.proc.terminate()
    assert re.search(r"invite_rejected.*status=503 reason='max_calls reached'", ivr.log())
