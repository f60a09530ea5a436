"""End to end over UDP: the running IVR takes the desk's derived credentials for a browser seat.

The IVR (run_ivr.py) reads `[browser_phone] token_secret` and seats with `phone = browser`;
a REGISTER over real UDP with `801.<expiry>` / the derived password (as the desk issues them,
ivr.phone_credentials.issue) is challenged with MD5 alone, then binds seat 801. An expired
credential and one for a seat without a browser phone are refused 403 with their reason
in the log (for fail2ban, as any failed login).
"""

from __future__ import annotations

import hashlib
import re
import socket
import time
import uuid
from pathlib import Path

import pytest

from ivr.phone_credentials import issue

pytestmark = pytest.mark.e2e
TOKEN_SECRET = "udp-e2e-token-secret-0123456789abcdef012345"
AGENTS = f"""[browser_phone]
ws_url = ws://127.0.0.1:8088/sip
token_secret = {TOKEN_SECRET}
[801]
type = agent
seat_group = senior
secret = pw801-udp-e2e
host = dynamic
phone = browser
[802]
type = agent
seat_group = senior
secret = pw802-udp-e2e
host = dynamic
"""


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class Phone:
    """Just enough of a SIP registrar client over UDP: REGISTER, answer one digest challenge."""

    def __init__(self, ivr_port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(5)
        self.port = self.sock.getsockname()[1]
        self.ivr = ("127.0.0.1", ivr_port)
        self.uri = f"sip:127.0.0.1:{ivr_port}"
        self.call_id = uuid.uuid4().hex
        self.cseq = 0

    def send(self, seat: str, authorization: str = "") -> tuple[int, str]:
        self.cseq += 1
        lines = [
            f"REGISTER {self.uri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{uuid.uuid4().hex[:12]};rport",
            "Max-Forwards: 70",
            f"From: <sip:{seat}@127.0.0.1>;tag=t{self.cseq}",
            f"To: <sip:{seat}@127.0.0.1>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: <sip:{seat}@127.0.0.1:{self.port}>",
            "Expires: 300",
        ]
        if authorization:
            lines.append(f"Authorization: {authorization}")
        self.sock.sendto(("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode(), self.ivr)
        while True:
            text = self.sock.recv(65535).decode()
            status = int(text.split(" ", 2)[1])
            if status >= 200:
                return status, text

    def register(self, seat: str, username: str, password: str) -> tuple[int, list[str]]:
        """(final status, the 401's WWW-Authenticate headers)."""
        status, text = self.send(seat)
        assert status == 401, text
        challenges = re.findall(r"^WWW-Authenticate: (.+?)\r$", text, flags=re.MULTILINE | re.IGNORECASE)
        nonce = re.search(r'nonce="([^"]+)"', challenges[0]).group(1)  # type: ignore[union-attr]
        ha1, ha2 = md5(f"{username}:hotline:{password}"), md5(f"REGISTER:{self.uri}")
        response = md5(f"{ha1}:{nonce}:00000001:e2e:auth:{ha2}")
        authorization = (f'Digest username="{username}", realm="hotline", nonce="{nonce}", uri="{self.uri}", '
                         f'response="{response}", algorithm=MD5, qop=auth, nc=00000001, cnonce="e2e"')
        return self.send(seat, authorization)[0], challenges


def test_the_ivr_binds_a_browser_seat_registering_with_derived_credentials_and_refuses_the_rest(
    ivr_factory, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ivr = ivr_factory(extra=AGENTS)
    phone = Phone(ivr.port)
    good = issue(TOKEN_SECRET, "801", time.time(), 3600)
    status, challenges = phone.register("801", good.authorization_user, good.password)
    assert len(challenges) == 1 and "algorithm=MD5" in challenges[0]  # JsSIP reads the first challenge only
    assert status == 200
    deadline = time.monotonic() + 5
    while "event='agent_registered' agent='801'" not in ivr.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "event='agent_registered' agent='801'" in ivr.log()

    expired = issue(TOKEN_SECRET, "801", time.time() - 7200, 3600)
    assert phone.register("801", expired.authorization_user, expired.password)[0] == 403
    not_browser = issue(TOKEN_SECRET, "802", time.time(), 3600)
    assert phone.register("802", not_browser.authorization_user, not_browser.password)[0] == 403
    deadline = time.monotonic() + 5
    while "agent has no browser phone" not in ivr.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = ivr.log()
    assert f"user='{expired.authorization_user}' reason='browser credential expired'" in log
    assert f"user='{not_browser.authorization_user}' reason='agent has no browser phone'" in log
