"""Live monitoring with fakes: feature codes, who may monitor, what each party hears in each mode, the CRM records."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from crm_bridge.agent_commands import request_command, take_pending
from crm_bridge.db import make_engine, migrate
from crm_bridge.models import MonitoringSession
from crm_bridge.outbox import decode, encode
from crm_bridge.records import CallRecord, RecordCall, RecordMonitoring, RecordMonitoringMode
from crm_bridge.writer import CrmWriter
from ivr.bridge import SILENCE_PCM, Hears, MediaBridge
from ivr.callflow import State
from ivr.config import ConfigError, MonitoringConfig, load_config
from ivr.monitoring import BEEP, FeatureCode, Mode, Monitor, parse_feature_code, refusal

from .test_bridge import FakeParty, g711, tone
from .test_bridge import decode as g711_decode

SETTINGS = MonitoringConfig(supervisors=frozenset({"880", "881"}))


# --- feature codes and permissions ----------------------------------------------------------------


@pytest.mark.parametrize(("callee", "code"), [
    ("*222801", FeatureCode(Mode.LISTEN, "801")),
    ("*223801", FeatureCode(Mode.WHISPER, "801")),
    ("*224821", FeatureCode(Mode.BARGE, "821")),
    ("*222", FeatureCode(Mode.LISTEN, "")),  # no agent: refused as unknown (404) by the caller
    ("*46", None), ("95000", None), ("*22", None), ("", None),
])
def test_a_monitoring_code_is_its_prefix_then_the_agent_number(callee: str, code: FeatureCode | None) -> None:
    assert parse_feature_code(callee, SETTINGS) == code


def test_the_prefixes_come_from_the_monitoring_section() -> None:
    settings = MonitoringConfig(listen_prefix="*71", whisper_prefix="*72", barge_prefix="*73")
    assert parse_feature_code("*72801", settings) == FeatureCode(Mode.WHISPER, "801")
    assert parse_feature_code("*223801", settings) is None


def test_only_a_registered_supervisor_may_monitor_and_never_their_own_calls() -> None:
    assert refusal(SETTINGS, "880", "801") is None
    assert refusal(SETTINGS, "801", "802") == "801 is not a supervisor"
    assert refusal(SETTINGS, None, "801") == "not a registered agent phone"
    assert refusal(SETTINGS, "880", "880") == "a supervisor cannot monitor their own calls"
    assert refusal(MonitoringConfig(), "880", "801") == "880 is not a supervisor"  # nobody by default


def _conf(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sip.conf"
    path.write_text("[general]\nnumbers = 95000\n" + text, encoding="utf-8")
    return path


def test_a_supervisor_must_be_an_agent_peer(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[monitoring\] supervisors.*880: no agent section"):
        load_config(_conf(tmp_path, "[monitoring]\nsupervisors = 880\n"))
    conf = load_config(_conf(tmp_path, "[monitoring]\nsupervisors = 880\nbeep = yes\n"
                                       "[880]\ntype = agent\nseat_group = junior\nsecret = pw880\n"))
    assert conf.monitoring.supervisors == {"880"} and conf.monitoring.beep


def test_prefixes_that_overlap_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must differ"):
        load_config(_conf(tmp_path, "[monitoring]\nlisten_prefix = *22\n"))
    with pytest.raises(ConfigError, match="keypad"):
        load_config(_conf(tmp_path, "[monitoring]\nbarge_prefix = 2x\n"))
    with pytest.raises(ConfigError, match=r"\[monitoring\] listen_prefix: \*4 would take calls to \*46, \*47"):
        load_config(_conf(tmp_path, "[monitoring]\nlisten_prefix = *4\n"))
    with pytest.raises(ConfigError, match=r"\[monitoring\] barge_prefix: 9 would take calls to 95000"):
        load_config(_conf(tmp_path, "[monitoring]\nbarge_prefix = 9\n"))


# --- media: what each party hears ------------------------------------------------------------------


class FakeRtp:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.on_audio: Any = None
        self.on_dtmf: Any = None

    def send_audio(self, payload: bytes, _timestamp: int) -> None:
        self.sent.append(("encoded", payload))

    def send_audio_pcm(self, pcm: bytes, _timestamp: int) -> None:
        self.sent.append(("pcm", pcm))


class FakePacer:
    def __init__(self) -> None:
        self.served: set[Any] = set()

    def serve(self, leg: Any) -> None:
        self.served.add(leg)

    def stop(self, leg: Any) -> None:
        self.served.discard(leg)


class FakeCall:
    call_id = "sup-1"

    def __init__(self) -> None:
        self.hung_up = False

    def hangup(self) -> None:
        self.hung_up = True


class FakeFlow:
    state = State.BRIDGED


class FakeCaller:
    call_id = "caller-1"
    payload_type = 0
    closed = False

    def __init__(self) -> None:
        self.flow = FakeFlow()
        self.bridge: MediaBridge | None = None


class FakeOwner:
    def __init__(self, beep: bool = False) -> None:
        self.pacer = FakePacer()
        self.records: list[Any] = []
        self.settings = MonitoringConfig(supervisors=frozenset({"880"}), beep=beep)
        self.forgotten: list[Monitor] = []

    @property
    def writer(self) -> FakeOwner:
        return self

    def submit(self, record: Any) -> None:
        self.records.append(record)

    def forget(self, monitor: Monitor) -> None:
        self.forgotten.append(monitor)


def monitored(mode: Mode = Mode.LISTEN, beep: bool = False
              ) -> tuple[Monitor, MediaBridge, FakeParty, FakeParty, FakeRtp, FakeOwner, FakeCaller]:
    caller, agent = FakeParty(0), FakeParty(0)
    bridge = MediaBridge(caller, agent)  # type: ignore[arg-type]
    bridge.connect()
    owner, leg, call = FakeOwner(beep), FakeCaller(), FakeCall()
    leg.bridge = bridge
    monitor = Monitor(owner, call, "880", "801", mode, "phone", leg)  # type: ignore[arg-type]
    rtp = FakeRtp()
    rtp.on_dtmf = monitor.on_digit
    monitor.rtp = rtp  # type: ignore[assignment]
    monitor.attach(bridge)
    return monitor, bridge, caller, agent, rtp, owner, leg


C, A, S = 988, 1980, 4092  # what the caller, the agent and the supervisor say: levels µ-law carries exactly


def q(level: int) -> bytes:
    """A level mixed on the bridge as a phone hears it: through G.711."""
    return g711(tone(level))


def tick(bridge: MediaBridge, caller: FakeParty, agent: FakeParty, supervisor: FakeRtp,
         said: tuple[int, int, int] = (C, A, S)) -> tuple[bytes, bytes, bytes]:
    """One tick in which the caller, the agent and the supervisor each say a constant level: what each one heard."""
    for rtp in (caller.rtp, agent.rtp):
        rtp.sent.clear()
    supervisor.sent.clear()
    caller.say(tone(said[0]))
    agent.say(tone(said[1]))
    if supervisor.on_audio is not None:  # listen: not even decoded
        supervisor.on_audio(tone(said[2]), 0)
    bridge.send_next_frame(1)

    def heard(sent: list[Any]) -> bytes:
        if not sent:
            return b""  # sent nothing at all
        kind, payload = sent[-1][0], sent[-1][1]
        return payload if kind == "pcm" else g711_decode(payload, 0)  # to a phone: G.711 (both parties µ-law here)

    return heard(caller.rtp.sent), heard(agent.rtp.sent), heard(supervisor.sent)


def test_a_listening_supervisor_hears_the_mix_of_both_sides_and_nobody_hears_them() -> None:
    monitor, bridge, caller, agent, supervisor, _, _ = monitored(Mode.LISTEN)
    to_caller, to_agent, to_supervisor = tick(bridge, caller, agent, supervisor)
    assert to_supervisor == tone(C + A)
    assert (to_caller, to_agent) == (tone(A), tone(C))  # each hears the other only
    assert supervisor.on_audio is None and not bridge.injections


def test_the_mix_is_clipped_not_wrapped() -> None:
    monitor, bridge, caller, agent, supervisor, _, _ = monitored(Mode.LISTEN)
    assert tick(bridge, caller, agent, supervisor, (30000, 30000, 0))[2] == tone(32767)


def test_whisper_reaches_the_agent_alone() -> None:
    monitor, bridge, caller, agent, supervisor, _, _ = monitored(Mode.WHISPER)
    to_caller, to_agent, to_supervisor = tick(bridge, caller, agent, supervisor)
    assert to_agent == q(C + S)
    assert to_caller == tone(A)
    assert to_supervisor == tone(C + A)


def test_barge_is_heard_by_both() -> None:
    monitor, bridge, caller, agent, supervisor, _, _ = monitored(Mode.BARGE)
    to_caller, to_agent, to_supervisor = tick(bridge, caller, agent, supervisor)
    assert (to_caller, to_agent, to_supervisor) == (q(A + S), q(C + S), tone(C + A))


def test_keys_4_5_6_switch_modes_during_the_call_and_each_change_is_recorded() -> None:
    monitor, bridge, caller, agent, supervisor, owner, _ = monitored(Mode.LISTEN)
    monitor.on_digit("5", 160)
    assert tick(bridge, caller, agent, supervisor)[:2] == (tone(A), q(C + S))
    monitor.on_digit("6", 160)
    assert tick(bridge, caller, agent, supervisor)[:2] == (q(A + S), q(C + S))
    monitor.on_digit("9", 160)  # not a mode key: nothing changes
    monitor.on_digit("6", 160)  # the mode it is in: not recorded again
    monitor.on_digit("4", 160)
    assert tick(bridge, caller, agent, supervisor)[:2] == (tone(A), tone(C))
    assert supervisor.on_audio is None
    modes = [r.mode for r in owner.records if isinstance(r, RecordMonitoringMode)]
    assert modes == ["listen", "whisper", "barge", "listen"]
    sessions = [r for r in owner.records if isinstance(r, RecordMonitoring)]
    assert sessions[-1].mode == "listen" and sessions[-1].session_key == "sup-1"
    assert sessions[-1].sip_call_id == "caller-1" and sessions[-1].supervisor == "880"


def test_the_beep_reaches_the_agent_once_and_never_the_caller() -> None:
    monitor, bridge, caller, agent, supervisor, _, _ = monitored(Mode.LISTEN, beep=True)
    heard = [tick(bridge, caller, agent, supervisor, (0, 0, 0)) for _ in range(len(BEEP) + 3)]
    assert [h[1] for h in heard[:len(BEEP)]] == [g711(frame) for frame in BEEP]
    assert all(h[1] == SILENCE_PCM for h in heard[len(BEEP):])
    assert all(h[0] == SILENCE_PCM for h in heard)


def test_hanging_up_takes_the_supervisor_off_the_bridge_and_records_the_end() -> None:
    monitor, bridge, caller, agent, supervisor, owner, _ = monitored(Mode.BARGE)
    monitor.end("supervisor hung up", hang_up=False)
    assert not bridge.taps and not bridge.injections
    assert tick(bridge, caller, agent, supervisor) == (tone(A), tone(C), b"")
    last = owner.records[-1]
    assert isinstance(last, RecordMonitoring) and last.end_reason == "supervisor hung up" and last.ended_at
    assert owner.forgotten == [monitor] and monitor not in owner.pacer.served


def test_the_supervisor_follows_the_caller_to_the_next_agent_and_is_hung_up_when_the_caller_leaves() -> None:
    asyncio.run(_follows())


async def _follows() -> None:
    monitor, bridge, caller, agent, supervisor, owner, leg = monitored(Mode.WHISPER)
    bridge.close()  # a transfer: the bridge ends, the caller waits for the next agent
    assert monitor.bridge is None and monitor in owner.pacer.served  # silence on the line meanwhile
    leg.flow.state = State.TRANSFERRING
    monitor.send_next_frame(10)
    await asyncio.sleep(0)
    assert not monitor.ended and supervisor.sent[-1][0] == "encoded"
    second = MediaBridge(caller, FakeParty(0))  # type: ignore[arg-type]
    second.connect()
    leg.bridge = second
    monitor.attach(second)  # Monitoring.bridged does this for the same caller's leg
    assert monitor in second.taps and monitor not in owner.pacer.served
    assert second.injections == {monitor.voice: Hears.AGENT}  # still whispering
    second.close()
    leg.flow.state = State.SURVEY  # the agent hung up: the caller rates, nobody to follow
    monitor.send_next_frame(20)
    await asyncio.sleep(0)
    assert monitor.ended and monitor.call.hung_up


# --- the CRM -----------------------------------------------------------------------------------------


def test_a_session_and_its_mode_changes_reach_the_crm_through_the_outbox_format(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(engine)
    writer = CrmWriter(engine)
    start = datetime(2026, 12, 6, 3, 0, tzinfo=UTC)
    session = RecordMonitoring("sup-1", "caller-1", "801", "880", "phone", "listen", start)
    records: list[Any] = [
        RecordCall(CallRecord("caller-1", "13800000000", "95000", start)),
        session, RecordMonitoringMode("sup-1", start, "listen"),
        RecordMonitoringMode("sup-1", start + timedelta(seconds=5), "whisper"),
        RecordMonitoring("sup-1", "caller-1", "801", "880", "phone", "whisper", start,
                         start + timedelta(seconds=9), "supervisor hung up"),
    ]
    assert [decode(encode(i, r))[1] for i, r in enumerate(records)] == records  # journaled and replayed alike
    writer._apply(list(enumerate(records[:3], 1)))
    writer._apply(list(enumerate(records[3:], 4)))
    with Session(engine) as s:
        row = s.scalars(select(MonitoringSession)).one()
        assert (row.supervisor, row.agent_number, row.via, row.mode, row.end_reason) == (
            "880", "801", "phone", "whisper", "supervisor hung up")
        assert [(c.mode, c.at.replace(tzinfo=UTC)) for c in row.changes] == [
            ("listen", start), ("whisper", start + timedelta(seconds=5))]
    engine.dispose()


def test_a_desk_monitor_command_carries_the_supervisor_and_the_mode(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(engine)
    with pytest.raises(ValueError, match="supervisor"):
        request_command(engine, "801", "monitor", mode="listen")
    with pytest.raises(ValueError, match="mode"):
        request_command(engine, "801", "monitor", supervisor="880", mode="spy")
    request_command(engine, "801", "monitor", supervisor="880", mode="whisper", requested_by="王经理")
    [command] = take_pending(engine)
    assert (command.command, command.agent, command.supervisor, command.mode) == ("monitor", "801", "880", "whisper")
    engine.dispose()


def test_feature_code_refusals_answer_403_404_480() -> None:
    """The engine's path with fakes: a non-supervisor 403, an unknown agent 404, an idle agent 480."""
    from ivr.monitoring import Monitoring

    class Seat:
        contact = ("127.0.0.1", 5070)
        contact_uri = None

    class Pool:
        seats = {"801": Seat(), "880": Seat(), "802": Seat()}

    class AgentsFake:
        pool = Pool()
        where = "880"

        def agent_at(self, phone: tuple[str, int]) -> str | None:
            return self.where

    class Invite:
        def get_header(self, name: str) -> str:
            return "<sip:880@127.0.0.1:5070>"

    class Rejected:
        call_id = "sup-2"
        source_addr = ("127.0.0.1", 5070)
        invite = Invite()
        sdp_offer = None

        def __init__(self) -> None:
            self.status: int | None = None

        def reject(self, status: int, reason: str) -> None:
            self.status = status

    class Conf:
        monitoring = SETTINGS

        class limits:  # noqa: N801
            trusted: frozenset[str] = frozenset()

    agents = AgentsFake()
    monitoring = Monitoring(Conf(), None, None, FakePacer(), {}, agents, None, lambda c: None, "127.0.0.1")  # type: ignore[arg-type]

    def status(callee: str, who: str | None) -> int | None:
        agents.where = who  # type: ignore[assignment]
        call = Rejected()
        assert monitoring.feature_code(call, callee)  # type: ignore[arg-type]
        return call.status

    assert status("*222801", "802") == 403  # an agent, not a supervisor
    assert status("*222801", None) == 403  # not a registered phone at all
    assert status("*222999", "880") == 404
    assert status("*222801", "880") == 480  # 801 is not talking
    assert not monitoring.feature_code(Rejected(), "*46")  # type: ignore[arg-type]


def test_two_supervisors_monitor_one_call_each_in_their_own_mode() -> None:
    first, bridge, caller, agent, supervisor, owner, leg = monitored(Mode.WHISPER)
    call = FakeCall()
    call.call_id = "sup-2"
    second = Monitor(owner, call, "881", "801", Mode.LISTEN, "desk", leg)  # type: ignore[arg-type]
    second_rtp = FakeRtp()
    second.rtp = second_rtp  # type: ignore[assignment]
    second.attach(bridge)
    to_caller, to_agent, to_first = tick(bridge, caller, agent, supervisor)
    assert (to_caller, to_agent, to_first) == (tone(A), q(C + S), tone(C + A))
    assert second_rtp.sent == [("pcm", tone(C + A))]  # the second listener hears the call, not the first's whisper
    second.on_digit("6", 160)
    assert second_rtp.on_audio is not None
    second_rtp.on_audio(tone(100), 0)
    assert tick(bridge, caller, agent, supervisor)[:2] == (q(A + 100), q(C + S + 100))
