"""Shared helpers for the monitor and API tests (test:///default and a short run directory).

Import the fixtures by their function names (``settings_fixture``,
``conn_fixture``); pytest knows them as ``settings`` and ``conn``.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import uuid as uuidlib
from collections.abc import Callable, Iterator
from typing import Any

import libvirt
import pytest
from waiting import wait_for

from xen_channel_backend import metadata
from xen_channel_backend.domxml import parse_domain, serialize
from xen_channel_backend.model import Channel
from xen_channel_backend.monitor import Monitor
from xen_channel_backend.registry import Registry
from xen_channel_backend.settings import Settings, load_settings

TEST_URI = "test:///default"


@pytest.fixture(name="settings")
def settings_fixture() -> Iterator[Settings]:
    """Settings with a fresh run directory short enough for the 52-byte limit (paths.py)."""
    top = tempfile.mkdtemp(prefix="xcb-", dir="/tmp")
    config = os.path.join(top, "xen-channel.conf")
    with open(config, "w", encoding="utf-8") as handle:
        handle.write("[xen-channel]\nallowed_roots =\n")
    try:
        yield load_settings(os.path.join(top, "run"), environ={"XEN_CHANNEL_CONFIG": config})
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(name="conn")
def conn_fixture() -> Iterator[Any]:
    connection = libvirt.open(TEST_URI)
    try:
        yield connection
    finally:
        connection.close()


def wait_until(predicate: Callable[[], object], what: str, limit: float = 20.0) -> None:
    """waiting.wait_for with the monitor's hang guard (it reconnects with backoff)."""
    wait_for(predicate, what, timeout=limit)


def domain_name(tag: str) -> str:
    return f"xcb-mon-{tag}-{uuidlib.uuid4().hex[:8]}"


def make_domain_xml(name: str, channels: list[Channel], uuid: str | None = None) -> str:
    """A test-driver domain with pty/unix virtio channels and our persistent metadata."""
    devices = []
    for channel in channels:
        source = f"<source mode='bind' path='{channel.path}'/>" if channel.path else ""
        kind = "unix" if channel.connection == "socket" else "pty"
        devices.append(
            f"<channel type='{kind}'>{source}"
            f"<target type='{channel.target.value}' name='{channel.name}'/></channel>"
        )
    text = (
        f"<domain type='test'><name>{name}</name><uuid>{uuid or uuidlib.uuid4()}</uuid>"
        "<memory>65536</memory><os><type>hvm</type></os>"
        f"<devices>{''.join(devices)}</devices></domain>"
    )
    tree = parse_domain(text.encode(), name)
    metadata.set_domain_metadata(tree.getroot(), channels)
    return serialize(tree)


def live_metadata(domain: Any) -> metadata.Metadata | None:
    try:
        text = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata.NAMESPACE,
                               libvirt.VIR_DOMAIN_AFFECT_LIVE)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return None
        raise
    return metadata.parse_metadata(text)


class MonitorThread:
    """``Monitor.serve`` in a thread (the real loop; only the signal handling of run() differs)."""

    def __init__(self, settings: Settings, uri: str = TEST_URI, interval: float = 60.0) -> None:
        self.monitor = Monitor(uri, settings, Registry(settings.rundir),
                               reconcile_interval=interval)
        self.result: list[int] = []
        self.thread = threading.Thread(target=lambda: self.result.append(self.monitor.serve()),
                                       daemon=True)

    def __enter__(self) -> Monitor:
        self.thread.start()
        wait_until(lambda: self.monitor.conn is not None, "the monitor to connect")
        return self.monitor

    def __exit__(self, *exc: object) -> None:
        self.monitor.stop()
        self.thread.join(30)
        self.monitor.close()
        assert self.result == [0]


def bound_socket(path: str) -> None:
    """Leave a real (closed) Unix socket file at ``path``, as QEMU would."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    finally:
        sock.close()
