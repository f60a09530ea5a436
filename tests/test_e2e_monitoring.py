"""End to end: a supervisor's registered phone (pjsua2) listens to, whispers into and barges into a live call.

Real SIP over UDP on loopback: a SIPp caller and a SIPp agent whose SDPs point
their RTP at Python peers (`RtpPeer`: each sends a tone of its own and keeps
what it receives), so what each party hears is measured at its own RTP. The
caller says 500 Hz, the agent 1500 Hz, the supervisor (pjsua2 playing a WAV
made here) 1000 Hz; the supervisor's phone records what it hears to a WAV.
"""

from __future__ import annotations

import re
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .audio import RtpPeer, strength, tone
from .conftest import ROOT, IvrProcess, free_port, sipp
from .test_e2e_routing import agents_conf, customers

pytestmark = pytest.mark.e2e

CALLER_HZ, AGENT_HZ, SUPERVISOR_HZ = 500.0, 1500.0, 1000.0


def write_wav(path: Path, samples: np.ndarray, rate: int = 8000) -> None:
    import wave

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())


def read_recording(path: Path) -> tuple[int, np.ndarray]:
    """pjsua2's recording: its rate and samples (the data chunk read to the end of the file, header or not)."""
    data = path.read_bytes()
    fmt = data.index(b"fmt ")
    rate = struct.unpack_from("<I", data, fmt + 12)[0]
    start = data.index(b"data") + 8
    body = data[start:]
    return rate, np.frombuffer(body[: len(body) // 2 * 2], "<i2")


def supervisor_phone(tmp: Path, ivr: IvrProcess, account: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "supervisor_phone.py"), "--ivr-port", str(ivr.port),
         "--account", account, "--password", f"pw{account}", *args],
        cwd=ROOT / "tests", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def times(output: str, what: str) -> list[float]:
    return [float(m) for m in re.findall(rf"^{what} ([\d.]+)$", output, re.M)]


def wait_for_log(ivr: IvrProcess, pattern: str, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if re.search(pattern, ivr.log()):
            return
        time.sleep(0.1)
    raise AssertionError(f"no {pattern!r} in the IVR's log:\n{ivr.log()[-3000:]}")


def monitoring_rows(db: Path, timeout: float = 10, count: int = 1) -> list[tuple[str, ...]]:
    deadline = time.monotonic() + timeout
    rows: list[tuple[str, ...]] = []
    while time.monotonic() < deadline:
        with sqlite3.connect(db) as conn:
            rows = conn.execute(
                "SELECT s.supervisor, s.agent_number, s.via, s.end_reason, "
                "(SELECT group_concat(mode, ',') FROM (SELECT mode FROM monitoring_mode_changes m "
                " WHERE m.session_id = s.id ORDER BY m.at, m.id)) FROM monitoring_sessions s "
                "WHERE s.ended_at IS NOT NULL ORDER BY s.id").fetchall()
        if len(rows) >= count:
            return rows
        time.sleep(0.2)
    return rows


@pytest.fixture
def monitored_call(ivr_factory, tmp_path: Path):  # type: ignore[no-untyped-def]
    """An IVR with agent 801 (SIPp, talking 40 s) bridged to a caller (SIPp); supervisors 880 and 881 registered."""
    agent_port = free_port()
    db = tmp_path / "crm.db"
    db_url = f"sqlite:///{db}"
    customers(tmp_path, db_url)
    phones = "".join(f"[{n}]\ntype = agent\nseat_group = junior\nsecret = pw{n}\nhost = dynamic\n"
                     for n in ("880", "802"))
    ivr = ivr_factory(db_url=db_url, extra="[queues]\nwrap_up_seconds = 0\n[survey]\ntimeout_seconds = 2\n"
                      "[monitoring]\nsupervisors = 880\n"
                      + agents_conf(**{"801": ("senior", f"127.0.0.1:{agent_port}")}) + phones)
    caller_peer, agent_peer = RtpPeer(CALLER_HZ), RtpPeer(AGENT_HZ)
    agent = sipp(tmp_path, "agent_sink_uas", ivr.port,
                 extra=("-d", "40000", "-p", str(agent_port), "-key", "sink_port", str(agent_peer.port)), timeout_s=120)
    caller = sipp(tmp_path, "monitored_caller", ivr.port, extra=("-key", "sink_port", str(caller_peer.port)),
                  timeout_s=120)
    try:
        wait_for_log(ivr, r"event='bridged'")
        caller_peer.talking.set()
        agent_peer.talking.set()
        yield ivr, db, caller_peer, agent_peer
    finally:
        for peer in (caller_peer, agent_peer):
            peer.stop()
        for run in (agent, caller):
            if run.proc.poll() is None:
                run.proc.kill()


def test_a_supervisor_listens_whispers_and_barges_and_a_non_supervisor_is_refused(
        monitored_call, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr, db, caller, agent = monitored_call
    voice, heard = tmp_path / "supervisor.wav", tmp_path / "heard.wav"
    write_wav(voice, tone(SUPERVISOR_HZ, 2.0))

    # agent 802's phone is registered but not a supervisor: 403
    intruder = supervisor_phone(tmp_path, ivr, "802", "--dial", "*222801", "--retry-for", "0", "--timeout", "20")
    out, _ = intruder.communicate(timeout=40)
    assert "registered 200" in out and "dialled *222801 403" in out, out

    phone = supervisor_phone(tmp_path, ivr, "880", "--dial", "*222801", "--play", str(voice), "--record", str(heard),
                             "--keys", "5@3,6@6", "--hangup-after", "9")
    out, _ = phone.communicate(timeout=60)
    [answered], [w_at, b_at] = times(out, "confirmed"), times(out, "key [56]")
    [recording_at], [hung_up_at] = times(out, "recording"), times(out, "hung up")

    # listen: the supervisor hears both sides; neither side hears the supervisor
    rate, samples = read_recording(heard)

    def supervisor_heard(start: float, end: float) -> np.ndarray:
        return samples[int((start - recording_at) * rate):int((end - recording_at) * rate)]

    listen = (answered + 0.7, w_at - 0.2)
    mix = supervisor_heard(*listen)
    assert strength(mix, CALLER_HZ, rate) > 0.05 and strength(mix, AGENT_HZ, rate) > 0.05, (
        f"the supervisor heard caller {strength(mix, CALLER_HZ, rate):.3f}, agent {strength(mix, AGENT_HZ, rate):.3f}")
    assert strength(agent.heard(*listen), CALLER_HZ) > 0.1  # the call itself goes on
    assert strength(agent.heard(*listen), SUPERVISOR_HZ) < 0.01
    assert strength(caller.heard(*listen), SUPERVISOR_HZ) < 0.01
    # whisper (key 5): the agent hears the supervisor, the caller does not
    whisper = (w_at + 0.5, b_at - 0.2)
    assert strength(agent.heard(*whisper), SUPERVISOR_HZ) > 0.05
    assert strength(caller.heard(*whisper), SUPERVISOR_HZ) < 0.01
    assert strength(caller.heard(*whisper), AGENT_HZ) > 0.1
    # barge (key 6): all three hear each other
    barge = (b_at + 0.5, hung_up_at - 0.2)
    assert strength(agent.heard(*barge), SUPERVISOR_HZ) > 0.05
    assert strength(caller.heard(*barge), SUPERVISOR_HZ) > 0.05
    assert strength(supervisor_heard(*barge), CALLER_HZ, rate) > 0.05
    # the supervisor gone, nobody hears them any more
    after = (hung_up_at + 0.5, hung_up_at + 1.5)
    time.sleep(max(0.0, after[1] - time.monotonic()))
    assert strength(caller.heard(*after), SUPERVISOR_HZ) < 0.01

    assert monitoring_rows(db) == [("880", "801", "phone", "supervisor hung up", "listen,whisper,barge")]
    assert re.search(r"event='monitoring_refused'.*reason='802 is not a supervisor'", ivr.log())


def test_the_desk_button_rings_the_supervisors_phone_into_the_call(monitored_call, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A supervisor's POST on the desk (with its CSRF token) queues a monitor command; the IVR takes it within a
    second, rings the supervisor's registered phone and, once answered, the phone hears both sides."""
    from starlette.testclient import TestClient

    from crm_bridge.db import make_engine
    from desk.app import create_app
    from desk.auth import set_password
    from desk.config import load_desk_config

    from .test_desk import csrf_of, login

    ivr, db, caller, agent = monitored_call
    heard = tmp_path / "heard-desk.wav"
    phone = supervisor_phone(tmp_path, ivr, "880", "--answer", "--record", str(heard), "--keys", "5@2",
                             "--hangup-after", "4", "--timeout", "40")
    wait_for_log(ivr, r"event='agent_registered' agent='880'")
    engine = make_engine(f"sqlite:///{db}")
    set_password(engine, "王经理", "supervisor-pw", role="supervisor")
    app = create_app(load_desk_config(tmp_path / "sip.conf"), engine)
    with TestClient(app, base_url="https://testserver") as client:
        login(client, "王经理", "supervisor-pw")
        r = client.post("/monitor", data={"csrf": csrf_of(client, "/wallboard"), "agent": "801", "phone": "880",
                                          "mode": "listen", "back": "/wallboard"})
        assert r.status_code == 200 and "已发送" in r.text
    engine.dispose()

    out, _ = phone.communicate(timeout=60)
    [answered], [recording_at] = times(out, "confirmed"), times(out, "recording")
    rate, samples = read_recording(heard)
    start = int((answered + 0.7 - recording_at) * rate)
    mix = samples[start:start + int(1.0 * rate)]
    assert strength(mix, CALLER_HZ, rate) > 0.05 and strength(mix, AGENT_HZ, rate) > 0.05, out
    assert monitoring_rows(db) == [("880", "801", "desk", "supervisor hung up", "listen,whisper")]
    assert re.search(r"event='monitoring_ringing'", ivr.log())


def test_the_supervisor_follows_a_transferred_caller_and_is_hung_up_when_the_caller_leaves(  # type: ignore[no-untyped-def]
        ivr_factory, tmp_path: Path) -> None:
    """801 (silent) transfers the caller to 811 (1500 Hz): the supervisor listening to 801 hears 811 next, and the
    IVR hangs the supervisor up once 811 has hung up and the caller is in the survey."""
    from .test_e2e_waiting import sipp_uas

    first_port, second_port = free_port(), free_port()
    db = tmp_path / "crm.db"
    customers(tmp_path, f"sqlite:///{db}")
    ivr = ivr_factory(db_url=f"sqlite:///{db}", extra=(
        "[queues]\nwrap_up_seconds = 0\n[survey]\ntimeout_seconds = 2\n[monitoring]\nsupervisors = 880\n"
        + agents_conf(**{"801": ("senior", f"127.0.0.1:{first_port}"), "811": ("middle", f"127.0.0.1:{second_port}")})
        + "[880]\ntype = agent\nseat_group = junior\nsecret = pw880\nhost = dynamic\n"))
    caller_peer, second_peer = RtpPeer(CALLER_HZ), RtpPeer(AGENT_HZ)
    first = sipp_uas(tmp_path, ROOT / "tests" / "sipp" / "agent_refer_uas.xml", first_port,
                     extra=("-d", "8000", "-key", "refer_to", "<sip:811@127.0.0.1>"))
    second = sipp(tmp_path, "agent_sink_uas", ivr.port,
                  extra=("-d", "8000", "-p", str(second_port), "-key", "sink_port", str(second_peer.port)),
                  timeout_s=120)
    caller = sipp(tmp_path, "monitored_caller", ivr.port, extra=("-key", "sink_port", str(caller_peer.port)),
                  timeout_s=120)
    heard = tmp_path / "heard.wav"
    try:
        wait_for_log(ivr, r"event='bridged'")
        caller_peer.talking.set()
        second_peer.talking.set()
        phone = supervisor_phone(tmp_path, ivr, "880", "--dial", "*222801", "--record", str(heard),
                                 "--hangup-after", "40", "--timeout", "60")
        out, _ = phone.communicate(timeout=90)
    finally:
        for peer in (caller_peer, second_peer):
            peer.stop()
        for run in (first, second.proc, caller.proc):
            if run.poll() is None:
                run.kill()
    [recording_at], [gone] = times(out, "recording"), times(out, "disconnected")  # the IVR hung up, not the phone
    rate, samples = read_recording(heard)
    # the last seconds of the conversation with 811, before the IVR hung the supervisor up
    window = samples[int((gone - 2.5 - recording_at) * rate):int((gone - 0.6 - recording_at) * rate)]
    assert strength(window, AGENT_HZ, rate) > 0.05 and strength(window, CALLER_HZ, rate) > 0.05, out
    assert re.search(r"event='monitoring_followed'.*to_agent='811'", ivr.log())
    assert monitoring_rows(db) == [("880", "801", "phone", "call ended", "listen")]
