"""Broker speed, as ratios against the direct path measured in the same run.

1. Bulk throughput, host to guest and guest to host: 64 KiB frames through
   ``xen-channel broker`` against the same frames written straight to the
   QEMU stand-in's socket.  Goal (issue 5): ratio >= 0.8.
2. Frames per second with 50 channels served by one broker: every channel
   echoes small frames through its guest end, 16 in flight per channel;
   the same load straight to the 50 stand-ins is the baseline.
3. qemu-ga ``guest-ping`` latency through the broker's agent mode, against
   the same client (qga.AgentClient) on a second, identical stand-in with
   its own Debian qemu-ga (dangerous commands blocked) used directly.
   Goal (issue 10): ratio <= 1.5.  Two shapes, alternating rounds:
   *session*, what one ``xen-channel qemu-agent-command`` does (connect,
   sync, one command, close), and *persistent*, one client synced once
   that then pings (direct: one agent round trip per ping; through the
   broker every turn starts with its own fresh sync: two).

The QEMU stand-ins (tests/backend_standin.py) run in their own process and
the broker in another, so the bench process only plays consumers and
guests; the machine has 2 cores, so all figures include CPU contention
that the direct path suffers less from.

Run: ``.venv/bin/python bench/bench_broker.py [--quick] [--agent-only]``.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from broker_fixtures import BrokerProcess, wait_for, write_record  # noqa: E402

from xen_channel_backend import qga  # noqa: E402
from xen_channel_backend.broker import broker_socket_for  # noqa: E402
from xen_channel_backend.protocol import encode  # noqa: E402

CHANNEL = "org.example.bench.0"
AGENT = "org.qemu.guest_agent.0"

_STANDINS = """
import sys, time
sys.path.insert(0, sys.argv[1])
from backend_standin import BackendStandin
standins = [BackendStandin(p).start() for p in sys.argv[2:]]
print(" ".join(s.guest_tty for s in standins), flush=True)
sys.stdin.read()
for s in standins:
    s.close()
"""


class Standins:
    """N QEMU stand-ins in one helper process; ``ttys`` are the guest ends."""

    def __init__(self, paths: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _STANDINS, str(ROOT / "tests"), *paths],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        self.ttys = self.proc.stdout.readline().split()
        assert len(self.ttys) == len(paths), "stand-ins did not start"

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def open_guest(tty_path: str) -> int:
    import tty

    fd = os.open(tty_path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    return fd


def drain(fd: int, total: int) -> None:
    """Read ``total`` bytes from a tty or socket fd."""
    left = total
    while left > 0:
        left -= len(os.read(fd, min(left, 1 << 20)))


def bulk(path: str, guest: int, megabytes: int, direction: str) -> float:
    """MB/s of 64 KiB frames between a client of ``path`` and the guest."""
    frame = encode({"type": "ping", "id": "bulk", "pad": "x" * (65536 - 40)})
    count = megabytes * 1024 * 1024 // len(frame)
    payload = frame * count
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    try:
        if direction == "to-guest":
            writer, reader = (lambda: client.sendall(payload)), guest
        else:
            writer, reader = (lambda: _write_all(guest, payload)), client.fileno()
        thread = threading.Thread(target=writer)
        start = time.perf_counter()
        thread.start()
        drain(reader, len(payload))
        elapsed = time.perf_counter() - start
        thread.join()
    finally:
        client.close()
    return len(payload) / elapsed / 1e6


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def echo_rate(paths: list[str], guests: list[int], per_channel: int, window: int) -> float:
    """Frames per second echoed by every guest, ``window`` in flight per channel."""
    frame = encode({"type": "ping", "id": "0123456789abcdef"})
    stop = threading.Event()

    def guest_echo() -> None:
        sel = selectors.DefaultSelector()
        for fd in guests:
            os.set_blocking(fd, True)
            sel.register(fd, selectors.EVENT_READ)
        while not stop.is_set():
            for key, _ in sel.select(0.2):
                fd = key.fd
                data = os.read(fd, 65536)
                _write_all(fd, data)  # frames are echoed byte for byte
        sel.close()

    echo = threading.Thread(target=guest_echo, daemon=True)
    echo.start()
    clients = []
    for path in paths:
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(path)
        clients.append(c)
    sel = selectors.DefaultSelector()
    state = {}
    start = time.perf_counter()
    for c in clients:
        c.sendall(frame * window)
        state[c] = [window, 0, 0]  # sent, received bytes, frames received
        sel.register(c, selectors.EVENT_READ)
    done = 0
    while done < len(clients):
        for key, _ in sel.select(30):
            c = key.fileobj
            assert isinstance(c, socket.socket)
            data = c.recv(65536)
            st = state[c]
            st[1] += len(data)
            new = st[1] // len(frame) - st[2]
            st[2] += new
            more = min(new, per_channel - st[0])
            if more > 0:
                c.sendall(frame * more)
                st[0] += more
            if st[2] >= per_channel:
                sel.unregister(c)
                done += 1
    elapsed = time.perf_counter() - start
    stop.set()
    echo.join()
    for c in clients:
        c.close()
    return len(clients) * per_channel / elapsed


def ping_session(path: str) -> None:
    """What one ``xen-channel qemu-agent-command`` does: connect, sync, ping, close."""
    with qga.AgentClient(path) as client:
        client.execute("guest-ping", timeout=10)


def agent_latency(rundir: Path, logdir: Path, quick: bool, verbose: bool) -> int:
    """qemu-ga guest-ping through the broker against direct (goal: ratio <= 1.5)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from qga_fixtures import QEMU_GA, QemuGa

    if not os.access(QEMU_GA, os.X_OK):
        print(f"agent latency: skipped, {QEMU_GA} is not installed (scripts/install-deps)")
        return 0
    rounds = 3 if quick else 5
    sessions = 30 if quick else 100
    pings = 200 if quick else 1000
    paths = {
        kind: write_record(
            rundir, f"6c3f1b7e-0000-4000-8000-a{n:011d}", f"agent-{kind}", [AGENT],
            state="running" if kind == "brokered" else "preparing",
        )[AGENT]
        for n, kind in enumerate(("brokered", "direct"))
    }
    standins = Standins([paths["brokered"], paths["direct"]])
    agents = [QemuGa(tty, str(logdir / f"qga-{n}")) for n, tty in enumerate(standins.ttys)]
    clients = {"brokered": broker_socket_for(paths["brokered"]), "direct": paths["direct"]}
    samples: dict[str, list[float]] = {}
    broker = BrokerProcess(rundir, logdir / "agent-broker.log")
    try:
        wait_for(lambda: "connected to QEMU" in broker.log(), "the broker on the agent channel")
        for kind in clients:  # warm up both agents and paths
            for _ in range(10):
                ping_session(clients[kind])
        for _ in range(rounds):
            for kind, path in clients.items():
                start = time.perf_counter()
                for _ in range(sessions):
                    ping_session(path)
                samples.setdefault(f"{kind} session", []).append(
                    (time.perf_counter() - start) / sessions)
                with qga.AgentClient(path) as client:
                    client.sync(10)
                    start = time.perf_counter()
                    for _ in range(pings):
                        client.execute("guest-ping", timeout=10)
                    samples.setdefault(f"{kind} persistent", []).append(
                        (time.perf_counter() - start) / pings)
    finally:
        broker.stop()
        for agent in agents:
            agent.stop()
        standins.close()
    if verbose:
        for key, values in samples.items():
            print(f"# {key}: {[round(v * 1e6) for v in values]} us")
    median = {key: statistics.median(values) for key, values in samples.items()}
    print(f"agent baseline: qga.AgentClient on QEMU's socket (stand-in, Debian {QEMU_GA}), "
          f"same process, {sys.executable} {sys.version.split()[0]}")
    report = {
        "agent_rounds": rounds,
        "direct_session_us": round(median["direct session"] * 1e6),
        "broker_session_us": round(median["brokered session"] * 1e6),
        "ratio_agent_session": round(median["brokered session"] / median["direct session"], 2),
        "direct_ping_us": round(median["direct persistent"] * 1e6),
        "broker_ping_us": round(median["brokered persistent"] * 1e6),
        "ratio_agent_ping": round(
            median["brokered persistent"] / median["direct persistent"], 2),
    }
    for key, value in report.items():
        print(f"{key:28} {value}")
    print(json.dumps(report))
    goal = report["ratio_agent_session"] <= 1.5
    print(f"agent latency goal (session through the broker <= 1.5x direct): "
          f"{'met' if goal else 'NOT met'}")
    return 0


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    verbose = "--verbose" in argv
    rundir = Path(tempfile.mkdtemp(prefix="xcb-bench-", dir="/tmp"))
    logdir = Path(tempfile.mkdtemp(prefix="xcb-bench-log-"))
    try:
        if "--agent-only" not in argv:
            run(rundir, logdir, quick, verbose)
        return agent_latency(rundir, logdir, quick, verbose)
    finally:
        shutil.rmtree(rundir, ignore_errors=True)
        shutil.rmtree(logdir, ignore_errors=True)


def run(rundir: Path, logdir: Path, quick: bool, verbose: bool) -> int:
    megabytes = 16 if quick else 64
    rounds = 3 if quick else 5
    channels = 50
    per_channel = 100 if quick else 400
    # Two sets of channels side by side: the broker serves the "brokered"
    # set (registered as running), the "direct" set is never registered,
    # so the two paths can be measured in alternating rounds of one run.
    sets: dict[str, list[str]] = {}
    for kind, prefix in (("brokered", "b"), ("direct", "d")):
        sets[kind] = [
            write_record(
                rundir, f"6c3f1b7e-0000-4000-8000-{prefix}{n:011d}", f"{kind}-{n}", [CHANNEL],
                state="running" if kind == "brokered" else "preparing",
            )[CHANNEL]
            for n in range(channels)
        ]
    standins = Standins(sets["brokered"] + sets["direct"])
    guests = [open_guest(t) for t in standins.ttys]
    guest_of = {"brokered": guests[:channels], "direct": guests[channels:]}
    clients = {
        "brokered": [broker_socket_for(p) for p in sets["brokered"]],
        "direct": sets["direct"],
    }
    samples: dict[str, list[float]] = {}
    broker = BrokerProcess(rundir, logdir / "broker.log")
    try:
        wait_for(lambda: broker.log().count("connected to QEMU") >= channels, "50 links")
        for _ in range(rounds):
            for kind in ("direct", "brokered"):
                for direction in ("to-guest", "from-guest"):
                    samples.setdefault(f"{kind} {direction}", []).append(
                        bulk(clients[kind][0], guest_of[kind][0], megabytes, direction)
                    )
                samples.setdefault(f"{kind} echo", []).append(
                    echo_rate(clients[kind], guest_of[kind], per_channel, 16)
                )
    finally:
        broker.stop()
        for fd in guests:
            os.close(fd)
        standins.close()

    median = {key: statistics.median(values) for key, values in samples.items()}
    if verbose:
        for key, values in samples.items():
            print(f"# {key}: {[round(v, 1) for v in values]}")
    report = {
        "rounds": rounds,
        "bulk_mb_per_round": megabytes,
        "direct_to_guest_MBps": round(median["direct to-guest"], 1),
        "broker_to_guest_MBps": round(median["brokered to-guest"], 1),
        "ratio_to_guest": round(median["brokered to-guest"] / median["direct to-guest"], 2),
        "direct_from_guest_MBps": round(median["direct from-guest"], 1),
        "broker_from_guest_MBps": round(median["brokered from-guest"], 1),
        "ratio_from_guest": round(
            median["brokered from-guest"] / median["direct from-guest"], 2
        ),
        "channels": channels,
        "direct_echo_fps": round(median["direct echo"]),
        "broker_echo_fps": round(median["brokered echo"]),
        "ratio_echo_50_channels": round(median["brokered echo"] / median["direct echo"], 2),
    }
    for key, value in report.items():
        print(f"{key:28} {value}")
    print(json.dumps(report))
    goal = min(report["ratio_to_guest"], report["ratio_from_guest"]) >= 0.8
    print(f"bulk throughput goal (>= 0.8 of direct): {'met' if goal else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
