"""api.py and the lazy re-exports in xen_channel_backend/__init__.py.

channels() reads a real registry in a temporary run directory;
remote_channels() reads real metadata through libvirt's test:///default.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import libvirt
import pytest
from monitor_fixtures import (  # noqa: F401 - the fixtures register by import
    TEST_URI,
    conn_fixture,
    domain_name,
    make_domain_xml,
    settings_fixture,
)

import xen_channel_backend
from xen_channel_backend import api, metadata
from xen_channel_backend.errors import (
    InvalidMetadata,
    LibvirtUnavailable,
    NoSuchDomain,
    UnknownDomain,
)
from xen_channel_backend.model import Channel, Connection, DomainState, Target
from xen_channel_backend.monitor import Monitor
from xen_channel_backend.registry import ChannelRecord, DomainRecord, Registry
from xen_channel_backend.settings import Settings

UUID = "a71c0000-0000-4000-8000-000000000001"
SOCKET = Channel("org.example.agent.0", Connection.SOCKET, f"/run/xen-channel/{UUID}/a",
                 target=Target.XEN)
PTY = Channel("org.example.console", Connection.PTY, "/dev/pts/3", target=Target.VIRTIO)


def test_importing_the_package_imports_nothing_else() -> None:
    # The hooks import the package on every call (background.md §1: ~15 ms budget for a shell hook).
    code = ("import sys, xen_channel_backend; "
            "print(sorted(m for m in sys.modules if m.startswith(('xen_channel', 'lxml', "
            "'libvirt', 'typing'))))")
    out = subprocess.run([sys.executable, "-I", "-c", code], check=True, capture_output=True,
                         text=True, cwd="/").stdout
    assert out.strip() == "['xen_channel_backend']"


def test_package_root_re_exports_the_api() -> None:
    assert xen_channel_backend.channels is api.channels
    assert xen_channel_backend.remote_channels is api.remote_channels
    assert xen_channel_backend.ChannelInfo is api.ChannelInfo
    with pytest.raises(AttributeError):
        _ = xen_channel_backend.no_such_name


def put_record(settings: Settings, state: str = "running") -> None:
    Registry(settings.rundir).put(DomainRecord(UUID, "vm1", "qemu", state, (
        ChannelRecord.from_channel(SOCKET, created_dir=True), ChannelRecord.from_channel(PTY),
    )))


@pytest.mark.parametrize("key", ["vm1", UUID, UUID.upper(), UUID.replace("-", "")])
def test_channels_by_name_or_uuid_from_the_registry(settings: Settings, key: str) -> None:
    put_record(settings)
    found = xen_channel_backend.channels(key, rundir=settings.rundir)
    assert found == [
        api.ChannelInfo("vm1", UUID, "org.example.agent.0", Connection.SOCKET, SOCKET.path,
                        Target.XEN, "running"),
        api.ChannelInfo("vm1", UUID, "org.example.console", Connection.PTY, "/dev/pts/3",
                        Target.VIRTIO, "running"),
    ]
    assert found[0].connection == "socket" and found[1].target == "virtio"
    with pytest.raises(dataclasses.FrozenInstanceError):
        found[0].path = "/elsewhere"  # type: ignore[misc]


def test_channel_info_is_the_models_channel_plus_its_domain(settings: Settings) -> None:
    """One channel record: the registry's Channel comes back whole, the state a DomainState."""
    put_record(settings)
    found = api.channels("vm1", rundir=settings.rundir)
    assert [info.channel for info in found] == [SOCKET, PTY]
    assert [info.channel.to_dict() for info in found] == [SOCKET.to_dict(), PTY.to_dict()]
    assert all(info.state is DomainState.RUNNING for info in found)
    assert api.ChannelInfo.from_channel("vm1", UUID, SOCKET, DomainState.RUNNING) == found[0]
    # The public shape is unchanged: seven plain fields.
    assert dataclasses.asdict(found[0]) == {
        "domain": "vm1", "uuid": UUID, "name": SOCKET.name, "connection": "socket",
        "path": SOCKET.path, "target": "xen", "state": "running"}


def test_channels_of_an_unknown_domain(settings: Settings) -> None:
    put_record(settings)
    with pytest.raises(UnknownDomain) as caught:
        api.channels("vm2", rundir=settings.rundir)
    assert caught.value.domain == "vm2"


def test_remote_channels_follow_the_domain_state(settings: Settings, conn: Any) -> None:
    name = domain_name("api")
    uuid = "a71c0000-0000-4000-8000-000000000002"
    pty = Channel("org.example.console", Connection.PTY, target=Target.VIRTIO)
    domain = conn.defineXML(make_domain_xml(name, [pty], uuid))
    try:
        stopped = api.remote_channels(TEST_URI, name)
        assert stopped == [api.ChannelInfo(name, uuid, pty.name, Connection.PTY, None,
                                           Target.VIRTIO, "stopped")]
        assert stopped[0].state is DomainState.STOPPED and stopped[0].channel == pty
        domain.create()
        # Running, before the monitor wrote the live copy: state unknown.
        assert [c.state for c in api.remote_channels(TEST_URI, uuid)] == [None]
        monitor = Monitor(TEST_URI, settings, Registry(settings.rundir))
        monitor.connect()
        try:
            monitor.sync(uuid)
        finally:
            monitor.close()
        assert [c.state for c in api.remote_channels(TEST_URI, uuid.upper())] == ["running"]
    finally:
        if domain.isActive():
            domain.destroy()
        domain.undefine()


def test_remote_channels_of_a_domain_we_do_not_manage(conn: Any) -> None:
    assert api.remote_channels(TEST_URI, "test") == []  # test:///default's own domain


def test_remote_channels_errors(conn: Any) -> None:
    with pytest.raises(NoSuchDomain) as missing:
        api.remote_channels(TEST_URI, "xcb-no-such-domain")
    assert missing.value.message() == (
        "libvirt at 'test:///default' has no domain 'xcb-no-such-domain'")
    with pytest.raises(LibvirtUnavailable):
        api.remote_channels("test:///nonexistent/xcb-no-such-file.xml", "vm1")

    name = domain_name("apibad")
    domain = conn.defineXML(make_domain_xml(name, [PTY]))
    try:
        domain.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                           '<channels><channel name="a" connection="tcp" target="xen"/></channels>',
                           metadata.PREFIX, metadata.NAMESPACE, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        with pytest.raises(InvalidMetadata, match="connection 'tcp'"):
            api.remote_channels(TEST_URI, name)
    finally:
        domain.undefine()


# --- many hosts: host_inventory / host_domain -------------------------------------------
# Hosts are real libvirt connections: the test driver on node XML files
# (tests/host_fixtures.py), one that is down, and one that never answers.

FLEET_UUIDS = [f"20000000-0000-4000-8000-00000000000{i}" for i in range(1, 5)]


def fleet(directory: str) -> tuple[str, str]:
    from host_fixtures import NodeDomain, agent_channels, write_host

    u1, u2, u3, _u4 = FLEET_UUIDS
    host_a = write_host(directory, "a", [
        NodeDomain("web", u1, channels=agent_channels("/run/xen-channel", u1)),
        NodeDomain("db", u2, running=False, channels=agent_channels("/run/xen-channel", u2)),
    ])
    host_b = write_host(directory, "b", [
        NodeDomain("cache", u3, channels=agent_channels("/run/xcb", u3)[:1]),
    ])
    return host_a, host_b


def test_host_inventory_returns_frozen_typed_results(tmp_path: Any) -> None:
    host_a, host_b = fleet(str(tmp_path))
    u1, u2, _u3, _u4 = FLEET_UUIDS
    found = api.host_inventory([host_b, host_a, host_b])
    assert found.errors == ()
    assert [(d.host, d.domain, d.state, d.persistent) for d in found.domains] == [
        (host_b, "cache", "running", True), (host_a, "db", "stopped", True),
        (host_a, "web", "running", True)]
    web = found.domains[2]
    assert web == api.HostDomain(host_a, "web", u1, "test", "running", True, (
        api.ChannelInfo("web", u1, "org.example.agent.0", Connection.SOCKET,
                        f"/run/xen-channel/{u1}/org.example.agent.0", Target.XEN, "running"),
        api.ChannelInfo("web", u1, "org.example.console.0", Connection.PTY, None, Target.XEN,
                        "running"),
    ))
    with pytest.raises(dataclasses.FrozenInstanceError):
        web.state = "stopped"  # type: ignore[misc]
    assert api.host_domain(host_a, u2.upper()).state == "stopped"


def test_host_inventory_reports_each_failed_host_and_keeps_the_rest(tmp_path: Any) -> None:
    from host_fixtures import DOWN_URI, hung_host

    host_a, host_b = fleet(str(tmp_path))
    with hung_host(str(tmp_path)) as hung:
        found = api.host_inventory([hung, host_a, DOWN_URI, host_b], timeout=0.5)
    assert [d.domain for d in found.domains] == ["db", "web", "cache"]
    assert [(e.host, e.domain) for e in found.errors] == [(hung, None), (DOWN_URI, None)]
    assert found.errors[0].message == f"libvirt at {hung!r}: no answer within 0.5 s"
    assert found.errors[1].message.startswith(f"libvirt at {DOWN_URI!r}: cannot connect: ")
    assert all("\n" not in e.message for e in found.errors)


def test_host_domain_errors(tmp_path: Any) -> None:
    from host_fixtures import DOWN_URI, hung_host

    host_a, _host_b = fleet(str(tmp_path))
    with pytest.raises(NoSuchDomain):
        api.host_domain(host_a, "cache")
    with pytest.raises(LibvirtUnavailable, match="cannot connect"):
        api.host_domain(DOWN_URI, "web")
    with hung_host(str(tmp_path)) as hung, pytest.raises(
            LibvirtUnavailable, match=r"no answer within 0\.2 s"):
        api.host_domain(hung, "web", timeout=0.2)


def test_host_inventory_reads_the_live_copy_of_a_running_domain(conn: Any) -> None:
    """Persistent and live metadata differ once the monitor has written the live copy."""
    name = domain_name("fleet")
    uuid = "a71c0000-0000-4000-8000-000000000003"
    domain = conn.defineXML(make_domain_xml(name, [PTY], uuid))
    transient = None
    try:
        domain.create()
        live = metadata.metadata_xml(
            [Channel("org.example.console", Connection.PTY, "/dev/pts/9", target=Target.VIRTIO)],
            "running")
        domain.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, live, metadata.PREFIX,
                           metadata.NAMESPACE, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        # A transient domain (as one migrated in without --persistent).
        transient_name = domain_name("transient")
        transient = conn.createXML(make_domain_xml(transient_name, [PTY]), 0)
        found = {d.domain: d for d in api.host_inventory([TEST_URI]).domains}
        assert [c.path for c in found[name].channels] == ["/dev/pts/9"]
        assert found[name].persistent and found[name].state == "running"
        assert not found[transient_name].persistent
        domain.destroy()
        found = {d.domain: d for d in api.host_inventory([TEST_URI]).domains}
        assert [c.path for c in found[name].channels] == ["/dev/pts/3"]
        assert found[name].state == "stopped" and transient_name in found
    finally:
        if transient is not None:
            transient.destroy()
        if domain.isActive():
            domain.destroy()
        domain.undefine()
