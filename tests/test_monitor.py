"""monitor.py against libvirt's real test:///default driver.

The test driver emits lifecycle events for define/start/destroy/undefine
in-process (checked here), so the monitor's real event loop, sync and
reconcile run unchanged; the real-daemon behaviour (libvirtd killed and
restarted, QEMU ptys, virsh) is in tests/integration/test_monitor_libvirtd.py.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

import libvirt
import pytest
from monitor_fixtures import (  # noqa: F401 - the fixtures register by import
    TEST_URI,
    MonitorThread,
    bound_socket,
    conn_fixture,
    domain_name,
    live_metadata,
    make_domain_xml,
    settings_fixture,
    wait_until,
)

from xen_channel_backend import metadata
from xen_channel_backend.cli import main
from xen_channel_backend.model import Channel, Connection, Target
from xen_channel_backend.monitor import Monitor
from xen_channel_backend.paths import broker_socket_for, domain_socket_dir, socket_path
from xen_channel_backend.registry import ChannelRecord, DomainRecord, Registry
from xen_channel_backend.settings import Settings
from xen_channel_backend.sockets import remove_domain_files

PTY = Channel("org.example.console", Connection.PTY, target=Target.VIRTIO)


def socket_channel(settings: Settings, uuid: str, name: str = "org.example.agent.0") -> Channel:
    return Channel(name, Connection.SOCKET, socket_path(settings, uuid, name), target=Target.VIRTIO)


def record_state(settings: Settings, uuid: str) -> str | None:
    record = Registry(settings.rundir).get(uuid)
    return record.state if record is not None else None


def test_lifecycle_events_drive_live_metadata_and_registry(settings: Settings, conn: Any) -> None:
    uuid = "5a1c0000-0000-4000-8000-000000000001"
    channels = [socket_channel(settings, uuid), PTY]
    with MonitorThread(settings):
        domain = conn.defineXML(make_domain_xml(domain_name("life"), channels, uuid))
        try:
            domain.create()
            # The live definition starts as a copy of the persistent one (no
            # state); the monitor's write is the copy with state="running".
            wait_until(lambda: (live_metadata(domain) or metadata.Metadata(())).state == "running",
                       "live metadata after start")
            live = live_metadata(domain)
            assert live == metadata.Metadata(tuple(channels), "running")
            wait_until(lambda: record_state(settings, uuid) == "running", "a running record")
            record = Registry(settings.rundir).get(uuid)
            assert record is not None and record.driver == "test"
            assert [c.name for c in record.channels] == [c.name for c in channels]

            domain.destroy()
            wait_until(lambda: record_state(settings, uuid) == "stopped", "the stopped record")
            # The persistent copy is untouched by the live writes: no state.
            config = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata.NAMESPACE,
                                     libvirt.VIR_DOMAIN_AFFECT_CONFIG)
            assert metadata.parse_metadata(config) == metadata.Metadata(tuple(channels), None)
        finally:
            if domain.isActive():
                domain.destroy()
            domain.undefine()
        wait_until(lambda: record_state(settings, uuid) is None, "the record removed at undefine")


def test_transient_domain_is_forgotten_when_destroyed(settings: Settings, conn: Any) -> None:
    uuid = "5a1c0000-0000-4000-8000-000000000002"
    channel = socket_channel(settings, uuid)
    bound_socket(channel.path or "")
    with MonitorThread(settings):
        domain = conn.createXML(make_domain_xml(domain_name("transient"), [channel], uuid), 0)
        wait_until(lambda: record_state(settings, uuid) == "running", "a running record")
        domain.destroy()
        wait_until(lambda: record_state(settings, uuid) is None, "the record removed")
    assert not os.path.exists(domain_socket_dir(settings, uuid))


def test_domain_without_our_metadata_or_record_is_left_alone(settings: Settings,
                                                             conn: Any) -> None:
    name = domain_name("foreign")
    xml = (f"<domain type='test'><name>{name}</name><memory>65536</memory>"
           "<os><type>hvm</type></os></domain>")
    monitor = Monitor(TEST_URI, settings, Registry(settings.rundir))
    monitor.connect()
    domain = conn.createXML(xml, 0)
    try:
        monitor.sync(domain.UUIDString())
        assert live_metadata(domain) is None
        assert Registry(settings.rundir).list() == []
    finally:
        domain.destroy()
        monitor.close()


def test_invalid_live_metadata_is_reported_and_replaced(
    settings: Settings, conn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    uuid = "5a1c0000-0000-4000-8000-000000000003"
    domain = conn.createXML(make_domain_xml(domain_name("edited"), [PTY], uuid), 0)
    registry = Registry(settings.rundir)
    registry.put(DomainRecord(uuid, domain.name(), "test", "running",
                              (ChannelRecord.from_channel(PTY),)))
    hand_edit = '<channels><channel name="../evil" connection="pty" target="xen"/></channels>'
    domain.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, hand_edit, metadata.PREFIX,
                       metadata.NAMESPACE, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    monitor = Monitor(TEST_URI, settings, registry)
    monitor.connect()
    try:
        with caplog.at_level(logging.INFO, logger="xen_channel_backend.monitor"):
            monitor.sync(uuid)
        assert live_metadata(domain) == metadata.Metadata((PTY,), "running")
        assert any("invalid xen-channel metadata" in r.getMessage() for r in caplog.records)
    finally:
        domain.destroy()
        monitor.close()


def test_reconcile_removes_stale_records_only_inside_the_rundir(
    settings: Settings, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(settings.rundir)
    stale = "5a1c0000-0000-4000-8000-0000000000aa"
    inside = socket_channel(settings, stale)
    outside_path = str(tmp_path / "outside.sock")
    bound_socket(inside.path or "")
    bound_socket(outside_path)
    outside = Channel("org.example.outside", Connection.SOCKET, outside_path, target=Target.VIRTIO)
    registry.put(DomainRecord(stale, "gone", "test", "running", (
        ChannelRecord.from_channel(inside, created_dir=True),
        ChannelRecord.from_channel(outside, created_dir=True),
    )))
    # A record of another driver's domain: this connection cannot see it, so it stays.
    other = "5a1c0000-0000-4000-8000-0000000000bb"
    registry.put(DomainRecord(other, "xen-guest", "libxl", "running", ()))

    monitor = Monitor(TEST_URI, settings, registry)
    monitor.connect()
    try:
        with caplog.at_level(logging.INFO, logger="xen_channel_backend.monitor"):
            report = monitor.reconcile()
    finally:
        monitor.close()
    assert report.removed == [stale]
    assert registry.get(stale) is None
    assert registry.get(other) is not None
    assert not os.path.exists(domain_socket_dir(settings, stale))
    assert os.path.exists(outside_path)  # outside the run directory: never touched
    messages = [r.getMessage() for r in caplog.records]
    assert any("'gone'" in m and "no longer exists" in m and stale in m for m in messages)


def test_a_corrupt_record_does_not_stop_reconcile(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(settings.rundir)
    stale = "5a1c0000-0000-4000-8000-0000000000dd"
    registry.put(DomainRecord(stale, "gone", "test", "running", ()))
    corrupt = os.path.join(registry.records_dir, "5a1c0000-0000-4000-8000-0000000000ee.json")
    with open(corrupt, "w", encoding="utf-8") as handle:
        handle.write('{"version": 1, "uuid": "half a reco')
    monitor = Monitor(TEST_URI, settings, registry)
    monitor.connect()
    try:
        with caplog.at_level(logging.INFO, logger="xen_channel_backend.monitor"):
            report = monitor.reconcile()
    finally:
        monitor.close()
    assert report.removed == [stale]
    assert os.path.exists(corrupt)  # not ours to judge: left for the admin, and logged
    assert any("corrupt record" in r.getMessage() for r in caplog.records)


def test_reconcile_releases_old_orphan_claims_only(settings: Settings) -> None:
    """Claims of a prepare that died before writing its record block the path
    for every other domain; the reconcile collects them once they are old
    (a prepare under way holds claims without a record for a moment)."""
    registry = Registry(settings.rundir)
    dead, young = "5a1c0000-0000-4000-8000-0000000000f1", "5a1c0000-0000-4000-8000-0000000000f2"
    for uuid in (dead, young):
        registry.claim_paths(DomainRecord(uuid, "half-started", "test", "preparing", (
            ChannelRecord.from_channel(socket_channel(settings, uuid)),)))
    owned = os.path.join(registry.base, "owned", f"{dead}.json")
    old = time.time() - 3600
    os.utime(owned, (old, old))
    monitor = Monitor(TEST_URI, settings, registry)
    monitor.connect()
    try:
        report = monitor.reconcile()
    finally:
        monitor.close()
    assert report.orphans == [dead]
    assert registry.claim_owner(socket_channel(settings, dead).path or "") is None
    assert registry.claim_owner(socket_channel(settings, young).path or "") == young


def test_remove_domain_files_leaves_non_sockets(settings: Settings) -> None:
    uuid = "5a1c0000-0000-4000-8000-0000000000cc"
    channel = socket_channel(settings, uuid)
    path = channel.path or ""
    os.makedirs(os.path.dirname(path))
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("an admin's file, not a socket")
    record = DomainRecord(uuid, "d", "test", "running",
                          (ChannelRecord.from_channel(channel, created_dir=True),))
    warnings: list[str] = []
    assert remove_domain_files(settings, Registry(settings.rundir), record, warnings.append) == []
    assert os.path.isfile(path)
    assert any("regular file" in w for w in warnings)


@pytest.mark.parametrize("broker_listening", [False, True])
def test_reconcile_removes_the_brokers_socket_and_the_directory(
    settings: Settings, broker_listening: bool
) -> None:
    """The monitor's removal is the release hook's: the broker socket goes too."""
    import socket

    registry = Registry(settings.rundir)
    stale = "5a1c0000-0000-4000-8000-0000000000ab"
    channel = socket_channel(settings, stale)
    path = channel.path or ""
    bound_socket(path)
    broker = socket.socket(socket.AF_UNIX)
    broker.bind(broker_socket_for(path))
    if broker_listening:
        broker.listen(1)  # a running broker that has not polled the registry yet
    else:
        broker.close()
    registry.put(DomainRecord(stale, "gone", "test", "running",
                              (ChannelRecord.from_channel(channel, created_dir=True),)))
    monitor = Monitor(TEST_URI, settings, registry)
    monitor.connect()
    try:
        assert monitor.reconcile().removed == [stale]
    finally:
        monitor.close()
        broker.close()
    assert not os.path.exists(domain_socket_dir(settings, stale))


def test_reconcile_spares_a_path_claimed_by_another_domain(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(settings.rundir)
    owner, stale = "5a1c0000-0000-4000-8000-0000000000a1", "5a1c0000-0000-4000-8000-0000000000a2"
    channel = socket_channel(settings, owner)
    bound_socket(channel.path or "")
    registry.claim_paths(DomainRecord(owner, "owner", "libxl", "running",
                                      (ChannelRecord.from_channel(channel),)))
    # A record that names the owner's path (as a conflicting reconnect writes it).
    registry.put(DomainRecord(stale, "gone", "test", "running",
                              (ChannelRecord.from_channel(channel, created_dir=True),)))
    monitor = Monitor(TEST_URI, settings, registry)
    monitor.connect()
    try:
        with caplog.at_level(logging.INFO, logger="xen_channel_backend.monitor"):
            assert monitor.reconcile().removed == [stale]
    finally:
        monitor.close()
    assert os.path.lexists(channel.path or "")
    assert any("claimed by another domain" in r.getMessage() for r in caplog.records)


def test_second_reconcile_with_no_changes_does_no_work(settings: Settings, conn: Any) -> None:
    uuid = "5a1c0000-0000-4000-8000-000000000004"
    domain = conn.createXML(make_domain_xml(domain_name("steady"), [PTY], uuid), 0)
    monitor = Monitor(TEST_URI, settings, Registry(settings.rundir))
    monitor.connect()
    try:
        first = monitor.reconcile()
        assert uuid in first.synced
        assert live_metadata(domain) == metadata.Metadata((PTY,), "running")
        assert monitor.reconcile().synced == []
        # Someone else rewrites the record behind the monitor's back: the
        # next reconcile notices (the listed record differs) and fixes it.
        registry = Registry(settings.rundir)
        record = registry.get(uuid)
        assert record is not None and record.state == "running"
        registry.put(record.replace(state="stopped"))
        assert monitor.reconcile().synced == [uuid]
        assert record_state(settings, uuid) == "running"
    finally:
        domain.destroy()
        monitor.close()


def test_connect_failure_is_retried_with_backoff(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = Monitor("test:///nonexistent/xcb-no-such-file.xml", settings,
                      Registry(settings.rundir))
    attempts: list[str] = []

    class StopAfterTwo(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            attempts.append(record.getMessage())
            if len(attempts) == 2:
                monitor.stop()

    handler = StopAfterTwo()
    logging.getLogger("xen_channel_backend.monitor").addHandler(handler)
    try:
        assert monitor.connect_with_backoff() is False
    finally:
        logging.getLogger("xen_channel_backend.monitor").removeHandler(handler)
        monitor.close()
    assert "retrying in 0.5 s" in attempts[0]
    assert "retrying in 1.0 s" in attempts[1]


def test_cli_rejects_a_non_positive_interval(settings: Settings, capsys: Any) -> None:
    import io

    err = io.StringIO()
    code = main(["monitor", "--rundir", settings.rundir, "--connect", TEST_URI,
                 "--reconcile-interval", "0"], stdout=io.StringIO(), stderr=err)
    assert code == 2
    assert err.getvalue().startswith("xen-channel: error: --reconcile-interval")


def test_monitor_process_exits_cleanly_on_sigterm(settings: Settings) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "xen_channel_backend", "monitor", "--connect", TEST_URI,
         "--rundir", settings.rundir, "--reconcile-interval", "0.2"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "XEN_CHANNEL_CONFIG": "/dev/null"},
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "following domain events" in line:
            break
    process.send_signal(signal.SIGTERM)
    out, rest = process.communicate(timeout=30)
    lines.extend(rest.splitlines(keepends=True))
    assert process.returncode == 0, lines
    assert out == ""
    assert all(line.startswith("xen-channel: ") for line in lines), lines
    assert "received SIGTERM" in "".join(lines)
    assert lines[-1].strip() == "xen-channel: monitor stopped"


UNIT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "systemd", "xen-channel-monitor.service")


def test_systemd_unit_runs_the_monitor_and_verifies(tmp_path: Any) -> None:
    import shutil

    with open(UNIT, encoding="utf-8") as handle:
        text = handle.read()
    assert "\nExecStart=/usr/bin/xen-channel monitor\n" in text
    assert "\nKillSignal=SIGTERM\n" in text  # run() returns 0 on it (test above)
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("SYSTEMD UNIT NOT VERIFIED: systemd-analyze is not installed (package systemd)")
    # Point ExecStart at this venv's entry point so verify can check it exists.
    entry = os.path.join(os.path.dirname(sys.executable), "xen-channel")
    copy = tmp_path / "xen-channel-monitor.service"
    copy.write_text(text.replace("/usr/bin/xen-channel", entry), encoding="utf-8")
    # --man=no: Documentation=man:xen-channel(1) exists once the Debian package
    # installs it; tests/integration/test_debs.py verifies the installed unit with it.
    result = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert str(copy) not in result.stderr, result.stderr


# --- text from libvirt, the registry and files reaches the log escaped (issue 9) -------
#
# ESC sequences (colour, OSC 52 clipboard writes), a C1 CSI, a bidi override and
# a Unicode line separator.  A channel path may hold only the last three: the
# model refuses C0 controls in paths.

HOSTILE = "a\x1b[31mred\x1b]52;c;SGVsbG8=\x07b\u202ec\u2028d\x9be"
HOSTILE_PATH_PART = "x\u202ey\u2028z\x9b"
RAW = ("\x1b", "\x07", "\u202e", "\u2028", "\x9b")


def assert_escaped(text: str) -> None:
    assert not any(c in text for c in RAW), repr(text)
    assert "\\u202e" in text and "\\u2028" in text and "\\x9b" in text, repr(text)


def test_removed_paths_are_escaped_in_the_log(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    registry = Registry(settings.rundir)
    stale = "5a1c0000-0000-4000-8000-0000000000e1"
    path = os.path.join(domain_socket_dir(settings, stale), HOSTILE_PATH_PART)
    bound_socket(path)
    channel = Channel("org.example.agent.0", Connection.SOCKET, path)
    registry.put(DomainRecord(stale, "gone", "test", "running",
                              (ChannelRecord.from_channel(channel, created_dir=True),)))
    monitor = Monitor(TEST_URI, settings, registry)
    monitor.connect()
    try:
        with caplog.at_level(logging.INFO, logger="xen_channel_backend.monitor"):
            assert monitor.reconcile().removed == [stale]
    finally:
        monitor.close()
    assert not os.path.lexists(path)
    (line,) = [r.getMessage() for r in caplog.records if "no longer exists" in r.getMessage()]
    assert_escaped(line)


def test_live_channel_paths_are_escaped_in_the_log(
    settings: Settings, conn: Any, caplog: pytest.LogCaptureFixture
) -> None:
    uuid = "5a1c0000-0000-4000-8000-0000000000e2"
    channel = Channel("org.example.agent.0", Connection.SOCKET,
                      f"{settings.rundir}/{uuid}/{HOSTILE_PATH_PART}", target=Target.VIRTIO)
    domain = conn.createXML(make_domain_xml(domain_name("hostile"), [channel], uuid), 0)
    monitor = Monitor(TEST_URI, settings, Registry(settings.rundir))
    monitor.connect()
    try:
        with caplog.at_level(logging.INFO, logger="xen_channel_backend.monitor"):
            monitor.sync(uuid)
    finally:
        domain.destroy()
        monitor.close()
    lines = [r.getMessage() for r in caplog.records if "metadata written" in r.getMessage()]
    assert len(lines) == 1
    assert_escaped(lines[0])


def test_libvirt_error_text_is_escaped_in_the_log(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """libvirt echoes what it was asked about in its messages ("no network with
    matching name ..."); a step that fails on such text logs it escaped."""
    monitor = Monitor(TEST_URI, settings, Registry(settings.rundir))
    monitor.connect()
    try:
        with caplog.at_level(logging.INFO, logger="xen_channel_backend.monitor"):
            assert not monitor._attempt("lookup", lambda: monitor.conn.networkLookupByName(HOSTILE))
    finally:
        monitor.close()
    (line,) = [r.getMessage() for r in caplog.records if "libvirt error" in r.getMessage()]
    assert "no network with matching name" in line
    assert_escaped(line)
