"""Shared parts of the broker tests and bench/bench_broker.py.

- :func:`write_record` / :func:`remove_record` play the libvirt hooks'
  side of the registry (issue 3): a per-domain JSON record and a 0750
  per-domain directory under the run directory.
- :class:`BrokerProcess` runs the real ``xen-channel broker`` as a
  subprocess and lets a test wait for its log lines.
- :class:`Guest` reads and writes frames on the guest's end of a channel
  (the pty slave that the QEMU stand-in bridges to).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from waiting import WAIT, wait_for

from xen_channel_backend.model import Channel, Connection, Target
from xen_channel_backend.protocol import FrameError, FrameSplitter, encode, parse_frame
from xen_channel_backend.registry import RUNNING, ChannelRecord, DomainRecord, Registry


def domain_dir(rundir: Path, uuid: str) -> Path:
    return rundir / uuid


def write_record(
    rundir: Path, uuid: str, name: str, channels: list[str], state: str = RUNNING,
    driver: str = "libxl",
) -> dict[str, str]:
    """Register ``name`` as the hooks would; return {channel name: QEMU socket path}."""
    directory = domain_dir(rundir, uuid)
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    paths = {channel: str(directory / channel) for channel in channels}
    records = tuple(
        ChannelRecord(Channel(c, Connection.SOCKET, p, target=Target.XEN), created_dir=True)
        for c, p in paths.items()
    )
    Registry(str(rundir)).put(DomainRecord(uuid, name, driver, state, records))
    return paths


def remove_record(rundir: Path, uuid: str) -> None:
    Registry(str(rundir)).remove(uuid)


class BrokerProcess:
    """``python -m xen_channel_backend broker`` with its stderr in a file."""

    def __init__(
        self, rundir: Path, log_path: Path, *extra: str, nofile: int | None = None
    ) -> None:
        """``nofile``: the broker's RLIMIT_NOFILE (soft and hard), to run it short of fds."""
        self.log_path = log_path
        env = dict(os.environ)
        if "XEN_CHANNEL_CONFIG" not in env:
            # Hermetic: never this host's /etc/xen-channel/xen-channel.conf.
            config = log_path.with_suffix(".conf")
            config.write_text("[xen-channel]\n")
            env["XEN_CHANNEL_CONFIG"] = str(config)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xen_channel_backend", "broker", "--rundir", str(rundir),
             "--poll-interval", "0.05", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log, env=env,
            preexec_fn=None if nofile is None else lambda: _limit_descriptors(nofile),
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the broker has used so far (from /proc)."""
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        # utime and stime are fields 14 and 15 of proc(5); fields[0] is field 3.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def open_descriptors(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def peak_rss(self) -> int:
        """The broker's peak resident memory so far, in bytes (VmHWM)."""
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc/PID/status")

    def wait_log(self, text: str, count: int = 1) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"broker exited ({self.proc.returncode}):\n{self.log()}")
            return self.log().count(text) >= count
        wait_for(seen, f"broker log line {text!r} x{count}\n--- log ---\n{self.log()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(WAIT)
        finally:
            self._log.close()
        return code

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(WAIT)
        self._log.close()


def _limit_descriptors(count: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


class FrameReader:
    """Collect frames from a file descriptor or socket into a list, on a thread."""

    def __init__(self, read: Callable[[], bytes]) -> None:
        self._read = read
        self.frames: list[bytes] = []
        self.errors: list[FrameError] = []
        self.raw = bytearray()
        self._splitter = FrameSplitter()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                data = self._read()
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.raw += data
                for item in self._splitter.feed(data):
                    if isinstance(item, FrameError):
                        self.errors.append(item)
                    else:
                        self.frames.append(item)

    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            frames = list(self.frames)
        out = []
        for frame in frames:
            parsed = parse_frame(frame)
            assert not isinstance(parsed, FrameError), parsed
            out.append(parsed)
        return out

    def wait_message(
        self, predicate: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            return next((m for m in self.messages() if predicate(m)), None)
        found: dict[str, Any] = wait_for(find, what)
        return found


class Consumer:
    """A local client of the broker's consumer socket."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.reader = FrameReader(lambda: self.sock.recv(65536))

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(encode(message))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Guest:
    """The guest's /dev/hvcN: the slave end of the stand-in's pty."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.reader = FrameReader(self._read)

    def _read(self) -> bytes:
        while True:
            ready, _, _ = select.select([self.fd], [], [], 0.5)
            if ready:
                return os.read(self.fd, 65536)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]

    def send(self, message: dict[str, Any]) -> None:
        self.write(encode(message))
