"""The full-GC policy (ivr.gcpolicy), and the call path leaving no cyclic garbage for it to find."""

from __future__ import annotations

import asyncio
import gc
import re
import time
import weakref
from pathlib import Path

import pytest

from ivr.gcpolicy import PER_CALL_BYTES, FullGcPolicy
from ivr.media import SILENCE_FRAMES, RtpPortPool, open_rtp
from tests.conftest import free_port, sipp

MB = 2**20


class Memory:
    def __init__(self) -> None:
        self.rss = 100 * MB

    def __call__(self) -> int:
        return self.rss


def policy(memory: Memory, busy: int = 1) -> FullGcPolicy:
    return FullGcPolicy(0.0, idle_after_s=10, valve_bytes=256 * MB, rss=memory, young_collections=lambda: busy)


def test_never_collects_while_calls_are_up_however_long_they_last() -> None:
    p = policy(Memory())
    assert [p.due(float(t), calls=1000) for t in range(0, 7200, 1)] == [None] * 7200


def test_collects_once_no_call_has_been_up_for_ten_seconds_then_at_most_every_ten() -> None:
    p = policy(Memory())
    assert p.due(100.0, calls=3) is None
    assert [p.due(100.0 + t, calls=0) for t in range(10)] == [None] * 10
    assert p.tick(110.0, calls=0) is not None
    assert [p.due(110.0 + t, calls=0) for t in range(1, 10)] == [None] * 9
    assert p.due(120.0, calls=0) == "idle"


def test_idle_without_young_collections_since_the_last_full_one_skips_it() -> None:
    assert policy(Memory(), busy=0).due(60.0, calls=0) is None


def test_the_memory_valve_collects_with_calls_up_once_the_process_grew_256_mb() -> None:
    memory = Memory()
    p = policy(memory)
    memory.rss += 255 * MB + 1000 * PER_CALL_BYTES  # beyond what the 1000 calls up explain
    assert p.due(1.0, calls=1000) is None
    memory.rss += 2 * MB
    run = p.tick(2.0, calls=1000)
    assert run is not None and run.reason == "memory" and run.calls == 1000
    assert p.due(3.0, calls=1000) is None, "measured again from the size after the collection"


def test_growth_the_calls_up_explain_does_not_open_the_valve() -> None:
    memory = Memory()
    p = policy(memory)
    memory.rss += 255 * MB + 1000 * PER_CALL_BYTES  # 1000 calls came up: live memory, not garbage
    assert p.due(1.0, calls=1000) is None
    memory.rss += 2 * MB
    assert p.due(2.0, calls=1000) == "memory"


def test_a_valve_run_that_finds_no_garbage_doubles_the_valve_and_the_idle_collection_restores_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    memory = Memory()
    p = policy(memory)
    monkeypatch.setattr(gc, "collect", lambda: 12)  # the growth was live
    memory.rss += 257 * MB + 500 * PER_CALL_BYTES
    assert p.tick(1.0, calls=500) is not None
    memory.rss += 300 * MB  # more than 256 MB again, with no more calls: under the doubled valve
    assert p.due(2.0, calls=500) is None
    memory.rss += 300 * MB
    assert p.due(3.0, calls=500) == "memory"
    assert p.tick(100.0, calls=0) is None and p.tick(111.0, calls=0) is not None  # idle, 10 s on
    memory.rss += 257 * MB
    assert p.due(112.0, calls=1) == "memory"  # 256 MB again


def test_unknown_memory_keeps_the_valve_shut() -> None:
    memory = Memory()
    memory.rss = 0
    assert policy(memory).due(1.0, calls=10) is None


def test_a_full_collection_reports_what_it_found() -> None:
    gc.collect()
    a: list[object] = []
    a.append(a)  # one cycle
    del a
    p = FullGcPolicy(0.0, idle_after_s=0, young_collections=lambda: 1)
    run = p.tick(1.0, calls=0)
    assert run is not None and run.reason == "idle" and run.unreachable >= 1


# --- what a call leaves behind: freed by reference counting, nothing for the full GC -------------


class _Leg:
    """Stands for the engine's call leg: the session's callbacks are its bound methods."""

    def on_audio(self, pcm: bytes, timestamp: int) -> None: ...

    def on_dtmf(self, digit: str, duration: int) -> None: ...


@pytest.mark.parametrize("strict", [True, False])
def test_a_closed_rtp_session_and_the_leg_it_called_back_are_freed_without_the_gc(strict: bool) -> None:
    first = free_port(even=True)
    pool = RtpPortPool(first, first + 40)

    async def call() -> tuple[weakref.ref[object], weakref.ref[object]]:
        session, _ = await open_rtp(pool, "127.0.0.1", ("127.0.0.1", 9), 0, strict=strict)
        leg = _Leg()
        session.on_audio, session.on_dtmf = leg.on_audio, leg.on_dtmf
        session.send_audio(SILENCE_FRAMES[0], 0)
        await session.close()
        return weakref.ref(leg), weakref.ref(session)

    gc.collect()
    gc.disable()  # a young collection must not hide a cycle
    try:
        leg, session = asyncio.run(call())
        assert leg() is None and session() is None, "aiortp's cycles hold the session (and the leg) until a full GC"
    finally:
        gc.enable()


CALLS = 50


@pytest.mark.e2e
def test_calls_leave_almost_nothing_for_the_idle_full_collection(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Before the cycles were cut each of these calls left ~90 objects (leg, flow, SIP, RTP) to it; now ~25."""
    ivr = ivr_factory(ring_seconds=0, extra="[limits]\ntrusted = 127.0.0.1\n")
    pattern = r"event='gc_full' reason='idle' unreachable=(\d+)"
    before = len(re.findall(pattern, ivr.log()))
    run = sipp(tmp_path, "short_call", ivr.port, calls=CALLS, extra=("-d", "2000", "-r", "25"), timeout_s=30)
    assert run.wait(40) == 0, run.errors()[-2000:]
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline and len(found := re.findall(pattern, ivr.log())) <= before:
        time.sleep(0.5)
    assert len(found) > before, "the idle full collection ran once the calls were over"
    # what is left is the CRM writer's (its retry objects, per batch, not per call)
    assert int(found[before]) < 50 * CALLS, f"{found[before]} objects in cycles after {CALLS} calls"
