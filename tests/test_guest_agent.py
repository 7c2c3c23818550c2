"""The guest agent: protocol answers, tty handling, waiting for the link, and
the whole agent (run like a guest runs it: ``python -I -S guest/xen-channel-guest``,
stdlib only) against the QEMU stand-in with a real pty as /dev/hvcN."""

from __future__ import annotations

import ast
import io
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from backend_standin import BackendStandin
from waiting import WAIT, wait_for

from xen_channel_backend import protocol
from xen_channel_backend.guest import GUEST_FILES
from xen_channel_backend.guest import agent as guest_agent
from xen_channel_backend.guest.agent import GuestAgent, PathWaiter, main, open_channel
from xen_channel_backend.guest.appliers import ApplyContext, default_registry

REPO = Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "guest" / "xen-channel-guest"
CHANNEL = "org.example.agent.0"
#: The guest's own closure, as the guest package ships it (GUEST_FILES).
ALLOWED_OWN_MODULES = {
    file.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    for file in GUEST_FILES
    if not file.endswith("__main__.py")
}
NONCE = "0123456789abcdef0123456789abcdef"


# --- stdlib only --------------------------------------------------------------


def _imports_of(path: Path) -> set[str]:
    """Every module a file imports, at top level or inside functions."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            if node.level and node.module:  # from ..protocol import x
                found.add(f"{base}.{node.module}")
            elif node.level:  # from .. import protocol, __version__
                directory = REPO.joinpath(*base.split("."))
                found.update(
                    f"{base}.{a.name}" if (directory / f"{a.name}.py").exists() else base
                    for a in node.names
                )
            else:
                found.add(str(node.module))
    return found


def _is_allowed(module: str) -> bool:
    top = module.split(".")[0]
    if top == "xen_channel_backend":
        return module in ALLOWED_OWN_MODULES
    return top in sys.stdlib_module_names


@pytest.mark.parametrize("name", ["guest/agent.py", "guest/appliers.py", "guest/__init__.py"])
def test_source_imports_only_stdlib(name: str) -> None:
    """Lazy imports inside functions count too: a guest has no lxml or libvirt."""
    imports = _imports_of(REPO / "xen_channel_backend" / name)
    own = {m for m in imports if m.startswith("xen_channel_backend")}
    assert own <= ALLOWED_OWN_MODULES, own - ALLOWED_OWN_MODULES
    assert all(_is_allowed(m) for m in imports), sorted(m for m in imports if not _is_allowed(m))


def test_loaded_modules_only_stdlib(tmp_path: Path) -> None:
    """Without site-packages (-S) and isolated (-I), as on a bare guest: every
    module loaded - transitively, and after a run of the protocol code - is
    the standard library or one of the allowed package modules."""
    script = f"""
import json, sys
sys.path.insert(0, {str(REPO)!r})
from xen_channel_backend import protocol
from xen_channel_backend.guest import agent as guest_agent
from xen_channel_backend.guest.appliers import ApplyContext, default_registry
agent = guest_agent.GuestAgent(default_registry(), ApplyContext(root=sys.argv[1]))
agent.handle({{"type": "hello", "versions": [1], "nonce": "{NONCE}"}})
agent.handle({{"type": "config", "id": "1", "payload": {{"hostname": "vm1",
    "addresses": [{{"interface": "eth0", "address": "192.0.2.1/24"}}]}}}})
guest_agent.PathWaiter(sys.argv[1] + "/x").wait(timeout=0.01)
print(json.dumps(sorted(sys.modules)))
"""
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    loaded = json.loads(done.stdout)
    own = {m for m in loaded if m.startswith("xen_channel_backend")}
    assert own <= ALLOWED_OWN_MODULES, own - ALLOWED_OWN_MODULES
    assert [m for m in loaded if m != "__main__" and not _is_allowed(m)] == []
    assert "lxml" not in loaded and "libvirt" not in loaded


def test_guest_files_install_and_run_alone(tmp_path: Path) -> None:
    """The guest package's files, copied alone into an empty tree, are a
    working agent: nothing of the dom0 side is needed, nor site-packages."""
    for file in GUEST_FILES:
        target = tmp_path / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / file, target)
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", "import runpy, sys; sys.path.insert(0, sys.argv[1]); "
         "sys.argv[1:] = ['--help']; runpy.run_module('xen_channel_backend.guest', "
         "run_name='__main__')", str(tmp_path)], capture_output=True, text=True, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "--channel" in done.stdout
    extra = subprocess.run(
        [sys.executable, "-I", "-S", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
         "import xen_channel_backend.guest.agent; "
         "print(sorted(m for m in sys.modules if m.startswith('xen_channel_backend')))",
         str(tmp_path)], capture_output=True, text=True, check=True,
    )
    assert set(eval(extra.stdout)) <= ALLOWED_OWN_MODULES


# --- protocol answers (sans-IO) ------------------------------------------------


@pytest.fixture
def agent(tmp_path: Path) -> GuestAgent:
    (tmp_path / "etc").mkdir()
    return GuestAgent(default_registry(), ApplyContext(root=str(tmp_path)))


def test_hello_ack(agent: GuestAgent) -> None:
    [reply] = agent.handle(protocol.hello(NONCE))
    assert reply == {
        "type": "hello-ack",
        "version": 1,
        "nonce": NONCE,
        "agent": {"name": "xen-channel-guest", "version": guest_agent.__version__},
        "capabilities": ["hostname", "addresses", "ssh_keys"],
    }
    assert protocol.validate_hello_ack(reply) == []


def test_hello_version_negotiation(agent: GuestAgent) -> None:
    [reply] = agent.handle(protocol.hello(NONCE, versions=[3, 1, 2]))
    assert reply["type"] == "hello-ack" and reply["version"] == 1
    [reply] = agent.handle(protocol.hello(NONCE, versions=[2, 3]))
    assert reply["type"] == "error" and reply["code"] == "unsupported-version"
    assert reply["id"] is None and "[2, 3]" in reply["message"]


@pytest.mark.parametrize(
    "hello",
    [
        {"type": "hello", "versions": [1]},
        {"type": "hello", "versions": [1], "nonce": "xyz"},
        {"type": "hello", "versions": "1", "nonce": NONCE},
        {"type": "hello", "versions": [], "nonce": NONCE},
    ],
)
def test_bad_hello(agent: GuestAgent, hello: dict[str, Any]) -> None:
    [reply] = agent.handle(hello)
    assert reply["type"] == "error" and reply["code"] == "bad-request"
    assert protocol.validate_error(reply) == []


def test_ping_pong(agent: GuestAgent) -> None:
    assert agent.handle(protocol.ping("p1")) == [protocol.pong("p1")]
    [reply] = agent.handle({"type": "ping"})
    assert (reply["type"], reply["code"], reply["id"]) == ("error", "bad-request", None)


def test_unknown_type_and_bad_frames(agent: GuestAgent) -> None:
    [reply] = agent.handle({"type": "reboot", "id": "r1"})
    assert (reply["type"], reply["code"], reply["id"]) == ("error", "unknown-type", "r1")
    assert "'reboot'" in reply["message"]
    decoder = protocol.FrameDecoder()
    [bad] = decoder.feed(b"\xff{not json}\n")
    [reply] = agent.handle(bad)
    assert (reply["code"], reply["id"]) == ("bad-frame", None)


@pytest.mark.parametrize("kind", ["hello-ack", "ack", "pong", "error"])
def test_replies_are_never_answered(agent: GuestAgent, kind: str) -> None:
    assert agent.handle({"type": kind, "id": "x"}) == []


def test_config_applied_and_acked(agent: GuestAgent) -> None:
    [reply] = agent.handle(protocol.config("c1", {"hostname": "vm1", "extra": {"k": 1}}))
    assert protocol.validate_ack(reply) == []
    assert reply["id"] == "c1" and reply["status"] == "partial"
    assert [(r["item"], r["status"]) for r in reply["results"]] == [
        ("hostname", "applied"),
        ("extra/k", "unsupported"),
    ]
    assert Path(agent.context.root, "etc/hostname").read_text() == "vm1\n"
    [again] = agent.handle(protocol.config("c2", {"hostname": "vm1"}))
    assert (again["status"], again["results"][0]["status"]) == ("ok", "unchanged")
    assert agent.config_statuses == ["partial", "ok"]


def test_malformed_config_rejected_whole(agent: GuestAgent) -> None:
    payload = {
        "hostname": "vm1",
        "addresses": [{"interface": "eth0", "address": "192.0.2.300/24"}],
    }
    [reply] = agent.handle(protocol.config("c1", payload))
    assert protocol.validate_ack(reply) == []
    assert reply["status"] == "error"
    assert reply["results"] == [
        {
            "item": "addresses/eth0",
            "status": "failed",
            "detail": "address '192.0.2.300/24' is not an IP address with a prefix",
        }
    ]
    assert "nothing applied" in reply["error"]
    assert not Path(agent.context.root, "etc/hostname").exists()


def test_protocol_validator_also_applies(agent: GuestAgent) -> None:
    """Rules only the contract's validator knows (unknown payload keys, extra
    key syntax) reject the payload too, reported under "payload"."""
    for payload in ({"hostname": "vm1", "motd": "hi"}, {"hostname": "vm1", "extra": {"a b": 1}}):
        [reply] = agent.handle(protocol.config("c1", payload))
        assert reply["status"] == "error", payload
        assert [r["item"] for r in reply["results"]] == ["payload"]
        assert protocol.validate_ack(reply) == []
    assert not Path(agent.context.root, "etc/hostname").exists()


def test_an_ack_too_big_for_a_frame_becomes_an_error(agent: GuestAgent) -> None:
    """20000 extra keys fit in a 1 MiB config frame, but their ack would not."""
    payload = {"extra": {f"k{i}": 0 for i in range(20000)}}
    assert len(protocol.encode(protocol.config("big", payload))) < protocol.MAX_FRAME
    [reply] = agent.handle(protocol.config("big", payload))
    frame = guest_agent.encode_reply(reply)
    [answer] = protocol.FrameDecoder().feed(frame)
    assert isinstance(answer, dict)
    assert (answer["type"], answer["id"], answer["code"]) == ("error", "big", "bad-request")
    assert guest_agent.encode_reply(protocol.pong("p")) == protocol.encode(protocol.pong("p"))


@pytest.mark.parametrize(
    "message",
    [
        {"type": "config", "payload": {}},
        {"type": "config", "id": 5, "payload": {}},
        {"type": "config", "id": "c1"},
    ],
)
def test_bad_config_request(agent: GuestAgent, message: dict[str, Any]) -> None:
    [reply] = agent.handle(message)
    assert (reply["type"], reply["code"]) == ("error", "bad-request")


# --- tty handling and waiting ---------------------------------------------------


def test_open_channel_sets_raw_and_flushes() -> None:
    master, slave = os.openpty()  # a fresh pty starts cooked, like hvc
    try:
        path = os.ttyname(slave)
        os.write(master, b"stale bytes from before\n")
        # The line discipline takes input in a kernel worker: wait until it
        # has (and has echoed it), so the flush below has something to drop.
        assert select.select([slave], [], [], WAIT)[0] == [slave]
        fd = open_channel(path)
        try:
            lflag = termios.tcgetattr(fd)[3]
            assert not lflag & (termios.ECHO | termios.ICANON | termios.ISIG)
            assert select.select([fd], [], [], 0.2)[0] == []  # the stale bytes are gone
            # Cooked mode had echoed the stale bytes back to dom0 before we
            # opened (one more reason dom0 drops bytes until a sync byte).
            assert os.read(master, 100) == b"stale bytes from before\r\n"
            os.write(fd, b"\xff{}\n")  # no \n -> \r\n translation in raw mode
            assert select.select([master], [], [], WAIT)[0] == [master]
            assert os.read(master, 100) == b"\xff{}\n"
        finally:
            os.close(fd)
    finally:
        os.close(master)
        os.close(slave)


def _wait_in_thread(waiter: PathWaiter) -> tuple[threading.Thread, list[bool]]:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(waiter.wait(timeout=WAIT)))
    thread.start()
    return thread, result


def test_inotify_wait_when_even_the_directory_is_missing(tmp_path: Path) -> None:
    link = tmp_path / "dev" / "xen-channel" / CHANNEL
    # A poll interval of an hour: only inotify can wake the waiter in time.
    waiter = PathWaiter(str(link), poll_interval=3600)
    assert waiter.mode == "inotify"
    thread, result = _wait_in_thread(waiter)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "xen-channel").mkdir()
    link.symlink_to("/dev/hvc9")  # dangling counts: opening retries
    thread.join(WAIT)
    assert result == [True]


def test_poll_fallback(tmp_path: Path) -> None:
    link = tmp_path / "xen-channel" / CHANNEL
    waiter = PathWaiter(str(link), use_inotify=False, poll_interval=0.01)
    assert waiter.mode == "poll"
    assert waiter.wait(timeout=0.05) is False
    thread, result = _wait_in_thread(waiter)
    link.parent.mkdir()
    link.symlink_to("/dev/hvc1")
    thread.join(WAIT)
    assert result == [True]


def test_open_retries_until_the_device_exists(tmp_path: Path) -> None:
    """/dev/xen-channel/NAME may exist before hvc has probed /dev/hvcN."""
    device = tmp_path / "hvc1"
    link = tmp_path / CHANNEL
    link.symlink_to(device)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            device.write_bytes(b"")  # the device is probed

    fd = guest_agent.wait_and_open(str(link), PathWaiter(str(link)), sleep=sleep)
    os.close(fd)
    assert sleeps == [0.1, 0.2, 0.4]


# --- the entry point ------------------------------------------------------------


def test_usage_errors(tmp_path: Path) -> None:
    err = io.StringIO()
    assert main(["--channel", "../../etc/evil"], stderr=err) == 2
    assert err.getvalue().startswith("xen-channel-guest: error: --channel: channel name")
    err = io.StringIO()
    assert main(["--channel", CHANNEL, "--root", str(tmp_path / "nope")], stderr=err) == 2
    assert "is not a directory" in err.getvalue()
    err = io.StringIO()
    assert main([], stderr=err) == 2
    assert "--channel" in err.getvalue() and err.getvalue().count("\n") == 1
    out = io.StringIO()
    assert main(["--help"], stdout=out) == 0
    assert "--devdir" in out.getvalue()


# --- the whole agent against the QEMU stand-in ----------------------------------


class Dom0:
    """The dom0 end on the stand-in's socket, built on protocol.py (in production
    this is agent.ChannelClient or the broker)."""

    def __init__(self, socket_path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(socket_path)
        self.decoder = protocol.FrameDecoder()
        self.pending: list[dict[str, Any]] = []

    def close(self) -> None:
        self.sock.close()

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(protocol.encode(message))

    def receive(self, timeout: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while not self.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
                return None
            data = self.sock.recv(65536)
            assert data, "the stand-in closed the connection"
            for item in self.decoder.feed(data):
                assert isinstance(item, dict), item
                self.pending.append(item)
        return self.pending.pop(0)

    def handshake(self) -> dict[str, Any]:
        """hello until the hello-ack with our nonce (the agent may still be starting;
        anything else, e.g. an answer to an earlier hello, is stale)."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            nonce = protocol.new_nonce()
            self.send(protocol.hello(nonce))
            while (reply := self.receive(0.5)) is not None:
                if reply.get("type") == "hello-ack" and reply.get("nonce") == nonce:
                    return reply
        raise AssertionError("no hello-ack from the guest agent")

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(message)
        deadline = time.monotonic() + WAIT
        while (reply := self.receive(deadline - time.monotonic())) is not None:
            if reply.get("id") == message["id"]:
                return reply
        raise AssertionError(f"no reply to {message['type']} {message['id']}")


class AgentProcess:
    """The agent as a guest runs it: the launcher, stdlib only (-I -S)."""

    def __init__(self, devdir: Path, root: Path, log: Path, *extra: str) -> None:
        self.log = log
        self.process = subprocess.Popen(
            [
                *(sys.executable, "-I", "-S", str(LAUNCHER), "--channel", CHANNEL, "--debug"),
                *("--devdir", str(devdir), "--root", str(root), *extra),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, text: str, count: int = 1) -> None:
        wait_for(lambda: self.log_text().count(text) >= count, f"agent log {text!r}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait(WAIT)


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[dict[str, Path]]:
    paths = {
        "devdir": tmp_path / "dev" / "xen-channel",  # created later, like udev would
        "root": tmp_path / "root",
        "log": tmp_path / "agent.log",
        "socket": tmp_path / "qemu.sock",
    }
    (paths["root"] / "etc").mkdir(parents=True)
    (paths["root"] / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (paths["root"] / "root").mkdir()
    yield paths


def _link(devdir: Path, tty_path: str) -> Path:
    """What the udev helper does: /dev/xen-channel/NAME -> /dev/hvcN, atomically."""
    devdir.mkdir(parents=True, exist_ok=True)
    tmp = devdir / f".{CHANNEL}.new"
    tmp.symlink_to(tty_path)
    os.replace(tmp, devdir / CHANNEL)
    return devdir / CHANNEL


def _ed25519_key() -> str:
    import base64
    import struct

    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(range(32))
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} admin@dom0"


def test_agent_end_to_end(guest: dict[str, Path]) -> None:
    qemu = BackendStandin(guest["socket"]).start()
    agent = AgentProcess(guest["devdir"], guest["root"], guest["log"])
    dom0: Dom0 | None = None
    try:
        # The link appears only after the agent waits for it (through inotify,
        # on the parent: /dev/xen-channel does not exist yet either).
        agent.wait_log("(inotify)")
        _link(guest["devdir"], qemu.guest_tty)
        dom0 = Dom0(str(guest["socket"]))
        ack = dom0.handshake()
        assert ack["capabilities"] == ["hostname", "addresses", "ssh_keys"]

        payload = {
            "hostname": "vm1.example.org",
            "addresses": [
                {"interface": "eth0", "address": "192.0.2.10/24", "gateway": "192.0.2.1"}
            ],
            "ssh_keys": [{"user": "root", "keys": [_ed25519_key()]}],
            "extra": {"org.example.motd": "hi"},
        }
        reply = dom0.request(protocol.config("c1", payload))
        assert protocol.validate_ack(reply) == []
        assert reply["status"] == "partial"
        assert [(r["item"], r["status"]) for r in reply["results"]] == [
            ("hostname", "applied"),
            ("addresses/eth0", "applied"),
            ("ssh_keys/root", "applied"),
            ("extra/org.example.motd", "unsupported"),
        ]
        root = guest["root"]
        assert (root / "etc/hostname").read_text() == "vm1.example.org\n"
        assert (
            "Gateway=192.0.2.1\n"
            in (root / "etc/systemd/network/50-xen-channel-eth0.network").read_text()
        )
        assert _ed25519_key() in (root / "root/.ssh/authorized_keys").read_text()
        assert dom0.request(protocol.ping("p1")) == protocol.pong("p1")

        # dom0 goes away mid-frame and comes back: the guest sees only a quiet
        # tty and half a frame, which the next sync byte discards.
        dom0.sock.sendall(b'\xff{"type":"config","id":"half","payl')
        dom0.close()
        dom0 = Dom0(str(guest["socket"]))
        dom0.handshake()
        reply = dom0.request(protocol.config("c2", {"hostname": "vm1.example.org"}))
        assert (reply["status"], reply["results"][0]["status"]) == ("ok", "unchanged")
        assert qemu.connections == 2

        # A malformed config over the wire: rejected whole, nothing applied.
        bad = {"hostname": "vm2", "addresses": [{"interface": "../x", "address": "1.2.3.4/8"}]}
        reply = dom0.request(protocol.config("c3", bad))
        assert reply["status"] == "error"
        assert reply["results"][0]["item"] == "addresses[0]"
        assert (root / "etc/hostname").read_text() == "vm1.example.org\n"
        assert agent.process.poll() is None
    finally:
        if dom0 is not None:
            dom0.close()
        agent.stop()
        qemu.close()
    assert "Traceback" not in agent.log_text()


def test_agent_survives_the_channel_going_away(guest: dict[str, Path]) -> None:
    first = BackendStandin(guest["socket"]).start()
    link = _link(guest["devdir"], first.guest_tty)
    agent = AgentProcess(guest["devdir"], guest["root"], guest["log"])
    second: BackendStandin | None = None
    try:
        dom0 = Dom0(str(guest["socket"]))
        dom0.handshake()
        dom0.close()
        agent.wait_log("opened")

        # The domain's console goes away: the pty hangs up (EIO for the agent)
        # and the udev helper removes the link.
        first.close()
        link.unlink()
        agent.wait_log("went away")
        agent.wait_log("(inotify)")

        # It returns as a different device; the agent finds it through inotify.
        second = BackendStandin(guest["socket"]).start()
        _link(guest["devdir"], second.guest_tty)
        dom0 = Dom0(str(guest["socket"]))
        dom0.handshake()
        reply = dom0.request(protocol.config("c1", {"hostname": "vm3"}))
        assert reply["status"] == "ok"
        assert (guest["root"] / "etc/hostname").read_text() == "vm3\n"
        dom0.close()
        agent.wait_log("opened", count=2)
        assert agent.process.poll() is None
    finally:
        agent.stop()
        if second is not None:
            second.close()
        first.close()
    assert "Traceback" not in agent.log_text()


@pytest.mark.parametrize(
    ("payload", "code"),
    [({"hostname": "vm1"}, 0), ({"hostname": "vm1", "extra": {"x": 1}}, 1)],
)
def test_once_exits_after_the_first_config(
    guest: dict[str, Path], payload: dict[str, Any], code: int
) -> None:
    with BackendStandin(guest["socket"]) as qemu:
        _link(guest["devdir"], qemu.guest_tty)
        agent = AgentProcess(guest["devdir"], guest["root"], guest["log"], "--once")
        dom0 = Dom0(str(guest["socket"]))
        try:
            dom0.handshake()
            assert dom0.request(protocol.config("c1", payload))["type"] == "ack"
            assert agent.process.wait(WAIT) == code
        finally:
            dom0.close()
            agent.stop()


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """The real systemd-analyze accepts the unit template (instance with a '-')."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze (Debian package systemd) is not installed")
    unit = (REPO / "guest" / "xen-channel-guest@.service").read_text()
    assert "ExecStart=/usr/bin/xen-channel-guest --channel %i\n" in unit
    # verify insists that ExecStart exists: point it at the launcher.
    instance = tmp_path / "xen-channel-guest@org.example-agent.0.service"
    instance.write_text(unit.replace("/usr/bin/xen-channel-guest", str(LAUNCHER)))
    done = subprocess.run(
        [analyze, "verify", "--man=no", str(instance)], capture_output=True, text=True
    )
    assert (done.returncode, done.stderr) == (0, "")


def test_whole_guest_chain_with_the_real_dom0_client(guest: dict[str, Path]) -> None:
    """Every real part that runs here, in the order a boot runs them: the udev
    helper reads the channel name with the real xenstore-read (from the
    xenstore stand-in) and links /dev/xen-channel/NAME -> DEVPREFIX/hvc1,
    which stands for the pty; the agent finds it through inotify; the dom0
    side is the project's own ChannelClient (xen-channel send)."""
    from xenstore_standin import XenstoreStandin

    from xen_channel_backend.agent import ChannelClient
    from xen_channel_backend.errors import ConfigRefused

    shell = shutil.which("dash") or shutil.which("sh")
    if shutil.which("xenstore-read") is None or shell is None:
        pytest.skip("needs Debian's xenstore-read (xenstore-utils); run scripts/install-deps")
    devprefix = guest["devdir"].parent
    devprefix.mkdir(parents=True)
    with (
        BackendStandin(guest["socket"]) as qemu,
        XenstoreStandin(
            guest["socket"].parent / "xs.sock",
            domid=5,
            tree={"device/console/1/name": CHANNEL},
        ) as store,
    ):
        (devprefix / "hvc1").symlink_to(qemu.guest_tty)  # console-1 probed as hvc1
        agent = AgentProcess(guest["devdir"], guest["root"], guest["log"])
        try:
            agent.wait_log("(inotify)")
            env = store.client_env() | {
                "XEN_CHANNEL_DEVDIR": str(guest["devdir"]),
                "XEN_CHANNEL_DEVPREFIX": str(devprefix),
            }
            subprocess.run(
                [shell, str(REPO / "guest" / "xen-channel-setup"), "add", "console-1"],
                env=env,
                check=True,
                capture_output=True,
            )
            assert os.readlink(guest["devdir"] / CHANNEL) == str(devprefix / "hvc1")
            with ChannelClient(str(guest["socket"])) as client:
                info = client.handshake(timeout=WAIT)
                assert (info.name, info.protocol_version) == ("xen-channel-guest", 1)
                ack = client.send_config({"hostname": "vm1"}, timeout=WAIT)
                assert [(r.item, r.status) for r in ack.results] == [("hostname", "applied")]
                with pytest.raises(ConfigRefused) as refused:
                    client.send_config({"extra": {"org.example.x": 1}}, timeout=WAIT)
                assert refused.value.status == "partial"
                assert client.ping(timeout=WAIT) >= 0
            assert (guest["root"] / "etc/hostname").read_text() == "vm1\n"
        finally:
            agent.stop()
    assert "Traceback" not in agent.log_text()
