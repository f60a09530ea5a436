"""A supervisor's softphone (PJSIP's pjsua2): registers, monitors an agent's call, switches modes by key.

Run as a separate process by tests/test_e2e_monitoring.py:

    python tests/supervisor_phone.py --ivr-port 5060 --account 880 --password pw880 --dial '*222801' \
        --play voice.wav --record heard.wav --keys 5@3,6@6 --hangup-after 9

Dials `--dial` once registered, again every half second while the IVR answers
480 (the agent is not talking yet), for at most `--retry-for` seconds; with
`--answer` it waits for the IVR to ring it instead (the desk's button). Once
the call is up it plays `--play` into the call (looped), records what it hears
to `--record`, presses each `--keys` digit (RFC 4733) at its second after the
answer and hangs up after `--hangup-after` seconds. Prints `registered <code>`,
`dialled <code> <status> <reason>` for each refused attempt, `confirmed <t>`,
`recording <t>`, `key <digit> <t>`, `hung up <t>` (this phone hung up) or
`disconnected <t>` (the IVR did) (t: time.monotonic(), the
same clock as the test's), then exits.
"""

from __future__ import annotations

import argparse
import os
import time

import pjsua2 as pj
from pjsua_endpoint import account_config, start_endpoint


class SupervisorCall(pj.Call):
    def __init__(self, account: pj.Account, opts: argparse.Namespace, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
        self.opts = opts
        self.confirmed_at: float | None = None
        self.disconnected = False
        self.status = 0
        self.reason = ""
        self.player: pj.AudioMediaPlayer | None = None
        self.recorder: pj.AudioMediaRecorder | None = None

    def onCallState(self, prm: pj.OnCallStateParam) -> None:  # noqa: N802 (pjsua2 API)
        info = self.getInfo()
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and self.confirmed_at is None:
            self.confirmed_at = time.monotonic()
            print(f"confirmed {self.confirmed_at}", flush=True)
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED and not self.disconnected:
            self.disconnected = True
            self.status, self.reason = info.lastStatusCode, info.lastReason
            if self.confirmed_at is None:
                print(f"dialled {self.opts.dial} {self.status} {self.reason}", flush=True)
            else:
                print(f"disconnected {time.monotonic()}", flush=True)

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:  # noqa: N802
        info = self.getInfo()
        for index, media in enumerate(info.media):
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                audio = self.getAudioMedia(index)
                if self.opts.play and self.player is None:
                    self.player = pj.AudioMediaPlayer()
                    self.player.createPlayer(self.opts.play)  # looped
                    self.player.startTransmit(audio)
                if self.opts.record and self.recorder is None:
                    self.recorder = pj.AudioMediaRecorder()
                    self.recorder.createRecorder(self.opts.record)
                    audio.startTransmit(self.recorder)
                    print(f"recording {time.monotonic()}", flush=True)


class SupervisorAccount(pj.Account):
    def __init__(self, opts: argparse.Namespace) -> None:
        super().__init__()
        self.opts = opts
        self.reg_status: int | None = None
        self.incoming: SupervisorCall | None = None

    def onRegState(self, prm: pj.OnRegStateParam) -> None:  # noqa: N802
        if self.reg_status is None:
            print(f"registered {prm.code}", flush=True)
        self.reg_status = prm.code

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:  # noqa: N802
        call = SupervisorCall(self, self.opts, prm.callId)
        answer = pj.CallOpParam()
        answer.statusCode = 200 if self.opts.answer and self.incoming is None else 486
        if answer.statusCode == 200:
            self.incoming = call
        call.answer(answer)


def main() -> int:
    args = argparse.ArgumentParser()
    args.add_argument("--ivr-port", type=int, required=True)
    args.add_argument("--account", required=True)
    args.add_argument("--password", required=True)
    args.add_argument("--dial", default="", help="the feature code to dial, e.g. *222801")
    args.add_argument("--answer", action="store_true", help="wait to be rung (the desk's button) instead of dialling")
    args.add_argument("--retry-for", type=float, default=30, help="redial while refused with 480, this long")
    args.add_argument("--play", default="")
    args.add_argument("--record", default="")
    args.add_argument("--keys", default="", help="digit@seconds after answer, comma-separated: 5@3,6@6")
    args.add_argument("--hangup-after", type=float, default=9)
    args.add_argument("--timeout", type=float, default=90)
    opts = args.parse_args()
    keys = [(k.split("@")[0], float(k.split("@")[1])) for k in opts.keys.split(",") if k]

    ep = start_endpoint()
    acfg = account_config(opts.account)
    acfg.regConfig.registrarUri = f"sip:127.0.0.1:{opts.ivr_port}"
    acfg.regConfig.timeoutSec = 300
    acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", opts.account, 0, opts.password))
    account = SupervisorAccount(opts)
    account.create(acfg)

    deadline = time.monotonic() + opts.timeout
    call: SupervisorCall | None = None
    first_dial: float | None = None
    next_dial = 0.0
    while time.monotonic() < deadline:
        ep.libHandleEvents(10)
        now = time.monotonic()
        if account.reg_status is not None and account.reg_status != 200:
            break
        if account.reg_status != 200:
            continue
        if opts.answer:
            call = account.incoming
        elif (call is None or (call.disconnected and call.confirmed_at is None and call.status == 480)) \
                and now >= next_dial:
            if call is not None and first_dial is not None and now - first_dial > opts.retry_for:
                break
            first_dial = first_dial or now
            call = SupervisorCall(account, opts)
            call.makeCall(f"sip:{opts.dial}@127.0.0.1:{opts.ivr_port}", pj.CallOpParam(True))
            next_dial = now + 0.5
        if call is None:
            continue
        if call.disconnected and (call.confirmed_at is not None or call.status != 480):
            break
        if call.confirmed_at is not None and not call.disconnected:
            since = now - call.confirmed_at
            while keys and since >= keys[0][1]:
                digit = keys.pop(0)[0]
                call.dialDtmf(digit)
                print(f"key {digit} {time.monotonic()}", flush=True)
            if since >= opts.hangup_after:
                call.hangup(pj.CallOpParam(True))
                print(f"hung up {time.monotonic()}", flush=True)
                call.disconnected = True
                break
    for _ in range(50):  # let the BYE go and the recorder close its file
        ep.libHandleEvents(10)
    if call is not None and call.recorder is not None:
        del call.recorder
    for _ in range(10):
        ep.libHandleEvents(10)
    os._exit(0)  # pjsua2 2.15 asserts in destructors of freed call slots; nothing left to clean


if __name__ == "__main__":
    raise SystemExit(main())
