"""Two IVR workers on one host, from the example config, differing only where docs/operations.md says.

Both take RTP ports from the same range (`rtp_port_min`/`max` are not in the
per-worker list): a port the other worker holds must not refuse a call — the
worker binds the next free one. Two bursts of 20 concurrent calls, one to each
worker at the same moment, are all answered and recorded.
"""

from __future__ import annotations

import re
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import PROMPT_CACHE, ROOT, SCENARIOS, free_port, sipp_media_port
from .test_e2e_load import scrape

pytestmark = pytest.mark.e2e
CALLS = 20


def worker_config(tmp: Path, n: int) -> tuple[Path, int, int]:
    """sip.conf.example with the per-worker settings of docs/operations.md's list changed."""
    sip_port, metrics_port = free_port(), free_port(socket.SOCK_STREAM)
    text = (ROOT / "sip.conf.example").read_text(encoding="utf-8")
    for key, value in (("port", str(sip_port)), ("url", f"sqlite:///{tmp / f'crm-{n}.db'}"),
                       ("outbox_dir", str(tmp / f"outbox-{n}")), ("status_file", str(tmp / f"status-{n}.json")),
                       ("cache_dir", str(PROMPT_CACHE))):
        text, count = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, count=1, flags=re.MULTILINE)
        assert count == 1, key
    # the metrics listener is the second `port` (after [general]'s)
    text = re.sub(r"(\[metrics\][^\[]*?^port = )\d+", rf"\g<1>{metrics_port}", text, count=1, flags=re.MULTILINE | re.DOTALL)
    text = text.replace("file = holidays.toml.example", f"file = {ROOT / 'holidays.toml.example'}")
    conf = tmp / f"sip-{n}.conf"
    conf.write_text(text, encoding="utf-8")
    return conf, sip_port, metrics_port


def start(conf: Path, log: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_ivr.py"), "--config", str(conf), "--ring-seconds", "1"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)  # noqa: SIM115
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while "ready on" not in proc.stdout.readline():
        assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-3000:]
    return proc


def test_two_workers_with_the_example_config_answer_and_record_two_bursts_of_twenty(tmp_path: Path) -> None:
    workers = [worker_config(tmp_path, n) for n in (1, 2)]
    procs = [start(conf, tmp_path / f"ivr-{n}.log") for n, (conf, _, _) in enumerate(workers, 1)]
    try:
        bursts = [
            subprocess.Popen(
                ["sipp", f"127.0.0.1:{port}", "-sf", str(SCENARIOS / "lossy_caller.xml"), "-d", "3000",
                 "-inf", str(SCENARIOS / "callers.csv"), "-s", "95000", "-m", str(CALLS), "-r", str(CALLS),
                 "-l", str(CALLS), "-i", "127.0.0.1", "-p", str(free_port()), "-mp", str(sipp_media_port()),
                 "-nostdin", "-timeout", "60s", "-timeout_error", "-trace_err", "-error_file",
                 str(tmp_path / f"burst-{n}.err")],
                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for n, (_, port, _) in enumerate(workers, 1)
        ]
        codes = [b.wait(90) for b in bursts]
        time.sleep(1.0)  # the last records reach the CRM
        retries = [scrape(metrics).get("hotline_rtp_bind_retries_total", -1) for _, _, metrics in workers]
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(30)
    errors = "\n".join(p.read_text(errors="replace")[-1500:] for p in tmp_path.glob("burst-*.err"))
    assert codes == [0, 0], f"all {CALLS} calls of each burst answered:\n{errors}"
    for n in (1, 2):
        rows = sqlite3.connect(tmp_path / f"crm-{n}.db").execute("SELECT outcome FROM calls").fetchall()
        assert rows == [("caller_hangup",)] * CALLS, f"worker {n}: {rows}"
        log = (tmp_path / f"ivr-{n}.log").read_text()
        assert "rtp_bind_failed" not in log and "Service Unavailable" not in log
    busy = sum((tmp_path / f"ivr-{n}.log").read_text().count("event='rtp_port_busy'") for n in (1, 2))
    assert busy > 0, "the workers shared the RTP range: one of them had to move past the other's ports"
    assert sum(retries) == busy, f"each skipped port is counted in the metrics: {retries} vs {busy} logged"
