"""A port already taken stops the start with a message that names the listener."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, free_port, write_ivr_config

pytestmark = pytest.mark.e2e


def start_and_fail(conf: Path) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "run_ivr.py"), "--config", str(conf)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr[-2000:]
    return done.stderr


@pytest.mark.parametrize("kind", ["udp", "tcp"])
def test_a_sip_port_in_use_names_the_sip_listener(tmp_path: Path, kind: str) -> None:
    port = free_port(socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", port))
        if kind == "tcp":
            held.listen()
        log = start_and_fail(write_ivr_config(tmp_path, sip_port=port, db_url=f"sqlite:///{tmp_path / 'crm.db'}"))
    assert f"SIP {kind.upper()} 127.0.0.1:{port}: " in log and ("in use" in log.lower() or "could not bind" in log)


def test_a_metrics_port_in_use_names_the_metrics_listener(tmp_path: Path) -> None:
    metrics = free_port(socket.SOCK_STREAM)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", metrics))
        held.listen()
        log = start_and_fail(write_ivr_config(tmp_path, sip_port=free_port(), db_url=f"sqlite:///{tmp_path / 'crm.db'}",
                                              extra=f"[metrics]\nport = {metrics}\n"))
    assert f"metrics HTTP 127.0.0.1:{metrics}: Address already in use" in log
