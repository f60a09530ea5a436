"""`loadtest/bench.py --bridged N`: N concurrent caller-agent talks, recorded or not.

    .venv/bin/python loadtest/bench.py --bridged 300 --recording on     # 300 recorded caller-agent talks

Instead of the media and signalling steps it runs one phase: N callers
(loadtest/scenarios/talking_caller.xml, speech from espeak-ng) reach N static agents
(`[6001]` … with `host = 127.0.0.1:port`) answered by a pool of SIPp UASes
(talking_agent_uas.xml, `--agent-pool` processes, speech too; a few listening_agent_uas.xml
agents send what they hear to the RTP sink), talk for `--talk-seconds` and hang up. With
`--recording on` (`--format`) every talk is recorded; `off` is the baseline. It reports the
RTP spacing p99 of the bridged audio, the media clock's lateness, failed calls, CPU, the
recording writer's queue, and MB written per recorded hour.

Writes loadtest/reports/bench-bridged-<N>-<on|off>-<time>.json (or --report PATH; JSON only, no chart).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from bench_common import (  # loadtest/, beside bench.py (run by path)
    ROOT,
    SCENARIOS,
    RtpSink,
    cpu_between,
    free_port,
    free_port_run,
    lateness,
    sipp,
    sipp_counts,
    start_target,
    write_report,
)

CALLER_SPEECH = "The quick brown fox jumps over the lazy dog. My account number is four five six seven."
AGENT_SPEECH = "Good morning, this is the service desk. Your order was shipped on Wednesday by express."


def render_speech(work: Path) -> None:
    """caller_speech.wav and agent_speech.wav (8 kHz A-law) in SIPp's working directory, made now, never kept."""
    for name, text, voice in (("caller_speech", CALLER_SPEECH, "en"), ("agent_speech", AGENT_SPEECH, "en-us")):
        raw = work / f"{name}-raw.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text], check=True)
        subprocess.run(["sox", str(raw), "-r", "8000", "-c", "1", "-e", "a-law", str(work / f"{name}.wav")], check=True)


def agent_uas(work: Path, scenario: str, port: int, media_port: int, calls: int, timeout: float,
              extra: list[str]) -> tuple[subprocess.Popen[bytes], Path]:
    """One SIPp UAS of the agents' pool on `port` taking `calls` calls in turn; the process and its -trace_stat file.

    Its media ports (audio, video: -mp and -mp + 2) start at `media_port`, from `free_port_run`: below the
    ephemeral range the SIP ports come from and the IVR's RTP range (a video port landing on another UAS's SIP
    port kills that UAS), and apart from any other benchmark's running beside this one.
    """
    stat = work / f"uas-{port}.csv"
    return subprocess.Popen(
        ["sipp", "-sf", str(SCENARIOS / scenario), "-i", "127.0.0.1", "-p", str(port), "-mi", "127.0.0.1",
         "-mp", str(media_port), "-m", str(calls), "-nostdin", "-timeout", f"{int(timeout)}s", "-trace_stat",
         "-stf", str(stat), "-fd", "1", *extra],
        cwd=work, stdout=subprocess.DEVNULL, stderr=open(work / f"uas-{port}.err", "w")), stat  # noqa: SIM115


def wait_uases(uases: list[tuple[subprocess.Popen[bytes], Path]]) -> list[dict[str, int]]:
    """Each agent UAS's final counts, once it has ended (killed after 30 s more)."""
    done = []
    for proc, stat in uases:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        done.append(sipp_counts(stat, proc.returncode))
    return done


def run(opts: argparse.Namespace) -> int:
    """`--bridged N`: N concurrent caller-agent talks, recorded (`--recording on`) or not; see the docstring."""
    n, on = opts.bridged, opts.recording == "on"
    work = Path(tempfile.mkdtemp(prefix="ivr-bench-bridged-"))
    render_speech(work)
    sinks = min(5, max(1, n // 5))  # listening agents: their RTP goes to the sink
    pool = max(1, min(opts.agent_pool, n - sinks))
    talk_s = opts.talk_seconds or max(30.0, n / opts.bridged_rate + 30)
    pool_ports, sink_agent_port = [free_port() for _ in range(pool)], free_port()
    numbers = [str(6001 + i) for i in range(n)]
    where = {number: pool_ports[i % pool] if i < n - sinks else sink_agent_port for i, number in enumerate(numbers)}
    agents = "".join(f"[{number}]\ntype = agent\nseat_group = junior\nhost = 127.0.0.1:{port}\nsecret = pw{number}\n"
                     for number, port in where.items())
    # the listening agents send the IVR no RTP at all: a talk past [media] agent_media_timeout would end early
    opts.extra_conf = (f"[media]\nagent_media_timeout = 0\n"
                       f"[queues]\nwrap_up_seconds = 0\n[recording]\nenabled = {'yes' if on else 'no'}\n"
                       f"directory = {work / 'recordings'}\nformat = {opts.format}\n{agents}")
    opts.workers, opts.desk, opts.smoke = 1, 0, False
    opts.start_seconds = 120 + n  # a first start renders each agent's "您好,6001号客服为您服务"
    ivr = start_target(work, opts)
    sink = RtpSink()
    uases: list[tuple[subprocess.Popen[bytes], Path]] = []
    depth: list[float] = []
    stop = threading.Event()

    def sample_queue() -> None:
        while not stop.wait(0.5):
            try:
                depth.append(ivr.metrics().get("hotline_recording_queue_depth", 0.0))
            except OSError:
                continue

    timeout = int(talk_s + n / opts.bridged_rate + 120)
    report: dict[str, object] = {}
    try:
        media_base = free_port_run(8 * (len(pool_ports) + 1))  # the UASes' media ports, 8 each
        for i, port in enumerate([*pool_ports, sink_agent_port]):
            calls = sum(1 for p in where.values() if p == port)
            scenario = "listening_agent_uas.xml" if port == sink_agent_port else "talking_agent_uas.xml"
            extra = ["-key", "sink_port", str(sink.port)] if port == sink_agent_port else []
            uases.append(agent_uas(work, scenario, port, media_base + 8 * i, calls, timeout, extra))
        time.sleep(1.5)
        threading.Thread(target=sample_queue, daemon=True).start()
        before = ivr.metrics()
        t0 = ivr.samples[-1][0]
        sink.take()
        callers = sipp(work, f"127.0.0.1:{ivr.port}", [
            "-sf", str(SCENARIOS / "talking_caller.xml"), "-inf", str(SCENARIOS / "callers.csv"), "-s", "95000",
            "-m", str(n), "-r", str(opts.bridged_rate), "-l", str(n), "-d", str(int(talk_s * 1000)),
            "-mi", "127.0.0.1"], timeout=timeout)
        agents_done = wait_uases(uases)
        t1 = ivr.samples[-1][0]
        jitter = sink.take()
        time.sleep(2.0)  # the last files and CRM rows
        stop.set()
        m = ivr.metrics()
        step = [x for x in ivr.samples if t0 <= x[0] <= t1]
        peak = max((x[3] for x in step), default=0)
        busy = [x for x in step if x[3] >= 0.9 * max(1, peak)]
        conn = sqlite3.connect(ivr.workers[0].db)
        try:
            completed = conn.execute("SELECT count(*) FROM calls "
                                     "WHERE outcome = 'completed' AND talk_s > 0").fetchone()[0]
            rec = dict(conn.execute("SELECT state, count(*) FROM recordings GROUP BY state").fetchall())
            recorded_s = conn.execute("SELECT coalesce(sum(duration_s), 0) FROM recordings "
                                      "WHERE state = 'complete'").fetchone()[0]
        finally:
            conn.close()
        files = [f for f in (work / "recordings").rglob("*") if f.is_file()] if on else []
        size = sum(f.stat().st_size for f in files)

        def delta(name: str) -> float:
            return m.get(name, 0.0) - before.get(name, 0.0)

        fmt = f'{{format="{opts.format}"}}'
        delay_n = delta("hotline_recording_queue_delay_seconds_count")
        report = {
            "machine": {"cores": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
            "config": {"bridged": n, "recording": opts.recording, "format": opts.format, "talk_seconds": talk_s,
                       "rate": opts.bridged_rate, "agent_uas_processes": pool + 1, "listening_agents": sinks},
            "peak_concurrent_calls": peak,
            "failed_calls": {"callers": callers["failed"], "agents": sum(a["failed"] for a in agents_done)},
            "completed_calls_in_crm": completed,
            "recordings_by_state": rec,
            "cpu_percent_of_one_core_at_peak": cpu_between(step, busy[0][0], busy[-1][0]) if len(busy) > 1 else 0.0,
            "rss_peak_mb": round(max((x[2] for x in step), default=0) / 2**20, 1),
            **lateness(ivr, t0, t1, m),
            "rtp_sink": jitter,
            "recording_queue": {"depth_seconds_max_sampled": max(depth, default=0.0),
                                "delay_ms_mean": round(1000 * delta("hotline_recording_queue_delay_seconds_sum")
                                                       / max(1.0, delay_n), 3),
                                "delay_under_20ms_share": round(delta(
                                    'hotline_recording_queue_delay_seconds_bucket{le="0.02"}') / max(1.0, delay_n), 4),
                                "dropped_seconds": delta('hotline_recording_errors_total{kind="queue_full"}')},
            "written": {"files": len(files), "mb": round(size / 1e6, 1), "recorded_hours": round(recorded_s / 3600, 3),
                        "mb_per_recorded_hour": round(size / 1e6 / max(recorded_s / 3600, 1e-9), 1) if files else 0,
                        "mb_per_recorded_hour_from_metrics": round(
                            delta(f"hotline_recording_bytes_total{fmt}") / 1e6
                            / max(delta(f"hotline_recording_seconds_total{fmt}") / 3600, 1e-9), 1) if on else 0},
        }
    finally:
        stop.set()
        sink.close()
        for proc, _ in uases:
            if proc.poll() is None:
                proc.kill()
        report["ivr_exit"] = max(ivr.stop(), key=abs)
        report["ivr_log_tracebacks"] = ivr.tracebacks()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = opts.report or ROOT / "loadtest" / "reports" / f"bench-bridged-{n}-{opts.recording}-{stamp}.json"
    write_report(path, report)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    print(f"report: {path}")
    failed = report.get("failed_calls", {"callers": -1})
    healthy = (failed == {"callers": 0, "agents": 0} and report.get("completed_calls_in_crm") == n
               and (not on or report.get("recordings_by_state") == {"complete": n})
               and report["ivr_log_tracebacks"] == 0)
    shutil.rmtree(work / "recordings", ignore_errors=True)  # GBs at 300 calls; the report keeps the sizes
    return 0 if healthy else 1
