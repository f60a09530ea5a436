"""The full-GC policy (ivr.gcpolicy), and the call path leaving no cyclic garbage for it to find."""

from __future__ import annotations

import gc

from ivr.gcpolicy import FullGcPolicy

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
    memory.rss += 255 * MB
    assert p.due(1.0, calls=1000) is None
    memory.rss += 2 * MB
    run = p.tick(2.0, calls=1000)
    assert run is not None and run.reason == "memory" and run.calls == 1000
    assert p.due(3.0, calls=1000) is None, "measured again from the size after the collection"


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
