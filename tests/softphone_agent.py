"""An agent's softphone (PJSIP's pjsua2): registers to the IVR with digest auth and answers calls.

Run as a separate process by tests/test_e2e_routing.py:

    python tests/softphone_agent.py --ivr-port 5060 --agent 801 --password s3cret --talk 3 --calls 1

Prints `registered <status>` once the registrar has answered, `answered` and
`hung up` per call, and exits after `--calls` calls (or at once if the
registration is refused).
"""

from __future__ import annotations

import argparse
import os
import time

import pjsua2 as pj
from pjsua_endpoint import account_config, start_endpoint


class AgentAccount(pj.Account):
    def __init__(self) -> None:
        super().__init__()
        self.reg_status: int | None = None
        self.incoming: list[AgentCall] = []

    def onRegState(self, prm: pj.OnRegStateParam) -> None:  # noqa: N802 (pjsua2 API)
        self.reg_status = prm.code
        print(f"registered {prm.code}", flush=True)

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:  # noqa: N802
        call = AgentCall(self, prm.callId)
        self.incoming.append(call)
        answer = pj.CallOpParam()
        answer.statusCode = 200
        call.answer(answer)


class Dialled(pj.Call):
    """A call the agent places (feature codes): prints its final status."""

    def __init__(self, account: pj.Account, code: str) -> None:
        super().__init__(account)
        self.code = code
        self.done = False

    def onCallState(self, prm: pj.OnCallStateParam) -> None:  # noqa: N802
        info = self.getInfo()
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED and not self.done:
            self.done = True
            print(f"dialled {self.code} {info.lastStatusCode} {info.lastReason}", flush=True)


class AgentCall(pj.Call):
    def __init__(self, account: pj.Account, call_id: int) -> None:
        super().__init__(account, call_id)
        self.confirmed_at: float | None = None
        self.disconnected = False

    def onCallState(self, prm: pj.OnCallStateParam) -> None:  # noqa: N802
        info = self.getInfo()
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and self.confirmed_at is None:
            self.confirmed_at = time.monotonic()
            print("answered", flush=True)
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED and not self.disconnected:
            self.disconnected = True
            print("hung up", flush=True)


def main() -> int:
    args = argparse.ArgumentParser()
    args.add_argument("--ivr-port", type=int, required=True)
    args.add_argument("--agent", required=True)
    args.add_argument("--password", required=True)
    args.add_argument("--talk", type=float, default=3.0, help="seconds before the agent hangs up")
    args.add_argument("--calls", type=int, default=1)
    args.add_argument("--timeout", type=float, default=120)
    args.add_argument("--dial", action="append", default=[], help="after registering, dial these (e.g. *46), one at a time")
    args.add_argument("--dial-delay", type=float, default=0, help="seconds between registering and the first dial")
    opts = args.parse_args()

    ep = start_endpoint()

    acfg = account_config(opts.agent)
    acfg.regConfig.registrarUri = f"sip:127.0.0.1:{opts.ivr_port}"
    acfg.regConfig.timeoutSec = 300
    acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", opts.agent, 0, opts.password))
    account = AgentAccount()
    account.create(acfg)

    deadline = time.monotonic() + opts.timeout
    done = 0
    to_dial = list(opts.dial)
    dialling: Dialled | None = None
    registered_at: float | None = None
    while time.monotonic() < deadline:
        ep.libHandleEvents(10)
        if account.reg_status is not None and account.reg_status != 200:
            break  # refused: nothing more to do
        if account.reg_status == 200 and registered_at is None:
            registered_at = time.monotonic()
        ready = registered_at is not None and time.monotonic() - registered_at >= opts.dial_delay
        if ready and (dialling is None or dialling.done) and to_dial:
            dialling = Dialled(account, to_dial.pop(0))
            dialling.makeCall(f"sip:{dialling.code}@127.0.0.1:{opts.ivr_port}", pj.CallOpParam(True))
        if opts.dial and not to_dial and dialling is not None and dialling.done and opts.calls == 0:
            break
        for call in account.incoming:
            if call.confirmed_at and not call.disconnected and time.monotonic() - call.confirmed_at > opts.talk:
                call.hangup(pj.CallOpParam(True))
        done = sum(1 for c in account.incoming if c.disconnected)
        if opts.calls and done >= opts.calls:
            break
    for _ in range(30):
        ep.libHandleEvents(10)
    os._exit(0)  # pjsua2 2.15 asserts in destructors of freed call slots; nothing left to clean


if __name__ == "__main__":
    raise SystemExit(main())
