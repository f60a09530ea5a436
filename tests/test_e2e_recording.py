"""End to end: bridged calls recorded over real SIP/RTP (SIPp caller and agent phones playing known speech).

The caller (loadtest/scenarios/talking_caller.xml) and the agent (talking_agent_uas.xml) each play a
different sentence, rendered at test time with espeak-ng and sox (never committed). The recording's left
channel must match what the caller said and the right what the agent said (normalised cross-correlation
against the sent audio), last as long as the talk, and have its CRM row with that length and checksum.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile  # type: ignore[import-untyped]

from .audio import best_correlation, render_speech
from .conftest import ROOT, IvrProcess, free_port, sipp, sipp_media_port
from .test_e2e_routing import agents_conf
from .test_e2e_sip import crm_events, finished, wait_for_row
from .test_e2e_waiting import sipp_uas

pytestmark = pytest.mark.e2e

CALLER_SAYS = "The quick brown fox jumps over the lazy dog. My account number is four five six seven."
AGENT_SAYS = "Good morning, this is the service desk. Your order was shipped on Wednesday by express."
TALKING_AGENT = ROOT / "loadtest" / "scenarios" / "talking_agent_uas.xml"


def media_port() -> tuple[str, str]:
    """`-mp P` for a SIPp that streams (tests.conftest.sipp_media_port); given after the helpers' own -mp,
    it is the one SIPp uses."""
    return "-mp", str(sipp_media_port())


@pytest.fixture
def speech(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    caller = render_speech(tmp_path, "caller_speech", CALLER_SAYS, "en", 40)
    agent = render_speech(tmp_path, "agent_speech", AGENT_SAYS, "en-us", 80)
    return caller, agent


def channel_matches(channel: np.ndarray, sent: np.ndarray) -> list[float]:
    """Correlations of the channel's loud 1 s windows with `sent`."""
    results = []
    for start in range(0, len(channel) - 8000, 4000):
        window = channel[start:start + 8000]
        if np.sqrt(np.mean(window.astype(np.float64) ** 2)) > 300:  # speech, not a pause between words
            results.append(best_correlation(window, sent))
    return results


def recordings(ivr: IvrProcess, sip_call_id: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(ivr.db_url.removeprefix("sqlite:///"))
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM recordings WHERE sip_call_id = ? ORDER BY id", (sip_call_id,)).fetchall()
    finally:
        conn.close()


def wait_recordings(ivr: IvrProcess, sip_call_id: str, count: int = 1, timeout: float = 15,
                    states: tuple[str, ...] = ("complete", "failed")) -> list[sqlite3.Row]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = recordings(ivr, sip_call_id)
        if len(rows) >= count and all(r["state"] in states for r in rows):
            return rows
        time.sleep(0.2)
    raise AssertionError(f"recordings of {sip_call_id}: {[dict(r) for r in recordings(ivr, sip_call_id)]}")


def event_times(ivr: IvrProcess, sip_call_id: str) -> list[tuple[str, datetime]]:
    conn = sqlite3.connect(ivr.db_url.removeprefix("sqlite:///"))
    try:
        rows = conn.execute("SELECT kind, at FROM call_events e JOIN calls c ON c.id = e.call_id "
                            "WHERE c.sip_call_id = ? ORDER BY e.id", (sip_call_id,)).fetchall()
    finally:
        conn.close()
    return [(kind, datetime.fromisoformat(at)) for kind, at in rows]


def recorded_ivr(ivr_factory, tmp_path: Path, agents: dict[str, int], recording: str = ""):  # type: ignore[no-untyped-def]
    conf = agents_conf(**{number: ("junior", f"127.0.0.1:{port}") for number, port in agents.items()})
    return ivr_factory(extra=f"[queues]\nwrap_up_seconds = 0\n[recording]\n{recording}" + conf)


def test_a_bridged_call_is_recorded_in_stereo_caller_left_agent_right_as_long_as_the_talk(  # type: ignore[no-untyped-def]
    ivr_factory, tmp_path: Path, speech: tuple[np.ndarray, np.ndarray]
) -> None:
    caller_sent, agent_sent = speech
    agent_port = free_port()
    ivr = recorded_ivr(ivr_factory, tmp_path, {"821": agent_port})
    agent = sipp_uas(tmp_path, TALKING_AGENT, agent_port, extra=media_port())
    caller = sipp(tmp_path, "talking_caller", ivr.port, extra=("-d", "16000", *media_port()))
    finished(caller)
    assert agent.wait(30) == 0, (tmp_path / f"uas-{agent_port}.err").read_text(errors="replace")
    call_id = f"1-{caller.proc.pid}@127.0.0.1"
    row = wait_for_row(ivr, call_id)
    assert (row["outcome"], row["agent_number"]) == ("completed", "821")
    (rec,) = wait_recordings(ivr, call_id)

    assert (rec["state"], rec["channels"], rec["agent_number"], rec["format"]) == ("complete", 2, "821", "wav-pcm16")
    path = tmp_path / "recordings" / rec["path"]
    assert path.exists() and not list((tmp_path / "recordings").rglob("*.part"))
    assert rec["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert rec["size_bytes"] == path.stat().st_size
    info = soundfile.info(path)
    assert (info.channels, info.samplerate, info.subtype) == (2, 8000, "PCM_16")
    # a talk of talk_s seconds is a file of talk_s seconds, silence included
    assert abs(info.duration - row["talk_s"]) < 0.5, (info.duration, row["talk_s"])
    assert abs(rec["duration_s"] - row["talk_s"]) < 0.5
    assert row["talk_s"] > 4

    data, _ = soundfile.read(path, dtype="int16")
    left, right = data[:, 0], data[:, 1]
    caller_on_left, agent_on_left = channel_matches(left, caller_sent), channel_matches(left, agent_sent)
    agent_on_right, caller_on_right = channel_matches(right, agent_sent), channel_matches(right, caller_sent)
    assert len(caller_on_left) >= 3 and len(agent_on_right) >= 3, "too little speech recorded"
    assert np.median(caller_on_left) > 0.9, caller_on_left  # what the caller said, on the left
    assert np.median(agent_on_right) > 0.9, agent_on_right  # what the agent said, on the right
    assert max(agent_on_left) < 0.5 and max(caller_on_right) < 0.5, (agent_on_left, caller_on_right)

    # the caller was told before the agent was put through
    times = event_times(ivr, call_id)
    kinds = [k for k, _ in times]
    assert "recording_notice" in kinds and kinds.index("recording_notice") < kinds.index("bridged"), kinds
    at = dict(times)
    assert (at["bridged"] - at["recording_notice"]).total_seconds() >= 0.5  # the agent's number came after it
    assert (at["recording_notice"] - at["queued"]).total_seconds() >= 2.5  # the notice played whole (about 3 s)
    assert "recording_started" in ivr.log() and "recording_complete" in ivr.log()

    # the conversation characteristics, computed after the call off the event loop, land on the row
    deadline = time.monotonic() + 15
    while (found := recordings(ivr, call_id)[0]["characteristics"]) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert found is not None, "no characteristics stored for the recording"
    traits = json.loads(found)
    assert traits["caller_talk_s"] > 1 and traits["agent_talk_s"] > 1, traits
    # talk happens inside the file: the frames where either spoke (over-talk counts only runs of at least
    # min_overtalk_s, so caller + agent - over-talk may exceed the union of the two by the short overlaps)
    spoken = np.zeros(int(info.duration * 50) + 1, dtype=bool)  # 20 ms frames
    for start, end in (*traits["segments"]["caller"], *traits["segments"]["agent"]):
        spoken[int(round(start * 50)):int(round(end * 50))] = True
    assert spoken.sum() / 50 <= info.duration + 0.1
    assert traits["segments"]["caller"] and traits["segments"]["agent"]


def test_a_desk_pause_is_silence_in_the_file_and_a_pause_row(  # type: ignore[no-untyped-def]
    ivr_factory, tmp_path: Path, speech: tuple[np.ndarray, np.ndarray]
) -> None:
    from crm_bridge.agent_commands import request_command
    from crm_bridge.db import make_engine

    agent_port = free_port()
    ivr = recorded_ivr(ivr_factory, tmp_path, {"821": agent_port})
    agent = sipp_uas(tmp_path, TALKING_AGENT, agent_port, extra=media_port())
    caller = sipp(tmp_path, "talking_caller", ivr.port, extra=("-d", "22000", *media_port()))
    call_id = f"1-{caller.proc.pid}@127.0.0.1"
    wait_log(ivr, "recording_started")
    time.sleep(2)
    db = make_engine(ivr.db_url)
    request_command(db, "821", "pause_recording", requested_by="supervisor1")
    wait_log(ivr, "recording_paused")
    time.sleep(4)
    request_command(db, "821", "resume_recording", requested_by="supervisor1")
    wait_log(ivr, "recording_resumed")
    db.dispose()
    finished(caller)
    assert agent.wait(30) == 0
    (rec,) = wait_recordings(ivr, call_id)
    conn = sqlite3.connect(ivr.db_url.removeprefix("sqlite:///"))
    pauses = conn.execute("SELECT paused_by, offset_s, duration_s FROM recording_pauses WHERE recording_id = ?",
                          (rec["id"],)).fetchall()
    conn.close()
    (by, offset, length) = pauses[0]
    assert len(pauses) == 1 and by == "supervisor1"
    deadline = time.monotonic() + 30  # the characteristics, computed after the call, leave the span out
    while (found := recordings(ivr, call_id)[0]["characteristics"]) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert found is not None and abs(json.loads(found)["paused_s"] - length) < 0.05, found
    assert 3 < length < 6  # the desk is polled once a second
    data, _ = soundfile.read(tmp_path / "recordings" / rec["path"], dtype="int16")
    span = data[int(offset * 8000) + 80:int((offset + length) * 8000) - 80]
    assert len(span) > 3 * 8000 and not span.any(), "the paused span must be digital silence on both channels"
    before, after = data[: int(offset * 8000)], data[int((offset + length) * 8000):]
    assert np.abs(before[:, 0]).max() > 1000 and np.abs(after[:, 1]).max() > 1000  # recorded either side of it
    assert abs(len(data) / 8000 - rec["duration_s"]) < 0.05


def test_the_agent_pauses_and_resumes_from_the_phone_with_star_48(  # type: ignore[no-untyped-def]
    ivr_factory, tmp_path: Path, speech: tuple[np.ndarray, np.ndarray]
) -> None:
    agent_port = free_port()
    ivr = recorded_ivr(ivr_factory, tmp_path, {"821": agent_port})
    agent = sipp_uas(tmp_path, ROOT / "tests" / "sipp" / "agent_pause_uas.xml", agent_port)
    caller = sipp(tmp_path, "talking_caller", ivr.port, extra=("-d", "22000", *media_port()))
    finished(caller)
    assert agent.wait(30) == 0, (tmp_path / f"uas-{agent_port}.err").read_text(errors="replace")
    call_id = f"1-{caller.proc.pid}@127.0.0.1"
    (rec,) = wait_recordings(ivr, call_id)
    conn = sqlite3.connect(ivr.db_url.removeprefix("sqlite:///"))
    pauses = conn.execute("SELECT paused_by, offset_s, duration_s FROM recording_pauses WHERE recording_id = ?",
                          (rec["id"],)).fetchall()
    conn.close()
    assert len(pauses) == 1, pauses
    by, offset, length = pauses[0]
    assert by == "821" and 2.5 < length < 8, pauses  # * 4 8 ... 3 s ... * 4 8 (SIPp's pcap keys drift when busy)
    data, _ = soundfile.read(tmp_path / "recordings" / rec["path"], dtype="int16")
    span = data[int(offset * 8000):int((offset + length) * 8000)]
    assert not span.any(), "the paused span must be silence"
    assert np.abs(data[: int(offset * 8000), 0]).max() > 1000  # the caller was recorded before it ...
    assert np.abs(data[int((offset + length) * 8000):, 0]).max() > 1000  # ... and after it
    assert "via='phone'" in ivr.log()


def wait_log(ivr: IvrProcess, text: str, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in ivr.log():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never logged:\n{ivr.log()[-3000:]}")


def test_a_transfer_is_one_file_per_agent_both_with_the_calls_id(  # type: ignore[no-untyped-def]
    ivr_factory, tmp_path: Path, speech: tuple[np.ndarray, np.ndarray]
) -> None:
    caller_sent, agent_sent = speech
    first_port, second_port = free_port(), free_port()
    conf = agents_conf(**{"821": ("junior", f"127.0.0.1:{first_port}"), "811": ("middle", f"127.0.0.1:{second_port}")})
    ivr = ivr_factory(extra="[queues]\nwrap_up_seconds = 0\n[recording]\n" + conf)
    first = sipp_uas(tmp_path, ROOT / "tests" / "sipp" / "agent_refer_uas.xml", first_port,
                     extra=("-d", "9000", "-key", "refer_to", "<sip:group-middle@127.0.0.1>"))
    second = sipp_uas(tmp_path, TALKING_AGENT, second_port, extra=media_port())
    caller = sipp(tmp_path, "talking_caller", ivr.port, extra=("-d", "30000", *media_port()))
    finished(caller)
    assert first.wait(30) == 0 and second.wait(30) == 0
    call_id = f"1-{caller.proc.pid}@127.0.0.1"
    row = wait_for_row(ivr, call_id)
    one, two = wait_recordings(ivr, call_id, 2)
    assert [(r["agent_number"], r["state"]) for r in (one, two)] == [("821", "complete"), ("811", "complete")]
    assert one["path"].endswith("-1.wav") and two["path"].endswith("-2.wav")
    # the two files together are the whole talk (each agent's part)
    assert abs(one["duration_s"] + two["duration_s"] - row["talk_s"]) < 1.0, (one["duration_s"], two["duration_s"])
    data, _ = soundfile.read(tmp_path / "recordings" / two["path"], dtype="int16")
    assert np.median(channel_matches(data[:, 0], caller_sent)) > 0.9
    assert np.median(channel_matches(data[:, 1], agent_sent)) > 0.9
    assert ("transferred", "from=821 to=middle seat_group=middle") in crm_events(ivr, call_id)


def test_an_unwritable_recording_directory_fails_the_recording_not_the_call(  # type: ignore[no-untyped-def]
    ivr_factory, tmp_path: Path, speech: tuple[np.ndarray, np.ndarray]
) -> None:
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the recordings should go")
    metrics_port, agent_port = free_port(kind=socket.SOCK_STREAM), free_port()
    ivr = recorded_ivr(ivr_factory, tmp_path, {"821": agent_port},
                       recording=f"directory = {blocked}\n[metrics]\nport = {metrics_port}\n")
    agent = sipp_uas(tmp_path, TALKING_AGENT, agent_port, extra=media_port())
    caller = sipp(tmp_path, "talking_caller", ivr.port, extra=("-d", "14000", *media_port()))
    finished(caller)  # the call went its whole way: answered, bridged, BYE and 200
    assert agent.wait(30) == 0
    call_id = f"1-{caller.proc.pid}@127.0.0.1"
    row = wait_for_row(ivr, call_id)
    assert (row["outcome"], row["agent_number"]) == ("completed", "821") and row["talk_s"] > 3
    (rec,) = wait_recordings(ivr, call_id)
    assert rec["state"] == "failed" and rec["sha256"] is None and "NotADirectoryError" in rec["error"]
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    assert 'hotline_recording_errors_total{kind="not_a_directory"} 1.0' in text, [
        line for line in text.splitlines() if "recording" in line]
    assert 'hotline_recordings_total{state="failed"} 1.0' in text
    assert "recording_write_failed" in ivr.log()


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while we looked
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for whoever reaps in this container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_kill_9_while_recording_is_marked_interrupted_at_the_next_start(  # type: ignore[no-untyped-def]
    ivr_factory, tmp_path: Path, speech: tuple[np.ndarray, np.ndarray]
) -> None:
    agent_port = free_port()
    ivr = recorded_ivr(ivr_factory, tmp_path, {"821": agent_port})
    agent = sipp_uas(tmp_path, TALKING_AGENT, agent_port, extra=media_port())
    caller = sipp(tmp_path, "talking_caller", ivr.port, extra=("-d", "30000", *media_port()))
    call_id = f"1-{caller.proc.pid}@127.0.0.1"
    wait_log(ivr, "recording_started")
    time.sleep(3)  # a few seconds written
    kids = children(ivr.proc.pid)  # the conversation characteristics' child (and multiprocessing's tracker)
    assert kids
    os.kill(ivr.proc.pid, signal.SIGKILL)
    ivr.proc.wait(10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(map(running, kids)):
        time.sleep(0.1)
    assert not any(map(running, kids)), "the IVR's child processes outlived it"
    caller.proc.kill()
    agent.kill()
    parts = list((tmp_path / "recordings").rglob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size > 0
    assert not list((tmp_path / "recordings").rglob("*.wav"))

    again = recorded_ivr(ivr_factory, tmp_path, {"821": agent_port})  # the next start, same CRM and directory
    (rec,) = recordings(again, call_id)
    assert rec["state"] == "interrupted" and rec["sha256"] is None
    assert ".part" in rec["error"]
    assert parts[0].exists() and not parts[0].with_suffix("").exists()  # never under a complete file's name
    assert "recording_interrupted" in again.log()
