"""The bridge between a caller and an agent, on the shared 20 ms media clock.

Theory of operation. A bridge is a participant of `ivr.media.MediaClock`,
like a leg playing a prompt: every tick it takes one 20 ms frame of what each
party said and sends each party the other's frame. A party that sent nothing
this tick (a silent phone with voice activity detection, a lost packet, a late
one) is heard as silence, so each side gets exactly one frame per tick,
whatever the other does: a phone that hangs up on an RTP timeout never finds
the line dead behind a quiet caller.

What a party said stays G.711 as it came off the wire: each session hands its
audio payloads straight to the bridge (`payload_sink`, `ivr.media`), not
decoded, and a frame goes to the other side unchanged (or through a 256-byte
table when one side speaks µ-law and the other A-law: the conversion a
transcoding gateway does). Decoding to PCM happens only for what needs
samples: PCM taps, and a side that hears an injection (its frame is mixed and
encoded again).

Between receiving and sending sit two seams, in the manner of Asterisk's
audiohooks (spy, whisper) and FreeSWITCH's media bugs:

- **taps** see both parties' frames of the same tick, in step, before any
  injection: the caller's and the agent's own voices. A PCM tap (a
  supervisor listening hears their mix) gets 16-bit PCM; a µ-law tap (the
  recorder, which writes them as the left and right channels) gets both as
  µ-law, so nothing is decoded on the clock for it: its writer thread
  decodes a second at a time;
- **injections** add audio to what one side hears, or both: a supervisor's
  voice to the agent alone (whisper) or to both (barge), a beep.

Both run on the media clock and must return at once: a tap hands its frames
to a thread or a queue, it never writes a file here. A tap or injection that
raises is removed and logged; the call goes on. With neither, a tick costs a
queue pop and a send per side.

Each side's received audio waits in a short queue of 20 ms frames (any
packet time works: 30 ms packets are cut into 20 ms frames). It holds at most
`MAX_BUFFERED_FRAMES`; past that the oldest audio is dropped, so a sender
whose clock runs fast, or a burst after a network stall, never builds up
delay in the conversation. A packet older than the last one taken (reordered
or duplicated by the network) is dropped: it would be played out of order;
a jump of the sequence number (a new stream after a re-INVITE) is followed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Protocol

import numpy as np
import structlog
from aiortp.codecs import get_codec

from ivr.media import SILENCE_FRAMES, RtpSession

log = structlog.get_logger("ivr.bridge")

FRAME_BYTES = 320  # 20 ms of 8 kHz 16-bit mono PCM: 160 samples
G711_FRAME = 160  # ... and of G.711: a byte a sample
SILENCE_PCM = bytes(FRAME_BYTES)
ULAW_SILENCE = SILENCE_FRAMES[0]  # µ-law's code for 0: digital silence
MAX_BUFFERED_FRAMES = 4  # 80 ms of received audio waiting for the clock; older audio is dropped
REORDER_WINDOW = 64  # a packet this many sequence numbers behind the last is late, farther back a new stream


def _transcoding_table(source: int, target: int) -> bytes | None:
    """The 256-byte table that turns G.711 of payload type `source` into `target` (None: the same codec)."""
    if source == target:
        return None
    pcm = get_codec(source).decode(bytes(range(256)))
    return get_codec(target).encode(pcm)


class Hears(Enum):
    """Who hears an injection."""

    CALLER = "caller"
    AGENT = "agent"
    BOTH = "both"


class Party(Protocol):
    """One side of a bridge: a caller's leg (`ivr.leg.Leg`) or an agent's (`ivr.agents.AgentLeg`)."""

    @property
    def rtp(self) -> RtpSession | None: ...

    @property
    def payload_type(self) -> int: ...

    def next_timestamp(self) -> int: ...


class Tap(Protocol):
    """Sees both parties' audio of each tick, in step (16-bit PCM, `FRAME_BYTES` each)."""

    def frame(self, caller: bytes, agent: bytes) -> None:
        """One tick: what the caller and the agent said (silence where a side sent nothing). Return at once."""
        ...

    def close(self) -> None:
        """The bridge ended (hang-up, transfer): no more frames."""
        ...


class UlawTap(Protocol):
    """Sees both parties' audio of each tick, in step, as µ-law (160 bytes each, `ULAW_SILENCE` where quiet)."""

    def frame(self, caller: bytes, agent: bytes) -> None:
        """One tick: what the caller and the agent said. Return at once."""
        ...

    def close(self) -> None:
        """The bridge ended (hang-up, transfer): no more frames."""
        ...


class Injection(Protocol):
    """Audio added to what one side of a bridge hears."""

    def next_frame(self) -> bytes | None:
        """This tick's 16-bit PCM frame (`FRAME_BYTES`), or None when it has nothing to say."""
        ...


def mix(a: bytes | None, b: bytes) -> bytes:
    """The sum of two 16-bit PCM frames, clipped; `a` None is silence."""
    if a is None:
        return b
    total = np.frombuffer(a, "<i2").astype(np.int32) + np.frombuffer(b, "<i2")
    mixed: bytes = np.clip(total, -32768, 32767).astype("<i2").tobytes()
    return mixed


class _Inbound:
    """G.711 received from one party, in 20 ms frames waiting for the clock."""

    __slots__ = ("queue", "partial", "last_seq", "frames", "underruns", "dropped", "late")

    def __init__(self) -> None:
        self.queue: deque[bytes] = deque()
        self.partial = bytearray()  # the rest of a packet that was not a whole number of frames
        self.last_seq = -1  # sequence number of the last packet taken in; -1 before the first
        self.frames = 0  # frames taken on the clock
        self.underruns = 0  # ticks with nothing received: silence sent instead
        self.dropped = 0  # frames dropped to keep the delay bounded
        self.late = 0  # packets dropped as older than the last one (reordered, duplicated)

    def put(self, payload: bytes, seq: int) -> None:
        if self.last_seq >= 0:
            behind = (self.last_seq - seq) & 0xFFFF
            if behind < REORDER_WINDOW:  # 0: a duplicate
                self.late += 1
                return
        self.last_seq = seq
        queue = self.queue
        if len(payload) == G711_FRAME and not self.partial:
            queue.append(payload)  # 20 ms packets, nearly every phone: no copy
        else:
            partial = self.partial
            partial += payload
            while len(partial) >= G711_FRAME:
                queue.append(bytes(partial[:G711_FRAME]))
                del partial[:G711_FRAME]
        while len(queue) > MAX_BUFFERED_FRAMES:
            queue.popleft()
            self.dropped += 1

    def take(self) -> bytes | None:
        if self.queue:
            self.frames += 1
            return self.queue.popleft()
        self.underruns += 1
        return None


class _Side:
    """What the bridge sends one party: its payload type's tables, codec and silence, worked out once."""

    __slots__ = ("party", "silence", "decode", "encode", "from_other", "to_ulaw")

    def __init__(self, party: Party, other: Party) -> None:
        self.party = party
        pt = party.payload_type
        self.silence = SILENCE_FRAMES[pt]
        codec = get_codec(pt)
        self.decode: Callable[[bytes], bytes] = codec.decode  # what this party said, as PCM
        self.encode: Callable[[bytes], bytes] = codec.encode  # PCM to send this party
        self.from_other = _transcoding_table(other.payload_type, pt)  # the other's G.711 into this party's
        self.to_ulaw = _transcoding_table(pt, 0)  # what this party said, for µ-law taps

    def said_in_ulaw(self, payload: bytes | None) -> bytes:
        if payload is None:
            return ULAW_SILENCE
        return payload if self.to_ulaw is None else payload.translate(self.to_ulaw)

    def send(self, payload: bytes | None) -> None:
        """Send the other party's frame (G.711 of the other's payload type), or silence for None."""
        party = self.party
        rtp = party.rtp
        if rtp is None:
            return
        if payload is None:
            payload = self.silence
        elif self.from_other is not None:
            payload = payload.translate(self.from_other)
        rtp.send_audio(payload, party.next_timestamp())

    def send_pcm(self, pcm: bytes) -> None:
        party = self.party
        if party.rtp is not None:
            party.rtp.send_audio(self.encode(pcm), party.next_timestamp())


class MediaBridge:
    """A caller and an agent talking, each hearing the other once per media tick; see the module docstring."""

    def __init__(self, caller: Party, agent: Party, call_log: structlog.typing.FilteringBoundLogger | None = None
                 ) -> None:
        self.caller = caller
        self.agent = agent
        self.log = call_log if call_log is not None else log
        self.from_caller = _Inbound()
        self.from_agent = _Inbound()
        self.to_caller = _Side(caller, agent)
        self.to_agent = _Side(agent, caller)
        self.taps: list[Tap] = []
        self.ulaw_taps: list[UlawTap] = []
        self.injections: dict[Injection, Hears] = {}
        self.closed = False
        self.ticks = 0

    # --- wiring ---------------------------------------------------------------------

    def connect(self) -> None:
        """Take both parties' received audio from now on, undecoded (nobody else decodes it meanwhile)."""
        for party, inbound in ((self.caller, self.from_caller), (self.agent, self.from_agent)):
            if party.rtp is not None:
                party.rtp.on_audio = None
                party.rtp.payload_sink = inbound.put

    def add_tap(self, tap: Tap) -> None:
        self.taps.append(tap)

    def add_ulaw_tap(self, tap: UlawTap) -> None:
        self.ulaw_taps.append(tap)

    def remove_tap(self, tap: Tap | UlawTap) -> None:
        for taps in (self.taps, self.ulaw_taps):
            if tap in taps:
                taps.remove(tap)
                tap.close()

    def inject(self, source: Injection, hears: Hears) -> None:
        """Mix `source` into what `hears` hears from the next tick on (again with another `hears`: switch)."""
        self.injections[source] = hears

    def remove_injection(self, source: Injection) -> None:
        self.injections.pop(source, None)

    def close(self) -> None:
        """Stop taking audio and close the taps; the clock must no longer serve the bridge."""
        if self.closed:
            return
        self.closed = True
        for party in (self.caller, self.agent):
            if party.rtp is not None:
                party.rtp.payload_sink = None
        for tap in (*self.taps, *self.ulaw_taps):
            try:
                tap.close()
            except Exception:
                self.log.exception("bridge_tap_failed", tap=type(tap).__name__)
        self.taps.clear()
        self.ulaw_taps.clear()
        self.injections.clear()
        self.log.info("bridge_closed", ticks=self.ticks,
                      caller_frames=self.from_caller.frames, caller_silent=self.from_caller.underruns,
                      caller_dropped=self.from_caller.dropped, caller_late=self.from_caller.late,
                      agent_frames=self.from_agent.frames, agent_silent=self.from_agent.underruns,
                      agent_dropped=self.from_agent.dropped, agent_late=self.from_agent.late)

    # --- the media clock --------------------------------------------------------------

    def send_next_frame(self, tick: int) -> bool:
        """One tick: each side is sent the other's frame; taps and injections see PCM when there are any."""
        if self.closed:
            return False
        self.ticks += 1
        said_by_caller = self.from_caller.take()
        said_by_agent = self.from_agent.take()
        if self.ulaw_taps:
            caller_ulaw = self.to_caller.said_in_ulaw(said_by_caller)
            agent_ulaw = self.to_agent.said_in_ulaw(said_by_agent)
            for ulaw_tap in tuple(self.ulaw_taps):
                try:
                    ulaw_tap.frame(caller_ulaw, agent_ulaw)
                except Exception:  # a broken recorder must not break the call
                    self.log.exception("bridge_tap_failed", tap=type(ulaw_tap).__name__)
                    self.ulaw_taps.remove(ulaw_tap)
        if self.taps or self.injections:
            self._tick_in_pcm(said_by_caller, said_by_agent)
        else:
            self.to_agent.send(said_by_caller)
            self.to_caller.send(said_by_agent)
        return False

    def _tick_in_pcm(self, said_by_caller: bytes | None, said_by_agent: bytes | None) -> None:
        caller_pcm = self.to_caller.decode(said_by_caller) if said_by_caller is not None else None
        agent_pcm = self.to_agent.decode(said_by_agent) if said_by_agent is not None else None
        for tap in tuple(self.taps):
            try:
                tap.frame(caller_pcm or SILENCE_PCM, agent_pcm or SILENCE_PCM)
            except Exception:  # a broken recorder or listener must not break the call
                self.log.exception("bridge_tap_failed", tap=type(tap).__name__)
                self.taps.remove(tap)
        to_agent = to_caller = None  # PCM with an injection mixed in; None: the other side's frame as it came
        for source, hears in tuple(self.injections.items()):
            try:
                extra = source.next_frame()
            except Exception:
                self.log.exception("bridge_injection_failed", injection=type(source).__name__)
                del self.injections[source]
                continue
            if extra is None:
                continue
            if hears is not Hears.CALLER:
                to_agent = mix(to_agent if to_agent is not None else caller_pcm, extra)
            if hears is not Hears.AGENT:
                to_caller = mix(to_caller if to_caller is not None else agent_pcm, extra)
        if to_agent is None:
            self.to_agent.send(said_by_caller)
        else:
            self.to_agent.send_pcm(to_agent)
        if to_caller is None:
            self.to_caller.send(said_by_agent)
        else:
            self.to_caller.send_pcm(to_caller)

    def prompt_done(self) -> None:
        """Nothing plays to a bridge: the media clock's `Served` protocol asks anyway."""
