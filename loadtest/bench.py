#!/usr/bin/env python3
"""Concurrent silent callers against a fresh IVR: CPU, memory, pacing jitter, CRM completeness.

    .venv/bin/python loadtest/bench.py --calls 200 --rate 50 [--report loadtest/reports/bench.json]

Starts the IVR on loopback (ring 0, SQLite in a temporary folder), lets SIPp
place `--calls` silent callers at `--rate` calls/s (each stays through the
whole silent routine, ~32 s, with the IVR sending paced G.711 prompts and
listening with VAD), samples the IVR process's CPU and RSS twice a second,
reads the media clock's wake-up lateness from the status file, and checks
that the CRM has one finished row per call SIPp completed. Prints a summary
and writes a JSON report. Only loopback is used; the run is bounded by
`--calls` and SIPp's timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "tests" / "scenarios"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_sample(pid: int) -> tuple[float, int]:
    """(CPU seconds used so far, RSS bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return cpu, rss


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    args = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    args.add_argument("--calls", type=int, default=200, help="silent callers in all (and at most at once)")
    args.add_argument("--rate", type=float, default=50, help="new calls per second")
    args.add_argument("--report", type=Path, default=ROOT / "loadtest" / "reports" / "bench.json")
    opts = args.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ivr-bench-"))
    port = free_udp_port()
    db = work / "crm.db"
    rtp_span = 2 * opts.calls + 100
    (work / "sip.conf").write_text(
        f"[general]\nbind = 127.0.0.1\nport = {port}\nring_seconds = 0\nnumbers = 95000\n"
        f"rtp_port_min = 30000\nrtp_port_max = {30000 + rtp_span}\nmax_calls = {opts.calls + 10}\n"
        f"status_file = {work / 'status.json'}\n"
        f"[prompts]\ncache_dir = {ROOT / 'var' / 'prompts'}\n[database]\nurl = sqlite:///{db}\n[log]\nlevel = warning\n",
        encoding="utf-8",
    )
    ivr = subprocess.Popen(
        [sys.executable, str(ROOT / "run_ivr.py"), "--config", str(work / "sip.conf")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=open(work / "ivr.log", "w"), text=True,  # noqa: SIM115
    )
    assert ivr.stdout is not None
    if "ready on" not in ivr.stdout.readline():
        print((work / "ivr.log").read_text(), file=sys.stderr)
        return 1
    time.sleep(1)
    idle_cpu, idle_rss = proc_sample(ivr.pid)

    samples: list[tuple[float, float, int, int]] = []  # (t, cpu s, rss, calls in progress)
    stop = threading.Event()

    def sampler() -> None:
        start = time.monotonic()
        while not stop.wait(0.5):
            cpu, rss = proc_sample(ivr.pid)
            try:
                calls = json.loads((work / "status.json").read_text()).get("calls", 0)
            except (OSError, ValueError):
                calls = 0
            samples.append((time.monotonic() - start, cpu, rss, calls))

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    started = time.monotonic()
    sipp = subprocess.run(
        ["sipp", f"127.0.0.1:{port}", "-sf", str(SCENARIOS / "silent_caller.xml"), "-inf", str(SCENARIOS / "callers.csv"),
         "-s", "95000", "-m", str(opts.calls), "-l", str(opts.calls), "-r", str(opts.rate), "-i", "127.0.0.1",
         "-p", str(free_udp_port()), "-mi", "127.0.0.1", "-nostdin", "-timeout", "200s", "-timeout_error",
         "-trace_stat", "-stf", str(work / "sipp.csv")],
        capture_output=True, text=True, cwd=work,
    )
    wall = time.monotonic() - started
    stop.set()
    thread.join()
    status = json.loads((work / "status.json").read_text())
    ivr.send_signal(signal.SIGTERM)
    ivr.wait(30)

    stats = (work / "sipp.csv").read_text().splitlines()
    header, last = stats[0].split(";"), stats[-1].split(";")
    sipp_ok = int(last[header.index("SuccessfulCall(C)")])
    sipp_failed = int(last[header.index("FailedCall(C)")])
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT count(*) FROM calls WHERE outcome = 'silent' AND silent_attempts = 3").fetchone()[0]
    all_rows = conn.execute("SELECT count(*) FROM calls").fetchone()[0]

    peak = max(samples, key=lambda s: s[3]) if samples else (0, 0, 0, 0)
    peak_rss = max(s[2] for s in samples) if samples else idle_rss
    busy = [s for s in samples if s[3] >= 0.9 * max(1, peak[3])]
    cpu_busy = (busy[-1][1] - busy[0][1]) / (busy[-1][0] - busy[0][0]) * 100 if len(busy) > 1 else 0.0
    report = {
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
        "offered": {"calls": opts.calls, "rate_per_s": opts.rate},
        "sipp": {"successful": sipp_ok, "failed": sipp_failed, "exit": sipp.returncode, "wall_s": round(wall, 1)},
        "crm": {"rows": all_rows, "silent_rows_with_3_attempts": rows, "matches_sipp": rows == sipp_ok},
        "ivr": {
            "peak_concurrent_calls": peak[3],
            "cpu_percent_of_one_core_at_peak": round(cpu_busy, 1),
            "cpu_seconds_total": round(samples[-1][1] - idle_cpu, 2) if samples else None,
            "rss_idle_mb": round(idle_rss / 2**20, 1),
            "rss_peak_mb": round(peak_rss / 2**20, 1),
            "rss_per_call_kb": round((peak_rss - idle_rss) / 1024 / max(1, peak[3]), 1),
        },
        "pacing": status.get("pacer", {}),
    }
    opts.report.parent.mkdir(parents=True, exist_ok=True)
    opts.report.write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(report, indent=2))
    print(f"report: {opts.report}")
    return 0 if sipp_failed == 0 and rows == sipp_ok else 1


if __name__ == "__main__":
    sys.exit(main())
