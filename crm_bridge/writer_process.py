"""The CRM writer as a separate process, tailing the outbox journal.

The in-process writer thread (`crm_bridge.writer.CrmWriter`) applies the
records in the IVR's own interpreter, so every batch it builds competes with
the event loop for the GIL: about a tenth of the loop's time at 400 calls/s,
felt as lateness on the 20 ms media clock. `CrmWriterProcess` keeps the IVR's
side of the path exactly as it was — `submit` journals the records of a loop
iteration in one write(2) — and leaves everything else to a child process
(`python -m crm_bridge.writer_process`) with its own interpreter and GIL:

    IVR process                                   writer process
    submit -> Outbox.append_many (write(2))  ~~>  JournalTail.poll (read(2) of the segment)
                                                  CrmWriter._apply_with_retry (batch + checkpoint,
                                                                               one transaction)
    supervisor thread  <-- status lines (stdout) --  {"applied": seq, "deliveries": n}

Nothing changes in what "durable" means: a record is the IVR's once its line
is in the journal; the child applies it with the outbox checkpoint in the same
transaction, so a child killed mid-batch (its transaction rolls back) is
restarted and carries on from the checkpoint: every record once, none lost.

The child reads the journal and never writes it: the IVR process stays the
one owner of the directory (its `lock`), appends, rotates, and deletes the
segments the child reports applied. Two children never apply one journal at
once: each holds `applier.lock` (flock) while it runs, so a child left behind
by a killed IVR finishes before the next one starts.

Control, on the child's stdin, one line each: the settings (JSON, first);
`stop N`: apply up to sequence number N, then exit 0 (the drain); `quit`:
stop retrying a database that is down and exit (what is left stays in the
journal for the next start). End of file on stdin means the IVR is gone: the
child applies what the journal holds (for at most `ORPHAN_GRACE_S` if the
database is down) and exits. SIGINT and SIGTERM are ignored: a terminal's
Ctrl-C or a service manager signalling the whole group must not stop the
writer before the IVR has drained its calls into the journal.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import structlog
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_when_event_set, wait_exponential

from crm_bridge.models import OutboxCheckpoint
from crm_bridge.outbox import Outbox, OutboxError, Record, decode
from crm_bridge.writer import CrmWriter

log = structlog.get_logger(__name__)

ROOT = Path(__file__).resolve().parent.parent
APPLIER_LOCK = "applier.lock"
POLL_S = 0.01  # how often an idle child looks for new journal lines: a read(2) that returns nothing
ORPHAN_GRACE_S = 30.0  # an orphaned child gives a database that is down this long, then leaves the rest
RESTART_MIN_S = 0.5
RESTART_MAX_S = 30.0
START_ATTEMPTS = 3  # children that die before they are ready, at start-up, before the IVR gives up
HEALTHY_S = 60.0  # a child that ran this long resets the restart backoff
_SUFFIX = ".jsonl"


# --- the IVR's side ------------------------------------------------------------------------------


class CrmWriterProcess(CrmWriter):
    """`CrmWriter` whose applying happens in a child process that tails the journal.

    Same API for the IVR: `submit`, `flush`, `recover`, `start`, `close`,
    `depth`, `written`, `failures`. `written` and `depth` come from the child's
    status lines (`written` counts the records applied since this process
    started, replayed ones included, as the thread's does). A supervisor
    thread follows the child; if it dies, the death is logged and the child
    restarted after a backoff (0.5 s doubling to 30 s), while `submit` keeps
    journaling as if nothing happened.
    """

    def __init__(
        self,
        engine: Engine,
        outbox: Outbox | None,
        *,
        batch_max: int = 1000,
        linger: float = 0.05,
        webhook: bool = False,
        on_deliveries: Callable[[], None] | None = None,
        worker: str | None = None,
        log_level: str = "info",
        log_format: str = "console",
        followup_on_survey: bool = False,
    ) -> None:
        if outbox is None:
            raise ValueError("the CRM writer process tails the outbox journal: give it an Outbox")
        super().__init__(engine, outbox, batch_max=batch_max, linger=linger, webhook=webhook,
                         on_deliveries=on_deliveries, worker=worker, followup_on_survey=followup_on_survey)
        self.journal: Outbox = outbox
        self.settings: dict[str, Any] = {
            "url": engine.url.render_as_string(hide_password=False), "outbox": str(outbox.directory.resolve()),
            "batch_max": batch_max, "linger": linger, "webhook": webhook, "worker": worker,
            "log_level": log_level, "log_format": log_format, "followup_on_survey": followup_on_survey,
        }
        self.restarts = 0
        self.pid: int | None = None  # the running child's
        self._proc: subprocess.Popen[str] | None = None
        self._state = threading.Condition()
        self._checkpoint: int | None = None  # the database's, as the child last reported it
        self._base: int | None = None  # the checkpoint when this process started its first child
        # records journaled before this writer (by an earlier process): those past the checkpoint are a replay;
        # the ones submitted here are counted by `submitted`
        self._start_seq = outbox.last_seq
        self._replayed = 0
        self._stop_seq: int | None = None  # set by close: the child applies up to here and exits
        self._quit = False
        self._wake = threading.Event()  # cuts a restart backoff short (close)
        self._supervisor = threading.Thread(target=self._supervise, name="crm-writer-supervisor", daemon=True)

    # --- the API --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._supervisor.ident is None:
            self._supervisor.start()

    @property
    def depth(self) -> int:
        """Records not yet in the database: journaled (or about to be) past the child's checkpoint."""
        return self.submitted + self._replayed - self.written

    def flush(self) -> None:
        """Journal what `submit` gathered; the child finds it there."""
        with self._flush_lock:
            records, self._pending = self._pending, []
            if records:
                self.journal.append_many(records)

    def recover(self) -> int:
        """Start the child and wait until it has applied what the journal held (the replay at start-up)."""
        self.flush()
        self.start()
        target = self.journal.last_seq
        with self._state:
            while self._checkpoint is None or self._checkpoint < target:
                if not self._supervisor.is_alive():
                    break
                if self._base is None and self.restarts >= START_ATTEMPTS:
                    self._quit = True
                    self._wake.set()
                    if self._proc is not None:
                        self._proc.kill()
                    raise OutboxError(
                        f"the CRM writer process exited {self.restarts + 1} times before it was ready (its errors "
                        "are logged above); [database] writer = thread applies the outbox inside the IVR instead")
                self._state.wait(0.5)
            replayed = self._replayed
        if replayed > 0:
            log.warning("crm_outbox_replayed", records=replayed, after_seq=self._base, stream=self.stream,
                        writer="process")
        return max(replayed, 0)

    def close(self, timeout: float = 30.0) -> int:
        """Apply everything journaled (the child exits when done), then stop. Returns the count left."""
        self.flush()
        with self._state:
            self._stop_seq = self.journal.last_seq
        self._wake.set()
        self._tell(f"stop {self._stop_seq}")
        if self._supervisor.ident is not None:
            self._supervisor.join(timeout)
            if self._supervisor.is_alive():  # the database is still down: leave the rest to the next start
                self._quit = True
                self._tell("quit")
                self._supervisor.join(5)
            if self._supervisor.is_alive() and self._proc is not None:
                self._proc.kill()  # mid-transaction at worst: rolled back, replayed at the next start
                self._supervisor.join(5)
        left = self.depth
        if left:
            log.warning("crm_records_deferred", count=left, reason="database unavailable at shutdown",
                        outbox=str(self.journal.directory), note="kept in the outbox; applied at the next start")
        self.journal.close()
        return left

    # --- the supervisor thread ----------------------------------------------------------------------

    def _tell(self, line: str) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None:
            return
        try:
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):  # it died meanwhile: the supervisor sees that
            pass

    def _spawn(self) -> subprocess.Popen[str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        proc = subprocess.Popen(
            [sys.executable, "-m", "crm_bridge.writer_process"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, close_fds=True,
        )
        assert proc.stdin is not None
        try:  # the settings go first, before close() may tell it anything
            proc.stdin.write(json.dumps(self.settings) + "\n")
            proc.stdin.flush()
        except OSError:  # died at once: the supervisor sees its exit
            pass
        self._proc = proc
        self.pid = proc.pid
        with self._state:
            stop = self._stop_seq
        if stop is not None:
            self._tell(f"stop {stop}")
        return proc

    def _supervise(self) -> None:
        attempt = 0
        while True:
            started = time.monotonic()
            proc = self._spawn()
            log.info("crm_writer_process_started", pid=proc.pid, restarts=self.restarts)
            assert proc.stdout is not None
            for line in proc.stdout:
                self._status(line)
            code = proc.wait()
            with self._state:
                self._state.notify_all()
                done = self._stop_seq is not None and code == 0
            if done or self._quit:
                log.info("crm_writer_process_stopped", pid=proc.pid, exit_code=code)
                return
            if time.monotonic() - started > HEALTHY_S:
                attempt = 0
            delay = 0.0 if self._stop_seq is not None else min(RESTART_MAX_S, RESTART_MIN_S * 2 ** attempt)
            attempt += 1
            log.error("crm_writer_process_died", pid=proc.pid, exit_code=code, restart_in_s=delay,
                      pending=self.depth, note="records keep being journaled; the next child replays them")
            self._wake.wait(delay)
            self.restarts += 1

    def _status(self, line: str) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            log.error("crm_writer_process_bad_status", line=line[:200])
            return
        if "retry" in msg:
            self.failures += 1
            return
        deliveries = False
        with self._state:
            if "ready" in msg:
                checkpoint = int(msg["ready"])
                if self._base is None:  # the first child: what the journal held past it is a replay
                    self._base = checkpoint
                    self._replayed = max(0, self._start_seq - checkpoint)
            elif "applied" in msg:
                checkpoint = int(msg["applied"])
                deliveries = bool(msg.get("deliveries"))
            else:
                return
            # closed segments it covers are deleted (by their owner, this process), before anyone waiting hears of it
            self.journal.applied(checkpoint)
            self._checkpoint = checkpoint
            if self._base is not None:
                self.written = checkpoint - self._base
            self._state.notify_all()
        if deliveries and self.on_deliveries is not None:
            self.on_deliveries()


# --- the child's side ------------------------------------------------------------------------------


def _line_seq(line: bytes) -> int:
    """A journal line's sequence number without decoding the rest (`encode` writes it first)."""
    if line.startswith(b'{"seq":'):
        return int(line[7:line.index(b",")])
    return decode(line)[0]


class JournalTail:
    """Reads an outbox directory's records after a sequence number, following appends and rotations.

    Only whole lines are taken: a line the IVR is still writing waits for its
    newline. The next segment's name is the next sequence number
    (`Outbox._rotate`), so once `<next_seq>.jsonl` exists the current segment
    is complete and the tail moves on.
    """

    def __init__(self, directory: Path, after: int) -> None:
        self.directory = directory
        self.next_seq = after + 1
        self._fd = -1
        self._buf = b""
        self._path: Path | None = None
        self._open_for(self.next_seq)

    def _open_for(self, seq: int) -> None:
        segments = sorted((int(p.stem), p) for p in self.directory.glob(f"*{_SUFFIX}") if p.stem.isdigit())
        before = [(first, path) for first, path in segments if first <= seq]
        if not before and not segments:
            return  # the IVR has not created its segment yet; poll tries again
        # (none before: a database that never saw the older, deleted segments; start at the oldest kept)
        path = before[-1][1] if before else segments[0][1]
        self._fd = os.open(path, os.O_RDONLY)
        self._path = path
        self._buf = b""

    def poll(self, limit: int) -> list[tuple[int, Record]]:
        """Up to `limit` records journaled since the last poll (none if nothing new)."""
        out: list[tuple[int, Record]] = []
        if self._fd < 0:
            self._open_for(self.next_seq)
            if self._fd < 0:
                return out
        while len(out) < limit:
            chunk = os.read(self._fd, 1 << 18)
            if not chunk:
                nxt = self.directory / f"{self.next_seq:012d}{_SUFFIX}"
                if self._buf or nxt == self._path or not nxt.exists():
                    return out
                os.close(self._fd)
                self._fd = -1
                self._open_for(self.next_seq)
                if self._fd < 0:
                    return out
                continue
            data = self._buf + chunk
            end = data.rfind(b"\n") + 1
            self._buf = data[end:]
            for line in data[:end].splitlines():
                if _line_seq(line) < self.next_seq:
                    continue  # applied before (the replay starts at the segment's first line)
                seq, record = decode(line)
                out.append((seq, record))
                self.next_seq = seq + 1
        return out

    def sync(self) -> None:
        """fsync the segment being read: what this batch holds is on the disk before the database has it."""
        if self._fd >= 0:
            try:
                os.fsync(self._fd)
            except OSError:
                pass

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _ChildWriter(CrmWriter):
    """The child's applier: the thread writer's batch and retry code, reporting retries to the IVR."""

    say: Callable[[dict[str, object]], None]

    def _log_retry(self, state: RetryCallState) -> None:
        super()._log_retry(state)
        self.say({"retry": state.attempt_number})


def _take_applier_lock(directory: Path) -> int:
    fd = os.open(directory / APPLIER_LOCK, os.O_RDWR | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log.warning("crm_writer_waiting", reason="an earlier writer process still applies this outbox",
                    outbox=str(directory))
        fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _checkpoint(engine: Engine, stream: str, give_up: threading.Event,
                say: Callable[[dict[str, object]], None]) -> int | None:
    """The database's checkpoint for `stream`, waiting out an outage; None if told to give up."""

    def retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.warning("crm_checkpoint_retry", attempt=state.attempt_number,
                    error=f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}" if exc else "")
        say({"retry": state.attempt_number})

    retrying = Retrying(retry=retry_if_exception_type(Exception), wait=wait_exponential(multiplier=0.2, max=10),
                        stop=stop_when_event_set(give_up), reraise=False, before_sleep=retry)
    try:
        for attempt in retrying:
            with attempt, Session(engine) as s:
                done = s.scalar(select(OutboxCheckpoint.seq).where(OutboxCheckpoint.stream == stream))
                return int(done or 0)
    except Exception:
        return None
    return None


class _Control:
    """What the IVR says on stdin, read by a thread so a batch being retried still hears it."""

    def __init__(self, stdin: IO[str], give_up: threading.Event) -> None:
        self.stop_at: int | None = None
        self.orphaned = False
        self.give_up = give_up
        threading.Thread(target=self._run, args=(stdin,), name="crm-writer-control", daemon=True).start()

    def _run(self, stdin: IO[str]) -> None:
        for line in stdin:
            word, _, arg = line.strip().partition(" ")
            if word == "stop":
                self.stop_at = int(arg)
            elif word == "quit":
                self.give_up.set()
        # end of file: the IVR is gone. Apply what it journaled, but not forever.
        self.orphaned = True
        timer = threading.Timer(ORPHAN_GRACE_S, self.give_up.set)
        timer.daemon = True
        timer.start()


def serve(settings: dict[str, Any], stdin: IO[str], status: IO[str]) -> int:
    from crm_bridge.db import make_engine  # the child's imports, not the IVR's

    def say(msg: dict[str, object]) -> None:
        try:
            status.write(json.dumps(msg) + "\n")
            status.flush()
        except (BrokenPipeError, OSError):
            give_up.set()  # the IVR is gone; what is journaled is applied by the next start

    directory = Path(settings["outbox"])
    give_up = threading.Event()
    control = _Control(stdin, give_up)
    lock = _take_applier_lock(directory)
    engine = make_engine(settings["url"])
    try:
        stream = (directory / "stream").read_text().strip()
    except OSError as exc:
        raise OutboxError(f"outbox directory {directory}: {exc.strerror or exc}") from exc
    deliveries = 0

    def delivered() -> None:
        nonlocal deliveries
        deliveries += 1

    writer = _ChildWriter(engine, None, batch_max=int(settings["batch_max"]), linger=float(settings["linger"]),
                          webhook=bool(settings["webhook"]), on_deliveries=delivered, worker=settings["worker"],
                          followup_on_survey=bool(settings.get("followup_on_survey", False)))
    writer.stream = stream
    writer.say = say
    writer._give_up = give_up
    done = _checkpoint(engine, stream, give_up, say)
    if done is None:
        return 1
    tail = JournalTail(directory, done)
    say({"ready": done})
    applied = done
    try:
        while not give_up.is_set():
            batch = tail.poll(writer.batch_max)
            if batch:
                # gather for up to `linger`: hundreds of tiny transactions a second become a few large ones
                deadline = time.monotonic() + writer.linger
                while len(batch) < writer.batch_max and control.stop_at is None and not control.orphaned:
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        break
                    time.sleep(min(POLL_S, wait))
                    batch += tail.poll(writer.batch_max - len(batch))
                tail.sync()
                if not writer._apply_with_retry(batch):
                    break
                applied = batch[-1][0]
                say({"applied": applied, "deliveries": deliveries})
                deliveries = 0
                continue
            if control.orphaned or (control.stop_at is not None and applied >= control.stop_at):
                break
            time.sleep(POLL_S)
    finally:
        tail.close()
        engine.dispose()
        os.close(lock)
    return 0 if not give_up.is_set() else 1


def main() -> int:
    # The IVR decides when this process stops (stdin); see the module docstring.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    status = os.fdopen(os.dup(1), "w")  # the status channel; anything else printed goes to stderr
    os.dup2(2, 1)
    first = sys.stdin.readline()
    if not first:
        return 0
    settings = json.loads(first)
    from ivr.logs import configure_logging

    configure_logging(settings["log_level"], settings["log_format"])
    structlog.contextvars.bind_contextvars(process="crm-writer")
    try:
        return serve(settings, sys.stdin, status)
    except OutboxError as exc:
        log.error("crm_writer_outbox_failed", reason=str(exc))
        return 3


if __name__ == "__main__":
    sys.exit(main())
