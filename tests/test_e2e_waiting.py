"""End to end: waiting callers — hold music, the expected wait, callbacks, business hours.

A pjsua2 softphone (tests/softphone_caller.py) calls the real IVR over UDP on
loopback, presses keys, and records what it hears; the recording is compared
with the prompts the IVR rendered, as tests/test_e2e_softphone.py does.
"""

from __future__ import annotations

import re
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from prompts.library import read_wav_8k

from .conftest import ROOT, IvrProcess, free_port, sipp, sipp_media_port
from .test_e2e_routing import agents_conf, customers, softphone_agent, wait_line
from .test_e2e_sip import crm_events, finished, ivr_prompts, wait_for_row
from .test_e2e_softphone import ENVELOPE_MS, envelope

pytestmark = pytest.mark.e2e
CALLER = "13800000002"  # softphone_caller.py's number: unknown to the CRM, so junior
FRAMES_PER_S = 1000 // ENVELOPE_MS


def call(ivr: IvrProcess, wav: Path, seconds: float, keys: str = "") -> str:
    """Dial the hotline with the softphone, press `keys` (digit@seconds), record; the softphone's output."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "softphone_caller.py"), "--port", str(ivr.port), "--seconds",
         str(seconds), "--wav", str(wav), "--keys", keys],
        capture_output=True, text=True, timeout=seconds + 60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "state CONFIRMED 200" in out.stdout, out.stdout
    return out.stdout


def find_prompt(heard: np.ndarray, prompt_pcm: bytes, seconds: float | None = None) -> tuple[int, float]:
    """Where (frame) the prompt's loudness envelope (its first `seconds`) best matches the recording's, and how well."""
    want = envelope(prompt_pcm)
    if seconds is not None:
        want = want[: int(seconds * FRAMES_PER_S)]
    n = len(want)
    best = (0, -1.0)
    for start in range(0, len(heard) - n):
        window = heard[start : start + n]
        if window.std() == 0:
            continue
        r = float(np.corrcoef(window, want)[0, 1])
        if r > best[1]:
            best = (start, r)
    return best


def sip_call_id(ivr: IvrProcess) -> str:
    conn = sqlite3.connect(ivr.db_url.removeprefix("sqlite:///"))
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = conn.execute("SELECT sip_call_id FROM calls WHERE ended_at IS NOT NULL ORDER BY id DESC").fetchone()
            if row:
                return str(row[0])
            time.sleep(0.1)
    finally:
        conn.close()
    raise AssertionError("no finished call row")


def callback_rows(ivr: IvrProcess) -> list[sqlite3.Row]:
    conn = sqlite3.connect(ivr.db_url.removeprefix("sqlite:///"))
    conn.row_factory = sqlite3.Row
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = conn.execute("SELECT * FROM callbacks ORDER BY id").fetchall()
            if rows:
                return rows
            time.sleep(0.1)
        return []
    finally:
        conn.close()


def log_time(ivr: IvrProcess, event: str, call_id: str) -> datetime:
    found = re.search(rf"timestamp='([^']+)'[^\n]*event='{event}' call_id='{re.escape(call_id)}'", ivr.log())
    assert found, f"no {event} for {call_id} in the log"
    return datetime.fromisoformat(found.group(1))


def test_queued_caller_hears_music_between_announcements_and_the_expected_wait(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # agent 821 is logged in (fixed host) but its phone never answers: it stays ringing, busy, for the whole call,
    # so the caller is first in the queue behind one busy agent: the wait is one handle time, 120 s, "约两分钟"
    ivr = ivr_factory(extra="[queues]\nring_agent_seconds = 120\nmean_handle_seconds = 120\nposition_every_seconds = 12\n"
                      + agents_conf(**{"821": ("junior", f"127.0.0.1:{free_port()}")}))
    wav = tmp_path / "heard.wav"
    call(ivr, wav, 34, keys="9@1.5,1@3")  # 9: the menu, 1: consulting -> the junior queue
    call_id = sip_call_id(ivr)
    row = wait_for_row(ivr, call_id)
    assert (row["outcome"], row["seat_group"]) == ("abandoned_queue", "junior")
    announced = [d for k, d in crm_events(ivr, call_id) if k == "announced"]
    assert announced and announced[0].startswith("position=1 wait_s=120 agents_online=yes"), announced
    assert len(announced) >= 2, "the announcement is repeated every position_every_seconds"

    prompts = ivr_prompts(tmp_path)
    heard = envelope(read_wav_8k(wav))
    start, r = find_prompt(heard, prompts["wait_minutes_2"].pcm)
    print(f"expected-wait prompt found at {start * ENVELOPE_MS / 1000:.2f} s, envelope correlation {r:.2f}")
    assert r > 0.75, f"the caller did not hear 预计等待时间约两分钟 (best correlation {r:.2f})"
    # queued about 3.5 s after the answer; from the end of the hold prompt on, never dead air: every 2 s
    # window has sound in it (music between the announcements, the announcements themselves)
    queued = int((3.5 + prompts["hold"].seconds) * FRAMES_PER_S)
    windows = [heard[i : i + 2 * FRAMES_PER_S] for i in range(queued, len(heard) - 2 * FRAMES_PER_S, FRAMES_PER_S)]
    quiet = [i for i, w in enumerate(windows) if np.percentile(w, 90) < 300]
    assert len(windows) > 20 and not quiet, f"silent 2 s windows at {[queued / 50 + i for i in quiet]} s"
    # music resumes where it stopped: it is not restarted from the top after each announcement
    assert "music_ready" in ivr.log()


def test_no_agent_logged_in_offers_the_callback_at_once_and_hash_stores_it(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr = ivr_factory(extra="[queues]\nmax_wait_seconds = 300\n")  # no agents configured at all
    wav = tmp_path / "heard.wav"
    out = call(ivr, wav, 30, keys="9@1.5,1@3,#@19")
    call_id = sip_call_id(ivr)
    row = wait_for_row(ivr, call_id)
    assert (row["outcome"], row["hangup_by"], row["seat_group"]) == ("callback_requested", "ivr", "junior")
    assert "state DISCONNECTED" in out
    # offered within 10 s of joining the queue
    offered = log_time(ivr, "announced", call_id) - log_time(ivr, "queued", call_id)
    assert offered < timedelta(seconds=10), offered
    kinds = dict(crm_events(ivr, call_id))
    assert kinds["announced"].endswith("agents_online=no")
    prompts = ivr_prompts(tmp_path)
    heard = envelope(read_wav_8k(wav))
    # the confirmation's last moments may be cut off by the BYE that follows it: its first 2.5 s
    for pid, seconds in (("no_agent", None), ("callback_offer", None), ("callback_confirmed", 2.5)):
        _, r = find_prompt(heard, prompts[pid].pcm, seconds)
        assert r > 0.75, f"{pid} not heard (correlation {r:.2f})"

    (callback,) = callback_rows(ivr)
    assert (callback["number"], callback["tier"], callback["service"], callback["seat_group"]) == (
        CALLER, "junior", "consulting", "junior")
    assert (callback["status"], callback["attempts"], callback["result"]) == ("pending", 0, None)
    assert callback["request_key"] == call_id and callback["call_ids"] == call_id


def test_outside_business_hours_the_caller_hears_the_closed_message_and_may_leave_a_callback(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # a window that starts two hours from now: the hotline is closed now whatever the time of day
    now = datetime.now(ZoneInfo("Asia/Shanghai"))
    opens = (now + timedelta(hours=2)).replace(second=0, microsecond=0)
    closes = opens + timedelta(hours=1)
    window = f"{opens:%H:%M}-{closes:%H:%M}"
    ivr = ivr_factory(extra=f"[hours]\ndefault = {window}\n")
    wav = tmp_path / "heard.wav"
    call(ivr, wav, 30, keys="#@17")  # after the closed message (12.5 s) and the callback offer
    call_id = sip_call_id(ivr)
    row = wait_for_row(ivr, call_id)
    assert (row["outcome"], row["hangup_by"]) == ("closed", "ivr")
    assert row["answered_at"] is not None
    prompts = ivr_prompts(tmp_path)
    heard = envelope(read_wav_8k(wav))
    _, r = find_prompt(heard, prompts["closed_default"].pcm)
    assert r > 0.75, f"the closed message was not heard (correlation {r:.2f})"
    assert "我们的服务时间是每天" in prompts["closed_default"].text  # the opening times, in words

    (callback,) = callback_rows(ivr)
    assert (callback["number"], callback["status"]) == (CALLER, "pending")
    due = datetime.fromisoformat(callback["due_at"])
    due = (due if due.tzinfo else due.replace(tzinfo=UTC)).astimezone(ZoneInfo("Asia/Shanghai"))  # SQLite: UTC, naive
    assert due == opens, "the callback is due when the hotline opens"


def test_outside_business_hours_without_a_key_the_call_ends_closed(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(ZoneInfo("Asia/Shanghai"))
    opens = (now + timedelta(hours=3)).replace(second=0, microsecond=0)
    ivr = ivr_factory(extra=f"[hours]\ndefault = {opens:%H:%M}-{opens + timedelta(hours=1):%H:%M}\n")
    call(ivr, tmp_path / "heard.wav", 40)
    row = wait_for_row(ivr, sip_call_id(ivr))
    assert (row["outcome"], row["hangup_by"]) == ("closed", "ivr")
    assert "closed" in dict(crm_events(ivr, row["sip_call_id"]))


# --- calling back -----------------------------------------------------------------------


def leave_callback(ivr: IvrProcess, tmp: Path) -> str:
    """A caller with nobody logged in presses # after the offer; the request's Call-ID."""
    call(ivr, tmp / "asked.wav", 26, keys="9@1.5,1@3,#@19")
    (row,) = callback_rows(ivr)
    assert row["status"] == "pending"
    return str(row["request_key"])


def wait_callback(ivr: IvrProcess, status: str, timeout: float = 90) -> sqlite3.Row:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = callback_rows(ivr)
        if rows and rows[0]["status"] == status:
            return rows[0]
        time.sleep(0.5)
    raise AssertionError(f"callback not {status}: {[dict(r) for r in callback_rows(ivr)]}\n{ivr.log()[-3000:]}")


def sipp_uas(tmp: Path, scenario: Path, port: int, *, calls: int = 1, extra: tuple[str, ...] = (),
             timeout_s: int = 150) -> subprocess.Popen[str]:
    """A SIPp UAS on 127.0.0.1:port standing in for the gateway and the customer's phone."""
    return subprocess.Popen(
        ["sipp", "-sf", str(scenario), "-i", "127.0.0.1", "-p", str(port), "-mi", "127.0.0.1",
         "-mp", str(sipp_media_port()), "-m", str(calls), "-nostdin", "-timeout", f"{timeout_s}s", "-trace_err",
         "-error_file", str(tmp / f"uas-{port}.err"), *extra],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=open(tmp / f"uas-{port}.stderr", "w"), text=True,  # noqa: SIM115
    )


def customer_gateway(tmp: Path, scenario: Path, *, calls: int = 1,
                     extra: tuple[str, ...] = ()) -> tuple[int, subprocess.Popen[str]]:
    """The callback gateway (a SIPp UAS), listening before the IVR that is to dial it starts: (its port, SIPp).

    A port found free and bound only later (after the IVR's start and a call) may be taken meanwhile; SIPp
    then exits at once, the customer's INVITE goes unanswered, and the agent, who hangs up before the IVR
    gives up ringing the customer (ivr.dialler.CUSTOMER_RING_S), turns the attempt into callback_failed.
    """
    errors = []
    for _ in range(5):
        port = free_port()
        proc = sipp_uas(tmp, scenario, port, calls=calls, extra=extra, timeout_s=240)
        started = time.monotonic()
        while proc.poll() is None and time.monotonic() - started < 5:
            if time.monotonic() - started > 0.3 and not port_is_free(port):
                return port, proc  # up, and still up after the moment a failed bind would have ended it
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        errors.append((tmp / f"uas-{port}.stderr").read_text(errors="replace")[-300:])
    raise AssertionError(f"the customer gateway (SIPp) would not start: {errors}")


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_an_agent_logging_in_is_rung_first_then_the_customer_is_called_back_and_bridged(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    customer_port, customer = customer_gateway(tmp_path, ROOT / "loadtest" / "scenarios" / "agent_uas.xml",
                                               extra=("-d", "20000"))
    phone = None
    try:
        ivr = ivr_factory(extra=f"[queues]\nwrap_up_seconds = 0\n[callbacks]\ngateway = 127.0.0.1:{customer_port}\n"
                          + agents_conf(**{"821": ("junior", "dynamic")}))
        asked = leave_callback(ivr, tmp_path)
        phone = softphone_agent(ivr.port, "821", "pw821", talk=10)
        assert wait_line(phone, "registered") == "registered 200"
        done = wait_callback(ivr, "completed")
        customer.wait(60)
    finally:
        if phone is not None:
            phone.kill()
        customer.kill()
    assert (done["number"], done["attempts"], done["result"]) == (CALLER, 1, "callback_completed")
    first, attempt = done["call_ids"].split()
    assert first == asked
    row = wait_for_row(ivr, attempt, timeout=60)
    assert (row["caller"], row["agent_number"], row["seat_group"], row["tier"]) == (CALLER, "821", "junior", "junior")
    assert row["outcome"] == "callback_completed" and row["talk_s"] > 0
    kinds = [k for k, _ in crm_events(ivr, attempt)]
    # the agent first (rung, answered, whispered to), then the customer, then the announcement and the bridge
    order = ["callback_dialling", "agent_rung", "agent_answered", "customer_dialled", "customer_answered", "bridged"]
    assert [k for k in kinds if k in order] == order, kinds
    assert "survey_prompt" in kinds


def test_a_callback_nobody_answers_is_retried_then_closed_with_its_reason(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    customer_port, customer = customer_gateway(tmp_path, ROOT / "tests" / "sipp" / "customer_unavailable.xml", calls=2)
    phone = None
    try:
        ivr = ivr_factory(extra=f"[queues]\nwrap_up_seconds = 0\n[callbacks]\ngateway = 127.0.0.1:{customer_port}\n"
                          "max_attempts = 2\nretry_seconds = 30\n" + agents_conf(**{"821": ("junior", "dynamic")}))
        leave_callback(ivr, tmp_path)
        phone = softphone_agent(ivr.port, "821", "pw821", talk=30, calls=2)
        assert wait_line(phone, "registered") == "registered 200"
        done = wait_callback(ivr, "failed", timeout=120)
    finally:
        if phone is not None:
            phone.kill()
        customer.kill()
    assert (done["attempts"], done["result"]) == (2, "callback_no_answer")
    _, first, second = done["call_ids"].split()
    for attempt in (first, second):
        row = wait_for_row(ivr, attempt)
        assert row["outcome"] == "callback_no_answer"
        assert ("customer_not_reached", "outcome=no_answer status=480") in crm_events(ivr, attempt)
    # the retry waited retry_seconds after the first attempt
    gap = log_time(ivr, "callback_dialling", second) - log_time(ivr, "callback_dialling", first)
    assert gap >= timedelta(seconds=29), gap


# --- transfers (RFC 3515 REFER from the bridged agent) -----------------------------------

SENIOR = "13800000001"  # loadtest/scenarios/callers.csv: survey_caller.xml calls from this number


@pytest.mark.parametrize(("refer_to", "target", "queue"), [
    ("<sip:complaint@127.0.0.1>", "complaint", "middle"),  # [queues] complaint_group
    ("<sip:group-middle@127.0.0.1>", "middle", "middle"),  # a seat group
    ("<sip:811@127.0.0.1>", "811", "agent:811"),  # a named agent
    ("<sip:9009@127.0.0.1>", "complaint", "middle"),  # a short code of [queues] transfer_codes
])
def test_agent_transfers_and_the_survey_rates_the_second_agent(  # type: ignore[no-untyped-def]
    ivr_factory, tmp_path: Path, refer_to: str, target: str, queue: str
) -> None:
    first_port, second_port = free_port(), free_port()
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    queues = "[queues]\nwrap_up_seconds = 0\ncomplaint_group = middle\ntransfer_codes = 9009>complaint\n"
    ivr = ivr_factory(db_url=db_url, extra=queues + agents_conf(
        **{"801": ("senior", f"127.0.0.1:{first_port}"), "811": ("middle", f"127.0.0.1:{second_port}")}))
    first = sipp_uas(tmp_path, ROOT / "tests" / "sipp" / "agent_refer_uas.xml", first_port,
                     extra=("-d", "6000", "-key", "refer_to", refer_to))
    second = sipp_uas(tmp_path, ROOT / "loadtest" / "scenarios" / "agent_uas.xml", second_port, extra=("-d", "3000"))
    caller = sipp(tmp_path, "survey_caller", ivr.port, extra=("-d", "20000"))
    finished(caller)
    assert first.wait(30) == 0, (tmp_path / f"uas-{first_port}.err").read_text(errors="replace")
    assert second.wait(30) == 0
    row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    assert (row["agent_number"], row["seat_group"], row["survey_score"], row["outcome"]) == ("811", "middle", 1, "completed")
    events = crm_events(ivr, row["sip_call_id"])
    assert ("transferred", f"from=801 to={target} seat_group={queue}") in events
    answered = [d.split()[0] for k, d in events if k == "agent_answered"]
    assert answered == ["agent=801", "agent=811"], "every agent leg is kept, in order"
    conn = sqlite3.connect(db_url.removeprefix("sqlite:///"))
    assert conn.execute("SELECT agent_number, seat_group, score FROM surveys").fetchall() == [("811", "middle", 1)]
    assert re.search(r"event='transferred'", ivr.log())


def test_a_refer_with_a_malformed_refer_to_gets_400_and_the_call_goes_on(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    agent_port = free_port()
    db_url = f"sqlite:///{tmp_path / 'crm.db'}"
    customers(tmp_path, db_url)
    ivr = ivr_factory(db_url=db_url, extra="[queues]\nwrap_up_seconds = 0\n" + agents_conf(
        **{"801": ("senior", f"127.0.0.1:{agent_port}")}))
    agent = sipp_uas(tmp_path, ROOT / "tests" / "sipp" / "agent_refer_refused_uas.xml", agent_port,
                     extra=("-d", "6000", "-key", "refer_to", "not a sip uri"))
    caller = sipp(tmp_path, "survey_caller", ivr.port, extra=("-d", "16000"))
    finished(caller)
    assert agent.wait(30) == 0, "the agent's REFER did not get 400: " + (tmp_path / f"uas-{agent_port}.err").read_text(
        errors="replace")
    row = wait_for_row(ivr, f"1-{caller.proc.pid}@127.0.0.1")
    assert (row["agent_number"], row["outcome"], row["survey_score"]) == ("801", "completed", 1)
    assert "transferred" not in dict(crm_events(ivr, row["sip_call_id"]))
    assert "malformed Refer-To" in ivr.log()
