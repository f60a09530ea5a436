"""Two IVR workers behind Kamailio's dispatcher, one CRM in PostgreSQL, on loopback.

The layout of loadtest/kamailio/: calls spread over the workers round-robin;
a worker that drains (SIGTERM) leaves the rotation and calls keep succeeding
on the other; every call has its row in the shared CRM.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, IvrProcess, free_port, sipp, start_ivr, write_ivr_config
from .test_e2e_faults import outcomes
from .test_e2e_sip import finished

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]
KAMAILIO = shutil.which("kamailio") or "/usr/sbin/kamailio"
MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules"


@pytest.fixture
def workers(tmp_path: Path, pg_url: str) -> Iterator[list[IvrProcess]]:
    started = []
    for n in (1, 2):
        home = tmp_path / f"worker{n}"
        home.mkdir()
        port = free_port()
        conf = write_ivr_config(home, sip_port=port, db_url=pg_url, extra="[limits]\ntrusted = 127.0.0.1\n")
        started.append(start_ivr(home, conf, port, pg_url))
    yield started
    for ivr in started:
        ivr.stop()


@pytest.fixture
def balancer(tmp_path: Path, workers: list[IvrProcess]) -> Iterator[int]:
    if not os.path.exists(KAMAILIO):
        if os.environ.get("CI"):
            pytest.fail("kamailio not installed: scripts/bootstrap.sh installs Debian's kamailio")
        pytest.skip("kamailio not installed (scripts/bootstrap.sh installs it)")
    port = free_port()
    dslist = tmp_path / "dispatcher.list"
    dslist.write_text("".join(f"1 sip:127.0.0.1:{w.port}\n" for w in workers))
    log = open(tmp_path / "kamailio.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [KAMAILIO, "-DD", "-E", "-f", str(ROOT / "loadtest" / "kamailio" / "kamailio.cfg"), "-L", MODULES,
         "-A", f"LISTEN=udp:127.0.0.1:{port}", "-A", f'DSLIST="{dslist}"', "-P", str(tmp_path / "kamailio.pid")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    time.sleep(3)  # up, and a first OPTIONS round to the workers
    assert proc.poll() is None, (tmp_path / "kamailio.log").read_text()
    yield port
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(10)


def invited(ivr: IvrProcess) -> int:
    return len(re.findall(r"event='invited'", ivr.log()))


def test_calls_spread_over_two_workers_and_survive_one_draining(workers, balancer, pg_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first, second = workers
    finished(sipp(tmp_path, "short_call", balancer, calls=20, extra=("-d", "1000", "-r", "10")), 60)
    split = (invited(first), invited(second))
    assert sum(split) == 20 and min(split) >= 5, f"round-robin over the two workers: {split}"

    first.proc.send_signal(signal.SIGTERM)  # drains: OPTIONS and INVITEs get 503, then it exits
    assert first.proc.wait(30) == 0
    run = sipp(tmp_path, "short_call", balancer, calls=10, extra=("-d", "1000", "-r", "5"))
    finished(run, 60)
    assert invited(second) == split[1] + 10, "the remaining worker took every new call"
    time.sleep(1.0)
    assert outcomes(pg_url) == Counter({"caller_hangup": 30}), "one CRM, every call in it"
