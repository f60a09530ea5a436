#!/usr/bin/env python3
"""Who holds the IVR process's GIL under signalling load: py-spy on one IVR, per thread and per package.

    .venv/bin/python loadtest/gil_share.py --writer thread  --cps 400 --seconds 20
    .venv/bin/python loadtest/gil_share.py --writer process --cps 400 --seconds 20

Starts an IVR (SQLite, ring_seconds 0, `[database] writer` as given), has
SIPp place INVITE/200/ACK/BYE calls at `--cps` for `--seconds`, and samples
the IVR process with `py-spy record --gil --threads --nonblocking` in the
middle of the run: each sample is the stack of the thread holding the GIL.
Prints the share of those samples per thread, and the share spent in the CRM
write path's two parts: the journal append (on the event loop) and the batches
applied to the database (`_apply_with_retry`), whichever thread ran them.
With `--writer process` the batches run in another interpreter, so they
should be gone from this one. With `--writer-process-too` the writer
process is sampled as well (its own GIL).

Only 127.0.0.1 is used; SIPp is bounded in calls and seconds.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, SCENARIOS, free_port  # noqa: E402  (loadtest/, run by path)

# where a sample is in the CRM write path: the journal append (on the event loop in both modes) and the
# batches applied to the database (the writer thread's, or the writer process's)
CRM_PARTS = {"journal append": "Outbox.append_many", "apply batches": "_apply_with_retry"}


def start(work: Path, writer: str, capacity: int) -> tuple[subprocess.Popen[str], int]:
    port, rtp = free_port(), 40000
    conf = work / "sip.conf"
    conf.write_text(
        f"[general]\nbind = 127.0.0.1\nport = {port}\nring_seconds = 0\nnumbers = 95000\n"
        f"rtp_port_min = {rtp}\nrtp_port_max = {rtp + 9999}\nmax_calls = 1000\n"
        f"[limits]\ntrusted = 127.0.0.1\nmax_invites_per_second = {capacity}\n"
        f"[prompts]\ncache_dir = {ROOT / 'var' / 'prompts'}\n"
        f"[database]\nurl = sqlite:///{work / 'crm.db'}\noutbox_dir = {work / 'outbox'}\nwriter = {writer}\n"
        "[log]\nlevel = warning\n",
        encoding="utf-8",
    )
    proc = subprocess.Popen([sys.executable, str(ROOT / "run_ivr.py"), "--config", str(conf)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=open(work / "ivr.log", "w"), text=True)  # noqa: SIM115
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "ready on" in line:
            return proc, port
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"the IVR did not start:\n{(work / 'ivr.log').read_text()}")


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--gil", "--threads",
         "--nonblocking", "--rate", "200", "--duration", str(int(seconds)), "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def shares(raw: Path) -> tuple[int, dict[str, float], dict[str, float]]:
    """(samples, share per thread, share per part of the CRM path) of a py-spy raw (collapsed) file."""
    per_thread: collections.Counter[str] = collections.Counter()
    parts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        thread = re.sub(r"^thread \(\d+\): ", "", stack.split(";", 1)[0])  # "thread (tid): name"
        per_thread[thread] += n
        total += n
        for part, marker in CRM_PARTS.items():
            if marker in stack:
                parts[part] += n
    return (total, {k: round(100 * v / max(1, total), 1) for k, v in per_thread.most_common()},
            {k: round(100 * parts[k] / max(1, total), 1) for k in CRM_PARTS})


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--writer", choices=("process", "thread"), default="process")
    p.add_argument("--cps", type=int, default=400)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--capacity", type=int, default=700)
    p.add_argument("--writer-process-too", action="store_true", help="also sample the writer process")
    opts = p.parse_args()
    if shutil.which("sipp") is None:
        raise SystemExit("sipp not installed (scripts/bootstrap.sh)")
    work = Path(tempfile.mkdtemp(prefix="ivr-gil-"))
    proc, port = start(work, opts.writer, opts.capacity)
    try:
        calls = int(opts.cps * opts.seconds)
        sipp = subprocess.Popen(
            ["sipp", f"127.0.0.1:{port}", "-sf", str(SCENARIOS / "signalling_call.xml"), "-d", "0",
             "-inf", str(SCENARIOS / "callers.csv"), "-s", "95000", "-m", str(calls), "-r", str(opts.cps),
             "-l", str(opts.cps * 4), "-i", "127.0.0.1", "-p", str(free_port()), "-nostdin",
             "-timeout", f"{int(opts.seconds) + 60}s"],
            cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        time.sleep(min(5.0, opts.seconds / 4))  # past the ramp-up
        window = opts.seconds / 2
        spies = [("ivr", record(proc.pid, window, work / "ivr.txt"))]
        if opts.writer_process_too:
            spies += [(f"writer process {c}", record(c, window, work / f"writer-{c}.txt")) for c in children(proc.pid)]
        for name, spy in spies:
            _, err = spy.communicate(timeout=window + 60)
            if spy.returncode != 0:
                print(f"py-spy on {name} failed: {err.decode(errors='replace')[-500:]}", file=sys.stderr)
        sipp.wait(opts.seconds + 90)
    finally:
        proc.terminate()
        proc.wait(60)
    print(f"writer = {opts.writer}, {opts.cps} calls/s, sampled {window:.0f} s (py-spy --gil: the GIL holder only)")
    for raw in sorted(work.glob("*.txt")):
        total, threads, parts = shares(raw)
        held = round(100 * total / (200 * int(window)), 1)  # 200 samples a second
        print(f"  {raw.stem}: GIL held {held} % of the time ({total} samples); of that, by thread {threads}, "
              f"by CRM part {parts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
