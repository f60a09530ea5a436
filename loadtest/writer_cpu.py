#!/usr/bin/env python3
"""CPU per call of the CRM writer's batches, without SIP: the records a short signalling call makes.

    .venv/bin/python loadtest/writer_cpu.py --calls 6000 --batch 30

A short call (INVITE, 200, ACK, BYE at once) hands the writer four RecordCall updates and six
RecordEvents (invited, identified, answered, prompt, caller_bye, ended). This applies such records,
`--batch` calls' worth at a time (about what the 50 ms linger gathers at 600 calls/s), to a fresh
SQLite CRM (migrated, WAL) through `CrmWriter._apply`, the writer thread's work, and prints the
process CPU time per call. No journal, no thread: the figure is the database side alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import logging  # noqa: E402

import structlog  # noqa: E402

from crm_bridge.db import make_engine, migrate  # noqa: E402
from crm_bridge.records import CallRecord, RecordCall, RecordEvent  # noqa: E402
from crm_bridge.writer import CrmWriter  # noqa: E402


def call_records(n: int, at: datetime) -> list[RecordCall | RecordEvent]:
    cid = f"{n}-bench@127.0.0.1"
    base = CallRecord(cid, "13800000001", "95000", at, tier="junior")
    answered = CallRecord(cid, "13800000001", "95000", at, answered_at=at, greeting="normal", tier="junior")
    ended = CallRecord(cid, "13800000001", "95000", at, answered_at=at, ended_at=at, greeting="normal",
                       outcome="caller_hangup", hangup_by="caller", tier="junior")
    return [RecordCall(base), RecordEvent(cid, at, "invited", "from 13800000001"), RecordCall(base),
            RecordEvent(cid, at, "identified", "tier=junior"), RecordCall(answered), RecordEvent(cid, at, "answered"),
            RecordEvent(cid, at, "prompt", "greeting"), RecordEvent(cid, at, "caller_bye"), RecordCall(ended),
            RecordEvent(cid, at, "ended", "outcome=caller_hangup hangup_by=caller")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=6000)
    p.add_argument("--batch", type=int, default=30, help="calls a batch")
    p.add_argument("--rounds", type=int, default=3)
    opts = p.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    results = []
    for _ in range(opts.rounds):
        work = Path(tempfile.mkdtemp(prefix="writer-cpu-"))
        engine = make_engine(f"sqlite:///{work / 'crm.db'}")
        migrate(engine)
        writer = CrmWriter(engine, worker="bench")
        at = datetime.now(UTC)
        seq, used = 0, 0.0
        for first in range(0, opts.calls, opts.batch):
            batch = []
            for n in range(first, min(opts.calls, first + opts.batch)):
                for record in call_records(n, at + timedelta(milliseconds=n)):
                    seq += 1
                    batch.append((seq, record))
            t0 = time.process_time()
            writer._apply(batch)
            used += time.process_time() - t0
        engine.dispose()
        results.append(1e6 * used / opts.calls)
    print(json.dumps({"us_per_call": [round(r, 1) for r in results], "median": round(statistics.median(results), 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
