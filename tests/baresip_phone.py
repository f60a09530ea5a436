"""baresip 1.0.0 (Debian's package) as a headless phone for the end-to-end tests.

Each phone gets its own config directory: SIP on 127.0.0.1 only, G.711, audio
from a WAV file (aufile), no sound card and no audio player. It is driven
through two doors baresip itself offers:

* ctrl_tcp: netstring-framed JSON commands (`{"command": "dial", "params":
  "sip:…", "token": "…"}`) and, on the same connection, the UA's events
  (`CALL_ESTABLISHED`, `CALL_CLOSED`, `REGISTER_OK`, `REGISTER_FAIL` …);
* stdio: its keyboard. A digit key in a call is sent as RFC 4733
  telephone-event, which ctrl_tcp's long commands cannot do in 1.0.0.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MODULE_PATH = "/usr/lib/baresip/modules"


def require_baresip() -> str:
    """The baresip binary; missing is a failure in CI and a skip on a developer's machine."""
    binary = shutil.which("baresip")
    if binary is None or not Path(MODULE_PATH, "ctrl_tcp.so").exists():
        if os.environ.get("CI"):
            pytest.fail("baresip not installed: scripts/bootstrap.sh installs Debian's baresip")
        pytest.skip("baresip not installed (scripts/bootstrap.sh installs it)")
    return binary


def free_sip_port() -> int:
    """A port free for baresip's SIP: it binds UDP and TCP on it, and TLS (TCP) on the next one."""
    for _ in range(200):
        with contextlib.ExitStack() as stack:
            udp = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            try:
                for p in (port, port + 1):
                    tcp = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
                    tcp.bind(("127.0.0.1", p))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair found")


def silence_wav(path: Path, seconds: float = 60) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\0\0" * int(8000 * seconds))
    return path


@dataclass
class Baresip:
    """One running baresip; `events` keeps every ctrl_tcp event seen so far, in order."""

    proc: subprocess.Popen[bytes]
    home: Path
    sip_port: int
    ctrl: socket.socket
    events: list[dict[str, Any]] = field(default_factory=list)
    _buffer: bytes = b""

    def command(self, command: str, params: str = "") -> None:
        body = json.dumps({"command": command, "params": params, "token": command}).encode()
        self.ctrl.sendall(b"%d:%s," % (len(body), body))

    def key(self, keys: str) -> None:
        """Type on baresip's keyboard (stdio): digits in a call go out as RFC 4733 events."""
        assert self.proc.stdin is not None
        for k in keys:
            self.proc.stdin.write(k.encode())
            self.proc.stdin.flush()
            time.sleep(0.3)  # stdio releases a key after a moment; one digit per press

    def _read(self, timeout: float) -> None:
        self.ctrl.settimeout(timeout)
        try:
            data = self.ctrl.recv(65536)
        except TimeoutError:
            return
        if not data:
            raise AssertionError(f"baresip closed its control socket\n{self.log()}")
        self._buffer += data
        while b":" in self._buffer:
            size, _, rest = self._buffer.partition(b":")
            if len(rest) < int(size) + 1:
                break
            message = json.loads(rest[: int(size)])
            self._buffer = rest[int(size) + 1:]
            if message.get("event"):
                self.events.append(message)

    def wait_event(self, kind: str | tuple[str, ...], timeout: float = 20) -> dict[str, Any]:
        """The first event of this type, or of one of these types (already seen or arriving within the timeout)."""
        kinds = (kind,) if isinstance(kind, str) else kind
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["type"] in kinds:
                    return event
            if time.monotonic() > deadline:
                seen = [e["type"] for e in self.events]
                raise AssertionError(f"baresip: no {kind} within {timeout} s (saw {seen})\n{self.log()[-3000:]}")
            self._read(0.2)

    def log(self) -> str:
        return (self.home / "baresip.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                self.command("quit")
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.ctrl.close()
        if self.proc.stdin:
            self.proc.stdin.close()


def start_baresip(home: Path, account: str, config: str = "") -> Baresip:
    """Start baresip with `account` (one accounts line, e.g. `<sip:801@127.0.0.1:5060>;auth_pass=…`).

    `config`: more lines for its config file, e.g. `module srtp.so` for an account with `;mediaenc=srtp-mand`.
    """
    binary = require_baresip()
    home.mkdir(parents=True, exist_ok=True)
    sip_port, ctrl_port = free_sip_port(), free_sip_port()
    source = silence_wav(home / "silence.wav")
    (home / "config").write_text(
        f"""poll_method epoll
sip_listen 127.0.0.1:{sip_port}
net_interface 127.0.0.1
call_local_timeout 60
audio_source aufile,{source}
audio_alert aufile,{source}
audio_path /usr/share/baresip
module_path {MODULE_PATH}
module stdio.so
module g711.so
module aufile.so
module ctrl_tcp.so
module_tmp account.so
module_app menu.so
ctrl_tcp_listen 127.0.0.1:{ctrl_port}
{config}""",
        encoding="utf-8",
    )
    # the account is added over ctrl_tcp once connected, so its registration events are seen too
    (home / "accounts").write_text("", encoding="utf-8")
    # -s: the SIP trace goes to the log, which an assertion message shows
    proc = subprocess.Popen([binary, "-f", str(home), "-s"], cwd=home, stdin=subprocess.PIPE,
                            stdout=open(home / "baresip.log", "wb"), stderr=subprocess.STDOUT)  # noqa: SIM115
    deadline = time.monotonic() + 10
    while True:
        try:
            ctrl = socket.create_connection(("127.0.0.1", ctrl_port), timeout=1)
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                log = (home / "baresip.log").read_text(errors="replace")
                raise AssertionError(f"baresip did not start\n{log}") from None
            time.sleep(0.1)
            continue
        phone = Baresip(proc, home, sip_port, ctrl)
        phone.command("uanew", account)
        return phone
