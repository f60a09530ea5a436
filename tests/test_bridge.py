"""The bridge on the media clock: one frame per side per tick, taps in step, injections mixed in."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from aiortp.codecs import get_codec

from ivr.bridge import FRAME_BYTES, MAX_BUFFERED_FRAMES, SILENCE_PCM, ULAW_SILENCE, Hears, MediaBridge, mix
from ivr.media import SILENCE_FRAMES


class FakeRtp:
    """What the bridge asks of an aiortp session: sends recorded, payload_sink set by the bridge."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int]] = []  # ("encoded", G.711 payload, timestamp)
        self.on_audio = None
        self.payload_sink: Callable[[bytes, int], None] | None = None
        self.seq = 0

    def send_audio(self, payload: bytes, timestamp: int) -> None:
        self.sent.append(("encoded", payload, timestamp))

    def send_audio_pcm(self, pcm: bytes, timestamp: int) -> None:  # a monitoring supervisor's leg
        self.sent.append(("pcm", pcm, timestamp))

    def receive(self, payload: bytes, seq: int | None = None) -> None:
        """A packet arrives from the phone (the next sequence number unless given)."""
        self.seq = self.seq + 1 if seq is None else seq
        assert self.payload_sink is not None, "the bridge takes this session's audio"
        self.payload_sink(payload, self.seq & 0xFFFF)


class FakeParty:
    def __init__(self, payload_type: int = 0) -> None:
        self.rtp = FakeRtp()
        self.payload_type = payload_type
        self._ts = 1000

    def next_timestamp(self) -> int:
        self._ts += 160
        return self._ts

    def say(self, pcm: bytes, seq: int | None = None) -> None:
        """The phone sends `pcm`, encoded in its own codec."""
        self.rtp.receive(encode(pcm, self.payload_type), seq)

    def heard(self) -> bytes:
        """What the phone was sent last, decoded."""
        return decode(self.rtp.sent[-1][1], self.payload_type)


def encode(pcm: bytes, payload_type: int) -> bytes:
    return get_codec(payload_type).encode(pcm)


def decode(payload: bytes, payload_type: int) -> bytes:
    return get_codec(payload_type).decode(payload)


def g711(pcm: bytes, payload_type: int = 0) -> bytes:
    """`pcm` as it comes out of G.711 of that payload type: what a tap sees of a phone's speech."""
    return decode(encode(pcm, payload_type), payload_type)


def tone(level: int, frames: int = 1) -> bytes:
    return np.full(160 * frames, level, dtype="<i2").tobytes()


def bridged(caller_pt: int = 0, agent_pt: int = 8) -> tuple[MediaBridge, FakeParty, FakeParty]:
    caller, agent = FakeParty(caller_pt), FakeParty(agent_pt)
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


def test_what_a_phone_sends_reaches_the_other_unchanged_when_both_speak_the_same_codec() -> None:
    bridge, caller, agent = bridged(0, 0)
    caller.rtp.receive(b"\x12" * 160)
    agent.rtp.receive(b"\x34" * 160)
    bridge.send_next_frame(1)
    assert agent.rtp.sent[-1][:2] == ("encoded", b"\x12" * 160)  # not decoded and encoded again
    assert caller.rtp.sent[-1][:2] == ("encoded", b"\x34" * 160)
    assert caller.rtp.on_audio is None and agent.rtp.on_audio is None  # nobody decodes meanwhile


def test_mu_law_and_a_law_phones_hear_each_other_through_the_g711_tables() -> None:
    bridge, caller, agent = bridged(0, 8)
    caller.say(tone(100))
    agent.say(tone(-200))
    bridge.send_next_frame(1)
    assert agent.heard() == g711(g711(tone(100), 0), 8)
    assert caller.heard() == g711(g711(tone(-200), 8), 0)
    every_ulaw = bytes(range(256))  # the table loses nothing a direct conversion keeps
    assert bridge.to_agent.from_other == encode(decode(every_ulaw, 0), 8)


def test_30_ms_packets_are_cut_into_20_ms_frames_in_order() -> None:
    bridge, caller, agent = bridged(0, 0)
    said = bytes(range(240)) + bytes(range(240, 256)) + bytes(range(224))  # two 30 ms packets: three frames
    caller.rtp.receive(said[:240])
    caller.rtp.receive(said[240:])
    for tick in range(4):
        bridge.send_next_frame(tick)
    frames = [payload for _, payload, _ in agent.rtp.sent[:3]]
    assert b"".join(frames) == said
    assert agent.rtp.sent[-1][1] == SILENCE_FRAMES[0]  # then silence


def test_a_burst_keeps_at_most_80_ms_and_drops_the_oldest_audio() -> None:
    bridge, caller, agent = bridged(0, 0)
    for level in range(10):  # ten frames at once, after a network stall
        caller.rtp.receive(bytes([level]) * 160)
    assert bridge.from_caller.dropped == 10 - MAX_BUFFERED_FRAMES
    for tick in range(MAX_BUFFERED_FRAMES):
        bridge.send_next_frame(tick)
    heard = [payload for _, payload, _ in agent.rtp.sent]
    assert heard == [bytes([level]) * 160 for level in range(10 - MAX_BUFFERED_FRAMES, 10)]


def test_a_late_or_duplicated_packet_is_dropped_and_a_new_stream_is_followed() -> None:
    bridge, caller, agent = bridged(0, 0)
    caller.rtp.receive(b"\x01" * 160, seq=65535)
    caller.rtp.receive(b"\x02" * 160, seq=1)  # newer across the wrap: one packet lost on the way
    caller.rtp.receive(b"\x03" * 160, seq=0)  # the lost one, too late: played out of order it would garble
    caller.rtp.receive(b"\x04" * 160, seq=1)  # a duplicate
    caller.rtp.receive(b"\x05" * 160, seq=30000)  # a jump: a new stream (re-INVITE, another SSRC)
    for tick in range(3):
        bridge.send_next_frame(tick)
    assert [payload[0] for _, payload, _ in agent.rtp.sent] == [1, 2, 5]
    assert bridge.from_caller.late == 2


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
    caller.say(tone(700))
    bridge.send_next_frame(1)
    agent.say(tone(900))
    bridge.send_next_frame(2)
    assert seen == [(g711(tone(700), 0), SILENCE_PCM), (SILENCE_PCM, g711(tone(900), 8))]
    assert all(len(c) == len(a) == FRAME_BYTES for c, a in seen)
    assert agent.rtp.sent[-1][1] == SILENCE_FRAMES[8]  # a tap changes nothing sent
    assert caller.heard() == g711(g711(tone(900), 8), 0)
    bridge.close()
    assert Recorder.closed and caller.rtp.payload_sink is None and agent.rtp.payload_sink is None


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
    bridge, caller, agent = bridged(0, 0)
    caller.say(tone(1000))
    agent.say(tone(2000))
    bridge.inject(Voice(tone(300)), hears)
    bridge.send_next_frame(1)
    from_caller, from_agent = g711(tone(1000)), g711(tone(2000))
    assert agent.heard() == (g711(mix(from_caller, tone(300))) if agent_hears_it else from_caller)
    assert caller.heard() == (g711(mix(from_agent, tone(300))) if caller_hears_it else from_agent)


def test_switching_an_injection_from_whisper_to_barge_takes_effect_on_the_next_tick() -> None:
    bridge, caller, agent = bridged(0, 0)
    voice = Voice(tone(500), tone(500))
    bridge.inject(voice, Hears.AGENT)
    bridge.send_next_frame(1)
    assert caller.rtp.sent[-1] == ("encoded", SILENCE_FRAMES[0], caller._ts)
    bridge.inject(voice, Hears.BOTH)
    bridge.send_next_frame(2)
    assert caller.heard() == agent.heard() == g711(tone(500))
    bridge.remove_injection(voice)
    assert bridge.injections == {}


def test_mixing_clips_instead_of_wrapping_around() -> None:
    assert mix(tone(30000), tone(10000)) == tone(32767)
    assert mix(tone(-30000), tone(-10000)) == tone(-32768)
    assert mix(None, tone(3)) == tone(3)


def test_a_ulaw_tap_gets_both_sides_in_ulaw_with_digital_silence_and_nothing_is_decoded_for_it() -> None:
    bridge, caller, agent = bridged(0, 8)  # a µ-law caller, an A-law agent
    seen: list[tuple[bytes, bytes]] = []

    class Recorder:
        def frame(self, caller_ulaw: bytes, agent_ulaw: bytes) -> None:
            seen.append((caller_ulaw, agent_ulaw))

        def close(self) -> None:
            pass

    bridge.add_ulaw_tap(Recorder())
    caller.say(tone(700))
    bridge.send_next_frame(1)
    agent.say(tone(900))
    bridge.send_next_frame(2)
    assert seen[0] == (encode(tone(700), 0), ULAW_SILENCE)
    assert seen[1][0] == ULAW_SILENCE and decode(seen[1][1], 0) == g711(g711(tone(900), 8), 0)
    assert decode(ULAW_SILENCE, 0) == SILENCE_PCM  # silence in the file is digital zero
    assert not bridge.taps  # the PCM path stays off: frames are forwarded as they came
    assert agent.rtp.sent[-2][1] == encode(decode(encode(tone(700), 0), 0), 8)
