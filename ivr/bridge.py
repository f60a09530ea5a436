"""The bridge between a caller and an agent, on the shared 20 ms media clock.

Theory of operation. A bridge is a participant of `ivr.media.MediaClock`,
like a leg playing a prompt: every tick it takes one 20 ms frame of what each
party said (160 samples of 16-bit PCM, decoded by aiortp as it arrives) and
sends each party the other's frame. A party that sent nothing this tick (a
silent phone with voice activity detection, a lost packet, a late one) is
heard as silence, so each side gets exactly one frame per tick, whatever the
other does: a phone that hangs up on an RTP timeout never finds the line dead
behind a quiet caller.

Between receiving and sending sit two seams, in the manner of Asterisk's
audiohooks (spy, whisper) and FreeSWITCH's media bugs:

- **taps** see both parties' frames of the same tick, in step, before any
  injection: the caller's and the agent's own voices (a recorder writes them
  as the left and right channels; a supervisor listening hears their mix);
- **injections** add audio to what one side hears, or both: a supervisor's
  voice to the agent alone (whisper) or to both (barge), a beep.

Both run on the media clock and must return at once: a tap hands its frames
to a thread or a queue, it never writes a file here. A tap or injection that
raises is removed and logged; the call goes on. With neither, a tick costs a
buffer slice and an encode per side, as the packet relay it replaces did.

Each side's received audio waits in a short queue of 20 ms frames (any
packet time works: 30 ms packets are cut into 20 ms frames). It holds at most
`MAX_BUFFERED_FRAMES`; past that the oldest audio is dropped, so a sender
whose clock runs fast, or a burst after a network stall, never builds up
delay in the conversation.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Protocol

import numpy as np
import structlog

from ivr.media import SILENCE_FRAMES, RtpSession

log = structlog.get_logger("ivr.bridge")

FRAME_BYTES = 320  # 20 ms of 8 kHz 16-bit mono PCM: 160 samples
SILENCE_PCM = bytes(FRAME_BYTES)
MAX_BUFFERED_FRAMES = 4  # 80 ms of received audio waiting for the clock; older audio is dropped


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
    """Audio received from one party, in 20 ms frames waiting for the clock."""

    __slots__ = ("queue", "partial", "frames", "underruns", "dropped")

    def __init__(self) -> None:
        self.queue: deque[bytes] = deque()
        self.partial = bytearray()  # the rest of a packet that was not a whole number of frames
        self.frames = 0  # frames taken on the clock
        self.underruns = 0  # ticks with nothing received: silence sent instead
        self.dropped = 0  # frames dropped to keep the delay bounded

    def put(self, pcm: bytes, _timestamp: int) -> None:
        queue = self.queue
        if len(pcm) == FRAME_BYTES and not self.partial:
            queue.append(pcm)  # 20 ms packets, nearly every phone: no copy
        else:
            partial = self.partial
            partial += pcm
            while len(partial) >= FRAME_BYTES:
                queue.append(bytes(partial[:FRAME_BYTES]))
                del partial[:FRAME_BYTES]
        while len(queue) > MAX_BUFFERED_FRAMES:
            queue.popleft()
            self.dropped += 1

    def take(self) -> bytes | None:
        if self.queue:
            self.frames += 1
            return self.queue.popleft()
        self.underruns += 1
        return None


class MediaBridge:
    """A caller and an agent talking, each hearing the other once per media tick; see the module docstring."""

    def __init__(self, caller: Party, agent: Party, call_log: structlog.typing.FilteringBoundLogger | None = None
                 ) -> None:
        self.caller = caller
        self.agent = agent
        self.log = call_log if call_log is not None else log
        self.from_caller = _Inbound()
        self.from_agent = _Inbound()
        self.taps: list[Tap] = []
        self.injections: dict[Injection, Hears] = {}
        self.closed = False
        self.ticks = 0

    # --- wiring ---------------------------------------------------------------------

    def connect(self) -> None:
        """Take both parties' received audio from now on (aiortp decodes only while on_audio is set)."""
        if self.caller.rtp is not None:
            self.caller.rtp.on_audio = self.from_caller.put
        if self.agent.rtp is not None:
            self.agent.rtp.on_audio = self.from_agent.put

    def add_tap(self, tap: Tap) -> None:
        self.taps.append(tap)

    def remove_tap(self, tap: Tap) -> None:
        if tap in self.taps:
            self.taps.remove(tap)
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
                party.rtp.on_audio = None
        for tap in self.taps:
            try:
                tap.close()
            except Exception:
                self.log.exception("bridge_tap_failed", tap=type(tap).__name__)
        self.taps.clear()
        self.injections.clear()
        self.log.info("bridge_closed", ticks=self.ticks,
                      caller_frames=self.from_caller.frames, caller_silent=self.from_caller.underruns,
                      caller_dropped=self.from_caller.dropped, agent_frames=self.from_agent.frames,
                      agent_silent=self.from_agent.underruns, agent_dropped=self.from_agent.dropped)

    # --- the media clock --------------------------------------------------------------

    def send_next_frame(self, tick: int) -> bool:
        """One tick: taps see both sides, injections are mixed in, each side is sent the other's frame."""
        if self.closed:
            return False
        self.ticks += 1
        said_by_caller = self.from_caller.take()
        said_by_agent = self.from_agent.take()
        if self.taps:
            caller_pcm = said_by_caller if said_by_caller is not None else SILENCE_PCM
            agent_pcm = said_by_agent if said_by_agent is not None else SILENCE_PCM
            for tap in tuple(self.taps):
                try:
                    tap.frame(caller_pcm, agent_pcm)
                except Exception:  # a broken recorder or listener must not break the call
                    self.log.exception("bridge_tap_failed", tap=type(tap).__name__)
                    self.taps.remove(tap)
        to_agent, to_caller = said_by_caller, said_by_agent
        for source, hears in tuple(self.injections.items()) if self.injections else ():
            try:
                extra = source.next_frame()
            except Exception:
                self.log.exception("bridge_injection_failed", injection=type(source).__name__)
                del self.injections[source]
                continue
            if extra is None:
                continue
            if hears is not Hears.CALLER:
                to_agent = mix(to_agent, extra)
            if hears is not Hears.AGENT:
                to_caller = mix(to_caller, extra)
        self._send(self.agent, to_agent)
        self._send(self.caller, to_caller)
        return False

    def prompt_done(self) -> None:
        """Nothing plays to a bridge: the media clock's `Served` protocol asks anyway."""

    @staticmethod
    def _send(party: Party, pcm: bytes | None) -> None:
        rtp = party.rtp
        if rtp is None:
            return
        if pcm is None:
            rtp.send_audio(SILENCE_FRAMES[party.payload_type], party.next_timestamp())  # pre-encoded
        else:
            rtp.send_audio_pcm(pcm, party.next_timestamp())
