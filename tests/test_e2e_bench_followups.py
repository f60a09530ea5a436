"""End to end: loadtest/bench.py --followups runs outbound follow-up calls beside the inbound callers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.e2e


def test_bench_followups_dials_each_through_the_gateway_beside_the_callers_and_the_crm_has_them_all(
        tmp_path: Path) -> None:
    report = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(ROOT / "loadtest" / "bench.py"), "--steps", "10", "--sink-calls", "2",
                           "--followups", "5", "--media-only", "--rtp-base", "50000", "--report", str(report)],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads(report.read_text())
    step = data["media_steps"][0]
    assert step["sipp_failed"] == 0 and step["crm_matches_sipp"]
    fu = step["followups"]
    assert fu["gateway_sipp"] == [5, 0]  # the gateway answered five calls, each pressed 1 and got the BYE
    assert fu["crm_by_status_result"] == {"done/satisfied": 5} and fu["tickets_closed_by_followup"] == 5
    assert fu["failed"] == 0 and fu["all_ok"]
    # side by side: the follow-ups were dialled while the inbound callers (~32 s each) were still on
    assert fu["first_dialled_s"] < fu["inbound_callers_done_s"]
    assert data["targets"]["followups_beside_inbound"]["measured"]["failed"] == 0
    assert "signalling_steps" in data and data["signalling_steps"] == [] and "overload" not in data


def test_bench_refuses_followups_with_more_than_one_worker() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "loadtest" / "bench.py"), "--workers", "2", "--followups", "5"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2 and "--followups runs with one worker" in done.stderr
