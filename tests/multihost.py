"""The two-worker layout on separate hosts: network namespaces on a private bridge, 10.77.0.0/24.

    scripts/multihost.sh up      # (root) build the hosts and start every service; prints how to call in
    scripts/multihost.sh down    # stop everything running in them and delete the namespaces

| host     | address     | runs                                                              |
| -------- | ----------- | ----------------------------------------------------------------- |
| balancer | 10.77.0.2   | Kamailio with loadtest/kamailio/kamailio.cfg, on 10.77.0.2:5060    |
| db       | 10.77.0.5   | PostgreSQL (the shared CRM) and the desk on http://10.77.0.5:8080 |
| caller   | 10.77.0.10  | SIPp callers                                                      |
| worker1  | 10.77.0.11  | IVR, `bind = 10.77.0.11` (one interface)                          |
| worker2  | 10.77.0.12  | IVR, `bind = 0.0.0.0` with `advertised_ip = 10.77.0.12`          |
| agents   | 10.77.0.20  | two SIPp agent phones, [821] on :5090 and [822] on :5091          |

Each host is a network namespace of its own with one interface, `eth0`,
whose peer sits on a bridge inside one more namespace (the switch): nothing is
created in, or routed to, the machine's own network. The two workers show the
two ways of binding: one address, or every address with the address to
advertise. `sniff` (run inside a host: `python tests/multihost.py sniff eth0
FILE`) records every UDP datagram the host sends or receives, SIP and RTP,
through a packet socket, for tests that check what went over the wire
without tcpdump.

With `websocket=True` (tests/test_multihost_websocket.py) the balancer also
holds browsers' WebSockets on 10.77.0.2:8088 (the cfg's WITH_WEBSOCKET, Origin
`WS_ORIGIN` only) and the workers' one agent is [823], a browser that
registers there (`start_browser_agent`: tests/browser_agent.py's program, in
the agents' namespace), instead of the two SIPp phones.

`Layout` builds and runs it for tests (tests/test_multihost.py); the command
line does the same for a developer and leaves it running. The names of the
namespaces carry a prefix (`hl` from the command line, `hl<pid>` per test
process), so several layouts can exist at once, each on its own bridge; a
test run killed midway leaves its layout up (`ip netns list` shows it), and
`scripts/multihost.sh down --prefix hl<pid>` takes it down.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import glob
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SUBNET = "10.77.0"
ADDRESSES = {"balancer": 2, "db": 5, "caller": 10, "worker1": 11, "worker2": 12, "agents": 20}
AGENT_PORTS = {"821": 5090, "822": 5091}
SIP_PORT = 5060
DESK_PORT = 8080
PG_PORT = 5432
KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
KAMAILIO_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"
SCENARIOS = ROOT / "tests" / "sipp"
WS_PORT = 8088  # the balancer's WebSocket for browser agents (websocket=True)
WS_ORIGIN = "https://desk.example.com"  # the one page allowed to open it
WS_AUTH_FAILURES = 3  # foreign pages (or failed logins) from one address that bar it at the balancer
BROWSER_AGENT, BROWSER_PASSWORD = "823", "pw823-browser"


class LayoutUnavailable(Exception):
    """This machine cannot build the layout (no root, no namespaces, a program missing); the message says which."""


def ip_of(role: str) -> str:
    return f"{SUBNET}.{ADDRESSES[role]}"


@dataclass(frozen=True, slots=True)
class Host:
    role: str
    ns: str
    ip: str

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", 60)
        return subprocess.run(self.command(*argv), check=False, **kwargs)

    def popen(self, *argv: str, log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
        out = open(log, "ab")  # noqa: SIM115 - the child keeps it
        try:
            return subprocess.Popen(self.command(*argv), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, **kwargs)
        finally:
            out.close()


def _ip(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, check=False, timeout=30)


def namespaces(prefix: str) -> list[str]:
    listed = _ip("netns", "list").stdout.split("\n")
    names = [line.split()[0] for line in listed if line.strip()]
    return [n for n in names if n == f"{prefix}-switch" or n in {f"{prefix}-{r}" for r in ADDRESSES}]


def make_network(prefix: str) -> dict[str, Host]:
    """The switch namespace with its bridge, and one namespace per host cabled to it."""
    if os.geteuid() != 0:
        raise LayoutUnavailable("network namespaces need root")
    if shutil.which("ip") is None:
        raise LayoutUnavailable("ip is not installed (Debian: iproute2)")
    delete_network(prefix)  # what a killed run of the same name left behind
    switch = f"{prefix}-switch"
    steps: list[list[str]] = [["netns", "add", switch], ["-n", switch, "link", "set", "lo", "up"],
                              ["-n", switch, "link", "add", "br0", "type", "bridge"],
                              ["-n", switch, "link", "set", "br0", "up"]]
    hosts = {}
    for role in ADDRESSES:
        ns, ip = f"{prefix}-{role}", ip_of(role)
        port = f"v-{role}"[:15]
        steps += [["netns", "add", ns], ["-n", ns, "link", "set", "lo", "up"],
                  # made inside the switch, its peer moved straight into the host: the machine's
                  # own namespace never holds either end
                  ["-n", switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns],
                  ["-n", switch, "link", "set", port, "master", "br0", "up"],
                  ["-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"], ["-n", ns, "link", "set", "eth0", "up"]]
        hosts[role] = Host(role, ns, ip)
    for step in steps:
        done = _ip(*step)
        if done.returncode != 0:
            delete_network(prefix)
            raise LayoutUnavailable(f"ip {' '.join(step)}: {done.stderr.strip()}")
    return hosts


def delete_network(prefix: str) -> None:
    """Stop whatever runs in the layout's namespaces, then delete them."""
    names = namespaces(prefix)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [int(p) for n in names for p in _ip("netns", "pids", n).stdout.split() if p.isdigit()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists() and _alive(p)]
            time.sleep(0.1)
    for name in names:
        _ip("netns", "del", name)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# --- the services ------------------------------------------------------------------------------


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise LayoutUnavailable("PostgreSQL binaries not found: scripts/bootstrap.sh installs Debian's postgresql")
    return Path(found[-1]).parent


def start_postgres(host: Host) -> tuple[str, Path]:
    """A throw-away cluster listening on the db host's address; returns its URL and data directory."""
    bindir = _pg_bin()
    base = Path(tempfile.mkdtemp(prefix="hl-pg-"))
    shutil.chown(base, "postgres")
    data = base / "data"
    as_pg = ["runuser", "-u", "postgres", "--"]
    made = subprocess.run([*as_pg, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"],
                          capture_output=True, text=True, timeout=120)
    if made.returncode != 0:
        raise LayoutUnavailable(f"initdb: {made.stderr.strip()}")
    with (data / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all {SUBNET}.0/24 trust\n")
    started = pg_ctl(host, base, "start")
    if started.returncode != 0:
        raise LayoutUnavailable(f"pg_ctl start: {started.stderr.strip()} {(base / 'server.log').read_text()}")
    return f"postgresql+psycopg://postgres@{host.ip}:{PG_PORT}/postgres", base


def pg_ctl(host: Host, base: Path, action: str) -> subprocess.CompletedProcess[str]:
    """Start or stop (fast: connections cut, as a host failure would) the db host's cluster in `base`."""
    data = base / "data"
    opts = (f"-c listen_addresses={host.ip} -c port={PG_PORT} -c unix_socket_directories={data} -c fsync=off "
            "-c max_connections=60")
    extra = ["-o", opts, "start"] if action == "start" else ["-m", "fast", "stop"]
    return host.run("runuser", "-u", "postgres", "--", str(_pg_bin() / "pg_ctl"), "-D", str(data),
                    "-l", str(base / "server.log"), "-w", *extra, timeout=60)


def psql(host: Host, sql: str) -> list[list[str]]:
    """Rows of a query run on the db host (the CRM is reachable only inside the layout)."""
    done = host.run(str(_pg_bin() / "psql"), "-h", host.ip, "-p", str(PG_PORT), "-U", "postgres", "-At",
                    "-F", "|", "-c", sql)
    if done.returncode != 0:
        raise RuntimeError(f"psql: {done.stderr.strip()}")
    return [line.split("|") for line in done.stdout.splitlines() if line]


def worker_config(state: Path, n: int, db_url: str, prompt_cache: Path, *, websocket: bool = False) -> Path:
    """Worker n's sip.conf: the settings README.md lists for a worker behind Kamailio, on its own host.

    `websocket`: the one agent is the browser [823], registering through the balancer's WebSocket."""
    home = state / f"worker{n}"
    home.mkdir(parents=True, exist_ok=True)
    me = ip_of(f"worker{n}")
    # worker1 binds its one address; worker2 binds every address and says which to advertise
    binding = f"bind = {me}\n" if n == 1 else f"bind = 0.0.0.0\nadvertised_ip = {me}\n"
    agents = "".join(f"[{number}]\ntype = agent\nseat_group = junior\nname = 坐席{number}\n"
                     f"host = {ip_of('agents')}:{port}\n" for number, port in AGENT_PORTS.items())
    if websocket:
        agents = (f"[{BROWSER_AGENT}]\ntype = agent\nseat_group = junior\nname = 坐席{BROWSER_AGENT}\n"
                  f"host = dynamic\nsecret = {BROWSER_PASSWORD}\n")
    conf = home / "sip.conf"
    conf.write_text(
        f"""[general]
{binding}port = {SIP_PORT}
rtp_port_min = 20000
rtp_port_max = 20400
ring_seconds = 1
numbers = 95000
status_file = {home / "status.json"}
[prompts]
cache_dir = {prompt_cache}
recorded_dir = {home / "recorded"}
[database]
url = {db_url}
outbox_dir = {home / "outbox"}
[limits]
trusted = {ip_of("balancer")}
max_loop_lag_ms = 3000
[queues]
wrap_up_seconds = 0
[survey]
timeout_seconds = 2
[recording]
enabled = no
[cluster]
shared_agents = yes
worker = ivr-{n}
secret = the-same-long-secret-on-every-worker
[log]
level = info
{agents}
[desk]
bind = {ip_of("db")}
port = {DESK_PORT}
""",
        encoding="utf-8",
    )
    return conf


def start_worker(host: Host, conf: Path) -> subprocess.Popen[bytes]:
    return host.popen(sys.executable, str(ROOT / "run_ivr.py"), "--config", str(conf), log=conf.parent / "ivr.log",
                      cwd=ROOT)


def wait_ready(proc: subprocess.Popen[bytes], log: Path, marker: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if marker in text:
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"{log.parent.name} did not start ({marker!r} not seen):\n{log.read_text(errors='replace')}")


def start_kamailio(host: Host, state: Path, workers: list[str], *, websocket: bool = False) -> subprocess.Popen[bytes]:
    if not os.path.exists(KAMAILIO):
        raise LayoutUnavailable("kamailio not installed (scripts/bootstrap.sh installs it)")
    dslist = state / "dispatcher.list"
    dslist.write_text("".join(f"1 sip:{w}:{SIP_PORT}\n" for w in workers))
    ws: list[str] = []
    if websocket:
        if not os.path.exists(f"{KAMAILIO_MODULES}/websocket.so"):
            raise LayoutUnavailable("Kamailio's websocket module missing (scripts/bootstrap.sh installs "
                                    "kamailio-websocket-modules)")
        ws = ["-A", "WITH_WEBSOCKET", "-A", f"WS_LISTEN=tcp:{host.ip}:{WS_PORT}", "-A", f'WS_ORIGINS="{WS_ORIGIN}"',
              "-A", f"AUTH_FAILURES={WS_AUTH_FAILURES}"]
    return host.popen(KAMAILIO, "-DD", "-E", "-m", "64", "-f", str(ROOT / "loadtest/kamailio/kamailio.cfg"),
                      "-L", KAMAILIO_MODULES, "-A", f"LISTEN=udp:{host.ip}:{SIP_PORT}", "-A", f'DSLIST="{dslist}"',
                      *ws, "-P", str(state / "kamailio.pid"), log=state / "kamailio.log")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """A process started with `Host.popen` (a session of its own) and its children: SIGTERM, then reaped."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def start_browser_agent(host: Host, state: Path, calls: int, *, talk_s: float = 6.0, linger_s: float = 1.0,
                        name: str = "browser", vanish: bool = False) -> subprocess.Popen[bytes]:
    """[823]'s browser (`python -m tests.browser_agent agent`): registers at the balancer's WebSocket, takes `calls` calls
    with aiortc's WebRTC, hangs up each after `talk_s`, closes its WebSocket `linger_s` later; `name`.jsonl says."""
    # a module of the repository's `tests` package (it imports tests.sip_text): run from the root
    return host.popen(sys.executable, "-m", "tests.browser_agent", "agent", "--host", ip_of("balancer"),
                      "--ws-port", str(WS_PORT), "--origin", WS_ORIGIN, "--agent", BROWSER_AGENT,
                      "--password", BROWSER_PASSWORD, "--calls", str(calls), "--talk", str(talk_s),
                      "--linger", str(linger_s), "--out", str(state / f"{name}.jsonl"),
                      *(["--vanish"] if vanish else []), log=state / f"{name}.log", cwd=ROOT)


def browser_events(state: Path, name: str = "browser") -> list[dict[str, Any]]:
    path = state / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def start_agents(host: Host, state: Path, calls: int, talk_ms: int = 5000) -> list[subprocess.Popen[bytes]]:
    """One SIPp phone per agent of the workers' config, each taking `calls` calls."""
    if shutil.which("sipp") is None:
        raise LayoutUnavailable("sipp not installed (scripts/bootstrap.sh installs Debian's sip-tester)")
    phones = []
    for number, port in AGENT_PORTS.items():
        phones.append(host.popen(
            "sipp", "-sf", str(SCENARIOS / "multihost_agent.xml"), "-i", host.ip, "-p", str(port), "-mi", host.ip,
            "-mp", str(30000 + 100 * (port - 5090)), "-m", str(calls), "-d", str(talk_ms), "-nostdin",
            "-timeout", "300s", "-timeout_error", "-trace_err", "-error_file", str(state / f"agent{number}.err"),
            log=state / f"agent{number}.log", cwd=state))
    return phones


def start_callers(host: Host, state: Path, calls: int, rate: float = 1, *, scenario: Path | None = None,
                  name: str = "callers", extra: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """SIPp callers at the balancer (multihost_caller.xml: served by an agent; or another scenario)."""
    return host.popen(
        "sipp", f"{ip_of('balancer')}:{SIP_PORT}", "-sf", str(scenario or SCENARIOS / "multihost_caller.xml"),
        "-inf", str(ROOT / "loadtest/scenarios/unknown_callers.csv"), "-s", "95000", "-m", str(calls),
        "-r", str(rate), "-l", str(calls), "-i", host.ip, "-p", "5070", "-mi", host.ip, "-mp", "40000",
        "-nostdin", "-timeout", "120s", "-timeout_error", "-trace_err", "-error_file", str(state / f"{name}.err"),
        "-trace_stat", "-stf", str(state / f"{name}.csv"), *extra, log=state / f"{name}.log", cwd=state)


def sipp_totals(stat_csv: Path) -> dict[str, int]:
    """SIPp's final counts from its -trace_stat file: created, successful and failed calls."""
    lines = [line.split(";") for line in stat_csv.read_text().splitlines() if line.strip()]
    row = dict(zip(lines[0], lines[-1], strict=False))
    return {"created": int(row["TotalCallCreated"]), "successful": int(row["SuccessfulCall(C)"]),
            "failed": int(row["FailedCall(C)"])}


def start_sniffer(host: Host, out: Path) -> subprocess.Popen[bytes]:
    log = out.with_suffix(".log")
    proc = host.popen(sys.executable, str(Path(__file__)), "sniff", "eth0", str(out), log=log)
    wait_ready(proc, log, "sniffing", 10)
    return proc


# --- what went over the wire -------------------------------------------------------------------


def sniff(iface: str, out: Path) -> int:
    """Record every IPv4 UDP datagram on iface, both ways, as JSON lines, until SIGTERM."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    sock.bind((iface, 0))
    sock.settimeout(0.5)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    print("sniffing", flush=True)
    with out.open("w") as f:
        while not stop:
            try:
                frame = sock.recv(65535)
            except TimeoutError:
                continue
            if len(frame) < 42 or frame[12:14] != b"\x08\x00" or frame[23] != 17:
                continue
            ihl = (frame[14] & 0x0F) * 4
            udp = 14 + ihl
            sport, dport = struct.unpack("!HH", frame[udp:udp + 4])
            f.write(json.dumps({"t": time.time(), "src": socket.inet_ntoa(frame[26:30]), "sport": sport,
                                "dst": socket.inet_ntoa(frame[30:34]), "dport": dport,
                                "data": base64.b64encode(frame[udp + 8:]).decode()}) + "\n")
    return 0


@dataclass(frozen=True, slots=True)
class Datagram:
    src: str
    sport: int
    dst: str
    dport: int
    data: bytes
    at: float = 0.0  # time.time() when captured

    @property
    def is_sip(self) -> bool:
        return self.data.startswith(b"SIP/2.0 ") or b" SIP/2.0\r\n" in self.data.split(b"\r\n", 1)[0] + b"\r\n"

    @property
    def rtp_payload(self) -> tuple[int, bytes] | None:
        """(payload type, payload) when this is an RTP packet."""
        d = self.data
        if len(d) < 12 or d[0] >> 6 != 2 or self.is_sip or 72 <= (d[1] & 0x7F) <= 76:  # 72-76: RTCP
            return None
        start = 12 + 4 * (d[0] & 0x0F)
        if d[0] & 0x10 and len(d) >= start + 4:
            start += 4 + 4 * struct.unpack("!H", d[start + 2:start + 4])[0]
        return d[1] & 0x7F, d[start:]


def read_capture(path: Path) -> list[Datagram]:
    found = []
    for line in path.read_text().splitlines():
        x = json.loads(line)
        found.append(Datagram(x["src"], x["sport"], x["dst"], x["dport"], base64.b64decode(x["data"]), x["t"]))
    return found


@dataclass
class SipMessage:
    src: str
    dst: str
    first_line: str
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: str = ""
    text: str = ""

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower(), [])
        return values[0] if values else ""


COMPACT = {"v": "via", "m": "contact", "f": "from", "t": "to", "i": "call-id", "c": "content-type", "l": "content-length"}


def sip_messages(datagrams: list[Datagram]) -> list[SipMessage]:
    messages = []
    for d in datagrams:
        if not d.is_sip:
            continue
        text = d.data.decode("utf-8", errors="replace")
        head, _, body = text.partition("\r\n\r\n")
        lines = head.split("\r\n")
        msg = SipMessage(d.src, d.dst, lines[0], body=body, text=text)
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            msg.headers.setdefault(COMPACT.get(key, key), []).append(value.strip())
        messages.append(msg)
    return messages


def pcap_payloads(path: Path) -> list[bytes]:
    """The RTP payloads of a classic pcap file of Ethernet frames (SIPp's g711a.pcap), in order."""
    data = path.read_bytes()
    payloads: list[bytes] = []
    at = 24
    while at + 16 <= len(data):
        length = struct.unpack("<I", data[at + 8:at + 12])[0]
        frame = data[at + 16:at + 16 + length]
        at += 16 + length
        if len(frame) > 54 and frame[23] == 17:
            udp = 14 + (frame[14] & 0x0F) * 4
            payload = Datagram("", 0, "", 0, frame[udp + 8:]).rtp_payload
            if payload is not None and any(payload[1]):
                payloads.append(payload[1])
    return payloads


# --- the whole layout --------------------------------------------------------------------------


@dataclass
class Layout:
    prefix: str
    state: Path
    prompt_cache: Path
    hosts: dict[str, Host] = field(default_factory=dict)
    db_url: str = ""
    pg_base: Path | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    configs: list[Path] = field(default_factory=list)
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)
    websocket: bool = False  # browsers at the balancer's WebSocket, agent [823] (see the module docstring)

    def up(self, *, desk: bool = True) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        self.hosts = make_network(self.prefix)
        try:
            self.db_url, self.pg_base = start_postgres(self.hosts["db"])
            for n in (1, 2):  # one after the other: the first migrates the empty CRM
                conf = worker_config(self.state, n, self.db_url, self.prompt_cache, websocket=self.websocket)
                proc = start_worker(self.hosts[f"worker{n}"], conf)
                wait_ready(proc, conf.parent / "ivr.log", "ready on")
                self.workers.append(proc)
                self.configs.append(conf)
            if desk:
                log = self.state / "desk.log"
                proc = self.hosts["db"].popen(sys.executable, "-m", "desk", "--config", str(self.configs[0]), "serve",
                                              log=log, cwd=ROOT)
                self.others.append(proc)
                wait_ready(proc, log, "desk: ready")
            balancer = start_kamailio(self.hosts["balancer"], self.state, [ip_of("worker1"), ip_of("worker2")],
                                      websocket=self.websocket)
            self.others.append(balancer)
            time.sleep(1.0)
            if balancer.poll() is not None:
                raise RuntimeError(f"kamailio did not start:\n{(self.state / 'kamailio.log').read_text()}")
        except BaseException:
            self.down()
            raise

    def restart_worker(self, n: int) -> subprocess.Popen[bytes]:
        """Start worker n again with its config (after a kill or a drain), once it says it is ready."""
        conf = self.configs[n - 1]
        log = conf.parent / "ivr.log"
        offset = log.stat().st_size if log.exists() else 0
        proc = start_worker(self.hosts[f"worker{n}"], conf)
        deadline = time.monotonic() + 90
        while "ready on" not in log.read_bytes()[offset:].decode(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker{n} did not start again:\n{log.read_bytes()[offset:].decode()}")
            time.sleep(0.1)
        self.workers[n - 1] = proc
        return proc

    def down(self) -> None:
        delete_network(self.prefix)
        if self.pg_base is not None:
            shutil.rmtree(self.pg_base, ignore_errors=True)
            self.pg_base = None


@contextlib.contextmanager
def running_layout(state: Path, prompt_cache: Path, prefix: str | None = None, *,
                   websocket: bool = False) -> Iterator[Layout]:
    layout = Layout(prefix or f"hl{os.getpid() % 100000}", state, prompt_cache, websocket=websocket)
    layout.up(desk=not websocket)
    try:
        yield layout
    finally:
        layout.down()


# --- the command line --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/multihost.sh", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build the hosts and start PostgreSQL, the desk, two workers, Kamailio, agents")
    up.add_argument("--prefix", default="hl", help="namespace names: PREFIX-caller, PREFIX-worker1, …")
    up.add_argument("--state", type=Path, default=ROOT / "var" / "multihost", help="configs and logs")
    up.add_argument("--websocket", action="store_true",
                    help=f"browsers at the balancer's WebSocket (ws://{ip_of('balancer')}:{WS_PORT}/), "
                         f"agent [{BROWSER_AGENT}] instead of the SIPp phones")
    down = sub.add_parser("down", help="stop everything in the layout and delete its namespaces")
    down.add_argument("--prefix", default="hl")
    down.add_argument("--state", type=Path, default=ROOT / "var" / "multihost")
    sn = sub.add_parser("sniff", help="(inside a host) record UDP on an interface as JSON lines until SIGTERM")
    sn.add_argument("iface")
    sn.add_argument("out", type=Path)
    args = p.parse_args(argv)
    if args.command == "sniff":
        return sniff(args.iface, args.out)
    if args.command == "down":
        found = namespaces(args.prefix)
        delete_network(args.prefix)
        pg = args.state / "pg_base"
        if pg.exists():
            shutil.rmtree(pg.read_text().strip(), ignore_errors=True)
            pg.unlink()
        print(f"multihost: deleted {len(found)} namespace(s) of {args.prefix}")
        return 0
    if namespaces(args.prefix):
        print(f"multihost: {args.prefix} is up already (scripts/multihost.sh down first)", file=sys.stderr)
        return 1
    layout = Layout(args.prefix, args.state, ROOT / "var" / "prompts", websocket=args.websocket)
    try:
        layout.up()
        if args.websocket:  # one browser, two calls, then it closes its WebSocket (var/multihost/browser.jsonl)
            layout.others.append(start_browser_agent(layout.hosts["agents"], args.state, calls=2))
        else:
            layout.others += start_agents(layout.hosts["agents"], args.state, calls=1000)
    except (LayoutUnavailable, RuntimeError) as exc:
        print(f"multihost: {exc}", file=sys.stderr)
        return 1
    (args.state / "pg_base").write_text(str(layout.pg_base))
    caller = layout.hosts["caller"].ns
    print(f"""multihost: up ({args.state} holds the configs and logs)
  call in:   ip netns exec {caller} sipp {ip_of('balancer')}:5060 -sf {SCENARIOS}/multihost_caller.xml \\
               -inf {ROOT}/loadtest/scenarios/unknown_callers.csv -s 95000 -i {ip_of('caller')} -m 2 -r 1
  the CRM:   ip netns exec {layout.hosts['db'].ns} {_pg_bin()}/psql -h {ip_of('db')} -U postgres \\
               -c 'select sip_call_id, outcome, agent_number, ivr_worker from calls'
  the desk:  ip netns exec {caller} curl http://{ip_of('db')}:{DESK_PORT}/login
  stop:      scripts/multihost.sh down""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
