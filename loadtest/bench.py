#!/usr/bin/env python3
"""Benchmark the IVR with SIPp on loopback: JSON report and PNG chart.

    .venv/bin/python loadtest/bench.py                  # full run, about 5 minutes
    .venv/bin/python loadtest/bench.py --smoke          # bounded CI version, about 1 minute
    .venv/bin/python loadtest/bench.py --steps 500,1000 --max-calls 1100 --cps 300,450,600 --capacity 700
    .venv/bin/python loadtest/bench.py --workers 2 ...  # two IVRs behind Kamailio (loadtest/kamailio/)
    .venv/bin/python loadtest/bench.py --steps 500 --music-share 0.5   # half the callers on hold music

Starts a fresh IVR (SQLite, ring_seconds 0, metrics on) and runs three phases:

1. Media steps (`--steps 100,300,500`): that many silent callers at once
   (greeting, three prompts, VAD listening, CRM writes), placed at `--rate`
   calls/s. A few extra callers (`--sink-calls`) have their SDP point at an
   RTP sink in this process, which measures the arrival jitter of the IVR's
   paced G.711 (RFC 3550 interarrival jitter, and the p99 of the deviation
   of each packet's spacing from 20 ms). The IVR's CPU and RSS are sampled
   from /proc; its media-clock lateness comes from its metrics. The CRM must
   hold one finished row per call SIPp completed. With `--music-share F` that
   share of the callers (and of the sink callers) are queue callers instead
   (loadtest/scenarios/music_caller.xml, music_sink_caller.xml): they press 9
   then 2, wait in the queue (no agent is logged in) on the announcements and
   hold music, and hang up after ~32 s, ending as `abandoned_queue`.
2. Signalling steps (`--cps 100,200,250`): INVITE/200/ACK/BYE at that many
   calls/s for `--cps-seconds`, against the IVR and, in the same run, against
   SIPp's own UAS (`sipp -sn uas`) as the ceiling; the ratio is printed.
3. Overload: 2x the IVR's configured `max_invites_per_second`; the IVR must
   answer 503 at once for the excess, lose nothing it accepted, and keep its
   RSS flat.

With `--workers N` (2 or more) the callers dial Kamailio with loadtest/kamailio/,
which spreads them over N IVR processes (each its own SIP port, RTP range and
SQLite CRM); calls, calls/s, CPU and RSS are the pool's, Kamailio's CPU apart.

Writes loadtest/reports/bench-<time>.json and .png (or --report PATH).
Only 127.0.0.1 is used; every SIPp run is bounded in calls and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from wallboard_clients import watch  # loadtest/, beside this script (run by path)

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "loadtest" / "scenarios"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python 3.11 does not name it
PAGE = os.sysconf("SC_PAGE_SIZE")
LATENESS = "hotline_media_clock_lateness_seconds"
KAMAILIO_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"
KAMAILIO_SHM_MB = 512


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_sample(pid: int) -> tuple[float, int]:
    """(CPU seconds used so far, RSS bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    return cpu, rss


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


# --- the RTP sink ------------------------------------------------------------------------


@dataclass
class _Stream:
    last_arrival: float = 0.0
    last_ts: int = 0
    jitter: float = 0.0  # RFC 3550 6.4.1, in seconds
    packets: int = 0


class RtpSink:
    """Receives the IVR's RTP for the sink callers; per-SSRC arrival jitter.

    Arrival times are the kernel's receive timestamps (SO_TIMESTAMPNS), so the
    measurement does not include this process's own scheduling delays.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.streams: dict[int, _Stream] = {}
        self.deviations: list[float] = []  # |spacing - 20 ms| of consecutive packets within a prompt
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data, ancillary, _, _ = self.sock.recvmsg(2048, 64)
            except TimeoutError:
                continue
            now = time.time()
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    seconds, nanos = struct.unpack("qq", value[:16])
                    now = seconds + nanos / 1e9
            if len(data) < 12:
                continue
            ts, ssrc = struct.unpack_from("!II", data, 4)
            s = self.streams.setdefault(ssrc, _Stream())
            if s.packets and now - s.last_arrival < 0.2:  # a gap over 200 ms is a pause between prompts
                d = (now - s.last_arrival) - ((ts - s.last_ts) & 0xFFFFFFFF) / 8000
                s.jitter += (abs(d) - s.jitter) / 16
                self.deviations.append(abs(d))
            s.last_arrival, s.last_ts = now, ts
            s.packets += 1

    def take(self) -> dict[str, float]:
        devs, self.deviations = self.deviations, []
        streams, self.streams = self.streams, {}
        return {
            "streams": len(streams),
            "packets": sum(s.packets for s in streams.values()),
            "spacing_deviation_ms_p50": round(1000 * pct(devs, 0.5), 3),
            "spacing_deviation_ms_p99": round(1000 * pct(devs, 0.99), 3),
            "spacing_deviation_ms_max": round(1000 * max(devs, default=0.0), 3),
            "rfc3550_jitter_ms_mean": round(1000 * statistics.fmean([s.jitter for s in streams.values()] or [0.0]), 3),
        }

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


# --- the IVR under test ------------------------------------------------------------------


@dataclass
class Ivr:
    proc: subprocess.Popen[str]
    port: int
    metrics_port: int
    db: Path
    work: Path
    desk_port: int | None = None

    def pacer_stats(self) -> dict[str, float]:
        """The status file's `pacer` entry (ivr.media.MediaClock.stats); {} when none was written yet."""
        try:
            return json.loads((self.work / "status.json").read_text(encoding="utf-8")).get("pacer") or {}
        except (OSError, ValueError):
            return {}

    def metrics(self) -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def crm_rows(self, where: str = "1=1") -> int:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(f"SELECT count(*) FROM calls WHERE {where}").fetchone()[0]
        finally:
            conn.close()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def _session_pids(session: int) -> list[int]:
    """The processes of a session (Kamailio forks its workers)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[3]) == session:
                    pids.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return pids


@dataclass
class Target:
    """What the callers dial: one IVR, or `--workers` IVRs behind Kamailio's dispatcher."""

    workers: list[Ivr]
    port: int  # the SIP entry: the IVR's own port, or Kamailio's
    work: Path
    balancer: subprocess.Popen[bytes] | None = None
    samples: list[tuple[float, float, int, int]] = field(default_factory=list)  # (t, cpu s, rss, calls) of the IVRs
    balancer_cpu: list[tuple[float, float]] = field(default_factory=list)  # (t, cpu s) of all Kamailio processes
    # (t, pacer stats) from the status files, the worst worker's: the media clock's lateness over its last 3000 ticks
    pacer: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """The workers' metrics added up (the lateness quantiles: the worst worker's)."""
        out: dict[str, float] = {}
        for ivr in self.workers:
            for name, value in ivr.metrics().items():
                out[name] = max(out.get(name, 0.0), value) if name.startswith(LATENESS) else out.get(name, 0.0) + value
        return out

    def crm_rows(self, where: str = "1=1") -> int:
        return sum(ivr.crm_rows(where) for ivr in self.workers)

    def rss(self) -> int:
        return sum(proc_sample(ivr.proc.pid)[1] for ivr in self.workers)

    desk: Desk | None = None  # --desk: the agent desk with supervisors on the wallboard

    def pacer_stats(self) -> dict[str, float]:
        stats = [s for s in (ivr.pacer_stats() for ivr in self.workers) if "lateness_ms_max" in s]
        keys = ("lateness_ms_p99", "lateness_ms_max", "lateness_ms_max_ever")
        return {k: max(s[k] for s in stats) for k in keys} if stats else {}

    def stop(self) -> list[int]:
        if self.balancer is not None:
            os.killpg(self.balancer.pid, signal.SIGTERM)  # its own session: Kamailio and the workers it forked
            self.balancer.wait(10)
        return [ivr.stop() for ivr in self.workers]

    def tracebacks(self) -> int:
        return sum((ivr.work / "ivr.log").read_text().count("Traceback") for ivr in self.workers)


def start_target(work: Path, opts: argparse.Namespace) -> Target:
    """Start the IVR (or `--workers` of them behind Kamailio) and a sampler of CPU, RSS, calls and lateness."""
    if opts.workers == 1:
        ivr = start_ivr(work, opts, 0)
        target = Target([ivr], ivr.port, work)
    else:
        workers = []
        for n in range(opts.workers):
            home = work / f"worker{n + 1}"
            home.mkdir()
            workers.append(start_ivr(home, opts, n))
        target = start_balancer(work, workers, opts.balancer_cps)

    def sampler() -> None:
        start = time.monotonic()
        while all(ivr.proc.poll() is None for ivr in target.workers):
            time.sleep(0.5)
            try:
                cpu = rss = calls = 0
                for ivr in target.workers:
                    c, r = proc_sample(ivr.proc.pid)
                    cpu, rss = cpu + c, rss + r
                    calls += int(ivr.metrics().get("hotline_calls_active", 0))
            except (OSError, ValueError):
                continue
            now = time.monotonic() - start
            target.samples.append((now, cpu, rss, calls))
            if stats := target.pacer_stats():
                target.pacer.append((now, stats))
            if target.balancer is not None:
                used = 0.0
                for pid in _session_pids(target.balancer.pid):
                    try:
                        used += proc_sample(pid)[0]
                    except (OSError, ValueError):
                        continue
                target.balancer_cpu.append((now, used))

    threading.Thread(target=sampler, daemon=True).start()
    time.sleep(1.5)
    return target


@dataclass
class Desk:
    """The agent desk (python -m desk) on the IVR's sip.conf and CRM, and a supervisor account for the wallboard."""

    proc: subprocess.Popen[bytes]
    url: str
    user: str = "bench-supervisor"
    password: str = "bench-wallboard-pw"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


def start_desk(ivr: Ivr) -> Desk:
    conf = ivr.work / "sip.conf"
    desk = Desk(subprocess.Popen([sys.executable, "-m", "desk", "--config", str(conf)], cwd=ROOT,
                                 stdout=open(ivr.work / "desk.log", "w"), stderr=subprocess.STDOUT),  # noqa: SIM115
                f"http://127.0.0.1:{ivr.desk_port}")
    subprocess.run([sys.executable, "-m", "desk", "--config", str(conf), "add-supervisor", desk.user],
                   input=f"{desk.password}\n".encode(), cwd=ROOT, check=True, capture_output=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{desk.url}/login", timeout=2).read()
            return desk
        except OSError:
            if time.monotonic() > deadline or desk.proc.poll() is not None:
                raise SystemExit(f"the desk did not start:\n{(ivr.work / 'desk.log').read_text()[-2000:]}") from None
            time.sleep(0.3)


def start_balancer(work: Path, workers: list[Ivr], max_cps: int = 0) -> Target:
    """Kamailio with loadtest/kamailio/kamailio.cfg in front of the workers (as tests/test_e2e_kamailio.py runs it).

    `max_cps`: new calls a second it relays at most, beyond which it answers 503 itself; 0: kamailio.cfg's
    default. The workers' own capacity needs no setting here: a busy worker's 503 to OPTIONS takes it out.
    """
    kamailio = shutil.which("kamailio") or "/usr/sbin/kamailio"
    if not os.path.exists(kamailio):
        raise SystemExit("--workers needs kamailio (scripts/bootstrap.sh installs Debian's)")
    port = free_port()
    dslist = work / "dispatcher.list"
    dslist.write_text("".join(f"1 sip:127.0.0.1:{w.port}\n" for w in workers))
    proc = subprocess.Popen(
        # -m: shared memory (MB) for Kamailio's transactions; its default 64 runs out ("out of mem" in tm, then
        # 500s and lost calls) at some hundred calls/s, each transaction lingering for its wait timer
        [kamailio, "-DD", "-E", "-m", str(KAMAILIO_SHM_MB), "-f", str(ROOT / "loadtest" / "kamailio" / "kamailio.cfg"),
         "-L", KAMAILIO_MODULES,
         "-A", f"LISTEN=udp:127.0.0.1:{port}", "-A", f'DSLIST="{dslist}"',
         *(["-A", f"MAX_CPS={max_cps}"] if max_cps else []),
         "-P", str(work / "kamailio.pid")],
        stdout=open(work / "kamailio.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,  # noqa: SIM115
    )
    time.sleep(3)  # up, and a first OPTIONS round to the workers
    if proc.poll() is not None:
        raise SystemExit(f"kamailio did not start:\n{(work / 'kamailio.log').read_text()[-2000:]}")
    return Target(workers, port, work, proc)


def start_ivr(work: Path, opts: argparse.Namespace, n: int) -> Ivr:
    port, metrics_port = free_port(), free_port(socket.SOCK_STREAM)
    desk_port = free_port(socket.SOCK_STREAM) if opts.desk and n == 0 else None
    desk = f"[desk]\nport = {desk_port}\ncookie_secure = no\nsecret_key = {os.urandom(24).hex()}\n" if desk_port else ""
    db = work / "crm.db"
    silence = "[silence]\nwait_seconds = 1\n" if opts.smoke else ""
    rtp = 30000 + 10000 * n  # each worker its own RTP range
    (work / "sip.conf").write_text(
        f"[general]\nbind = 127.0.0.1\nport = {port}\nring_seconds = 0\nnumbers = 95000\n"
        f"rtp_port_min = {rtp}\nrtp_port_max = {rtp + 9999}\nmax_calls = {opts.max_calls}\n"
        f"status_file = {work / 'status.json'}\n{silence}"
        f"[limits]\ntrusted = 127.0.0.1\nmax_invites_per_second = {opts.capacity}\n"
        f"[metrics]\nport = {metrics_port}\n"
        f"[prompts]\ncache_dir = {ROOT / 'var' / 'prompts'}\n"
        f"[database]\nurl = sqlite:///{db}\noutbox_dir = {work / 'outbox'}\n[log]\nlevel = warning\n{desk}",
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_ivr.py"), "--config", str(work / "sip.conf")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=open(work / "ivr.log", "w"), text=True,  # noqa: SIM115
    )
    assert proc.stdout is not None
    # the first start renders the prompts, and pyttsx3 prints a line per file before the IVR is ready
    deadline = time.monotonic() + 120
    while True:
        line = proc.stdout.readline()
        if "ready on" in line:
            return Ivr(proc, port, metrics_port, db, work, desk_port)
        if (not line and proc.poll() is not None) or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the IVR did not start:\n{(work / 'ivr.log').read_text()}")


def sipp(work: Path, target: str, args: list[str], timeout: float) -> dict[str, int]:
    """Run SIPp to the end; its final successful/failed call counts."""
    stat = work / f"sipp-{time.monotonic_ns()}.csv"
    cmd = ["sipp", target, "-i", "127.0.0.1", "-p", str(free_port()), "-nostdin", "-timeout", f"{int(timeout)}s",
           "-timeout_error", "-trace_stat", "-stf", str(stat), "-fd", "1", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=work, timeout=timeout + 30)
    lines = stat.read_text().splitlines() if stat.exists() else []
    if len(lines) < 2:
        return {"successful": 0, "failed": -1, "exit": done.returncode}
    header, last = lines[0].split(";"), lines[-1].split(";")
    return {"successful": int(last[header.index("SuccessfulCall(C)")]),
            "failed": int(last[header.index("FailedCall(C)")]), "exit": done.returncode}


def balancer_cpu(target: Target, t0: float, t1: float) -> dict[str, float]:
    """Kamailio's CPU (all its processes) between two sample times; {} with one IVR and no balancer."""
    if target.balancer is None:
        return {}
    window = [s for s in target.balancer_cpu if t0 <= s[0] <= t1]
    if len(window) < 2:
        return {}
    used = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
    return {"kamailio_cpu_percent_of_one_core": round(100 * used, 1)}


def cpu_between(samples: list[tuple[float, float, int, int]], t0: float, t1: float) -> float:
    """Percent of one core used between two sample times."""
    window = [s for s in samples if t0 <= s[0] <= t1]
    if len(window) < 2:
        return 0.0
    return round(100 * (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0]), 1)


# --- phases ------------------------------------------------------------------------------


# the CRM outcome each kind of media caller ends with: silent callers are hung up after the silent-call routine,
# queue (music) callers hang up while they wait in the queue
SILENT_ROWS = "outcome = 'silent' AND silent_attempts = 3"
QUEUE_ROWS = "outcome = 'abandoned_queue' AND hangup_by = 'caller'"


def media_step(ivr: Target, sink: RtpSink, calls: int, opts: argparse.Namespace) -> dict[str, object]:
    """`calls` concurrent callers (a --music-share of them queue callers on hold music) plus the sink callers."""
    before = {"silent": ivr.crm_rows(SILENT_ROWS), "abandoned_queue": ivr.crm_rows(QUEUE_ROWS)}
    t0 = ivr.samples[-1][0] if ivr.samples else 0.0
    rss_idle = ivr.rss()
    target = f"127.0.0.1:{ivr.port}"
    sink.take()
    result: dict[str, dict[str, int]] = {}
    music = round(calls * opts.music_share)
    music_sink = round(opts.sink_calls * opts.music_share)
    # scenario, callers, ceiling on concurrent calls, rate: the silent and music callers share --rate by their counts
    runs = {
        "main": ("silent_caller.xml", calls - music, calls - music, opts.rate * (calls - music) / max(1, calls), []),
        "music": ("music_caller.xml", music, music, opts.rate * music / max(1, calls), []),
        "sink": ("sink_caller.xml", opts.sink_calls - music_sink, None, None, ["-key", "sink_port", str(sink.port)]),
        "music_sink": ("music_sink_caller.xml", music_sink, None, None, ["-key", "sink_port", str(sink.port)]),
    }

    def run(name: str) -> None:
        scenario, n, limit, rate, extra = runs[name]
        if n <= 0:
            result[name] = {"successful": 0, "failed": 0, "exit": 0}
            return
        args = ["-sf", str(SCENARIOS / scenario), "-inf", str(SCENARIOS / "callers.csv"), "-s", "95000",
                "-m", str(n), "-r", str(round(rate, 2) if rate is not None else n), "-mi", "127.0.0.1", *extra]
        if limit is not None:
            args += ["-l", str(limit)]
        result[name] = sipp(ivr.work, target, args, timeout=200)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("sink", "music_sink", "music")]
    for t in threads:
        t.start()
    wallboard: dict[str, object] = {}
    if ivr.desk is not None:  # supervisors on the wallboard for the whole step (silent calls last ~32 s)
        desk = ivr.desk
        watcher = threading.Thread(target=lambda: wallboard.update(watch(
            desk.url, desk.user, desk.password, clients=opts.desk, seconds=calls / opts.rate + 30, reload_every=2)))
        watcher.start()
    run("main")
    for t in threads:
        t.join()
    if ivr.desk is not None:
        watcher.join()
    t1 = ivr.samples[-1][0]
    step = [s for s in ivr.samples if t0 <= s[0] <= t1]
    peak = max((s[3] for s in step), default=0)
    busy = [s for s in step if s[3] >= 0.9 * max(1, peak)]
    m = ivr.metrics()
    jitter = sink.take()
    ok = sum(r["successful"] for r in result.values())
    time.sleep(1.0)  # the writer's last batch
    by_outcome = {"silent": ivr.crm_rows(SILENT_ROWS) - before["silent"],
                  "abandoned_queue": ivr.crm_rows(QUEUE_ROWS) - before["abandoned_queue"]}
    expected = {"silent": result["main"]["successful"] + result["sink"]["successful"],
                "abandoned_queue": result["music"]["successful"] + result["music_sink"]["successful"]}
    rows = sum(by_outcome.values())
    return {
        "offered_calls": calls + opts.sink_calls,
        "music_share": opts.music_share,
        "music_calls": music + music_sink,
        "peak_concurrent_calls": peak,
        "sipp_successful": ok,
        "sipp_failed": sum(r["failed"] for r in result.values()),
        "sipp_by_scenario": {k: [r["successful"], r["failed"]] for k, r in result.items()},
        "crm_rows": rows,
        "crm_rows_by_outcome": by_outcome,
        "crm_matches_sipp": by_outcome == expected,
        "cpu_percent_of_one_core_at_peak": cpu_between(step, busy[0][0], busy[-1][0]) if len(busy) > 1 else 0.0,
        **(balancer_cpu(ivr, busy[0][0], busy[-1][0]) if len(busy) > 1 else {}),
        "rss_peak_mb": round(max((s[2] for s in step), default=rss_idle) / 2**20, 1),
        "rss_per_call_kb": round((max((s[2] for s in step), default=rss_idle) - rss_idle) / 1024 / max(1, peak), 1),
        **lateness(ivr, t0, t1, m),
        "rtp_sink": jitter,
        **({"wallboard": wallboard} if ivr.desk is not None else {}),
    }


def lateness(ivr: Target, t0: float, t1: float, m: dict[str, float]) -> dict[str, float]:
    """The media clock's wake-up lateness during a step, from the status file sampled every 0.5 s.

    Each sample covers the clock's last 3000 ticks (60 s), so the worst of the samples taken
    during the step is its max (and may include up to 60 s before it: never an understatement);
    `max_ever` is since the IVR started. The metrics' quantiles at the step's end are kept too.
    """
    window = [s for t, s in ivr.pacer if t0 <= t <= t1 + 1.0 and "lateness_ms_max" in s]
    return {
        "media_clock_lateness_ms_p99": max((s["lateness_ms_p99"] for s in window), default=0.0),
        "media_clock_lateness_ms_max": max((s["lateness_ms_max"] for s in window), default=0.0),
        "media_clock_lateness_ms_max_ever": window[-1]["lateness_ms_max_ever"] if window else 0.0,
        "media_clock_lateness_ms_p99_at_end": round(1000 * m.get(f'{LATENESS}{{quantile="0.99"}}', 0), 3),
    }


def cps_step(ivr: Target | None, uas_port: int | None, rate: int, seconds: float, work: Path) -> dict[str, object]:
    """`rate` calls/s for `seconds` against the IVR (ivr) or SIPp's UAS (uas_port)."""
    calls = int(rate * seconds)
    if ivr is not None:
        target, scenario = f"127.0.0.1:{ivr.port}", ["-sf", str(SCENARIOS / "signalling_call.xml"), "-d", "0",
                                                     "-inf", str(SCENARIOS / "callers.csv"), "-s", "95000"]
        before = ivr.metrics()
        t0 = ivr.samples[-1][0]
        rss0 = ivr.rss()
    else:
        target, scenario = f"127.0.0.1:{uas_port}", ["-sn", "uac", "-s", "95000"]
    started = time.monotonic()
    r = sipp(work, target, [*scenario, "-m", str(calls), "-r", str(rate), "-l", str(max(100, rate * 4))],
             timeout=seconds + 60)
    wall = time.monotonic() - started
    # achieved: calls the far end answered (200) per second; SIPp's UAS answers all of them,
    # the IVR answers or refuses with 503 (SIPp counts both as successful calls)
    out: dict[str, object] = {"offered_cps": rate, "calls": calls, "sipp_successful": r["successful"],
                              "sipp_failed": r["failed"], "wall_s": round(wall, 1),
                              "achieved_cps": round(r["successful"] / max(wall, seconds), 1)}
    if ivr is not None:
        time.sleep(1.5)
        after = ivr.metrics()
        t1 = ivr.samples[-1][0]
        refused_503 = 'hotline_sip_refused_total{status="503"}'
        refused = after.get(refused_503, 0) - before.get(refused_503, 0)
        answered = sum(v - before.get(k, 0) for k, v in after.items() if k.startswith("hotline_calls_total{"))
        out.update({
            "answered": int(answered), "refused_503": int(refused),
            "achieved_cps": round(answered / max(wall, seconds), 1),
            "cpu_percent_of_one_core": cpu_between(ivr.samples, t0, t1),
            **balancer_cpu(ivr, t0, t1),
            "rss_before_mb": round(rss0 / 2**20, 1), "rss_after_mb": round(ivr.rss() / 2**20, 1),
        })
    return out


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = report["media_steps"]
    x = [s["peak_concurrent_calls"] for s in steps]
    left.plot(x, [s["cpu_percent_of_one_core_at_peak"] for s in steps], "o-", label="IVR CPU, % of one core")
    left.set_xlabel("concurrent calls with media")
    left.set_ylabel("% of one core")
    twin = left.twinx()
    twin.plot(x, [s["rtp_sink"]["spacing_deviation_ms_p99"] for s in steps], "s--", color="tab:red",
              label="RTP spacing deviation p99 (ms)")
    twin.plot(x, [s["media_clock_lateness_ms_p99"] for s in steps], "^--", color="tab:orange",
              label="media clock lateness p99 (ms)")
    twin.plot(x, [s["sipp_failed"] for s in steps], "x:", color="black", label="failed calls")
    twin.axhline(5, color="tab:red", linewidth=0.5)
    twin.set_ylabel("ms / failed calls")
    left.legend(loc="upper left", fontsize=8)
    twin.legend(loc="center left", fontsize=8)
    left.set_title("Media: silent callers (greeting, prompts, VAD, CRM)")
    cps = report["signalling_steps"]
    offered = [c["ivr"]["offered_cps"] for c in cps]
    right.plot(offered, [c["ivr"]["achieved_cps"] for c in cps], "o-", label="IVR answered calls/s")
    right.plot(offered, [c["sipp_uas"]["achieved_cps"] for c in cps], "s--", label="SIPp -sn uas calls/s")
    right.plot(offered, [c["ivr"]["sipp_failed"] for c in cps], "x:", color="black", label="IVR failed calls")
    over = report["overload"]
    right.plot([over["offered_cps"]], [over["answered"] / max(1.0, over["calls"] / over["offered_cps"])], "r*",
               markersize=12, label=f"2x capacity: {over['refused_503']} x 503")
    ceiling = report.get("sipp_uas_ceiling")
    if ceiling:
        right.text(0.02, 0.97,
                   f"SIPp -sn uas alone: {ceiling['achieved_cps']:.0f} calls/s of {ceiling['offered_cps']} offered",
                   transform=right.transAxes, fontsize=8, va="top")
    right.set_xlabel("offered calls/s (INVITE, 200, ACK, BYE)")
    right.legend(fontsize=8, loc="lower right")
    right.set_title("Signalling")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


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
    p.add_argument("--smoke", action="store_true", help="small and quick (CI): 20 calls, 100 cps, capacity 100")
    p.add_argument("--report", type=Path, help="JSON path (the chart goes beside it as .png)")
    p.add_argument("--desk", type=int, default=0, metavar="N",
                   help="run the agent desk beside the IVR with N supervisors on the live wallboard during the media "
                        "steps (each follows its events and reloads the page every 2 s); one worker only")
    opts = p.parse_args()
    if not 0.0 <= opts.music_share <= 1.0:
        p.error("--music-share is a share, 0..1")
    # stopped (SIGTERM, a CI timeout): still stop the IVRs, Kamailio and SIPp's UAS in the finally blocks below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if opts.smoke:
        opts.steps, opts.rate, opts.sink_calls, opts.cps, opts.cps_seconds, opts.capacity = "20", 20, 3, "100", 4, 100
        opts.uas_ceiling = 500
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report_path = opts.report or ROOT / "loadtest" / "reports" / f"bench-{stamp}.json"
    work = Path(tempfile.mkdtemp(prefix="ivr-bench-"))

    if opts.desk and opts.workers != 1:
        raise SystemExit("--desk runs with one worker (the desk reads that worker's CRM)")
    ivr = start_target(work, opts)
    if opts.desk:
        ivr.desk = start_desk(ivr.workers[0])
    idle_rss = ivr.rss()
    try:
        sink = RtpSink()
    except OSError:
        ivr.stop()
        raise
    sipp_version = subprocess.run(["sipp", "-v"], capture_output=True, text=True).stdout.strip().splitlines()
    report: dict[str, object] = {
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0], "loadavg_at_start": os.getloadavg(),
                    "sipp": sipp_version[0] if sipp_version else "?"},
        "config": {"capacity_invites_per_second": opts.capacity, "max_calls": opts.max_calls, "smoke": opts.smoke,
                   "workers": opts.workers, "sip_entry": "kamailio" if ivr.balancer is not None else "ivr",
                   "wallboard_clients": opts.desk, "music_share": opts.music_share},
        "rss_idle_mb": round(idle_rss / 2**20, 1),
        "media_steps": [],
        "signalling_steps": [],
    }
    try:
        for n in [int(x) for x in opts.steps.split(",")]:
            step = media_step(ivr, sink, n, opts)
            report["media_steps"].append(step)  # type: ignore[union-attr]
            print(f"media {n:>4}: {json.dumps(step)}", flush=True)

        uas_port = free_port()
        uas = subprocess.Popen(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port), "-nostdin", "-bg"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
        time.sleep(1)
        try:
            for rate in [int(x) for x in opts.cps.split(",")]:
                mine = cps_step(ivr, None, rate, opts.cps_seconds, work)
                theirs = cps_step(None, uas_port, rate, opts.cps_seconds, work)
                ratio = round(float(mine["achieved_cps"]) / max(1.0, float(theirs["achieved_cps"])), 2)  # type: ignore[arg-type]
                step_report = {"ivr": mine, "sipp_uas": theirs, "ratio_to_sipp_uas": ratio}
                report["signalling_steps"].append(step_report)  # type: ignore[union-attr]
                print(f"cps {rate:>5}: ivr {json.dumps(mine)}\n"
                      f"           sipp uas {json.dumps(theirs)} ratio {ratio}", flush=True)
            ceiling = cps_step(None, uas_port, opts.uas_ceiling, opts.cps_seconds, work)
            report["sipp_uas_ceiling"] = ceiling
            print(f"sipp uas alone at {opts.uas_ceiling}/s: {json.dumps(ceiling)}", flush=True)
        finally:
            subprocess.run(["pkill", "-f", f"sipp -sn uas -i 127.0.0.1 -p {uas_port}"], check=False)
            uas.wait(10)

        failed_before = ivr.crm_rows("outcome = 'failed'")
        over = cps_step(ivr, None, 2 * opts.capacity * opts.workers, opts.cps_seconds, work)  # each has `capacity`
        # A call a worker answered after its caller had it refused or failed (a late 200 behind a
        # balancer) is never ACKed: the worker ends it `failed` after its 200's ACK timeout (32 s).
        # SIPp counts it failed or, when a 503 came first, refused; the CRM says it was lost.
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and ivr.metrics().get("hotline_calls_active", 0) > 0:
            time.sleep(1)
        over["answered_then_failed"] = ivr.crm_rows("outcome = 'failed'") - failed_before
        over["accepted_then_lost"] = max(int(over["sipp_failed"]), int(over["answered_then_failed"]))  # type: ignore[call-overload]
        report["overload"] = over
        print(f"overload {2 * opts.capacity * opts.workers}/s: {json.dumps(over)}", flush=True)
    finally:
        sink.close()
        report["loadavg_at_end"] = os.getloadavg()  # other work on the machine competes for its 2 cores
        if ivr.desk is not None:
            ivr.desk.stop()
        exits = ivr.stop()
        report["ivr_exit"] = max(exits, key=abs)
        report["ivr_log_tracebacks"] = ivr.tracebacks()

    steps = report["media_steps"]
    top = max(steps, key=lambda s: s["peak_concurrent_calls"])  # type: ignore[arg-type, return-value]
    clean = [c["ivr"] for c in report["signalling_steps"]  # type: ignore[index, union-attr]
             if c["ivr"]["sipp_failed"] == 0 and c["ivr"]["refused_503"] == 0]
    best_cps = max((c["achieved_cps"] for c in clean), default=0)
    uas_cps = report["sipp_uas_ceiling"]["achieved_cps"]  # type: ignore[index]
    over = report["overload"]  # type: ignore[assignment]
    report["targets"] = {
        "concurrent_media_calls": {"measured": top["peak_concurrent_calls"], "failed": top["sipp_failed"],
                                   "target": f">= {1000 * opts.workers}, 0 failed"},
        "rtp_spacing_p99_ms": {"measured": top["rtp_sink"]["spacing_deviation_ms_p99"], "target": "<= 5"},
        "media_clock_lateness_p99_ms": {"measured": top["media_clock_lateness_ms_p99"], "target": "<= 5"},
        "media_clock_lateness_max_ms": {"measured": top["media_clock_lateness_ms_max"], "target": "<= 20",
                                        "max_ever": top["media_clock_lateness_ms_max_ever"]},
        "crm_rows_match_sipp": {"measured": all(s["crm_matches_sipp"] for s in steps), "target": True},
        "memory_per_call_kb": {"measured": top["rss_per_call_kb"], "target": "<= 100"},
        "signalling_cps_zero_failures": {"measured": best_cps, "sipp_uas_ceiling_cps": uas_cps,
                                         "target": f">= {600 * opts.workers} (600 a worker, 0.4 of SIPp's UAS)",
                                         "ratio": round(best_cps / max(1.0, uas_cps), 3)},
        "overload_2x": {"measured": {"503": over["refused_503"], "failed": over["sipp_failed"],
                                      "rss_mb": [over["rss_before_mb"], over["rss_after_mb"]]},
                        "target": "503s, 0 failed, RSS flat"},
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    chart(report, report_path.with_suffix(".png"))
    print(json.dumps(report["targets"], indent=2, ensure_ascii=False))
    print(f"report: {report_path}\nchart:  {report_path.with_suffix('.png')}")
    healthy = all(s["sipp_failed"] == 0 and s["crm_matches_sipp"] for s in steps) and report["ivr_log_tracebacks"] == 0  # type: ignore[index]
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
