"""What the load benchmarks of loadtest/bench.py share: the IVR under test, SIPp, the RTP sink, the samples.

`start_target` starts a fresh IVR (its own sip.conf and SQLite CRM, ring_seconds 0, metrics on; or
`--workers` of them behind Kamailio with loadtest/kamailio/) and samples its CPU and RSS from /proc,
its active calls from its metrics and its media clock's lateness from its status file, every 0.5 s.
`sipp` runs SIPp to the end (bounded in calls and seconds) and reads its final counts; `RtpSink`
measures the spacing of the IVR's RTP at the sink callers; `write_report` writes the JSON report.
Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "loadtest" / "scenarios"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; Python 3.11 does not name it
PAGE = os.sysconf("SC_PAGE_SIZE")
LATENESS = "hotline_media_clock_lateness_seconds"
KAMAILIO_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"
KAMAILIO_SHM_MB = 512


# Ports free_port handed out in this process. An agent UAS and the IVR once drew the same one (neither bound it
# yet): the IVR's calls to that agent rang the IVR itself.
_GIVEN: set[int] = set()


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port on 127.0.0.1 free right now, drawn from 6100-7999: below the RTP ranges the benchmarks
    give the IVR and SIPp (20000 and up), baresip's RTP ports and the kernel's ephemeral ports, so a
    process binding port 0 does not take it before its user binds it."""
    for _ in range(500):
        port = random.randrange(6100, 8000)
        if port in _GIVEN:  # free now, but handed out already and maybe not bound yet (a UAS's, the IVR's)
            continue
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    raise SystemExit("no free port between 6100 and 7999 on 127.0.0.1")


def free_sip_port() -> int:
    """A port free for UDP and TCP both: the IVR listens on both (a TCP port taken fails its start)."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise SystemExit("no port free for both UDP and TCP on 127.0.0.1")


def free_port_run(count: int, first: int = 20000, last: int = 29999) -> int:
    """The first of `count` consecutive ports free for UDP on 127.0.0.1, between `first` and `last`.

    For SIPp UASes' media (`-mp` binds that port and the one 2 above): below the ephemeral range
    the SIP ports come from and the IVR's RTP range, and never on ports a test or benchmark
    running beside this one holds (fixed bases collided when two ran at once)."""
    start = random.randrange(first, last - count)
    for base in [*range(start, last - count, count), *range(first, start, count)]:
        held: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise SystemExit(f"no {count} consecutive UDP ports free between {first} and {last}")


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


def _children_cpu(pid: int) -> float:
    """CPU seconds of a process's children ([database] writer = process: the CRM writer process)."""
    used = 0.0
    children: list[str] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):  # a child is listed under the thread that started it
        try:
            children += (task / "children").read_text().split()
        except OSError:
            continue
    for child in children:
        try:
            used += proc_sample(int(child))[0]
        except (OSError, ValueError):
            continue
    return used


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
    writer_cpu: list[tuple[float, float]] = field(default_factory=list)  # (t, cpu s) of the IVRs' CRM writer processes
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
            target.writer_cpu.append((now, sum(_children_cpu(ivr.proc.pid) for ivr in target.workers)))

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
    """One IVR on its own sip.conf; `opts.log_level` (default warning): info for per-call lines in ivr.log."""
    port, metrics_port = free_sip_port(), free_port(socket.SOCK_STREAM)
    desk_port = free_port(socket.SOCK_STREAM) if opts.desk and n == 0 else None
    desk = f"[desk]\nport = {desk_port}\ncookie_secure = no\nsecret_key = {os.urandom(24).hex()}\n" if desk_port else ""
    db = work / "crm.db"
    silence = "[silence]\nwait_seconds = 1\n" if opts.smoke else ""
    rtp = opts.rtp_base + 10000 * n  # each worker its own RTP range
    (work / "sip.conf").write_text(
        f"[general]\nbind = 127.0.0.1\nport = {port}\nring_seconds = 0\nnumbers = 95000\n"
        f"rtp_port_min = {rtp}\nrtp_port_max = {rtp + 9999}\nmax_calls = {opts.max_calls}\n"
        f"status_file = {work / 'status.json'}\n{silence}"
        f"[limits]\ntrusted = 127.0.0.1\nmax_invites_per_second = {opts.capacity}\n"
        f"[metrics]\nport = {metrics_port}\n"
        f"[prompts]\ncache_dir = {ROOT / 'var' / 'prompts'}\n"
        f"[database]\nurl = sqlite:///{db}\noutbox_dir = {work / 'outbox'}\nwriter = {opts.writer}\n"
        f"[log]\nlevel = {getattr(opts, 'log_level', 'warning')}\n{desk}"
        f"{opts.extra_conf}",  # the benchmark's own sections (--bridged: agents, recording; --followups: [followup])
        encoding="utf-8",
    )
    nice = getattr(opts, "ivr_nice", 0)
    proc = subprocess.Popen(
        [*(["nice", "-n", str(nice)] if nice else []),  # nice execs the IVR: the PID stays the IVR's
         sys.executable, str(ROOT / "run_ivr.py"), "--config", str(work / "sip.conf")],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=open(work / "ivr.log", "w"), text=True,  # noqa: SIM115
    )
    assert proc.stdout is not None
    # the first start renders the prompts, and pyttsx3 prints a line per file before the IVR is ready
    deadline = time.monotonic() + getattr(opts, "start_seconds", 120)
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
    # bytes, not text: only its exit status is read, and under overload SIPp may print bytes that are not UTF-8
    done = subprocess.run(cmd, capture_output=True, cwd=work, timeout=timeout + 30)
    return sipp_counts(stat, done.returncode)


def sipp_counts(stat: Path, returncode: int) -> dict[str, int]:
    """SIPp's final successful/failed call counts from its -trace_stat file (failed -1: no file, it never ran)."""
    lines = stat.read_text().splitlines() if stat.exists() else []
    if len(lines) < 2:
        return {"successful": 0, "failed": -1, "exit": returncode}
    header, last = lines[0].split(";"), lines[-1].split(";")
    return {"successful": int(last[header.index("SuccessfulCall(C)")]),
            "failed": int(last[header.index("FailedCall(C)")]), "exit": returncode}


def writer_cpu(target: Target, t0: float, t1: float) -> dict[str, float]:
    """The CRM writer processes' CPU in a window (0 with [database] writer = thread: it is in the IVR's)."""
    window = [s for s in target.writer_cpu if t0 <= s[0] <= t1]
    if len(window) < 2 or window[-1][0] == window[0][0]:
        return {"writer_process_cpu_percent_of_one_core": 0.0}
    used = (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])
    return {"writer_process_cpu_percent_of_one_core": round(100 * used, 1)}


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


def write_report(path: Path, report: dict[str, object]) -> None:
    """The JSON report at `path` (its folder made if need be), the CRM's Chinese as is."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
