"""The broker against a REAL QEMU started by a REAL libvirtd, with our hooks installed.

No Xen here, so the QEMU is the qemu driver's (background.md §6) and the channel a
virtio one; what the broker meets is the same: a ``server,nowait`` chardev
socket that QEMU creates, serves to one client, and loses when the domain
stops.  The registry is the one the real hooks write.  There is no guest
OS, so no frame is answered; the guest side is covered against the QEMU
stand-in in tests/test_broker.py.
"""

from __future__ import annotations

import grp
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for the shared fixtures

from broker_fixtures import BrokerProcess, wait_for  # noqa: E402
from hook_fixtures import HookHost, make_host, new_uuid  # noqa: E402
from libvirtd import Libvirtd, new_domain_name, skip_reason, tcg_domain_xml  # noqa: E402

from xen_channel_backend.broker import broker_socket_for  # noqa: E402

XEN_CHANNEL = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "xen-channel")
CHANNEL = "org.example.broker.0"
GROUP = "nogroup"


def xen_channel(*args: str) -> str:
    result = subprocess.run([XEN_CHANNEL, *args], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, f"xen-channel {' '.join(args)}: {result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def host() -> Iterator[HookHost]:
    made = make_host(group=GROUP)
    try:
        yield made
    finally:
        shutil.rmtree(made.base, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(host: HookHost) -> Iterator[Libvirtd]:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    server = Libvirtd()
    server.start()
    try:
        xen_channel("install-hooks", "--hooks-dir", server.hooks_dir, "--config", host.config)
        server.sighup()  # background.md §1: hooks are found at start or on SIGHUP
        yield server
    finally:
        try:
            xen_channel("install-hooks", "--hooks-dir", server.hooks_dir, "--uninstall")
        finally:
            server.stop()


@pytest.fixture
def broker(
    daemon: Libvirtd, host: HookHost, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[BrokerProcess]:
    monkeypatch.setenv("XEN_CHANNEL_CONFIG", host.config)  # the group comes from it
    process = BrokerProcess(Path(host.rundir), tmp_path / "broker.log")
    try:
        process.wait_log("watching registry")
        yield process
    finally:
        assert process.stop() == 0


def define_domain(daemon: Libvirtd, host: HookHost, tmp_path: Path) -> tuple[str, str]:
    """fill + define a TCG domain with one virtio channel; returns (name, QEMU socket path)."""
    name, uuid = new_domain_name("broker"), new_uuid()
    source = tmp_path / f"{name}.xml"
    source.write_text(tcg_domain_xml(name, uuid, channels=[(CHANNEL, None)]))
    xen_channel("define", "--rundir", host.rundir, "--all-targets", "--connect", daemon.uri,
                str(source))
    return name, f"{host.rundir}/{uuid}/{CHANNEL}"


@pytest.mark.integration
def test_broker_follows_a_real_domain_through_start_and_destroy(
    daemon: Libvirtd, host: HookHost, broker: BrokerProcess, tmp_path: Path
) -> None:
    name, qemu_socket = define_domain(daemon, host, tmp_path)
    consumer_path = broker_socket_for(qemu_socket)
    try:
        daemon.virsh("start", name)
        broker.wait_log(f"domain '{name}' channel '{CHANNEL}': connected to QEMU socket")
        info = os.lstat(consumer_path)
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
        assert info.st_gid == grp.getgrnam(GROUP).gr_gid

        consumer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        consumer.connect(consumer_path)
        broker.wait_log(f"domain '{name}' channel '{CHANNEL}': consumer pid")

        daemon.virsh("destroy", name)
        broker.wait_log(f"domain '{name}' channel '{CHANNEL}': lost QEMU socket")
        broker.wait_log(f"domain '{name}' channel '{CHANNEL}': stopped serving")
        consumer.settimeout(30)
        assert consumer.recv(1) == b""  # the broker closed its consumers
        consumer.close()
        wait_for(lambda: not os.path.lexists(consumer_path), "the consumer socket removed")
    finally:
        daemon.virsh("destroy", name, check=False)
        daemon.virsh("undefine", name, check=False)


@pytest.mark.integration
def test_release_removes_the_directory_while_a_broker_runs(
    daemon: Libvirtd, host: HookHost, broker: BrokerProcess, tmp_path: Path
) -> None:
    name, qemu_socket = define_domain(daemon, host, tmp_path)
    try:
        daemon.virsh("start", name)
        broker.wait_log(f"domain '{name}' channel '{CHANNEL}': serving consumers")
        daemon.virsh("destroy", name)
        broker.wait_log(f"domain '{name}' channel '{CHANNEL}': stopped serving")
        assert not os.path.lexists(os.path.dirname(qemu_socket))
    finally:
        daemon.virsh("destroy", name, check=False)
        daemon.virsh("undefine", name, check=False)
