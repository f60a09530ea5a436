#!/usr/bin/env python3
"""Supervisors watching the wallboard while the IVR is under load.

Logs one supervisor into the agent desk (`python -m desk`), then keeps
`--clients` wallboards open: each follows the live server-sent events of
`/wallboard/events` and reloads the `/wallboard` page every `--reload`
seconds, for `--seconds`. Prints (and returns) what a supervisor would have
seen: updates received, the longest gap between two updates, page load times,
errors. `loadtest/bench.py --desk` runs it beside a media step, so the same
report says whether the wallboard disturbed the calls.

    python loadtest/wallboard_clients.py --url http://127.0.0.1:8080 --user 王经理 --password … --clients 3 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field

import httpx


@dataclass
class WallboardStats:
    clients: int = 0
    updates: int = 0
    longest_gap_s: float = 0.0
    page_loads: int = 0
    page_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        loads = sorted(self.page_ms)
        out = asdict(self)
        out.pop("page_ms")
        out["page_ms_p50"] = round(statistics.median(loads), 1) if loads else None
        out["page_ms_max"] = round(loads[-1], 1) if loads else None
        out["errors"] = self.errors[:10]
        return out


def login(base: str, user: str, password: str) -> httpx.Client:
    """A client holding a supervisor's session (the desk must run with `cookie_secure = no` over plain HTTP)."""
    client = httpx.Client(base_url=base, timeout=10, follow_redirects=False)
    page = client.get("/login").text
    token = re.search(r'name="csrf" value="([^"]+)"', page)
    form = {"username": user, "password": password, **({"csrf": token.group(1)} if token else {})}
    answer = client.post("/login", data=form)
    if answer.status_code != 303:
        raise RuntimeError(f"desk login refused: HTTP {answer.status_code}")
    return client


def watch(base: str, user: str, password: str, *, clients: int = 3, seconds: float = 30,
          reload_every: float = 5) -> dict[str, object]:
    stats = WallboardStats(clients=clients)
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def follow_events(client: httpx.Client) -> None:
        last = time.monotonic()
        try:
            with client.stream("GET", "/wallboard/events", timeout=httpx.Timeout(10, read=15)) as stream:
                pending = False  # an event's data lines end at a blank line
                for line in stream.iter_lines():
                    if line.startswith("data:"):
                        pending = True
                    elif not line and pending:
                        pending, now = False, time.monotonic()
                        with lock:
                            stats.updates += 1
                            stats.longest_gap_s = max(stats.longest_gap_s, now - last)
                        last = now
                    if time.monotonic() >= end:
                        return
        except httpx.HTTPError as exc:
            with lock:
                stats.errors.append(f"events: {type(exc).__name__}: {exc}")

    def reload_page(client: httpx.Client) -> None:
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                answer = client.get("/wallboard")
                answer.raise_for_status()
                with lock:
                    stats.page_loads += 1
                    stats.page_ms.append(1000 * (time.monotonic() - started))
            except httpx.HTTPError as exc:
                with lock:
                    stats.errors.append(f"page: {type(exc).__name__}: {exc}")
            time.sleep(max(0.0, reload_every - (time.monotonic() - started)))

    sessions = [login(base, user, password) for _ in range(clients)]
    threads = [threading.Thread(target=f, args=(s,), daemon=True)
               for s in sessions for f in (follow_events, reload_page)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 20)
    for session in sessions:
        session.close()
    return stats.summary()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--reload", type=float, default=5, help="seconds between page reloads per client")
    args = p.parse_args()
    print(json.dumps(watch(args.url, args.user, args.password, clients=args.clients, seconds=args.seconds,
                           reload_every=args.reload), ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
