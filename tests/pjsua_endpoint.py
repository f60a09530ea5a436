"""Shared pjsua2 set-up for the test softphones: one UDP transport on loopback, no sound card.

With `PJSUA_OUTBOUND` set to a SIP URI with `;transport=tcp` or `;transport=tls` (the IVR's TCP
or TLS listener), the softphone gets that transport instead and sends every request it starts
through that URI (an outbound proxy), so it registers and calls over TCP or TLS.
"""

from __future__ import annotations

import os

import pjsua2 as pj

OUTBOUND = os.environ.get("PJSUA_OUTBOUND", "")


def _outbound_transport() -> int:
    if ";transport=tls" in OUTBOUND.lower():
        return pj.PJSIP_TRANSPORT_TLS
    if ";transport=tcp" in OUTBOUND.lower():
        return pj.PJSIP_TRANSPORT_TCP
    return pj.PJSIP_TRANSPORT_UDP


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
    ep.transportCreate(_outbound_transport(), transport)
    ep.libStart()
    ep.audDevManager().setNullDev()  # no sound card: the conference bridge runs on a null clock
    return ep


def account_config(user: str) -> pj.AccountConfig:
    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:{user}@127.0.0.1"
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    if OUTBOUND:
        acfg.sipConfig.proxies.append(f"{OUTBOUND};lr")
    return acfg
