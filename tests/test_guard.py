"""Overload control, per-source limits, the auth ban, the fail2ban filter, and the RFC 3261 request checks."""

from __future__ import annotations

import io
import re
from contextlib import redirect_stderr
from pathlib import Path

import pytest
import structlog
from aiosipua import SipMessage

from ivr.config import ConfigError, LimitsConfig, load_config
from ivr.guard import Admission, SourceGuard, Verdict
from ivr.logs import configure_logging
from ivr.sanity import check_request

FILTER = Path(__file__).parent.parent / "contrib" / "fail2ban" / "filter.d" / "hotline-ivr.conf"


def test_each_source_gets_its_own_budget_per_method() -> None:
    guard = SourceGuard(LimitsConfig(register_per_second=5, invite_per_second=20))
    verdicts = [guard.admit("REGISTER", "192.0.2.1") for _ in range(50)]
    assert verdicts.count(Verdict.ADMIT) == 5 and verdicts.count(Verdict.DROP) == 45
    assert guard.admit("REGISTER", "192.0.2.2") is Verdict.ADMIT, "another address is not affected"
    assert guard.admit("INVITE", "192.0.2.1") is Verdict.ADMIT, "nor another method"
    assert guard.admit("ACK", "192.0.2.1") is Verdict.ADMIT, "ACKs are never limited"


def test_excess_reply_answers_at_most_five_a_second() -> None:
    guard = SourceGuard(LimitsConfig(options_per_second=1, excess="reply"))
    verdicts = [guard.admit("OPTIONS", "192.0.2.1") for _ in range(100)]
    assert verdicts.count(Verdict.ADMIT) == 1 and verdicts.count(Verdict.REFUSE) == 5


def test_trusted_addresses_are_not_limited() -> None:
    guard = SourceGuard(LimitsConfig(invite_per_second=1, trusted=frozenset({"10.0.0.5"})))
    assert all(guard.admit("INVITE", "10.0.0.5") is Verdict.ADMIT for _ in range(100))


def test_repeated_auth_failures_bar_the_source_from_registering() -> None:
    guard = SourceGuard(LimitsConfig(auth_failures=3, auth_ban_seconds=600, register_per_second=1000))
    for _ in range(3):
        guard.auth_failed("192.0.2.9", 5060, "801", "wrong password")
    assert guard.admit("REGISTER", "192.0.2.9") is Verdict.ADMIT
    guard.auth_failed("192.0.2.9", 5060, "801", "wrong password")  # the 4th within a minute
    assert guard.admit("REGISTER", "192.0.2.9") is Verdict.BANNED
    assert guard.admit("INVITE", "192.0.2.9") is Verdict.ADMIT, "callers from that address still get through"
    assert guard.admit("REGISTER", "192.0.2.10") is Verdict.ADMIT



def admission(limits: LimitsConfig) -> tuple[Admission, list[tuple[int, dict[str, str]]]]:
    answered: list[tuple[int, dict[str, str]]] = []
    return Admission(SourceGuard(limits), lambda _r, _a, status, _reason, h: answered.append((status, h))), answered


def test_new_calls_beyond_the_global_budget_get_503_and_one_log_line() -> None:
    gate, answered = admission(LimitsConfig(max_invites_per_second=2, invite_per_second=1000))
    invite, _ = request(OK)
    err = io.StringIO()
    with redirect_stderr(err):
        configure_logging("info", "console")
        admitted = [gate.admit(invite, (f"192.0.2.{i}", 5060), accepting=True) for i in range(10)]
    configure_logging("info", "console")
    assert admitted.count(True) == 2, "all sources together"
    assert answered == [(503, {"Retry-After": "2"})] * 8
    lines = [line for line in err.getvalue().splitlines() if "overload_refused" in line]
    assert len(lines) == 1 and "reason='call rate'" in lines[0] and "logger='ivr.overload'" in lines[0], lines
    in_dialog, _ = request(OK.replace("To: <sip:95000@127.0.0.1>", "To: <sip:95000@127.0.0.1>;tag=9"))
    assert gate.admit(in_dialog, ("192.0.2.1", 5060), accepting=True), "a re-INVITE is no new call"


def test_a_lagging_event_loop_refuses_new_calls_and_a_draining_ivr_answers_options_with_503() -> None:
    gate, answered = admission(LimitsConfig())
    invite, _ = request(OK)
    gate.loop_lag = gate.max_loop_lag + 0.01
    assert not gate.admit(invite, ("192.0.2.1", 5060), accepting=True)
    assert answered == [(503, {"Retry-After": "2"})]
    gate.loop_lag = 0.0
    later, _ = request(OK.replace("Call-ID: c1", "Call-ID: c-later"))
    assert gate.admit(later, ("192.0.2.1", 5060), accepting=True), "the loop on time again: new calls are taken"
    options, _ = request(OK.replace("INVITE", "OPTIONS"))
    assert gate.admit(options, ("192.0.2.1", 5060), accepting=True)
    assert not gate.admit(options, ("192.0.2.1", 5060), accepting=False)
    assert answered[-1] == (503, {"Retry-After": "30"})

def test_fail2ban_filter_matches_both_log_formats() -> None:
    patterns = [line.split("=", 1)[-1].strip() for line in FILTER.read_text().split("[Definition]")[1].splitlines()
                if line.strip() and not line.startswith(("ignoreregex", "#"))]
    regexes = [re.compile(p.replace("<HOST>", r"(?P<host>[\d.]+)")) for p in patterns]
    for fmt in ("console", "json"):
        err = io.StringIO()
        with redirect_stderr(err):
            configure_logging("info", fmt)
            structlog.get_logger("ivr.security").warning("auth_failed", source="203.0.113.9:5060", user="801", reason="wrong password")
        line = err.getvalue().strip().splitlines()[-1]
        hosts = [m.group("host") for r in regexes if (m := r.search(line))]
        assert hosts == ["203.0.113.9"], (fmt, line)
    configure_logging("info", "console")


def request(text: str) -> tuple:  # type: ignore[type-arg]
    raw = text.replace("\n", "\r\n").encode()
    return SipMessage.parse(raw), raw.split(b"\r\n", 1)[0].decode()


OK = """INVITE sip:95000@127.0.0.1 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5070;rport;branch=z9hG4bK1
From: "张三" <sip:13800000001@127.0.0.1>;tag=1
To: <sip:95000@127.0.0.1>
Call-ID: c1
CSeq: 1 INVITE
Max-Forwards: 70
Content-Length: 0

"""


def test_a_well_formed_request_passes() -> None:
    assert check_request(*request(OK)) is None


def test_typical_breakage_is_refused_with_the_rfc_status() -> None:
    cases = {
        OK.replace("SIP/2.0\nVia", "SIP/3.0\nVia"): 505,
        OK.replace("INVITE sip:95000", "INVITE  sip:95000"): 400,
        OK.replace("INVITE sip:", "INVITE tel2:", 1): 416,
        OK.replace("CSeq: 1 INVITE", "CSeq: 1 BYE"): 400,
        OK.replace("CSeq: 1 INVITE", "CSeq: 4294967296 INVITE"): 400,
        OK.replace("Max-Forwards: 70", "Max-Forwards: 300"): 400,
        OK.replace("Content-Length: 0", "Content-Length: 10"): 400,
        OK.replace("Call-ID: c1", "Call-ID: c1\nCall-ID: c2"): 400,
        OK.replace('From: "张三"', 'From: "张三'): 400,
        OK.replace("To: <sip:95000@127.0.0.1>", "To: < sip:95000@127.0.0.1 >"): 400,
        OK.replace("Max-Forwards: 70", "Max-Forwards: 70\nRequire: 100rel"): 420,
        OK.replace("INVITE sip", "FROB sip").replace("1 INVITE", "1 FROB"): 501,
    }
    for text, status in cases.items():
        refusal = check_request(*request(text))
        assert refusal is not None and refusal.status == status, (status, refusal, text.splitlines()[0])


def loaded(limits: LimitsConfig, calls: list[int], max_calls: int = 10) -> tuple[Admission, list[tuple[int, dict[str, str]]]]:
    answered: list[tuple[int, dict[str, str]]] = []
    gate = Admission(SourceGuard(limits), lambda _r, _a, status, _reason, h: answered.append((status, h)),
                     calls=lambda: calls[0], max_calls=max_calls)
    return gate, answered


def test_the_load_is_the_busiest_of_calls_invite_budget_and_loop_lag() -> None:
    calls = [0]
    gate, _ = loaded(LimitsConfig(max_invites_per_second=10, invite_per_second=1000), calls)
    assert gate.load() == 0, "idle"
    calls[0] = 4
    assert gate.load() == 40, "4 of max_calls 10"
    invite, _ = request(OK)
    for _ in range(7):
        assert gate.admit(invite, ("192.0.2.1", 5060), accepting=True)
    assert gate.load() == 70, "7 of 10 INVITEs a second used"
    for _ in range(5):
        gate.admit(invite, ("192.0.2.1", 5060), accepting=True)
    assert gate.load() == 100, "the budget used up: the refused INVITEs are not counted past it"
    calls[0] = 25
    assert gate.load() == 100, "never above 100"


def test_a_lag_spike_counts_for_the_rest_of_its_second_and_the_next_only() -> None:
    gate, _ = loaded(LimitsConfig(max_loop_lag_ms=100), [0])
    gate.note_loop_lag(0.080, now=500.2)  # one late timer ...
    gate.note_loop_lag(0.001, now=500.25)  # ... and the loop is on time again at the next sample
    assert gate.load(now=500.3) == 80, "a probe later in the same second still sees the spike"
    assert gate.load(now=501.9) == 80, "and in the next one, so a probe every second or two never misses it"
    gate.note_loop_lag(0.001, now=502.1)
    assert gate.load(now=502.2) == 1, "two seconds on, only the quiet samples count"
    assert gate.load(now=504.0) == 1, "nothing measured since: the last sample"


def test_a_busy_worker_answers_options_with_503_and_its_load_and_takes_calls_it_still_can() -> None:
    calls = [8]
    gate, answered = loaded(LimitsConfig(busy_load_percent=90, invite_per_second=1000), calls)
    options, _ = request(OK.replace("INVITE", "OPTIONS"))
    assert gate.admit(options, ("192.0.2.1", 5060), accepting=True), "80 %: the stack answers 200"
    assert answered == []
    calls[0] = 9
    assert not gate.admit(options, ("192.0.2.1", 5060), accepting=True)
    assert answered == [(503, {"Retry-After": "1", "X-Hotline-Load": "90"})], "busy: out of a balancer's rotation"
    invite, _ = request(OK)
    assert gate.admit(invite, ("192.0.2.1", 5060), accepting=True), "an INVITE still arriving is taken: max_calls decides"
    calls[0] = 3
    assert gate.admit(options, ("192.0.2.1", 5060), accepting=True), "below the mark again: back in rotation"


def test_busy_load_percent_is_checked(tmp_path: Path) -> None:
    conf = tmp_path / "sip.conf"
    conf.write_text("[limits]\nbusy_load_percent = 0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="busy_load_percent"):
        load_config(conf)
    conf.write_text("[limits]\nbusy_load_percent = 75\n", encoding="utf-8")
    assert load_config(conf).limits.busy_load_percent == 75


def test_a_retransmission_of_a_refused_invite_is_refused_again_even_once_the_budget_has_room() -> None:
    gate, answered = admission(LimitsConfig(max_invites_per_second=1, invite_per_second=1000))
    first, _ = request(OK)
    assert gate.admit(first, ("192.0.2.1", 5060), accepting=True)
    second, _ = request(OK.replace("Call-ID: c1", "Call-ID: c2").replace("branch=z9hG4bK1", "branch=z9hG4bK2"))
    assert not gate.admit(second, ("192.0.2.1", 5060), accepting=True), "over the budget"
    gate.guard._limiter.clear(gate.guard._calls, "*", "calls")  # the next second: room again
    again, _ = request(OK.replace("Call-ID: c1", "Call-ID: c2").replace("branch=z9hG4bK1", "branch=z9hG4bK2"))
    assert not gate.admit(again, ("192.0.2.1", 5060), accepting=True), (
        "its retransmission gets the same 503: answered 200 now, after the caller took the 503, it would be lost")
    assert answered == [(503, {"Retry-After": "2"})] * 2
    third, _ = request(OK.replace("Call-ID: c1", "Call-ID: c3").replace("branch=z9hG4bK1", "branch=z9hG4bK3"))
    assert gate.admit(third, ("192.0.2.1", 5060), accepting=True), "a new call is taken"
