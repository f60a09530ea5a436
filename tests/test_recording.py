"""Call recording without the network: the tap, the one writer thread, the files, their rows, pauses, failures."""

from __future__ import annotations

import errno
import hashlib
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import soundfile  # type: ignore[import-untyped]
import structlog
from aiortp.codecs import get_codec
from sqlalchemy import select
from sqlalchemy.orm import Session

from crm_bridge.db import make_engine, migrate
from crm_bridge.models import Recording
from crm_bridge.records import RecordRecording, RecordRecordingPause
from crm_bridge.writer import CrmWriter
from ivr.config import RecordingConfig
from ivr.metrics import Metrics
from ivr.recording import Recorder, file_name, recover_interrupted

FRAME_SAMPLES = 160
ULAW = get_codec(0)


def through_ulaw(frames: list[bytes]) -> np.ndarray:  # type: ignore[type-arg]
    """The samples of `frames` as a µ-law line carries them: what the file holds."""
    return np.frombuffer(ULAW.decode(ULAW.encode(b"".join(frames))), "<i2")


def tone(freq: float, frames: int, amplitude: int = 8000) -> list[bytes]:
    """`frames` 20 ms frames of a sine, as a caller or an agent would say them."""
    t = np.arange(frames * FRAME_SAMPLES) / 8000
    pcm = (amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2")
    return [pcm[i * FRAME_SAMPLES:(i + 1) * FRAME_SAMPLES].tobytes() for i in range(frames)]


class FakeRtp:
    def __init__(self) -> None:
        self.relayed: list[str] = []
        self.on_dtmf: Any = lambda digit, _duration: self.relayed.append(digit)


class FakeBridge:
    def __init__(self) -> None:
        self.taps: list[Any] = []

    def add_ulaw_tap(self, tap: Any) -> None:
        self.taps.append(tap)

    def tick(self, caller: bytes, agent: bytes) -> None:
        """One tick in which the caller and the agent said these 16-bit PCM frames (the tap gets µ-law)."""
        for tap in self.taps:
            tap.frame(ULAW.encode(caller), ULAW.encode(agent))

    def close(self) -> None:
        for tap in self.taps:
            tap.close()


def fake_leg(call_id: str = "abc@10.0.0.1", agent: str = "801", recorded: bool = True) -> Any:
    return SimpleNamespace(
        call_id=call_id, bridge=FakeBridge(), agent=SimpleNamespace(agent=agent, rtp=FakeRtp()),
        flow=SimpleNamespace(recorded=recorded, record=SimpleNamespace(seat_group="junior")),
        log=structlog.get_logger("test"),
    )


def make_recorder(tmp_path: Path, fmt: str = "wav-pcm16", directory: Path | None = None
                  ) -> tuple[Recorder, list[Any], Metrics]:
    rows: list[Any] = []
    metrics = Metrics()
    config = RecordingConfig(directory=directory or tmp_path / "rec", format=fmt)
    recorder = Recorder(config, rows.append, worker="w1", metrics=metrics)
    recorder.start()
    return recorder, rows, metrics


def finish(recorder: Recorder) -> None:
    recorder.close(10)


def final_row(rows: list[Any]) -> RecordRecording:
    return [r for r in rows if isinstance(r, RecordRecording)][-1]


def counter(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_bridge_is_one_stereo_file_caller_left_agent_right_in_step_with_silence_filled(tmp_path: Path) -> None:
    recorder, rows, metrics = make_recorder(tmp_path)
    leg = fake_leg()
    recorder.attach(leg)
    caller, agent = tone(440, 150), tone(1000, 150)
    for i in range(150):  # 3 s; the agent says nothing for the first second (the bridge gives silence)
        leg.bridge.tick(caller[i], agent[i] if i >= 50 else bytes(320))
    leg.bridge.close()
    finish(recorder)

    row = final_row(rows)
    assert rows[0].state == "recording" and row.state == "complete"
    path = tmp_path / "rec" / row.path
    assert path.exists() and not path.with_name(path.name + ".part").exists()
    data, rate = soundfile.read(path, dtype="int16")
    assert rate == 8000 and data.shape == (150 * 160, 2)  # 3 s of talk is a 3 s file
    assert row.duration_s == 3.0 and row.channels == 2
    assert np.array_equal(data[:, 0], through_ulaw(caller))
    assert not data[: 50 * 160, 1].any()  # the agent's silence kept its place
    assert np.array_equal(data[50 * 160:, 1], through_ulaw(agent[50:]))
    assert row.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert row.size_bytes == path.stat().st_size
    assert counter(metrics, "hotline_recordings_total", state="complete") == 1


def test_the_file_name_comes_from_the_call_id_and_the_time_never_from_the_caller(tmp_path: Path) -> None:
    at = datetime(2026, 12, 6, 9, 30, 5, tzinfo=UTC)
    name = file_name("../../etc/passwd@evil", at, 2, "wav-pcm16")
    digest = hashlib.sha256(b"../../etc/passwd@evil").hexdigest()[:12]
    assert name == f"2026/12/06/093005-{digest}-2.wav"
    local = at.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Shanghai"))
    assert file_name("x", local, 1, "flac").startswith("2026/12/06/093005-")  # UTC folders whatever the zone


def test_g711_and_flac_files_are_readable_stereo(tmp_path: Path) -> None:
    for fmt, subtype in (("wav-alaw", "ALAW"), ("wav-ulaw", "ULAW"), ("flac", "PCM_16")):
        recorder, rows, _ = make_recorder(tmp_path / fmt, fmt)
        leg = fake_leg(f"{fmt}@x")
        recorder.attach(leg)
        for c, a in zip(tone(440, 100), tone(1000, 100), strict=True):
            leg.bridge.tick(c, a)
        leg.bridge.close()
        finish(recorder)
        row = final_row(rows)
        info = soundfile.info(tmp_path / fmt / "rec" / row.path)
        assert (info.channels, info.samplerate, info.subtype, round(info.duration, 2)) == (2, 8000, subtype, 2.0), fmt
        data, _ = soundfile.read(tmp_path / fmt / "rec" / row.path, dtype="int16")
        left, right = data[:, 0].astype(float), data[:, 1].astype(float)
        # the caller's 440 Hz on the left, the agent's 1000 Hz on the right
        spectrum_left, spectrum_right = np.abs(np.fft.rfft(left)), np.abs(np.fft.rfft(right))
        freqs = np.fft.rfftfreq(len(left), 1 / 8000)
        assert abs(freqs[spectrum_left.argmax()] - 440) < 5 and abs(freqs[spectrum_right.argmax()] - 1000) < 5, fmt


def test_a_paused_span_is_silence_in_the_file_and_a_pause_row(tmp_path: Path) -> None:
    recorder, rows, _ = make_recorder(tmp_path)
    finished: list[Any] = []
    recorder.completed_hooks.append(finished.append)
    leg = fake_leg()
    recorder.attach(leg)
    caller, agent = tone(440, 200), tone(1000, 200)
    for i in range(200):
        if i == 50:
            assert recorder.command("801", "pause_recording", "801", "phone")
        if i == 125:
            recorder.command("801", "resume_recording", "801", "phone")
        leg.bridge.tick(caller[i], agent[i])
    leg.bridge.close()
    finish(recorder)
    data, _ = soundfile.read(tmp_path / "rec" / final_row(rows).path, dtype="int16")
    assert len(data) == 200 * 160  # the pause keeps the call's timing
    assert not data[50 * 160:125 * 160].any()  # both sides silent while paused
    assert data[:50 * 160, 0].any() and data[125 * 160:, 1].any()
    (pause,) = [r for r in rows if isinstance(r, RecordRecordingPause)]
    assert (pause.paused_by, pause.offset_s, pause.duration_s) == ("801", 1.0, 1.5)
    assert finished[0].paused == ((1.0, 2.5),)  # for the characteristics: neither talk nor silence


def test_the_agents_pause_code_toggles_the_pause_and_the_digits_still_reach_the_caller(tmp_path: Path) -> None:
    recorder, rows, _ = make_recorder(tmp_path)
    leg = fake_leg()
    recorder.attach(leg)
    rtp = leg.agent.rtp
    for digit in "*48":
        rtp.on_dtmf(digit, 100)
    tap = recorder.active["801"]
    assert tap.pause is not None and tap.pause.by == "801"
    for digit in "5*48":
        rtp.on_dtmf(digit, 100)
    assert tap.pause is None
    assert rtp.relayed == list("*485*48")  # relayed as before: the caller hears the keys as ever
    leg.bridge.close()
    finish(recorder)
    assert len([r for r in rows if isinstance(r, RecordRecordingPause)]) == 1


def test_a_pause_still_on_at_the_hang_up_ends_there(tmp_path: Path) -> None:
    recorder, rows, _ = make_recorder(tmp_path)
    leg = fake_leg()
    recorder.attach(leg)
    for c, a in zip(tone(440, 100), tone(1000, 100), strict=True):
        if recorder.active["801"].frames == 50:
            recorder.command("801", "pause_recording", "desk-user")
        leg.bridge.tick(c, a)
    leg.bridge.close()
    finish(recorder)
    (pause,) = [r for r in rows if isinstance(r, RecordRecordingPause)]
    assert (pause.paused_by, pause.offset_s, pause.duration_s) == ("desk-user", 1.0, 1.0)
    assert recorder.command("801", "pause_recording", "x") is False  # nothing recorded now: ignored


def test_calls_the_flow_does_not_record_get_no_tap(tmp_path: Path) -> None:
    recorder, rows, _ = make_recorder(tmp_path)
    leg = fake_leg(recorded=False)
    recorder.attach(leg)
    finish(recorder)
    assert leg.bridge.taps == [] and rows == []


def test_a_transfer_makes_the_next_agents_bridge_file_n_2_of_the_same_call(tmp_path: Path) -> None:
    recorder, rows, _ = make_recorder(tmp_path)
    for agent in ("801", "802"):
        leg = fake_leg(agent=agent)
        recorder.attach(leg)
        for c, a in zip(tone(440, 50), tone(1000, 50), strict=True):
            leg.bridge.tick(c, a)
        leg.bridge.close()
    finish(recorder)
    done = [r for r in rows if isinstance(r, RecordRecording) and r.state == "complete"]
    assert [(r.agent_number, r.path[-6:]) for r in done] == [("801", "-1.wav"), ("802", "-2.wav")]
    assert {r.sip_call_id for r in done} == {"abc@10.0.0.1"}


def test_a_full_disk_marks_the_row_failed_counts_it_and_never_raises_into_the_call(tmp_path: Path,
                                                                                    monkeypatch: Any) -> None:
    recorder, rows, metrics = make_recorder(tmp_path)
    leg = fake_leg()
    recorder.attach(leg)
    writes = {"n": 0}
    real_write = recorder.writer._write

    def failing_write(tap: Any, caller: bytes, agent: bytes) -> None:
        writes["n"] += 1
        if writes["n"] == 2:  # the second second of audio finds the disk full
            assert tap.file is not None
            real_file = tap.file

            class Full:
                def write(self, _data: bytes) -> int:
                    raise OSError(errno.ENOSPC, "No space left on device")

                def close(self) -> None:
                    real_file.close()

            tap.file = Full()
        real_write(tap, caller, agent)

    monkeypatch.setattr(recorder.writer, "_write", failing_write)
    for c, a in zip(tone(440, 200), tone(1000, 200), strict=True):
        leg.bridge.tick(c, a)  # never raises: the media clock goes on
    leg.bridge.close()
    finish(recorder)
    row = final_row(rows)
    assert row.state == "failed" and "No space left" in (row.error or "")
    assert row.sha256 is None
    assert not (tmp_path / "rec" / row.path).exists()  # never under the name of a complete file
    assert counter(metrics, "hotline_recording_errors_total", kind="no_space_left_on_device") == 1
    assert counter(metrics, "hotline_recordings_total", state="failed") == 1


def test_an_unusable_directory_fails_the_recording_not_the_call(tmp_path: Path) -> None:
    blocker = tmp_path / "rec"
    blocker.write_text("a file where the directory should be")
    recorder, rows, metrics = make_recorder(tmp_path, directory=blocker)
    leg = fake_leg()
    recorder.attach(leg)
    for c, a in zip(tone(440, 60), tone(1000, 60), strict=True):
        leg.bridge.tick(c, a)
    leg.bridge.close()
    finish(recorder)
    row = final_row(rows)
    assert row.state == "failed" and row.error
    assert sum(s.value for m in metrics.registry.collect() if m.name == "hotline_recording_errors"
               for s in m.samples if s.name.endswith("_total")) == 1


def test_the_writer_queue_is_bounded_and_a_lost_second_is_counted_and_silence_in_the_file(tmp_path: Path) -> None:
    recorder, rows, metrics = make_recorder(tmp_path)
    recorder.writer.limit = 3
    gate = threading.Event()
    recorder.writer.completed_hooks.append(lambda _done: None)
    real_write = recorder.writer._write

    def stuck_write(tap: Any, caller: bytes, agent: bytes) -> None:
        gate.wait(30)
        real_write(tap, caller, agent)

    recorder.writer._write = stuck_write  # type: ignore[method-assign]
    leg = fake_leg()
    recorder.attach(leg)
    ticks = list(zip(tone(440, 500), tone(1000, 500), strict=True))  # 10 s while the writer is stuck
    for c, a in ticks[:50]:
        leg.bridge.tick(c, a)
    deadline = time.monotonic() + 10  # the writer took the first second and is stuck in it: the queue is empty
    while recorder.writer.taken < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    for c, a in ticks[50:]:  # seconds 2-4 fill the queue (3), 5-10 are lost, whatever the threads' timing
        leg.bridge.tick(c, a)
    dropped = recorder.writer.dropped
    assert dropped >= 6 and recorder.writer.max_depth == 3
    assert counter(metrics, "hotline_recording_errors_total", kind="queue_full") == dropped
    gate.set()
    leg.bridge.close()
    finish(recorder)
    row = final_row(rows)
    data, _ = soundfile.read(tmp_path / "rec" / row.path, dtype="int16")
    assert len(data) == 500 * 160, "a lost second is silence in its place: the file keeps the call's timing"
    assert row.state == "complete" and f"{dropped} s of audio lost" in (row.error or "")
    assert not data[-160 * 50:].any() and data[:160 * 50, 0].any()  # the first seconds got in, the last were lost


def test_completed_hooks_run_in_the_writer_thread_and_one_that_raises_spoils_nothing(tmp_path: Path) -> None:
    recorder, rows, _ = make_recorder(tmp_path)
    seen: list[tuple[str, str]] = []

    def broken(_done: Any) -> None:
        raise RuntimeError("characteristics failed")

    recorder.completed_hooks.extend([broken, lambda done: seen.append((threading.current_thread().name, done.sha256))])
    leg = fake_leg()
    recorder.attach(leg)
    for c, a in zip(tone(440, 50), tone(1000, 50), strict=True):
        leg.bridge.tick(c, a)
    leg.bridge.close()
    finish(recorder)
    assert seen == [("recording-writer", final_row(rows).sha256)]
    assert final_row(rows).state == "complete"


def test_a_restart_marks_its_own_unfinished_recordings_interrupted_and_leaves_the_part_file(tmp_path: Path) -> None:
    db = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(db)
    writer = CrmWriter(db, worker="w1")
    now = datetime.now(UTC)
    for path, worker, state in (("a-1.wav", "w1", "recording"), ("b-1.wav", "w2", "recording"),
                                ("c-1.wav", "w1", "complete")):
        writer._apply([(1, RecordRecording(path, "cid", "801", "junior", "wav-pcm16", 2, now - timedelta(minutes=1),
                                           state, worker))])
    directory = tmp_path / "rec"
    directory.mkdir()
    (directory / "a-1.wav.part").write_bytes(b"RIFF" + bytes(100))
    assert recover_interrupted(db, directory, "w1") == 1
    with Session(db) as s:
        states = {path: state for path, state in s.execute(select(Recording.path, Recording.state)).all()}
        error = s.scalar(select(Recording.error).where(Recording.path == "a-1.wav"))
    assert states == {"a-1.wav": "interrupted", "b-1.wav": "recording", "c-1.wav": "complete"}
    assert "a-1.wav.part (104 bytes)" in (error or "")
    assert (directory / "a-1.wav.part").exists() and not (directory / "a-1.wav").exists()


def test_recording_rows_survive_the_outbox_journal_and_replay(tmp_path: Path) -> None:
    from crm_bridge.models import RecordingPause
    from crm_bridge.outbox import Outbox, decode, encode

    now = datetime.now(UTC)
    row = RecordRecording("2026/12/06/093005-abc-1.wav", "cid", "801", "junior", "wav-pcm16", 2, now, "recording", "w1")
    pause = RecordRecordingPause(row.path, "801", now, 1.5, 2.25)
    assert decode(encode(7, row)) == (7, row) and decode(encode(8, pause)) == (8, pause)
    # journaled, never applied (the process died): the next start's replay writes both
    outbox = Outbox(tmp_path / "outbox")
    outbox.append_many([row, pause, replace(row, state="complete", sha256="ab" * 32, size_bytes=44)])
    outbox.close()
    db = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    migrate(db)
    writer = CrmWriter(db, Outbox(tmp_path / "outbox"), worker="w1")
    assert writer.recover() == 3
    with Session(db) as s:
        stored = s.scalars(select(Recording)).one()
        assert (stored.state, stored.sha256, stored.ivr_worker) == ("complete", "ab" * 32, "w1")
        assert [(p.paused_by, p.offset_s, p.duration_s) for p in s.scalars(select(RecordingPause))] == [
            ("801", 1.5, 2.25)]
    assert writer.outbox is not None
    writer.outbox.close()
