"""Protocol latency, as ratios against raw byte echo measured in the same run.

1. Handshake: connect to the channel socket, ``hello``, wait for the
   ``hello-ack`` (agent.ChannelClient), close - against a bare connect plus
   a one-byte echo through the same path, close.
2. Request round trip on an open connection: ``ping``/``pong`` against a
   one-byte echo.

The path is the same for both sides of each ratio: a QEMU stand-in
(tests/backend_standin.py, in its own process) bridging the Unix socket to
a pty, and a guest process on the pty slave.  For the baselines that guest
echoes bytes; for the protocol it is the real ``xen-channel-guest``.  So a
ratio shows what framing, JSON and the agent's handling add on top of the
transport itself.

Run: ``.venv/bin/python bench/bench_protocol.py [--quick]``.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from xen_channel_backend.agent import ChannelClient  # noqa: E402

CHANNEL = "org.example.bench"

_STANDIN = """
import sys
sys.path.insert(0, sys.argv[1])
from backend_standin import BackendStandin
standin = BackendStandin(sys.argv[2]).start()
print(standin.guest_tty, flush=True)
sys.stdin.read()
standin.close()
"""

_ECHO_GUEST = """
import os, sys, tty
fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
tty.setraw(fd)
while True:
    data = os.read(fd, 65536)
    if not data:
        break
    os.write(fd, data)
"""

_AGENT = "import sys; from xen_channel_backend.guest.agent import main; sys.exit(main())"


def timed(action: Callable[[], object], rounds: int) -> list[float]:
    for _ in range(max(3, rounds // 20)):  # warm up
        action()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        action()
        samples.append(time.perf_counter() - started)
    return samples


def echo_once(path: str, sock: socket.socket | None = None) -> None:
    own = sock is None
    if sock is None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
    sock.sendall(b"x")
    if sock.recv(1) != b"x":
        raise RuntimeError("echo guest answered something else")
    if own:
        sock.close()


def handshake_once(path: str) -> None:
    with ChannelClient(path) as client:
        client.handshake(10.0)


def main() -> int:
    rounds = 30 if "--quick" in sys.argv else 300
    workdir = tempfile.mkdtemp(prefix="xcb-bench-", dir="/tmp")
    path = os.path.join(workdir, CHANNEL)
    standin = subprocess.Popen(
        [sys.executable, "-c", _STANDIN, str(ROOT / "tests"), path],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    guest: subprocess.Popen[bytes] | None = None
    try:
        assert standin.stdout is not None
        guest_tty = standin.stdout.readline().strip()

        guest = subprocess.Popen([sys.executable, "-c", _ECHO_GUEST, guest_tty])
        time.sleep(0.3)  # let it open and set raw mode before the first byte
        echo_connect = timed(lambda: echo_once(path), rounds)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as held:
            held.connect(path)
            echo_held = timed(lambda: echo_once(path, held), rounds)
        guest.kill()
        guest.wait()

        devdir = os.path.join(workdir, "dev")
        os.mkdir(devdir)
        os.symlink(guest_tty, os.path.join(devdir, CHANNEL))
        guest = subprocess.Popen(
            [sys.executable, "-c", _AGENT, "--channel", CHANNEL, "--root", workdir,
             "--devdir", devdir],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        with ChannelClient(path) as warm:
            warm.handshake(30.0)  # the agent is up and answering
        handshake = timed(lambda: handshake_once(path), rounds)
        with ChannelClient(path) as client:
            client.handshake(10.0)
            ping = timed(lambda: client.ping(10.0), rounds)
    finally:
        if guest is not None and guest.poll() is None:
            guest.kill()
            guest.wait()
        assert standin.stdin is not None
        standin.stdin.close()
        standin.wait()
        shutil.rmtree(workdir, ignore_errors=True)

    def report(name: str, measured: list[float], baseline: list[float], base_name: str) -> None:
        m, b = statistics.median(measured), statistics.median(baseline)
        print(
            f"{name:<34} median {m * 1e6:8.0f} us  vs {base_name:<28} {b * 1e6:8.0f} us"
            f"  ratio {m / b:5.2f}"
        )

    print(f"protocol latency, {rounds} rounds each, QEMU stand-in + pty, 2 processes")
    report("handshake (connect+hello+ack)", handshake, echo_connect, "connect + 1-byte echo")
    report("ping/pong (open connection)", ping, echo_held, "1-byte echo")
    return 0


if __name__ == "__main__":
    sys.exit(main())
