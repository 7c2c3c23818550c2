"""qga.py: the qemu-ga client, against the real qemu-ga 7.2 and against a hostile fake.

- The sans-IO pieces (LineReader, SyncWaiter, encode_request, decode_reply)
  are checked on bytes, including a 100 MB line fed in socket-sized chunks.
- The client talks to Debian's unmodified qemu-ga on the QEMU stand-in's pty
  (tests/qga_fixtures.py: every dangerous command blocked).
- tests/fake_agent.py plays a hostile guest: floods, silence, wrong sync
  ids, 100 MB lines.  Each must end in bounded time with one error line,
  and memory stays bounded: tracemalloc in this process, the peak RSS of a
  CLI child, and the reader's buffer counted directly.  Deadlines are hang
  guards only; nothing here asserts speed.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import tracemalloc
import uuid as uuid_module
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from broker_fixtures import write_record
from qga_fixtures import agent_domain, short_base
from waiting import WAIT, wait_for

from xen_channel_backend import qga
from xen_channel_backend.cli import main
from xen_channel_backend.errors import (
    AgentCommandDisabled,
    AgentError,
    AgentNotConnected,
    AgentProtocolError,
    AgentTimeout,
    InputError,
    UnknownDomain,
    UntrustedSocket,
)
from xen_channel_backend.paths import broker_socket_for
from xen_channel_backend.qga import (
    AGENT_CHANNEL,
    READ_SIZE,
    AgentClient,
    Line,
    LineReader,
    Marker,
    Overlong,
    SyncWaiter,
    decode_reply,
    encode_request,
)
from xen_channel_backend.trust import channel_socket_owners

pytestmark = pytest.mark.integration
FAKE = Path(__file__).with_name("fake_agent.py")
NOBODY = 65534


#: How trust.check_channel_socket names the users it trusts.
TRUSTED_OWNERS = " or ".join(f"uid {u}" for u in channel_socket_owners())
_T = TypeVar("_T")


def drain(reader: LineReader) -> list[qga.Event]:
    events = []
    while (event := reader.next_event()) is not None:
        events.append(event)
    return events


def kinds(events: list[qga.Event]) -> list[object]:
    return [e.data if isinstance(e, Line) else type(e).__name__ for e in events]


# --- sans-IO --------------------------------------------------------------------


def test_reader_cuts_lines_skips_blank_ones_and_keeps_a_half_line() -> None:
    reader = LineReader()
    reader.feed(b'{"return": 1}\n\n  \n{"return"')
    assert kinds(drain(reader)) == [b'{"return": 1}']
    reader.feed(b": 2}\n")
    assert kinds(drain(reader)) == [b'{"return": 2}']


def test_reader_a_delimiter_drops_the_half_line_before_it() -> None:
    reader = LineReader()
    reader.feed(b'{"return": "half of a stale ans\xff{"return": 5}\n')
    assert kinds(drain(reader)) == ["Marker", b'{"return": 5}']


def test_reader_memory_stays_bounded_while_a_100_mb_line_streams_in() -> None:
    """The buffer never exceeds max_line plus one chunk, counted after every feed."""
    max_line = 64 * 1024
    reader = LineReader(max_line)
    chunk = b"A" * READ_SIZE
    events: list[qga.Event] = []
    peak = 0
    for _ in range(100 * 1000 * 1000 // READ_SIZE):
        reader.feed(chunk)
        peak = max(peak, reader.buffered)
        events += drain(reader)
        peak = max(peak, reader.buffered)
    reader.feed(b'AAAA"}\n{"return": {}}\n')
    events += drain(reader)
    assert peak <= max_line + READ_SIZE
    assert [type(e).__name__ for e in events] == ["Overlong", "Line"]
    assert kinds(events[1:]) == [b'{"return": {}}']


def test_reader_an_overlong_line_arriving_whole_is_dropped_too() -> None:
    reader = LineReader(10)
    reader.feed(b"x" * 50 + b"\n" + b'{"a": 1}\n')
    events = drain(reader)
    assert isinstance(events[0], Overlong) and events[0].size == 50
    assert kinds(events[1:]) == [b'{"a": 1}']


def test_sync_waiter_skips_stale_lines_and_72s_parse_error_line() -> None:
    waiter = SyncWaiter()
    request = waiter.start()
    assert request.startswith(b"\xff") and request.endswith(b"\n")
    assert json.loads(request[1:])["arguments"]["id"] == waiter.sync_id
    reader = LineReader()
    stale = json.dumps({"return": waiter.sync_id + 1}).encode()
    reader.feed(
        b'{"return": {"half": \n'
        + b'{"error": {"class": "GenericError", "desc": "JSON parse error, stray \'\\uFFFD\'"}}\n'
        + b"\xff" + stale + b"\n"
        + b"\xff" + json.dumps({"return": waiter.sync_id}).encode() + b"\n"
    )
    results = [waiter.on_event(e) for e in drain(reader)]
    assert results == [False, False, False, False, False, True]


def test_sync_waiter_accepts_only_the_latest_id() -> None:
    waiter = SyncWaiter()
    waiter.start()
    first = waiter.sync_id
    waiter.start()
    assert waiter.sync_id != first
    assert not waiter.on_event(Marker()) and not waiter.on_event(
        Line(json.dumps({"return": first}).encode()))
    # An id without the delimiter before it is not a sync answer either.
    assert not waiter.on_event(Line(json.dumps({"return": waiter.sync_id}).encode()))


def test_encode_request_reserializes_so_nothing_can_be_smuggled() -> None:
    data = encode_request({"execute": "guest-ping", "arguments": {"x": "a\n{\"execute\":1}"}})
    assert data.count(b"\n") == 1 and data.endswith(b"\n") and data.isascii()
    assert json.loads(data) == {"execute": "guest-ping", "arguments": {"x": "a\n{\"execute\":1}"}}
    for bad in ({"execute": 1}, {"arguments": {}}, {"execute": "x", "id": 1},
                {"execute": "x", "arguments": []}):
        with pytest.raises(ValueError):
            encode_request(bad)


@pytest.mark.parametrize("line,reason", [
    (b"\xfe\xfd", "not UTF-8"),
    (b"garbage", "not JSON"),
    (b"[1]", "not a JSON object"),
    (b'{"ok": 1}', 'neither "return" nor "error"'),
    (b'{"error": "x"}', 'neither "return" nor "error"'),
    (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
])
def test_decode_reply_refuses_what_is_not_an_answer(line: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode_reply(line)


def test_decode_reply_tells_a_disabled_command() -> None:
    reply = decode_reply(b'{"error": {"class": "CommandNotFound", "desc": "Command guest-exec '
                         b'has been disabled"}}')
    assert not reply.ok and reply.disabled and reply.error_class == "CommandNotFound"


# --- the real qemu-ga -------------------------------------------------------------


@pytest.fixture
def domain() -> Iterator[Any]:
    with agent_domain() as made:
        yield made


def test_qemu_ga_72_answers_the_delimiter_with_a_parse_error_first(domain: Any) -> None:
    """The fact the sync is built on, checked on the raw socket (docs/background.md §7)."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(domain.socket)
    sock.settimeout(WAIT)
    try:
        received = b""
        request = qga.sync_request(4242)
        sock.sendall(request)
        deadline_rounds = 0
        while b'\xff{"return": 4242}\n' not in received:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                data = b""
            if not data:
                # qemu-ga may have flushed a sync written before it opened the tty.
                deadline_rounds += 1
                assert deadline_rounds < 5, received
                sock.sendall(request)
                continue
            received += data
        before = received.split(b"\xff")[0]
        assert b'"class": "GenericError"' in before and b"JSON parse error" in before
    finally:
        sock.close()


def test_commands_and_the_guests_errors(domain: Any) -> None:
    with AgentClient(domain.socket, domain="vm1") as agent:
        assert agent.execute("guest-ping", timeout=WAIT) == {}
        assert agent.execute("guest-get-host-name", timeout=WAIT)["host-name"] == \
            socket.gethostname()
        with pytest.raises(AgentCommandDisabled) as disabled:
            agent.execute("guest-shutdown", timeout=WAIT)
        assert disabled.value.command == "guest-shutdown"
        assert "\n" not in str(disabled.value) and "has been disabled" in str(disabled.value)
        with pytest.raises(AgentError) as unknown:
            agent.execute("guest-no-such-command", timeout=WAIT)
        assert not isinstance(unknown.value, AgentCommandDisabled)
        assert unknown.value.error_class == "CommandNotFound"
        with pytest.raises(AgentError, match="unexpected"):
            agent.execute("guest-ping", {"bogus": 1}, timeout=WAIT)
        # The connection is still in step after every error.
        assert agent.execute("guest-ping", timeout=WAIT) == {}


def test_the_client_refuses_to_send_the_sync_commands_itself(domain: Any) -> None:
    with AgentClient(domain.socket) as agent, pytest.raises(InputError):
        agent.request({"execute": "guest-sync-delimited", "arguments": {"id": 1}}, timeout=WAIT)


def test_stale_guest_output_before_connecting_is_skipped(domain: Any) -> None:
    """Half an answer and an old sync answer, left in QEMU's backlog for the next client."""
    guest = domain.qemu.open_guest()
    stale = b'{"return": {"host-name": "stale"' + b'\xff{"return": 77}\n{"return": 1}\n'
    try:
        os.write(guest, stale)
        domain.qemu.wait_buffered(len(stale), WAIT)
    finally:
        os.close(guest)
    with AgentClient(domain.socket) as agent:
        assert agent.execute("guest-get-host-name", timeout=WAIT)["host-name"] != "stale"


def test_after_a_timeout_the_late_answer_is_skipped_by_a_fresh_sync(domain: Any) -> None:
    """qemu-ga stopped (SIGSTOP) misses the deadline; once resumed it answers the old
    request late, and the next request must not take that answer for its own."""
    with AgentClient(domain.socket) as agent:
        agent.sync(WAIT)
        os.kill(domain.agent.pid, signal.SIGSTOP)
        try:
            with pytest.raises(AgentTimeout) as timed_out:
                agent.execute("guest-get-osinfo", timeout=0.5)
        finally:
            os.kill(domain.agent.pid, signal.SIGCONT)
        assert timed_out.value.command == "guest-get-osinfo"
        assert set(agent.execute("guest-get-host-name", timeout=WAIT)) == {"host-name"}


def test_every_connect_syncs_again(domain: Any) -> None:
    for _ in range(3):
        with AgentClient(domain.socket) as agent:
            assert agent.execute("guest-ping", timeout=WAIT) == {}


# --- finding and trusting the socket ----------------------------------------------


def test_connect_agent_by_name_and_by_uuid(domain: Any) -> None:
    for name in ("vm1", domain.uuid, domain.uuid.upper()):
        with qga.connect_agent(name, rundir=domain.rundir) as agent:
            assert agent.execute("guest-ping", timeout=WAIT) == {}


@pytest.fixture
def rundir() -> Iterator[Path]:
    base = short_base()
    try:
        yield Path(base) / "run"
    finally:
        subprocess.run(["rm", "-rf", base], check=True)


def register(rundir: Path, name: str = "vm1", channels: tuple[str, ...] = (AGENT_CHANNEL,),
             state: str = "running") -> str:
    uuid = str(uuid_module.uuid4())
    paths = write_record(rundir, uuid, name, list(channels), state=state)
    return paths.get(AGENT_CHANNEL, "")


def test_unknown_domain_missing_channel_stopped_domain_missing_socket(rundir: Path) -> None:
    with pytest.raises(UnknownDomain):
        qga.connect_agent("nope", rundir=str(rundir))
    register(rundir, "noagent", ("org.example.agent.0",))
    with pytest.raises(AgentNotConnected, match=r"has no org\.qemu\.guest_agent\.0 channel"):
        qga.connect_agent("noagent", rundir=str(rundir))
    register(rundir, "stopped", state="stopped")
    with pytest.raises(AgentNotConnected, match="is stopped, not running"):
        qga.connect_agent("stopped", rundir=str(rundir))
    register(rundir, "nosocket")
    with pytest.raises(AgentNotConnected, match=r"no socket at .*is the domain running"):
        qga.connect_agent("nosocket", rundir=str(rundir))


class Fake:
    """tests/fake_agent.py in a child process, serving ``path``."""

    def __init__(self, mode: str, path: str, *extra: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(FAKE), mode, path, *extra],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "ready\n"
        self.path = path

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(WAIT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def fakes() -> Iterator[Callable[..., Fake]]:
    started: list[Fake] = []

    def start(mode: str, path: str, *extra: str) -> Fake:
        started.append(Fake(mode, path, *extra))
        return started[-1]

    yield start
    for fake in started:
        fake.stop()


def test_an_untrusted_socket_is_refused_before_anything_is_sent(
    rundir: Path, fakes: Callable[..., Fake]
) -> None:
    path = register(rundir)
    fakes("silent-shutdown", path)
    os.chown(path, 65534, 65534)
    with pytest.raises(UntrustedSocket, match="owned by uid 65534"):
        qga.connect_agent("vm1", rundir=str(rundir))
    os.chown(path, 0, 0)
    directory = os.path.dirname(path)
    os.chmod(directory, 0o770)
    with pytest.raises(UntrustedSocket, match=r"is writable by group \(mode 0770\)"):
        qga.connect_agent("vm1", rundir=str(rundir))
    os.chmod(directory, 0o750)
    with qga.connect_agent("vm1", rundir=str(rundir)) as agent:
        assert agent.execute("guest-ping", timeout=WAIT) == {}


def test_a_symlink_at_the_socket_path_is_refused(rundir: Path, fakes: Callable[..., Fake]) -> None:
    path = register(rundir)
    elsewhere = str(rundir / "elsewhere.sock")
    fakes("silent-shutdown", elsewhere)
    os.symlink(elsewhere, path)
    with pytest.raises(UntrustedSocket, match="not a socket"):
        qga.connect_agent("vm1", rundir=str(rundir))


def test_libvirts_qemu_user_may_own_the_socket(rundir: Path, fakes: Callable[..., Fake]) -> None:
    """libvirt's QEMU driver runs QEMU as libvirt-qemu, which then owns its sockets."""
    import pwd

    try:
        qemu_uid = pwd.getpwnam("libvirt-qemu").pw_uid
    except KeyError:
        pytest.skip("no libvirt-qemu user on this machine (libvirt-daemon-driver-qemu)")
    path = register(rundir)
    fakes("silent-shutdown", path)
    os.chown(path, qemu_uid, -1)
    with qga.connect_agent("vm1", rundir=str(rundir)) as agent:
        assert agent.execute("guest-ping", timeout=WAIT) == {}


def test_the_cli_refuses_a_socket_owned_by_an_unexpected_user(
    rundir: Path, fakes: Callable[..., Fake]
) -> None:
    """The qemu-ga commands and ``send`` share one rule (trust.check_channel_socket):
    a socket owned by anyone but root, the caller or libvirt-qemu is refused
    with one line, and nothing is sent to it."""
    path = register(rundir)
    fakes("silent-shutdown", path)
    os.chown(path, NOBODY, -1, follow_symlinks=False)
    out, err = io.StringIO(), io.StringIO()
    code = main(["qemu-agent-command", "vm1", '{"execute":"guest-ping"}', "--rundir",
                 str(rundir)], stdout=out, stderr=err)
    assert (code, out.getvalue()) == (1, "")
    assert err.getvalue() == (
        f"xen-channel: error: QEMU socket {path!r}: refusing to use it: it is owned by "
        f"uid {NOBODY}, not by {TRUSTED_OWNERS}\n")
    # A broker socket owned by that user is refused too, with no fallback to QEMU's.
    os.chown(path, 0, 0, follow_symlinks=False)
    fakes("silent-shutdown", broker_socket_for(path))
    os.chown(broker_socket_for(path), NOBODY, -1, follow_symlinks=False)
    code = main(["qemu-agent-command", "vm1", '{"execute":"guest-ping"}', "--rundir",
                 str(rundir)], stdout=out, stderr=err)
    assert code == 1 and err.getvalue().splitlines()[-1].startswith(
        f"xen-channel: error: broker socket {broker_socket_for(path)!r}: refusing to use it: "
        f"it is owned by uid {NOBODY}")


def test_the_brokers_socket_is_used_when_a_broker_serves_the_channel(
    rundir: Path, fakes: Callable[..., Fake]
) -> None:
    path = register(rundir)
    fakes("silent", path)  # QEMU's socket: held by the broker, so nothing answers there
    fakes("silent-shutdown", broker_socket_for(path))
    with qga.connect_agent("vm1", rundir=str(rundir)) as agent:
        assert agent.path == broker_socket_for(path)
        assert agent.execute("guest-ping", timeout=WAIT) == {}


@pytest.mark.parametrize("mode, kind, detail", [
    ("silent", AgentNotConnected, "is not connected: the xen-channel broker at "),
    ("huge-line", AgentProtocolError, "': the xen-channel broker at "),
])
def test_the_brokers_own_errors_are_not_reported_as_the_guests(
    rundir: Path, fakes: Callable[..., Fake], mode: str, kind: type[Exception], detail: str
) -> None:
    """The broker answers for the guest in qemu-ga's error shape ("GenericError",
    "xen-channel broker: ...") when qemu-ga does not sync or its answer is too
    big.  The client says so instead of "'guest-info' failed: 'GenericError'"."""
    import threading

    from xen_channel_backend.broker import Broker

    path = register(rundir)
    fakes(mode, path)
    broker = Broker(str(rundir), poll_interval=0.05, agent_sync_timeout=0.5, agent_timeout=5)
    thread = threading.Thread(target=broker.run)
    thread.start()
    try:
        wait_for(lambda: os.path.exists(broker_socket_for(path)), "the broker's socket")
        with pytest.raises(kind) as caught, qga.connect_agent("vm1", rundir=str(rundir)) as agent:
            assert agent.path == broker_socket_for(path)
            agent.execute("guest-info", timeout=WAIT)
        out, err = io.StringIO(), io.StringIO()
        code = main(["qemu-agent-command", "vm1", '{"execute":"guest-info"}', "--rundir",
                     str(rundir)], stdout=out, stderr=err)
    finally:
        broker.stop()
        thread.join(WAIT)
    assert not isinstance(caught.value, AgentError)
    assert (code, out.getvalue()) == (1, "")
    line = err.getvalue()
    assert line == f"xen-channel: error: {caught.value.message()}\n"
    assert detail + repr(broker_socket_for(path)) in line and "GenericError" not in line
    if mode == "silent":
        assert "qemu-ga did not answer guest-sync-delimited within 0.5 s" in line


def test_a_dead_brokers_socket_sends_us_to_qemus(rundir: Path, fakes: Callable[..., Fake]) -> None:
    path = register(rundir)
    fakes("silent-shutdown", path)
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(broker_socket_for(path))
    dead.close()  # the file stays; nobody listens (a broker killed by SIGKILL)
    with qga.connect_agent("vm1", rundir=str(rundir)) as agent:
        assert agent.path == path
        assert agent.execute("guest-ping", timeout=WAIT) == {}


# --- a hostile agent: bounded time, bounded memory, one line ---------------------


def guarded(call: Callable[[], _T]) -> _T:
    """Run ``call`` on a thread; fail (instead of hanging the suite) if it never returns."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(("ok", call()))
        except BaseException as exc:
            result.append(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(4 * WAIT)
    assert result, "the client did not return: unbounded time"
    kind, value = result[0]
    if kind == "raised":
        raise value
    return value  # type: ignore[no-any-return]


def traced_peak(call: Callable[[], object]) -> int:
    """Peak bytes Python allocated in this process during ``call`` (tracemalloc)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        try:
            call()
        except Exception:
            pass
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("mode", ["silent", "flood", "wrong-id"])
def test_an_agent_that_never_syncs_is_not_connected_in_bounded_time_and_memory(
    rundir: Path, fakes: Callable[..., Fake], mode: str
) -> None:
    path = register(rundir)
    fakes(mode, path)

    def ping() -> object:
        with AgentClient(path, domain="vm1", max_line=64 * 1024, sync_interval=0.2) as agent:
            return agent.execute("guest-ping", timeout=1.0)

    with pytest.raises(AgentNotConnected) as error:
        guarded(ping)
    assert "no answer to guest-sync-delimited within 1 s" in str(error.value)
    assert "\n" not in str(error.value)
    # A flood streams megabytes per second at the client; it keeps none of them.
    assert traced_peak(ping) < 2 * 1024 * 1024


def test_a_100_mb_answer_is_dropped_as_it_arrives(rundir: Path, fakes: Callable[..., Fake]) -> None:
    path = register(rundir)
    fakes("huge-line", path)
    max_line = 256 * 1024

    def ping() -> object:
        with AgentClient(path, domain="vm1", max_line=max_line) as agent:
            return agent.execute("guest-ping", timeout=WAIT)

    with pytest.raises(AgentProtocolError) as error:
        guarded(ping)
    assert str(error.value) == (
        f"guest agent of domain 'vm1': answer to 'guest-ping' is over {max_line} bytes; dropped"
    )
    assert traced_peak(ping) < 4 * max_line + 1024 * 1024


def test_a_100_mb_stale_line_before_the_sync_is_skipped(
    rundir: Path, fakes: Callable[..., Fake]
) -> None:
    path = register(rundir)
    fakes("huge-stale", path)

    def ping() -> object:
        with AgentClient(path, domain="vm1", max_line=256 * 1024) as agent:
            return agent.execute("guest-ping", timeout=WAIT)

    assert guarded(ping) == {}
    assert traced_peak(ping) < 2 * 1024 * 1024


#: The CLI, reporting its own peak RSS at exit.  VmHWM, not wait4's ru_maxrss:
#: Linux folds the pre-exec peak of the forked child (a copy of this big test
#: process) into ru_maxrss at exec, while VmHWM counts only the new program.
_CLI_WITH_HWM = """
import atexit, os, sys
def report():
    with open("/proc/self/status") as status:
        peak = next(line for line in status if line.startswith("VmHWM:")).split()[1]
    with open(os.environ["XCB_HWM_FILE"], "w") as out:
        out.write(peak)
atexit.register(report)
from xen_channel_backend.cli import main
sys.exit(main())
"""


def test_the_cli_process_stays_small_against_a_100_mb_answer(
    rundir: Path, fakes: Callable[..., Fake]
) -> None:
    """The whole command in a child, with the default line limit: its peak RSS stays
    far below the 100 MB the guest sends, and it exits 1 with one line."""
    path = register(rundir)
    fakes("huge-line", path)
    hwm_file = rundir.parent / "hwm"
    done = subprocess.run(
        [sys.executable, "-c", _CLI_WITH_HWM, "qemu-agent-command", "vm1",
         '{"execute":"guest-ping"}', "--rundir", str(rundir), "--timeout", "60"],
        capture_output=True, env={**os.environ, "XCB_HWM_FILE": str(hwm_file)}, timeout=120,
        check=False,
    )
    assert done.returncode == 1 and done.stdout == b""
    assert done.stderr.count(b"\n") == 1 and b"is over 4194304 bytes; dropped" in done.stderr
    peak_kib = int(hwm_file.read_text())
    assert peak_kib < 64 * 1024, f"peak RSS {peak_kib} KiB"


def test_escapes_in_a_guests_error_stay_on_one_escaped_line(
    rundir: Path, fakes: Callable[..., Fake]
) -> None:
    path = register(rundir)
    fakes("escapes", path)
    out, err = io.StringIO(), io.StringIO()
    code = main(["qemu-agent-command", "vm1", '{"execute":"guest-ping"}', "--rundir",
                 str(rundir)], stdout=out, stderr=err)
    assert code == 1 and out.getvalue() == ""
    line = err.getvalue()
    assert line.count("\n") == 1 and line.isprintable() is False  # only the final newline
    assert line[:-1].isprintable(), repr(line)
    assert "\\x1b]52" in line
