#!/usr/bin/env python3
"""The agent desk under load: hundreds of agents' event streams and wallboards while the IVR carries calls with media.

    .venv/bin/python loadtest/desk_load.py                      # 300 agents, 10 wallboards, 500 calls, 60 s a phase
    .venv/bin/python loadtest/desk_load.py --agents 20 --wallboards 2 --calls 8 --routed 4 --seconds 15   # smoke

One IVR (run_ivr.py; SQLite CRM, recording off) and ONE desk process
(`python -m desk`) on the same sip.conf, which has `--agents` static agents
([6001] …, seat group junior, `host` = one of `--agent-pool` SIPp UASes
running loadtest/scenarios/talking_agent_uas.xml: they answer after 0.5 s
of ringing and speak until the caller hangs up). The load is `--calls`
concurrent callers with media: `--routed` of them press 9 and 1
(talking_caller.xml, speaking), are queued and ring an agent, talk for
`--talk-seconds` and hang up, and SIPp places the next; the rest are silent
callers (silent_caller.xml: greeting, prompts, VAD listening). Each routed
call rings one agent, so pops keep coming for the whole phase.

Two phases, each `--seconds` of steady load after the ramp (`--rate` calls/s),
each with a fresh IVR process (its media clock's statistics then belong to
that phase alone; the CRM, the desk and the agents' sessions stay):

1. baseline: `--idle-seconds` with no calls, then the load; no desk stream
   is open;
2. streams: the agents (logged in with their password before the first
   phase: the desk's real login) load their desk page and open its event
   stream (`/desk/events?after=<the page's last event>`, as desk.js does) —
   one agent's first, then the others', then `--wallboards` supervisors
   follow `/wallboard/events`, `--idle-seconds` with no calls after each
   step — then the same load.

Measured:

- pop latency: from the `at` of the CRM's `agent_rung` call event (the
  IVR's time of sending the agent leg's INVITE: the moment that phone starts
  ringing, the row the desk's watcher pops from) to the moment that agent's
  stream delivered the pop (its `id:` is the event's id): p50/p99/max, and
  rings with no pop, pops to the wrong agent;
- the CRM statements a second the desk process sent (the desk's own
  `/metrics`, `desk_crm_statements_total`), in every phase: with one watcher
  for all pages, 300 open streams must not multiply them;
- the IVR's media clock lateness (p99, max; the status file's `pacer`,
  sampled every 0.5 s as bench.py does) and SIPp's failed calls, baseline
  against streams; the desk's and the IVR's CPU;
- the wallboards' updates and longest gap.

Prints the figures and writes loadtest/reports/desk-load-<time>.json (or
--report PATH). Loopback only; every SIPp run is bounded in calls and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from bench_common import (  # loadtest/, beside this script (run by path)
    free_port,
    free_port_run,
    free_sip_port,
    pct,
    proc_sample,
)

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "loadtest" / "scenarios"
FIRST_AGENT = 6001
SUPERVISOR, SUPERVISOR_PW = "load-supervisor", "load-supervisor-pw"
CALLER_SPEECH = "My card was charged twice for the same order last Tuesday, could you look into it please."
AGENT_SPEECH = "Good morning, this is the service desk. Let me look at your account for a moment."


def cpu_seconds(pid: int) -> float:
    return proc_sample(pid)[0]


def agent_numbers(n: int) -> list[str]:
    return [str(FIRST_AGENT + i) for i in range(n)]


def agent_password(number: str) -> str:
    return f"desk-load-{number}"  # the SIP secret: the desk seeds the agent's account with it (8+ characters)


# --- the processes under test ------------------------------------------------------------


@dataclass
class Setup:
    work: Path
    conf: Path
    sip_port: int
    metrics_port: int
    desk_port: int
    pool_ports: list[int]
    db: Path
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)  # every process started here, to stop
    phones: list[subprocess.Popen[Any]] = field(default_factory=list)  # the agents' SIPp UASes (in procs too)

    @property
    def desk_url(self) -> str:
        return f"http://127.0.0.1:{self.desk_port}"


def write_conf(work: Path, opts: argparse.Namespace) -> Setup:
    setup = Setup(work, work / "sip.conf", free_sip_port(), free_port(socket.SOCK_STREAM),
                  free_port(socket.SOCK_STREAM), [free_port() for _ in range(opts.agent_pool)], work / "crm.db")
    agents = "".join(
        f"[{number}]\ntype = agent\nseat_group = junior\nhost = 127.0.0.1:{setup.pool_ports[i % opts.agent_pool]}\n"
        f"secret = {agent_password(number)}\n" for i, number in enumerate(agent_numbers(opts.agents)))
    rtp_max = min(65535, opts.rtp_base + max(200, 4 * (opts.calls + opts.routed)))  # a caller's and an agent's legs
    setup.conf.write_text(
        f"[general]\nbind = 127.0.0.1\nport = {setup.sip_port}\nring_seconds = 0\nnumbers = 95000\n"
        f"rtp_port_min = {opts.rtp_base}\nrtp_port_max = {rtp_max}\nmax_calls = {opts.calls + 200}\n"
        f"status_file = {work / 'status.json'}\n"
        f"[limits]\ntrusted = 127.0.0.1\nmax_invites_per_second = 300\n"
        f"[metrics]\nport = {setup.metrics_port}\n"
        f"[prompts]\ncache_dir = {ROOT / 'var' / 'prompts'}\n"
        f"[database]\nurl = sqlite:///{setup.db}\noutbox_dir = {work / 'outbox'}\n"
        f"[log]\nlevel = warning\n"
        f"[queues]\nwrap_up_seconds = 0\n"
        f"[recording]\nenabled = no\ndirectory = {work / 'recordings'}\n"
        # the agents' logins all come from 127.0.0.1: the address may log in 4 x 1000 times a minute
        f"[desk]\nport = {setup.desk_port}\ncookie_secure = no\nsecret_key = {os.urandom(24).hex()}\n"
        f"login_attempts_per_minute = 1000\n"
        f"{agents}",
        encoding="utf-8")
    return setup


def render_speech(work: Path) -> None:
    """caller_speech.wav and agent_speech.wav (8 kHz A-law) in SIPp's working directory, made now, never kept."""
    for name, text, voice in (("caller_speech", CALLER_SPEECH, "en"), ("agent_speech", AGENT_SPEECH, "en-us")):
        raw = work / f"{name}-raw.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", str(raw), text], check=True)
        subprocess.run(["sox", str(raw), "-r", "8000", "-c", "1", "-e", "a-law", str(work / f"{name}.wav")],
                       check=True)


def start_ivr(setup: Setup, timeout: float) -> subprocess.Popen[str]:
    log = open(setup.work / "ivr.log", "a")  # noqa: SIM115 (the IVR's, closed when this process exits)
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_ivr.py"), "--config", str(setup.conf)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=log, text=True)
    setup.procs.append(proc)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout  # a first start renders each agent's greeting
    while True:
        line = proc.stdout.readline()
        if "ready on" in line:
            return proc
        if (not line and proc.poll() is not None) or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"the IVR did not start:\n{(setup.work / 'ivr.log').read_text()[-3000:]}")


def stop_ivr(proc: subprocess.Popen[str]) -> int:
    """Drain, then skip the wait (a second SIGTERM): calls still up are ended with a BYE."""
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def start_desk(setup: Setup, timeout: float, nice: int = 0) -> subprocess.Popen[bytes]:
    subprocess.run([sys.executable, "-m", "desk", "--config", str(setup.conf), "add-supervisor", SUPERVISOR],
                   input=f"{SUPERVISOR_PW}\n".encode(), cwd=ROOT, check=True, capture_output=True)
    log = open(setup.work / "desk.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([*(["nice", "-n", str(nice)] if nice else []),  # nice execs: the PID stays the desk's
                             sys.executable, "-m", "desk", "--config", str(setup.conf)], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    setup.procs.append(proc)
    deadline = time.monotonic() + timeout  # its first start seeds each agent's account (an argon2 hash each)
    while True:
        try:
            urllib.request.urlopen(f"{setup.desk_url}/login", timeout=2).read()
            return proc
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the desk did not start:\n{(setup.work / 'desk.log').read_text()[-3000:]}") from None
            time.sleep(0.5)


def start_agent_pool(setup: Setup, timeout: float, calls: int) -> None:
    """The agents' phones: SIPp UASes answering and speaking, each for the agents whose `host` is its port."""
    media_base = free_port_run(8 * len(setup.pool_ports))  # below the ephemeral range the SIP ports come from
    for i, port in enumerate(setup.pool_ports):
        setup.phones.append(subprocess.Popen(
            ["sipp", "-sf", str(SCENARIOS / "talking_agent_uas.xml"), "-i", "127.0.0.1", "-p", str(port),
             "-mi", "127.0.0.1", "-mp", str(media_base + 8 * i), "-m", str(calls), "-nostdin",
             "-timeout", f"{int(timeout)}s", "-trace_stat", "-stf", str(setup.work / f"agents-{port}.csv"),
             "-fd", "1"],
            cwd=setup.work, stdout=subprocess.DEVNULL,
            stderr=open(setup.work / f"agents-{port}.err", "w")))  # noqa: SIM115
    setup.procs += setup.phones
    time.sleep(1.0)
    dead = [p for p in setup.phones if p.poll() is not None]
    if dead:
        raise SystemExit("an agent UAS (SIPp) did not start: " + (setup.work / f"agents-{setup.pool_ports[0]}.err")
                         .read_text()[-2000:])


def write_callers(work: Path, n: int) -> Path:
    """Distinct unknown numbers for the routed callers: each pop's history is its caller's, as in life."""
    path = work / "routed_callers.csv"
    path.write_text("SEQUENTIAL\n" + "".join(f"1590100{i:04d};\n" for i in range(n)), encoding="utf-8")
    return path


# --- what is sampled while a phase runs -----------------------------------------------------


@dataclass
class Sample:
    t: float  # time.monotonic()
    calls: int  # the IVR's hotline_calls_active
    pacer: dict[str, float]  # the status file's pacer entry
    statements: float  # the desk's desk_crm_statements_total
    agent_streams: float
    wallboard_streams: float
    ivr_cpu: float
    desk_cpu: float
    clients_cpu: float  # this process: the agents' and wallboards' stream clients (and this sampler)
    sipp_cpu: float  # the SIPp callers and agent phones


def prometheus(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                continue
    return out


class Sampler:
    """Every 0.5 s: the IVR's active calls and media clock, the desk's statement count and streams, both CPUs."""

    def __init__(self, setup: Setup, desk: subprocess.Popen[bytes]) -> None:
        self.setup, self.desk = setup, desk
        self.ivr: subprocess.Popen[str] | None = None
        self.sipp: list[subprocess.Popen[Any]] = []
        self.samples: list[Sample] = []
        self.client = httpx.Client(base_url=setup.desk_url, timeout=5)
        login_sync(self.client, SUPERVISOR, SUPERVISOR_PW)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.samples.append(self.sample())
            except (OSError, ValueError, httpx.HTTPError):
                continue

    def sample(self) -> Sample:
        desk = prometheus(self.client.get("/metrics").text)
        calls, ivr_cpu = 0, 0.0
        pacer: dict[str, float] = {}
        if self.ivr is not None and self.ivr.poll() is None:
            ivr = prometheus(urllib.request.urlopen(
                f"http://127.0.0.1:{self.setup.metrics_port}/metrics", timeout=5).read().decode())
            calls = int(ivr.get("hotline_calls_active", 0))
            try:
                pacer = json.loads((self.setup.work / "status.json").read_text(encoding="utf-8")).get("pacer") or {}
            except (OSError, ValueError):
                pacer = {}
            ivr_cpu = cpu_seconds(self.ivr.pid)
        return Sample(time.monotonic(), calls, pacer, desk["desk_crm_statements_total"],
                      desk.get('desk_event_streams_open{kind="agent"}', 0.0),
                      desk.get('desk_event_streams_open{kind="wallboard"}', 0.0), ivr_cpu, cpu_seconds(self.desk.pid),
                      cpu_seconds(os.getpid()), sum(cpu_seconds(p.pid) for p in self.sipp if p.poll() is None))

    def window(self, t0: float, t1: float) -> list[Sample]:
        return [s for s in list(self.samples) if t0 <= s.t <= t1]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.client.close()


def rate_of(samples: list[Sample], key: str) -> float | None:
    """Per second between the first and last sample of a window (a counter), None without two samples."""
    if len(samples) < 2 or samples[-1].t <= samples[0].t:
        return None
    used = float(getattr(samples[-1], key)) - float(getattr(samples[0], key))
    return round(used / (samples[-1].t - samples[0].t), 2)


def cpu_percent(samples: list[Sample], key: str) -> float | None:
    per_s = rate_of(samples, key)
    return None if per_s is None else round(100 * per_s, 1)


# --- the desk's users: agents on their desk page, supervisors on the wallboard ----------------------


def login_sync(client: httpx.Client, user: str, password: str) -> None:
    token = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
    answer = client.post("/login", data={"username": user, "password": password,
                                         **({"csrf": token.group(1)} if token else {})})
    if answer.status_code != 303:
        raise SystemExit(f"desk login of {user} refused: HTTP {answer.status_code}")


@dataclass
class Pop:
    agent: str
    event_id: int
    received: float  # time.time() when the event's blank line arrived


@dataclass
class Streams:
    """The SSE clients, all in one asyncio loop on a thread of their own."""

    url: str
    agents: list[str]
    wallboards: int
    pops: list[Pop] = field(default_factory=list)
    states: int = 0
    connected: set[str] = field(default_factory=set)  # agents whose stream has sent a first state
    board_updates: int = 0
    board_gaps: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    login_seconds: float = 0.0
    opened_at: float = 0.0  # time.time() when every stream was connected

    def __post_init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.clients: dict[str, httpx.AsyncClient] = {}
        self.tasks: list[asyncio.Task[None]] = []

    def run(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _login(self, key: str, user: str, password: str, gate: asyncio.Semaphore) -> None:
        client = httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(30, read=None))
        async with gate:  # the desk verifies each password with argon2: a few at once
            page = (await client.get("/login")).text
            token = re.search(r'name="csrf" value="([^"]+)"', page)
            answer = await client.post("/login", data={"username": user, "password": password,
                                                       **({"csrf": token.group(1)} if token else {})})
        if answer.status_code != 303:
            await client.aclose()
            raise RuntimeError(f"desk login of {user} refused: HTTP {answer.status_code}")
        self.clients[key] = client

    async def _login_all(self) -> None:
        gate = asyncio.Semaphore(4)
        await asyncio.gather(*[self._login(a, a, agent_password(a), gate) for a in self.agents],
                             *[self._login(f"wallboard-{n}", SUPERVISOR, SUPERVISOR_PW, gate)
                               for n in range(self.wallboards)])

    def login(self) -> None:
        started = time.monotonic()
        self.run(self._login_all(), 600)
        self.login_seconds = round(time.monotonic() - started, 1)

    async def _agent(self, agent: str) -> None:
        client = self.clients[agent]
        try:
            page = await client.get("/desk")  # what the browser loads first: the last event id it shows
            found = re.search(r'data-events="(/desk/events\?after=\d+)"', page.text)
            if page.status_code != 200 or not found:
                raise RuntimeError(f"desk page HTTP {page.status_code}")
            async with client.stream("GET", found.group(1)) as stream:
                kind, event_id = "", 0
                async for line in stream.aiter_lines():
                    if line.startswith("event:"):
                        kind = line[6:].strip()
                    elif line.startswith("id:"):
                        event_id = int(line[3:].strip())
                    elif not line and kind:
                        if kind == "pop":
                            self.pops.append(Pop(agent, event_id, time.time()))
                        elif kind == "state":
                            self.states += 1
                            self.connected.add(agent)
                        kind, event_id = "", 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # counted: a stream that broke is a finding, not a crash of the bench
            self.errors.append(f"agent {agent}: {type(exc).__name__}: {exc}"[:200])

    async def _wallboard(self, name: str) -> None:
        client = self.clients[name]
        last = time.monotonic()
        try:
            async with client.stream("GET", "/wallboard/events") as stream:
                pending, seen = False, 0
                async for line in stream.aiter_lines():
                    if line.startswith("data:"):
                        pending = True
                    elif not line and pending:
                        now, pending = time.monotonic(), False
                        self.board_updates += 1
                        if seen:  # between two updates of this board (not from the connection to its first)
                            self.board_gaps.append(now - last)
                        seen, last = seen + 1, now
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.errors.append(f"{name}: {type(exc).__name__}: {exc}"[:200])

    async def _open(self, agents: list[str], wallboards: bool) -> None:
        for agent in agents:
            self.tasks.append(asyncio.get_running_loop().create_task(self._agent(agent)))
            await asyncio.sleep(0.005)  # a room of agents opening their desks, not one burst
        for n in range(self.wallboards if wallboards else 0):
            self.tasks.append(asyncio.get_running_loop().create_task(self._wallboard(f"wallboard-{n}")))

    def open(self, agents: list[str], *, wallboards: bool, timeout: float) -> None:
        """These agents' pages and streams (and the wallboards); back when each of them sent a first state."""
        self.run(self._open(agents, wallboards), 60)
        deadline = time.monotonic() + timeout
        while not self.connected.issuperset(agents) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.opened_at = time.time()

    async def _close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for client in self.clients.values():
            await client.aclose()

    def close(self) -> None:
        try:
            self.run(self._close(), 30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)


# --- the load: silent callers and routed (talking) callers, SIPp --------------------------------


@dataclass
class Load:
    runs: dict[str, tuple[subprocess.Popen[bytes], Path]]

    def counts(self) -> dict[str, list[int]]:
        """SIPp's successful and failed calls so far (its -trace_stat file, written every second)."""
        out = {}
        for name, (_, stat) in self.runs.items():
            lines = stat.read_text().splitlines() if stat.exists() else []
            if len(lines) < 2:
                out[name] = [0, 0]
                continue
            header, last = lines[0].split(";"), lines[-1].split(";")
            out[name] = [int(last[header.index("SuccessfulCall(C)")]), int(last[header.index("FailedCall(C)")])]
        return out

    def stop(self) -> None:
        for proc, _ in self.runs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc, _ in self.runs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def start_load(setup: Setup, opts: argparse.Namespace, callers: Path, seconds: float) -> Load:
    """`--calls` callers at once for about `seconds`: `--routed` of them to the agents, the rest silent."""
    silent, routed = opts.calls - opts.routed, opts.routed
    runs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    plans = {
        # scenario, injection file, concurrent calls, calls in all (a bound), extra arguments;
        # silent callers last ~32 s, a routed call about 5 s more than its talk
        "silent": ("silent_caller.xml", SCENARIOS / "callers.csv", silent, silent + int(silent * seconds / 25) + 1, []),
        "routed": ("talking_caller.xml", callers, routed,
                   routed + int(routed * seconds / (opts.talk_seconds + 3)) + 1,
                   ["-d", str(int(opts.talk_seconds * 1000))]),
    }
    for name, (scenario, inf, limit, total, extra) in plans.items():
        if limit <= 0:
            continue
        stat = setup.work / f"sipp-{name}-{time.monotonic_ns()}.csv"
        rate = max(1.0, opts.rate * limit / opts.calls)
        runs[name] = (subprocess.Popen(
            ["sipp", f"127.0.0.1:{setup.sip_port}", "-sf", str(SCENARIOS / scenario), "-inf", str(inf),
             "-s", "95000", "-i", "127.0.0.1", "-p", str(free_port()), "-mi", "127.0.0.1", "-nostdin",
             "-m", str(total), "-l", str(limit), "-r", f"{rate:.2f}", "-timeout", f"{int(seconds + 120)}s",
             "-trace_stat", "-stf", str(stat), "-fd", "1", *extra],
            cwd=setup.work, stdout=subprocess.DEVNULL,
            stderr=open(setup.work / f"sipp-{name}.err", "a")), stat)  # noqa: SIM115
    return Load(runs)


def last_event_id(db: Path) -> int:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM call_events").fetchone()[0])
    finally:
        conn.close()


def rings_after(db: Path, after_id: int) -> dict[int, tuple[str, float]]:
    """event id -> (agent, epoch seconds) of each agent_rung event after `after_id`: the IVR's time of ringing."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        rows = conn.execute("SELECT id, detail, at FROM call_events WHERE kind = 'agent_rung' AND id > ?",
                            (after_id,)).fetchall()
    finally:
        conn.close()
    out = {}
    for event_id, detail, at in rows:
        when = datetime.fromisoformat(str(at))
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when  # the CRM keeps naive UTC in SQLite
        out[int(event_id)] = (str(detail).removeprefix("agent="), when.timestamp())
    return out


def lateness(window: list[Sample]) -> dict[str, float | None]:
    """The media clock's lateness over the phase (a fresh IVR each phase: its last 3000 ticks are this phase's)."""
    readings = [s.pacer for s in window if "lateness_ms_max" in s.pacer]
    if not readings:
        return {"media_clock_lateness_ms_p99": None, "media_clock_lateness_ms_max": None}
    return {"media_clock_lateness_ms_p99": max(r["lateness_ms_p99"] for r in readings),
            "media_clock_lateness_ms_max": max(r["lateness_ms_max"] for r in readings)}


def phase(name: str, setup: Setup, opts: argparse.Namespace, sampler: Sampler, callers: Path,
          streams: Streams | None) -> dict[str, Any]:
    """A fresh IVR; (streams: open them); `--idle-seconds` with no calls; the load for `--seconds` after its ramp."""
    ivr = start_ivr(setup, opts.start_seconds)
    sampler.ivr = ivr
    out: dict[str, Any] = {"phase": name}
    try:
        time.sleep(1.0)
        if streams is not None:
            # the CRM statements a second with one agent's stream, with every agent's, then with the wallboards too:
            # with one watcher for all pages the first two are the same
            steps: list[tuple[str, list[str], bool]] = [("one_agent_stream", streams.agents[:1], False),
                                                        ("all_agent_streams", streams.agents[1:], False),
                                                        ("and_wallboards", [], True)]
            for step, agents, wallboards in steps:
                started = time.monotonic()
                streams.open(agents, wallboards=wallboards, timeout=60 + len(agents) / 10)
                opened = time.monotonic()
                time.sleep(opts.idle_seconds)
                quiet = sampler.window(opened, time.monotonic())
                out[f"desk_statements_per_s_no_calls_{step}"] = rate_of(quiet, "statements")
                out[f"desk_cpu_percent_no_calls_{step}"] = cpu_percent(quiet, "desk_cpu")
                out[f"stream_clients_cpu_percent_no_calls_{step}"] = cpu_percent(quiet, "clients_cpu")
                out[f"streams_opened_seconds_{step}"] = round(opened - started, 1)
        else:
            t0 = time.monotonic()
            time.sleep(opts.idle_seconds)
            out["desk_statements_per_s_no_calls"] = rate_of(sampler.window(t0, time.monotonic()), "statements")
        first_event = last_event_id(setup.db)
        ramp = opts.calls / opts.rate
        load = start_load(setup, opts, callers, ramp + opts.seconds + 5)
        sampler.sipp = setup.phones + [proc for proc, _ in load.runs.values()]
        try:
            load_started = time.monotonic()
            steady, end = load_started + ramp + 3, load_started + ramp + 3 + opts.seconds
            while time.monotonic() < end:
                if ivr.poll() is not None:
                    raise SystemExit(f"the IVR died:\n{(setup.work / 'ivr.log').read_text()[-3000:]}")
                time.sleep(0.5)
            end_wall = time.time()
            time.sleep(1.0)  # the last pops of rings just before the end
            counts = load.counts()
        finally:
            load.stop()
        window = sampler.window(steady, end)
        out.update({
            "desk_statements_per_s_under_load": rate_of(window, "statements"),
            "desk_agent_streams_open": max((s.agent_streams for s in window), default=0),
            "desk_wallboard_streams_open": max((s.wallboard_streams for s in window), default=0),
            "peak_concurrent_calls": max((s.calls for s in window), default=0),
            "mean_concurrent_calls": round(sum(s.calls for s in window) / max(1, len(window)), 1),
            "sipp_successful_failed": counts,
            "sipp_failed": sum(c[1] for c in counts.values()),
            "ivr_cpu_percent_of_one_core": cpu_percent(window, "ivr_cpu"),
            "desk_cpu_percent_of_one_core": cpu_percent(window, "desk_cpu"),
            "stream_clients_cpu_percent_of_one_core": cpu_percent(window, "clients_cpu"),
            "sipp_cpu_percent_of_one_core": cpu_percent(window, "sipp_cpu"),
            **lateness(window),
            "steady_seconds": round(end - steady, 1),
            "loadavg_at_end": os.getloadavg(),  # other work on the machine shows up as lateness
        })
        rings = {k: v for k, v in rings_after(setup.db, first_event).items() if v[1] <= end_wall}
        out["agents_rung"] = len(rings)
        out["agents_rung_per_s_steady"] = round(
            sum(1 for _, at in rings.values() if at >= end_wall - opts.seconds) / opts.seconds, 2)
        out["_rings"] = rings  # matched with the pops by the caller, then dropped
    finally:
        out["ivr_exit"] = stop_ivr(ivr)
        sampler.ivr = None
    return out


def pop_figures(streams: Streams, rings: dict[int, tuple[str, float]], opened_at: float) -> dict[str, Any]:
    """Each ring after the streams were open against the pop its agent's stream delivered."""
    due = {event_id: ring for event_id, ring in rings.items() if ring[1] >= opened_at}
    first: dict[int, Pop] = {}
    wrong = 0
    for pop in streams.pops:
        ring = due.get(pop.event_id)
        if ring is None:
            continue  # a ring before the streams were open (caught up at open) or after the window
        if ring[0] != pop.agent:
            wrong += 1
        elif pop.event_id not in first:
            first[pop.event_id] = pop
    latencies = [1000 * (pop.received - due[event_id][1]) for event_id, pop in first.items()]
    return {
        "rings_while_streams_open": len(due),
        "pops_received": len(first),
        "rings_without_pop": len(due) - len(first),
        "pops_to_another_agent": wrong,
        "agents_popped": len({p.agent for p in first.values()}),
        "latency_ms_p50": round(pct(latencies, 0.5), 1) if latencies else None,
        "latency_ms_p99": round(pct(latencies, 0.99), 1) if latencies else None,
        "latency_ms_max": round(max(latencies), 1) if latencies else None,
        "latency_ms_min": round(min(latencies), 1) if latencies else None,
    }


def per_ring(loaded: dict[str, Any]) -> float | None:
    """The desk's statements a second under load above its idle rate with every stream open, per ring a second."""
    busy, idle = loaded["desk_statements_per_s_under_load"], loaded["desk_statements_per_s_no_calls_and_wallboards"]
    rings = loaded["agents_rung_per_s_steady"]
    return round((busy - idle) / rings, 1) if busy is not None and idle is not None and rings else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agents", type=int, default=300, help="agents logged in, each with its desk's event stream open")
    p.add_argument("--wallboards", type=int, default=10, help="supervisors following the live wallboard")
    p.add_argument("--calls", type=int, default=500, help="concurrent callers with media (silent plus routed)")
    p.add_argument("--routed", type=int, default=50,
                   help="of --calls: concurrent callers who press 9, 1 and talk with an agent (each rings one agent)")
    p.add_argument("--talk-seconds", type=float, default=5, help="a routed caller's talk before hanging up")
    p.add_argument("--seconds", type=float, default=60, help="steady load per phase (baseline, then streams)")
    p.add_argument("--rate", type=float, default=50, help="new calls a second while the load ramps up")
    p.add_argument("--idle-seconds", type=float, default=8, help="each phase's quiet time before its calls")
    p.add_argument("--agent-pool", type=int, default=10, help="SIPp UAS processes the agents' phones share")
    p.add_argument("--rtp-base", type=int, default=25000,
                   help="the IVR's RTP ports start here (4 a call, at least 200); the default stays below the "
                        "ephemeral ports and apart from bench.py's 30000 and up")
    p.add_argument("--start-seconds", type=float, default=300,
                   help="the IVR's start at most (the first renders each agent's greeting into var/prompts)")
    p.add_argument("--desk-nice", type=int, default=0, metavar="N",
                   help="the desk's nice value (default 0: even with the IVR); its systemd unit gives it a quarter "
                        "of a worker's CPU weight on a shared host, which one process tree here mirrors with 5")
    p.add_argument("--report", type=Path, help="JSON path (default loadtest/reports/desk-load-<time>.json)")
    opts = p.parse_args()
    if not 1 <= opts.agents <= 2000 or not 0 <= opts.wallboards <= 100:
        p.error("--agents is 1..2000 and --wallboards 0..100")
    if not 1 <= opts.routed <= opts.calls <= 2000:
        p.error("--routed is 1..--calls, and --calls at most 2000")
    if not 5 <= opts.seconds <= 1800 or not 1 <= opts.talk_seconds <= 600 or not 1 <= opts.rate <= 300:
        p.error("--seconds is 5..1800, --talk-seconds 1..600, --rate 1..300")
    if not 1024 <= opts.rtp_base <= 65335:
        p.error("--rtp-base is 1024..65335")
    if not 1 <= opts.agent_pool <= min(50, opts.agents):
        p.error("--agent-pool is 1..50 and at most --agents")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: the finally below still stops everything
    work = Path(tempfile.mkdtemp(prefix="desk-load-"))
    setup = write_conf(work, opts)
    render_speech(work)
    callers = write_callers(work, 10_000)
    report: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0], "loadavg_at_start": os.getloadavg()},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
    }
    streams: Streams | None = None
    sampler: Sampler | None = None
    try:
        bound = 2 * (opts.calls / opts.rate + opts.seconds) + opts.start_seconds + 900
        start_agent_pool(setup, bound, 1_000_000)
        desk = start_desk(setup, 60 + opts.agents, opts.desk_nice)
        sampler = Sampler(setup, desk)
        streams = Streams(setup.desk_url, agent_numbers(opts.agents), opts.wallboards)
        print(f"desk up; logging in {opts.agents} agents and {opts.wallboards} wallboards", flush=True)
        streams.login()
        report["logins_seconds"] = streams.login_seconds
        baseline = phase("baseline", setup, opts, sampler, callers, None)
        baseline.pop("_rings")
        print(f"baseline (no desk streams): {json.dumps(baseline)}", flush=True)
        with_streams = phase("streams", setup, opts, sampler, callers, streams)
        rings = with_streams.pop("_rings")
        print(f"with {opts.agents} + {opts.wallboards} streams: {json.dumps(with_streams)}", flush=True)
        report["phases"] = {"baseline": baseline, "streams": with_streams}
        report["pops"] = pop_figures(streams, rings, streams.opened_at)
        gaps = streams.board_gaps
        report["streams"] = {
            "agent_streams_connected": len(streams.connected),
            "agent_state_events": streams.states,
            "wallboard_updates": streams.board_updates,
            "wallboard_longest_gap_s": round(max(gaps), 2) if gaps else None,
            "errors": len(streams.errors),
            "first_errors": streams.errors[:10],
        }
    finally:
        if streams is not None:
            streams.close()
        if sampler is not None:
            sampler.stop()
        for proc in reversed(setup.procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        report["loadavg_at_end"] = os.getloadavg()  # other work on the machine competes for the same cores
        log = setup.work / "ivr.log"
        report["ivr_log_tracebacks"] = log.read_text().count("Traceback") if log.exists() else None
    base, loaded = report["phases"]["baseline"], report["phases"]["streams"]
    pops = report["pops"]
    report["targets"] = {
        "pop_latency_p99_ms": {"measured": pops["latency_ms_p99"], "max": pops["latency_ms_max"],
                               "pops": pops["pops_received"], "target": "<= 1000"},
        "desk_crm_statements_per_s": {
            "idle_no_streams": base["desk_statements_per_s_no_calls"],
            "load_no_streams": base["desk_statements_per_s_under_load"],
            "idle_one_agent_stream": loaded["desk_statements_per_s_no_calls_one_agent_stream"],
            "idle_all_agent_streams": loaded["desk_statements_per_s_no_calls_all_agent_streams"],
            "idle_all_streams_and_wallboards": loaded["desk_statements_per_s_no_calls_and_wallboards"],
            "load_with_streams": loaded["desk_statements_per_s_under_load"],
            # under load the rest follows the rings: each pop reads its call for the page it goes to
            "per_ring_under_load": per_ring(loaded),
            "if_each_agent_page_polled": round(opts.agents * 1000 / 250, 1),  # every [desk] poll_ms (250)
            "target": "flat in the number of streams (one watcher, not a poll per page)"},
        "media_clock_lateness_ms": {
            "baseline_p99_max": [base["media_clock_lateness_ms_p99"], base["media_clock_lateness_ms_max"]],
            "streams_p99_max": [loaded["media_clock_lateness_ms_p99"], loaded["media_clock_lateness_ms_max"]],
            "target": "p99 <= 5, max <= 20; streams no worse than baseline"},
        "failed_calls": {"baseline": base["sipp_failed"], "streams": loaded["sipp_failed"], "target": 0},
    }
    path = opts.report or ROOT / "loadtest" / "reports" / f"desk-load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    print(json.dumps(report["targets"], indent=2, ensure_ascii=False))
    print(f"pops: {json.dumps(pops)}\nreport: {path}")
    healthy = (pops["pops_received"] > 0 and pops["rings_without_pop"] == 0 and pops["pops_to_another_agent"] == 0
               and report["streams"]["errors"] == 0 and report["ivr_log_tracebacks"] == 0)
    if healthy:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"not healthy: the logs are in {work}")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
