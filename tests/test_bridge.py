"""The bridge on the media clock: one frame per side per tick, taps in step, injections mixed in."""

from __future__ import annotations

import numpy as np
import pytest

from ivr.bridge import FRAME_BYTES, MAX_BUFFERED_FRAMES, SILENCE_PCM, Hears, MediaBridge, mix
from ivr.media import SILENCE_FRAMES


class FakeRtp:
    """What the bridge asks of an aiortp session: sends recorded, on_audio set by the bridge."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int]] = []  # ("pcm" | "encoded", payload, timestamp)
        self.on_audio = None

    def send_audio(self, payload: bytes, timestamp: int) -> None:
        self.sent.append(("encoded", payload, timestamp))

    def send_audio_pcm(self, pcm: bytes, timestamp: int) -> None:
        self.sent.append(("pcm", pcm, timestamp))


class FakeParty:
    def __init__(self, payload_type: int = 0) -> None:
        self.rtp = FakeRtp()
        self.payload_type = payload_type
        self._ts = 1000

    def next_timestamp(self) -> int:
        self._ts += 160
        return self._ts


def tone(level: int, frames: int = 1) -> bytes:
    return np.full(160 * frames, level, dtype="<i2").tobytes()


def bridged() -> tuple[MediaBridge, FakeParty, FakeParty]:
    caller, agent = FakeParty(0), FakeParty(8)
    bridge = MediaBridge(caller, agent)  # type: ignore[arg-type]
    bridge.connect()
    return bridge, caller, agent


def test_each_side_gets_one_frame_every_tick_even_when_nobody_speaks() -> None:
    bridge, caller, agent = bridged()
    for tick in range(50):
        bridge.send_next_frame(tick)
    # silence in each side's own codec, pre-encoded: PCMU to the caller, PCMA to the agent
    assert caller.rtp.sent == [("encoded", SILENCE_FRAMES[0], 1000 + 160 * (i + 1)) for i in range(50)]
    assert agent.rtp.sent == [("encoded", SILENCE_FRAMES[8], 1000 + 160 * (i + 1)) for i in range(50)]
    assert bridge.from_caller.underruns == bridge.from_agent.underruns == 50


def test_what_the_caller_says_reaches_the_agent_on_the_next_tick() -> None:
    bridge, caller, agent = bridged()
    assert caller.rtp.on_audio is not None and agent.rtp.on_audio is not None
    caller.rtp.on_audio(tone(100), 0)
    agent.rtp.on_audio(tone(-200), 0)
    bridge.send_next_frame(1)
    assert agent.rtp.sent[-1][:2] == ("pcm", tone(100))
    assert caller.rtp.sent[-1][:2] == ("pcm", tone(-200))


def test_30_ms_packets_are_cut_into_20_ms_frames_in_order() -> None:
    bridge, caller, agent = bridged()
    assert caller.rtp.on_audio is not None
    samples = np.arange(240 * 2, dtype="<i2")  # two 30 ms packets = three 20 ms frames
    caller.rtp.on_audio(samples[:240].tobytes(), 0)
    caller.rtp.on_audio(samples[240:].tobytes(), 240)
    for tick in range(4):
        bridge.send_next_frame(tick)
    frames = [payload for kind, payload, _ in agent.rtp.sent if kind == "pcm"]
    assert b"".join(frames) == samples.tobytes()
    assert agent.rtp.sent[-1][0] == "encoded"  # then silence


def test_a_burst_keeps_at_most_80_ms_and_drops_the_oldest_audio() -> None:
    bridge, caller, agent = bridged()
    assert caller.rtp.on_audio is not None
    for level in range(10):  # ten frames at once, after a network stall
        caller.rtp.on_audio(tone(level), 0)
    assert bridge.from_caller.dropped == 10 - MAX_BUFFERED_FRAMES
    for tick in range(MAX_BUFFERED_FRAMES):
        bridge.send_next_frame(tick)
    heard = [payload for _, payload, _ in agent.rtp.sent]
    assert heard == [tone(level) for level in range(10 - MAX_BUFFERED_FRAMES, 10)]


def test_a_tap_sees_both_sides_of_the_same_tick_with_silence_where_one_was_quiet() -> None:
    bridge, caller, agent = bridged()
    seen: list[tuple[bytes, bytes]] = []

    class Recorder:
        closed = False

        def frame(self, caller_pcm: bytes, agent_pcm: bytes) -> None:
            seen.append((caller_pcm, agent_pcm))

        def close(self) -> None:
            Recorder.closed = True

    bridge.add_tap(Recorder())
    assert caller.rtp.on_audio is not None and agent.rtp.on_audio is not None
    caller.rtp.on_audio(tone(7), 0)
    bridge.send_next_frame(1)
    agent.rtp.on_audio(tone(9), 0)
    bridge.send_next_frame(2)
    assert seen == [(tone(7), SILENCE_PCM), (SILENCE_PCM, tone(9))]
    assert all(len(c) == len(a) == FRAME_BYTES for c, a in seen)
    bridge.close()
    assert Recorder.closed and caller.rtp.on_audio is None and agent.rtp.on_audio is None


def test_a_tap_that_raises_is_removed_and_the_call_goes_on() -> None:
    bridge, caller, agent = bridged()

    class Broken:
        def frame(self, caller_pcm: bytes, agent_pcm: bytes) -> None:
            raise OSError("disk full")

        def close(self) -> None:
            pass

    bridge.add_tap(Broken())
    bridge.send_next_frame(1)
    bridge.send_next_frame(2)
    assert bridge.taps == []
    assert len(caller.rtp.sent) == len(agent.rtp.sent) == 2


class Voice:
    """A supervisor's voice: one frame a tick while there is any."""

    def __init__(self, *frames: bytes) -> None:
        self.frames = list(frames)

    def next_frame(self) -> bytes | None:
        return self.frames.pop(0) if self.frames else None


@pytest.mark.parametrize(("hears", "agent_hears_it", "caller_hears_it"), [
    (Hears.AGENT, True, False),  # whisper: coaching the agent, the caller hears nothing
    (Hears.BOTH, True, True),  # barge: a three-way conversation
    (Hears.CALLER, False, True),
])
def test_an_injection_is_heard_by_its_side_only(hears: Hears, agent_hears_it: bool, caller_hears_it: bool) -> None:
    bridge, caller, agent = bridged()
    assert caller.rtp.on_audio is not None and agent.rtp.on_audio is not None
    caller.rtp.on_audio(tone(1000), 0)
    agent.rtp.on_audio(tone(2000), 0)
    bridge.inject(Voice(tone(30)), hears)
    bridge.send_next_frame(1)
    assert agent.rtp.sent[-1][1] == (tone(1030) if agent_hears_it else tone(1000))
    assert caller.rtp.sent[-1][1] == (tone(2030) if caller_hears_it else tone(2000))


def test_switching_an_injection_from_whisper_to_barge_takes_effect_on_the_next_tick() -> None:
    bridge, caller, agent = bridged()
    voice = Voice(tone(5), tone(5))
    bridge.inject(voice, Hears.AGENT)
    bridge.send_next_frame(1)
    assert caller.rtp.sent[-1] == ("encoded", SILENCE_FRAMES[0], caller._ts)
    bridge.inject(voice, Hears.BOTH)
    bridge.send_next_frame(2)
    assert caller.rtp.sent[-1][:2] == ("pcm", tone(5)) and agent.rtp.sent[-1][:2] == ("pcm", tone(5))
    bridge.remove_injection(voice)
    assert bridge.injections == {}


def test_mixing_clips_instead_of_wrapping_around() -> None:
    assert mix(tone(30000), tone(10000)) == tone(32767)
    assert mix(tone(-30000), tone(-10000)) == tone(-32768)
    assert mix(None, tone(3)) == tone(3)
