"""Digest authentication of agents' REGISTERs: challenge, accept, refuse, expire, replay."""

from __future__ import annotations

import hashlib

from ivr.registrar import DEFAULT_EXPIRES, MAX_EXPIRES, NONCE_TTL_S, REALM, Challenge, Refused, Registered, Registrar

PHONE = ("127.0.0.1", 5090)


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324


def answer(challenge: Challenge, user: str, password: str, nc: str = "00000001", uri: str = "sip:127.0.0.1") -> dict[str, str]:
    nonce = challenge.header.split('nonce="')[1].split('"')[0]
    ha1, ha2 = md5(f"{user}:{REALM}:{password}"), md5(f"REGISTER:{uri}")
    response = md5(f"{ha1}:{nonce}:{nc}:abc:auth:{ha2}")
    return {"username": user, "realm": REALM, "nonce": nonce, "uri": uri, "response": response,
            "qop": "auth", "nc": nc, "cnonce": "abc"}


def test_register_is_challenged_then_accepted_with_the_right_password() -> None:
    now = [1000.0]
    reg = Registrar({"801": "s3cret"}, clock=lambda: now[0])
    challenge = reg.register("REGISTER", None, PHONE, 300)
    assert isinstance(challenge, Challenge) and 'qop="auth"' in challenge.header
    assert reg.register("REGISTER", answer(challenge, "801", "s3cret"), PHONE, 300) == Registered("801", PHONE, 300)


def test_wrong_password_unknown_agent_and_replay_are_refused() -> None:
    reg = Registrar({"801": "s3cret"})
    challenge = reg.register("REGISTER", None, PHONE, 300)
    assert isinstance(challenge, Challenge)
    assert reg.register("REGISTER", answer(challenge, "801", "guess"), PHONE, 300) == Refused("801", "wrong password")
    assert reg.register("REGISTER", answer(challenge, "999", "x"), PHONE, 300) == Refused("999", "unknown agent")
    good = answer(challenge, "801", "s3cret")
    assert isinstance(reg.register("REGISTER", good, PHONE, 300), Registered)
    assert reg.register("REGISTER", good, PHONE, 300) == Refused("801", "replayed credentials")
    # the next request of the same client counts up nc: accepted
    assert isinstance(reg.register("REGISTER", answer(challenge, "801", "s3cret", nc="00000002"), PHONE, 300), Registered)


def test_forged_or_expired_nonce() -> None:
    now = [1000.0]
    reg = Registrar({"801": "s3cret"}, clock=lambda: now[0])
    challenge = reg.register("REGISTER", None, PHONE, 300)
    assert isinstance(challenge, Challenge)
    forged = answer(Challenge('Digest nonce="1000.00:0000"'), "801", "s3cret")
    assert reg.register("REGISTER", forged, PHONE, 300) == Refused("801", "bad nonce or realm")
    now[0] += NONCE_TTL_S + 1
    stale = reg.register("REGISTER", answer(challenge, "801", "s3cret"), PHONE, 300)
    assert isinstance(stale, Challenge) and "stale=true" in stale.header


def test_expires_is_honoured_within_bounds_and_zero_unregisters() -> None:
    reg = Registrar({"801": "s3cret"})
    for nc, (asked, granted) in enumerate([(None, DEFAULT_EXPIRES), (10_000, MAX_EXPIRES), (120, 120)], start=1):
        challenge = reg.register("REGISTER", None, PHONE, asked)
        assert isinstance(challenge, Challenge)
        result = reg.register("REGISTER", answer(challenge, "801", "s3cret", nc=f"{nc:08x}"), PHONE, asked)
        assert result == Registered("801", PHONE, granted)
    challenge = reg.register("REGISTER", None, PHONE, 0)
    assert isinstance(challenge, Challenge)
    assert reg.register("REGISTER", answer(challenge, "801", "s3cret"), PHONE, 0) == Registered("801", None, 0)
