"""End to end: loadtest/webrtc_bridged_bench.py bridges callers to browser agents (aiortc over WebSocket), then to plain ones.

Three SIPp callers reach three agents registered over the IVR's WebSocket by
aiortc clients (`--agent-kind aiortc`, the bench's independent browser; its
default, the lean client, has tests/test_webrtc_load_client.py) in a worker
process of their own, talk through DTLS-SRTP, and
hang up; then the same with three SIPp agent phones. The report must count
every call bridged, none failed, a handshake time per browser leg, audio at
the browsers and at the sink, and the CPU comparison of the two phases.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.e2e

BENCH = ROOT / "loadtest" / "webrtc_bridged_bench.py"


def test_the_webrtc_bridged_bench_bridges_every_caller_to_a_browser_agent_then_to_a_plain_one(tmp_path: Path) -> None:
    report = tmp_path / "webrtc-bridged.json"
    done = subprocess.run([sys.executable, str(BENCH), "--calls", "3", "--talk-seconds", "8", "--rate", "3",
                           "--rtp-base", "50000", "--agent-kind", "aiortc", "--report", str(report)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(report.read_text())

    webrtc = data["webrtc"]
    assert webrtc["calls_bridged"] == 3 and webrtc["completed_calls_in_crm"] == 3
    assert webrtc["failed_calls"] == {"callers": 0, "agents": 0}
    assert webrtc["ivr_log_tracebacks"] == 0
    # one DTLS handshake per browser leg, timed by the IVR (its webrtc_connected lines)
    assert webrtc["legs_connected"] == 3 and webrtc["legs_failed"] == 0
    assert 0 < webrtc["handshake_ms_p50"] <= webrtc["handshake_ms_p99"] <= webrtc["handshake_ms_max"]
    agents = webrtc["agents"]
    assert agents["client"] == "aiortc" and data["config"]["agent_kind"] == "aiortc"
    assert agents["hung_up_after_a_call"] == 3 and agents["client_connect_ms_p50"] > 0
    # audio both ways: the browsers heard the callers' speech, the listening caller the browser's tone
    assert agents["frames_heard_min"] > 100 and agents["loud_share"] > 0.1, agents
    assert webrtc["rtp_sink"]["streams"] == 1 and webrtc["rtp_sink"]["packets"] > 200, webrtc["rtp_sink"]

    plain = data["plain"]
    assert plain["calls_bridged"] == 3 and plain["failed_calls"] == {"callers": 0, "agents": 0}
    assert "legs_connected" not in plain
    per_call = data["comparison"]["ivr_cpu_us_per_call_second"]
    assert set(per_call) == {"webrtc_agent", "plain_agent"}
    assert set(data["comparison"]["ivr_cpu_us_per_leg_second"]) == {"plain_leg", "webrtc_leg"}


def test_the_webrtc_bridged_bench_refuses_an_unknown_phase() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--phases", "webrtc,browser"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2 and "--phases takes webrtc, plain or webrtc,plain" in done.stderr
