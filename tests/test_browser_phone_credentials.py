"""The browser phone's derived credentials (ivr.phone_credentials) as the registrar takes them.

The desk issues `801.<expiry>` / base64url(HMAC-SHA256(token_secret, "801.<expiry>")); the
registrar derives the same password and binds seat 801 while the credential is unexpired.
Digest answers are computed as JsSIP computes them: MD5, qop=auth (RFC 2617 / 7616 3.4.1).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest

from ivr.config import ConfigError, load_config
from ivr.phone_credentials import BrowserCredentials, derive_password, issue, split_username
from ivr.registrar import REALM, Challenge, Refused, Registered, Registrar

SECRET = "s" * 40
NOW = 1_800_000_000.0
URI = "sip:127.0.0.1"
PHONE = ("127.0.0.1", 40000)


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def registrar(now: float = NOW, seats: tuple[str, ...] = ("801",)) -> Registrar:
    return Registrar({"801": "change-me-801", "802": "change-me-802"}, clock=lambda: now,
                     policies={seat: "md5" for seat in seats},
                     browser=BrowserCredentials(SECRET, seats, lifetime_s=3600))


def answer(reg: Registrar, username: str, password: str) -> dict[str, str]:
    challenge = reg.register("REGISTER", None, PHONE, 600, request_uri=URI, user="801")
    assert isinstance(challenge, Challenge)
    (header,) = challenge.headers  # a browser seat is offered MD5 alone: JsSIP reads only the first challenge
    assert "algorithm=MD5" in header
    nonce = header.split('nonce="')[1].split('"')[0]
    ha1, ha2 = md5(f"{username}:{REALM}:{password}"), md5(f"REGISTER:{URI}")
    response = md5(f"{ha1}:{nonce}:00000001:c0ffee:auth:{ha2}")
    return {"username": username, "realm": REALM, "nonce": nonce, "uri": URI, "response": response,
            "algorithm": "MD5", "qop": "auth", "nc": "00000001", "cnonce": "c0ffee"}


def test_the_password_is_unpadded_base64url_of_hmac_sha256_over_the_username() -> None:
    mac = hmac.new(SECRET.encode(), b"801.1800003600", hashlib.sha256).digest()
    assert derive_password(SECRET, "801.1800003600") == base64.urlsafe_b64encode(mac).decode().rstrip("=")
    issued = issue(SECRET, "801", NOW, 3600)
    assert issued.authorization_user == "801.1800003600" and issued.expires == 1_800_003_600
    assert issued.password == derive_password(SECRET, "801.1800003600")


def test_a_valid_credential_registers_the_seat_not_the_derived_username() -> None:
    reg = registrar()
    issued = issue(SECRET, "801", NOW, 3600)
    decision = reg.register("REGISTER", answer(reg, issued.authorization_user, issued.password), PHONE, 600,
                            request_uri=URI)
    assert decision == Registered("801", PHONE, 600)


def test_an_expired_credential_is_refused() -> None:
    issued = issue(SECRET, "801", NOW - 7200, 3600)  # expired an hour ago
    reg = registrar()
    decision = reg.register("REGISTER", answer(reg, issued.authorization_user, issued.password), PHONE, 600,
                            request_uri=URI)
    assert decision == Refused(issued.authorization_user, "browser credential expired")


def test_a_credential_for_an_agent_without_a_browser_phone_is_refused() -> None:
    issued = issue(SECRET, "802", NOW, 3600)  # 802 has phone = sip
    reg = registrar()
    decision = reg.register("REGISTER", answer(reg, issued.authorization_user, issued.password), PHONE, 600,
                            request_uri=URI)
    assert decision == Refused(issued.authorization_user, "agent has no browser phone")


def test_801s_password_does_not_register_another_seat() -> None:
    issued = issue(SECRET, "801", NOW, 3600)
    reg = registrar(seats=("801", "802"))
    other = issued.authorization_user.replace("801.", "802.")
    decision = reg.register("REGISTER", answer(reg, other, issued.password), PHONE, 600, request_uri=URI)
    assert decision == Refused(other, "wrong password")


@pytest.mark.parametrize("tamper", ["expiry", "password", "secret"])
def test_a_tampered_credential_is_refused(tamper: str) -> None:
    issued = issue(SECRET, "801", NOW, 1800)
    username, password = issued.authorization_user, issued.password
    if tamper == "expiry":  # pushed later, within the lifetime: only the HMAC tells
        username = f"801.{issued.expires + 600}"
    elif tamper == "password":
        password = password[:-1] + ("A" if password[-1] != "A" else "B")
    else:
        password = derive_password("x" * 40, username)
    reg = registrar()
    decision = reg.register("REGISTER", answer(reg, username, password), PHONE, 600, request_uri=URI)
    assert decision == Refused(username, "wrong password")


def test_an_expiry_beyond_the_lifetime_is_refused_even_when_signed() -> None:
    issued = issue(SECRET, "801", NOW, 30 * 86_400)
    reg = registrar()
    decision = reg.register("REGISTER", answer(reg, issued.authorization_user, issued.password), PHONE, 600,
                            request_uri=URI)
    assert decision == Refused(issued.authorization_user, "browser credential outlives its lifetime")


def test_without_a_token_secret_derived_usernames_are_unknown_agents() -> None:
    reg = Registrar({"801": "change-me-801"}, clock=lambda: NOW, policies={"801": "md5"})
    issued = issue(SECRET, "801", NOW, 3600)
    decision = reg.register("REGISTER", answer(reg, issued.authorization_user, issued.password), PHONE, 600,
                            request_uri=URI)
    assert decision == Refused(issued.authorization_user, "unknown agent")


def test_the_seat_secret_still_registers_a_sip_phone() -> None:
    reg = registrar()
    decision = reg.register("REGISTER", answer(reg, "801", "change-me-801"), PHONE, 600, request_uri=URI)
    assert decision == Registered("801", PHONE, 600)


@pytest.mark.parametrize("username", ["801", "801.", ".5", "801.x", "a.1", "801.1234567890123"])
def test_only_seat_dot_digits_is_a_derived_username(username: str) -> None:
    assert split_username(username) is None


CONF = """\
[general]
numbers = 4008001234
[browser_phone]
{browser}
[801]
type = agent
seat_group = senior
secret = change-me-801
host = dynamic
phone = {phone}
"""


def test_a_browser_seat_is_challenged_with_md5_alone_and_needs_the_url_and_secret(tmp_path: Path) -> None:
    path = tmp_path / "sip.conf"
    path.write_text(CONF.format(browser=f"ws_url = wss://ivr.example.com/sip\ntoken_secret = {SECRET}",
                                phone="both"))
    config = load_config(path)
    (agent,) = config.agents
    assert agent.browser_phone and agent.digest_policy == "md5" and not agent.auto_answer
    path.write_text(CONF.format(browser="ws_url = wss://ivr.example.com/sip", phone="browser"))
    with pytest.raises(ConfigError, match=r"token_secret.*801 has phone = browser"):
        load_config(path)
    path.write_text(CONF.format(browser="", phone="sip"))
    assert load_config(path).agents[0].digest_policy == "strict"
    path.write_text(CONF.format(browser="", phone="softphone"))
    with pytest.raises(ConfigError, match="phone"):
        load_config(path)
