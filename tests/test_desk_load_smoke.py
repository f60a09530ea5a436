"""End to end: loadtest/desk_load.py, small — agents' desk streams get their pops while the IVR carries calls."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.e2e


def test_desk_load_measures_each_pop_from_the_ivr_ring_to_the_agent_stream_and_the_desk_crm_statements(
        tmp_path: Path) -> None:
    report = tmp_path / "desk-load.json"
    done = subprocess.run([sys.executable, str(ROOT / "loadtest" / "desk_load.py"), "--agents", "20",
                           "--wallboards", "2", "--calls", "8", "--routed", "4", "--talk-seconds", "2", "--seconds", "8",
                           "--idle-seconds", "2", "--agent-pool", "2", "--rtp-base", "61000", "--report", str(report)],
                          capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(report.read_text())
    pops = data["pops"]
    # routed callers rang agents while their streams were open, and every ring popped on that agent's stream
    assert pops["rings_while_streams_open"] >= 3
    assert pops["pops_received"] == pops["rings_while_streams_open"]
    assert pops["rings_without_pop"] == 0 and pops["pops_to_another_agent"] == 0
    assert 0 < pops["latency_ms_min"] <= pops["latency_ms_p50"] <= pops["latency_ms_p99"] <= pops["latency_ms_max"]
    assert data["streams"]["agent_streams_connected"] == 20 and data["streams"]["errors"] == 0
    assert data["streams"]["wallboard_updates"] > 0
    streams = data["phases"]["streams"]
    assert streams["desk_agent_streams_open"] == 20 and streams["desk_wallboard_streams_open"] == 2
    statements = data["targets"]["desk_crm_statements_per_s"]
    # one watcher for all pages: twenty agents' streams ask the CRM what one does (a tick's query, with slack)
    assert statements["idle_one_agent_stream"] > 0
    assert statements["idle_all_agent_streams"] <= statements["idle_one_agent_stream"] + 2
    assert statements["per_ring_under_load"] is not None
    for phase in ("baseline", "streams"):
        assert data["phases"][phase]["peak_concurrent_calls"] >= 6
        assert data["phases"][phase]["media_clock_lateness_ms_p99"] is not None
