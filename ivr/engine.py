"""The engine: wires the SIP endpoint, media, agents, callbacks and the CRM to one `CallFlow` per call.

It builds the parts, starts and stops them, and dispatches what the SIP
endpoint (`ivr.sip.endpoint`) reports. A request off the wire passes
admission (`ivr.guard`) and the RFC 3261 checks (`ivr.sanity`) first. A new
call's INVITE is checked (feature codes, the number, its SDP offer, free RTP
ports) and gets a `Leg` (`ivr.leg`, which runs the call's flow) with its RTP
session, while the caller is looked up in the CRM; BYE, CANCEL, INFO, a
missing ACK and an agent's REFER become events for that call's leg.
REGISTERs are answered by `ivr.registrar`; agents and the calls to them are
`ivr.agents`, calls back to customers `ivr.dialler`, supervisors listening
in on calls `ivr.monitoring` (its feature codes are tried first). Once a second it expires
the guard's windows, runs the ACD and the dialler, takes the desk's commands
and writes the status file.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Collection
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog
from aiosipua import SdpNegotiationError, SipRequest, negotiate_sdp, parse_address, parse_uri

from crm_bridge.customers import CallerDirectory, CallerProfile
from crm_bridge.writer import CrmWriter
from ivr.acd import Acd, agent_queue
from ivr.agents import AgentPool, Agents
from ivr.browser import browser_offer_refusal, websocket_settings
from ivr.callbacks import CallbackScheduler
from ivr.callflow import State
from ivr.config import Config
from ivr.dialler import Dialler
from ivr.events import (
    Aborted,
    AgentHold,
    CallerIdentified,
    Cancelled,
    Digit,
    HungUp,
    Invited,
    TransferRequested,
    utc_now,
)
from ivr.followup_dialler import FollowupDialler, FollowupLeg
from ivr.gcpolicy import FullGcPolicy
from ivr.greeting import Greeter
from ivr.guard import Admission, SourceGuard
from ivr.hours import BusinessHours
from ivr.leg import Leg
from ivr.media import MediaClock, RtpPortPool, open_rtp
from ivr.metrics import Metrics
from ivr.monitoring import Monitoring
from ivr.phone_credentials import BrowserCredentials
from ivr.registrar import RegisterHandler, Registrar, phone_address
from ivr.sanity import check_request
from ivr.screenpop import DeskLink
from ivr.service import SEAT_GROUPS
from ivr.sip.calls import InboundCall, OutboundCall
from ivr.sip.connections import StreamAddress
from ivr.sip.dialogs import address_user
from ivr.sip.endpoint import Address, Headers, SipEndpoint
from ivr.srtp import SrtpRefused, negotiate_srtp
from prompts.catalogue import salutation_prompt, senior_salutation
from prompts.library import PromptLibrary
from prompts.music import MusicOnHold

log = structlog.get_logger("ivr.engine")

# Agents dial these from their registered phone to pause (not offered calls) or resume.
FEATURE_CODES = {"*46": True, "*47": False}
LOOKUP_TIMEOUT_S = 2.0  # a caller the CRM cannot name in time is served as unknown


class Engine:
    """The hotline's SIP endpoint: answers INVITEs and runs a CallFlow per call."""

    def __init__(
        self,
        config: Config,
        prompts: PromptLibrary,
        writer: CrmWriter,
        greeter: Greeter,
        directory: CallerDirectory | None = None,
        acd: AgentPool | None = None,
        desk: DeskLink | None = None,
        desk_commands: Callable[[], list[Any]] | None = None,
        music: MusicOnHold | None = None,
        followup_db: Any = None,
        worker: str = "",
    ) -> None:
        """`desk`: how agents' phones are told who calls; `desk_commands`: takes the desk's pending
        agent commands from the CRM (blocking; run in a thread once a second); `music`: the hold
        music (None: waiting callers hear keep-alive silence between announcements)."""
        self.config = config
        self.music = music
        q = config.queues
        self.flow_settings = replace(
            config.flow, announce_wait=q.announce_wait, max_wait_seconds=q.max_wait_seconds,
            callback_key=q.callback_key,
            # the greeting's holiday calendar: holiday hours and holiday greetings never disagree
            hours=BusinessHours(config.hours, greeter.calendar.holiday_on),
        )
        self.prompts = prompts
        self.writer = writer
        self.greeter = greeter
        self.directory = directory
        self.legs: dict[str, Leg] = {}
        # One process: agents in memory. Workers behind a balancer: a SharedAcd (ivr.shared_acd).
        self.acd: AgentPool = acd or Acd.from_agents(config.agents, config.queues, tuple(SEAT_GROUPS))
        self.guard = SourceGuard(config.limits)
        self.admission = Admission(self.guard, self._refuse, calls=lambda: len(self.legs),
                                   max_calls=config.general.max_calls)
        self.metrics = Metrics()
        self.metrics.watch(self)
        self._assign_task: asyncio.Task[None] | None = None
        self.status_file = config.status_file
        self.pacer = MediaClock()
        # called with each leg whose caller and agent are bridged (Engine.bridged)
        self.bridge_hooks: list[Callable[[Leg], None]] = []
        self.ports = RtpPortPool(*config.general.rtp_ports)
        self.accepting = True
        self._tasks: set[asyncio.Task[None]] = set()
        g = config.general
        self.endpoint = SipEndpoint(
            g.bind, g.port, self, user_agent=g.user_agent, advertised=g.advertised_ip, transports=g.transports,
            tls_port=g.tls_port, tls_certificate=str(g.tls_certificate or ""), tls_key=str(g.tls_key or ""),
            idle_seconds=g.tcp_idle_seconds, max_connections=g.max_connections,
            websocket=websocket_settings(config), keepalive_seconds=g.tcp_keepalive_seconds,
        )
        self.endpoint.load_report = self.admission.load  # X-Hotline-Load on each 200 to OPTIONS
        self.agents = Agents(self.acd, config, self.endpoint, self.ports, self.legs, self._spawn, self.media_ip,
                             self.pacer, desk)
        self.agents.state_log = writer.submit  # agent_states: time-by-state and occupancy for the scorecards
        # Workers that share agents share the nonce key, so a challenge from one is answered to any.
        secret = config.cluster.secret.encode() if config.cluster.shared_agents else None
        # the desk's browser phones register with credentials derived from [browser_phone] token_secret
        phones = config.browser_phone
        browser_seats = [a.number for a in config.agents if a.browser_phone]
        browser = BrowserCredentials(phones.token_secret, browser_seats, phones.credential_seconds)
        digest = Registrar({a.number: a.secret for a in config.agents if a.secret}, key=secret,
                           policies={a.number: a.digest_policy for a in config.agents},
                           browser=browser if phones.token_secret and browser_seats else None)
        self.registrar = RegisterHandler(digest, config.limits.trusted, self.guard.auth_failed, self.agents.bind,
                                         self.agents.bound_path, self.agents.flow_closed)
        self.dialler = Dialler(
            config, self.endpoint, CallbackScheduler(config.callbacks.max_attempts, config.callbacks.retry_seconds),
            writer, self.acd, self.ports, self.media_ip, self.legs, lambda call: Leg(self, call), self._spawn,
        )
        self.desk_commands = desk_commands
        self._taking_commands = False
        # supervisors listening, whispering, barging ([monitoring]): feature codes, desk commands, bridges
        self.monitoring = Monitoring(config, self.endpoint, self.ports, self.pacer, self.legs, self.agents, writer,
                                     self._spawn, self.media_ip)
        self.bridge_hooks.append(self.monitoring.bridged)
        # follow-up calls (回访, [followup]): the CRM's due follow-ups, dialled with inbound callers first
        self.followups: FollowupDialler | None = None
        if config.followup.enabled and followup_db is not None:
            from prompts.followup import departments_of

            self.followups = FollowupDialler(
                config, self.endpoint, followup_db, prompts, self.pacer, self.ports, self.media_ip, greeter.calendar,
                departments_of(config), worker, inbound_waiting=self.acd.waiting, overloaded=self._overloaded,
                spawn=self._spawn, acd=self.acd, legs=self.legs, new_leg=lambda call: FollowupLeg(self, call))

        # desk commands that are not about the agent's state: command -> handler(agent, requested_by)
        self.agent_command_hooks: dict[str, Callable[[str, str], None]] = {}

    def _overloaded(self) -> bool:
        """No follow-up starts while the event loop runs late or the IVR is near max_calls."""
        a = self.admission
        return a.loop_lag > a.max_loop_lag or len(self.legs) >= self.config.general.max_calls

    @property
    def media_ip(self) -> str:
        g = self.config.general
        return g.advertised_ip or g.bind

    async def start(self) -> None:
        await self.endpoint.start()
        g = self.config.general
        log.info("listening", bind=g.bind, port=g.port, numbers=sorted(g.numbers), rtp_ports=list(g.rtp_ports))
        for agent in self.config.agents:
            if agent.digest_policy != "strict":  # ops should know which phones accept weaker credentials
                log.warning("agent_digest_weakened", agent=agent.number, digest=agent.digest_policy)
        await self.agents.start()
        if self.followups is not None:
            await self.followups.start()
        # overflow eligibility grows with waiting time: re-run the ACD every second
        self._assign_task = asyncio.get_running_loop().create_task(self._assign_every_second())
        self._lag_task = asyncio.get_running_loop().create_task(self.admission.watch_loop_lag())

    async def drain(self, limit_s: float, hurry: asyncio.Event) -> int:
        """Take no new calls (503) and wait for the calls up to finish, at most `limit_s`.

        Returns how many calls were still up when the wait ended.
        """
        self.accepting = False
        deadline = asyncio.get_running_loop().time() + limit_s
        while (self.legs or (self.followups is not None and self.followups.calls)) and not hurry.is_set():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(hurry.wait(), timeout=min(0.2, left))
            except TimeoutError:
                pass
        return len(self.legs) + (len(self.followups.calls) if self.followups is not None else 0)

    async def stop(self) -> None:
        """End every call politely (BYE or 503), close media, stop listening."""
        self.accepting = False
        if self._assign_task is not None:
            self._assign_task.cancel()
            self._lag_task.cancel()
        self.monitoring.stop()
        for leg in list(self.legs.values()):
            leg.dispatch(Aborted(utc_now(), "shutdown"))
        if self.followups is not None:
            self.followups.stop()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        await self.pacer.close()
        await asyncio.sleep(0.05)  # let the last BYEs leave the socket
        await self.endpoint.stop()
        await self.agents.close()

    async def _apply_desk_commands(self) -> None:
        """The agent desk's buttons (pause, resume, end wrap-up), queued in the CRM."""
        assert self.desk_commands is not None
        self._taking_commands = True
        try:
            commands = await asyncio.to_thread(self.desk_commands)
            for command in commands:
                log.info("agent_command", agent=command.agent, command=command.command,
                         requested_by=command.requested_by)
                hook = self.agent_command_hooks.get(command.command)
                if hook is not None:  # pause_recording, resume_recording (ivr.recording)
                    hook(command.agent, command.requested_by or command.agent)
                elif command.command == "monitor":
                    self.monitoring.from_desk(command.supervisor or "", command.agent, command.mode or "")
                    continue
                await self.agents.apply(command.command, command.agent)
        except Exception as exc:  # the database is away: the desk's buttons wait, calls do not
            log.warning("agent_commands_failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        finally:
            self._taking_commands = False

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- SIP callbacks --------------------------------------------------------------

    def screen(self, request: SipRequest, source: Address, request_line: str) -> bool:
        """Limits and RFC 3261 checks for a request off the wire; answers what it refuses."""
        if not self.admission.admit(request, source, accepting=self.accepting):
            return False
        refusal = check_request(request, request_line)
        if refusal is not None:
            log.warning("sip_bad_request", source=f"{source[0]}:{source[1]}", method=request.method[:20],
                        status=refusal.status, error=refusal.why)
            if request.method != "ACK":
                self._refuse(request, source, refusal.status, refusal.reason, refusal.headers)
            return False
        return True

    def _refuse(self, request: SipRequest, source: Address, status: int, reason: str, headers: dict[str, str]) -> None:
        self.metrics.refused.labels(str(status)).inc()
        if not request.via:
            return
        try:
            self.endpoint.reply(request, source, status, reason, headers)
        except Exception:  # noqa: BLE001 — headers too broken to build an answer from: dropped (the caller logged it)
            pass

    def _reject(self, call: InboundCall, status: int, reason: str, why: str, retry_after: int | None = None,
                headers: dict[str, str] | None = None) -> None:
        self.metrics.refused.labels(str(status)).inc()
        headers = dict(headers or {})
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        call.reject(status, reason, headers)
        log.info("invite_rejected", call_id=call.call_id, status=status, reason=why,
                 source=f"{call.source_addr[0]}:{call.source_addr[1]}")

    def on_invite(self, call: InboundCall) -> None:
        self.metrics.invites.inc()
        if not self.accepting:
            self._reject(call, 503, "Service Unavailable", "shutting down", retry_after=30)
            return
        if len(self.legs) >= self.config.general.max_calls:
            self._reject(call, 503, "Service Unavailable", "max_calls reached", retry_after=5)
            return
        callee = parse_uri(call.invite.uri).user or ""
        if self.monitoring.feature_code(call, callee):
            return
        if callee in FEATURE_CODES and self._feature_code(call, FEATURE_CODES[callee]):
            return
        if callee not in self.config.general.numbers:
            self._reject(call, 404, "Not Found", f"unknown number {callee!r}")
            return
        content_type = (call.invite.content_type or "").split(";")[0].strip().lower()
        if call.invite.body and content_type != "application/sdp":
            self._reject(call, 415, "Unsupported Media Type", f"body of type {content_type[:40]!r}",
                         headers={"Accept": "application/sdp"})
            return
        accept = call.invite.get_header("accept")
        if accept is not None and not {"application/sdp", "application/*", "*/*"} & {
            a.split(";")[0].strip().lower() for a in accept.split(",")
        }:
            self._reject(call, 406, "Not Acceptable", f"Accept {accept[:40]!r} excludes application/sdp",
                         headers={"Accept": "application/sdp"})
            return
        if call.sdp_offer is None:
            self._reject(call, 488, "Not Acceptable Here", "no SDP offer (late offer is not supported)")
            return
        browser_refusal = browser_offer_refusal(call.source_addr, call.sdp_offer)
        if browser_refusal is not None:  # over a WebSocket: browsers' media (DTLS-SRTP) only
            self._reject(call, 488, "Not Acceptable Here", browser_refusal)
            return
        if not len(self.ports):
            self._reject(call, 503, "Service Unavailable", "RTP port range exhausted")
            return
        leg = Leg(self, call)
        offer = call.sdp_offer
        dtmf_pt = next(
            (c.payload_type for c in (offer.audio.codecs if offer.audio else [])
             if (c.encoding_name or "").lower() == "telephone-event"),
            101,
        )
        try:
            # the codec and, with [media] srtp, the keys are chosen now (a 488 must not wait for a
            # socket); the answer gets its RTP port once the port is bound (see _start_leg)
            answer, leg.payload_type = self._answer_sdp(offer, 0, dtmf_pt)
            leg.sdp_answer, leg.srtp = negotiate_srtp(offer, answer, self.config.media.srtp)
            remote = offer.rtp_address
            if remote is None:
                raise SdpNegotiationError("offer has no audio address")
        except SdpNegotiationError as exc:
            self._reject(call, 488, "Not Acceptable Here", str(exc))
            return
        except SrtpRefused as exc:  # RFC 4568: an RTP/SAVP offer is never answered in clear
            self._reject(call, 488, "Not Acceptable Here", exc.reason)
            return
        self.legs[call.call_id] = leg
        leg.max_duration = asyncio.get_running_loop().call_later(
            self.config.general.max_call_seconds, lambda: leg.dispatch(Aborted(utc_now(), "max_call_seconds reached"))
        )
        leg.media_starting = True
        caller = address_user(call.caller)
        leg.dispatch(Invited(utc_now(), caller, callee))
        self._spawn(self._start_leg(leg, remote, dtmf_pt))
        if self.directory is not None:
            try:
                profile = self.directory.lookup_now(caller)
            except Exception as exc:  # the CRM being down must not stop the call: unknown = junior
                leg.log.warning("caller_lookup_failed", error=str(exc))
                return
            if profile is not None:
                self._identified(leg, profile)
            else:
                self._spawn(self._identify(leg, caller))

    async def _identify(self, leg: Leg, caller: str) -> None:
        """Look the caller up in the CRM while it rings (crm_bridge.customers.CallerDirectory)."""
        assert self.directory is not None
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_S):
                profile = await self.directory.lookup(caller)
        except Exception as exc:  # the CRM being down or slow must not stop the call: unknown = junior
            leg.log.warning("caller_lookup_failed", error=str(exc) or type(exc).__name__)
            return
        if not leg.closed:
            self._identified(leg, profile)

    def _identified(self, leg: Leg, profile: CallerProfile) -> None:
        leg.customer_name = profile.name or None
        leg.dispatch(CallerIdentified(utc_now(), profile.tier, profile.known, self._salutation(profile)))

    def _salutation(self, profile: CallerProfile) -> str | None:
        """The prompt that greets this caller by name ([tiers] greet_senior_by_name), if one was rendered at start."""
        if not self.config.greet_senior_by_name or profile.tier != "senior":
            return None
        salutation = senior_salutation(profile.name, profile.gender)
        prompt = salutation_prompt(salutation) if salutation is not None else None
        return prompt if prompt is not None and prompt in self.prompts else None

    def _answer_sdp(self, offer: Any, port: int, dtmf_pt: int) -> tuple[Any, int]:
        return negotiate_sdp(offer, local_ip=self.media_ip, rtp_port=port,
                             supported_codecs=self.config.general.payload_types, dtmf_payload_type=dtmf_pt)

    async def _start_leg(self, leg: Leg, remote: tuple[str, int], dtmf_pt: int) -> None:
        try:
            rtp, leg.rtp_port = await open_rtp(self.ports, self.config.general.bind, remote, leg.payload_type,
                                               dtmf_payload_type=dtmf_pt, strict=self.config.general.rtp_strict,
                                               srtp=leg.srtp)
        except (OSError, RuntimeError) as exc:
            leg.media_starting = False
            leg.log.error("rtp_bind_failed", error=str(exc))
            leg.dispatch(Aborted(utc_now(), f"no RTP port: {exc}"))
            return
        leg.media_starting = False
        if leg.closed:  # CANCELled while the socket was being bound
            await rtp.close()
            leg.release_port()
            return
        answer = leg.sdp_answer
        assert answer is not None and answer.audio is not None  # set by on_invite before the leg starts
        answer.audio.port = leg.rtp_port  # the one section negotiate_sdp answered with
        leg.rtp = rtp
        rtp.on_dtmf = leg.on_dtmf
        if leg.deferred_timer is not None:
            leg.fire_timer(leg.deferred_timer)

    def _feature_code(self, call: InboundCall, pause: bool) -> bool:
        """An agent's phone dialled *46/*47: pause or resume that agent. False if not an agent's phone."""
        try:
            contact = parse_address(call.invite.get_header("contact") or "").uri
            phone = phone_address(call.source_addr, contact, self.config.limits.trusted)
        except Exception:
            return False
        agent = self.agents.agent_at(phone)
        if agent is None:
            return False
        self._spawn(self._pause_agent(call, agent, pause))
        return True

    async def _pause_agent(self, call: InboundCall, agent: str, pause: bool) -> None:
        try:
            # with shared agents this waits for the database: the answer tells the state every worker sees
            state = await self.agents.set_paused(agent, pause)
        except Exception as exc:  # the database is away: say so rather than guess
            log.warning("agent_pause_failed", agent=agent,
                        error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            self._reject(call, 503, "Agent State Unavailable", "feature code: database unavailable")
            return
        # no media needed: the final response's reason phrase tells the phone the new state
        self._reject(call, 480, f"Agent {agent} {state.replace('_', ' ')}", "feature code")

    def on_bye(self, call: InboundCall | OutboundCall) -> None:
        if self.monitoring.hung_up(call):
            return
        if isinstance(call, OutboundCall) and self.agents.hung_up(call):
            return
        if isinstance(call, OutboundCall) and self.followups is not None and self.followups.hung_up(call):
            return
        leg = self.legs.get(call.call_id)  # a caller, or a called-back customer
        if leg is not None:
            leg.dispatch(HungUp(utc_now()))

    def on_refer(self, call: OutboundCall, request: SipRequest) -> tuple[int, str, Callable[[], None] | None]:
        """An agent's blind transfer (RFC 3515): to a seat group (`sip:group-senior@…`, `sip:senior@…`), to the
        complaint specialists (`sip:complaint@…`, [queues] complaint_group), to a named agent (`sip:802@…`,
        not with shared agents), or to a short code of [queues] transfer_codes. Anything else is refused."""
        agent_leg = self.agents.legs_by_agent_call.get(call.call_id)
        if agent_leg is None or agent_leg.caller.flow.state is not State.BRIDGED:
            return 403, "Forbidden", None  # only the agent talking with a caller may transfer them
        target = _refer_target(request.get_header("refer-to") or "")
        if target is None:
            agent_leg.caller.log.warning("refer_refused", agent=agent_leg.agent, reason="malformed Refer-To")
            return 400, "Bad Request (Refer-To)", None
        name = target.lower().removeprefix("group-")
        name = self.config.queues.transfer_codes.get(name, name)  # [queues] transfer_codes: 9009 -> complaint
        group = self.config.queues.complaint_group if name in ("complaint", "complaints") else name
        if name in self.acd.seats and name != agent_leg.agent and not self.acd.shared:
            group = agent_queue(name)  # a named agent: the caller waits for that agent alone (one process only)
        elif group not in SEAT_GROUPS:
            agent_leg.caller.log.warning("refer_refused", agent=agent_leg.agent, target=target[:40],
                                         reason="not configured")
            return 403, "Forbidden", None
        leg = agent_leg.caller
        return 202, "Accepted", lambda: leg.dispatch(TransferRequested(utc_now(), agent_leg.agent, group, name))

    def on_hold(self, call: OutboundCall, held: bool) -> None:
        agent_leg = self.agents.legs_by_agent_call.get(call.call_id)
        if agent_leg is not None and not agent_leg.ended:
            agent_leg.held = held  # a phone on hold may send nothing: not gone (Agents.watch_media)
            agent_leg.caller.dispatch(AgentHold(utc_now(), agent_leg.agent, held))

    def on_cancel(self, call: InboundCall) -> None:
        if self.monitoring.hung_up(call):
            return
        leg = self.legs.get(call.call_id)
        if leg is not None and leg.flow.record is not None:
            leg.dispatch(Cancelled(utc_now()))

    def on_ack_timeout(self, call: InboundCall) -> None:
        if self.monitoring.hung_up(call, "no ACK for 200 OK"):
            return
        leg = self.legs.get(call.call_id)
        if leg is not None:
            leg.dispatch(Aborted(utc_now(), "no ACK for 200 OK"))

    def on_info(self, call: InboundCall, request: SipRequest) -> None:
        digit = _info_digit(request)
        leg = self.legs.get(call.call_id)
        if digit is not None and leg is not None:
            leg.dispatch(Digit(utc_now(), digit, "info"))

    def on_register(self, request: SipRequest, source: Address) -> tuple[int, str, Headers]:
        return self.registrar.handle(request, source)

    def on_connection_closed(self, address: StreamAddress) -> None:
        self.agents.connection_closed(address)
        if self.agents.dirty and self.status_file is not None:  # an agent gone: the wallboard's file now
            self.agents.dirty = False
            write_status(self.status_file, self.acd, len(self.legs), self.pacer)

    def ws_refused(self, source: Address, reason: str) -> None:
        self.guard.auth_failed(source[0], source[1], "", reason)

    def banned(self, host: str) -> bool:
        return self.guard.banned(host)

    def bound_connections(self) -> Collection[Address]:
        return self.agents.bound.values()

    # --- once a second ----------------------------------------------------------------

    async def _assign_every_second(self) -> None:
        full_gc = FullGcPolicy(time.monotonic())
        while True:
            await asyncio.sleep(1.0)
            self.guard.expire()
            full_gc.tick(time.monotonic(), len(self.legs))  # the full GC run_ivr.py took off automatic: ivr.gcpolicy
            self.agents.tick()
            if self.accepting:
                self.dialler.dial_due()
                if self.followups is not None:
                    self.followups.tick()
            if self.desk_commands is not None and not self._taking_commands:
                self._spawn(self._apply_desk_commands())
            if self.status_file is not None and (self.agents.dirty or self.legs):
                self.agents.dirty = False
                write_status(self.status_file, self.acd, len(self.legs), self.pacer)

    def bridged(self, leg: Leg) -> None:
        """A caller and an agent talk (`leg.bridge`): each hook (recorder, live monitoring) may tap or inject."""
        for hook in self.bridge_hooks:
            try:
                hook(leg)
            except Exception:  # a recorder that cannot start must not break the call
                leg.log.exception("bridge_hook_failed", hook=getattr(hook, "__qualname__", repr(hook)))

    # --- teardown ---------------------------------------------------------------------

    def release(self, leg: Leg) -> None:
        """The flow has ended: free timers, playback, media and SIP state."""
        if leg.closed:
            return
        leg.closed = True
        if leg.max_duration is not None:
            leg.max_duration.cancel()
            leg.max_duration = None  # its callback holds the leg: a cycle only a full GC would free
        for name in list(leg.timers):
            leg.cancel_timer(name)
        leg.unbridge()  # every path out of a bridge unbridges first; this is the safety net
        self.pacer.stop(leg)
        self.legs.pop(leg.call_id, None)
        self._spawn(leg.close_media())


def write_status(path: Path, acd: AgentPool, calls: int = 0, pacer: MediaClock | None = None) -> None:
    """Agents and queues as JSON for `python -m ivr status`; replaced atomically."""
    status = {
        "written_at": utc_now().isoformat(),
        "agents": [
            {"agent": s.number, "seat_group": s.seat_group, "state": s.state.value, "call_id": s.call_id,
             "idle_since": s.idle_since.isoformat() if s.idle_since else None}
            for s in sorted(acd.seats.values(), key=lambda s: (s.seat_group, s.number))
        ],
        "queues": {group: [w.call_id for w in waiting] for group, waiting in acd.queues.items()},
        "calls": calls,
        "pacer": pacer.stats() if pacer is not None else {},
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status, ensure_ascii=False, indent=1), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        log.warning("status_file_failed", path=str(path), error=str(exc))


def _refer_target(refer_to: str) -> str | None:
    """The user part of a Refer-To's SIP URI (`<sip:group-senior@host>`), None when it is not one."""
    text = refer_to.strip()
    if text.startswith("<") != text.endswith(">") and ">" not in text:
        return None
    if "<" in text:
        if ">" not in text:
            return None
        text = text[text.index("<") + 1 : text.index(">")]
    if not text.lower().startswith(("sip:", "sips:")) or "@" not in text:
        return None
    try:
        user = parse_uri(text.split("?")[0]).user or ""
    except Exception:
        return None
    return user if user and all(ch.isalnum() or ch in "-_.+" for ch in user) else None


_DTMF_KEYS = set("0123456789*#ABCD")


def _info_digit(request: SipRequest) -> str | None:
    """The key in a SIP INFO body: `Signal=5` (application/dtmf-relay) or `5` (application/dtmf)."""
    content_type = (request.content_type or "").lower()
    body = request.text.strip()
    if content_type == "application/dtmf-relay":
        for line in body.splitlines():
            key, _, value = line.partition("=")
            if key.strip().lower() == "signal" and value.strip().upper() in _DTMF_KEYS:
                return value.strip().upper()
    elif content_type == "application/dtmf" and body.upper() in _DTMF_KEYS:
        return body.upper()
    return None
