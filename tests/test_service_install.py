"""The service install: scripts/install-service.sh, the units of contrib/systemd, run as they would be.

There is no running systemd here, so the install runs in a mount namespace of
its own where /etc, /opt, /var and /run are overlays on a tmpfs: the script installs
to its real default paths (/opt/hotline, /etc/hotline, /var/lib/hotline,
/etc/systemd/system), creates the real `hotline` user, and nothing of it is
left on the machine when the namespace ends. `systemd-analyze verify` checks the
installed units offline, and each service's ExecStart= (as the unit says it,
%i filled in) is run as the service user with the unit's sandbox approximated:
every mount read-only but ReadWritePaths=, a private /tmp.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port, sipp

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("namespaces_alone")]  # see conftest.namespaces_alone
UNITS = ("hotline-ivr@.service", "hotline-desk.service", "hotline-report.service", "hotline-report.timer",
         "hotline-retention.service", "hotline-retention.timer", "hotline-backup.service", "hotline-backup.timer")


@dataclass
class Sandbox:
    """A mount namespace with /etc, /opt, /var and /run writable in a throw-away overlay."""

    holder: subprocess.Popen[bytes]
    scratch: Path

    def cmd(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-m", "--", *argv]

    def run(self, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(*argv), capture_output=True, text=True, timeout=timeout)

    def read(self, path: str) -> str:
        return self.run("cat", path).stdout


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    if os.geteuid() != 0:
        pytest.skip("the install test needs root (a mount namespace, useradd)")
    for tool in ("unshare", "nsenter", "runuser", "setpriv", "strace", "systemd-analyze"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    scratch = tmp_path / "overlay"
    scratch.mkdir()
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "600"])
    box = Sandbox(holder, scratch)
    try:
        layers = " && ".join(
            f"mkdir -p {scratch}/{d}/upper {scratch}/{d}/work && "
            f"mount -t overlay overlay -o lowerdir=/{d},upperdir={scratch}/{d}/upper,workdir={scratch}/{d}/work /{d}"
            for d in ("etc", "opt", "var", "run"))
        for _ in range(50):  # unshare has set up the namespace once it runs sleep
            if os.readlink(f"/proc/{holder.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"):
                break
            time.sleep(0.02)
        made = box.run("sh", "-c", f"mount -t tmpfs tmpfs {scratch} && {layers}")
        if made.returncode != 0:
            pytest.skip(f"cannot overlay /etc, /opt, /var, /run in a mount namespace: {made.stderr.strip()}")
        yield box
    finally:
        holder.kill()
        holder.wait()


def unit_command(unit_text: str, instance: str = "1") -> tuple[list[str], dict[str, str], str, list[str]]:
    """ExecStart=, Environment=, WorkingDirectory= and ReadWritePaths= of a unit, %i filled in."""
    argv: list[str] = []
    env: dict[str, str] = {}
    cwd = "/"
    writable: list[str] = []
    for line in unit_text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or line.startswith("#"):
            continue
        value = value.replace("%i", instance)
        if key == "ExecStart":
            argv = shlex.split(value)
        elif key == "Environment":
            env.update(item.split("=", 1) for item in shlex.split(value))  # type: ignore[misc]
        elif key == "WorkingDirectory":
            cwd = value
        elif key == "ReadWritePaths":
            writable += value.split()
    return argv, env, cwd, writable


def as_service(box: Sandbox, unit: str, log: Path, instance: str = "1") -> subprocess.Popen[bytes]:
    """Start a unit's ExecStart= as its User= in a sandbox like the unit's (ProtectSystem=strict, PrivateTmp).

    The command runs under `strace -f -c`, whose count of system calls by name
    goes to /var/lib/hotline/syscalls-<unit>.txt when it exits: what the
    unit's SystemCallFilter= must allow (`syscalls_used`).
    """
    text = box.read(f"/etc/systemd/system/{unit}")
    argv, env, cwd, writable = unit_command(text, instance)
    user = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("User="))
    assert argv and writable, f"{unit}: no ExecStart= or ReadWritePaths="
    # every mount read-only (ProtectSystem=strict), the writable paths bound writable again,
    # a private /tmp; then drop to the service user with no way back (NoNewPrivileges)
    keep = "|".join(["/(proc|sys|dev)(/.*)?", *(re.escape(w) for w in writable)])
    strict = (
        "set -e; "
        + "".join(f"mount --bind {shlex.quote(w)} {shlex.quote(w)}; " for w in writable)
        + f"findmnt -rno TARGET | grep -vxE {shlex.quote(keep)} | sort -r | while read -r m; do "
        'mount -o remount,bind,ro "$m" 2>/dev/null || true; done; '
        + "mount -t tmpfs -o mode=1777 tmpfs /tmp; "
        + f"cd {shlex.quote(cwd)}; exec runuser -u {user} -- setpriv --no-new-privs "
        + f"strace -f -qq -c -o {shlex.quote(writable[0])}/syscalls-{unit}.txt env "
        + " ".join(shlex.quote(f"{k}={v}") for k, v in env.items()) + " "
        + " ".join(shlex.quote(a) for a in argv)
    )
    cmd = box.cmd("unshare", "--mount", "--propagation", "private", "sh", "-c", strict)
    return subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115


def syscall_group(name: str) -> set[str]:
    """A system call or a systemd group of them (`@system-service`), expanded as systemd-analyze lists it."""
    if not name.startswith("@"):
        return {name}
    listed = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True, check=True)
    found: set[str] = set()
    for line in listed.stdout.splitlines()[1:]:
        line = line.strip()
        if line and not line.startswith("#"):
            found |= syscall_group(line)
    return found


def syscall_filter(unit_text: str) -> set[str]:
    """The system calls a unit allows: its first SystemCallFilter= is the allow list, then each line adds or, with ~,
    removes (systemd.exec: in order, the first line deciding the kind of list)."""
    allowed: set[str] = set()
    for line in unit_text.splitlines():
        if line.startswith("SystemCallFilter="):
            value = line.split("=", 1)[1]
            names = set().union(*(syscall_group(n) for n in value.lstrip("~").split()))
            allowed = allowed - names if value.startswith("~") else allowed | names
    return allowed


def syscalls_used(box: Sandbox, unit: str) -> set[str]:
    """The system calls strace counted for a unit's run (as_service)."""
    table = box.read(f"/var/lib/hotline/syscalls-{unit}.txt")
    rows = [line.split() for line in table.splitlines()]
    return {row[-1] for row in rows if len(row) >= 5 and row[0][0].isdigit() and row[-1].isidentifier()
            and row[-1] != "total"}


def options_answer(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    """The IVR's answer to a SIP OPTIONS on 127.0.0.1:port, asked until it comes."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.5)
        here = s.getsockname()[1]
        n = 0
        while time.monotonic() < deadline and proc.poll() is None:
            n += 1
            s.sendto((f"OPTIONS sip:95000@127.0.0.1:{port} SIP/2.0\r\n"
                      f"Via: SIP/2.0/UDP 127.0.0.1:{here};branch=z9hG4bKsvc{n}\r\n"
                      f"From: <sip:probe@127.0.0.1>;tag=p{n}\r\nTo: <sip:95000@127.0.0.1>\r\n"
                      f"Call-ID: svc-{n}@127.0.0.1\r\nCSeq: {n} OPTIONS\r\nMax-Forwards: 70\r\n"
                      "Content-Length: 0\r\n\r\n").encode(), ("127.0.0.1", port))
            try:
                return s.recv(4096).decode(errors="replace")
            except TimeoutError:
                continue
    return ""


def http_status(url: str, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return int(r.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            time.sleep(0.3)
    return 0


def uid_of(proc_pid: int, exe_part: str) -> int | None:
    """The real uid of the process below `proc_pid` whose command line holds exe_part."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,uid=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 3) for line in out.splitlines()]
    children: dict[int, list[tuple[int, int, str]]] = {}
    for pid, ppid, uid, args in (r for r in rows if len(r) == 4):
        children.setdefault(int(ppid), []).append((int(pid), int(uid), args))
    todo = [proc_pid]
    while todo:
        for pid, uid, args in children.get(todo.pop(), []):
            if exe_part in args and args.split()[0].endswith(("/python", "/python3")):
                return uid
            todo.append(pid)
    return None


def service_venv(box: Sandbox) -> Path:
    """A virtualenv the service user can run: the system's Python 3.11 with this test run's packages.

    The test run's own interpreter may live under /root (pyenv), which the
    service user cannot enter, nor could a unit with ProtectHome=yes; building
    a fresh virtualenv from requirements.txt would take minutes. So: a venv of
    /usr/bin/python3 (same minor version, same ABI) that imports the packages
    already installed here.
    """
    venv = "/opt/hotline-test-venv"
    python = "/usr/bin/python3"
    minor = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    if not Path(python).exists() or not Path(python).resolve().name == minor:
        pytest.skip(f"needs a /usr/bin/python3 that is {minor}, like the test run's")
    made = box.run(python, "-m", "venv", "--without-pip", venv)
    assert made.returncode == 0, made.stderr
    site = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
    # a checkout under /tmp (CI's may be) would be hidden by the unit's private /tmp: show its
    # packages at a path of their own in the sandbox's mount namespace, which the units see too
    shown = "/opt/hotline-test-site-packages"
    bound = box.run("sh", "-c", f"mkdir -p {shown} && mount --bind {shlex.quote(site)} {shown}")
    assert bound.returncode == 0, bound.stderr
    pth = f"{venv}/lib/{minor}/site-packages/hotline-test.pth"
    box.run("sh", "-c", f"echo {shown} > {pth}")
    return Path(venv)


def test_install_twice_verifies_the_units_and_runs_ivr_and_desk_as_the_service_user(
        sandbox: Sandbox, tmp_path: Path) -> None:
    venv = service_venv(sandbox)
    first = sandbox.run(str(ROOT / "scripts/install-service.sh"), "--venv", str(venv))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "creating system user hotline" in first.stdout
    assert "creating /etc/hotline/ivr-1.conf" in first.stdout
    # a second run replaces code and units, keeps the user and the configs (ops' edits survive)
    sandbox.run("python3", str(ROOT / "scripts/conf_set.py"), "/etc/hotline/ivr-1.conf", "general.company=第二次")
    again = sandbox.run(str(ROOT / "scripts/install-service.sh"), "--venv", str(venv))
    assert again.returncode == 0, again.stdout + again.stderr
    assert "creating" not in again.stdout, again.stdout
    assert "company = 第二次" in sandbox.read("/etc/hotline/ivr-1.conf")
    assert sandbox.run("id", "-u", "hotline").returncode == 0
    assert "/var/lib/hotline/ivr-1/outbox" in sandbox.read("/etc/hotline/ivr-1.conf")
    assert sandbox.run("test", "-f", "/etc/logrotate.d/hotline").returncode == 0
    # the configs hold the agents' secrets: root writes them, the service only reads them
    perms = sandbox.run("stat", "-c", "%a %U %G", "/etc/hotline/ivr-1.conf").stdout.split()
    assert perms == ["640", "root", "hotline"]

    # systemd-analyze verify: syntax, directives, ExecStart binaries, User= (silent when all is well)
    unit_dir = "/etc/systemd/system"
    names = [u.replace("@.", "@1.") for u in UNITS]
    verify = sandbox.run("systemd-analyze", "verify", *(f"{unit_dir}/{n}" for n in names))
    assert verify.returncode == 0 and not verify.stdout.strip() and not verify.stderr.strip(), \
        verify.stdout + verify.stderr
    # the sandbox as systemd rates it: exposure 2.0 or less ("OK" goes to 4.9) for every service
    for name in (n for n in names if n.endswith(".service")):
        rated = sandbox.run("systemd-analyze", "security", "--offline=true", "--threshold=20", f"{unit_dir}/{name}")
        assert rated.returncode == 0, f"{name}: {rated.stdout.strip().splitlines()[-1:]}"
    ivr_unit = sandbox.read(f"{unit_dir}/hotline-ivr@.service")
    drain = 120  # sip.conf.example's [general] drain_seconds
    stop = next(int(line.split("=")[1]) for line in ivr_unit.splitlines() if line.startswith("TimeoutStopSec="))
    assert stop > drain and "KillSignal=SIGTERM" in ivr_unit and "Restart=on-failure" in ivr_unit

    # free ports instead of 5060/9102/8080: what ops would set in /etc/hotline
    sip_port, desk_port = free_port(), free_port(socket.SOCK_STREAM)
    conf_set = str(ROOT / "scripts/conf_set.py")
    sandbox.run("python3", conf_set, "/etc/hotline/ivr-1.conf", f"general.port={sip_port}", "metrics.port=0",
                "general.ring_seconds=0",
                "general.rtp_port_min=31000", "general.rtp_port_max=31100")
    sandbox.run("python3", conf_set, "/etc/hotline/sip.conf", f"desk.port={desk_port}")

    ivr_log, desk_log = tmp_path / "ivr.log", tmp_path / "desk.log"
    ivr = as_service(sandbox, "hotline-ivr@.service", ivr_log)
    desk = as_service(sandbox, "hotline-desk.service", desk_log)
    try:
        answer = options_answer(sip_port, ivr)
        assert answer.startswith("SIP/2.0 200"), ivr_log.read_text(errors="replace")[-3000:]
        assert http_status(f"http://127.0.0.1:{desk_port}/login") == 200, desk_log.read_text(errors="replace")[-3000:]
        hotline_uid = int(sandbox.run("id", "-u", "hotline").stdout)
        assert uid_of(ivr.pid, "run_ivr.py") == hotline_uid
        assert uid_of(desk.pid, "-m desk") == hotline_uid
        # what the service wrote is in its state directory, as the hotline user
        state = sandbox.run("find", "/var/lib/hotline", "-maxdepth", "2", "-printf", "%u %p\n").stdout
        assert "hotline /var/lib/hotline/hotline.db" in state and "hotline /var/lib/hotline/ivr-1/outbox" in state
        # a call, for the media and CRM paths under the system-call count
        call = sipp(tmp_path, "short_call", sip_port, extra=("-d", "1000"), timeout_s=30)
        assert call.wait(60) == 0, call.errors()
        # the daily jobs, as their timers start them, beside the running IVR
        jobs = ("hotline-report.service", "hotline-backup.service")
        for job in jobs:
            run = as_service(sandbox, job, tmp_path / f"{job}.log")
            assert run.wait(timeout=120) == 0, (tmp_path / f"{job}.log").read_text(errors="replace")[-3000:]
        made = sandbox.run("find", "/var/lib/hotline/reports", "/var/lib/hotline/backups", "-type", "f").stdout
        assert "/var/lib/hotline/reports/report-" in made and "/manifest.json" in made, made
    finally:
        for proc in (ivr, desk):
            # the stop systemd would do: SIGTERM to the main process (KillMode=mixed), wait
            for pid in _service_pids(proc.pid):
                os.kill(pid, signal.SIGTERM)
        codes = [p.wait(timeout=30) for p in (ivr, desk)]
    # every system call the services made is one their SystemCallFilter= allows (a filtered one would
    # fail with EPERM under systemd); the run covered start-up, a call, the desk's page, both jobs, the drain
    for unit in ("hotline-ivr@.service", "hotline-desk.service", *jobs):
        used = syscalls_used(sandbox, unit)
        assert len(used) > 20, f"{unit}: strace counted {sorted(used)}"
        refused = used - syscall_filter(sandbox.read(f"{unit_dir}/{unit}"))
        assert not refused, f"{unit} makes system calls its SystemCallFilter= refuses: {sorted(refused)}"
    # the IVR drained (no calls) and exited 0: systemd would not restart it (Restart=on-failure)
    assert codes[0] == 0, ivr_log.read_text(errors="replace")[-3000:]
    lines = [json.loads(x) for x in ivr_log.read_text().splitlines() if x.startswith("{")]
    assert any(x.get("event") == "draining" and x.get("signal") == "SIGTERM" for x in lines), \
        "the IVR logs JSON lines to the journal and drains on SIGTERM"


def _service_pids(top: int) -> list[int]:
    """The Python processes below `top` (what systemd's main PID would be)."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()]
    found, todo = [], [top]
    while todo:
        parent = todo.pop()
        for pid, ppid, args in (r for r in rows if len(r) == 3):
            if int(ppid) == parent:
                todo.append(int(pid))
                if args.split()[0].endswith(("/python", "/python3")):  # not runuser, setpriv, strace, env
                    found.append(int(pid))
    return found


# --- the pieces the units and the installer rely on --------------------------------------------------


def test_conf_set_replaces_the_commented_default_in_its_own_section_only() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    from conf_set import set_key

    lines = ["[general]\n", "; the port\n", "port = 5060\n", ";tls_port = 5061\n",
             "[desk]\n", ";port = 8080                 ; a comment\n", "[metrics]\n", "port = 9102\n"]
    out = set_key(set_key(lines, "desk", "port", "8081"), "general", "port", "5062")
    assert out == ["[general]\n", "; the port\n", "port = 5062\n", ";tls_port = 5061\n",
                   "[desk]\n", "port = 8081\n", "[metrics]\n", "port = 9102\n"]
    # a key the section lacks goes under its header; a section the file lacks at the end
    assert set_key(out, "metrics", "bind", "10.0.0.1")[7] == "bind = 10.0.0.1\n"
    assert set_key(out, "cluster", "worker", "ivr-1")[-2:] == ["\n[cluster]\n", "worker = ivr-1\n"]


def test_report_html_name_takes_the_day_reported(tmp_path: Path) -> None:
    from crm_bridge.__main__ import main as crm_cli

    out = tmp_path / "reports" / "report-{date}.html"
    code = crm_cli(["--config", str(tmp_path / "none.conf"), "--db-url", f"sqlite:///{tmp_path / 'crm.db'}",
                    "report", "--date", "2026-11-26", "--html", str(out)])
    assert code == 0
    assert (tmp_path / "reports" / "report-2026-11-26.html").exists()


def unit_with_dropins(box: Sandbox, unit: str, base_dir: str = "/lib/systemd/system") -> str:
    """A unit as systemd reads it: its file, then its drop-ins in /etc/systemd/system/UNIT.d/ by name."""
    text = box.read(f"{base_dir}/{unit}")
    listed = box.run("sh", "-c", f"ls /etc/systemd/system/{unit}.d/*.conf 2>/dev/null").stdout.split()
    return text + "".join("\n" + box.read(path) for path in sorted(listed))


def expanded_command(box: Sandbox, unit_text: str) -> tuple[list[str], str]:
    """The last ExecStart= with Environment= and EnvironmentFile= (files win) expanded, and User=."""
    env: dict[str, str] = {}
    files: dict[str, str] = {}
    argv: list[str] = []
    user = "root"
    for line in unit_text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or line.startswith("#"):
            continue
        if key == "Environment":
            env.update(item.split("=", 1) for item in shlex.split(value))  # type: ignore[misc]
        elif key == "EnvironmentFile":
            text = box.read(value.lstrip("-"))
            files.update(x.split("=", 1) for x in text.splitlines() if "=" in x and not x.startswith("#"))  # type: ignore[misc]
        elif key == "ExecStart":
            argv = shlex.split(value)
        elif key == "User":
            user = value
    env.update(files)
    expand = re.compile(r"\$\{(\w+)\}|\$(\w+)")
    return [expand.sub(lambda m: env.get(m.group(1) or m.group(2), ""), a) for a in argv], user


@pytest.mark.postgres
def test_two_workers_install_behind_the_balancer_and_take_calls_through_it(
        sandbox: Sandbox, tmp_path: Path, pg_url: str) -> None:
    """--workers 2: two worker units, Debian's kamailio.service with the project's balancer; calls go round-robin."""
    if not Path("/usr/sbin/kamailio").exists():
        pytest.skip("kamailio not installed (scripts/bootstrap.sh installs it)")
    venv = service_venv(sandbox)
    done = sandbox.run(str(ROOT / "scripts/install-service.sh"), "--venv", str(venv), "--workers", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sandbox.read("/etc/hotline/dispatcher.list").splitlines()[1:] == \
        ["1 sip:127.0.0.1:5061", "1 sip:127.0.0.1:5062"]
    verify = sandbox.run("systemd-analyze", "verify", "kamailio.service", "hotline-ivr@2.service")
    assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), verify.stdout + verify.stderr

    # free ports for this run, the PostgreSQL CRM both workers share
    conf_set = str(ROOT / "scripts/conf_set.py")
    ports = [free_port() for _ in range(3)]
    for n in (1, 2):
        sandbox.run("python3", conf_set, f"/etc/hotline/ivr-{n}.conf", f"general.port={ports[n]}", "metrics.port=0",
                    "general.ring_seconds=0", f"general.rtp_port_min={31000 + 200 * n}",
                    f"general.rtp_port_max={31100 + 200 * n}", f"database.url={pg_url}")
    sandbox.run("sh", "-c", "printf '1 sip:127.0.0.1:%s\\n1 sip:127.0.0.1:%s\\n' "
                f"{ports[1]} {ports[2]} > /etc/hotline/dispatcher.list && "
                f"sed -i 's/^LISTEN=.*/LISTEN=udp:127.0.0.1:{ports[0]}/' /etc/hotline/balancer.env")

    workers = [as_service(sandbox, "hotline-ivr@.service", tmp_path / f"ivr{n}.log", str(n)) for n in (1, 2)]
    kamailio = None
    try:
        for n, proc in zip((1, 2), workers, strict=True):
            assert options_answer(ports[n], proc).startswith("SIP/2.0 200"), (tmp_path / f"ivr{n}.log").read_text()
        # the balancer as its unit runs it (forking, as user kamailio, pid file in its RuntimeDirectory)
        argv, user = expanded_command(sandbox, unit_with_dropins(sandbox, "kamailio.service"))
        assert "/opt/hotline/kamailio/kamailio.cfg" in argv and f"LISTEN=udp:127.0.0.1:{ports[0]}" in argv
        sandbox.run("install", "-d", "-o", user, "-g", user, "-m", "0770", "/run/kamailio")
        log = tmp_path / "kamailio.log"
        with log.open("wb") as out:  # a file, not a pipe: the daemon's children keep it open
            started = subprocess.run(sandbox.cmd("runuser", "-u", user, "--", *argv), stdout=out,
                                     stderr=subprocess.STDOUT, timeout=30)
        assert started.returncode == 0, log.read_text(errors="replace")
        kamailio = int(sandbox.read("/run/kamailio/kamailio.pid"))
        assert options_answer(ports[0], workers[0]).startswith("SIP/2.0 200"), "the balancer answers for itself"
        time.sleep(2.5)  # its first OPTIONS round to the workers
        calls = sipp(tmp_path, "short_call", ports[0], calls=4, extra=("-d", "500", "-r", "4"), timeout_s=30)
        assert calls.wait(60) == 0, calls.errors()
    finally:
        if kamailio is not None:  # its main process takes its children down with it
            os.kill(kamailio, signal.SIGTERM)
            for _ in range(50):
                if not Path(f"/proc/{kamailio}").exists():
                    break
                time.sleep(0.1)
        for proc in workers:
            for pid in _service_pids(proc.pid):
                os.kill(pid, signal.SIGTERM)
        for proc in workers:
            proc.wait(timeout=30)
    from sqlalchemy import create_engine, text

    engine = create_engine(pg_url)
    with engine.connect() as conn:
        split = dict(conn.execute(text("SELECT ivr_worker, count(*) FROM calls GROUP BY ivr_worker")).all())
    engine.dispose()
    assert split == {"ivr-1": 2, "ivr-2": 2}, f"round-robin over the installed workers: {split}"


@pytest.mark.postgres
def test_workers_started_together_migrate_an_empty_postgres_crm_once(pg_url: str) -> None:
    """Two workers' units started at once both migrate at start-up: one waits for the other, neither fails."""
    import threading

    from sqlalchemy import inspect

    from crm_bridge.db import make_engine, migrate

    engines = [make_engine(pg_url) for _ in range(3)]
    errors: list[BaseException] = []

    def start(engine) -> None:  # type: ignore[no-untyped-def]
        try:
            migrate(engine)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    try:
        assert not errors, errors
        assert "calls" in inspect(engines[0]).get_table_names()
    finally:
        for e in engines:
            e.dispose()
