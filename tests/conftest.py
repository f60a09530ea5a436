"""Shared fixtures: free loopback ports, a real PostgreSQL server, the IVR as a real process."""

from __future__ import annotations

import collections
import contextlib
import glob
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ivr.sipconf import BROWSER_BLOCKED_PORTS

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "loadtest" / "scenarios"
# One prompt cache per pytest-xdist worker: IVRs started at the same moment in two workers
# would otherwise render into, and clear stale renders from, the same folder at once.
PROMPT_CACHE = ROOT / "var" / ("prompts-" + os.environ["PYTEST_XDIST_WORKER"] if "PYTEST_XDIST_WORKER" in os.environ
                               else "prompts")


def worker_share(ports: range) -> range:
    """This pytest-xdist worker's slice of `ports` (all of them without xdist): a port one worker found free
    and has not bound yet (a SIPp about to start, an IVR's config) is never drawn by another."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count <= 1:
        return ports
    size = len(ports) // count
    start = ports.start + int(worker[2:]) % count * size
    return range(start, start + size)


# below every RTP range tests and benchmarks configure, baresip's RTP ports (10000-20000), the ephemeral ports,
# and apart from the example config's 5060, 8080 and 9102 and SIPp's default media port 6000
FREE_PORTS = worker_share(range(6100, 8000))


SHANGHAI = ZoneInfo("Asia/Shanghai")  # [general] timezone of the tests' configurations


def earlier_today(minutes: float, zone: ZoneInfo = SHANGHAI) -> datetime:
    """`minutes` ago (UTC), or the start of today in `zone` when that is later: a call "a few minutes ago" that the
    pages of today's and this week's calls show even when the test runs just after midnight (16:00 UTC)."""
    now = datetime.now(UTC)
    midnight = datetime.combine(now.astimezone(zone).date(), clock_time(0), zone).astimezone(UTC)
    return max(now - timedelta(minutes=minutes), midnight)


_GIVEN: collections.deque[int] = collections.deque(maxlen=400)  # the ports free_port handed out last


def free_port(kind: int = socket.SOCK_DGRAM, even: bool = False) -> int:
    """A port on 127.0.0.1 free right now for UDP and TCP both (`kind` is kept for callers that name it).

    Drawn at random from `FREE_PORTS`, not from the kernel's ephemeral range: there, anything binding
    port 0 (SIPp, a browser, another test's sockets) or an IVR's RTP range in another test could take
    it between this check and the IVR's bind, and the IVR would not start (seen in parallel runs)."""
    del kind
    for _ in range(500):
        port = random.randrange(FREE_PORTS.start, FREE_PORTS.stop)
        port -= port % 2 if even else 0
        if port in BROWSER_BLOCKED_PORTS or port in _GIVEN:  # 6566, 6665-6697: a desk there is an error page
            continue  # and a port handed out already may not be bound yet (an agent's SIPp, the IVR's port)
        try:
            for sock_kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                with socket.socket(socket.AF_INET, sock_kind) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        _GIVEN.append(port)
        return port
    raise RuntimeError("no free port found")


# SIPp's media ports: apart from the free ports (SIP, HTTP), baresip's RTP (10000-20000), the IVRs' RTP
# (30000 and up), the ephemeral ports and 5060/6000 (SIP's and SIPp's defaults)
SIPP_MEDIA_PORTS = worker_share(range(2000, 5000))
_GIVEN_MEDIA: collections.deque[int] = collections.deque(maxlen=100)  # the runs sipp_media_port handed out last


def sipp_media_port() -> int:
    """`-mp P` for a SIPp: P even with P .. P + 3 free, as SIPp binds them all (RTP and RTCP, and its
    rtp_stream video pair at P + 2: on another SIPp's SIP port that made one exit 254). Never a run handed
    out lately: a test's two SIPps, started one after the other, once got overlapping runs (errno 98)."""
    for _ in range(500):
        port = random.randrange(SIPP_MEDIA_PORTS.start + SIPP_MEDIA_PORTS.start % 2, SIPP_MEDIA_PORTS.stop - 4, 2)
        if any(abs(port - given) < 4 for given in _GIVEN_MEDIA):
            continue
        try:
            for p in range(port, port + 4):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        _GIVEN_MEDIA.append(port)
        return port
    raise RuntimeError("no free run of SIPp media ports found")


# --- PostgreSQL ------------------------------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@dataclass
class PgServer:
    """A throw-away PostgreSQL cluster on 127.0.0.1, owned by the test session."""

    bindir: Path
    datadir: Path
    port: int
    log: Path
    as_user: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.log), "-w", *args],
            check=True, capture_output=True, timeout=60,
        )

    def start(self) -> None:
        opts = f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.datadir} -c fsync=off"
        self._ctl("-o", opts, "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgServer]:
    bindir = _pg_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL binaries not found: scripts/bootstrap.sh installs Debian's postgresql")
        pytest.skip("PostgreSQL not installed (scripts/bootstrap.sh installs it)")
    base = Path(tempfile.mkdtemp(prefix="ivr-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(base, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    datadir = base / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres", "-A", "trust"],
                   check=True, capture_output=True, timeout=120)
    server = PgServer(bindir, datadir, free_port(socket.SOCK_STREAM), base / "server.log", as_user)
    server.start()
    try:
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(postgres: PgServer) -> Iterator[str]:
    """A fresh, empty database on the session's PostgreSQL server."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    name = f"t{os.getpid()}_{time.monotonic_ns()}"
    admin = create_engine(postgres.url, isolation_level="AUTOCOMMIT", poolclass=NullPool)  # survives server restarts
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield postgres.url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


# --- the CRM's customers --------------------------------------------------------------


def load_customers(tmp: Path, db_url: str, csv_text: str) -> None:
    """Import customers from CSV text into the CRM at db_url (migrated first), as ops would before a start."""
    from crm_bridge.customers import import_customers
    from crm_bridge.db import make_engine, migrate

    path = tmp / "customers.csv"
    path.write_text(csv_text, encoding="utf-8")
    engine = make_engine(db_url)
    try:
        migrate(engine)
        assert import_customers(engine, path) == csv_text.strip().count("\n")
    finally:
        engine.dispose()


# --- the IVR as a process -----------------------------------------------------------


@dataclass
class IvrProcess:
    proc: subprocess.Popen[str]
    port: int
    db_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM twice: drain, then without waiting for calls (test teardown)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return -9
        return self.proc.returncode


def write_ivr_config(
    tmp: Path, *, sip_port: int, db_url: str, ring_seconds: float = 1, extra: str = "", general: str = ""
) -> Path:
    rtp_min = random.randrange(30000, 39600, 2)  # its own 400 ports, apart from the free ports and SIPp's media
    # The suite runs on several workers on two cores: an event loop starved for 100 ms (the
    # overload guard's default) says more about the machine than the IVR. Tests of overload
    # control set their own limits; the others should not see 503 for it.
    lag = "max_loop_lag_ms = 3000\n"
    if "max_loop_lag_ms" in extra:
        pass
    elif "[limits]\n" in extra:
        extra = extra.replace("[limits]\n", "[limits]\n" + lag, 1)
    else:
        extra = f"[limits]\n{lag}" + extra
    # Recording (on by default in sip.conf) is off unless a test's config has a [recording] section: the
    # notice before the agent would shift the timings the other end-to-end tests' SIPp scenarios are cut to.
    # Recordings go to the test's own directory, never the worktree's var/.
    where = f"directory = {tmp / 'recordings'}\n"
    if "[recording]\n" not in extra:
        extra += f"\n[recording]\nenabled = no\n{where}"
    elif "directory =" not in extra:
        extra = extra.replace("[recording]\n", "[recording]\n" + where, 1)
    conf = tmp / "sip.conf"
    conf.write_text(
        f"""[general]
bind = 127.0.0.1
port = {sip_port}
rtp_port_min = {rtp_min}
rtp_port_max = {rtp_min + 400}
ring_seconds = {ring_seconds}
numbers = 95000
{general}
[prompts]
cache_dir = {PROMPT_CACHE}
recorded_dir = {tmp / "recorded"}
[database]
url = {db_url}
[log]
level = info
{extra}
""",
        encoding="utf-8",
    )
    return conf


def start_ivr(tmp: Path, conf: Path, sip_port: int, db_url: str) -> IvrProcess:
    log_path = tmp / "ivr.log"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_ivr.py"), "--config", str(conf)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=open(log_path, "w"), text=True,  # noqa: SIM115
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "ready on" in line:
            return IvrProcess(proc, sip_port, db_url, log_path)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"IVR did not start:\n{log_path.read_text()}")


@pytest.fixture
def namespaces_alone() -> Iterator[None]:
    """One test at a time, across the suite's parallel workers, among those that make network or mount
    namespaces, nftables rules or overlays (ip netns, unshare): run side by side they were seen to disturb
    each other (a namespace's processes outliving it, audio not crossing a namespaced bridge)."""
    import fcntl

    with open(Path(tempfile.gettempdir()) / "hotline-tests-namespaces.lock", "w") as lock:  # noqa: SIM117
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def ivr_factory(tmp_path: Path) -> Iterator:
    started: list[IvrProcess] = []

    def make(*, ring_seconds: float = 1, db_url: str | None = None, extra: str = "", general: str = "") -> IvrProcess:
        sip_port = free_port()
        db_url = db_url or f"sqlite:///{tmp_path / 'crm.db'}"
        conf = write_ivr_config(tmp_path, sip_port=sip_port, db_url=db_url, ring_seconds=ring_seconds, extra=extra,
                                general=general)
        ivr = start_ivr(tmp_path, conf, sip_port, db_url)
        started.append(ivr)
        return ivr

    yield make
    for ivr in started:
        ivr.stop()


# --- SIPp --------------------------------------------------------------------------


@dataclass
class SippRun:
    proc: subprocess.Popen[str]
    scenario: str
    log_file: Path
    err_file: Path
    started: float

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def logged(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""

    def errors(self) -> str:
        return self.err_file.read_text() if self.err_file.exists() else ""


def sipp(tmp: Path, scenario: str, ivr_port: int, *, service: str = "95000", calls: int = 1,
         callers: str = "callers.csv", extra: tuple[str, ...] = (), timeout_s: int = 90,
         local_ip: str = "127.0.0.1") -> SippRun:
    """Start SIPp with one of loadtest/scenarios against the IVR on loopback."""
    if shutil.which("sipp") is None:
        pytest.fail("sipp not installed: scripts/bootstrap.sh installs Debian's sip-tester")
    name = f"{scenario}-{time.monotonic_ns()}"
    log_file, err_file = tmp / f"{name}.log", tmp / f"{name}.err"
    cmd = [
        "sipp", f"127.0.0.1:{ivr_port}", "-sf", str(SCENARIOS / f"{scenario}.xml"),
        "-inf", str(SCENARIOS / callers), "-s", service, "-m", str(calls),
        "-i", local_ip, "-p", str(free_port()), "-mi", local_ip, "-mp", str(sipp_media_port()),
        "-nostdin", "-timeout", f"{timeout_s}s", "-timeout_error",
        "-trace_logs", "-log_file", str(log_file), "-trace_err", "-error_file", str(err_file), *extra,
    ]
    proc = subprocess.Popen(cmd, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    return SippRun(proc, scenario, log_file, err_file, time.monotonic())
