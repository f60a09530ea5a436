"""Metrics and overload control over real SIP, and the benchmark's bounded smoke run."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import ROOT, IvrProcess, free_port, sipp
from .test_e2e_sip import finished

pytestmark = pytest.mark.e2e


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {name: float(value) for name, _, value in
            (line.rpartition(" ") for line in text.splitlines() if line and not line.startswith("#"))}


def test_metrics_tell_calls_queues_agents_and_the_outbox(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port(socket.SOCK_STREAM)
    ivr: IvrProcess = ivr_factory(ring_seconds=1, extra=f"[metrics]\nport = {port}\n[801]\ntype = agent\nseat_group = senior\nsecret = s3cret-801\n")
    finished(sipp(tmp_path, "short_call", ivr.port, calls=3, extra=("-d", "500", "-r", "3")), 30)
    finished(sipp(tmp_path, "unknown_number_caller", ivr.port, service="12345", timeout_s=10), 20)
    time.sleep(1.5)
    m = scrape(port)
    assert m["hotline_invites_total"] == 4
    assert m['hotline_calls_total{outcome="caller_hangup"}'] == 3
    assert m['hotline_sip_refused_total{status="404"}'] == 1
    assert m["hotline_calls_active"] == 0
    assert m["hotline_crm_outbox_depth"] == 0 and m["hotline_crm_records_written_total"] > 3
    assert m['hotline_agents{seat_group="senior",state="logged_out"}'] == 1
    assert m['hotline_queue_length{seat_group="junior"}'] == 0
    assert 'hotline_media_clock_lateness_seconds{quantile="0.99"}' in m


def test_beyond_capacity_new_calls_get_503_at_once_and_accepted_calls_complete(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = free_port(socket.SOCK_STREAM)
    ivr: IvrProcess = ivr_factory(
        ring_seconds=0, extra=f"[metrics]\nport = {port}\n[limits]\ntrusted = 127.0.0.1\nmax_invites_per_second = 20\n")
    run = sipp(tmp_path, "signalling_call", ivr.port, calls=200, extra=("-d", "0", "-r", "40"), timeout_s=40)
    finished(run, 60)  # every call got an answer: a 200 it completed, or a 503

    def counts() -> tuple[float, float]:
        m = scrape(port)
        return m.get('hotline_sip_refused_total{status="503"}', 0), m.get('hotline_calls_total{outcome="caller_hangup"}', 0)

    deadline = time.monotonic() + 10
    while sum(counts()) < 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    refused, answered = counts()
    assert refused + answered == 200, (refused, answered)
    assert 70 <= answered <= 130, f"about 20 of 40 a second are taken: {answered}"
    assert ivr.proc.poll() is None
    assert "event='overload_refused' reason='call rate'" in ivr.log(), "ops can see why callers got 503"


def test_bench_smoke_writes_report_and_chart(tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "loadtest" / "bench.py"), "--smoke", "--desk", "1",
                           "--report", str(report)],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(report.read_text())
    assert report.with_suffix(".png").stat().st_size > 10_000
    step = data["media_steps"][0]
    assert step["sipp_failed"] == 0 and step["crm_matches_sipp"]
    # a supervisor watched the live wallboard through the step: updates at least once a second, no errors
    assert step["wallboard"]["updates"] > 10 and step["wallboard"]["errors"] == []
    assert step["wallboard"]["longest_gap_s"] < 1.5
    assert step["rtp_sink"]["streams"] == 3 and step["rtp_sink"]["packets"] > 1000
    assert data["signalling_steps"][0]["sipp_uas"]["sipp_successful"] > 0
    over = data["overload"]
    assert over["refused_503"] > 0 and over["sipp_failed"] == 0
    assert set(data["targets"]) >= {"concurrent_media_calls", "rtp_spacing_p99_ms", "signalling_cps_zero_failures", "overload_2x"}
    assert re.search(r"report: .*bench\.json", done.stdout)
