"""Call recording: each bridge of a recorded call is one stereo file, the caller left and the agent right.

Theory of operation. When a caller and an agent are bridged (`ivr.bridge`),
`Recorder.attach` (one of `Engine.bridge_hooks`) adds a `RecordingTap` to the
bridge if the call flow says the call is recorded (`[recording]`,
`ivr.callflow.RecordingRule`). The tap runs on the 20 ms media clock: every
tick it gets both parties' frames in step as µ-law (`ivr.bridge.UlawTap`:
what the phones sent, not decoded on the clock), silence where a side sent
nothing, so a 5-minute talk is a 5-minute file. It only appends them to two
byte buffers and, once a second, hands the second of audio to the writer's
queue; it never touches a file.

One writer thread per process (`RecordingWriter`), not one per call, drains
that queue: it decodes and interleaves the two channels, encodes (PCM 16-bit, G.711
A-law or µ-law WAV, or FLAC through `soundfile`) and writes. Each file is
written under a temporary name (`….wav.part`); when the bridge ends the
header gets its sizes, the SHA-256 of the finished bytes is computed in that
thread, and the file is renamed to its final name. The queue is bounded
(`QUEUE_SECONDS` of audio across all calls): if the writer falls that far
behind, a second is lost and counted — written as silence in its place, so
the file keeps the call's timing, and the row says how many — never the
media clock held up.

Names come from the call's SIP Call-ID and the time only, never from
anything the caller sends (caller ID, display name):
`YYYY/MM/DD/HHMMSS-<12 hex of SHA-256(Call-ID)>-<n>.wav`, UTC, `n` the
bridge of the call (a REFER transfer makes a new bridge, so the second
agent's part is `-2`). Every file has a `recordings` row through the CRM's
durable write path (`crm_bridge.writer`): `recording` when opened,
`complete` with size, duration and checksum, or `failed` with the error
(full disk, unwritable directory) — the call itself goes on either way.

Pausing for sensitive data: the agent presses `[recording] pause_code`
(*48) on the phone during the call, or the desk's button (agent commands
`pause_recording` / `resume_recording`). While paused the tap writes
silence, so the file keeps the call's timing; each span is a
`recording_pauses` row (who, when, offset in the file, how long).

After a file is complete, every function in `RecordingWriter.completed_hooks`
is called with its `Finished` description, in the writer thread: the place
for the conversation characteristics (`run_ivr.Analyser` hands the file to a
child process) and anything else that needs the finished file. A hook must
return quickly (it delays the next files' writing); one that raises is
logged, the others still run.

At start-up, `recover_interrupted` marks this worker's rows still
`recording` (the process died while writing) `interrupted`; their `.part`
files stay as they are, so nothing half-written passes as complete.
"""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
import structlog
from aiortp.codecs import get_codec
from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from crm_bridge.models import Recording
from crm_bridge.records import RecordRecording, RecordRecordingPause
from ivr.bridge import G711_FRAME, ULAW_SILENCE

if TYPE_CHECKING:
    from ivr.config import RecordingConfig
    from ivr.leg import Leg
    from ivr.metrics import Metrics

log = structlog.get_logger("ivr.recording")

SAMPLE_RATE = 8000
FRAME_SECONDS = 0.020
CHUNK_FRAMES = 50  # the tap hands the writer one second of a call at a time
QUEUE_SECONDS = 3000  # seconds of audio (all calls) the writer may be behind: 300 calls x 10 s, about 48 MB
EXTENSIONS = {"wav-pcm16": ".wav", "wav-alaw": ".wav", "wav-ulaw": ".wav", "flac": ".flac"}
_SILENT_SECOND = ULAW_SILENCE * CHUNK_FRAMES
# µ-law byte -> 16-bit sample: the writer decodes a second of a side with one numpy lookup
_ULAW_PCM = np.frombuffer(get_codec(0).decode(bytes(range(256))), "<i2")
_WAV_TAGS = {"wav-pcm16": (1, 16), "wav-alaw": (6, 8), "wav-ulaw": (7, 8)}  # WAVE format tag, bits per sample
_G711_PAYLOAD = {"wav-alaw": 8, "wav-ulaw": 0}  # the RTP codec whose encoder does it (aiortp)


# Where the recorder's CRM rows go: `crm_bridge.writer.CrmWriter.submit` (on the event loop).
Submit = Callable[[RecordRecording | RecordRecordingPause], None]


def file_name(sip_call_id: str, at: datetime, n: int, fmt: str) -> str:
    """The file's path under the directory, from the call's id and the time alone (UTC)."""
    digest = hashlib.sha256(sip_call_id.encode("utf-8", "surrogateescape")).hexdigest()[:12]
    at = at.astimezone(UTC)
    return f"{at:%Y/%m/%d}/{at:%H%M%S}-{digest}-{n}{EXTENSIONS[fmt]}"


def wav_header(fmt: str, frames: int) -> bytes:
    """A WAV header for `frames` stereo sample frames at 8 kHz (PCM 16-bit, or G.711 with its fact chunk)."""
    tag, bits = _WAV_TAGS[fmt]
    block = 2 * bits // 8
    data = frames * block
    if tag == 1:
        fmt_chunk = struct.pack("<4sIHHIIHH", b"fmt ", 16, tag, 2, SAMPLE_RATE, SAMPLE_RATE * block, block, bits)
        extra = b""
    else:  # non-PCM: an 18-byte fmt chunk (cbSize 0) and a fact chunk with the sample count
        fmt_chunk = struct.pack("<4sIHHIIHHH", b"fmt ", 18, tag, 2, SAMPLE_RATE, SAMPLE_RATE * block, block, bits, 0)
        extra = struct.pack("<4sII", b"fact", 4, frames)
    body = b"WAVE" + fmt_chunk + extra + struct.pack("<4sI", b"data", data)
    return struct.pack("<4sI", b"RIFF", len(body) + data) + body


@dataclass(frozen=True, slots=True)
class Finished:
    """A complete recording, as the `completed_hooks` get it (in the writer thread)."""

    path: Path  # the final file
    relative: str  # as in the recordings row
    sip_call_id: str
    agent_number: str | None
    format: str
    duration_s: float
    size_bytes: int
    sha256: str
    paused: tuple[tuple[float, float], ...] = ()  # spans paused for sensitive data: (start, end) seconds in the file


@dataclass(slots=True)
class _Pause:
    by: str
    at: datetime
    frame: int


class RecordingTap:
    """One bridge's recording on the media clock: buffers both sides, a second at a time to the writer."""

    def __init__(self, writer: RecordingWriter, row: RecordRecording, on_closed: Callable[[RecordingTap], None]
                 ) -> None:
        self.writer = writer
        self.row = row
        self.on_closed = on_closed
        self.caller = bytearray()
        self.agent = bytearray()
        self.frames = 0  # ticks recorded: the file's length in 20 ms
        self.pause: _Pause | None = None
        self.pauses: list[RecordRecordingPause] = []
        self.dropped = 0  # seconds the writer was too far behind to take (silence in the file instead)
        self.closed = False
        self.last_span: RecordRecordingPause | None = None
        # the writer thread's state of the file
        self.file: BinaryIO | None = None
        self.sound: Any = None  # a soundfile.SoundFile for FLAC
        self.written_frames = 0
        self.error: str | None = None

    # --- the media clock -------------------------------------------------------------

    def frame(self, caller: bytes, agent: bytes) -> None:
        """One tick of both sides in µ-law (`ivr.bridge.UlawTap`)."""
        if self.pause is not None:
            caller = agent = ULAW_SILENCE  # the paused span is silence: the file keeps the call's timing
        self.caller += caller
        self.agent += agent
        self.frames += 1
        if len(self.caller) >= CHUNK_FRAMES * G711_FRAME:
            self._hand_over()

    def _hand_over(self, last: bool = False) -> None:
        if self.caller:
            self.writer.audio(self, bytes(self.caller), bytes(self.agent), last=last)
            self.caller.clear()
            self.agent.clear()

    def close(self) -> None:
        """The bridge ended (hang-up, transfer): the rest goes to the writer, which finishes the file."""
        if self.closed:
            return
        self.closed = True
        self._hand_over(last=True)
        self.last_span = self.resume(datetime.now(UTC))  # still paused at the hang-up: the span ends here
        self.writer.finish(self)
        self.on_closed(self)

    # --- pausing (the event loop) -----------------------------------------------------

    @property
    def offset_s(self) -> float:
        return round(self.frames * FRAME_SECONDS, 3)

    def pause_now(self, by: str, at: datetime) -> bool:
        if self.pause is not None or self.closed:
            return False
        self.pause = _Pause(by, at, self.frames)
        return True

    def resume(self, at: datetime) -> RecordRecordingPause | None:
        pause, self.pause = self.pause, None
        if pause is None:
            return None
        span = RecordRecordingPause(self.row.path, pause.by, pause.at, round(pause.frame * FRAME_SECONDS, 3),
                                    round((self.frames - pause.frame) * FRAME_SECONDS, 3))
        self.pauses.append(span)
        return span


class RecordingWriter:
    """The one thread that writes every recording of the process; see the module docstring."""

    def __init__(self, directory: Path, fmt: str, report: Callable[[RecordingTap, Finished | None], None],
                 metrics: Metrics | None = None, queue_seconds: int = QUEUE_SECONDS) -> None:
        if fmt == "flac":
            import soundfile  # type: ignore[import-untyped]  # noqa: F401 — refuse at start, not at the first call

        self.directory = directory
        self.format = fmt
        self.report = report  # called in the writer thread when a file is finished (None: it failed)
        self.metrics = metrics
        self.limit = queue_seconds
        self.completed_hooks: list[Callable[[Finished], None]] = []
        self._queue: queue.SimpleQueue[tuple[str, RecordingTap, bytes, bytes, float] | None] = queue.SimpleQueue()
        self.queued = 0  # seconds of audio put (the event loop alone adds)
        self.taken = 0  # ... and taken (the writer thread alone adds): depth = queued - taken
        self.max_depth = 0
        self.dropped = 0  # seconds of audio dropped because the writer was `limit` behind
        self.bytes_written = 0
        self.files_complete = 0
        self.errors = 0
        self._encode = get_codec(_G711_PAYLOAD[fmt]).encode if fmt in _G711_PAYLOAD else None
        self._thread = threading.Thread(target=self._run, name="recording-writer", daemon=True)

    @property
    def depth(self) -> int:
        """Seconds of audio queued and not yet written."""
        return self.queued - self.taken

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, finish the files, stop the thread."""
        self._queue.put(None)
        self._thread.join(timeout)

    # --- the event loop's side ------------------------------------------------------

    def open(self, tap: RecordingTap) -> None:
        self._queue.put(("open", tap, b"", b"", time.monotonic()))

    def audio(self, tap: RecordingTap, caller: bytes, agent: bytes, *, last: bool = False) -> None:
        """A second of a call's audio (`last`: the rest at its end, never dropped: it may be shorter)."""
        depth = self.depth
        if depth >= self.limit and not last:
            # the writer is `limit` seconds behind: this second is lost, and written as silence in its
            # place (a marker, not the audio, is queued), so the file keeps the call's timing
            self.dropped += 1
            tap.dropped += 1
            if self.metrics is not None:
                self.metrics.recording_errors.labels("queue_full").inc()
            self._queue.put(("gap", tap, b"", b"", time.monotonic()))
            return
        self.queued += 1
        self.max_depth = max(self.max_depth, depth + 1)
        self._queue.put(("audio", tap, caller, agent, time.monotonic()))

    def finish(self, tap: RecordingTap) -> None:
        self._queue.put(("finish", tap, b"", b"", time.monotonic()))

    # --- the writer thread --------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            kind, tap, caller, agent, put_at = item
            try:
                if kind == "open":
                    self._open(tap)
                elif kind == "audio":
                    self.taken += 1
                    if self.metrics is not None:
                        self.metrics.recording_queue_delay.observe(time.monotonic() - put_at)
                    self._write(tap, caller, agent)
                elif kind == "gap":
                    self._write(tap, _SILENT_SECOND, _SILENT_SECOND)
                else:
                    self._finish(tap)
            except Exception as exc:  # noqa: BLE001 — one broken file must not stop the others
                self._failed(tap, exc)
                if kind == "finish":
                    self.report(tap, None)

    def _path(self, tap: RecordingTap) -> Path:
        return self.directory / tap.row.path

    def _open(self, tap: RecordingTap) -> None:
        part = self._path(tap).with_name(self._path(tap).name + ".part")
        try:
            part.parent.mkdir(parents=True, exist_ok=True)
            if self.format == "flac":
                import soundfile

                tap.sound = soundfile.SoundFile(part, "w", SAMPLE_RATE, 2, "PCM_16", format="FLAC")
            else:
                tap.file = open(part, "wb")  # noqa: SIM115 — open for the call's length, closed in _finish
                tap.file.write(wav_header(self.format, 0))  # the sizes are written when the file is finished
        except OSError as exc:
            self._failed(tap, exc)

    def _write(self, tap: RecordingTap, caller: bytes, agent: bytes) -> None:
        if tap.error is not None:
            return  # failed already: the rest of the call is not recorded
        samples = np.empty((len(caller), 2), dtype="<i2")
        samples[:, 0] = _ULAW_PCM[np.frombuffer(caller, np.uint8)]  # left: the caller
        samples[:, 1] = _ULAW_PCM[np.frombuffer(agent, np.uint8)]  # right: the agent
        try:
            if tap.sound is not None:
                tap.sound.write(samples)
            else:
                assert tap.file is not None
                pcm = samples.tobytes()
                tap.file.write(self._encode(pcm) if self._encode is not None else pcm)
        except OSError as exc:
            self._failed(tap, exc)
            return
        tap.written_frames += len(samples)

    def _finish(self, tap: RecordingTap) -> None:
        if tap.error is not None:
            self.report(tap, None)
            return
        final = self._path(tap)
        part = final.with_name(final.name + ".part")
        try:
            if tap.sound is not None:
                tap.sound.close()
            else:
                assert tap.file is not None
                tap.file.seek(0)
                tap.file.write(wav_header(self.format, tap.written_frames))
                tap.file.flush()
                os.fsync(tap.file.fileno())
                tap.file.close()
            digest = hashlib.sha256()
            with open(part, "rb") as f:  # the bytes on disk, before the name says the file is whole
                while block := f.read(1 << 20):
                    digest.update(block)
            size = part.stat().st_size
            part.rename(final)
        except OSError as exc:
            self._failed(tap, exc)
            self.report(tap, None)
            return
        # the pauses are complete: the tap's close (on the loop) took the last one before queueing this finish
        paused = tuple((p.offset_s, round(p.offset_s + p.duration_s, 3)) for p in tap.pauses)
        done = Finished(final, tap.row.path, tap.row.sip_call_id, tap.row.agent_number, self.format,
                        round(tap.written_frames / SAMPLE_RATE, 3), size, digest.hexdigest(), paused)
        self.files_complete += 1
        self.bytes_written += size
        if self.metrics is not None:
            self.metrics.recordings.labels("complete").inc()
            self.metrics.recording_bytes.labels(self.format).inc(size)
            self.metrics.recording_seconds.labels(self.format).inc(done.duration_s)
        self.report(tap, done)
        for hook in tuple(self.completed_hooks):
            try:
                hook(done)
            except Exception:
                log.exception("recording_hook_failed", hook=getattr(hook, "__qualname__", repr(hook)),
                              call_id=tap.row.sip_call_id, path=tap.row.path)

    def _failed(self, tap: RecordingTap, exc: BaseException) -> None:
        """A write error: logged, counted, the file closed as it is (still `.part`); the call goes on."""
        if tap.error is not None:
            return
        tap.error = f"{type(exc).__name__}: {exc}"[:500]
        self.errors += 1
        kind = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        log.error("recording_write_failed", call_id=tap.row.sip_call_id, path=tap.row.path, error=tap.error)
        if self.metrics is not None:
            self.metrics.recording_errors.labels(kind.lower().replace(" ", "_")[:40]).inc()
            self.metrics.recordings.labels("failed").inc()
        for handle in (tap.sound, tap.file):
            if handle is not None:
                try:
                    handle.close()
                except Exception:  # noqa: BLE001, S110 — the disk that failed the write may fail the close too
                    pass


class Recorder:
    """The event loop's side: starts a tap per recorded bridge, pauses it, and records its rows in the CRM."""

    def __init__(self, config: RecordingConfig, submit: Submit, *, worker: str | None = None,
                 metrics: Metrics | None = None, call_soon_threadsafe: Callable[..., Any] | None = None) -> None:
        self.config = config
        self.submit = submit
        self.worker = worker
        self.metrics = metrics
        self._call_soon_threadsafe = call_soon_threadsafe
        self._results: queue.SimpleQueue[tuple[RecordingTap, Finished | None]] = queue.SimpleQueue()
        self.writer = RecordingWriter(config.directory, config.format, self._report, metrics)
        self.active: dict[str, RecordingTap] = {}  # agent number -> the recording of their bridge
        self._bridges: dict[str, int] = {}  # sip_call_id -> bridges recorded so far (the file's n)

    @property
    def completed_hooks(self) -> list[Callable[[Finished], None]]:
        """Run in the writer thread with each complete file (see the module docstring)."""
        return self.writer.completed_hooks

    def start(self) -> None:
        self.writer.start()

    def close(self, timeout: float = 30.0) -> None:
        """After the engine stopped (every bridge closed): finish the files and submit their rows.

        On the event loop, where rows are submitted; the wait for the writer thread may be done first
        off the loop (`await asyncio.to_thread(recorder.writer.close)`), which leaves only the rows here.
        """
        self.writer.close(timeout)
        self._collect()

    # --- Engine.bridge_hooks -----------------------------------------------------------

    def attach(self, leg: Leg) -> None:
        """A caller and an agent were bridged: record it if the flow says so."""
        bridge, agent = leg.bridge, leg.agent
        if bridge is None or agent is None or not leg.flow.recorded:
            return
        record = leg.flow.record
        n = self._bridges.get(leg.call_id, 0) + 1
        if len(self._bridges) > 10_000:  # calls long gone; each call's count is only needed while it is up
            self._bridges.clear()
        self._bridges[leg.call_id] = n
        now = datetime.now(UTC)
        row = RecordRecording(
            path=file_name(leg.call_id, now, n, self.config.format), sip_call_id=leg.call_id,
            agent_number=agent.agent, seat_group=record.seat_group if record is not None else None,
            format=self.config.format, channels=2, started_at=now, state="recording", ivr_worker=self.worker)
        self.submit(row)  # journaled before the file exists: a crash finds the row and marks it
        tap = RecordingTap(self.writer, row, self._closed)
        self.writer.open(tap)
        bridge.add_ulaw_tap(tap)
        self.active[agent.agent] = tap
        leg.log.info("recording_started", path=row.path, agent=agent.agent, n=n)
        if agent.rtp is not None:
            relay = agent.rtp.on_dtmf
            keys = _FeatureCode(self.config.pause_code)

            def on_agent_digit(digit: str, duration: int) -> None:
                if keys.feed(digit):
                    self.toggle(agent.agent, agent.agent, "phone")
                if relay is not None:
                    relay(digit, duration)

            agent.rtp.on_dtmf = on_agent_digit

    def _closed(self, tap: RecordingTap) -> None:
        if self.active.get(tap.row.agent_number or "") is tap:
            del self.active[tap.row.agent_number or ""]
        if tap.last_span is not None:
            self.submit(tap.last_span)
        log.info("recording_ended", call_id=tap.row.sip_call_id, path=tap.row.path, seconds=tap.offset_s)

    # --- pause and resume ------------------------------------------------------------------

    def toggle(self, agent: str, by: str, via: str) -> None:
        tap = self.active.get(agent)
        if tap is None:
            return
        self.command(agent, "resume_recording" if tap.pause is not None else "pause_recording", by, via)

    def command(self, agent: str, command: str, by: str, via: str = "desk") -> bool:
        """`pause_recording` / `resume_recording` of the agent's bridge; False when nothing is recorded."""
        tap = self.active.get(agent)
        if tap is None:
            log.info("recording_command_ignored", agent=agent, command=command, reason="no recorded call")
            return False
        now = datetime.now(UTC)
        if command == "pause_recording":
            if tap.pause_now(by, now):
                log.info("recording_paused", call_id=tap.row.sip_call_id, agent=agent, by=by, via=via,
                         offset_s=tap.offset_s)
        else:
            span = tap.resume(now)
            if span is not None:
                self.submit(span)
                log.info("recording_resumed", call_id=tap.row.sip_call_id, agent=agent, by=by, via=via,
                         offset_s=tap.offset_s, paused_s=span.duration_s)
        return True

    # --- results from the writer thread ----------------------------------------------------

    def _report(self, tap: RecordingTap, done: Finished | None) -> None:
        self._results.put((tap, done))
        if self._call_soon_threadsafe is not None:
            try:
                self._call_soon_threadsafe(self._collect)
            except RuntimeError:  # the loop is closed: close() collects
                pass

    def _collect(self) -> None:
        while True:
            try:
                tap, done = self._results.get_nowait()
            except queue.Empty:
                return
            ended = datetime.now(UTC)
            if done is not None:
                lost = (f"the writer fell behind: {tap.dropped} s of audio lost, silence in their place"
                        if tap.dropped else None)
                row = replace(tap.row, state="complete", ended_at=ended, duration_s=done.duration_s,
                              size_bytes=done.size_bytes, sha256=done.sha256, error=lost)
                log.info("recording_complete", call_id=tap.row.sip_call_id, path=tap.row.path,
                         seconds=done.duration_s, bytes=done.size_bytes)
            else:
                row = replace(tap.row, state="failed", ended_at=ended,
                              duration_s=round(tap.written_frames / SAMPLE_RATE, 3), error=tap.error)
            self.submit(row)


class _FeatureCode:
    """The agent's keys during the call, matched against the pause code (*48): any other key starts over."""

    def __init__(self, code: str) -> None:
        self.code = code
        self.typed = ""

    def feed(self, digit: str) -> bool:
        self.typed = (self.typed + digit)[-len(self.code):]
        if self.typed == self.code:
            self.typed = ""
            return True
        return False


def recover_interrupted(db: Engine, directory: Path, worker: str | None) -> int:
    """At start: this worker's recordings still `recording` (its previous run died) become `interrupted`.

    `worker` None: every such row (one IVR owns the CRM). Their `.part` files
    are left as they are, under that name, and the row says so. Returns the rows marked.
    """
    query = select(Recording.id, Recording.path, Recording.sip_call_id).where(Recording.state == "recording")
    if worker is not None:
        query = query.where(Recording.ivr_worker == worker)
    marked = 0
    with Session(db) as s, s.begin():
        for row_id, path, call_id in s.execute(query).all():
            part = directory / (path + ".part")
            kept = f"; the partial file is kept as {path}.part ({part.stat().st_size} bytes)" if part.exists() else ""
            s.execute(update(Recording).where(Recording.id == row_id, Recording.state == "recording").values(
                state="interrupted", error=f"the IVR stopped while this file was written{kept}"))
            marked += 1
            log.warning("recording_interrupted", call_id=call_id, path=path, part_kept=bool(kept))
    return marked
