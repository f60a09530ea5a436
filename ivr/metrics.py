"""Prometheus metrics (`[metrics] port`), served by prometheus-client's own HTTP thread.

Counters are incremented where things happen (a call ends, an INVITE is
refused); everything that is a level — calls up, queue lengths, agents by
state, the media clock's lateness, the CRM outbox depth — is read from the
engine when Prometheus scrapes, so the call path pays nothing for it.

    hotline_calls_active                          calls in progress
    hotline_invites_total                         INVITEs for our numbers (calls offered; rate() = calls/s)
    hotline_calls_total{outcome}                  finished calls: silent, completed, abandoned_queue, …
    hotline_sip_refused_total{status}             requests refused (503 overload, 4xx bad input, …)
    hotline_sip_dropped_total                     requests dropped unanswered (over a per-source rate)
    hotline_queue_length{seat_group}              callers waiting
    hotline_queue_wait_seconds{seat_group}        histogram of waits of callers who reached an agent or gave up
    hotline_agents{seat_group,state}              agents by state
    hotline_media_clock_lateness_seconds{quantile} 0.5 / 0.99 / 1 of the last 3000 20 ms ticks (RTP send pacing)
    hotline_crm_outbox_depth                      records not yet in the CRM database
    hotline_crm_records_written_total             records the writer committed
    hotline_shared_agent_changes_pending          with [cluster] shared_agents: agent changes not yet in the database
    hotline_shared_agent_claims_failed_total      ... and claims the database could not take
    hotline_rtp_bind_retries_total                RTP ports found held by another process (another worker), skipped
    hotline_rtp_ports_free                        RTP ports of the range not in use (callers stay queued)
    hotline_recordings_total{state}               recording files finished: complete, failed
    hotline_recording_errors_total{kind}          write errors (no_space_left_on_device, …) and queue_full drops
    hotline_recording_bytes_total{format}         bytes of complete recordings written
    hotline_recording_seconds_total{format}       seconds of audio in them (bytes / seconds: the size per hour)
    hotline_recording_queue_delay_seconds         histogram: how long a second of audio waited for the writer thread
    hotline_recording_queue_depth                 seconds of audio queued for the writer thread, now
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from crm_bridge.writer import CrmWriter
from ivr.acd import AgentState
from ivr.agents import AgentPool
from ivr.guard import SourceGuard
from ivr.media import MediaClock

WAIT_BUCKETS = (5, 10, 20, 30, 60, 120, 300, 600)


class Watched(Protocol):
    """What a scrape reads of the engine (`ivr.engine.Engine`); its RTP `ports` too, where it has them."""

    @property
    def legs(self) -> Sized: ...
    @property
    def acd(self) -> AgentPool: ...
    @property
    def pacer(self) -> MediaClock: ...
    @property
    def writer(self) -> CrmWriter: ...
    @property
    def guard(self) -> SourceGuard: ...


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.invites = Counter("hotline_invites", "INVITEs for the hotline's numbers", registry=self.registry)
        self.calls = Counter("hotline_calls", "Finished calls by outcome", ["outcome"], registry=self.registry)
        self.refused = Counter("hotline_sip_refused", "SIP requests refused, by status", ["status"],
                               registry=self.registry)
        self.queue_wait = Histogram("hotline_queue_wait_seconds", "Time callers spent queued", ["seat_group"],
                                    buckets=WAIT_BUCKETS, registry=self.registry)
        # ivr.recording: counted in its writer thread (prometheus-client's metrics are thread-safe)
        self.recordings = Counter("hotline_recordings", "Recording files finished, by state", ["state"],
                                  registry=self.registry)
        self.recording_errors = Counter("hotline_recording_errors", "Recording write errors and dropped seconds",
                                        ["kind"], registry=self.registry)
        self.recording_bytes = Counter("hotline_recording_bytes", "Bytes of complete recordings", ["format"],
                                       registry=self.registry)
        self.recording_seconds = Counter("hotline_recording_seconds", "Seconds of audio in complete recordings",
                                         ["format"], registry=self.registry)
        self.recording_queue_delay = Histogram(
            "hotline_recording_queue_delay_seconds", "Wait of a second of audio for the recording writer",
            buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2, 10), registry=self.registry)
        self.recording_queue_depth = Gauge("hotline_recording_queue_depth",
                                           "Seconds of audio queued for the recording writer", registry=self.registry)

    def watch(self, engine: Watched) -> None:
        self.registry.register(_EngineCollector(engine))

    def serve(self, bind: str, port: int) -> None:
        start_http_server(port, addr=bind, registry=self.registry)


class _EngineCollector(Collector):
    def __init__(self, engine: Watched) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        e = self.engine
        yield GaugeMetricFamily("hotline_calls_active", "Calls in progress", value=len(e.legs))
        queue = GaugeMetricFamily("hotline_queue_length", "Callers waiting per seat group", labels=["seat_group"])
        for group, waiting in e.acd.queues.items():
            queue.add_metric([group], len(waiting))
        yield queue
        agents = GaugeMetricFamily("hotline_agents", "Agents by seat group and state", labels=["seat_group", "state"])
        counts: dict[tuple[str, str], int] = {
            (s.seat_group, st.value): 0 for s in e.acd.seats.values() for st in AgentState}
        for seat in e.acd.seats.values():
            counts[(seat.seat_group, seat.state.value)] += 1
        for (group, state), n in sorted(counts.items()):
            agents.add_metric([group, state], n)
        yield agents
        lateness = GaugeMetricFamily("hotline_media_clock_lateness_seconds",
                                     "Wake-up lateness of the 20 ms media clock (RTP send pacing)", labels=["quantile"])
        if e.pacer.lateness:
            quantiles = (0.5, 0.99, 1.0)
            for q, value in zip(quantiles, e.pacer.lateness_quantiles(quantiles), strict=True):
                lateness.add_metric([str(q)], value)
        yield lateness
        yield GaugeMetricFamily("hotline_crm_outbox_depth", "CRM records not yet in the database",
                                value=e.writer.depth)
        yield CounterMetricFamily("hotline_crm_records_written", "CRM records committed", value=e.writer.written)
        if e.acd.shared:
            yield GaugeMetricFamily("hotline_shared_agent_changes_pending",
                                    "Agent changes not yet in the shared database",
                                    value=e.acd.pending)  # type: ignore[attr-defined]
            yield CounterMetricFamily("hotline_shared_agent_claims_failed", "Agent claims the database could not take",
                                      value=e.acd.claims_failed)  # type: ignore[attr-defined]
        yield CounterMetricFamily("hotline_sip_dropped", "Requests dropped unanswered (over a per-source rate)",
                                  value=e.guard.dropped)
        ports = getattr(e, "ports", None)  # absent on the stand-ins some tests pass
        if ports is not None:
            yield CounterMetricFamily("hotline_rtp_bind_retries",
                                      "RTP ports of the range found held by another process", value=ports.bind_retries)
            yield GaugeMetricFamily("hotline_rtp_ports_free", "RTP ports of the range not in use", value=len(ports))
