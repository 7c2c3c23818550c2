"""The monitor against a real libvirtd with the QEMU driver (tests/integration/libvirtd.py).

The monitor runs as a subprocess (``python -m xen_channel_backend monitor``)
with our hooks installed, as on a real host, while a TCG domain is defined,
started and destroyed; the live metadata is read back through libvirt-python
and through ``virsh metadata`` at each step.  libvirtd is then SIGKILLed and
restarted under it: the monitor must reconnect and reconcile, removing the
record of a domain that no longer exists.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid as uuidlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from libvirtd import Libvirtd, new_domain_name, running_libvirtd, skip_reason, tcg_domain_xml
from waiting import wait_for

from xen_channel_backend import install, metadata
from xen_channel_backend.cli import main as cli_main
from xen_channel_backend.model import Connection
from xen_channel_backend.paths import domain_socket_dir
from xen_channel_backend.registry import DomainRecord, Registry
from xen_channel_backend.settings import Settings, load_settings

pytestmark = pytest.mark.integration

PTY_CHANNEL = "<channel type='pty'><target type='virtio' name='org.example.console.0'/></channel>"
WAIT = 60.0


def wait_until(predicate: Callable[[], object], what: str) -> None:
    """waiting.wait_for with a real daemon's hang guard (first start probes QEMU)."""
    wait_for(predicate, what, timeout=WAIT)


@pytest.fixture(scope="module")
def daemon() -> Iterator[Libvirtd]:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    with running_libvirtd() as running:
        yield running


@pytest.fixture
def settings(daemon: Libvirtd, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A fresh run directory shared by the hooks (through the shim's config) and the monitor."""
    top = tempfile.mkdtemp(prefix="xcb-", dir="/tmp")
    config = os.path.join(top, "xen-channel.conf")
    with open(config, "w", encoding="utf-8") as handle:
        handle.write(f"[xen-channel]\nrundir = {top}/run\nallowed_roots =\n")
    monkeypatch.setenv("XEN_CHANNEL_CONFIG", config)
    monkeypatch.delenv("XEN_CHANNEL_RUNDIR", raising=False)
    install.install(daemon.hooks_dir, os.path.abspath(sys.executable),
                    install.runtime_pythonpath(), config)
    daemon.sighup()
    try:
        yield load_settings()
    finally:
        install.uninstall(daemon.hooks_dir)
        daemon.sighup()
        shutil.rmtree(top, ignore_errors=True)


class MonitorProcess:
    """``xen-channel monitor`` as a subprocess; its stderr lines are collected."""

    def __init__(self, uri: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "xen_channel_backend", "monitor", "--connect", uri,
             "--reconcile-interval", "2"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def count(self, text: str) -> int:
        return sum(1 for line in list(self.lines) if text in line)

    def wait_for(self, text: str, times: int = 1) -> None:
        wait_until(lambda: self.count(text) >= times or self.process.poll() is not None,
                   f"monitor log line {text!r} x{times}")
        assert self.count(text) >= times, "\n".join(self.lines)

    def stop(self) -> int:
        self.process.terminate()
        code = self.process.wait(30)
        self._reader.join(10)
        return code


@pytest.fixture
def monitor(daemon: Libvirtd, settings: Settings) -> Iterator[MonitorProcess]:
    process = MonitorProcess(daemon.uri)
    try:
        process.wait_for("following domain events")
        yield process
    finally:
        code = process.stop()
        assert code == 0, "\n".join(process.lines)
        assert all(line.startswith("xen-channel: ") for line in process.lines), process.lines


def define_domain(tag: str, tmp_dir: str) -> tuple[str, str]:
    """``xen-channel define --all-targets`` a TCG domain with a unix and a pty channel."""
    name = new_domain_name(tag)
    uuid = str(uuidlib.uuid4())
    xml = tcg_domain_xml(name, uuid, channels=[("org.example.agent.0", None)])
    xml = xml.replace("  </devices>", f"    {PTY_CHANNEL}\n  </devices>")
    path = os.path.join(tmp_dir, f"{name}.xml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(xml)
    code = cli_main(["define", "--all-targets", "--connect", "qemu:///system", path])
    assert code == 0
    return name, uuid


def virsh_metadata(daemon: Libvirtd, name: str, *flags: str) -> metadata.Metadata:
    out = daemon.virsh("metadata", name, metadata.NAMESPACE, *flags).stdout
    return metadata.parse_metadata(out, f"virsh metadata {name}")


def libvirt_metadata(conn: Any, name: str, flags: int) -> metadata.Metadata | None:
    import libvirt

    try:
        text = conn.lookupByName(name).metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                                                metadata.NAMESPACE, flags)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            return None
        raise
    return metadata.parse_metadata(text)


@pytest.fixture
def conn(daemon: Libvirtd) -> Iterator[Any]:
    import libvirt

    connection = libvirt.open(daemon.uri)
    try:
        yield connection
    finally:
        connection.close()


def pty_path(found: metadata.Metadata | None) -> str | None:
    assert found is not None
    return next(c.path for c in found.channels if c.connection is Connection.PTY)


def test_live_metadata_follows_define_start_destroy(
    daemon: Libvirtd, settings: Settings, monitor: MonitorProcess, conn: Any, tmp_path: Any,
) -> None:
    import libvirt

    name, uuid = define_domain("life", str(tmp_path))
    registry = Registry(settings.rundir)

    # Defined: the persistent copy written by define, no state, no pty path yet.
    config = virsh_metadata(daemon, name, "--config")
    assert config.state is None
    assert [c.name for c in config.channels] == ["org.example.agent.0", "org.example.console.0"]
    assert pty_path(config) is None
    socket_path = config.channels[0].path
    assert socket_path is not None and socket_path.startswith(settings.rundir + "/")

    # Started: the monitor writes the live copy with QEMU's pty and state running.
    daemon.virsh("start", name)
    wait_until(lambda: (libvirt_metadata(conn, name, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                        or metadata.Metadata(())).state == "running", "live metadata")
    live = libvirt_metadata(conn, name, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    assert live is not None
    pty = pty_path(live)
    assert pty is not None and pty.startswith("/dev/pts/")
    assert live.channels[0].path == socket_path and os.path.exists(socket_path)
    assert virsh_metadata(daemon, name, "--live") == live
    record = registry.get(uuid)
    assert record is not None and record.state == "running" and record.driver == "qemu"
    assert {c.name: c.path for c in record.channels}["org.example.console.0"] == pty
    # `xen-channel show --json` (the registry, no libvirt) has the live state and pty.
    out = io.StringIO()
    assert cli_main(["show", "--json", name], stdout=out) == 0
    shown = json.loads(out.getvalue())
    assert shown["state"] == "running"
    assert {c["name"]: c["path"] for c in shown["channels"]}["org.example.console.0"] == pty
    # The persistent copy is untouched by the live write.
    assert virsh_metadata(daemon, name, "--config") == config

    # Destroyed: the live copy is gone with the live definition; the release
    # hook removed the record and the socket; the persistent copy remains.
    daemon.virsh("destroy", name)
    wait_until(lambda: registry.get(uuid) is None, "the record to go")
    assert virsh_metadata(daemon, name) == config
    assert libvirt_metadata(conn, name, 0) == config
    assert not os.path.exists(socket_path)

    daemon.virsh("undefine", name)


def test_monitor_survives_libvirtd_sigkill_and_reconciles(
    daemon: Libvirtd, settings: Settings, monitor: MonitorProcess, conn: Any, tmp_path: Any,
) -> None:
    import libvirt

    name, uuid = define_domain("crash", str(tmp_path))
    daemon.virsh("start", name)
    wait_until(lambda: (libvirt_metadata(conn, name, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                        or metadata.Metadata(())).state == "running", "live metadata")
    registry = Registry(settings.rundir)

    daemon.kill9()
    monitor.wait_for("lost the connection")
    # While libvirtd is down: a domain disappears behind its back, leaving a
    # record and a socket directory (as if its release hook never ran).
    stale = str(uuidlib.uuid4())
    stale_dir = domain_socket_dir(settings, stale)
    os.makedirs(stale_dir)
    registry.put(DomainRecord(stale, new_domain_name("gone"), "qemu", "running", ()))

    # The monitor has retried against the dead socket (its log says so) before libvirtd returns.
    monitor.wait_for("retrying in", times=2)
    daemon.start()
    monitor.wait_for("following domain events", times=2)
    # Bounded backoff (0.5 s doubling): a handful of retries, not a busy loop.
    assert 1 <= monitor.count("retrying in") <= 8, "\n".join(monitor.lines)
    monitor.wait_for(f"({stale}) no longer exists")
    assert registry.get(stale) is None
    assert not os.path.exists(stale_dir)

    # The running domain kept its live metadata and record across the crash,
    # and events flow again on the new connection.
    conn2 = libvirt.open(daemon.uri)
    try:
        live = libvirt_metadata(conn2, name, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        assert live is not None and live.state == "running"
        record = registry.get(uuid)
        assert record is not None and record.state == "running"
        daemon.virsh("destroy", name)
        wait_until(lambda: registry.get(uuid) is None, "the record to go after destroy")
        daemon.virsh("undefine", name)
        monitor.wait_for(f"domain '{name}'")
    finally:
        conn2.close()


def test_stale_record_of_an_undefined_domain_is_removed(
    daemon: Libvirtd, settings: Settings, monitor: MonitorProcess, tmp_path: Any,
) -> None:
    name, uuid = define_domain("undef", str(tmp_path))
    registry = Registry(settings.rundir)
    # A record left behind for a defined, stopped domain (no hooks ran for it)...
    registry.put(DomainRecord(uuid, name, "qemu", "running", ()))
    # ... whose domain is then undefined: the undefined event removes it.
    daemon.virsh("undefine", name)
    monitor.wait_for(f"({uuid}) no longer exists")
    assert registry.get(uuid) is None
