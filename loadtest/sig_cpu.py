#!/usr/bin/env python3
"""CPU seconds per signalling call of one IVR worker: the figure to compare before and after a change.

    .venv/bin/python loadtest/sig_cpu.py --calls 6000 --cps 600 --rounds 3
    .venv/bin/python loadtest/sig_cpu.py --calls 6000 --cps 600 --profile prof.txt   # and a py-spy profile

Starts a fresh IVR as loadtest/bench.py does (SQLite CRM, CRM writer thread, ring_seconds 0) and
runs SIPp's signalling call (INVITE, 200, ACK, BYE at once) `--rounds` times. For each round it
reads the IVR's CPU time from /proc before and after and prints the CPU milliseconds per answered
call. On a shared machine the calls/s move with the load; the CPU per call moves far less, so that
is what to compare. With `--profile FILE` py-spy records the IVR (raw, collapsed stacks) during the
last round. Only 127.0.0.1 is used; SIPp runs are bounded in calls and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from bench_common import ROOT, SCENARIOS, _children_cpu, proc_sample, sipp, start_ivr  # loadtest/, beside this script


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=6000, help="calls a round")
    p.add_argument("--cps", type=int, default=600, help="calls/s offered")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--writer", choices=("process", "thread"), default="thread",
                   help="the IVR's [database] writer (process: its CPU is counted apart, as writer_cpu_s)")
    p.add_argument("--profile", type=Path, help="py-spy raw profile of the last round to this file")
    p.add_argument("--py-spy", nargs="*", default=[], metavar="ARG",
                   help="more py-spy options for --profile, e.g. --py-spy=--gil (last on the line)")
    opts = p.parse_args()
    conf = argparse.Namespace(capacity=10 * opts.cps, max_calls=max(1000, opts.cps * 4), smoke=False,
                              rtp_base=int(os.environ.get("SIG_CPU_RTP_BASE", "46000")), desk=0,
                              writer=opts.writer, extra_conf="", start_seconds=300)
    work = Path(tempfile.mkdtemp(prefix="ivr-sigcpu-"))
    ivr = start_ivr(work, conf, 0)
    pid = ivr.proc.pid
    results = []
    try:
        time.sleep(2)
        for n in range(opts.rounds):
            spy = None
            if opts.profile is not None and n == opts.rounds - 1:
                seconds = int(opts.calls / opts.cps) + 2
                spy = subprocess.Popen([str(ROOT / ".venv" / "bin" / "py-spy"), "record", "-p", str(pid), "-r", "250",
                                        "-d", str(seconds), "-f", "raw", "-o", str(opts.profile), "--nonblocking",
                                        *opts.py_spy],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            load = os.getloadavg()[0]
            before = ivr.metrics()
            cpu0, child0, t0 = proc_sample(pid)[0], _children_cpu(pid), time.monotonic()
            r = sipp(work, f"127.0.0.1:{ivr.port}",
                     ["-sf", str(SCENARIOS / "signalling_call.xml"), "-d", "0", "-inf", str(SCENARIOS / "callers.csv"),
                      "-s", "95000", "-m", str(opts.calls), "-r", str(opts.cps), "-l", str(opts.cps * 4)],
                     timeout=opts.calls / opts.cps + 60)
            wall = time.monotonic() - t0
            time.sleep(1.0)  # the CRM writer's last batch
            cpu, child = proc_sample(pid)[0] - cpu0, _children_cpu(pid) - child0
            after = ivr.metrics()
            answered = sum(v - before.get(k, 0) for k, v in after.items() if k.startswith("hotline_calls_total{"))
            refused = sum(v - before.get(k, 0) for k, v in after.items() if k.startswith("hotline_sip_refused_total{"))
            if spy is not None:
                spy.wait(60)
            row = {"round": n, "loadavg": round(load, 2), "successful": r["successful"], "failed": r["failed"],
                   "answered": int(answered), "refused": int(refused), "answered_per_s": round(answered / wall, 1),
                   "cpu_s": round(cpu, 2), "cpu_ms_per_call": round(1000 * cpu / max(1, answered), 3),
                   **({"writer_cpu_s": round(child, 2)} if opts.writer == "process" else {})}
            results.append(row)
            print(json.dumps(row), flush=True)
    finally:
        ivr.stop()
    per_call = [r["cpu_ms_per_call"] for r in results]
    print(json.dumps({"cpu_ms_per_call_median": statistics.median(per_call), "min": min(per_call),
                      "failed": sum(r["failed"] for r in results)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
