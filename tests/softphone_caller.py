"""A real softphone caller (PJSIP's pjsua2): dials the IVR and records what it hears.

Run as a separate process — pjsua2 keeps global C state — by
tests/test_e2e_softphone.py:

    python tests/softphone_caller.py --port 5060 --number 95000 --seconds 14 --wav out.wav

`--keys 9@3,1@6` presses 9 three seconds and 1 six seconds after the call is answered (RFC 4733).

Prints one line per call state and exits 0 once the WAV is written.
"""

from __future__ import annotations

import argparse
import os
import time

import pjsua2 as pj
from pjsua_endpoint import account_config, start_endpoint


class Caller(pj.Call):
    def __init__(self, account: pj.Account, wav: str) -> None:
        super().__init__(account)
        self.wav = wav
        self.recorder: pj.AudioMediaRecorder | None = None
        self.state = pj.PJSIP_INV_STATE_NULL
        self.answered_at: float | None = None

    def onCallState(self, prm: pj.OnCallStateParam) -> None:  # noqa: N802 (pjsua2 API)
        info = self.getInfo()
        self.state = info.state
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and self.answered_at is None:
            self.answered_at = time.monotonic()
        print(f"state {info.stateText} {info.lastStatusCode}", flush=True)

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:  # noqa: N802
        info = self.getInfo()  # keep it referenced: iterating a temporary's .media reads freed memory
        for index, media in enumerate(info.media):
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE and self.recorder is None:
                self.recorder = pj.AudioMediaRecorder()
                self.recorder.createRecorder(self.wav)
                self.getAudioMedia(index).startTransmit(self.recorder)
                print("media active: recording", flush=True)


def main() -> int:
    args = argparse.ArgumentParser()
    args.add_argument("--port", type=int, required=True)
    args.add_argument("--number", default="95000")
    args.add_argument("--caller", default="13800000002")
    args.add_argument("--seconds", type=float, default=14)
    args.add_argument("--wav", required=True)
    args.add_argument("--keys", default="", help="digit@seconds after the answer, comma-separated")
    opts = args.parse_args()
    keys = [(k.split("@")[0], float(k.split("@")[1])) for k in opts.keys.split(",") if k]

    ep = start_endpoint()

    account = pj.Account()
    account.create(account_config(opts.caller))

    call = Caller(account, opts.wav)
    call.makeCall(f"sip:{opts.number}@127.0.0.1:{opts.port}", pj.CallOpParam(True))
    deadline = time.monotonic() + opts.seconds
    while time.monotonic() < deadline and call.state != pj.PJSIP_INV_STATE_DISCONNECTED:
        ep.libHandleEvents(10)
        if keys and call.answered_at is not None and time.monotonic() - call.answered_at >= keys[0][1]:
            digit, _ = keys.pop(0)
            call.dialDtmf(digit)
            print(f"pressed {digit}", flush=True)
    if call.state != pj.PJSIP_INV_STATE_DISCONNECTED:
        call.hangup(pj.CallOpParam(True))
    for _ in range(50):
        ep.libHandleEvents(10)
    call.recorder = None
    ep.libDestroy()  # destroys every media port: pjmedia writes the WAV header then
    # pjsua2 2.15's Call destructor asserts once libDestroy has freed the call slot; skip destructors.
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
