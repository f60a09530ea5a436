#!/usr/bin/env python3
"""Benchmark the IVR with SIPp on loopback: JSON report and PNG chart.

    .venv/bin/python loadtest/bench.py                  # full run, about 5 minutes
    .venv/bin/python loadtest/bench.py --smoke          # bounded CI version, about 1 minute
    .venv/bin/python loadtest/bench.py --steps 500,1000 --max-calls 1100 --cps 300,450,600 --capacity 700
    .venv/bin/python loadtest/bench.py --workers 2 ...  # two IVRs behind Kamailio (loadtest/kamailio/)
    .venv/bin/python loadtest/bench.py --steps 500 --music-share 0.5   # half the callers on hold music
    .venv/bin/python loadtest/bench.py --bridged 300 --recording on     # 300 recorded caller-agent talks
    .venv/bin/python loadtest/bench.py --steps 400 --followups 100      # 100 follow-up calls beside 400 callers

One command line for three benchmarks, each described in its module beside this script:

- the steps (the default, loadtest/bench_steps.py): a fresh IVR, or `--workers N` of them
  behind Kamailio, takes media steps of silent callers (`--music-share`: some on hold music)
  while an RTP sink measures the spacing of its audio, signalling steps beside SIPp's own
  UAS as the ceiling, and twice its INVITE capacity as overload; with `--desk N`, N
  supervisors watch the live wallboard meanwhile;
- `--followups N` (loadtest/bench_followups.py): the first media step also dials N
  follow-up calls (回访) through a SIPp gateway beside the inbound callers;
- `--bridged N` (loadtest/bench_bridged.py): instead of the steps, N caller-agent talks,
  recorded (`--recording on`) or not.

What they share (starting the IVR, Kamailio and the desk, running SIPp, the RTP sink,
the samples of CPU, RSS and media clock lateness, the report) is loadtest/bench_common.py.

Writes loadtest/reports/bench-<time>.json and .png (or --report PATH; --bridged: JSON only).
Only 127.0.0.1 is used; every SIPp run is bounded in calls and seconds.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import bench_bridged  # loadtest/, beside this script (run by path)
import bench_steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", default="100,300,500", help="concurrent silent callers per media step")
    p.add_argument("--rate", type=float, default=50, help="new calls per second in the media steps")
    p.add_argument("--sink-calls", type=int, default=10, help="extra callers whose RTP the sink measures")
    p.add_argument("--music-share", type=float, default=0.0, metavar="F",
                   help="share (0..1) of each media step's callers (and of the sink callers) who press 9 then 2 and "
                        "wait in the queue on hold music until they hang up (~32 s); the rest are silent callers")
    p.add_argument("--cps", default="100,200,250", help="signalling-only calls/s per step")
    p.add_argument("--uas-ceiling", type=int, default=1500,
                   help="calls/s offered to SIPp's own UAS alone, as the ceiling")
    p.add_argument("--cps-seconds", type=float, default=10)
    p.add_argument("--capacity", type=int, default=250, help="the IVR's max_invites_per_second (overload is 2x this)")
    p.add_argument("--max-calls", type=int, default=1000, help="each worker's max_calls")
    p.add_argument("--balancer-cps", type=int, default=0,
                   help="with --workers: new calls a second Kamailio relays before answering 503 itself "
                        "(default: kamailio.cfg's MAX_CPS; the workers' busy 503s to OPTIONS do the rest)")
    p.add_argument("--workers", type=int, default=1,
                   help="IVR processes; 2 or more behind Kamailio (loadtest/kamailio/), each with its own SQLite CRM")
    p.add_argument("--writer", choices=("process", "thread"), default="thread",
                   help="the IVRs' [database] writer: the CRM writer process, or the thread inside the IVR")
    p.add_argument("--smoke", action="store_true", help="small and quick (CI): 20 calls, 100 cps, capacity 100")
    p.add_argument("--report", type=Path, help="JSON path (the chart goes beside it as .png)")
    p.add_argument("--desk", type=int, default=0, metavar="N",
                   help="run the agent desk beside the IVR with N supervisors on the live wallboard during the media "
                        "steps (each follows its events and reloads the page every 2 s); one worker only")
    p.add_argument("--bridged", type=int, default=0, metavar="N",
                   help="instead of the phases above: N concurrent caller-agent talks (callers and a pool of agent "
                        "UASes from SIPp, speaking espeak-ng speech), e.g. --bridged 300 --recording on")
    p.add_argument("--recording", choices=("on", "off"), default="on", help="with --bridged: record every talk")
    p.add_argument("--format", choices=("wav-pcm16", "wav-alaw", "wav-ulaw", "flac"), default="wav-pcm16",
                   help="with --bridged --recording on: [recording] format")
    p.add_argument("--talk-seconds", type=float, default=0,
                   help="with --bridged: each caller's time after the menu key (default: the ramp + 30 s, at least 30)")
    p.add_argument("--bridged-rate", type=float, default=10, help="with --bridged: new callers per second")
    p.add_argument("--agent-pool", type=int, default=10, help="with --bridged: SIPp UAS processes the agents share")
    p.add_argument("--followups", type=int, default=0, metavar="N",
                   help="the first media step also dials N follow-up calls (回访) through a SIPp UAS gateway that "
                        "answers and presses 1; one worker only")
    p.add_argument("--media-only", action="store_true", help="run the media steps only (no signalling, no overload)")
    p.add_argument("--ivr-nice", type=int, default=0, metavar="N",
                   help="start the IVR(s) at this niceness, e.g. -10 as the systemd unit runs it (negative: root); "
                        "SIPp, the load, stays at 0")
    p.add_argument("--rtp-base", type=int, default=30000,
                   help="the first worker's RTP range starts here, 10000 ports per worker (two benches at once on one "
                        "machine need ranges apart)")
    opts = p.parse_args()
    # what the benchmark adds to each IVR's sip.conf (--bridged, --followups), and the follow-ups' gateway
    opts.extra_conf, opts.gateway = "", None
    if opts.bridged:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        return bench_bridged.run(opts)
    if not 0.0 <= opts.music_share <= 1.0:
        p.error("--music-share is a share, 0..1")
    if not 0 <= opts.followups <= 10_000:
        p.error("--followups is 0..10000")
    if opts.followups and opts.workers != 1:
        p.error("--followups runs with one worker (its CRM holds the follow-ups)")
    # stopped (SIGTERM, a CI timeout): still stop the IVRs, Kamailio and SIPp's UAS in bench_steps' finally blocks
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return bench_steps.run(opts)


if __name__ == "__main__":
    sys.exit(main())
