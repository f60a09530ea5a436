"""Packet loss for end-to-end SIP tests: a lossy network namespace, or a lossy UDP relay.

Two ways to put loss between SIPp and the IVR, for tests that prove calls
complete when datagrams go missing (RFC 3261's retransmission timers at work):

`lossy_namespace(loss_percent)` (the `lossy_netns` fixture) creates a network
namespace of its own, brings its `lo` up and makes `lo` drop a share of every
packet. Everything started inside it with `ns.popen(...)`/`ns.run(...)` (the
IVR, SIPp) talks over that `lo`, so each datagram crosses it once and each
direction loses the same share. The loss comes from `tc qdisc ... netem loss`
when the kernel has netem (`sch_netem`), else from an nftables rule
(`numgen random mod 10000 < N drop` on the input hook, silent to the sender) when `nft` is
installed: some kernels are built without netem (CONFIG_NET_SCH_NETEM unset)
but with nftables. The namespace is deleted afterwards, with whatever still
runs in it stopped.

When that cannot be had:

* network namespaces not permitted (not root, no CAP_NET_ADMIN, `ip` missing):
  the test is skipped, in CI as well; the environment cannot do it, and
  `LossyRelay` below covers loss without privileges;
* namespaces permitted but neither netem nor `nft`: skipped locally, a failure
  when CI=true. The fix is an install away (`apt-get install nftables`, or a
  kernel with sch_netem), and a loss test that CI quietly skips protects nothing.

`LossyRelay` (and `running_relay` for synchronous tests) is the unprivileged
fallback: an asyncio UDP relay on loopback that forwards datagrams to one
upstream address and drops a share in each direction, from seeded generators
so a failing run can be repeated. Each client gets its own upstream socket,
so the far end sees distinct sources. Only what flows through the relay is
lossy: SIP responses come back through it when the client's Via asks for
`rport` (RFC 3581; the loadtest/scenarios/lossy_*.xml do), while requests the
IVR starts (its BYE) go to the client's Contact, and RTP to the SDP address,
directly. SIPp can also drop its own messages (`sipp -lost 10`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

NETNS_DIR = "/run/netns"


class LossUnavailable(Exception):
    """This machine cannot give a lossy namespace; `permitted` says whether namespaces work at all."""

    def __init__(self, reason: str, *, permitted: bool) -> None:
        super().__init__(reason)
        self.permitted = permitted


# --- the namespace ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Namespace:
    """A network namespace with a lossy `lo`; run commands in it with `run` or `popen`."""

    name: str
    loss_percent: float
    method: str  # "netem" or "nftables"
    started: list[subprocess.Popen[str]] = field(default_factory=list)  # stopped with the namespace

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        return subprocess.run(self.command(*argv), check=False, **kwargs)

    def popen(self, *argv: str, **kwargs: Any) -> subprocess.Popen[str]:
        kwargs.setdefault("text", True)
        process = subprocess.Popen(self.command(*argv), **kwargs)
        self.started.append(process)
        return process

    def dropped(self) -> int:
        """Packets the loss has dropped so far (netem's qdisc statistics, or the nftables rule's counter)."""
        if self.method == "netem":
            shown = self.run("tc", "-s", "qdisc", "show", "dev", "lo").stdout
            found = re.search(r"dropped (\d+)", shown)
        else:
            shown = self.run("nft", "list", "table", "inet", "lossy").stdout
            found = re.search(r"counter packets (\d+)", shown)
        if found is None:
            raise RuntimeError(f"no drop count in {self.method}'s statistics: {shown!r}")
        return int(found.group(1))


def _ip(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)


def _apply_netem(name: str, loss_percent: float) -> str | None:
    """Loss by netem; returns why not, or None when applied."""
    if shutil.which("tc") is None:
        return "tc is not installed (Debian: iproute2)"
    done = _ip("netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "loss", f"{loss_percent}%")
    return None if done.returncode == 0 else f"tc netem: {done.stderr.strip()} (the kernel has no sch_netem)"


def _apply_nftables(name: str, loss_percent: float) -> str | None:
    """Loss by an nftables rule: a uniform random number per packet, in hundredths of a percent."""
    if shutil.which("nft") is None:
        return "nft is not installed (Debian: nftables)"
    threshold = round(loss_percent * 100)
    ruleset = (
        "table inet lossy {\n"
        "  chain in {\n"
        # on the way in: a drop on the way out would fail the sender's sendto(2) with EPERM,
        # where a lossy network is silent
        "    type filter hook input priority 0; policy accept;\n"
        f"    numgen random mod 10000 < {threshold} counter drop\n"
        "  }\n"
        "}\n"
    )
    done = subprocess.run(["ip", "netns", "exec", name, "nft", "-f", "-"], input=ruleset,
                          capture_output=True, text=True, check=False)
    return None if done.returncode == 0 else f"nft: {done.stderr.strip()}"


def _stop_everything_in(name: str, started: list[subprocess.Popen[str]]) -> None:
    """Stop the processes still running in our namespace (started by the test through it).

    What `popen` started is killed by its pid whether or not it is in the namespace yet: `ip netns
    exec` that has not entered it is not among `ip netns pids`, and would enter it after the
    listing (its namespace then outlives the name) and run on."""
    for process in started:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
    listed = _ip("netns", "pids", name)
    pids = [int(p) for p in listed.stdout.split() if p.isdigit()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def lossy_namespace(loss_percent: float = 10.0, *, method: str | None = None) -> Iterator[Namespace]:
    """A new namespace whose `lo` drops `loss_percent` % of packets; always deleted on exit.

    `method` forces "netem" or "nftables"; by default netem, else nftables.
    Raises LossUnavailable when the machine cannot do it.
    """
    if not 0 <= loss_percent <= 100:
        raise ValueError(f"loss_percent must be within 0..100, not {loss_percent}")
    if shutil.which("ip") is None:
        raise LossUnavailable("ip is not installed (Debian: iproute2)", permitted=False)
    name = f"hotline-lossy-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    namespace: Namespace | None = None
    created = _ip("netns", "add", name)
    if created.returncode != 0:
        raise LossUnavailable(f"ip netns add is not permitted here: {created.stderr.strip()}", permitted=False)
    try:
        up = _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        if up.returncode != 0:
            raise LossUnavailable(f"cannot bring lo up in a namespace: {up.stderr.strip()}", permitted=False)
        methods = [method] if method else ["netem", "nftables"]
        reasons: list[str] = []
        chosen = None
        for candidate in methods:
            apply = {"netem": _apply_netem, "nftables": _apply_nftables}[candidate]
            reason = apply(name, loss_percent)
            if reason is None:
                chosen = candidate
                break
            reasons.append(reason)
        if chosen is None:
            raise LossUnavailable("; ".join(reasons), permitted=True)
        namespace = Namespace(name, loss_percent, chosen)
        yield namespace
    finally:
        _stop_everything_in(name, namespace.started if namespace is not None else [])
        deleted = _ip("netns", "del", name)
        if deleted.returncode != 0 and os.path.exists(os.path.join(NETNS_DIR, name)):
            raise RuntimeError(f"could not delete network namespace {name}: {deleted.stderr.strip()}")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@contextlib.contextmanager
def lossy_namespace_or_skip(loss_percent: float = 10.0, *, method: str | None = None) -> Iterator[Namespace]:
    """`lossy_namespace` for a test: skip or fail as the module docstring says when it is unavailable."""
    with contextlib.ExitStack() as stack:
        try:
            ns = stack.enter_context(lossy_namespace(loss_percent, method=method))
        except LossUnavailable as exc:
            if exc.permitted and in_ci():
                pytest.fail(f"lossy namespace: namespaces work but no loss method does ({exc}); "
                            "install nftables (or use a kernel with sch_netem)")
            pytest.skip(f"lossy namespace unavailable: {exc}")
        yield ns


@pytest.fixture
def lossy_netns() -> Iterator[Namespace]:
    """A namespace losing 10 % on `lo` (use `lossy_namespace_or_skip` directly for another share)."""
    with lossy_namespace_or_skip(10.0) as ns:
        yield ns


# --- the relay ---------------------------------------------------------------------------------


@dataclass
class RelayStats:
    """Datagrams seen and dropped, per direction (to the upstream, and back to the clients)."""

    upstream_seen: int = 0
    upstream_dropped: int = 0
    downstream_seen: int = 0
    downstream_dropped: int = 0
    clients: set[tuple[str, int]] = field(default_factory=set)


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, relay: LossyRelay) -> None:
        self.relay = relay

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay.client_datagram(data, addr)


class _Upstream(asyncio.DatagramProtocol):
    """One client's socket towards the upstream: what comes back goes to that client."""

    def __init__(self, relay: LossyRelay, client: tuple[str, int]) -> None:
        self.relay = relay
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None
        self.backlog: list[bytes] = []  # datagrams that arrived while the socket was being made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        for data in self.backlog:
            self.transport.sendto(data)
        self.backlog.clear()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.relay.upstream_datagram(data, self.client)


class LossyRelay:
    """Forward UDP from clients to `upstream` and back, dropping `loss_percent` % each way."""

    def __init__(self, upstream: tuple[str, int], loss_percent: float, *, seed: int = 0,
                 bind: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        if not 0 <= loss_percent <= 100:
            raise ValueError(f"loss_percent must be within 0..100, not {loss_percent}")
        self.upstream = upstream
        self.loss = loss_percent / 100
        self.bind = bind
        # one generator per direction: what is dropped one way does not depend on traffic the other way
        self._up_random = random.Random(f"{seed}:up")
        self._down_random = random.Random(f"{seed}:down")
        self.stats = RelayStats()
        self._listener: asyncio.DatagramTransport | None = None
        self._upstreams: dict[tuple[str, int], _Upstream] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.address: tuple[str, int] = ("", 0)

    async def start(self) -> tuple[str, int]:
        """Start listening; returns the address clients send to."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: _Listener(self), local_addr=self.bind)
        self._listener = transport
        self.address = transport.get_extra_info("sockname")[:2]
        return self.address

    def close(self) -> None:
        for up in self._upstreams.values():
            if up.transport is not None:
                up.transport.close()
        self._upstreams.clear()
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def aclose(self) -> None:
        """`close`, then let the loop run the transports' closing callbacks, which free the sockets."""
        for task in self._tasks:
            task.cancel()
        self.close()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    def client_datagram(self, data: bytes, client: tuple[str, int]) -> None:
        self.stats.upstream_seen += 1
        if self._up_random.random() < self.loss:
            self.stats.upstream_dropped += 1
            return
        up = self._upstreams.get(client)
        if up is None:
            up = self._upstreams[client] = _Upstream(self, client)
            self.stats.clients.add(client)
            up.backlog.append(data)
            loop = asyncio.get_running_loop()
            task = loop.create_task(loop.create_datagram_endpoint(
                lambda: up, local_addr=(self.upstream[0], 0), remote_addr=self.upstream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif up.transport is None:
            up.backlog.append(data)
        else:
            up.transport.sendto(data)

    def upstream_datagram(self, data: bytes, client: tuple[str, int]) -> None:
        self.stats.downstream_seen += 1
        if self._down_random.random() < self.loss:
            self.stats.downstream_dropped += 1
            return
        if self._listener is not None:
            self._listener.sendto(data, client)


@contextlib.contextmanager
def running_relay(upstream: tuple[str, int], loss_percent: float, *, seed: int = 0,
                  bind: tuple[str, int] = ("127.0.0.1", 0)) -> Iterator[LossyRelay]:
    """A `LossyRelay` on an event loop in a thread of its own, for synchronous tests; closed on exit."""
    relay = LossyRelay(upstream, loss_percent, seed=seed, bind=bind)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="lossy-relay", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(relay.start(), loop).result(10)
        yield relay
    finally:
        asyncio.run_coroutine_threadsafe(relay.aclose(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def wait_until(predicate: Any, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())

