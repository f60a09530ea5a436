"""When the IVR runs Python's full garbage collection (generation 2).

A full collection walks every tracked object of every call in progress: with
1000 calls up that is a pause of 100-250 ms on the one thread that also runs
the 20 ms media clock, a hole in every prompt being played. run_ivr.py takes
the full collection off automatic (what lives until exit is frozen out of the
GC, and the generation-2 threshold is out of reach); the engine asks this
policy once a second whether to run it now:

- when no call has been up for `idle_after_s`, at most every `idle_after_s`,
  and only if the young generations have been busy since the last full
  collection: it costs no caller anything then;
- while calls are up, never on time alone. Only the safety valve runs it: the
  process has grown by more than `valve_bytes` since the last full collection,
  beyond what the calls up since then explain (`PER_CALL_BYTES` each), i.e.
  cyclic garbage that only a full collection frees is piling up, and a stall
  is better than running out of memory. It is logged as a warning. A valve
  run that finds next to no garbage (the growth was live calls, pending
  transactions under overload) doubles the valve for the next time, so a busy
  worker is not stalled again and again for nothing; the idle collection
  puts it back.

The valve should stay shut in service: the call path makes no reference
cycles of its own (ivr.media breaks aiortp's when a session closes;
tests/test_gcpolicy.py holds that), so what a call leaves behind is freed by
reference counting the moment the call ends.
"""

from __future__ import annotations

import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger("ivr.gcpolicy")

IDLE_AFTER_S = 10.0
VALVE_BYTES = 256 * 2**20  # growth since the last full collection that forces one, calls up or not
PER_CALL_BYTES = 128 * 2**10  # growth a call up explains (a call holds 15-45 KB): live data, not garbage
LITTLE_GARBAGE = 1000  # unreachable objects under which a valve run found the growth was live
MAX_VALVE_BYTES = 4 * 2**30
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """This process's resident set size (Linux /proc); 0 where unknown, which keeps the valve shut."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


@dataclass(frozen=True, slots=True)
class FullCollection:
    reason: str  # "idle" or "memory"
    unreachable: int  # what gc.collect() found
    ms: float
    calls: int


class FullGcPolicy:
    """Decides, once a second, whether the full collection runs now; see the module docstring."""

    def __init__(self, now: float, *, idle_after_s: float = IDLE_AFTER_S, valve_bytes: int = VALVE_BYTES,
                 rss: Callable[[], int] = resident_bytes,
                 young_collections: Callable[[], int] = lambda: gc.get_count()[1] + gc.get_count()[2]) -> None:
        self.idle_after_s = idle_after_s
        self.valve_bytes = valve_bytes
        self._rss = rss
        # collections of the young generations since the last full one; none: nothing was allocated to collect
        self._young_collections = young_collections
        self._idle_since: float | None = None
        self._last_run = now
        self._rss_after_last = rss()
        self._calls_after_last = 0
        self._valve = valve_bytes  # doubled after a valve run that found next to no garbage
        self.runs: list[FullCollection] = []  # the last few, for tests and the log

    def due(self, now: float, calls: int) -> str | None:
        """The reason to collect now ("idle", "memory"), or None."""
        if calls:
            self._idle_since = None
            rss = self._rss()
            live = PER_CALL_BYTES * max(0, calls - self._calls_after_last)
            if rss and self._rss_after_last and rss - self._rss_after_last > self._valve + live:
                return "memory"
            return None
        if self._idle_since is None:
            self._idle_since = now
        quiet = min(now - self._idle_since, now - self._last_run)
        if quiet >= self.idle_after_s and self._young_collections() > 0:
            return "idle"
        return None

    def tick(self, now: float, calls: int) -> FullCollection | None:
        """Run the full collection if it is due; what it did, or None."""
        reason = self.due(now, calls)
        if reason is None:
            return None
        started = time.perf_counter()
        found = gc.collect()
        run = FullCollection(reason, found, round(1000 * (time.perf_counter() - started), 1), calls)
        self._rss_after_last = self._rss()
        self._calls_after_last = calls
        self._last_run = now
        self.runs = [*self.runs[-9:], run]
        if reason == "idle":
            self._valve = self.valve_bytes
        elif found < LITTLE_GARBAGE:  # the growth was live: do not stall the calls again for the same
            self._valve = min(2 * self._valve, MAX_VALVE_BYTES)
        if reason == "memory":  # the media clock stalled for every call up: ops should know, and why
            log.warning("gc_full", reason=reason, unreachable=found, ms=run.ms, calls=calls,
                        rss_mb=round(self._rss_after_last / 2**20, 1), next_valve_mb=self._valve // 2**20)
        else:
            log.info("gc_full", reason=reason, unreachable=found, ms=run.ms, calls=calls)
        return run
