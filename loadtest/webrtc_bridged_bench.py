#!/usr/bin/env python3
"""N concurrent caller-agent talks whose agents answer in the browser (WebRTC), against N with plain phones.

    .venv/bin/python loadtest/webrtc_bridged_bench.py                             # 100 browser agents, then 100 plain
    .venv/bin/python loadtest/webrtc_bridged_bench.py --calls 10 --phases webrtc  # a quick look
    .venv/bin/python loadtest/webrtc_bridged_bench.py --calls 3 --talk-seconds 8 --phases webrtc --report r.json

The real IVR (run_ivr.py, started as loadtest/bench_common.py starts it, log level info) with
`--calls` agents `[6001]` …, and as many SIPp callers (loadtest/scenarios/talking_caller.xml,
espeak-ng speech; unknown numbers, so junior customers, reaching the junior agents as in
loadtest/bench_bridged.py) arriving `--rate` a second, each talking `--talk-seconds` after
choosing the service. A few callers (listening_caller.xml) send what they hear (the agent's
voice through the bridge) to an RTP sink, which measures its spacing. Two phases, each on a
fresh IVR:

1. `webrtc`: the agents are browser agents (`host = dynamic`) registered over the IVR's
   `[websocket]`. By default (`--agent-kind lean`) all of them live in ONE process,
   loadtest/webrtc_load_client.py: per agent SIP over the WebSocket, ICE checks as the
   controlling agent, a DTLS client handshake (pyOpenSSL) and SRTP (pylibsrtp) on one UDP
   socket, one 20 ms timer for every agent's tone frames. That costs a few percent of a core for
   a hundred, so the phase measures the IVR and not the clients, and the client process's CPU
   per leg is reported beside the IVR's. `--agent-kind aiortc` runs aiortc clients instead
   (tests/browser_agent.py, the e2e tests' independent browser), spread over
   `--agent-processes` worker processes (this script with --agent-worker, on uvloop); a hundred
   of those want about 1.75 cores, more than this 2-core machine leaves the IVR. Each agent is
   rung with the IVR's DTLS-SRTP offer, answers it, speaks a 1500 Hz tone and counts the frames
   it hears. The handshake times are the IVR's own (`webrtc_connected ... handshake_ms=` in
   its log, answer taken to SRTP keys), the clients' (their 200 OK sent to their SRTP keys, or
   to aiortc's "connected") beside them;
2. `plain`: the same with static agents answered by a pool of SIPp UASes
   (talking_agent_uas.xml, speech), as loadtest/bench_bridged.py runs them.

The agents' processes (the lean client or aiortc workers, SIPp UASes) run SCHED_IDLE: in the field they are on
other machines, here they take only the CPU the IVR (and SIPp's callers) leave.

It reports per phase the calls bridged (the CRM's `bridged` steps), failed calls, the RTP
spacing at the sink, the media clock's lateness over the whole phase, the IVR's CPU idle (the
agents registered, no call) and on the plateau (every call up), in microseconds of CPU per
call-second above idle; the agents' and the whole machine's CPU on the plateau, and how long
the IVR's loop thread waited for a CPU while runnable (the kernel's run-queue delay: lateness
with a long wait is the machine's, not the IVR's); a timeline every 2 s. The comparison
puts a WebRTC agent leg against a plain one: a plain bridged call is two plain legs and the
bridge, so a plain leg is taken as half a plain call, and a WebRTC leg as a WebRTC call less
a plain leg.

Writes loadtest/reports/webrtc-bridged-<N>-<time>.json (or --report PATH) and prints it. Exits
1 unless every phase bridged every call with no failed call and no traceback. Only 127.0.0.1
is used; every SIPp run and agent is bounded in calls and seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_bridged import agent_uas, render_speech, wait_uases  # loadtest/, beside this script (run by path)
from bench_common import (
    ROOT,
    SCENARIOS,
    RtpSink,
    Target,
    cpu_between,
    free_port,
    free_port_run,
    lateness,
    pct,
    proc_sample,
    sipp,
    start_target,
    write_report,
)

LOAD_CLIENT = ROOT / "loadtest" / "webrtc_load_client.py"
FIRST_AGENT = 6001
BROWSER_HZ = 1500.0
DESK = "https://desk.example.com"  # the page [websocket] origins allows; tests.browser_agent.WsPhone's default
HANDSHAKE = re.compile(r"webrtc_connected\b.*?handshake_ms=([\d.]+)")
LOUD = 300.0  # mean |sample| above which a frame the browser heard counts as sound (the caller's speech)
SETTLE_SECONDS = 4.0  # after every call is up: the last caller's menu keys, ringing and handshake
TARGETS = {"rtp_spacing_p99_ms": 5.0, "media_clock_lateness_p99_ms": 5.0, "media_clock_lateness_max_ms": 20.0}


# --- the browser agents' worker process ------------------------------------------------------


class _IvrAddress:
    """What tests.browser_agent's phone needs of the IVR: its SIP port (the REGISTER's URI), a log for errors."""

    def __init__(self, port: int) -> None:
        self.port = port

    def log(self) -> str:
        return "(the IVR's log: ivr.log in the bench's work folder)"


def idle_priority(pid: int = 0) -> None:
    """SCHED_IDLE for a process (0: this one) and the threads it starts from now on: it runs when nothing else wants
    the CPU. The agents' machines are not the IVR's; here they share its two cores. A niceness is not enough: a
    worker's many threads (aiortc's decoder per call, its encoders, the WebSockets') outweigh the IVR's loop thread."""
    os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))


def agent_worker(spec: dict[str, Any]) -> int:
    """Run spec["agents"] browser agents until each has taken one call and been hung up, or spec["seconds"].

    Prints "registered K" once every agent has tried to register (K made it), then writes
    one result per agent to spec["result"] (JSON) and exits.
    """
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import uvloop
    from aiortc import RTCPeerConnection

    from tests.browser_agent import ToneTrack, WsPhone, browser_answer, header, loopback_ice, register, reply

    idle_priority()  # before any thread starts, so they all inherit it
    loopback_ice()
    loop = uvloop.new_event_loop()  # the IVR's loop too; aiortc's per-packet work costs less CPU on it
    threading.Thread(target=loop.run_forever, daemon=True).start()
    ivr = _IvrAddress(spec["sip_port"])
    pending, registered, lock = [len(spec["agents"])], [0], threading.Lock()
    results: list[dict[str, Any]] = []

    def registration_done(ok: bool) -> None:
        with lock:
            pending[0] -= 1
            registered[0] += ok
            if pending[0] == 0:
                print(f"registered {registered[0]}", flush=True)

    async def answer(offer: str, result: dict[str, Any]) -> tuple[RTCPeerConnection, str, asyncio.Future[None]]:
        pc, sdp, frames = await browser_answer(offer, ToneTrack(BROWSER_HZ))

        @pc.on("connectionstatechange")
        def changed() -> None:
            if pc.connectionState == "connected" and "connected_at" not in result:
                result["connected_at"] = time.monotonic()
            elif pc.connectionState == "failed":
                result["error"] = "aiortc: connection failed"

        async def listen() -> None:  # drain what the browser hears: count it, and how much of it is sound
            while True:
                samples = (await frames.get()).to_ndarray()
                result["frames_heard"] += 1
                result["loud_frames"] += bool(np.abs(samples).mean() > LOUD)

        return pc, sdp, asyncio.ensure_future(listen())

    def agent(number: str) -> None:
        result: dict[str, Any] = {"agent": number, "registered": False, "frames_heard": 0, "loud_frames": 0}
        results.append(result)
        phone = pc = listener = None
        end = time.monotonic() + spec["seconds"]
        try:
            try:
                phone = WsPhone(ivr, spec["ws_port"], origin=DESK)
                contact = f"sip:{number}@{phone.host};transport=ws"
                _, status = register(phone, ivr, number, contact, password=f"pw{number}", wait=30)
                result["registered"] = status.startswith("SIP/2.0 200")
                if not result["registered"]:
                    result["error"] = f"REGISTER: {status}"
                    return
            finally:
                registration_done(result["registered"])
            while (left := end - time.monotonic()) > 0:
                got = phone.until(lambda t: not t.startswith("SIP/2.0"), seconds=left)  # the IVR's next request
                request = got[-1][1]
                method = request.split(" ", 1)[0]
                if method == "INVITE" and pc is None:
                    offer = request.split("\r\n\r\n", 1)[1]
                    pc, sdp, listener = asyncio.run_coroutine_threadsafe(answer(offer, result), loop).result(30)
                    phone.ws.send(reply(request, "200 OK", to_tag="browser", contact=contact, body=sdp))
                    result["answered_at"] = time.monotonic()
                elif method == "ACK":
                    result["acked"] = True
                elif method == "BYE":
                    phone.ws.send(reply(request, "200 OK", to_tag=None, contact=contact))
                    result["hung_up"] = True
                    return
                else:  # OPTIONS, a second INVITE: a browser that is busy says so
                    status = "200 OK" if method == "OPTIONS" else "486 Busy Here"
                    to_tag = None if ";tag=" in header(request, "To") else "browser"
                    phone.ws.send(reply(request, status, to_tag=to_tag, contact=contact))
        except Exception as exc:  # one agent's failure is a result, not the end of the others
            result["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        finally:
            if listener is not None:
                loop.call_soon_threadsafe(listener.cancel)
            if pc is not None:
                try:
                    asyncio.run_coroutine_threadsafe(pc.close(), loop).result(10)
                except Exception as exc:
                    result.setdefault("error", f"closing: {type(exc).__name__}: {exc}")
            if phone is not None:
                phone.close()
            if "connected_at" in result and "answered_at" in result:
                result["connect_ms"] = round(1000 * (result["connected_at"] - result["answered_at"]), 1)

    threads = [threading.Thread(target=agent, args=(number,), daemon=True) for number in spec["agents"]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(1.0, spec["seconds"] + 30))
    Path(spec["result"]).write_text(json.dumps(results), encoding="utf-8")
    return 0


# --- the benchmark ---------------------------------------------------------------------------


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


class Sampler:
    """Every 0.5 s, on the IVR's sampler's time base: the whole machine's CPU, the agents' processes' CPU and how
    long the IVR's event loop thread waited, runnable, for a CPU (/proc/PID/schedstat: the kernel's run-queue delay).
    """

    def __init__(self, target: Target) -> None:
        self.ivr_pid = target.workers[0].proc.pid
        deadline = time.monotonic() + 2.0
        seen = len(target.samples)
        while len(target.samples) == seen and time.monotonic() < deadline:
            time.sleep(0.01)
        self.origin = time.monotonic() - (target.samples[-1][0] if target.samples else 0.0)
        self.pids: list[int] = []
        # (t, machine busy, machine total, agents' CPU s, the IVR's main thread's run-queue wait s)
        self.samples: list[tuple[float, int, int, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> float:
        return time.monotonic() - self.origin

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            busy, total = machine_jiffies()
            used = 0.0
            for pid in list(self.pids):
                try:
                    used += proc_sample(pid)[0]
                except (OSError, ValueError):
                    continue
            try:
                waited = int(Path(f"/proc/{self.ivr_pid}/schedstat").read_text().split()[1]) / 1e9
            except (OSError, ValueError, IndexError):
                waited = self.samples[-1][4] if self.samples else 0.0
            self.samples.append((self.now(), busy, total, used, waited))

    def between(self, t0: float, t1: float) -> dict[str, float]:
        window = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(window) < 2:
            return {}
        (a, busy0, total0, used0, wait0), (b, busy1, total1, used1, wait1) = window[0], window[-1]
        return {"machine_busy_percent_of_all_cores": round(100 * (busy1 - busy0) / max(1, total1 - total0), 1),
                "agents_cpu_percent_of_one_core": round(100 * (used1 - used0) / (b - a), 1),
                "ivr_loop_runqueue_wait_ms_per_second": round(1000 * (wait1 - wait0) / (b - a), 1)}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def agents_conf(opts: argparse.Namespace, kind: str, ports: list[int]) -> str:
    """The agents' sections: browser agents (`host = dynamic`, over the WebSocket) or static ones on `ports`."""
    return "".join(
        f"[{FIRST_AGENT + i}]\ntype = agent\nseat_group = junior\nsecret = pw{FIRST_AGENT + i}\n"
        f"host = {'dynamic' if kind == 'webrtc' else f'127.0.0.1:{ports[i % len(ports)]}'}\n"
        for i in range(opts.calls))


def start_browser_agents(work: Path, opts: argparse.Namespace, sip_port: int, ws_port: int,
                         seconds: float) -> list[tuple[subprocess.Popen[str], Path]]:
    """The agents' processes: the lean client (one), or `--agent-processes` aiortc workers sharing the agents.

    Returns once every agent has tried to register."""
    numbers = [str(FIRST_AGENT + i) for i in range(opts.calls)]
    count = 1 if opts.agent_kind == "lean" else max(1, min(opts.agent_processes, len(numbers)))
    workers = []
    for w in range(count):
        spec = {"agents": numbers[w::count], "sip_port": sip_port, "ws_port": ws_port, "seconds": seconds,
                "result": str(work / f"agents-{w}.json")}
        command = ([str(LOAD_CLIENT), "--spec"] if opts.agent_kind == "lean" else [__file__, "--agent-worker"])
        workers.append((subprocess.Popen(
            [sys.executable, *command, json.dumps(spec)], cwd=work, text=True,
            stdout=subprocess.PIPE, stderr=open(work / f"agents-{w}.err", "w")), Path(spec["result"])))  # noqa: SIM115
    registered = 0
    for proc, _ in workers:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "registered K", or nothing when the worker died
        registered += int(line.split()[1]) if line.startswith("registered ") else 0
    if registered != opts.calls:
        errors = "".join((work / f"agents-{w}.err").read_text()[-1500:] for w in range(count))
        raise SystemExit(f"{registered} of {opts.calls} browser agents registered:\n{errors}")
    return workers


def handshakes(log: str) -> dict[str, Any]:
    """The IVR's DTLS handshake times (answer taken to SRTP keys), one per connected browser leg."""
    ms = [float(m) for m in HANDSHAKE.findall(log)]
    return {"legs_connected": len(ms), "legs_failed": log.count("webrtc_failed"),
            "handshake_ms_p50": round(pct(ms, 0.5), 1), "handshake_ms_p99": round(pct(ms, 0.99), 1),
            "handshake_ms_max": round(max(ms, default=0.0), 1)}


def browser_results(workers: list[tuple[subprocess.Popen[str], Path]], kind: str) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    for proc, path in workers:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        if path.exists():
            results += json.loads(path.read_text(encoding="utf-8"))
    connect = [r["connect_ms"] for r in results if "connect_ms" in r]
    heard = [r["frames_heard"] for r in results if r.get("hung_up")]
    sent = [r["frames_sent"] for r in results if r.get("hung_up") and "frames_sent" in r]  # the lean client's
    return {
        "client": kind,
        "processes": len(workers),
        "agents": len(results),
        "hung_up_after_a_call": sum(1 for r in results if r.get("hung_up")),
        "failed": sum(1 for r in results if "error" in r or not r.get("hung_up")),
        "errors": sorted({r["error"] for r in results if "error" in r})[:5],
        "client_connect_ms_p50": round(pct(connect, 0.5), 1), "client_connect_ms_p99": round(pct(connect, 0.99), 1),
        "frames_heard_min": min(heard, default=0),
        **({"frames_sent_min": min(sent, default=0)} if kind == "lean" else {}),
        "loud_share": round(sum(r["loud_frames"] for r in results)
                            / max(1, sum(r["frames_heard"] for r in results)), 3),  # the caller's speech, not silence
    }


def run_phase(kind: str, opts: argparse.Namespace) -> dict[str, Any]:
    """One phase on a fresh IVR: N callers reach N browser agents (`webrtc`) or N SIPp agents (`plain`)."""
    n = opts.calls
    work = Path(tempfile.mkdtemp(prefix=f"ivr-bench-webrtc-{kind}-"))
    render_speech(work)
    talk_s = opts.talk_seconds or max(30.0, n / opts.rate + 30)
    timeout = talk_s + n / opts.rate + 60
    sinks = min(5, max(1, n // 5))  # listening callers: what they hear goes to the sink
    pool = max(1, min(opts.agent_pool, n))
    pool_ports = [free_port() for _ in range(pool)]
    ws_port = free_port()
    websocket = (f"[websocket]\nenabled = yes\nport = {ws_port}\norigins = {DESK}\nping_seconds = 20\n"
                 if kind == "webrtc" else "")
    opts.extra_conf = (f"[queues]\nwrap_up_seconds = 0\n[recording]\nenabled = no\n{websocket}"
                       f"{agents_conf(opts, kind, pool_ports)}")
    opts.workers, opts.desk, opts.smoke, opts.log_level = 1, 0, False, "info"
    opts.start_seconds = 120 + n  # a first start renders each agent's "您好,6001号客服为您服务"
    opts.max_calls, opts.capacity, opts.writer = max(1000, 2 * n), 250, "thread"
    load_start = os.getloadavg()
    target = start_target(work, opts)
    ivr = target.workers[0]
    sampler = Sampler(target)
    sink = RtpSink()
    browsers: list[tuple[subprocess.Popen[str], Path]] = []
    uases: list[tuple[subprocess.Popen[bytes], Path]] = []
    report: dict[str, Any] = {"work": str(work)}
    try:
        if kind == "webrtc":
            browsers = start_browser_agents(work, opts, ivr.port, ws_port, timeout + 30)
            sampler.pids = [proc.pid for proc, _ in browsers]
        else:
            media_base = free_port_run(8 * len(pool_ports))
            for i, port in enumerate(pool_ports):
                calls = sum(1 for j in range(n) if j % pool == i)
                uases.append(agent_uas(work, "talking_agent_uas.xml", port, media_base + 8 * i, calls, timeout, []))
            sampler.pids = [proc.pid for proc, _ in uases]
            time.sleep(1.5)
        for pid in sampler.pids:  # the agents' machines are not the IVR's: here they yield the CPU to it
            idle_priority(pid)
        idle0 = sampler.now()
        time.sleep(3.0)  # idle: the agents registered (or listening), no call yet
        idle1 = t0 = sampler.now()
        sink.take()
        counts: dict[str, dict[str, int]] = {}  # per SIPp run: its final counts and how many calls it was to make

        def callers(name: str, scenario: str, count: int, extra: list[str]) -> None:
            counts[name] = sipp(work, f"127.0.0.1:{ivr.port}", [
                "-sf", str(SCENARIOS / scenario), "-inf", str(SCENARIOS / "callers.csv"), "-s", "95000",
                "-m", str(count), "-r", f"{opts.rate * count / n:.3f}", "-l", str(count),
                "-d", str(int(talk_s * 1000)), "-mi", "127.0.0.1", *extra], timeout=timeout) | {"calls": count}

        runs = [threading.Thread(target=callers, args=("talking", "talking_caller.xml", n - sinks, [])),
                threading.Thread(target=callers, args=("listening", "listening_caller.xml", sinks,
                                                       ["-key", "sink_port", str(sink.port)]))]
        for run in runs if n > sinks else runs[1:]:
            run.start()
        for run in runs if n > sinks else runs[1:]:
            run.join()
        t1 = sampler.now()
        spacing = sink.take()
        if kind == "webrtc":
            agents = browser_results(browsers, opts.agent_kind)
        else:
            agents_done = wait_uases(uases)
            agents = {"agents": n, "uas_processes": pool, "failed": sum(max(0, a["failed"]) for a in agents_done)}
        time.sleep(2.0)  # the last CRM rows
        m = target.metrics()
        step = [s for s in target.samples if t0 <= s[0] <= t1]
        peak = max((s[3] for s in step), default=0)
        up = [s[0] for s in step if s[3] >= peak]
        plateau = (up[0] + SETTLE_SECONDS, up[-1]) if up and up[-1] - up[0] > SETTLE_SECONDS + 2 else (
            (up[0], up[-1]) if up else (t0, t1))
        idle_cpu = cpu_between(target.samples, idle0, idle1)
        plateau_cpu = cpu_between(target.samples, *plateau)
        conn = sqlite3.connect(ivr.db)
        try:
            bridged = conn.execute("SELECT count(*) FROM call_events WHERE kind = 'bridged'").fetchone()[0]
            completed = conn.execute("SELECT count(*) FROM calls "
                                     "WHERE outcome = 'completed' AND talk_s > 0").fetchone()[0]
        finally:
            conn.close()
        failed_callers = sum(c["calls"] - c["successful"] for c in counts.values())  # failed, or never ended
        report.update({
            "calls": n,
            "calls_bridged": bridged,
            "completed_calls_in_crm": completed,
            "failed_calls": {"callers": failed_callers, "agents": agents["failed"]},
            "callers": counts,
            "agents": agents,
            **(handshakes((ivr.work / "ivr.log").read_text(encoding="utf-8", errors="replace"))
               if kind == "webrtc" else {}),
            "peak_concurrent_calls": peak,
            "plateau_seconds": round(plateau[1] - plateau[0], 1),
            "ivr_cpu_percent_of_one_core_idle": idle_cpu,
            "ivr_cpu_percent_of_one_core_plateau": plateau_cpu,
            "ivr_cpu_us_per_call_second_above_idle": round(1e4 * (plateau_cpu - idle_cpu) / max(1, peak), 1),
            **(machine := sampler.between(*plateau)),
            "agents_cpu_us_per_call_second": round(
                1e4 * machine.get("agents_cpu_percent_of_one_core", 0.0) / max(1, peak), 1),
            "rss_peak_mb": round(max((s[2] for s in step), default=0) / 2**20, 1),
            **lateness(target, t0, t1, m),
            "rtp_sink": spacing,
            "loadavg_at_start": [round(x, 2) for x in load_start],
            "timeline": timeline(target, sampler, t0, t1),
        })
    finally:
        sink.close()
        sampler.stop()
        for proc in [p for p, _ in browsers] + [p for p, _ in uases]:
            if proc.poll() is None:
                proc.kill()
        report["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        report["ivr_exit"] = max(target.stop(), key=abs)
        report["ivr_log_tracebacks"] = target.tracebacks()
    return report


def timeline(target: Target, sampler: Sampler, t0: float, t1: float) -> list[list[float]]:
    """Every 2 s of the phase: [t, active calls, IVR CPU %, machine busy %, the IVR loop's run-queue wait (ms a
    second), the clock's worst lateness so far (ms)].

    The lateness is the status file's max over the clock's last 60 s: a jump dates a stall of the IVR's process.
    """
    rows = []
    for t in range(int(t0), int(t1) + 1, 2):
        calls = next((s[3] for s in target.samples if s[0] >= t), 0)
        late = next((st.get("lateness_ms_max", 0.0) for at, st in target.pacer if at >= t), 0.0)
        machine = sampler.between(t, t + 2)
        rows.append([t - int(t0), calls, cpu_between(target.samples, t, t + 2),
                     machine.get("machine_busy_percent_of_all_cores", 0.0),
                     machine.get("ivr_loop_runqueue_wait_ms_per_second", 0.0), late])
    return rows


def healthy(phase: dict[str, Any]) -> bool:
    return (phase.get("failed_calls") == {"callers": 0, "agents": 0} and phase.get("calls_bridged") == phase["calls"]
            and phase.get("ivr_log_tracebacks") == 0
            and phase.get("legs_connected", phase["calls"]) == phase["calls"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=100, help="concurrent caller-agent talks (and agents)")
    p.add_argument("--phases", default="webrtc,plain", help="webrtc, plain or both (comma-separated, run in turn)")
    p.add_argument("--rate", type=float, default=5.0, help="new callers a second")
    p.add_argument("--talk-seconds", type=float, default=0,
                   help="each caller's time after the menu key (default: the ramp + 30 s, at least 30)")
    p.add_argument("--agent-kind", choices=("lean", "aiortc"), default="lean",
                   help="webrtc phase: the browser agents are the lean client (one process, loadtest/"
                        "webrtc_load_client.py) or aiortc clients (tests/browser_agent.py) in worker processes")
    p.add_argument("--agent-processes", type=int, default=0,
                   help="--agent-kind aiortc: worker processes the agents are spread over "
                        "(default: one per 20 agents, at most 8)")
    p.add_argument("--agent-pool", type=int, default=10, help="plain phase: SIPp UAS processes the agents share")
    p.add_argument("--rtp-base", type=int, default=30000, help="the IVR's RTP range starts here (10000 ports)")
    p.add_argument("--report", type=Path, help="JSON path (default loadtest/reports/webrtc-bridged-<N>-<time>.json)")
    p.add_argument("--agent-worker", metavar="JSON", help=argparse.SUPPRESS)  # a worker process of browser agents
    opts = p.parse_args()
    if opts.agent_worker:
        return agent_worker(json.loads(opts.agent_worker))
    phases = [x.strip() for x in opts.phases.split(",") if x.strip()]
    if not phases or any(x not in ("webrtc", "plain") for x in phases):
        p.error("--phases takes webrtc, plain or webrtc,plain")
    if not 1 <= opts.calls <= 1000:
        p.error("--calls is 1..1000")
    if not 0.1 <= opts.rate <= 100:
        p.error("--rate is 0.1..100 new callers a second")
    opts.agent_processes = opts.agent_processes or min(8, math.ceil(opts.calls / 20))
    # stopped (SIGTERM, a CI timeout): still stop the IVR, SIPp and the agents in run_phase's finally block
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    report: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "config": {"calls": opts.calls, "rate": opts.rate, "agent_kind": opts.agent_kind,
                   "talk_seconds": opts.talk_seconds or max(30.0, opts.calls / opts.rate + 30),
                   "agent_processes": opts.agent_processes if opts.agent_kind == "aiortc" else 1,
                   "agent_pool": opts.agent_pool, "phases": phases},
        "targets": TARGETS,
    }
    for kind in phases:
        report[kind] = run_phase(kind, opts)
    if "webrtc" in report and "plain" in report:
        w, pl = report["webrtc"], report["plain"]
        per_call_w, per_call_p = w["ivr_cpu_us_per_call_second_above_idle"], pl["ivr_cpu_us_per_call_second_above_idle"]
        report["comparison"] = {
            "ivr_cpu_us_per_call_second": {"webrtc_agent": per_call_w, "plain_agent": per_call_p},
            "ivr_cpu_us_per_leg_second": {"plain_leg": round(per_call_p / 2, 1),
                                          "webrtc_leg": round(per_call_w - per_call_p / 2, 1)},
            "webrtc_leg_over_plain_leg": round((per_call_w - per_call_p / 2) / max(1e-9, per_call_p / 2), 2),
        }
    for kind in phases:
        phase = report[kind]
        phase["targets_met"] = {
            "rtp_spacing_p99_ms": phase.get("rtp_sink", {}).get("spacing_deviation_ms_p99", 1e9)
            <= TARGETS["rtp_spacing_p99_ms"],
            "media_clock_lateness_p99_ms": phase.get("media_clock_lateness_ms_p99", 1e9)
            <= TARGETS["media_clock_lateness_p99_ms"],
            "media_clock_lateness_max_ms": phase.get("media_clock_lateness_ms_max", 1e9)
            <= TARGETS["media_clock_lateness_max_ms"],
        }
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = opts.report or ROOT / "loadtest" / "reports" / f"webrtc-bridged-{opts.calls}-{stamp}.json"
    write_report(path, report)
    print(json.dumps(report, indent=2, ensure_ascii=False))
    print(f"report: {path}")
    return 0 if all(healthy(report[kind]) for kind in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
