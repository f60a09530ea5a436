#!/usr/bin/env python3
"""Start the hotline IVR: `python run_ivr.py --config sip.conf`.

Loads and validates the config, migrates the CRM database, closes calls a
previous crash left open, renders and encodes the prompts, then answers SIP
on the configured address until SIGTERM or SIGINT. The first signal drains:
new calls get 503 + Retry-After while calls in progress finish, for up to
`[general] drain_seconds`; calls still up then are ended politely (BYE), the
CRM outbox is flushed, and the process exits 0. A second signal skips the wait.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import uvloop
from sqlalchemy import Engine as SqlEngine
from sqlalchemy.exc import SQLAlchemyError

from crm_bridge.agent_commands import take_pending
from crm_bridge.characteristics import Characteristics, Settings, characteristics
from crm_bridge.customers import CallerDirectory, senior_names
from crm_bridge.db import make_engine, migrate, reconcile_interrupted, sync_seat_groups
from crm_bridge.outbox import Outbox, OutboxError
from crm_bridge.records import RecordCharacteristics
from crm_bridge.webhook import WebhookPusher
from crm_bridge.writer import CrmWriter, open_callbacks
from crm_bridge.writer_process import CrmWriterProcess
from desk.config import load_desk_config
from ivr.config import Config, ConfigError, load_config
from ivr.engine import Engine
from ivr.greeting import Greeter, HolidayCalendar
from ivr.logs import configure_logging
from ivr.media import g711_encoders
from ivr.recording import Finished, Recorder, recover_interrupted
from ivr.screenpop import DeskLink, desk_base_url
from ivr.service import SEAT_GROUPS
from ivr.shared_acd import SharedAcd
from prompts.catalogue import catalogue_for
from prompts.library import PromptError, PromptLibrary, load_prompts
from prompts.music import MusicError, MusicOnHold, load_music

log = structlog.get_logger("run_ivr")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Hotline IVR: answers SIP calls per the service scripts.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python run_ivr.py --config sip.conf.example     # 127.0.0.1:5060, SQLite var/hotline.db\n"
               "  python run_ivr.py --config sip.conf --ring-seconds 0 --log-level debug\n\n"
               "SIGTERM or Ctrl-C drains (new calls get 503, calls in progress finish for up to\n"
               "[general] drain_seconds); a second signal skips the wait. scripts/run-ivr.sh sets up\n"
               "and starts the desk beside it.",
    )
    p.add_argument("--config", type=Path, default=Path("sip.conf.example"),
                   help="sip.conf to load (default: %(default)s)")
    p.add_argument("--bind", help="SIP/RTP bind address (overrides [general] bind)")
    p.add_argument("--port", type=int, help="SIP UDP port (overrides [general] port)")
    p.add_argument("--db-url", help="CRM database URL, e.g. sqlite:///var/hotline.db or postgresql+psycopg://… ")
    p.add_argument("--ring-seconds", type=float, help="ring time before answering (overrides [general] ring_seconds)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="overrides [log] level")
    return p.parse_args(argv)


def apply_overrides(config: Config, args: argparse.Namespace) -> Config:
    general = config.general
    if args.bind:
        general = replace(general, bind=args.bind)
    if args.port is not None:
        general = replace(general, port=args.port)
    if args.ring_seconds is not None:
        general = replace(general, ring_seconds=args.ring_seconds)
    config = replace(config, general=general)
    if args.db_url:
        config = replace(config, database_url=args.db_url)
    if args.log_level:
        config = replace(config, log_level=args.log_level)
    return config


def prepare_prompts(config: Config) -> PromptLibrary:
    """Render (or load) and encode every prompt; runs before the event loop starts."""
    texts = catalogue_for(config, senior_people(config))
    p = config.prompts
    prompts = PromptLibrary(
        load_prompts(texts, voice=p.voice, rate=p.rate, cache_dir=p.cache_dir, recorded_dir=p.recorded_dir),
        g711_encoders(config.general.payload_types),
    )
    log.info("prompts_ready", count=len(prompts.prompts),
             seconds=round(sum(x.seconds for x in prompts.prompts.values()), 1))
    return prompts


def senior_people(config: Config) -> list[tuple[str, str]]:
    """(name, gender) of the CRM's senior customers, whose salutations are rendered now, not during a call."""
    if not config.greet_senior_by_name:
        return []
    db = make_engine(config.database_url)
    try:
        migrate(db)  # the gender column may be new
        people = senior_names(db, config.tiers)
    except SQLAlchemyError as exc:  # the start goes on and reports the database as it always does
        log.warning("senior_names_failed", error=str(exc).splitlines()[0])
        return []
    finally:
        db.dispose()
    log.info("senior_names", customers=len(people))
    return people


def prepare_music(config: Config) -> MusicOnHold:
    """The hold music (`[queues] music`, else the generated piece), encoded once for every call to share."""
    q = config.queues
    pcm = load_music(q.music, config.prompts.cache_dir, q.music_volume)
    music = MusicOnHold(pcm, g711_encoders(config.general.payload_types))
    log.info("music_ready", source=str(q.music) if q.music else "generated", seconds=round(music.seconds, 1))
    return music


def make_writer(config: Config, db: SqlEngine, outbox: Outbox, pusher: WebhookPusher | None,
                worker: str) -> CrmWriter:
    """`[database] writer`: the writer process (the event loop only appends to the journal) or the thread."""
    deliveries = pusher.wake if pusher else None
    # a questionnaire answer asking for a follow-up schedules one ([followup] on_survey)
    followup_on_survey = config.followup.enabled and config.followup.on_survey
    if config.crm_writer == "thread":
        return CrmWriter(db, outbox, webhook=pusher is not None, on_deliveries=deliveries, worker=worker,
                         followup_on_survey=followup_on_survey)
    return CrmWriterProcess(db, outbox, webhook=pusher is not None, on_deliveries=deliveries, worker=worker,
                            log_level=config.log_level, log_format=config.log_format,
                            followup_on_survey=followup_on_survey)


async def serve(config: Config, prompts: PromptLibrary, desk: DeskLink | None = None,
                music: MusicOnHold | None = None) -> int:
    db = make_engine(config.database_url)
    migrate(db)
    # this process's name in the shared CRM: on its call rows, and in the agents table with shared_agents
    worker = config.cluster.worker or f"{socket.gethostname()}:{config.general.port}"
    outbox = Outbox(config.outbox_dir)
    pusher = WebhookPusher(db, config.webhook) if config.webhook.url else None
    writer = make_writer(config, db, outbox, pusher, worker)
    # Order matters: records a previous process journaled but never applied go
    # in first (a call's final row among them), then what is still open was
    # really cut off and is closed as failed.
    writer.recover()
    # One IVR owns the CRM: whatever is open was cut off. Several workers share it
    # ([cluster]): only this worker's own calls were; the others' are in progress.
    clustered = bool(config.cluster.worker) or config.cluster.shared_agents
    reconcile_interrupted(db, webhook=pusher is not None, worker=worker if clustered else None)
    writer.start()
    if pusher is not None:
        pusher.start()

    sync_seat_groups(db, config.agents, SEAT_GROUPS)
    greeter = Greeter(config.dayparts, config.general.zone, HolidayCalendar(config.holidays_file))
    directory = CallerDirectory(db, config.tiers)
    acd = None
    if config.cluster.shared_agents:
        acd = SharedAcd(config.queues, tuple(SEAT_GROUPS), db, worker,
                        worker_timeout_s=config.cluster.worker_timeout_seconds)
        log.info("shared_agents", worker=worker)
    # the desk's buttons (pause, resume, end wrap-up) reach the IVR through the CRM
    own_agents = None if config.cluster.shared_agents else {a.number for a in config.agents}
    desk_commands = partial(take_pending, db, taken_by=worker or "ivr", agents=own_agents)
    engine = Engine(config, prompts, writer, greeter, directory=directory, acd=acd, desk=desk,
                    desk_commands=desk_commands, music=music, followup_db=db, worker=worker)
    recorder, analyser = start_recorder(config, db, writer, engine, worker if clustered else None)
    if not clustered:  # one IVR owns the callbacks a previous run did not finish; workers would each dial them
        engine.dialler.restore(await asyncio.to_thread(open_callbacks, db))
    await engine.start()
    if config.metrics_port:
        try:
            engine.metrics.serve(config.metrics_bind, config.metrics_port)
        except OSError as exc:
            await engine.stop()
            raise OSError(f"metrics HTTP {config.metrics_bind}:{config.metrics_port}: {exc.strerror or exc}") from None
        log.info("metrics", url=f"http://{config.metrics_bind}:{config.metrics_port}/metrics")
    # Everything built so far (prompt frames, config, ORM, libraries) lives until
    # exit: take it out of the cyclic GC, whose full collections would otherwise
    # walk it all and stall the 20 ms media clock.
    gc.collect()
    gc.freeze()
    # Full collections walk every object of every call in progress: 60-250 ms
    # with 500-1000 calls up, a hole in every prompt being played. The young
    # generations stay automatic (sub-millisecond); the full collection is left
    # to the engine's ivr.gcpolicy: when no call is up, or when memory grows.
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1_000_000_000)
    # The CRM writer, webhook, look-up and follow-up threads hold the GIL for up
    # to the switch interval (5 ms by default) before the event loop gets it
    # back, and uvloop gives the GIL up around every callback (each received
    # packet): while such a thread is busy, the loop gets about one callback
    # through per interval and the tick's timer falls behind the packets. At
    # 0.5 ms, 400 callers beside 100 follow-ups had ticks up to 22-35 ms late
    # (p99 9-15 ms); at 0.1 ms at most 2-7 ms (p99 2-5 ms), same CPU. 50 us
    # was no better (max 10-11 ms), 0.25 ms missed p99 in one run of three.
    # The price: 300 recorded bridged calls, whose recorder thread is busy all
    # along, take about 8 % of a core more (docs/load-testing.md).
    sys.setswitchinterval(0.0001)

    drain, hurry = asyncio.Event(), asyncio.Event()

    def on_signal(name: str) -> None:
        if drain.is_set():
            log.warning("stop_now", signal=name, active_calls=len(engine.legs))
            hurry.set()
        else:
            log.info("draining", signal=name, active_calls=len(engine.legs), limit_s=config.general.drain_seconds)
            drain.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig.name)
    g = config.general
    listeners = [f"{t}:{g.bind}:{g.tls_port if t == 'tls' else g.port}"
                 for t in ("udp", "tcp", "tls") if t in g.transports]
    print(f"hotline IVR ready on {', '.join(listeners)}", flush=True)
    await drain.wait()

    left_up = await engine.drain(config.general.drain_seconds, hurry)
    log.info("stopping", calls_cut_short=left_up)
    await engine.stop()
    if recorder is not None:  # every bridge is closed: finish the files (off the loop), then their rows (on it)
        await asyncio.to_thread(recorder.writer.close)
        if analyser is not None:  # the last files' characteristics, before the CRM writer closes
            await asyncio.to_thread(analyser.close)
        recorder.close()
    await directory.close()
    unwritten = await asyncio.to_thread(writer.close)
    if pusher is not None:
        await asyncio.to_thread(pusher.close)
    # Records the database could not take are still in the outbox and go in at
    # the next start, so they do not make this an unclean exit.
    pushed = {"webhook_delivered": pusher.delivered, "webhook_dead_letters": pusher.dead} if pusher else {}
    log.info("stopped", crm_records_written=writer.written, deferred_to_outbox=unwritten, crm_writer=config.crm_writer,
             **pushed)
    return 0


def start_recorder(config: Config, db: Any, writer: CrmWriter, engine: Engine, worker: str | None
                   ) -> tuple[Recorder | None, Analyser | None]:
    """[recording]: mark what a previous run left unfinished, then record bridged calls (ivr.recording)."""
    rec = config.recording
    marked = recover_interrupted(db, rec.directory, worker)
    if marked:
        log.warning("recordings_interrupted", count=marked, directory=str(rec.directory))
    if not rec.enabled:
        return None, None
    recorder = Recorder(rec, writer.submit, worker=writer.worker, metrics=engine.metrics,
                        call_soon_threadsafe=asyncio.get_running_loop().call_soon_threadsafe)
    engine.metrics.recording_queue_depth.set_function(lambda: recorder.writer.depth)
    engine.bridge_hooks.append(recorder.attach)
    analyser = Analyser(writer.submit)
    try:
        analyser.start()
    except Exception as exc:  # noqa: BLE001 — the calls and the files matter more than their analysis
        log.warning("recording_analysis_unavailable", error=repr(exc),
                    hint="python -m crm_bridge characteristics --all-missing computes them later")
    else:
        recorder.writer.completed_hooks.append(analyser)
    for command in ("pause_recording", "resume_recording"):
        engine.agent_command_hooks[command] = partial(_desk_recording_command, recorder, command)
    recorder.start()
    log.info("recording", directory=str(rec.directory), format=rec.format,
             seat_groups=sorted(rec.seat_groups) or "all", services=sorted(rec.services) or "all")
    return recorder, analyser


def _analysis_child(ivr: int) -> None:
    """The analysis process yields the CPU to the IVR (nice 10), where the system allows it, and ends with it."""
    try:
        os.nice(10)
    except OSError:  # a service whose system-call filter refuses setpriority: at the IVR's priority, then
        pass
    # An IVR killed outright (kill -9, the OOM killer) never shuts the pool down, and the child, holding
    # both ends of its task queue, would wait for work forever: it watches its parent instead.
    threading.Thread(target=_exit_without, args=(ivr,), name="exit-with-ivr", daemon=True).start()


def _exit_without(ivr: int) -> None:
    while os.getppid() == ivr:
        time.sleep(1)
    os._exit(0)


class Analyser:
    """Finished recordings' conversation characteristics (talk, silences, over-talk), stored with their rows.

    Computed in a child process at low priority, one file at a time: the VAD
    over a long file is seconds of CPU, which in the recorder's thread would
    hold the GIL against the media clock (300 calls ending together: minutes
    of it). Called in the recorder's writer thread with each finished file;
    the row goes through the CRM writer after the recording's own `complete`
    row, so the two land in order. A file whose analysis fails is logged and
    left for `python -m crm_bridge characteristics --all-missing`.
    """

    def __init__(self, submit: Callable[[RecordCharacteristics], None]) -> None:
        self.submit = submit
        self._pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """Start the child now, before any call: starting it at the first finished recording forked a process
        of the IVR's size in the middle of calls (a stall of tens of ms for the media clock)."""
        # spawned, not forked: this process has threads
        self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_analysis_child, initargs=(os.getpid(),))
        self._pool.submit(os.getpid).result(timeout=60)

    def __call__(self, done: Finished) -> None:
        assert self._pool is not None, "hooked to the recorder only once started"
        self._pool.submit(characteristics, done.path, Settings(), done.paused).add_done_callback(
            partial(self._store, done))  # a paused span is neither talk nor silence

    def _store(self, done: Finished, future: Future[Characteristics]) -> None:
        try:
            found = future.result()
        except Exception as exc:  # noqa: BLE001 — a broken file or a killed child: the call's row stays without
            log.warning("recording_analysis_failed", call_id=done.sip_call_id, path=done.relative, error=repr(exc))
            return
        self.submit(RecordCharacteristics(done.relative, found.to_json()))
        log.info("recording_analysed", call_id=done.sip_call_id, path=done.relative,
                 caller_talk_s=found.caller_talk_s, agent_talk_s=found.agent_talk_s,
                 longest_silence_s=found.longest_silence_s, overtalk_count=found.overtalk_count)

    def close(self) -> None:
        """Wait for the files handed over so far, then stop the child."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def _desk_recording_command(recorder: Recorder, command: str, agent: str, requested_by: str) -> None:
    recorder.command(agent, command, requested_by, "desk")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = apply_overrides(load_config(args.config), args)
        # the agent desk (python -m desk) reads the same sip.conf: its address and display-name
        # template name callers to agents' phones
        desk_config = load_desk_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}\nFix the setting and start again; sip.conf.example documents every key.", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    try:
        prompts = prepare_prompts(config)
        music = prepare_music(config)
        desk_url = desk_base_url(desk_config.public_url, desk_config.bind, desk_config.port)
        if desk_url is None:
            log.warning("desk_url_unknown", reason=f"[desk] bind is {desk_config.bind} and public_url is empty: "
                                                   "agents' phones get no Call-Info link; set [desk] public_url")
        desk = DeskLink(desk_config.display_name, desk_url)
        code = uvloop.run(serve(config, prompts, desk, music))
        # the loop and its signal handlers are gone: a late SIGTERM (a supervisor repeating itself)
        # must not turn a clean stop into a kill by signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return code
    except PromptError as exc:
        log.error("prompts_failed", reason=str(exc))
        return 3
    except MusicError as exc:
        log.error("music_failed", reason=str(exc))
        return 3
    except OutboxError as exc:
        log.error("outbox_failed", reason=str(exc))
        return 3
    except OSError as exc:
        log.error("startup_failed", reason=str(exc))
        return 3


if __name__ == "__main__":
    sys.exit(main())
