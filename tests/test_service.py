"""Running under systemd (service.py): journal priorities and Type=notify readiness.

No systemd runs here, so these tests play its two parts with the same
kernel objects it uses: a stream whose device and inode are in
``$JOURNAL_STREAM`` (journald's stdout/stderr stream is a socket; a pipe
has a device and inode just the same), and a datagram socket named by
``$NOTIFY_SOCKET`` that receives what sd_notify(3) would send.  The
commands are the real ``xen-channel monitor`` and ``xen-channel broker``.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import uuid as uuid_module
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker_fixtures import write_record

from xen_channel_backend import service

XEN_CHANNEL = str(Path(sys.executable).parent / "xen-channel")
TIMEOUT = 30.0


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(TIMEOUT)
    try:
        yield sock
    finally:
        sock.close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "LIBVIRT_DEFAULT_URI")}
    env.update(extra)
    return env


def _stream_id(fd: int) -> str:
    status = os.fstat(fd)
    return f"{status.st_dev}:{status.st_ino}"


# --- in process --------------------------------------------------------------------


def test_priorities_follow_syslog() -> None:
    assert [service.syslog_priority(level) for level in (
        logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL
    )] == [7, 6, 4, 3, 2]


def test_only_the_journal_stream_itself_gets_prefixes(tmp_path: Path) -> None:
    with open(tmp_path / "log", "w") as stream, open(tmp_path / "other", "w") as other:
        this = {"JOURNAL_STREAM": _stream_id(stream.fileno())}
        assert service.stream_is_journal(stream, this)
        # Inherited variable, stderr redirected elsewhere: no prefixes.
        assert not service.stream_is_journal(other, this)
    assert not service.stream_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})
    assert not service.stream_is_journal(sys.stderr, {"JOURNAL_STREAM": "nonsense"})


def test_every_line_of_a_record_carries_the_prefix() -> None:
    formatter = service.priority_formatter("xen-channel: %(message)s")
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "a\nb", None, None)
    assert formatter.format(record) == "<4>xen-channel: a\n<4>b"


#: Run in a fresh interpreter (-I -S, the package first on sys.path): pytest has
#: imported logging long before any test here could see it arrive.
_ON_IMPORT = """
import io, sys
sys.path.insert(0, sys.argv[1])
from xen_channel_backend import service
out = io.StringIO()
with service.LoggingOnImport(out, "p: %(message)s", debug=sys.argv[2] == "debug"):
    print("before:", "logging" in sys.modules)
    import logging  # as a module imported halfway through a command would
    print("own loader:", type(logging.__loader__).__name__,
          type(logging.__spec__.loader).__name__)
    logging.getLogger("x").debug("debug %d", 1)
    logging.getLogger("x").info("info %d", 2)
print("waiting after:", [f for f in sys.meta_path if isinstance(f, service.LoggingOnImport)])
print(out.getvalue(), end="")
"""


def _on_import(debug: str) -> list[str]:
    done = subprocess.run([sys.executable, "-I", "-S", "-c", _ON_IMPORT,
                           str(Path(service.__file__).parent.parent), debug],
                          capture_output=True, text=True, check=True, timeout=TIMEOUT)
    assert done.stderr == ""
    return done.stdout.splitlines()


def test_logging_is_configured_when_first_imported() -> None:
    """A command that never imports logging does not pay for it; one that does logs as before."""
    assert _on_import("quiet") == [
        "before: False",
        "own loader: SourceFileLoader SourceFileLoader",
        "waiting after: []",
        "p: info 2",
    ]


def test_debug_configures_logging_at_once() -> None:
    # --debug: configured (and imported) before the command runs, so a module
    # may skip its debug records while logging is not imported at all.
    assert _on_import("debug") == [
        "before: True",
        "own loader: SourceFileLoader SourceFileLoader",
        "waiting after: []",
        "p: debug 1",
        "p: info 2",
    ]


_DEBUG_LOG = """
import sys
sys.path.insert(0, sys.argv[1])
from xen_channel_backend import service
log = service.DebugLog("x")
log.debug("nobody listens %d", 1)
print("imported:", "logging" in sys.modules)
with service.LoggingOnImport(sys.stdout, "p: %(message)s", debug=sys.argv[2] == "debug"):
    log.debug("listened to %d", 2)
"""


@pytest.mark.parametrize("debug,lines", [
    ("quiet", ["imported: False"]),
    ("debug", ["imported: False", "p: listened to 2"]),
])
def test_debug_records_need_no_logging_until_asked_for(debug: str, lines: list[str]) -> None:
    done = subprocess.run([sys.executable, "-I", "-S", "-c", _DEBUG_LOG,
                           str(Path(service.__file__).parent.parent), debug],
                          capture_output=True, text=True, check=True, timeout=TIMEOUT)
    assert (done.stdout.splitlines(), done.stderr) == (lines, "")


def test_debug_records_reach_a_configured_logger(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="xcb.test"):
        service.DebugLog("xcb.test").debug("seen %s", "here")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("xcb.test", logging.DEBUG, "seen here")]


def test_notify_without_systemd_is_a_no_op() -> None:
    assert service.notify("READY=1", {}) is False
    assert service.notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_notify_reaches_a_path_and_an_abstract_socket(notify_socket: socket.socket) -> None:
    path = notify_socket.getsockname()
    assert service.notify("READY=1\nSTATUS=up", {"NOTIFY_SOCKET": path})
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=up"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        name = f"xcb-test-{uuid_module.uuid4().hex}"
        abstract.bind("\0" + name)
        abstract.settimeout(TIMEOUT)
        assert service.notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert abstract.recv(4096) == b"READY=1"


# --- the real daemons ----------------------------------------------------------------


def _journal_lines(argv: list[str], want: str, **env: str) -> list[str]:
    """Run ``argv`` with stderr on a pipe named by $JOURNAL_STREAM; lines up to ``want``."""
    read_fd, write_fd = os.pipe()
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=write_fd,
                               env=_env(JOURNAL_STREAM=_stream_id(write_fd), **env))
    os.close(write_fd)
    lines: list[str] = []
    try:
        with os.fdopen(read_fd, encoding="utf-8", errors="replace") as reader:
            for line in reader:
                lines.append(line)
                if want in line:
                    break
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=TIMEOUT)
    return lines


def test_monitor_lines_carry_priorities_for_journalctl_p(tmp_path: Path) -> None:
    pytest.importorskip("libvirt", reason="libvirt-python is missing: pip install .[test]")
    lines = _journal_lines(
        [XEN_CHANNEL, "monitor", "--rundir", str(tmp_path / "run"),
         "--connect", "test:///nonexistent/xcb-no-such-file.xml"],
        "retrying")
    assert lines[0].startswith("<6>xen-channel: monitor starting"), lines
    assert lines[-1].startswith("<4>xen-channel: libvirt at 'test:///nonexistent/"), lines


def test_broker_lines_carry_priorities(tmp_path: Path) -> None:
    lines = _journal_lines([XEN_CHANNEL, "broker", "--rundir", str(tmp_path / "run")],
                           "watching registry")
    assert lines == [f"<6>xen-channel: broker: watching registry '{tmp_path / 'run'}'\n"]


def test_no_prefixes_when_stderr_is_not_the_journal(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [XEN_CHANNEL, "broker", "--rundir", str(tmp_path / "run")], stderr=subprocess.PIPE,
        text=True, env=_env(JOURNAL_STREAM="1:2"))
    assert process.stderr is not None
    first = process.stderr.readline()
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=TIMEOUT)
    assert first.startswith("xen-channel: broker: watching registry")


def _notifications(sock: socket.socket, process: subprocess.Popen[bytes]) -> Iterator[str]:
    while True:
        try:
            yield sock.recv(4096).decode()
        except TimeoutError:
            process.kill()
            raise AssertionError("no notification within the timeout") from None


def test_broker_is_ready_once_its_consumer_sockets_exist(notify_socket: socket.socket) -> None:
    with tempfile.TemporaryDirectory(prefix="xcb-", dir="/tmp") as short:  # 107-byte limit
        _broker_ready(Path(short), notify_socket)


def _broker_ready(rundir: Path, notify_socket: socket.socket) -> None:
    paths = write_record(rundir, str(uuid_module.uuid4()), "web01", ["org.example.agent.0"])
    consumer = paths["org.example.agent.0"] + "@broker"
    process = subprocess.Popen(
        [XEN_CHANNEL, "broker", "--rundir", str(rundir)], stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, env=_env(NOTIFY_SOCKET=notify_socket.getsockname()))
    try:
        messages = _notifications(notify_socket, process)
        ready = next(messages)
        # Checked before the broker could go on: it sent READY=1 after binding.
        assert os.path.exists(consumer)
        assert ready == f"READY=1\nSTATUS=serving 1 channel(s) from {rundir}"
        process.send_signal(signal.SIGTERM)
        assert next(messages) == "STOPPING=1\nSTATUS=stopping (SIGTERM received)"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=TIMEOUT) == 0


def test_monitor_is_ready_once_connected_and_reconciled(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    pytest.importorskip("libvirt", reason="libvirt-python is missing: pip install .[test]")
    process = subprocess.Popen(
        [XEN_CHANNEL, "monitor", "--rundir", str(tmp_path / "run"), "-c", "test:///default"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=_env(NOTIFY_SOCKET=notify_socket.getsockname()))
    try:
        messages = _notifications(notify_socket, process)
        seen = []
        for message in messages:
            seen.append(message)
            if message.startswith("READY=1"):
                break
        assert seen[-1] == "READY=1\nSTATUS=following domain events on test:///default"
        assert process.stderr is not None
        process.send_signal(signal.SIGTERM)
        assert next(messages).startswith("STOPPING=1")
    finally:
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=TIMEOUT)
    assert "xen-channel: connected to test:///default (driver test)" in err.decode()


def test_monitor_does_not_hold_up_boot_when_libvirt_is_down(
    tmp_path: Path, notify_socket: socket.socket
) -> None:
    pytest.importorskip("libvirt", reason="libvirt-python is missing: pip install .[test]")
    process = subprocess.Popen(
        [XEN_CHANNEL, "monitor", "--rundir", str(tmp_path / "run"),
         "-c", "test:///nonexistent/xcb-no-such-file.xml"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=_env(NOTIFY_SOCKET=notify_socket.getsockname()))
    try:
        ready = next(_notifications(notify_socket, process))
        assert ready.startswith("READY=1\nSTATUS=libvirt at 'test:///nonexistent/")
        assert ready.endswith("; retrying")
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=TIMEOUT) == 0
