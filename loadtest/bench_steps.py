"""`loadtest/bench.py` without --bridged: media steps, signalling steps and overload against a fresh IVR.

    .venv/bin/python loadtest/bench.py --smoke          # bounded CI version, about 1 minute

Starts a fresh IVR (SQLite, ring_seconds 0, metrics on) and runs three phases:

1. Media steps (`--steps 100,300,500`): that many silent callers at once
   (greeting, three prompts, VAD listening, CRM writes), placed at `--rate`
   calls/s. A few extra callers (`--sink-calls`) have their SDP point at an
   RTP sink in this process, which measures the arrival jitter of the IVR's
   paced G.711 (RFC 3550 interarrival jitter, and the p99 of the deviation
   of each packet's spacing from 20 ms). The IVR's CPU and RSS are sampled
   from /proc; its media-clock lateness comes from its metrics. The CRM must
   hold one finished row per call SIPp completed. With `--music-share F` that
   share of the callers (and of the sink callers) are queue callers instead
   (loadtest/scenarios/music_caller.xml, music_sink_caller.xml): they press 9
   then 2, wait in the queue (no agent is logged in) on the announcements and
   hold music, and hang up after ~32 s, ending as `abandoned_queue`.
2. Signalling steps (`--cps 100,200,250`): INVITE/200/ACK/BYE at that many
   calls/s for `--cps-seconds`, against the IVR and, in the same run, against
   SIPp's own UAS (`sipp -sn uas`) as the ceiling; the ratio is printed.
3. Overload: 2x the IVR's configured `max_invites_per_second`; the IVR must
   answer 503 at once for the excess, lose nothing it accepted, and keep its
   RSS flat.

`--media-only` skips phases 2 and 3. With `--followups N` the first media step
also dials N follow-up calls (回访) beside the callers (loadtest/bench_followups.py).

With `--workers N` (2 or more) the callers dial Kamailio with loadtest/kamailio/,
which spreads them over N IVR processes (each its own SIP port, RTP range and
SQLite CRM); calls, calls/s, CPU and RSS are the pool's, Kamailio's CPU apart.

With `--desk N` (one worker) the agent desk runs beside the IVR, and N supervisors
follow the live wallboard through each media step (loadtest/wallboard_clients.py:
its events, and a reload of the page every 2 s); the step reports what they saw.

Writes loadtest/reports/bench-<time>.json and the chart beside it as .png (or --report PATH).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_common import (  # loadtest/, beside bench.py (run by path)
    ROOT,
    SCENARIOS,
    RtpSink,
    Target,
    balancer_cpu,
    cpu_between,
    free_port,
    lateness,
    sipp,
    start_desk,
    start_target,
    write_report,
    writer_cpu,
)
from bench_followups import followup_results, followups_target, seed_complaints, start_followups
from wallboard_clients import watch  # loadtest/, beside bench.py (run by path)

# the CRM outcome each kind of media caller ends with: silent callers are hung up after the silent-call routine,
# queue (music) callers hang up while they wait in the queue
SILENT_ROWS = "outcome = 'silent' AND silent_attempts = 3"
QUEUE_ROWS = "outcome = 'abandoned_queue' AND hangup_by = 'caller'"


def media_step(ivr: Target, sink: RtpSink, calls: int, opts: argparse.Namespace) -> dict[str, object]:
    """`calls` concurrent callers (a --music-share of them queue callers on hold music) plus the sink callers."""
    before = {"silent": ivr.crm_rows(SILENT_ROWS), "abandoned_queue": ivr.crm_rows(QUEUE_ROWS)}
    t0 = ivr.samples[-1][0] if ivr.samples else 0.0
    rss_idle = ivr.rss()
    target = f"127.0.0.1:{ivr.port}"
    sink.take()
    result: dict[str, dict[str, int]] = {}
    music = round(calls * opts.music_share)
    music_sink = round(opts.sink_calls * opts.music_share)
    # scenario, callers, ceiling on concurrent calls, rate: the silent and music callers share --rate by their counts
    runs = {
        "main": ("silent_caller.xml", calls - music, calls - music, opts.rate * (calls - music) / max(1, calls), []),
        "music": ("music_caller.xml", music, music, opts.rate * music / max(1, calls), []),
        "sink": ("sink_caller.xml", opts.sink_calls - music_sink, None, None, ["-key", "sink_port", str(sink.port)]),
        "music_sink": ("music_sink_caller.xml", music_sink, None, None, ["-key", "sink_port", str(sink.port)]),
    }

    def run(name: str) -> None:
        scenario, n, limit, rate, extra = runs[name]
        if n <= 0:
            result[name] = {"successful": 0, "failed": 0, "exit": 0}
            return
        args = ["-sf", str(SCENARIOS / scenario), "-inf", str(SCENARIOS / "callers.csv"), "-s", "95000",
                "-m", str(n), "-r", str(round(rate, 2) if rate is not None else n), "-mi", "127.0.0.1", *extra]
        if limit is not None:
            args += ["-l", str(limit)]
        result[name] = sipp(ivr.work, target, args, timeout=200)

    threads = [threading.Thread(target=run, args=(name,)) for name in ("sink", "music_sink", "music")]
    gateway, outbound, seeded = opts.gateway, 0, 0.0
    if gateway is not None and not gateway.used:  # --followups: the first step dials them beside the callers
        gateway.used, outbound, seeded = True, gateway.calls, time.time()
        seed_complaints(ivr.workers[0].db, outbound)
    for t in threads:
        t.start()
    wallboard: dict[str, object] = {}
    if ivr.desk is not None:  # supervisors on the wallboard for the whole step (silent calls last ~32 s)
        desk = ivr.desk
        watcher = threading.Thread(target=lambda: wallboard.update(watch(
            desk.url, desk.user, desk.password, clients=opts.desk, seconds=calls / opts.rate + 30, reload_every=2)))
        watcher.start()
    run("main")
    for t in threads:
        t.join()
    if ivr.desk is not None:
        watcher.join()
    callers_done = time.time()
    followups = followup_results(ivr.workers[0], gateway, outbound, seeded, callers_done) if outbound else None
    t1 = ivr.samples[-1][0]
    step = [s for s in ivr.samples if t0 <= s[0] <= t1]
    peak = max((s[3] for s in step), default=0)
    busy = [s for s in step if s[3] >= 0.9 * max(1, peak)]
    m = ivr.metrics()
    jitter = sink.take()
    ok = sum(r["successful"] for r in result.values())
    time.sleep(1.0)  # the writer's last batch
    by_outcome = {"silent": ivr.crm_rows(SILENT_ROWS) - before["silent"],
                  "abandoned_queue": ivr.crm_rows(QUEUE_ROWS) - before["abandoned_queue"]}
    expected = {"silent": result["main"]["successful"] + result["sink"]["successful"],
                "abandoned_queue": result["music"]["successful"] + result["music_sink"]["successful"]}
    rows = sum(by_outcome.values())
    return {
        "offered_calls": calls + opts.sink_calls,
        "music_share": opts.music_share,
        "music_calls": music + music_sink,
        "peak_concurrent_calls": peak,
        "sipp_successful": ok,
        "sipp_failed": sum(r["failed"] for r in result.values()),
        "sipp_by_scenario": {k: [r["successful"], r["failed"]] for k, r in result.items()},
        "crm_rows": rows,
        "crm_rows_by_outcome": by_outcome,
        "crm_matches_sipp": by_outcome == expected,
        "cpu_percent_of_one_core_at_peak": cpu_between(step, busy[0][0], busy[-1][0]) if len(busy) > 1 else 0.0,
        **(balancer_cpu(ivr, busy[0][0], busy[-1][0]) if len(busy) > 1 else {}),
        **(writer_cpu(ivr, busy[0][0], busy[-1][0]) if len(busy) > 1 else {}),
        "rss_peak_mb": round(max((s[2] for s in step), default=rss_idle) / 2**20, 1),
        "rss_per_call_kb": round((max((s[2] for s in step), default=rss_idle) - rss_idle) / 1024 / max(1, peak), 1),
        **lateness(ivr, t0, t1, m),
        "rtp_sink": jitter,
        **({"wallboard": wallboard} if ivr.desk is not None else {}),
        **({"followups": followups} if followups is not None else {}),
    }


def cps_step(ivr: Target | None, uas_port: int | None, rate: int, seconds: float, work: Path) -> dict[str, object]:
    """`rate` calls/s for `seconds` against the IVR (ivr) or SIPp's UAS (uas_port)."""
    calls = int(rate * seconds)
    if ivr is not None:
        target, scenario = f"127.0.0.1:{ivr.port}", ["-sf", str(SCENARIOS / "signalling_call.xml"), "-d", "0",
                                                     "-inf", str(SCENARIOS / "callers.csv"), "-s", "95000"]
        before = ivr.metrics()
        t0 = ivr.samples[-1][0]
        rss0 = ivr.rss()
    else:
        target, scenario = f"127.0.0.1:{uas_port}", ["-sn", "uac", "-s", "95000"]
    started = time.monotonic()
    r = sipp(work, target, [*scenario, "-m", str(calls), "-r", str(rate), "-l", str(max(100, rate * 4))],
             timeout=seconds + 60)
    wall = time.monotonic() - started
    # achieved: calls the far end answered (200) per second; SIPp's UAS answers all of them,
    # the IVR answers or refuses with 503 (SIPp counts both as successful calls)
    out: dict[str, object] = {"offered_cps": rate, "calls": calls, "sipp_successful": r["successful"],
                              "sipp_failed": r["failed"], "wall_s": round(wall, 1),
                              "achieved_cps": round(r["successful"] / max(wall, seconds), 1)}
    if ivr is not None:
        time.sleep(1.5)
        after = ivr.metrics()
        t1 = ivr.samples[-1][0]
        refused_503 = 'hotline_sip_refused_total{status="503"}'
        refused = after.get(refused_503, 0) - before.get(refused_503, 0)
        answered = sum(v - before.get(k, 0) for k, v in after.items() if k.startswith("hotline_calls_total{"))
        out.update({
            "answered": int(answered), "refused_503": int(refused),
            "achieved_cps": round(answered / max(wall, seconds), 1),
            "cpu_percent_of_one_core": cpu_between(ivr.samples, t0, t1),
            **balancer_cpu(ivr, t0, t1),
            **writer_cpu(ivr, t0, t1),
            "rss_before_mb": round(rss0 / 2**20, 1), "rss_after_mb": round(ivr.rss() / 2**20, 1),
        })
    return out


def chart(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    steps = report["media_steps"]
    x = [s["peak_concurrent_calls"] for s in steps]
    left.plot(x, [s["cpu_percent_of_one_core_at_peak"] for s in steps], "o-", label="IVR CPU, % of one core")
    left.set_xlabel("concurrent calls with media")
    left.set_ylabel("% of one core")
    twin = left.twinx()
    twin.plot(x, [s["rtp_sink"]["spacing_deviation_ms_p99"] for s in steps], "s--", color="tab:red",
              label="RTP spacing deviation p99 (ms)")
    twin.plot(x, [s["media_clock_lateness_ms_p99"] for s in steps], "^--", color="tab:orange",
              label="media clock lateness p99 (ms)")
    twin.plot(x, [s["sipp_failed"] for s in steps], "x:", color="black", label="failed calls")
    twin.axhline(5, color="tab:red", linewidth=0.5)
    twin.set_ylabel("ms / failed calls")
    left.legend(loc="upper left", fontsize=8)
    twin.legend(loc="center left", fontsize=8)
    left.set_title("Media: silent callers (greeting, prompts, VAD, CRM)")
    cps = report["signalling_steps"]
    offered = [c["ivr"]["offered_cps"] for c in cps]
    right.plot(offered, [c["ivr"]["achieved_cps"] for c in cps], "o-", label="IVR answered calls/s")
    right.plot(offered, [c["sipp_uas"]["achieved_cps"] for c in cps], "s--", label="SIPp -sn uas calls/s")
    right.plot(offered, [c["ivr"]["sipp_failed"] for c in cps], "x:", color="black", label="IVR failed calls")
    over = report.get("overload")
    if over:  # not with --media-only
        right.plot([over["offered_cps"]], [over["answered"] / max(1.0, over["calls"] / over["offered_cps"])], "r*",
                   markersize=12, label=f"2x capacity: {over['refused_503']} x 503")
    ceiling = report.get("sipp_uas_ceiling")
    if ceiling:
        right.text(0.02, 0.97,
                   f"SIPp -sn uas alone: {ceiling['achieved_cps']:.0f} calls/s of {ceiling['offered_cps']} offered",
                   transform=right.transAxes, fontsize=8, va="top")
    right.set_xlabel("offered calls/s (INVITE, 200, ACK, BYE)")
    right.legend(fontsize=8, loc="lower right")
    right.set_title("Signalling")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run(opts: argparse.Namespace) -> int:
    """The three phases (or the media steps alone), the report and its chart; 0 when every step was healthy."""
    if opts.smoke:
        opts.steps, opts.rate, opts.sink_calls, opts.cps, opts.cps_seconds, opts.capacity = "20", 20, 3, "100", 4, 100
        opts.uas_ceiling = 500
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report_path = opts.report or ROOT / "loadtest" / "reports" / f"bench-{stamp}.json"
    work = Path(tempfile.mkdtemp(prefix="ivr-bench-"))

    if opts.desk and opts.workers != 1:
        raise SystemExit("--desk runs with one worker (the desk reads that worker's CRM)")
    if opts.followups:  # up before the IVR, whose sip.conf names its port
        opts.gateway = start_followups(work, opts)
    try:
        ivr = start_target(work, opts)
    except BaseException:
        if opts.gateway is not None:
            opts.gateway.stop()
        raise
    if opts.desk:
        ivr.desk = start_desk(ivr.workers[0])
    idle_rss = ivr.rss()
    try:
        sink = RtpSink()
    except OSError:
        ivr.stop()
        raise
    sipp_version = subprocess.run(["sipp", "-v"], capture_output=True, text=True).stdout.strip().splitlines()
    report: dict[str, object] = {
        "machine": {"cores": os.cpu_count(), "python": sys.version.split()[0], "loadavg_at_start": os.getloadavg(),
                    "sipp": sipp_version[0] if sipp_version else "?"},
        "config": {"capacity_invites_per_second": opts.capacity, "max_calls": opts.max_calls, "smoke": opts.smoke,
                   "workers": opts.workers, "sip_entry": "kamailio" if ivr.balancer is not None else "ivr",
                   "wallboard_clients": opts.desk, "music_share": opts.music_share, "followups": opts.followups,
                   "crm_writer": opts.writer},
        "rss_idle_mb": round(idle_rss / 2**20, 1),
        "media_steps": [],
        "signalling_steps": [],
    }
    try:
        for n in [int(x) for x in opts.steps.split(",")]:
            step = media_step(ivr, sink, n, opts)
            report["media_steps"].append(step)  # type: ignore[union-attr]
            print(f"media {n:>4}: {json.dumps(step)}", flush=True)

        if not opts.media_only:  # phases 2 and 3
            uas_port = free_port()
            uas = subprocess.Popen(["sipp", "-sn", "uas", "-i", "127.0.0.1", "-p", str(uas_port), "-nostdin", "-bg"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
            time.sleep(1)
            try:
                for rate in [int(x) for x in opts.cps.split(",")]:
                    mine = cps_step(ivr, None, rate, opts.cps_seconds, work)
                    theirs = cps_step(None, uas_port, rate, opts.cps_seconds, work)
                    ratio = round(float(mine["achieved_cps"]) / max(1.0, float(theirs["achieved_cps"])), 2)  # type: ignore[arg-type]
                    step_report = {"ivr": mine, "sipp_uas": theirs, "ratio_to_sipp_uas": ratio}
                    report["signalling_steps"].append(step_report)  # type: ignore[union-attr]
                    print(f"cps {rate:>5}: ivr {json.dumps(mine)}\n"
                          f"           sipp uas {json.dumps(theirs)} ratio {ratio}", flush=True)
                ceiling = cps_step(None, uas_port, opts.uas_ceiling, opts.cps_seconds, work)
                report["sipp_uas_ceiling"] = ceiling
                print(f"sipp uas alone at {opts.uas_ceiling}/s: {json.dumps(ceiling)}", flush=True)
            finally:
                subprocess.run(["pkill", "-f", f"sipp -sn uas -i 127.0.0.1 -p {uas_port}"], check=False)
                uas.wait(10)

            failed_before = ivr.crm_rows("outcome = 'failed'")
            over = cps_step(ivr, None, 2 * opts.capacity * opts.workers, opts.cps_seconds, work)  # each has `capacity`
            # A call a worker answered after its caller had it refused or failed (a late 200 behind a
            # balancer) is never ACKed: the worker ends it `failed` after its 200's ACK timeout (32 s).
            # SIPp counts it failed or, when a 503 came first, refused; the CRM says it was lost.
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and ivr.metrics().get("hotline_calls_active", 0) > 0:
                time.sleep(1)
            over["answered_then_failed"] = ivr.crm_rows("outcome = 'failed'") - failed_before
            over["accepted_then_lost"] = max(int(over["sipp_failed"]), int(over["answered_then_failed"]))  # type: ignore[call-overload]
            report["overload"] = over
            print(f"overload {2 * opts.capacity * opts.workers}/s: {json.dumps(over)}", flush=True)
    finally:
        sink.close()
        if opts.gateway is not None:
            opts.gateway.stop()
        report["loadavg_at_end"] = os.getloadavg()  # other work on the machine competes for its 2 cores
        if ivr.desk is not None:
            ivr.desk.stop()
        exits = ivr.stop()
        report["ivr_exit"] = max(exits, key=abs)
        report["ivr_log_tracebacks"] = ivr.tracebacks()

    steps = report["media_steps"]
    top = max(steps, key=lambda s: s["peak_concurrent_calls"])  # type: ignore[arg-type, return-value]
    report["targets"] = {
        "concurrent_media_calls": {"measured": top["peak_concurrent_calls"], "failed": top["sipp_failed"],
                                   "target": f">= {1000 * opts.workers}, 0 failed"},
        "rtp_spacing_p99_ms": {"measured": top["rtp_sink"]["spacing_deviation_ms_p99"], "target": "<= 5"},
        "media_clock_lateness_p99_ms": {"measured": top["media_clock_lateness_ms_p99"], "target": "<= 5"},
        "media_clock_lateness_max_ms": {"measured": top["media_clock_lateness_ms_max"], "target": "<= 20",
                                        "max_ever": top["media_clock_lateness_ms_max_ever"]},
        "crm_rows_match_sipp": {"measured": all(s["crm_matches_sipp"] for s in steps), "target": True},
        "memory_per_call_kb": {"measured": top["rss_per_call_kb"], "target": "<= 100"},
    }
    if not opts.media_only:
        clean = [c["ivr"] for c in report["signalling_steps"]  # type: ignore[union-attr]
                 if c["ivr"]["sipp_failed"] == 0 and c["ivr"]["refused_503"] == 0]
        best_cps = max((c["achieved_cps"] for c in clean), default=0)
        uas_cps = report["sipp_uas_ceiling"]["achieved_cps"]  # type: ignore[index]
        over = report["overload"]  # type: ignore[assignment]
        report["targets"]["signalling_cps_zero_failures"] = {  # type: ignore[index]
            "measured": best_cps, "sipp_uas_ceiling_cps": uas_cps,
            "target": f">= {600 * opts.workers} (600 a worker, 0.4 of SIPp's UAS)",
            "ratio": round(best_cps / max(1.0, uas_cps), 3)}
        report["targets"]["overload_2x"] = {  # type: ignore[index]
            "measured": {"503": over["refused_503"], "failed": over["sipp_failed"],
                         "rss_mb": [over["rss_before_mb"], over["rss_after_mb"]]},
            "target": "503s, 0 failed, RSS flat"}
    followups_ok = followups_target(report, opts.followups) if opts.followups else True
    write_report(report_path, report)
    chart(report, report_path.with_suffix(".png"))
    print(json.dumps(report["targets"], indent=2, ensure_ascii=False))
    print(f"report: {report_path}\nchart:  {report_path.with_suffix('.png')}")
    healthy = all(s["sipp_failed"] == 0 and s["crm_matches_sipp"] for s in steps) and report["ivr_log_tracebacks"] == 0  # type: ignore[index]
    healthy = healthy and followups_ok
    return 0 if healthy else 1

