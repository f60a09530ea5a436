"""End to end: SIPp callers against the real IVR process over UDP on loopback, CRM in SQLite.

The four long calls (silent, speaking, RFC 4733 digit, SIP INFO digit) are
started together when the module begins, so the whole module takes about
as long as one silent routine; each test then waits for its own call.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ivr.config import load_config
from ivr.greeting import greeting_prompt_id
from prompts.catalogue import catalogue_for
from prompts.library import Prompt, load_prompts

from .conftest import IvrProcess, SippRun, free_port, sipp, start_ivr, write_ivr_config

pytestmark = pytest.mark.e2e
LONG_CALLS = ("silent_caller", "speaking_caller", "digit_caller", "info_digit_caller")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def hotline(workdir: Path) -> Iterator[IvrProcess]:
    port = free_port()
    db_url = f"sqlite:///{workdir / 'crm.db'}"
    ivr = start_ivr(workdir, write_ivr_config(workdir, sip_port=port, db_url=db_url, ring_seconds=1), port, db_url)
    yield ivr
    assert ivr.stop() == 0, ivr.log()
    assert "Traceback" not in ivr.log(), ivr.log()


@pytest.fixture(scope="module")
def long_calls(hotline: IvrProcess, workdir: Path) -> dict[str, SippRun]:
    return {name: sipp(workdir, name, hotline.port) for name in LONG_CALLS}


def crm_rows(ivr: IvrProcess, where: str = "1=1") -> list[sqlite3.Row]:
    conn = sqlite3.connect(ivr.db_url.removeprefix("sqlite:///"))
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(f"SELECT * FROM calls WHERE {where} ORDER BY id").fetchall()
    finally:
        conn.close()


def crm_events(ivr: IvrProcess, sip_call_id: str) -> list[tuple[str, str]]:
    conn = sqlite3.connect(ivr.db_url.removeprefix("sqlite:///"))
    try:
        return conn.execute(
            "SELECT kind, detail FROM call_events e JOIN calls c ON c.id = e.call_id WHERE c.sip_call_id = ? ORDER BY e.id",
            (sip_call_id,),
        ).fetchall()
    finally:
        conn.close()


def wait_for_row(ivr: IvrProcess, sip_call_id: str, timeout: float = 10) -> sqlite3.Row:
    """The call's row once it has ended (the writer is asynchronous)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = crm_rows(ivr, f"sip_call_id = '{sip_call_id}' AND ended_at IS NOT NULL")
        if rows:
            return rows[0]
        time.sleep(0.1)
    raise AssertionError(f"no finished CRM row for {sip_call_id}; rows: {[dict(r) for r in crm_rows(ivr)]}")


def call_id_of(run: SippRun, ivr: IvrProcess) -> str:
    """SIPp's Call-ID for call 1 is '1-<pid>@127.0.0.1'."""
    return f"1-{run.proc.pid}@127.0.0.1"


def finished(run: SippRun, timeout: float = 120) -> None:
    rc = run.wait(timeout)
    assert rc == 0, f"{run.scenario}: SIPp exit {rc}\n{run.errors()}"


# --- quick signalling checks --------------------------------------------------------


def test_options_health_probe_gets_200(hotline: IvrProcess, workdir: Path) -> None:
    finished(sipp(workdir, "options", hotline.port, timeout_s=10), 20)


def test_g729_only_offer_gets_488_and_leaves_no_call(hotline: IvrProcess, workdir: Path) -> None:
    run = sipp(workdir, "g729_caller", hotline.port, timeout_s=10)
    finished(run, 20)
    assert not crm_rows(hotline, f"sip_call_id = '{call_id_of(run, hotline)}'")
    assert re.search(r"invite_rejected.*status=488", hotline.log())


def test_unknown_number_gets_404(hotline: IvrProcess, workdir: Path) -> None:
    run = sipp(workdir, "unknown_number_caller", hotline.port, service="12345", timeout_s=10)
    finished(run, 20)
    assert not crm_rows(hotline, f"sip_call_id = '{call_id_of(run, hotline)}'")


def test_cancel_while_ringing_gets_487_and_an_abandoned_ringing_row(hotline: IvrProcess, workdir: Path) -> None:
    run = sipp(workdir, "cancel_caller", hotline.port, timeout_s=10)
    finished(run, 20)
    row = wait_for_row(hotline, call_id_of(run, hotline))
    assert (row["outcome"], row["hangup_by"], row["answered_at"]) == ("abandoned_ringing", "caller", None)
    assert row["caller"] == "13800000001" and row["callee"] == "95000"


# --- the silent-call routine and callers who are not silent ---------------------------


def ivr_prompts(workdir: Path) -> dict[str, Prompt]:
    """The prompts exactly as the IVR started from workdir/sip.conf loaded them (from the cache)."""
    config = load_config(workdir / "sip.conf")
    p = config.prompts
    return load_prompts(catalogue_for(config), voice=p.voice, rate=p.rate, cache_dir=p.cache_dir, recorded_dir=p.recorded_dir)


def prompt_seconds(ivr: IvrProcess, workdir: Path) -> dict[str, float]:
    return {pid: prompt.seconds for pid, prompt in ivr_prompts(workdir).items()}


def test_silent_caller_is_hung_up_only_after_three_prompts_and_three_waits(
    hotline: IvrProcess, workdir: Path, long_calls: dict[str, SippRun]
) -> None:
    run = long_calls["silent_caller"]
    finished(run)
    logged = run.logged()
    answered = int(re.search(r"answered (\d+)", logged).group(1))
    bye = int(re.search(r"bye (\d+)", logged).group(1))
    answer_to_bye = (bye - answered) / 1000

    row = wait_for_row(hotline, call_id_of(run, hotline))
    assert (row["outcome"], row["hangup_by"], row["silent_attempts"]) == ("silent", "ivr", 3)
    seconds = prompt_seconds(hotline, workdir)
    routine = seconds[greeting_prompt_id(row["greeting"])] + seconds["silent_2"] + seconds["silent_3"] + 3 * 5.0
    print(f"silent call: answer->BYE {answer_to_bye:.2f} s as seen by SIPp; prompts + 3 x 5 s = {routine:.2f} s")
    assert answer_to_bye >= routine - 0.1, "hung up before three prompts and three full waits"
    assert answer_to_bye <= routine + 1.5

    events = crm_events(hotline, row["sip_call_id"])
    assert [d for k, d in events if k == "prompt"] == [
        f"attempt=1 prompt={greeting_prompt_id(row['greeting'])}", "attempt=2 prompt=silent_2", "attempt=3 prompt=silent_3",
    ]
    assert [k for k, _ in events][-2:] == ["silence", "ended"]
    assert re.search(rf"event='ended' call_id='{re.escape(row['sip_call_id'])}' detail='outcome=silent", hotline.log())


@pytest.mark.parametrize(
    ("scenario", "evidence"),
    [
        ("speaking_caller", ("speech", "")),
        ("digit_caller", ("digit", "digit=1 via=rfc4733")),
        ("info_digit_caller", ("digit", "digit=5 via=info")),
    ],
)
def test_caller_who_speaks_or_presses_a_key_is_not_hung_up(
    hotline: IvrProcess, long_calls: dict[str, SippRun], scenario: str, evidence: tuple[str, str]
) -> None:
    run = long_calls[scenario]
    finished(run)  # SIPp fails the call if the IVR sends BYE during its 36 s on the line
    row = wait_for_row(hotline, call_id_of(run, hotline))
    # no agent is logged in on this IVR: the engaged caller ends up waiting in the queue
    assert (row["hangup_by"], row["silent_attempts"]) == ("caller", 0)
    assert row["outcome"] in ("caller_hangup", "abandoned_queue")
    events = crm_events(hotline, row["sip_call_id"])
    assert evidence in events
    kinds = [k for k, _ in events]
    assert kinds.index("engaged") < kinds.index("caller_bye")
    assert ("prompt", "attempt=2 prompt=silent_2") not in events
