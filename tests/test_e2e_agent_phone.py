"""A registered agent's phone, played by a scripted UDP socket: RFC 7616 digest, and how the IVR rings it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .browser_agent import header_values, register
from .conftest import sipp
from .test_e2e_retransmission import ScriptedPhone
from .test_e2e_routing import SENIOR, customers

pytestmark = pytest.mark.e2e


def test_digest_offers_sha256_first_and_checks_the_uri(ivr_factory) -> None:
    ivr = ivr_factory(extra="[801]\ntype = agent\nseat_group = senior\nhost = dynamic\nsecret = pw801\n")
    phone = ScriptedPhone(ivr)
    try:
        challenges, status = register(phone, ivr, "801", f"sip:801@127.0.0.1:{phone.port}")
        assert [re.search(r"algorithm=([\w-]+)", c).group(1) for c in challenges] == ["SHA-256", "MD5"]
        assert all('qop="auth"' in c for c in challenges)
        assert status.startswith("SIP/2.0 200")
        _, other_uri = register(phone, ivr, "801", f"sip:801@127.0.0.1:{phone.port}", uri="sip:elsewhere.example")
        assert other_uri.startswith("SIP/2.0 403"), "a response computed for another uri is refused"
    finally:
        phone.close()


def test_a_registered_phone_is_rung_at_the_contact_uri_it_registered(ivr_factory, tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    ivr = ivr_factory(db_url=db_url, extra="[801]\ntype = agent\nseat_group = senior\nhost = dynamic\nsecret = pw801\n")
    phone = ScriptedPhone(ivr)
    contact_uri = f"sip:agent-801-ab12@127.0.0.1:{phone.port};transport=udp;ob"
    try:
        _, status = register(phone, ivr, "801", contact_uri, algorithm="MD5")
        assert status.startswith("SIP/2.0 200")
        caller = sipp(tmp_path, "survey_caller", ivr.port, extra=("-d", "11000"))
        got = phone.until(lambda t: t.startswith("INVITE "), seconds=20)
        invite = next(t for _, t in got if t.startswith("INVITE "))
        assert invite.split("\r\n", 1)[0] == f"INVITE {contact_uri} SIP/2.0"
        caller.proc.kill()
    finally:
        phone.close()
    assert SENIOR in invite  # the caller's number, for the agent's display
    # the screen-pop any softphone shows: name, tier and service in the From display name (UTF-8,
    # quoted per RFC 3261 25.1), the rest in headers, and a link to the desk's page for the call
    sent_from = header_values(invite, "From")[0]
    assert sent_from.startswith('"王总 高端 产品推荐" <sip:'), sent_from
    assert header_values(invite, "X-Hotline-Tier") == ["senior"]
    assert header_values(invite, "X-Hotline-Service") == ["recommendation"]
    caller_call_id = header_values(invite, "X-Hotline-Call")[0]
    assert caller_call_id.endswith("@127.0.0.1") and caller_call_id != header_values(invite, "Call-ID")[0]
    (info,) = header_values(invite, "Call-Info")
    assert re.fullmatch(r"<http://127\.0\.0\.1:8080/calls/sip\?call_id=[^>]+>;purpose=info", info), info


def test_a_password_guesser_is_banned_before_the_right_guess(ivr_factory) -> None:
    ivr = ivr_factory(extra="[801]\ntype = agent\nseat_group = senior\nhost = dynamic\nsecret = pw801\n"
                            "[limits]\nauth_failures = 10\n")
    phone = ScriptedPhone(ivr, host="127.0.0.7")  # not 127.0.0.1, which the test config trusts
    contact = f"sip:801@127.0.0.7:{phone.port}"
    try:
        for n in range(11):  # ten failures a minute are allowed; the eleventh bans
            _, status = register(phone, ivr, "801", contact, algorithm="MD5", password=f"guess{n}")
            assert status.startswith("SIP/2.0 403"), status
        with pytest.raises(AssertionError, match="not seen"):  # banned: no answer at all, not even a challenge
            register(phone, ivr, "801", contact, algorithm="MD5", wait=2)
    finally:
        phone.close()
    log = ivr.log()
    assert re.search(r"auth_banned' source='127\.0\.0\.7:\d+' failures=10", log)
