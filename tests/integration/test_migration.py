"""Live migration, save and restore between two REAL libvirtd daemons, with our hooks installed.

Two daemons run on this machine as two "hosts" (tests/integration/two_daemons.py):
each in its own mount namespace, with its own xen-channel settings file and a
different run directory that only its own namespace can see.  Our hooks are
installed on each with the real ``xen-channel install-hooks --config`` and
SIGHUP.  A TCG domain gets its channel paths from ``xen-channel fill`` under
the source's settings, and then moves for real: ``virsh migrate --live``,
``virsh save``/``restore`` and ``managedsave``/``start``.

What libvirt does here (tested): on a live migration the destination runs
``migrate begin`` (whose XML output it uses), then prepare, start and started,
all before the source sends memory; the source runs stopped and release after
the destination resumes.  ``virsh save`` runs stopped and release; ``virsh
restore`` and ``managedsave`` + ``start`` run ``restore begin`` and then
prepare, start and started.  A small observer hook (``00-xcb-observer``, run
before ours in byte order) logs each call so the tests can see which ran.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import uuid as uuid_module
from collections.abc import Iterator
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/

from libvirtd import new_domain_name, tcg_domain_xml  # noqa: E402
from two_daemons import XEN_CHANNEL, Daemon, TwoDaemons, skip_reason  # noqa: E402
from waiting import wait_for  # noqa: E402

CHANNELS = ("org.example.test.0", "org.example.test.1")
NAMESPACE = "urn:xen-channel-backend:channels:1"
OBSERVER = "/etc/libvirt/hooks/qemu.d/00-xcb-observer"
OBSERVER_LOG = "/run/libvirt/xcb-hook-calls.log"
OBSERVER_TEXT = f"""#!/bin/sh
# Test instrument: logs which qemu hook calls libvirtd made (DOMAIN OP SUBOP).
printf '%s %s %s\\n' "$1" "$2" "$3" >> {OBSERVER_LOG}
"""

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair() -> Iterator[TwoDaemons]:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    daemons = TwoDaemons()
    daemons.start()
    try:
        for daemon in (daemons.a, daemons.b):
            observer = daemon.private(OBSERVER)
            os.makedirs(os.path.dirname(observer), exist_ok=True)
            with open(observer, "w", encoding="utf-8") as handle:
                handle.write(OBSERVER_TEXT)
            os.chmod(observer, 0o755)
            daemon.install_hooks()  # the real install-hooks, inside the namespace; SIGHUP
        yield daemons
    finally:
        daemons.stop()


# --- helpers ------------------------------------------------------------------------------


def paths_on(daemon: Daemon, uuid: str) -> list[str]:
    """Where ``paths.socket_path`` puts our channels on this side."""
    return [f"{daemon.rundir}/{uuid}/{name}" for name in CHANNELS]


def define_filled(daemon: Daemon, tmp_path: Any, tag: str = "mig") -> tuple[str, str]:
    """``xen-channel fill`` under ``daemon``'s settings, then define it there; (name, uuid)."""
    name, uuid = new_domain_name(tag), str(uuid_module.uuid4())
    source, filled = tmp_path / f"{name}.xml", tmp_path / f"{name}.filled.xml"
    source.write_text(tcg_domain_xml(name, uuid, channels=[(c, None) for c in CHANNELS]))
    daemon.xen_channel("fill", "--all-targets", str(source), "-o", str(filled))
    assert channel_paths(filled.read_text()) == paths_on(daemon, uuid)
    daemon.virsh("define", str(filled))
    return name, uuid


def channel_paths(xml: str) -> list[str]:
    """The ``<source path>`` of each ``<channel>`` in domain XML, in order."""
    from lxml import etree

    root = etree.fromstring(xml.encode())
    found = root.xpath("devices/channel/source/@path")
    assert isinstance(found, list)
    return [str(path) for path in found]


def live_metadata_paths(daemon: Daemon, name: str) -> list[str]:
    """Our ``<xcb:channels>`` in the live definition, read through libvirt's API."""
    from xen_channel_backend import api

    return [str(info.path) for info in api.remote_channels(daemon.uri, name)]


def claims(daemon: Daemon, paths: list[str]) -> dict[str, str | None]:
    """Who holds each path's claim in ``daemon``'s registry (inside its namespace)."""
    code = (
        "import json, sys\n"
        "from xen_channel_backend.registry import Registry\n"
        "from xen_channel_backend.settings import load_settings\n"
        "registry = Registry(load_settings().rundir)\n"
        "print(json.dumps({p: registry.claim_owner(p) for p in sys.argv[1:]}))\n"
    )
    owners: dict[str, str | None] = json.loads(daemon.python(code, *paths))
    return owners


def hook_calls(daemon: Daemon, name: str) -> list[str]:
    """``OP SUBOP`` of each qemu hook call for ``name`` so far, then forget them."""
    log = daemon.private(OBSERVER_LOG)
    try:
        with open(log, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        os.unlink(log)
    except FileNotFoundError:
        return []
    return [line.split(" ", 1)[1] for line in lines if line.split(" ", 1)[0] == name]


def assert_served_by(daemon: Daemon, name: str, uuid: str) -> None:
    """The domain runs on ``daemon`` with every channel under that side's run directory."""
    expected = paths_on(daemon, uuid)
    assert daemon.virsh("domstate", name).stdout.strip() == "running"
    assert channel_paths(daemon.virsh("dumpxml", name).stdout) == expected
    found = daemon.probe(expected)
    assert all(found[p] == {"kind": "socket", "accepts": True} for p in expected), found
    record = daemon.record(uuid)
    assert record is not None, f"no record on {daemon.tag}"
    assert record["state"] == "running" and record["domain"] == name
    assert [c["path"] for c in record["channels"]] == expected
    assert claims(daemon, expected) == {p: uuid for p in expected}
    assert live_metadata_paths(daemon, name) == expected


def assert_left(daemon: Daemon, name: str, uuid: str) -> None:
    """Nothing of the domain is left on ``daemon``: record, claims, directory."""
    paths = paths_on(daemon, uuid)
    assert daemon.record(uuid) is None
    assert claims(daemon, paths) == {p: None for p in paths}
    directory = f"{daemon.rundir}/{uuid}"
    assert daemon.probe([directory])[directory]["kind"] == "absent"
    owned = daemon.run(["ls", "-A", f"{daemon.rundir}/registry/owned"], check=False).stdout
    assert uuid not in owned


def not_running(daemon: Daemon, name: str) -> bool:
    result = daemon.virsh("domstate", name, check=False)
    return result.returncode != 0 or result.stdout.strip() != "running"


def remove_domain(pair: TwoDaemons, name: str) -> None:
    for daemon in (pair.a, pair.b):
        daemon.virsh("destroy", name, check=False)
        daemon.virsh("undefine", "--managed-save", name, check=False)


# --- live migration -----------------------------------------------------------------------


def test_live_migration_moves_the_channels_to_the_destination(
    pair: TwoDaemons, tmp_path: Any
) -> None:
    name, uuid = define_filled(pair.a, tmp_path)
    try:
        pair.a.virsh("start", name)
        assert_served_by(pair.a, name, uuid)
        hook_calls(pair.b, name)

        pair.migrate(name, pair.a, pair.b)
        # The destination re-allocated every path for its own run directory.
        assert hook_calls(pair.b, name)[:4] == [
            "migrate begin", "prepare begin", "start begin", "started begin"]
        assert_served_by(pair.b, name, uuid)
        # The source: its persistent definition stays, shut off; our state is gone.
        assert not_running(pair.a, name)
        assert_left(pair.a, name, uuid)

        # And back: the same rule in the other direction.
        pair.migrate(name, pair.b, pair.a)
        assert_served_by(pair.a, name, uuid)
        assert_left(pair.b, name, uuid)
    finally:
        remove_domain(pair, name)


def _refuse_in_migrate_hook(pair: TwoDaemons, uuid: str) -> Any:
    # A run directory too long for the path policy: socket_path refuses it.
    pair.b.write_config("/run/libvirt/" + "x" * 60)
    return lambda: pair.b.write_config(pair.b.rundir)


def _refuse_in_prepare_hook(pair: TwoDaemons, uuid: str) -> Any:
    # A regular file where the domain's socket directory must go.
    directory = f"{pair.b.rundir}/{uuid}"
    pair.b.run(["mkdir", "-p", pair.b.rundir])
    pair.b.run(["touch", directory])
    return lambda: pair.b.run(["rm", "-f", directory])


def _refuse_by_a_claim(pair: TwoDaemons, uuid: str) -> Any:
    # Another domain (a leftover of a crash, say) holds a claim on our destination path.
    squatter = str(uuid_module.uuid4())
    path = paths_on(pair.b, uuid)[0]
    pair.b.python(
        "import sys\n"
        "from xen_channel_backend.model import Channel, Connection, Target\n"
        "from xen_channel_backend.registry import (RUNNING, ChannelRecord, DomainRecord,\n"
        "    Registry)\n"
        "from xen_channel_backend.settings import load_settings\n"
        "registry = Registry(load_settings().rundir)\n"
        "record = DomainRecord(sys.argv[1], 'xcbtest-squatter', 'qemu', RUNNING,\n"
        "    (ChannelRecord(Channel('org.example.test.0', Connection.SOCKET, sys.argv[2],\n"
        "                           target=Target.VIRTIO)),))\n"
        "registry.claim_paths(record)\n"
        "registry.put(record)\n",
        squatter, path,
    )
    assert claims(pair.b, [path]) == {path: squatter}
    return lambda: pair.b.python(
        "import sys\n"
        "from xen_channel_backend.registry import Registry\n"
        "from xen_channel_backend.settings import load_settings\n"
        "Registry(load_settings().rundir).remove(sys.argv[1])\n",
        squatter,
    )


OBSTACLES = {
    "migrate-hook-rundir-too-long": (_refuse_in_migrate_hook,
                                     r"migrate hook .*cannot fit the 107-byte limit"),
    "prepare-hook-file-at-socket-dir": (_refuse_in_prepare_hook,
                                        r"prepare hook .*not a plain directory"),
    "prepare-hook-conflicting-claim": (_refuse_by_a_claim, r"prepare hook .*claimed"),
}


@pytest.mark.parametrize("obstacle", sorted(OBSTACLES))
def test_a_refused_migration_leaves_the_domain_on_the_source(
    pair: TwoDaemons, tmp_path: Any, obstacle: str
) -> None:
    make_obstacle, message = OBSTACLES[obstacle]
    name, uuid = define_filled(pair.a, tmp_path, "refused")
    remove_obstacle = None
    try:
        pair.a.virsh("start", name)
        remove_obstacle = make_obstacle(pair, uuid)

        result = pair.migrate(name, pair.a, pair.b, check=False)
        assert result.returncode != 0
        assert re.search(message, result.stderr), result.stderr
        assert "xen-channel: error:" in result.stderr
        # Still running on the source, sockets, record and claims intact.
        assert_served_by(pair.a, name, uuid)
        # Nothing of it on the destination.
        assert pair.b.virsh("domstate", name, check=False).returncode != 0
        assert pair.b.record(uuid) is None

        remove_obstacle()
        remove_obstacle = None
        pair.migrate(name, pair.a, pair.b)
        assert_served_by(pair.b, name, uuid)
        assert_left(pair.a, name, uuid)
    finally:
        if remove_obstacle is not None:
            remove_obstacle()
        remove_domain(pair, name)


# --- save and restore ---------------------------------------------------------------------


def test_save_restore_and_managedsave_run_the_restore_hook(
    pair: TwoDaemons, tmp_path: Any
) -> None:
    name, uuid = define_filled(pair.a, tmp_path, "save")
    image = str(tmp_path / "save.img")
    try:
        pair.a.virsh("start", name)
        assert_served_by(pair.a, name, uuid)
        hook_calls(pair.a, name)

        pair.a.virsh("save", name, image)
        assert hook_calls(pair.a, name) == ["stopped end", "release end"]
        assert_left(pair.a, name, uuid)

        pair.a.virsh("restore", image)
        assert hook_calls(pair.a, name)[:4] == [
            "restore begin", "prepare begin", "start begin", "started begin"]
        assert_served_by(pair.a, name, uuid)

        pair.a.virsh("managedsave", name)
        assert hook_calls(pair.a, name) == ["stopped end", "release end"]
        assert_left(pair.a, name, uuid)

        pair.a.virsh("start", name)
        assert hook_calls(pair.a, name)[:4] == [
            "restore begin", "prepare begin", "start begin", "started begin"]
        assert_served_by(pair.a, name, uuid)
    finally:
        remove_domain(pair, name)


def test_a_save_image_restored_on_the_other_host_gets_that_hosts_paths(
    pair: TwoDaemons, tmp_path: Any
) -> None:
    name, uuid = define_filled(pair.a, tmp_path, "carry")
    image = str(tmp_path / "carry.img")
    try:
        pair.a.virsh("start", name)
        pair.a.virsh("save", name, image)
        assert_left(pair.a, name, uuid)
        hook_calls(pair.b, name)

        pair.b.virsh("restore", image)
        assert hook_calls(pair.b, name)[:4] == [
            "restore begin", "prepare begin", "start begin", "started begin"]
        assert_served_by(pair.b, name, uuid)
        assert_left(pair.a, name, uuid)
    finally:
        remove_domain(pair, name)


# --- the fleet view over both daemons ---------------------------------------------------


def test_list_connect_sees_the_domain_on_both_hosts_after_migration(
    pair: TwoDaemons, tmp_path: Any
) -> None:
    """``xen-channel list/show --connect`` through libvirt's remote protocol, on real daemons."""
    name, uuid = define_filled(pair.a, tmp_path, "fleet")
    try:
        pair.a.virsh("start", name)
        pair.migrate(name, pair.a, pair.b)
        hosts = tmp_path / "fleet.hosts"
        hosts.write_text(f"# two hosts\n{pair.a.uri}\n{pair.b.uri}  # the destination\n")
        listed = subprocess.run([XEN_CHANNEL, "list", "--hosts", str(hosts), "--json"],
                                capture_output=True, text=True, timeout=120, check=False)
        assert (listed.returncode, listed.stderr) == (0, "")
        mine = [d for d in json.loads(listed.stdout) if d["uuid"] == uuid]
        # The source keeps its persistent definition (shut off) with its own paths; the
        # destination runs a transient copy with the paths its migrate hook chose.
        assert [(d["host"], d["state"], d["persistent"], d["driver"]) for d in mine] == [
            (pair.a.uri, "stopped", True, "qemu"), (pair.b.uri, "running", False, "qemu")]
        assert [c["path"] for c in mine[0]["channels"]] == paths_on(pair.a, uuid)
        assert [c["path"] for c in mine[1]["channels"]] == paths_on(pair.b, uuid)

        shown = subprocess.run([XEN_CHANNEL, "show", uuid, "--connect", pair.b.uri, "--json"],
                               capture_output=True, text=True, timeout=120, check=False)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout) == mine[1]
    finally:
        remove_domain(pair, name)


# --- one monitor per host -----------------------------------------------------------------


class Monitor:
    """``xen-channel monitor --connect URI`` running inside one daemon's namespace."""

    def __init__(self, daemon: Daemon) -> None:
        self.process = daemon.spawn([XEN_CHANNEL, "monitor", "--connect", daemon.uri,
                                     "--reconcile-interval", "2"])
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for(lambda: any("following domain events" in line for line in self.lines)
                 or self.process.poll() is not None, f"the monitor on {daemon.tag}")
        assert self.process.poll() is None, "\n".join(self.lines)

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> int:
        self.process.terminate()
        code = self.process.wait(30)
        self._reader.join(10)
        return code


def test_with_one_monitor_per_host_the_live_metadata_follows_the_domain(
    pair: TwoDaemons, tmp_path: Any
) -> None:
    from xen_channel_backend import metadata

    monitors = [Monitor(pair.a), Monitor(pair.b)]
    name, uuid = define_filled(pair.a, tmp_path, "monitored")
    try:
        pair.a.virsh("start", name)

        def live_state(daemon: Daemon) -> str | None:
            result = daemon.virsh("metadata", name, NAMESPACE, "--live", check=False)
            if result.returncode != 0 or not result.stdout.strip():
                return None
            found = metadata.parse_metadata(result.stdout, name)
            paths = [c.path for c in found.channels]
            return found.state if paths == paths_on(daemon, uuid) else None

        wait_for(lambda: live_state(pair.a) == "running", "live metadata on the source")
        pair.migrate(name, pair.a, pair.b)
        wait_for(lambda: live_state(pair.b) == "running", "live metadata on the destination")
        assert_served_by(pair.b, name, uuid)
        # The source's monitor did not bring back what its hooks removed.
        assert_left(pair.a, name, uuid)
    finally:
        remove_domain(pair, name)
        codes = [m.stop() for m in monitors]
    assert codes == [0, 0], [m.lines for m in monitors]
    for monitor in monitors:
        assert all(line.startswith("xen-channel: ") for line in monitor.lines), monitor.lines
