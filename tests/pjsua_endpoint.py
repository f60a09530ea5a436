"""Shared pjsua2 set-up for the test softphones: one UDP transport on loopback, no sound card."""

from __future__ import annotations

import pjsua2 as pj


def start_endpoint() -> pj.Endpoint:
    """A started endpoint driven from the calling thread (call `libHandleEvents` in a loop)."""
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.logConfig.level = 1
    cfg.logConfig.consoleLevel = 1
    cfg.uaConfig.threadCnt = 0  # no pjsua worker threads: everything runs in libHandleEvents
    cfg.uaConfig.mainThreadOnly = True
    ep.libInit(cfg)
    transport = pj.TransportConfig()
    transport.port = 0
    transport.boundAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
    ep.libStart()
    ep.audDevManager().setNullDev()  # no sound card: the conference bridge runs on a null clock
    return ep


def account_config(user: str) -> pj.AccountConfig:
    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:{user}@127.0.0.1"
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    return acfg
