"""Tests for xen_channel_backend.agent: the dom0 client, end to end through the QEMU stand-in.

The guest side is :class:`FakeGuest`, a few lines that answer frames on the
stand-in's pty slave (the guest's /dev/hvcN); each test scripts how it
misbehaves.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from backend_standin import BackendStandin

from xen_channel_backend import protocol
from xen_channel_backend.agent import ChannelClient
from xen_channel_backend.errors import (
    AckTimeout,
    ChannelUnavailable,
    ConfigRefused,
    InvalidMessage,
    ProtocolViolation,
)
from xen_channel_backend.trust import channel_socket_owners

#: Deadline for answers that a working guest gives in milliseconds.  Tests
#: that expect a timeout use SHORT so they stay fast.
WAIT = 10.0
SHORT = 0.3

Responder = Callable[[dict[str, Any]], list[bytes]]


def well_behaved(message: dict[str, Any]) -> list[bytes]:
    """What a correct guest agent answers."""
    kind = message.get("type")
    if kind == "hello":
        return [
            protocol.encode(
                protocol.hello_ack(
                    message["nonce"],
                    agent_name="fake-guest",
                    agent_version="0.1",
                    capabilities=["hostname", "ssh_keys", "addresses"],
                )
            )
        ]
    if kind == "config":
        items = protocol.payload_items(message["payload"])
        results = [{"item": i, "status": "applied", "detail": ""} for i in items]
        return [protocol.encode(protocol.ack(message["id"], results=results))]
    if kind == "ping":
        return [protocol.encode(protocol.pong(message["id"]))]
    return [protocol.encode(protocol.error(message.get("id"), "unknown-type", str(kind)))]


class FakeGuest:
    """A scripted guest agent on the guest's end of the channel (the pty slave)."""

    def __init__(self, qemu: BackendStandin, respond: Responder = well_behaved) -> None:
        self.fd = qemu.open_guest()
        self.respond = respond
        self.seen: list[dict[str, Any]] = []
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        decoder = protocol.FrameDecoder()
        while True:
            ready, _, _ = select.select([self.fd, self._stop_r], [], [])
            if self._stop_r in ready:
                return
            for message in decoder.feed(os.read(self.fd, 65536)):
                if isinstance(message, protocol.FrameError):
                    continue
                self.seen.append(message)
                for reply in self.respond(message):
                    os.write(self.fd, reply)

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def stop(self) -> None:
        """The guest agent exits: it closes /dev/hvcN."""
        os.write(self._stop_w, b"x")
        self._thread.join()
        for fd in (self.fd, self._stop_r, self._stop_w):
            os.close(fd)

    def kinds(self) -> list[str]:
        return [m["type"] for m in self.seen]


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[BackendStandin]:
    with BackendStandin(tmp_path / "org.example.agent") as standin:
        yield standin


@contextlib.contextmanager
def guest(qemu: BackendStandin, respond: Responder = well_behaved) -> Iterator[FakeGuest]:
    fake = FakeGuest(qemu, respond)
    try:
        yield fake
    finally:
        fake.stop()


def client_for(qemu: BackendStandin, **kwargs: Any) -> ChannelClient:
    kwargs.setdefault("label", "vm1/org.example.agent")
    return ChannelClient(qemu.socket_path, **kwargs)


PAYLOAD: dict[str, Any] = {
    "hostname": "vm1.example.org",
    "addresses": [{"interface": "eth0", "address": "192.0.2.10/24", "gateway": "192.0.2.1"}],
    "ssh_keys": [{"user": "root", "keys": ["ssh-ed25519 AAAAC3Nza admin@example.org"]}],
}


# --- the happy path ------------------------------------------------------------


def test_handshake_reports_the_agent(qemu: BackendStandin) -> None:
    with guest(qemu) as fake, client_for(qemu) as client:
        agent = client.handshake(WAIT)
    assert (agent.name, agent.version, agent.protocol_version) == ("fake-guest", "0.1", 1)
    assert agent.capabilities == ("hostname", "ssh_keys", "addresses")
    hello = fake.seen[0]
    assert hello["type"] == "hello" and hello["versions"] == [1]
    assert len(hello["nonce"]) == 32


def test_config_push_is_acknowledged_end_to_end(qemu: BackendStandin) -> None:
    with guest(qemu) as fake, client_for(qemu) as client:
        result = client.send_config(PAYLOAD, WAIT)
        assert client.ping(WAIT) >= 0
    assert result.status == "ok"
    assert [(r.item, r.status) for r in result.results] == [
        ("hostname", "applied"),
        ("addresses/eth0", "applied"),
        ("ssh_keys/root", "applied"),
    ]
    # The handshake came first, on its own; the config carried our payload and id.
    assert fake.kinds() == ["hello", "config", "ping"]
    assert fake.seen[1]["payload"] == PAYLOAD and fake.seen[1]["id"] == result.id


def test_invalid_payload_is_refused_before_sending(qemu: BackendStandin) -> None:
    with (
        guest(qemu) as fake,
        client_for(qemu) as client,
        pytest.raises(InvalidMessage, match="not a valid host name"),
    ):
        client.send_config({"hostname": "bad name"}, WAIT)
    assert fake.seen == []


# --- stale data and resynchronisation --------------------------------------------


def test_stale_bytes_before_the_handshake_are_discarded(qemu: BackendStandin) -> None:
    with guest(qemu) as fake:
        # Left over from an earlier client: noise, a half frame, a hello-ack and
        # an ack for requests this client never made.  QEMU keeps guest output
        # while nobody is connected, so the new client reads all of it first.
        stale = [
            b"boot noise\r\n\x00\x01",
            b'\xff{"type":"ack","id":"old","stat',
            protocol.encode(
                protocol.hello_ack("0" * 32, agent_name="old", agent_version="0", capabilities=[])
            ),
            protocol.encode(protocol.ack("old", results=[])),
        ]
        for chunk in stale:
            fake.write(chunk)
        # Connect only once all of it is in the stand-in's backlog, so the
        # client really meets it before its handshake.
        qemu.wait_buffered(sum(map(len, stale)), WAIT)
        with client_for(qemu) as client:
            agent = client.handshake(WAIT)
            result = client.send_config({"hostname": "vm1"}, WAIT)
    assert agent.name == "fake-guest"
    assert result.status == "ok"


def test_standin_reports_buffered_guest_output(qemu: BackendStandin) -> None:
    """The wait the test above relies on: it returns once the guest's bytes are
    held for the next client, and fails loudly when they never are."""
    with guest(qemu) as fake:
        fake.write(b"0123456789")
        qemu.wait_buffered(10, WAIT)
        with pytest.raises(TimeoutError, match="10 of 11 guest bytes"):
            qemu.wait_buffered(11, 0.05)


def test_stale_hello_ack_with_another_nonce_is_ignored(qemu: BackendStandin) -> None:
    def replays_an_old_hello_ack(message: dict[str, Any]) -> list[bytes]:
        if message["type"] == "hello":
            stale = protocol.hello_ack(
                "f" * 32, agent_name="stale", agent_version="0", capabilities=[]
            )
            return [protocol.encode(stale), *well_behaved(message)]
        return well_behaved(message)

    with guest(qemu, replays_an_old_hello_ack), client_for(qemu) as client:
        assert client.handshake(WAIT).name == "fake-guest"


def test_hello_is_repeated_when_the_first_one_is_lost(qemu: BackendStandin) -> None:
    # A guest agent that opens its tty after our hello flushes it unread
    # (TCSAFLUSH); here the agent simply ignores the first one.
    def deaf_at_first(message: dict[str, Any]) -> list[bytes]:
        if message["type"] == "hello" and fake.kinds().count("hello") == 1:
            return []
        return well_behaved(message)

    with guest(qemu, deaf_at_first) as fake, client_for(qemu, hello_interval=0.05) as client:
        assert client.handshake(WAIT).name == "fake-guest"
    assert fake.kinds()[:2] == ["hello", "hello"]
    assert fake.seen[0]["nonce"] != fake.seen[1]["nonce"]


def test_ack_timeout_then_resync_ignores_the_late_ack(qemu: BackendStandin) -> None:
    held: list[dict[str, Any]] = []

    def slow_first_config(message: dict[str, Any]) -> list[bytes]:
        if message["type"] == "config" and not held:
            held.append(message)  # answer it only later, after the client gave up
            return []
        if message["type"] == "hello" and held:
            late = well_behaved(held[0])  # the late ack arrives before the new hello-ack
            return [*late, *well_behaved(message)]
        return well_behaved(message)

    with guest(qemu, slow_first_config) as fake, client_for(qemu) as client:
        with pytest.raises(AckTimeout) as caught:
            client.send_config({"hostname": "first"}, SHORT)
        result = client.send_config({"hostname": "second"}, WAIT)
    assert caught.value.request_id == held[0]["id"]
    assert str(caught.value) == (
        f"vm1/org.example.agent: no answer to request {held[0]['id']!r} within 0.3 s "
        "(is the guest agent running?)"
    )
    # A new hello after the timeout, and the second ack is the one returned.
    assert fake.kinds() == ["hello", "config", "hello", "config"]
    assert result.id == fake.seen[3]["id"] != held[0]["id"]


def test_no_guest_agent_gives_a_handshake_timeout(qemu: BackendStandin) -> None:
    with client_for(qemu) as client, pytest.raises(AckTimeout, match="is the guest agent running"):
        client.handshake(SHORT)


# --- a misbehaving guest ---------------------------------------------------------


def answers_config_with(*frames: bytes) -> Responder:
    def respond(message: dict[str, Any]) -> list[bytes]:
        return list(frames) if message["type"] == "config" else well_behaved(message)

    return respond


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        (
            (b"\xffthis is not json\n",),
            "vm1/org.example.agent: protocol violation: guest sent bad-frame: invalid JSON",
        ),
        (
            (b"\xff" + b"x" * (protocol.MAX_FRAME + 10) + b"\n",),
            "vm1/org.example.agent: protocol violation: guest sent frame-too-large: "
            "frame longer than 1048576 bytes",
        ),
        (
            (b'\xff{"type":"error","id":null,"code":"bad-frame","message":"cut"}\n',),
            "could not read our request: bad-frame: 'cut'",
        ),
    ],
    ids=["garbage", "oversized", "guest-could-not-parse"],
)
def test_garbage_from_the_guest_is_a_clear_protocol_violation(
    qemu: BackendStandin, frames: tuple[bytes, ...], expected: str
) -> None:
    with guest(qemu, answers_config_with(*frames)), client_for(qemu) as client:
        with pytest.raises(ProtocolViolation) as caught:
            client.send_config({"hostname": "vm1"}, WAIT)
        assert expected in str(caught.value)
        assert "\n" not in str(caught.value)
        # The client is still usable: the next request resyncs first.
        assert client.ping(WAIT) >= 0


def test_malformed_ack_is_a_protocol_violation(qemu: BackendStandin) -> None:
    def bad_ack(message: dict[str, Any]) -> list[bytes]:
        if message["type"] == "config":
            return [protocol.encode({"type": "ack", "id": message["id"], "status": "great"})]
        return well_behaved(message)

    expected = "bad ack: \"status\" 'great' is not one of"
    with (
        guest(qemu, bad_ack),
        client_for(qemu) as client,
        pytest.raises(ProtocolViolation, match=expected),
    ):
        client.send_config({"hostname": "vm1"}, WAIT)


def test_rejected_and_partial_configs_raise_config_refused(qemu: BackendStandin) -> None:
    def refusing(message: dict[str, Any]) -> list[bytes]:
        if message["type"] != "config":
            return well_behaved(message)
        if message["payload"].get("hostname") == "reject":
            return [protocol.encode(protocol.ack(message["id"], error="no hostnames today"))]
        results = [
            {"item": "hostname", "status": "applied", "detail": ""},
            {"item": "addresses/eth0", "status": "failed", "detail": "no such device"},
            {"item": "ssh_keys/root", "status": "unchanged", "detail": ""},
        ]
        return [protocol.encode(protocol.ack(message["id"], results=results))]

    with guest(qemu, refusing), client_for(qemu) as client:
        with pytest.raises(ConfigRefused) as rejected:
            client.send_config({"hostname": "reject"}, WAIT)
        with pytest.raises(ConfigRefused) as partial:
            client.send_config(PAYLOAD, WAIT)
    assert str(rejected.value) == (
        "vm1/org.example.agent: guest rejected the config: 'no hostnames today'"
    )
    assert partial.value.status == "partial"
    assert str(partial.value) == (
        "vm1/org.example.agent: guest applied the config only partly: "
        "1 of 3 items not applied: 'addresses/eth0' ('failed')"
    )


def test_unsupported_version_is_reported(qemu: BackendStandin) -> None:
    def future_guest(message: dict[str, Any]) -> list[bytes]:
        answer = protocol.error(message["nonce"], "unsupported-version", "I speak [2]")
        return [protocol.encode(answer)]

    with (
        guest(qemu, future_guest),
        client_for(qemu) as client,
        pytest.raises(ProtocolViolation, match="none of the protocol versions we offer"),
    ):
        client.handshake(WAIT)


# --- the guest and QEMU come and go ------------------------------------------------


def test_guest_agent_restarts_and_the_client_resyncs(qemu: BackendStandin) -> None:
    with client_for(qemu) as client:
        first = FakeGuest(qemu)
        assert client.send_config({"hostname": "one"}, WAIT).status == "ok"
        first.stop()  # the guest agent dies; QEMU's socket stays connected
        with pytest.raises(AckTimeout):
            client.send_config({"hostname": "lost"}, SHORT)
        second = FakeGuest(qemu)  # it comes back and reads what piled up meanwhile
        try:
            assert client.send_config({"hostname": "two"}, WAIT).status == "ok"
        finally:
            second.stop()
    # The new agent also saw the frames sent while nobody read; they did no harm.
    assert second.kinds()[-2:] == ["hello", "config"]
    assert second.seen[-1]["payload"] == {"hostname": "two"}


def test_domain_restart_closes_the_connection_and_reconnect_works(
    qemu: BackendStandin,
) -> None:
    with guest(qemu):
        client = client_for(qemu)
        with client:
            assert client.send_config({"hostname": "one"}, WAIT).status == "ok"
            qemu.stop()  # QEMU exits with the domain: the client sees EOF
            with pytest.raises(ChannelUnavailable, match="connection closed"):
                client.ping(WAIT)
            qemu.start()  # the next boot's QEMU listens again
            client.connect()
            assert client.send_config({"hostname": "two"}, WAIT).status == "ok"


def test_connect_retries_until_the_socket_appears(tmp_path: Path) -> None:
    path = tmp_path / "late"
    standin = BackendStandin(path)
    timer = threading.Timer(0.2, standin.start)
    timer.start()
    try:
        client = ChannelClient(str(path), retries=8, backoff=0.05)
        client.connect()  # fails at first (ENOENT), succeeds once QEMU listens
        client.close()
    finally:
        timer.join()
        standin.close()


def test_connect_gives_up_after_bounded_retries(tmp_path: Path) -> None:
    client = ChannelClient(str(tmp_path / "absent"), retries=2, backoff=0.01)
    with pytest.raises(ChannelUnavailable) as caught:
        client.connect()
    assert str(caught.value) == (
        f"channel socket {str(tmp_path / 'absent')!r}: no such socket "
        "(is the domain running?) after 3 attempts"
    )


def test_second_client_gets_nothing_while_the_first_holds_qemu(qemu: BackendStandin) -> None:
    # QEMU serves one client at a time; the broker exists because of this.
    with guest(qemu), client_for(qemu) as first:
        first.handshake(WAIT)
        with client_for(qemu) as second, pytest.raises(AckTimeout):
            second.handshake(SHORT)
        assert first.ping(WAIT) >= 0
        assert qemu.connections == 1


# --- xen-channel send ------------------------------------------------------------

UUID = "7b1a4c52-0d3e-4f7e-9c1a-2b3c4d5e6f70"
CHANNEL = "org.example.agent"


@pytest.fixture
def registered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, BackendStandin]]:
    """A running domain 'vm1' in a fresh registry, its channel served by the stand-in."""
    from xen_channel_backend.model import Channel, Connection, Target
    from xen_channel_backend.registry import ChannelRecord, DomainRecord, Registry

    monkeypatch.delenv("XEN_CHANNEL_RUNDIR", raising=False)
    monkeypatch.setenv("XEN_CHANNEL_CONFIG", str(tmp_path / "xen-channel.conf"))
    (tmp_path / "xen-channel.conf").write_text("[xen-channel]\n")
    # pytest's tmp_path is too long for a run directory (paths.MAX_RUNDIR keeps
    # room for sun_path's 107 bytes), so this one lives right under /tmp.
    rundir = tempfile.mkdtemp(prefix="xcb-", dir="/tmp")
    try:
        socket_path = f"{rundir}/{UUID}/{CHANNEL}"
        os.mkdir(os.path.dirname(socket_path), 0o750)
        channel = ChannelRecord(
            Channel(CHANNEL, Connection.SOCKET, socket_path, target=Target.XEN))
        Registry(rundir).put(DomainRecord(UUID, "vm1", "libxl", "running", (channel,)))
        with BackendStandin(socket_path) as standin:
            yield rundir, standin
    finally:
        shutil.rmtree(rundir)


def send(
    rundir: str, *extra: str, config: dict[str, Any] | None = None, domain: str = "vm1"
) -> tuple[int, str, str]:
    import io
    import json

    from xen_channel_backend.cli import main

    stdin = io.StringIO(json.dumps(PAYLOAD if config is None else config))
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = ["send", "--rundir", rundir, domain, CHANNEL, "--config", "-", *extra]
    code = main(argv, stdin, stdout, stderr)
    return code, stdout.getvalue(), stderr.getvalue()


def test_send_json_reports_every_item(registered: tuple[str, BackendStandin]) -> None:
    import json

    rundir, qemu = registered
    with guest(qemu):
        code, out, err = send(rundir, "--json", "--timeout", "10")
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert document["status"] == "ok"
    assert document["agent"] == {"name": "fake-guest", "version": "0.1"}
    assert [(r["item"], r["status"]) for r in document["results"]] == [
        ("hostname", "applied"),
        ("addresses/eth0", "applied"),
        ("ssh_keys/root", "applied"),
    ]


def test_send_prints_a_table_and_finds_the_domain_by_uuid(
    registered: tuple[str, BackendStandin],
) -> None:
    rundir, qemu = registered
    with guest(qemu):
        code, out, err = send(rundir, domain=UUID.upper())
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert [line.split() for line in lines] == [
        ["ITEM", "STATUS", "DETAIL"],
        ["hostname", "applied"],
        ["addresses/eth0", "applied"],
        ["ssh_keys/root", "applied"],
    ]


def test_send_refused_exits_1_with_one_line(registered: tuple[str, BackendStandin]) -> None:
    def refusing(message: dict[str, Any]) -> list[bytes]:
        if message["type"] == "config":
            return [protocol.encode(protocol.ack(message["id"], error="read-only root"))]
        return well_behaved(message)

    rundir, qemu = registered
    with guest(qemu, refusing):
        code, out, err = send(rundir)
    assert (code, out) == (1, "")
    assert err == (
        "xen-channel: error: domain 'vm1' channel 'org.example.agent': "
        "guest rejected the config: 'read-only root'\n"
    )


def test_send_without_a_guest_agent_times_out(registered: tuple[str, BackendStandin]) -> None:
    rundir, _qemu = registered
    code, out, err = send(rundir, "--timeout", "0.3")
    assert (code, out) == (1, "")
    assert err.startswith("xen-channel: error: domain 'vm1' channel 'org.example.agent': ")
    assert err.endswith("within 0.3 s (is the guest agent running?)\n")


@pytest.mark.parametrize(
    ("argv_domain", "argv_channel", "config", "fragment"),
    [
        ("vm2", CHANNEL, PAYLOAD, "no registered domain 'vm2'"),
        (
            "vm1",
            "org.example.other",
            PAYLOAD,
            "channel 'org.example.other': domain 'vm1' has no such channel "
            "(it has: 'org.example.agent')",
        ),
        ("vm1", CHANNEL, {"hostname": "-x-"}, "<stdin>: hostname '-x-' is not a valid host name"),
        ("vm1", CHANNEL, [1], "<stdin>: payload must be an object"),
    ],
)
def test_send_bad_input_names_the_culprit(
    registered: tuple[str, BackendStandin],
    argv_domain: str,
    argv_channel: str,
    config: Any,
    fragment: str,
) -> None:
    import io
    import json

    from xen_channel_backend.cli import main

    rundir, _qemu = registered
    stdout, stderr = io.StringIO(), io.StringIO()
    argv = ["send", "--rundir", rundir, argv_domain, argv_channel, "--config", "-"]
    code = main(argv, io.StringIO(json.dumps(config)), stdout, stderr)
    assert code == 1
    assert fragment in stderr.getvalue() and stderr.getvalue().count("\n") == 1


def test_send_goes_through_the_broker_socket_when_one_exists(
    registered: tuple[str, BackendStandin],
) -> None:
    from xen_channel_backend.agent import broker_socket_for

    rundir, qemu = registered
    # A stand-in on the broker's consumer socket, with the guest behind it; QEMU's
    # own socket has no guest, so only the brokered path can succeed.
    with BackendStandin(broker_socket_for(qemu.socket_path)) as broker, guest(broker):
        code, _out, err = send(rundir, "--timeout", "10")
    assert (code, err) == (0, "")
    assert qemu.connections == 0 and broker.connections == 1


# --- against the real guest agent --------------------------------------------------


def test_send_to_the_real_guest_agent(
    registered: tuple[str, BackendStandin], tmp_path: Path
) -> None:
    """`xen-channel send` -> QEMU stand-in -> pty -> xen-channel-guest, applied under a root."""
    import json
    import subprocess
    import sys

    rundir, qemu = registered
    devdir, root = tmp_path / "dev", tmp_path / "root"
    devdir.mkdir()
    root.mkdir()
    # What the guest's udev helper does: /dev/xen-channel/NAME -> /dev/hvcN.
    (devdir / CHANNEL).symlink_to(qemu.guest_tty)
    agent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from xen_channel_backend.guest.agent import main; sys.exit(main())",
            "--channel", CHANNEL, "--root", str(root), "--devdir", str(devdir), "--once",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        code, out, err = send(rundir, "--json", "--timeout", "20", config={"hostname": "vm1"})
        assert agent.wait(timeout=20) == 0
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        assert agent.stderr is not None
        agent_log = agent.stderr.read()
        agent.stderr.close()
    assert (code, err) == (0, ""), agent_log
    document = json.loads(out)
    assert document["agent"]["name"] == "xen-channel-guest"
    assert [(r["item"], r["status"]) for r in document["results"]] == [("hostname", "applied")]
    assert (root / "etc" / "hostname").read_text().strip() == "vm1"


def test_send_falls_back_to_qemu_when_the_broker_socket_is_stale(
    registered: tuple[str, BackendStandin],
) -> None:
    import socket

    from xen_channel_backend.agent import broker_socket_for

    rundir, qemu = registered
    # A broker killed with SIGKILL leaves its socket file, with nobody listening.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(broker_socket_for(qemu.socket_path))
    stale.close()
    with guest(qemu):
        code, _out, err = send(rundir, "--timeout", "10")
    assert (code, err) == (0, "")
    assert qemu.connections == 1


def test_send_through_the_real_broker_beside_another_consumer(
    registered: tuple[str, BackendStandin], tmp_path: Path
) -> None:
    """The broker holds QEMU's one connection; `send` and a second consumer share it.

    The other consumer's handshake and pings reach this client too (the
    broker gives every guest frame to every consumer); matching by id and
    nonce keeps both correct.
    """
    from broker_fixtures import BrokerProcess, wait_for

    from xen_channel_backend.agent import broker_socket_for

    rundir, qemu = registered
    broker = BrokerProcess(Path(rundir), tmp_path / "broker.log")
    try:
        consumer_socket = broker_socket_for(qemu.socket_path)
        wait_for(lambda: os.path.exists(consumer_socket), "the broker's consumer socket")
        with guest(qemu) as fake, ChannelClient(consumer_socket, label="other") as other:
            other.handshake(WAIT)
            stop = threading.Event()

            def keep_pinging() -> None:
                while not stop.is_set():
                    other.ping(WAIT)

            pinger = threading.Thread(target=keep_pinging)
            pinger.start()
            try:
                code, out, err = send(rundir, "--timeout", "10")
            finally:
                stop.set()
                pinger.join()
        assert (code, err) == (0, ""), broker.log()
        assert out.splitlines()[1].split() == ["hostname", "applied"]
        assert fake.kinds().count("config") == 1 and fake.kinds().count("hello") >= 2
        assert qemu.connections == 1  # only the broker ever connected to QEMU
    finally:
        broker.stop()


# --- guest text on the admin's terminal (issue 9) ------------------------------------

#: ESC sequences that would clear the screen, set the title and write the
#: clipboard (OSC 52), a C1 CSI, a forged second line and a bidi override.
HOSTILE_DETAIL = "\x1b[2J\x1b]0;owned\x07\x1b]52;c;ZXZpbA==\x07\x9b31m\u2028forged\u202egnp"


def test_send_escapes_the_guests_text_in_its_table(
    registered: tuple[str, BackendStandin],
) -> None:
    def hostile(message: dict[str, Any]) -> list[bytes]:
        if message["type"] != "config":
            return well_behaved(message)
        results = [{"item": "hostname", "status": "applied", "detail": HOSTILE_DETAIL}]
        return [protocol.encode(protocol.ack(message["id"], results=results))]

    rundir, qemu = registered
    with guest(qemu, hostile):
        code, out, err = send(rundir, config={"hostname": "vm1"})
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "ITEM      STATUS       DETAIL",
        "hostname  applied      \\x1b[2J\\x1b]0;owned\\x07\\x1b]52;c;ZXZpbA==\\x07\\x9b31m"
        "\\u2028forged\\u202egnp",
    ]


# --- whose socket send talks to (issue 9) ---------------------------------------------

NOBODY = 65534


#: How trust.check_channel_socket names the users it trusts.
TRUSTED_OWNERS = " or ".join(f"uid {u}" for u in channel_socket_owners())


@pytest.mark.parametrize(
    ("loosen", "mode"),
    [("domain", 0o777), ("domain", 0o1777), ("domain", 0o770), ("rundir", 0o777)],
    ids=["domain-dir-0777", "domain-dir-sticky", "domain-dir-group-writable", "rundir-0777"],
)
def test_send_refuses_a_broker_socket_others_could_have_bound(
    registered: tuple[str, BackendStandin], loosen: str, mode: int
) -> None:
    """libvirt's own libxl channel directory is 0777: anyone could bind PATH@broker
    there, read the payload and forge an ok ack.  send must not even connect."""
    from xen_channel_backend.agent import broker_socket_for

    rundir, qemu = registered
    directory = os.path.dirname(qemu.socket_path) if loosen == "domain" else rundir
    os.chmod(directory, mode)
    impostor_path = broker_socket_for(qemu.socket_path)
    with BackendStandin(impostor_path) as impostor, guest(impostor):
        code, out, err = send(rundir, "--timeout", "5")
        assert impostor.connections == 0
    assert (code, out) == (1, "")
    assert err.startswith(f"xen-channel: error: broker socket {impostor_path!r}: ")
    assert f"{directory!r} is writable by" in err and err.count("\n") == 1
    assert qemu.connections == 0  # no fallback to a socket in the same directory


def test_send_refuses_a_broker_socket_owned_by_another_user(
    registered: tuple[str, BackendStandin],
) -> None:
    from xen_channel_backend.agent import broker_socket_for

    rundir, qemu = registered
    impostor_path = broker_socket_for(qemu.socket_path)
    with BackendStandin(impostor_path) as impostor, guest(impostor):
        os.chown(impostor_path, NOBODY, -1, follow_symlinks=False)
        code, out, err = send(rundir, "--timeout", "5")
        assert impostor.connections == 0
    assert (code, out) == (1, "")
    assert err == (
        f"xen-channel: error: broker socket {impostor_path!r}: refusing to use it: "
        f"it is owned by uid {NOBODY}, not by {TRUSTED_OWNERS}\n"
    )


def test_send_refuses_a_qemu_socket_others_could_have_bound(
    registered: tuple[str, BackendStandin],
) -> None:
    rundir, qemu = registered
    os.chmod(os.path.dirname(qemu.socket_path), 0o777)
    with guest(qemu):
        code, out, err = send(rundir, "--timeout", "5")
    assert (code, out) == (1, "")
    assert err.startswith(f"xen-channel: error: QEMU socket {qemu.socket_path!r}: ")
    assert "is writable by group and others (mode 0777)" in err and err.count("\n") == 1
    assert qemu.connections == 0


def test_send_refuses_a_qemu_socket_owned_by_another_user(
    registered: tuple[str, BackendStandin],
) -> None:
    rundir, qemu = registered
    os.chown(qemu.socket_path, NOBODY, -1, follow_symlinks=False)
    with guest(qemu):
        code, out, err = send(rundir, "--timeout", "5")
    assert (code, out) == (1, "")
    assert f"it is owned by uid {NOBODY}, not by {TRUSTED_OWNERS}" in err
    assert err.count("\n") == 1 and qemu.connections == 0


def test_send_trusts_a_qemu_socket_owned_by_libvirts_qemu_user(
    registered: tuple[str, BackendStandin],
) -> None:
    """One rule with the qemu-ga commands: under libvirt's QEMU driver QEMU runs as
    libvirt-qemu and creates its sockets as that user, so send accepts it."""
    import pwd

    try:
        qemu_uid = pwd.getpwnam("libvirt-qemu").pw_uid
    except KeyError:
        pytest.skip("no libvirt-qemu user on this machine (libvirt-daemon-driver-qemu)")
    rundir, qemu = registered
    os.chown(qemu.socket_path, qemu_uid, -1, follow_symlinks=False)
    with guest(qemu):
        code, out, err = send(rundir, "--timeout", "5")
    assert (code, err) == (0, "") and "applied" in out
    assert qemu.connections == 1


def test_send_refuses_a_symlink_at_the_broker_socket_path(
    registered: tuple[str, BackendStandin], tmp_path: Path
) -> None:
    from xen_channel_backend.agent import broker_socket_for

    rundir, qemu = registered
    with BackendStandin(tmp_path / "elsewhere") as impostor, guest(impostor):
        os.symlink(impostor.socket_path, broker_socket_for(qemu.socket_path))
        code, _out, err = send(rundir, "--timeout", "5")
        assert impostor.connections == 0
    assert code == 1 and "is not a socket" in err


def test_send_refuses_the_qemu_guest_agent_channel(tmp_path: Path) -> None:
    """That channel speaks qemu-ga's JSON commands; our frames would only confuse it."""
    import io

    from xen_channel_backend.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    argv = ["send", "--rundir", str(tmp_path), "vm1", "org.qemu.guest_agent.0", "--config", "-"]
    code = main(argv, io.StringIO('{"hostname": "vm1"}'), stdout, stderr)
    assert (code, stdout.getvalue()) == (1, "")
    assert stderr.getvalue() == (
        "xen-channel: error: channel 'org.qemu.guest_agent.0': speaks qemu-ga's "
        "protocol, not ours; send does not write to it\n"
    )


# --- the ack must answer exactly what was sent (issue 9) -------------------------------


def acks_config_with(
    *results: tuple[str, str], status: str | None = None, **extra: Any
) -> Responder:
    """A guest that acks every config with these (item, status) results."""

    def respond(message: dict[str, Any]) -> list[bytes]:
        if message["type"] != "config":
            return well_behaved(message)
        entries = [{"item": item, "status": state, "detail": ""} for item, state in results]
        return [protocol.encode(protocol.ack(message["id"], status, entries, **extra))]

    return respond


@pytest.mark.parametrize(
    ("results", "fragment"),
    [
        (
            [("hostname", "applied"), ("ssh_keys/root", "applied")],
            "missing ['addresses/eth0']",
        ),
        (
            [
                ("hostname", "applied"), ("addresses/eth0", "applied"),
                ("ssh_keys/root", "applied"), ("ssh_keys/mallory", "applied"),
            ],
            "items never sent ['ssh_keys/mallory']",
        ),
        (
            [("addresses/eth0", "applied"), ("hostname", "applied"), ("ssh_keys/root", "applied")],
            "items out of payload order",
        ),
        (
            [
                ("hostname", "applied"), ("hostname", "applied"),
                ("addresses/eth0", "applied"), ("ssh_keys/root", "applied"),
            ],
            "items repeated ['hostname']",
        ),
        ([], "missing ['hostname', 'addresses/eth0', 'ssh_keys/root']"),
    ],
    ids=["left-out", "never-sent", "reordered", "repeated", "empty"],
)
def test_send_fails_on_an_ok_ack_that_does_not_answer_every_item(
    registered: tuple[str, BackendStandin], results: list[tuple[str, str]], fragment: str
) -> None:
    rundir, qemu = registered
    with guest(qemu, acks_config_with(*results)):
        code, out, err = send(rundir, "--timeout", "10")
    assert (code, out) == (1, "")
    assert err.startswith(
        "xen-channel: error: domain 'vm1' channel 'org.example.agent': protocol violation: "
        "the ack's results do not match the payload: "
    )
    assert fragment in err and err.count("\n") == 1


def test_a_partial_ack_must_answer_every_item_too(registered: tuple[str, BackendStandin]) -> None:
    rundir, qemu = registered
    lying = acks_config_with(("hostname", "failed"), ("ssh_keys/mallory", "applied"))
    with guest(qemu, lying):
        code, out, err = send(rundir, "--timeout", "10", config={"hostname": "vm1"})
    assert (code, out) == (1, "")
    assert "items never sent ['ssh_keys/mallory']" in err


def test_unchanged_items_count_as_success(registered: tuple[str, BackendStandin]) -> None:
    """Configs are desired state: pushing the same one twice gives "unchanged" (protocol 4.3)."""
    rundir, qemu = registered
    with guest(qemu, acks_config_with(("hostname", "unchanged"), ("extra/motd", "applied"))):
        code, out, err = send(
            rundir, "--timeout", "10", config={"hostname": "vm1", "extra": {"motd": "hi"}}
        )
    assert (code, err) == (0, "")
    assert [line.split() for line in out.splitlines()[1:]] == [
        ["hostname", "unchanged"], ["extra/motd", "applied"],
    ]


def test_items_follow_the_payloads_own_key_order(registered: tuple[str, BackendStandin]) -> None:
    rundir, qemu = registered
    payload = {"extra": {"b": 1, "a": 2}, "hostname": "vm1"}
    with guest(qemu):  # well_behaved answers protocol.payload_items, in payload order
        code, out, err = send(rundir, "--timeout", "10", config=payload)
    assert (code, err) == (0, "")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["extra/b", "extra/a", "hostname"]


def test_an_error_ack_claiming_applied_items_is_a_violation_not_a_table(
    registered: tuple[str, BackendStandin],
) -> None:
    """Status "error" means nothing was applied; results saying otherwise are a lie."""
    rundir, qemu = registered
    contradiction = acks_config_with(("hostname", "applied"), status="error", error="nope")
    with guest(qemu, contradiction):
        code, out, err = send(rundir, "--timeout", "10", config={"hostname": "vm1"})
    assert (code, out) == (1, "")
    assert "protocol violation: bad ack: status 'error' contradicts the item results" in err


def test_an_error_ack_prints_the_problems_it_lists(registered: tuple[str, BackendStandin]) -> None:
    rundir, qemu = registered
    refusing = acks_config_with(("hostname", "failed"), status="error", error="hostname: bad")
    with guest(qemu, refusing):
        code, out, err = send(rundir, "--timeout", "10", config={"hostname": "vm1"})
    assert code == 1
    assert [line.split() for line in out.splitlines()] == [
        ["ITEM", "STATUS", "DETAIL"], ["hostname", "failed"],
    ]
    assert err.endswith("guest rejected the config: 'hostname: bad'\n")


def test_send_and_the_real_guest_agent_agree_on_item_order(
    registered: tuple[str, BackendStandin], tmp_path: Path
) -> None:
    """The real agent answers in the payload's key order, whatever that order is."""
    import json
    import subprocess
    import sys

    rundir, qemu = registered
    devdir, root = tmp_path / "dev", tmp_path / "root"
    devdir.mkdir()
    root.mkdir()
    (devdir / CHANNEL).symlink_to(qemu.guest_tty)
    agent = subprocess.Popen(
        [
            sys.executable, "-m", "xen_channel_backend.guest",
            "--channel", CHANNEL, "--root", str(root), "--devdir", str(devdir), "--once",
        ],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        config = {"extra": {"org.example.unknown": 1}, "hostname": "vm1"}
        code, out, err = send(rundir, "--json", "--timeout", "20", config=config)
        agent.wait(timeout=20)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        assert agent.stderr is not None
        agent_log = agent.stderr.read()
        agent.stderr.close()
    # No applier for the extra key: "partial", exit 1; but no protocol violation.
    assert code == 1, agent_log
    assert "only partly" in err, (err, agent_log)
    document = json.loads(out)
    assert [(r["item"], r["status"]) for r in document["results"]] == [
        ("extra/org.example.unknown", "unsupported"), ("hostname", "applied"),
    ]
