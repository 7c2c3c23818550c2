"""``xen-channel monitor --agent-interval``: the guest agent's view, kept in the live metadata.

A domain on libvirt's test:///default driver carries our metadata; its
registry record (as the hooks write it) has an ``org.qemu.guest_agent.0``
socket channel, served by the QEMU stand-in with Debian's real qemu-ga on
the pty (dangerous commands blocked).  The monitor polls it and writes
``<xcb:agent>`` into the live metadata, read back through libvirt-python
and checked against xml/metadata.rng; a stopped agent becomes
``not-responding``.  A hostile guest's text arrives escaped and bounded.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from backend_standin import BackendStandin
from broker_fixtures import write_record
from lxml import etree
from monitor_fixtures import (  # noqa: F401 - the fixtures register by import
    TEST_URI,
    conn_fixture,
    domain_name,
    live_metadata,
    make_domain_xml,
    settings_fixture,
)
from qga_fixtures import QemuGa, require_qemu_ga

from xen_channel_backend import metadata
from xen_channel_backend.model import Channel, Connection, Target
from xen_channel_backend.monitor import Monitor
from xen_channel_backend.qga import AGENT_CHANNEL
from xen_channel_backend.registry import Registry
from xen_channel_backend.settings import Settings

pytestmark = pytest.mark.integration
SCHEMA = Path(__file__).resolve().parent.parent / "xml" / "metadata.rng"
FAKE = Path(__file__).with_name("fake_agent.py")


@pytest.fixture
def agent_world(settings: Settings, conn: Any) -> Iterator[dict[str, Any]]:
    """A running test-driver domain, registered with its agent channel's socket."""
    name = domain_name("agent")
    uuid = str(uuidlib.uuid4())
    path = write_record(Path(settings.rundir), uuid, name, [AGENT_CHANNEL])[AGENT_CHANNEL]
    # The registry record as the monitor's driver sees it (test:///default is "test").
    registry = Registry(settings.rundir)
    record = registry.by_uuid(uuid)
    assert record is not None
    registry.put(record.replace(driver="test"))
    channel = Channel(AGENT_CHANNEL, Connection.SOCKET, path, target=Target.XEN)
    domain = conn.createXML(make_domain_xml(name, [channel], uuid), 0)
    monitor = Monitor(TEST_URI, settings, registry, agent_interval=8.0)
    monitor.connect()
    try:
        yield {"name": name, "uuid": uuid, "path": path, "domain": domain, "monitor": monitor}
    finally:
        monitor.close()
        domain.destroy()


def valid(domain: Any) -> None:
    text = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata.NAMESPACE,
                           libvirt.VIR_DOMAIN_AFFECT_LIVE)
    namespaced = etree.fromstring(
        text.replace("<channels", f'<channels xmlns="{metadata.NAMESPACE}"', 1))
    schema = etree.RelaxNG(etree.parse(str(SCHEMA)))
    assert schema.validate(namespaced), schema.error_log


def test_the_agents_view_reaches_the_live_metadata(agent_world: dict[str, Any]) -> None:
    require_qemu_ga()
    monitor, domain = agent_world["monitor"], agent_world["domain"]
    with BackendStandin(agent_world["path"]) as qemu:
        agent = QemuGa(qemu.guest_tty, os.path.join(os.path.dirname(agent_world["path"]), "qga"))
        try:
            assert monitor.poll_agents() == 1
            found = live_metadata(domain)
            assert found is not None and found.agent is not None
            assert found.state == "running"
            assert [c.name for c in found.channels] == [AGENT_CHANNEL]
            status = found.agent
            assert status.state == "connected" and status.hostname == socket.gethostname()
            release = dict(line.split("=", 1) for line in
                           Path("/etc/os-release").read_text().splitlines() if "=" in line)
            assert status.os_id == release["ID"].strip('"')
            lo = next(i for i in status.interfaces if i.name == "lo")
            assert ("ipv4", "127.0.0.1", 8) in [(a.type, a.address, a.prefix)
                                                for a in lo.addresses]
            valid(domain)
            assert monitor.poll_agents() == 0  # nothing changed: nothing written
        finally:
            agent.stop()
    # The agent is gone (socket too): the metadata says so, and keeps the channels.
    assert monitor.poll_agents() == 1
    found = live_metadata(domain)
    assert found is not None and found.agent == metadata.AgentStatus("not-responding")
    assert [c.name for c in found.channels] == [AGENT_CHANNEL]
    valid(domain)


def test_a_hostile_guests_text_is_stored_escaped(agent_world: dict[str, Any]) -> None:
    proc = subprocess.Popen([sys.executable, str(FAKE), "escapes", agent_world["path"]],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        assert agent_world["monitor"].poll_agents() == 1
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    found = live_metadata(agent_world["domain"])
    assert found is not None and found.agent is not None
    status = found.agent
    assert status.state == "connected"
    for text in (status.hostname, status.os_id, *(i.name for i in status.interfaces)):
        assert text is not None and text.isprintable() and len(text) <= 255
    assert status.hostname is not None and "\\x1b]52" in status.hostname
    # The fake's interface has a hostile MAC and no valid address: neither is kept.
    assert [(i.hwaddr, i.addresses) for i in status.interfaces] == [(None, ())]
    valid(agent_world["domain"])


def test_a_domain_without_an_agent_channel_is_left_alone(
    settings: Settings, conn: Any
) -> None:
    name = domain_name("noagent")
    uuid = str(uuidlib.uuid4())
    write_record(Path(settings.rundir), uuid, name, ["org.example.agent.0"])
    registry = Registry(settings.rundir)
    record = registry.by_uuid(uuid)
    assert record is not None
    registry.put(record.replace(driver="test"))
    monitor = Monitor(TEST_URI, settings, registry, agent_interval=8.0)
    monitor.connect()
    try:
        assert monitor.poll_agents() == 0
    finally:
        monitor.close()


def test_the_option_must_be_positive() -> None:
    import io

    from xen_channel_backend.cli import main

    err = io.StringIO()
    assert main(["monitor", "--agent-interval", "0"], stdout=io.StringIO(), stderr=err) == 2
    assert "--agent-interval must be a positive number of seconds" in err.getvalue()


@pytest.mark.parametrize("xml,problem", [
    ('<channels><agent state="awake"/></channels>', "agent state 'awake'"),
    ('<channels><agent state="connected" hostname=""/></channels>', "never writes"),
    ('<channels><agent state="connected" hostname="a&#10;b"/></channels>', "never writes"),
    ('<channels><agent state="connected"><interface name="e"><address type="ipv4" '
     'addr="300.1.1.1" prefix="8"/></interface></agent></channels>', "never writes"),
    ('<channels><agent state="connected"><interface name="e" hwaddr="x"/></agent></channels>',
     "never writes"),
    ('<channels><agent state="connected"><bogus/></agent></channels>', "other than"),
    ('<channels><agent state="connected"/><agent state="connected"/></channels>', "only once"),
])
def test_the_reader_refuses_an_agent_element_the_monitor_never_writes(
    xml: str, problem: str
) -> None:
    from xen_channel_backend.errors import InvalidMetadata

    with pytest.raises(InvalidMetadata, match=problem):
        metadata.parse_metadata(xml)


def test_what_the_monitor_writes_reads_back_and_validates() -> None:
    from xen_channel_backend.agenttypes import GuestInterface, GuestIPAddress

    status = metadata.agent_status(
        "connected", "web\x1b01", "debian", "12",
        [GuestInterface("eth0", "00:16:3E:00:00:01",
                        (GuestIPAddress("ipv6", "FE80::0001", 64),
                         GuestIPAddress("ipv4", "192.0.2.300", 24)))],
    )
    assert status.hostname == "web\\x1b01"
    assert status.interfaces[0].hwaddr == "00:16:3e:00:00:01"
    assert [a.address for a in status.interfaces[0].addresses] == ["fe80::1"]
    text = metadata.metadata_xml([], "running", status)
    assert metadata.parse_metadata(text) == metadata.Metadata((), "running", status)
    element = metadata.metadata_element([], "running", status)
    schema = etree.RelaxNG(etree.parse(str(SCHEMA)))
    assert schema.validate(etree.fromstring(etree.tostring(element))), schema.error_log
