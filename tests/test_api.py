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
from xen_channel_backend.model import Channel, Connection, Target
from xen_channel_backend.monitor import Monitor
from xen_channel_backend.registry import ChannelRecord, DomainRecord, Registry
from xen_channel_backend.settings import Settings

UUID = "a71c0000-0000-4000-8000-000000000001"
SOCKET = Channel("org.example.agent.0", Connection.SOCKET, f"/run/xen-channel/{UUID}/a",
                 target=Target.XEN)
PTY = Channel("org.example.console", Connection.PTY, "/dev/pts/3", target=Target.VIRTIO)


def test_importing_the_package_imports_nothing_else() -> None:
    # The hooks import the package on every call (FACTS 1: ~15 ms budget for a shell hook).
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
