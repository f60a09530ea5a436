"""Speech detection on the caller's decoded audio (webrtcvad).

"Not silent" in the silent-call routine means the caller spoke (spec §3). A
single voiced 20 ms frame is too little — a click or line noise trips it —
so speech is reported once `speech_ms` of voiced frames have arrived within
a sliding window twice that long.
"""

from __future__ import annotations

from collections import deque

import webrtcvad

FRAME_BYTES = 320  # 20 ms of 8 kHz int16 mono
SAMPLE_RATE = 8000


class SpeechDetector:
    def __init__(self, aggressiveness: int = 2, speech_ms: int = 200) -> None:
        self._vad = webrtcvad.Vad(aggressiveness)
        self._needed = max(1, speech_ms // 20)
        self._window: deque[bool] = deque(maxlen=2 * self._needed)
        self._voiced = 0
        self._rest = b""

    def reset(self) -> None:
        self._window.clear()
        self._voiced = 0
        self._rest = b""

    def feed(self, pcm: bytes) -> bool:
        """Feed decoded PCM (any length); True once speech has been heard."""
        if self._rest:
            pcm = self._rest + pcm
            self._rest = b""
        heard = False
        for start in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
            voiced = self._vad.is_speech(pcm[start : start + FRAME_BYTES], SAMPLE_RATE)
            if len(self._window) == self._window.maxlen and self._window[0]:
                self._voiced -= 1
            self._window.append(voiced)
            self._voiced += voiced
            heard = heard or self._voiced >= self._needed
        tail = len(pcm) % FRAME_BYTES
        if tail:
            self._rest = pcm[-tail:]
        return heard
