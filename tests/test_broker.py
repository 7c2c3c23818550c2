"""The broker, run as the real ``xen-channel broker`` process against QEMU stand-ins.

Each channel's QEMU side is tests/backend_standin.py (no hypervisor here);
the registry records are written as the hooks write them.  Nothing here
measures time: waits have generous deadlines and only bound a hang.
"""

from __future__ import annotations

import grp
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from backend_standin import BackendStandin
from broker_fixtures import (
    WAIT,
    BrokerProcess,
    Consumer,
    Guest,
    remove_record,
    wait_for,
    write_record,
)
from qga_fixtures import QemuGa, require_qemu_ga

from xen_channel_backend import cli, qga
from xen_channel_backend.broker import (
    CONSUMER_BACKLOG_LIMIT,
    DROP_LOG_LIMIT,
    Broker,
    broker_socket_for,
)
from xen_channel_backend.model import MAX_SOCKET_PATH, Channel, Connection, Target
from xen_channel_backend.protocol import MAX_FRAME, encode
from xen_channel_backend.registry import ChannelRecord, DomainRecord, Registry

UUID_A = "6c3f1b7e-0000-4000-8000-00000000000a"
UUID_B = "6c3f1b7e-0000-4000-8000-00000000000b"
UUID_C = "6c3f1b7e-0000-4000-8000-00000000000c"
CHANNEL = "org.example.agent.0"


@pytest.fixture
def rundir() -> Iterator[Path]:
    # Not tmp_path: pytest's paths are long enough to push the socket paths
    # past the 107-byte limit, which is not what these tests are about.
    path = Path(tempfile.mkdtemp(prefix="xcb-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def broker(rundir: Path, tmp_path: Path) -> Iterator[BrokerProcess]:
    process = BrokerProcess(rundir, tmp_path / "broker.log")
    try:
        process.wait_log("watching registry")
        yield process
    finally:
        process.kill()


class Domain:
    """A running domain: registry record, a QEMU stand-in per channel, the guest ends."""

    def __init__(
        self, rundir: Path, uuid: str, name: str, channels: tuple[str, ...], guests: bool = True
    ) -> None:
        self.uuid = uuid
        self.name = name
        self.paths = write_record(rundir, uuid, name, list(channels), state="preparing")
        self.qemu = {c: BackendStandin(p).start() for c, p in self.paths.items()}
        self.guests = {c: Guest(q.open_guest()) for c, q in self.qemu.items()} if guests else {}
        # Running only now, as the start hook records it once QEMU listens.
        write_record(rundir, uuid, name, list(channels))

    def consumer_path(self, channel: str = CHANNEL) -> str:
        return broker_socket_for(self.paths[channel])

    def guest(self, channel: str = CHANNEL) -> Guest:
        return self.guests[channel]

    def close(self) -> None:
        for q in self.qemu.values():
            q.close()


@pytest.fixture
def domains(rundir: Path) -> Iterator[dict[str, Domain]]:
    made: dict[str, Domain] = {}
    yield made
    for domain in made.values():
        domain.close()


def start_domain(
    rundir: Path, made: dict[str, Domain], uuid: str, name: str, *channels: str,
    guests: bool = True,
) -> Domain:
    made[name] = Domain(rundir, uuid, name, channels or (CHANNEL,), guests)
    return made[name]


def connected(broker: BrokerProcess, domain: Domain, channel: str = CHANNEL) -> Consumer:
    """Wait until the broker holds QEMU's connection, then connect a consumer."""
    label = f"domain '{domain.name}' channel '{channel}': connected to QEMU"
    broker.wait_log(label)
    return Consumer(domain.consumer_path(channel))


def test_two_consumers_both_see_guest_frames_and_write_whole_frames(
    rundir: Path, broker: BrokerProcess, domains: dict[str, Domain]
) -> None:
    vm = start_domain(rundir, domains, UUID_A, "vm-a")
    first, second = connected(broker, vm), connected(broker, vm)
    broker.wait_log("consumer pid", count=2)

    vm.guest().send({"type": "pong", "id": "guest-1"})
    for consumer in (first, second):
        consumer.reader.wait_message(lambda m: m.get("id") == "guest-1", "guest frame")

    # Both consumers write big frames in small pieces, alternating, so the
    # broker sees their bytes interleaved; the guest must get whole frames.
    frames = {
        (who, n): encode({"type": "ping", "id": f"{who}-{n}", "pad": who * 150_000})
        for who in ("x", "y") for n in range(3)
    }
    pieces = {
        consumer: [b"".join(f for (w, _), f in frames.items() if w == who)]
        for consumer, who in ((first, "x"), (second, "y"))
    }
    streams = {c: memoryview(p[0]) for c, p in pieces.items()}
    while any(streams.values()):
        for consumer, view in streams.items():
            consumer.sock.sendall(view[:4096])
            streams[consumer] = view[4096:]

    guest = vm.guest().reader
    wait_for(lambda: len(guest.frames) >= len(frames), "all consumer frames at the guest")
    assert sorted(guest.frames) == sorted(frames.values())
    assert guest.errors == []
    # Each consumer's own frames keep their order.
    ids = [m["id"] for m in guest.messages()]
    for who in ("x", "y"):
        assert [i for i in ids if i.startswith(who)] == [f"{who}-0", f"{who}-1", f"{who}-2"]


def test_a_consumers_partial_frame_waits_until_complete(
    rundir: Path, broker: BrokerProcess, domains: dict[str, Domain]
) -> None:
    vm = start_domain(rundir, domains, UUID_A, "vm-a")
    slow, quick = connected(broker, vm), connected(broker, vm)
    broker.wait_log("consumer pid", count=2)
    frame = encode({"type": "ping", "id": "slow"})
    slow.sock.sendall(frame[:5])
    quick.send({"type": "ping", "id": "quick"})
    guest = vm.guest().reader
    guest.wait_message(lambda m: m["id"] == "quick", "the quick consumer's frame")
    slow.sock.sendall(frame[5:])
    guest.wait_message(lambda m: m["id"] == "slow", "the slow consumer's frame")
    assert guest.frames == [encode({"type": "ping", "id": "quick"}), frame]


def test_garbage_and_oversized_guest_frames_are_dropped_and_other_channels_served(
    rundir: Path, broker: BrokerProcess, domains: dict[str, Domain]
) -> None:
    bad = start_domain(rundir, domains, UUID_A, "vm-bad")
    good = start_domain(rundir, domains, UUID_B, "vm-good")
    bad_consumer, good_consumer = connected(broker, bad), connected(broker, good)
    broker.wait_log("consumer pid", count=2)

    bad.guest().write(os.urandom(4096).replace(b"\xff", b"") + b"\xffnot json\n")
    bad.guest().write(b"\xff" + b"[1,2,3]\n" + b"\xff" + b"x" * (MAX_FRAME + 10) + b"\n")
    bad.guest().send({"type": "pong", "id": "after-garbage"})
    bad_consumer.reader.wait_message(lambda m: m["id"] == "after-garbage", "the good frame")

    assert bad_consumer.reader.messages() == [{"type": "pong", "id": "after-garbage"}]
    log = broker.log()
    assert "domain 'vm-bad' channel 'org.example.agent.0': dropped a frame from the guest: " \
        "bad-frame: not a JSON object (10 bytes starting b'\\xffnot json\\n')" in log
    assert "not a JSON object (9 bytes starting b'\\xff[1,2,3]\\n')" in log
    assert "frame-too-large" in log, log

    good_consumer.send({"type": "ping", "id": "still-served"})
    good.guest().reader.wait_message(lambda m: m["id"] == "still-served", "good channel ping")
    good.guest().send({"type": "pong", "id": "still-served"})
    good_consumer.reader.wait_message(lambda m: m["type"] == "pong", "good channel pong")
    assert broker.alive()


def test_garbage_from_a_consumer_is_dropped_and_not_forwarded(
    rundir: Path, broker: BrokerProcess, domains: dict[str, Domain]
) -> None:
    vm = start_domain(rundir, domains, UUID_A, "vm-a")
    consumer = connected(broker, vm)
    consumer.sock.sendall(b"junk\xffnot json\n\xff" + b"y" * (MAX_FRAME + 1))
    consumer.send({"type": "ping", "id": "fine"})
    vm.guest().reader.wait_message(lambda m: m["id"] == "fine", "the valid frame")
    assert vm.guest().reader.frames == [encode({"type": "ping", "id": "fine"})]
    broker.wait_log("dropped a frame from consumer pid")
    assert "frame-too-large" in broker.log()


def test_broker_reconnects_when_qemu_goes_away_and_comes_back(
    rundir: Path, broker: BrokerProcess, domains: dict[str, Domain]
) -> None:
    vm = start_domain(rundir, domains, UUID_A, "vm-a")
    consumer = connected(broker, vm)
    qemu = vm.qemu[CHANNEL]

    qemu.stop()
    broker.wait_log("lost QEMU socket")
    qemu.start()
    broker.wait_log("connected to QEMU socket", count=2)

    # The consumer kept its connection to the broker and is served again.
    vm.guest().send({"type": "pong", "id": "back"})
    consumer.reader.wait_message(lambda m: m["id"] == "back", "a frame after the reconnect")
    consumer.send({"type": "ping", "id": "to-guest"})
    vm.guest().reader.wait_message(lambda m: m["id"] == "to-guest", "a frame to the guest")
    assert qemu.connections == 2


def test_consumer_socket_follows_the_domain_in_the_registry(
    rundir: Path, broker: BrokerProcess, domains: dict[str, Domain]
) -> None:
    vm = start_domain(rundir, domains, UUID_A, "vm-a", CHANNEL, "org.example.other")
    for channel in vm.paths:
        wait_for(lambda c=channel: os.path.exists(vm.consumer_path(c)), "consumer sockets")
    remove_record(rundir, UUID_A)
    for channel in vm.paths:
        wait_for(lambda c=channel: not os.path.exists(vm.consumer_path(c)), "sockets removed")
    broker.wait_log("stopped serving (domain is no longer running)", count=2)
    # The broker never touches QEMU's own sockets.
    assert all(stat.S_ISSOCK(os.lstat(p).st_mode) for p in vm.paths.values())


def test_the_broker_serves_the_registrys_own_channel_records(rundir: Path) -> None:
    """One channel record: what the broker serves is the registry's Channel, not a copy
    rebuilt and validated again."""
    from xen_channel_backend.broker import read_running_channels

    channel = Channel(CHANNEL, Connection.SOCKET, f"{rundir}/{UUID_A}/{CHANNEL}")
    agent = Channel(qga.AGENT_CHANNEL, Connection.SOCKET, f"{rundir}/{UUID_A}/qga")
    pty = Channel("org.example.console.0", Connection.PTY, "/dev/pts/4")
    registry = Registry(str(rundir))
    registry.put(DomainRecord(UUID_A, "vm-a", "libxl", "running", (
        ChannelRecord(channel, created_dir=True), ChannelRecord(agent), ChannelRecord(pty))))
    registry.put(DomainRecord(UUID_B, "vm-b", "libxl", "stopped", (ChannelRecord(channel),)))
    specs, unreadable = read_running_channels(registry, [str(rundir)])
    assert unreadable == set()
    assert list(specs) == [(UUID_A, CHANNEL), (UUID_A, qga.AGENT_CHANNEL)]
    served, served_agent = specs.values()
    assert (served.channel, served.path, served.agent) == (channel, channel.path, False)
    assert (served_agent.channel, served_agent.agent) == (agent, True)


def test_a_start_recorded_by_the_shim_alone_is_served(
    rundir: Path, broker: BrokerProcess
) -> None:
    """A settled domain's started hook is a shell redirection creating
    registry/started/<uuid> (registry.mark_settled): its record still says
    preparing and its file does not change, yet the broker serves it."""
    paths = write_record(rundir, UUID_A, "vm-a", [CHANNEL], state="preparing")
    Registry(str(rundir)).mark_settled(UUID_A, True)
    with BackendStandin(paths[CHANNEL]):
        broker.wait_log("watching registry")
        time.sleep(0.3)  # a poll or two of the registry with the domain preparing
        assert not os.path.exists(broker_socket_for(paths[CHANNEL]))
        # What the shim does for 'started begin': : > "$rundir/registry/started/$uuid"
        (rundir / "registry" / "started" / UUID_A).touch()
        broker.wait_log("domain 'vm-a' channel 'org.example.agent.0': serving consumers")


def test_domains_that_are_not_running_or_libvirt_owned_are_not_served(
    rundir: Path, broker: BrokerProcess
) -> None:
    paths = write_record(rundir, UUID_A, "vm-a", [CHANNEL], state="preparing")
    # libvirt's qemu driver connects to a domain's agent channel itself.
    agent = write_record(rundir, UUID_B, "vm-b", ["org.qemu.guest_agent.0"], driver="qemu")
    write_record(rundir, "6c3f1b7e-0000-4000-8000-00000000000c", "vm-c", [CHANNEL])
    broker.wait_log("domain 'vm-c' channel 'org.example.agent.0': serving consumers")
    assert not os.path.exists(broker_socket_for(paths[CHANNEL]))
    assert not os.path.exists(broker_socket_for(agent["org.qemu.guest_agent.0"]))


def test_a_consumer_of_one_domain_cannot_reach_another(
    rundir: Path, broker: BrokerProcess, domains: dict[str, Domain]
) -> None:
    a = start_domain(rundir, domains, UUID_A, "vm-a")
    b = start_domain(rundir, domains, UUID_B, "vm-b")
    consumer_a, consumer_b = connected(broker, a), connected(broker, b)
    broker.wait_log("consumer pid", count=2)

    consumer_a.send({"type": "ping", "id": "from-a"})
    a.guest().send({"type": "pong", "id": "guest-a"})
    a.guest().reader.wait_message(lambda m: m["id"] == "from-a", "A's frame at guest A")
    consumer_a.reader.wait_message(lambda m: m["id"] == "guest-a", "guest A's frame at A")
    # Markers sent afterwards through B: if anything of A's had leaked to
    # B, it would have arrived before them on the same byte streams.
    consumer_b.send({"type": "ping", "id": "marker-b"})
    b.guest().send({"type": "pong", "id": "marker-b"})
    b.guest().reader.wait_message(lambda m: m["id"] == "marker-b", "B's marker at guest B")
    consumer_b.reader.wait_message(lambda m: m["id"] == "marker-b", "guest B's marker")
    assert [m["id"] for m in b.guest().reader.messages()] == ["marker-b"]
    assert [m["id"] for m in consumer_b.reader.messages()] == ["marker-b"]
    assert a.consumer_path() != b.consumer_path()


def _other_group() -> grp.struct_group:
    return next(g for g in grp.getgrall() if g.gr_gid != 0)


def test_consumer_socket_is_0660_with_the_configured_group_and_denies_others(
    rundir: Path, tmp_path: Path, domains: dict[str, Domain]
) -> None:
    group = _other_group()
    process = BrokerProcess(rundir, tmp_path / "broker.log", "--group", group.gr_name)
    try:
        vm = start_domain(rundir, domains, UUID_A, "vm-a")
        path = vm.consumer_path()
        process.wait_log("serving consumers")
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert (st.st_uid, st.st_gid) == (0, group.gr_gid)

        # A process outside the group (nobody) is refused by the kernel.
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 3
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    probe.connect(path)
                    code = 0
                except PermissionError:
                    code = 13
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 13
    finally:
        assert process.stop() == 0


def test_symlink_or_file_in_the_way_is_left_alone(
    rundir: Path, broker: BrokerProcess, domains: dict[str, Domain], tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    paths = write_record(rundir, UUID_A, "vm-a", [CHANNEL, "org.example.file"], "preparing")
    os.symlink(victim, broker_socket_for(paths[CHANNEL]))
    Path(broker_socket_for(paths["org.example.file"])).write_text("not ours")
    write_record(rundir, UUID_A, "vm-a", [CHANNEL, "org.example.file"])
    broker.wait_log("is not a socket; left alone", count=2)
    assert os.path.islink(broker_socket_for(paths[CHANNEL]))
    assert victim.read_text() == "precious"
    assert Path(broker_socket_for(paths["org.example.file"])).read_text() == "not ours"


def test_sigterm_removes_consumer_sockets_and_exits_zero(
    rundir: Path, tmp_path: Path, domains: dict[str, Domain]
) -> None:
    process = BrokerProcess(rundir, tmp_path / "broker.log")
    vm = start_domain(rundir, domains, UUID_A, "vm-a")
    connected(process, vm)
    assert process.stop(signal.SIGTERM) == 0
    assert not os.path.exists(vm.consumer_path())
    assert os.path.exists(vm.paths[CHANNEL])
    assert "stopping (SIGTERM received)" in process.log()


def test_broker_killed_and_restarted_replaces_stale_sockets_and_serves_again(
    rundir: Path, tmp_path: Path, domains: dict[str, Domain]
) -> None:
    vm = start_domain(rundir, domains, UUID_A, "vm-a")
    first = BrokerProcess(rundir, tmp_path / "first.log")
    old = connected(first, vm)
    first.kill()  # SIGKILL: nothing cleaned up
    assert stat.S_ISSOCK(os.lstat(vm.consumer_path()).st_mode)
    wait_for(lambda: old.sock.recv(1) == b"", "the killed broker's consumer to see EOF")
    old.close()

    second = BrokerProcess(rundir, tmp_path / "second.log")
    try:
        second.wait_log("replaced stale consumer socket")
        consumer = connected(second, vm)
        consumer.send({"type": "ping", "id": "after-restart"})
        vm.guest().reader.wait_message(lambda m: m["id"] == "after-restart", "ping")
        vm.guest().send({"type": "pong", "id": "after-restart"})
        consumer.reader.wait_message(lambda m: m["type"] == "pong", "pong")
    finally:
        assert second.stop() == 0


def test_a_second_broker_does_not_steal_a_live_socket(
    rundir: Path, broker: BrokerProcess, tmp_path: Path, domains: dict[str, Domain]
) -> None:
    vm = start_domain(rundir, domains, UUID_A, "vm-a")
    broker.wait_log("serving consumers")
    intruder = BrokerProcess(rundir, tmp_path / "intruder.log")
    try:
        intruder.wait_log("is in use by another process")
    finally:
        intruder.stop()
    # The intruder left the first broker's socket alone.
    connected(broker, vm).send({"type": "ping", "id": "first"})
    vm.guest().reader.wait_message(lambda m: m["id"] == "first", "ping via the first broker")


def test_consumer_socket_names_fit_and_never_collide_with_channel_names() -> None:
    short = "/run/xen-channel/6c3f1b7e-0000-4000-8000-00000000000a/org.example.agent.0"
    assert broker_socket_for(short) == short + "@broker"
    long_dir = "/" + "d" * 60
    for name in ("n" * 40, "n" * 45, "x"):
        qemu = f"{long_dir}/{name}"
        path = broker_socket_for(qemu)
        assert len(path.encode()) <= MAX_SOCKET_PATH
        assert os.path.dirname(path) == long_dir
        assert "@" in os.path.basename(path)  # '@' is outside the channel-name alphabet
    first, second = (broker_socket_for(f"{long_dir}/{c * 45}") for c in "ab")
    assert first != second


def test_an_unreadable_registry_record_does_not_cut_served_domains_off(
    rundir: Path, broker: BrokerProcess, domains: dict[str, Domain]
) -> None:
    vm = start_domain(rundir, domains, UUID_A, "vm-a")
    consumer = connected(broker, vm)
    corrupt = Path(Registry(str(rundir)).records_dir) / f"{UUID_B}.json"
    corrupt.write_text('{"version": 1, "uuid": ')
    broker.wait_log("corrupt record")
    consumer.send({"type": "ping", "id": "still-here"})
    vm.guest().reader.wait_message(lambda m: m["id"] == "still-here", "ping while corrupt")
    assert os.path.exists(vm.consumer_path())
    # A domain that starts while the corrupt record is still there is served.
    late = start_domain(rundir, domains, UUID_C, "vm-c")
    connected(broker, late)
    assert "stopped serving" not in broker.log()


def test_xen_channel_send_through_the_broker_to_the_real_guest_agent(
    rundir: Path, broker: BrokerProcess, domains: dict[str, Domain], tmp_path: Path
) -> None:
    """The seed scenario with a monitoring consumer attached: both are served."""
    vm = start_domain(rundir, domains, UUID_A, "vm-a", guests=False)
    devdir, root = tmp_path / "dev", tmp_path / "root"
    devdir.mkdir()
    root.mkdir()
    os.symlink(vm.qemu[CHANNEL].guest_tty, devdir / CHANNEL)
    agent = subprocess.Popen(
        [sys.executable, "-c", "import sys; from xen_channel_backend.guest.agent import main; "
         "sys.exit(main())", "--channel", CHANNEL, "--root", str(root), "--devdir", str(devdir)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        monitor = connected(broker, vm)
        config = tmp_path / "config.json"
        config.write_text(json.dumps({"hostname": "vm-a.example.org"}))
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(
            ["send", "--rundir", str(rundir), "vm-a", CHANNEL, "--config", str(config),
             "--timeout", "20", "--json"],
            stdin=io.StringIO(""), stdout=out, stderr=err,
        )
        assert code == 0, err.getvalue()
        assert json.loads(out.getvalue())["status"] == "ok"
        # The monitoring consumer saw the guest's answers too.
        monitor.reader.wait_message(lambda m: m["type"] == "ack", "the ack at the monitor")
        assert any(m["type"] == "hello-ack" for m in monitor.reader.messages())
    finally:
        agent.terminate()
        agent.wait(10)


def test_a_flood_of_garbage_is_logged_a_bounded_number_of_times(
    rundir: Path, broker: BrokerProcess, domains: dict[str, Domain]
) -> None:
    vm = start_domain(rundir, domains, UUID_A, "vm-a")
    consumer = connected(broker, vm)
    vm.guest().write(b"\xffgarbage\n" * 500)
    vm.guest().send({"type": "pong", "id": "after-flood"})
    consumer.reader.wait_message(lambda m: m["id"] == "after-flood", "the frame after the flood")
    assert consumer.reader.messages() == [{"type": "pong", "id": "after-flood"}]
    assert 0 < broker.log().count("dropped a frame from the guest") <= DROP_LOG_LIMIT


def test_a_channel_path_near_the_limit_is_served_on_the_hashed_sibling(
    rundir: Path, broker: BrokerProcess, domains: dict[str, Domain]
) -> None:
    prefix = len(f"{rundir}/{UUID_A}/".encode())
    name = "org.example." + "a" * (MAX_SOCKET_PATH - prefix - len("org.example."))
    vm = start_domain(rundir, domains, UUID_A, "vm-a", name)
    assert len(vm.paths[name].encode()) == MAX_SOCKET_PATH
    assert os.path.basename(vm.consumer_path(name)).startswith("@")
    consumer = connected(broker, vm, name)
    consumer.send({"type": "ping", "id": "long"})
    vm.guest(name).reader.wait_message(lambda m: m["id"] == "long", "ping on the long path")


def test_a_consumer_that_stops_reading_is_dropped_and_the_others_keep_up(
    rundir: Path, broker: BrokerProcess, domains: dict[str, Domain]
) -> None:
    vm = start_domain(rundir, domains, UUID_A, "vm-a")
    reading = connected(broker, vm)
    stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stuck.connect(vm.consumer_path())  # never reads
    broker.wait_log("consumer pid", count=2)
    frame = encode({"type": "pong", "id": "bulk", "pad": "z" * 65000})
    count = 2 * CONSUMER_BACKLOG_LIMIT // len(frame)
    vm.guest().write(frame * count)
    wait_for(lambda: len(reading.reader.frames) >= count, "every frame at the reading consumer")
    assert reading.reader.frames == [frame] * count
    broker.wait_log("behind the guest")
    stuck.close()


def run_cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    code = cli.main(list(argv), stdin=io.StringIO(""), stdout=io.StringIO(), stderr=err)
    return code, err.getvalue()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--group", "no-such-group-xcb"], "--group: no such group 'no-such-group-xcb'"),
        (["--poll-interval", "0"], "--poll-interval must be a positive number of seconds"),
        (["--poll-interval", "nan"], "--poll-interval must be a positive number of seconds"),
    ],
)
def test_bad_options_are_one_line_usage_errors(
    rundir: Path, argv: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = rundir / "xen-channel.conf"
    config.write_text("[xen-channel]\n")
    monkeypatch.setenv("XEN_CHANNEL_CONFIG", str(config))
    code, err = run_cli("broker", "--rundir", str(rundir), *argv)
    assert (code, err) == (2, f"xen-channel: error: {message}\n")


def test_broker_runs_in_a_thread_and_stops_on_request(rundir: Path) -> None:
    """The library entry (Broker.run/stop) without signals, as an embedding program uses it."""
    paths = write_record(rundir, UUID_A, "vm-a", [CHANNEL])
    with BackendStandin(paths[CHANNEL]):
        broker = Broker(str(rundir), poll_interval=0.05)
        thread = threading.Thread(target=broker.run)
        thread.start()
        try:
            wait_for(lambda: os.path.exists(broker_socket_for(paths[CHANNEL])), "consumer socket")
        finally:
            broker.stop()
            thread.join(WAIT)
        assert not thread.is_alive()
        assert not os.path.exists(broker_socket_for(paths[CHANNEL]))


def test_an_unknown_group_in_the_settings_file_is_a_settings_error(
    rundir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = rundir / "xen-channel.conf"
    config.write_text("[xen-channel]\ngroup = no-such-group-xcb\n")
    monkeypatch.setenv("XEN_CHANNEL_CONFIG", str(config))
    code, err = run_cli("broker", "--rundir", str(rundir))
    assert code == 1
    assert err == "xen-channel: error: settings: group: no such group 'no-such-group-xcb'\n"


def test_a_socket_outside_the_allowed_roots_is_never_proxied(
    rundir: Path, broker: BrokerProcess, tmp_path: Path
) -> None:
    # A record naming some other root-owned socket (libvirt's, say): the
    # broker would connect to it as root and hand it to a group.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o750)
    with BackendStandin(elsewhere / "sock") as victim:
        channel = Channel(CHANNEL, Connection.SOCKET, str(elsewhere / "sock"), target=Target.XEN)
        records = (ChannelRecord(channel),)
        Registry(str(rundir)).put(DomainRecord(UUID_A, "vm-a", "libxl", "running", records))
        broker.wait_log("is outside the allowed roots; not served")
        assert victim.connections == 0
        assert not os.path.exists(broker_socket_for(str(elsewhere / "sock")))


def test_a_symlink_at_the_qemu_socket_path_is_not_followed(
    rundir: Path, broker: BrokerProcess, tmp_path: Path
) -> None:
    paths = write_record(rundir, UUID_A, "vm-a", [CHANNEL], state="preparing")
    target = rundir / "real-sock"
    with BackendStandin(target) as victim:
        os.symlink(target, paths[CHANNEL])
        write_record(rundir, UUID_A, "vm-a", [CHANNEL])
        broker.wait_log("cannot connect to QEMU socket")
        assert "it is not a socket (or is a symlink)" in broker.log()
        assert victim.connections == 0


# --- out of descriptors (issue 9, defect 5) ------------------------------------------

#: Enough for the interpreter, the log, the selector, the wake pair, one
#: channel's listener and QEMU connection, and a few consumers.
NOFILE = 24


def _try_connect(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    return sock


def test_out_of_descriptors_the_broker_pauses_instead_of_spinning_and_recovers(
    rundir: Path, tmp_path: Path, domains: dict[str, Domain]
) -> None:
    """Before: accept() failed with EMFILE, the listener stayed readable, and the
    loop spun at 65-100% CPU logging ~100,000 lines a second."""
    broker = BrokerProcess(rundir, tmp_path / "broker.log", nofile=NOFILE)
    held: list[socket.socket] = []
    try:
        broker.wait_log("watching registry")
        vm = start_domain(rundir, domains, UUID_A, "vm-a")
        first = connected(broker, vm)
        # Far more clients than the broker has descriptors for; the rest wait
        # in its listen backlog, which keeps the listener readable.
        for _ in range(3 * NOFILE):
            sock = _try_connect(vm.consumer_path())
            if sock is not None:
                held.append(sock)
        wait_for(lambda: broker.open_descriptors() >= NOFILE - 1, "the broker to run out of fds")
        cpu_before, lines_before = broker.cpu_seconds(), broker.log().count("\n")
        window = 2.0
        time.sleep(window)  # a measuring window, not a wait for a condition
        cpu = broker.cpu_seconds() - cpu_before
        lines = broker.log().count("\n") - lines_before
        assert cpu < 0.25 * window, f"broker used {cpu:.2f} s of CPU in {window} s"
        assert lines < 20, broker.log()[-2000:]
        assert "out of file descriptors" in broker.log()
        # The consumer that got in is still served throughout.
        first.send({"type": "ping", "id": "while-short"})
        vm.guest().reader.wait_message(lambda m: m["id"] == "while-short", "ping while short")
        # Descriptors free up: the broker accepts again.
        for sock in held:
            sock.close()
        held.clear()

        broker.wait_log("accepting again")
        later = Consumer(vm.consumer_path())
        try:
            vm.guest().send({"type": "pong", "id": "after"})
            later.reader.wait_message(lambda m: m["id"] == "after", "a frame after recovery")
        finally:
            later.close()
        assert broker.alive()
    finally:
        for sock in held:
            sock.close()
        broker.kill()


def _refused(sock: socket.socket) -> bool:
    """True once the broker closed this connection (accepted, then closed at once)."""
    sock.settimeout(WAIT)
    return sock.recv(1) == b""


def test_consumers_are_capped_per_channel_and_in_total(
    rundir: Path, domains: dict[str, Domain], caplog: pytest.LogCaptureFixture
) -> None:
    vm_a = start_domain(rundir, domains, UUID_A, "vm-a")
    vm_b = start_domain(rundir, domains, UUID_B, "vm-b")
    broker = Broker(str(rundir), poll_interval=0.05, max_consumers=2, max_consumers_total=3)
    thread = threading.Thread(target=broker.run)
    thread.start()
    clients: list[Consumer] = []
    try:
        for vm in (vm_a, vm_b):
            wait_for(lambda vm=vm: os.path.exists(vm.consumer_path()), "consumer socket")
        clients += [Consumer(vm_a.consumer_path()) for _ in range(2)]
        wait_for(lambda: broker.consumer_count == 2, "two consumers of vm-a")
        over_channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        over_channel.connect(vm_a.consumer_path())
        assert _refused(over_channel)  # a third on vm-a: over the per-channel limit
        clients.append(Consumer(vm_b.consumer_path()))
        wait_for(lambda: broker.consumer_count == 3, "a consumer of vm-b")
        over_total = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        over_total.connect(vm_b.consumer_path())
        assert _refused(over_total)  # a second on vm-b: over the total
        # The ones that got in are served; one leaving makes room again.
        vm_b.guest().send({"type": "pong", "id": "b"})
        clients[2].reader.wait_message(lambda m: m["id"] == "b", "vm-b's frame")
        clients.pop(0).close()
        wait_for(lambda: broker.consumer_count == 2, "a consumer leaving")
        clients.append(Consumer(vm_b.consumer_path()))
        vm_b.guest().send({"type": "pong", "id": "b2"})
        clients[-1].reader.wait_message(lambda m: m["id"] == "b2", "the late consumer served")
        over_channel.close()
        over_total.close()
    finally:
        for client in clients:
            client.close()
        broker.stop()
        thread.join(WAIT)
    messages = [r.getMessage() for r in caplog.records]
    assert any("the channel has 2 consumers, the limit" in m for m in messages)
    assert any("the broker serves 3 consumers, the limit" in m for m in messages)


def test_repeated_log_lines_are_limited_and_counted(
    rundir: Path, domains: dict[str, Domain], caplog: pytest.LogCaptureFixture
) -> None:
    vm = start_domain(rundir, domains, UUID_A, "vm-a")
    broker = Broker(str(rundir), poll_interval=0.05, max_consumers=0)
    thread = threading.Thread(target=broker.run)
    thread.start()
    try:
        wait_for(lambda: os.path.exists(vm.consumer_path()), "consumer socket")
        for _ in range(3 * DROP_LOG_LIMIT):  # a client reconnecting in a loop
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(vm.consumer_path())
            assert _refused(sock)
            sock.close()
    finally:
        broker.stop()
        thread.join(WAIT)
    refusals = [r for r in caplog.records if "consumer refused" in r.getMessage()]
    assert len(refusals) == DROP_LOG_LIMIT


def test_lines_left_out_are_counted_in_the_next_window(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import types

    from xen_channel_backend import broker as broker_module

    clock = [0.0]
    monkeypatch.setattr(broker_module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    limiter = broker_module._LogLimiter("vm: ")
    with caplog.at_level(logging.INFO, logger="xen_channel_backend"):
        for _ in range(DROP_LOG_LIMIT + 5):
            limiter.log("refused", logging.WARNING, "consumer refused")
        clock[0] = broker_module.DROP_LOG_WINDOW
        limiter.log("refused", logging.WARNING, "consumer refused")
    lines = [r.getMessage() for r in caplog.records]
    assert lines.count("broker: vm: consumer refused") == DROP_LOG_LIMIT + 1
    assert "broker: vm: 5 more lines of this kind were not logged (refused)" in lines


# --- agent mode: one qemu-ga shared in turns (issue 10) ------------------------------

AGENT = "org.qemu.guest_agent.0"


class AgentConsumer:
    """A line-level qemu-ga client of the broker's consumer socket.

    Smaller than qga.AgentClient (which the tests use too) and free to send
    ``guest-sync`` itself, whose echoed id ties each answer to its request.
    """

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(WAIT)
        self.sock.connect(path)
        self.reader = qga.LineReader()

    def event(self) -> qga.Event:
        while (event := self.reader.next_event()) is None:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the broker closed the connection")
            self.reader.feed(data)
        return event

    def sync(self, sync_id: int) -> None:
        self.sock.sendall(qga.sync_request(sync_id))
        assert isinstance(self.event(), qga.Marker)
        line = self.event()
        assert isinstance(line, qga.Line) and json.loads(line.data) == {"return": sync_id}

    def call(self, request: dict[str, Any]) -> dict[str, Any]:
        self.sock.sendall(qga.encode_request(request))
        line = self.event()
        assert isinstance(line, qga.Line), line
        answer: dict[str, Any] = json.loads(line.data)
        return answer

    def close(self) -> None:
        self.sock.close()


def _agent_commands(qemu_ga_log: str) -> list[tuple[str, int | None]]:
    """(command, id) of every request qemu-ga read, in order (from its -v log)."""
    found = re.findall(r'"execute":"([^"]+)"(?:,"arguments":\{"id":(\d+)\})?', qemu_ga_log)
    return [(name, int(number) if number else None) for name, number in found]


def test_two_consumers_share_the_real_qemu_ga_in_turns(rundir: Path, tmp_path: Path) -> None:
    """Debian's qemu-ga on the stand-in's pty, dangerous commands blocked; two
    consumers at once.  Every answer is the answer to its own request, and
    qemu-ga sees a fresh guest-sync-delimited before every command."""
    require_qemu_ga()
    paths = write_record(rundir, UUID_A, "vm-a", [AGENT])
    rounds = 25
    with BackendStandin(paths[AGENT]) as qemu:
        agent = QemuGa(qemu.guest_tty, str(tmp_path / "qga"), extra=["-v"])
        broker = BrokerProcess(rundir, tmp_path / "broker.log")
        try:
            broker.wait_log("connected to QEMU socket")
            consumer_path = broker_socket_for(paths[AGENT])
            start = threading.Barrier(2, timeout=WAIT)
            failures: list[BaseException] = []

            def raw() -> None:
                consumer = AgentConsumer(consumer_path)
                try:
                    consumer.sync(424242)  # answered by the broker, never by qemu-ga
                    start.wait()
                    for i in range(rounds):
                        echo = {"execute": "guest-sync", "arguments": {"id": 1000 + i}}
                        assert consumer.call(echo) == {"return": 1000 + i}
                        if i % 5 == 0:
                            blocked = consumer.call({"execute": "guest-exec",
                                                     "arguments": {"path": "/bin/true"}})
                            assert blocked["error"]["class"] == "CommandNotFound", blocked
                except BaseException as exc:  # reported by the main thread
                    failures.append(exc)
                finally:
                    consumer.close()

            def client() -> None:
                try:
                    with qga.AgentClient(consumer_path) as agent_client:
                        agent_client.sync(WAIT)
                        start.wait()
                        for i in range(rounds):
                            assert agent_client.execute("guest-ping", timeout=WAIT) == {}
                            if i % 5 == 0:
                                info = agent_client.execute("guest-info", timeout=WAIT)
                                assert isinstance(info, dict) and "version" in info, info
                except BaseException as exc:
                    failures.append(exc)

            threads = [threading.Thread(target=raw), threading.Thread(target=client)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(4 * WAIT)
            assert not failures, failures
            expected = 2 * rounds + 2 * (rounds // 5)
            commands: list[tuple[str, int | None]] = []

            def logged() -> bool:
                commands[:] = _agent_commands(agent.log())
                return sum(name != "guest-sync-delimited" for name, _ in commands) >= expected

            wait_for(logged, f"qemu-ga to log {expected} commands")
        finally:
            broker.kill()
            agent.stop()
    syncs = [number for name, number in commands if name == "guest-sync-delimited"]
    requests = [name for name, _ in commands if name != "guest-sync-delimited"]
    assert len(requests) == expected
    # One fresh sync per turn, right before the turn's one command.
    assert len(syncs) == len(requests) and len(set(syncs)) == len(syncs)
    assert [name for name, _ in commands[::2]] == ["guest-sync-delimited"] * expected
    assert 424242 not in syncs  # consumers' own syncs never reach the agent
    # Both consumers' commands reached the agent, interleaved by turns.
    assert {"guest-sync", "guest-exec", "guest-ping", "guest-info"} == set(requests)


def test_the_agent_channel_is_served_for_libxl_domains_only(
    rundir: Path, broker: BrokerProcess
) -> None:
    """Under libvirt's qemu driver, libvirt itself holds the agent's one connection."""
    qemu_driver = write_record(rundir, UUID_A, "vm-kvm", [AGENT], driver="qemu")
    xen = write_record(rundir, UUID_B, "vm-xen", [AGENT])
    broker.wait_log(f"domain 'vm-xen' channel '{AGENT}': serving consumers")
    assert not os.path.exists(broker_socket_for(qemu_driver[AGENT]))
    assert os.path.exists(broker_socket_for(xen[AGENT]))


@pytest.fixture
def fake_agents() -> Iterator[Callable[[str, str], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(mode: str, path: str) -> subprocess.Popen[str]:
        fake = Path(__file__).with_name("fake_agent.py")
        proc = subprocess.Popen([sys.executable, str(fake), mode, path],
                                stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait(WAIT)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize("mode", ["silent", "wrong-id", "flood"])
def test_an_agent_that_never_syncs_fails_each_turn_with_one_line(
    rundir: Path, fake_agents: Callable[[str, str], Any], mode: str
) -> None:
    paths = write_record(rundir, UUID_A, "vm-a", [AGENT])
    fake_agents(mode, paths[AGENT])
    broker = Broker(str(rundir), poll_interval=0.05, agent_sync_timeout=0.5, agent_timeout=0.5)
    thread = threading.Thread(target=broker.run)
    thread.start()
    consumers: list[AgentConsumer] = []
    try:
        consumer_path = broker_socket_for(paths[AGENT])
        wait_for(lambda: os.path.exists(consumer_path), "consumer socket")
        consumers = [AgentConsumer(consumer_path) for _ in range(2)]
        for consumer in consumers:  # both queue at once; each gets its turn and its error
            consumer.sock.sendall(qga.encode_command("guest-ping"))
        for consumer in consumers:
            line = consumer.event()
            assert isinstance(line, qga.Line)
            error = json.loads(line.data)["error"]
            assert error["class"] == "GenericError"
            assert error["desc"] == (
                "xen-channel broker: qemu-ga did not answer guest-sync-delimited within "
                "0.5 s (is it running in the guest?); guest-ping was not sent"
            )
    finally:
        for consumer in consumers:
            consumer.close()
        broker.stop()
        thread.join(WAIT)


def test_a_huge_answer_line_is_dropped_with_bounded_memory(
    rundir: Path, tmp_path: Path, fake_agents: Callable[[str, str], Any]
) -> None:
    """A guest answers with a 100 MB line: the broker's memory stays bounded,
    the consumer gets one error line, and the next turn works."""
    paths = write_record(rundir, UUID_A, "vm-a", [AGENT])
    fake_agents("huge-line", paths[AGENT])
    broker = BrokerProcess(rundir, tmp_path / "broker.log")
    try:
        broker.wait_log("connected to QEMU socket")
        consumer = AgentConsumer(broker_socket_for(paths[AGENT]))
        for _ in range(2):
            answer = consumer.call({"execute": "guest-info"})
            assert answer["error"]["desc"].startswith(
                "xen-channel broker: the guest's answer to guest-info is over "
            ), answer
        consumer.close()
        assert broker.peak_rss() < 96 * 1024 * 1024, broker.peak_rss()
    finally:
        broker.kill()


def test_a_consumer_leaving_mid_turn_frees_the_agent(
    rundir: Path, fake_agents: Callable[[str, str], Any]
) -> None:
    """silent-shutdown: guest-shutdown succeeds silently, as qemu-ga's does.  The
    turn ends when its consumer leaves; the next consumer is served at once."""
    paths = write_record(rundir, UUID_A, "vm-a", [AGENT])
    fake_agents("silent-shutdown", paths[AGENT])
    broker = Broker(str(rundir), poll_interval=0.05, agent_timeout=3600)
    thread = threading.Thread(target=broker.run)
    thread.start()
    try:
        consumer_path = broker_socket_for(paths[AGENT])
        wait_for(lambda: os.path.exists(consumer_path), "consumer socket")
        first = AgentConsumer(consumer_path)
        first.sock.sendall(qga.encode_command("guest-shutdown"))
        wait_for(lambda: broker.links[(UUID_A, AGENT)].agent.synced, "the shutdown's turn")
        second = AgentConsumer(consumer_path)
        second.sock.sendall(qga.encode_command("guest-ping"))
        first.close()  # gives up: the agent is free again
        line = second.event()
        assert isinstance(line, qga.Line) and json.loads(line.data) == {"return": {}}
        second.close()
    finally:
        broker.stop()
        thread.join(WAIT)


def test_a_stalled_agent_fails_the_turn_and_the_next_turn_resyncs(
    rundir: Path, tmp_path: Path
) -> None:
    """The real qemu-ga stops (SIGSTOP) right after answering: the next request,
    written behind its sync, gets one error line saying it may have run; once
    the agent runs again, its late answers are skipped by the next turn's sync."""
    require_qemu_ga()
    paths = write_record(rundir, UUID_A, "vm-a", [AGENT])
    with BackendStandin(paths[AGENT]) as qemu:
        agent = QemuGa(qemu.guest_tty, str(tmp_path / "qga"))
        broker = Broker(str(rundir), poll_interval=0.05, agent_sync_timeout=0.5)
        thread = threading.Thread(target=broker.run)
        thread.start()
        consumer: AgentConsumer | None = None
        try:
            consumer_path = broker_socket_for(paths[AGENT])
            wait_for(lambda: os.path.exists(consumer_path), "consumer socket")
            consumer = AgentConsumer(consumer_path)
            echo = {"execute": "guest-sync", "arguments": {"id": 1}}
            assert consumer.call(echo) == {"return": 1}  # cold: synced first; now warm
            os.kill(agent.pid, signal.SIGSTOP)
            try:
                stalled = consumer.call({"execute": "guest-sync", "arguments": {"id": 2}})
            finally:
                os.kill(agent.pid, signal.SIGCONT)
            assert stalled["error"]["desc"] == (
                "xen-channel broker: qemu-ga did not answer guest-sync-delimited within 0.5 s "
                "(is it running in the guest?); guest-sync may have been run"
            )
            # The late {"return": 2} (and the stalled sync's answer) must not pass
            # for the answer to the next request.
            assert consumer.call({"execute": "guest-sync", "arguments": {"id": 3}}) == {
                "return": 3
            }
        finally:
            if consumer is not None:
                consumer.close()
            broker.stop()
            thread.join(WAIT)
            agent.stop()
