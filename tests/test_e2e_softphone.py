"""End to end with a real softphone stack (pjsua2): the caller hears the greeting prompt, not silence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ivr.greeting import greeting_prompt_id
from prompts.library import read_wav_8k

from .conftest import ROOT
from .test_e2e_sip import crm_rows, ivr_prompts

pytestmark = pytest.mark.e2e
ENVELOPE_MS = 20


def envelope(pcm: bytes) -> np.ndarray:
    """RMS per 20 ms of 8 kHz int16 audio."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    n = 8000 * ENVELOPE_MS // 1000
    frames = samples[: len(samples) // n * n].reshape(-1, n)
    return np.sqrt((frames**2).mean(axis=1))


def voiced_span(env: np.ndarray, threshold: float, max_gap_frames: int = 40) -> tuple[int, int]:
    """First run of sound, allowing pauses shorter than max_gap_frames (800 ms) inside it."""
    loud = np.flatnonzero(env > threshold)
    start = end = int(loud[0])
    for index in loud[1:]:
        if index - end > max_gap_frames:
            break
        end = int(index)
    return start, end + 1


def test_pjsua2_caller_hears_the_greeting_then_silence(ivr_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ivr = ivr_factory(ring_seconds=1)
    wav = tmp_path / "heard.wav"
    out = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "softphone_caller.py"), "--port", str(ivr.port), "--seconds", "15", "--wav", str(wav)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "state CONFIRMED 200" in out.stdout

    heard = envelope(read_wav_8k(wav))
    row = crm_rows(ivr)[-1]
    greeting = greeting_prompt_id(row["greeting"])
    prompt = ivr_prompts(tmp_path)[greeting]
    expected = envelope(prompt.pcm)

    assert heard.max() > 1000, "the softphone received silence"
    start, end = voiced_span(heard, threshold=0.05 * heard.max())
    seconds = (end - start) * ENVELOPE_MS / 1000
    want = prompt.seconds
    print(f"softphone heard {seconds:.2f} s of sound; prompt {greeting} is {want:.2f} s")
    assert abs(seconds - want) < 0.6, "what was heard is not as long as the greeting prompt"
    # after the greeting: the silent routine's 5 s wait, nothing sent
    assert heard[end + 10 : end + 10 + 4000 // ENVELOPE_MS].max() < 0.05 * heard.max()

    # the loudness envelope follows the prompt's (same words, same timing), aligned on the onset
    p_start, p_end = voiced_span(expected, threshold=0.05 * expected.max())
    n = min(end - start, p_end - p_start)
    correlation = max(
        np.corrcoef(heard[start + lag : start + lag + n], expected[p_start : p_start + n])[0, 1] for lag in range(-min(3, start), 4)
    )
    print(f"envelope correlation with {greeting}: {correlation:.2f}")
    assert correlation > 0.8, f"envelope correlation with the greeting prompt is {correlation:.2f}"
