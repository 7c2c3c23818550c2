"""Every hook operation through hook.main(), including hostile XML.

Real parts throughout: a real run directory on disk, the real registry and
settings modules, real Unix sockets for the stale-socket cases.
"""

from __future__ import annotations

import contextlib
import grp
import io
import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hook_fixtures import HookHost, channel_xml, domain_xml, host, new_uuid

from xen_channel_backend import channelxml, hook
from xen_channel_backend.model import Target
from xen_channel_backend.registry import Registry

__all__ = ["host"]  # the fixture, re-exported for pytest


def call(
    h: HookHost, driver: str, op: str, subop: str, xml: bytes | str, domain: str = "vm1"
) -> tuple[int, str, str]:
    data = xml.encode() if isinstance(xml, str) else xml
    out, err = io.StringIO(), io.StringIO()
    code = hook.main([driver, domain, op, subop, "-"], io.BytesIO(data), out, err, h.environ)
    return code, out.getvalue(), err.getvalue()


def xen_domain(h: HookHost, uuid: str, *names: str, name: str = "vm1") -> bytes:
    return domain_xml(name, uuid, [
        channel_xml("unix", "xen", n, f"{h.domain_dir(uuid)}/{n}") for n in names
    ])


def stale_socket(path: str) -> None:
    """Leave a socket file behind, as a killed QEMU does."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.close()


@contextlib.contextmanager
def live_socket(path: str) -> Iterator[socket.socket]:
    """A socket somebody listens on (another domain's QEMU, any server)."""
    server = socket.socket(socket.AF_UNIX)
    try:
        server.bind(path)
        server.listen(1)
        yield server
    finally:
        server.close()


def record(h: HookHost, uuid: str) -> dict[str, Any] | None:
    found = Registry(h.rundir).get(uuid)
    return json.loads(found.to_json()) if found else None


# --- prepare -----------------------------------------------------------------------


def test_prepare_creates_private_dir_claims_and_records(host: HookHost) -> None:
    uuid = new_uuid()
    code, out, err = call(host, "libxl", "prepare", "begin", xen_domain(host, uuid, "org.a.0"))
    assert (code, out, err) == (0, "", "")
    info = os.lstat(host.domain_dir(uuid))
    assert stat.S_ISDIR(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o750
    assert (info.st_uid, info.st_gid) == (0, grp.getgrnam("nogroup").gr_gid)
    rec = record(host, uuid)
    assert rec is not None
    assert rec["state"] == "preparing" and rec["driver"] == "libxl" and rec["name"] == "vm1"
    assert rec["channels"] == [{
        "name": "org.a.0", "connection": "socket", "path": f"{host.domain_dir(uuid)}/org.a.0",
        "target": "xen", "created_dir": True,
    }]
    assert Registry(host.rundir).claim_owner(f"{host.domain_dir(uuid)}/org.a.0") == uuid


def test_prepare_removes_a_stale_socket(host: HookHost) -> None:
    uuid = new_uuid()
    os.makedirs(host.domain_dir(uuid))
    path = f"{host.domain_dir(uuid)}/org.a.0"
    stale_socket(path)
    code, _, err = call(host, "libxl", "prepare", "begin", xen_domain(host, uuid, "org.a.0"))
    assert (code, err) == (0, "")
    assert not os.path.lexists(path)


@pytest.mark.parametrize("kind", ["file", "dir", "symlink"])
def test_prepare_never_removes_anything_but_a_socket(host: HookHost, kind: str) -> None:
    uuid = new_uuid()
    os.makedirs(host.domain_dir(uuid))
    path = f"{host.domain_dir(uuid)}/org.a.0"
    if kind == "file":
        with open(path, "w") as handle:
            handle.write("precious")
    elif kind == "dir":
        os.mkdir(path)
    else:
        os.symlink("/etc/passwd", path)
    code, out, err = call(host, "libxl", "prepare", "begin", xen_domain(host, uuid, "org.a.0"))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("xen-channel: error: prepare hook for domain")
    assert "only a stale socket" in err
    assert os.path.lexists(path)
    if kind == "file":
        with open(path) as handle:
            assert handle.read() == "precious"
    # Nothing left claimed or recorded: the path is free for a fixed retry.
    assert record(host, uuid) is None
    assert Registry(host.rundir).claim_owner(path) is None


def test_prepare_refuses_a_live_socket(host: HookHost) -> None:
    uuid = new_uuid()
    os.makedirs(host.domain_dir(uuid))
    path = f"{host.domain_dir(uuid)}/org.a.0"
    with live_socket(path):
        code, out, err = call(host, "libxl", "prepare", "begin", xen_domain(host, uuid, "org.a.0"))
        assert code == 1 and out == "" and err.count("\n") == 1
        assert "is a live socket in use by another process" in err
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert record(host, uuid) is None
    assert Registry(host.rundir).claim_owner(path) is None


def test_release_leaves_a_live_socket_and_warns(host: HookHost) -> None:
    uuid = new_uuid()
    xml = xen_domain(host, uuid, "org.a.0")
    assert call(host, "libxl", "prepare", "begin", xml)[0] == 0
    path = f"{host.domain_dir(uuid)}/org.a.0"
    with live_socket(path):
        code, out, err = call(host, "libxl", "release", "end", xml)
        assert (code, out) == (0, "")
        assert "is a live socket in use by another process" in err and shown_path(path) in err
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert record(host, uuid) is None


def shown_path(path: str) -> str:
    return f"'{path}'"


def test_qemu_connect_mode_channel_is_not_ours(host: HookHost) -> None:
    """QEMU is the client there: the server socket belongs to someone else."""
    uuid = new_uuid()
    server_dir = os.path.join(host.extra_root, "server")
    os.mkdir(server_dir)
    server_path = os.path.join(server_dir, "agent.sock")
    absent_dir_path = os.path.join(host.extra_root, "nowhere", "agent.sock")
    connect = ("<channel type='unix'><source mode='connect' path='{}'/>"
               "<target type='virtio' name='{}'/></channel>")
    xml = domain_xml("vm1", uuid, [
        connect.format(server_path, "org.c.0"),
        connect.replace(" mode='connect'", "").format(absent_dir_path, "org.d.0"),
    ], domain_type="kvm")
    with live_socket(server_path):
        for op, subop in (("prepare", "begin"), ("start", "begin"), ("started", "begin")):
            assert call(host, "qemu", op, subop, xml) == (0, "", ""), op
            rec = record(host, uuid)
            assert rec is not None and rec["channels"] == []
        assert Registry(host.rundir).claim_owner(server_path) is None
        assert not os.path.exists(os.path.dirname(absent_dir_path))
        assert call(host, "qemu", "release", "end", xml) == (0, "", "")
        assert stat.S_ISSOCK(os.lstat(server_path).st_mode)
    # libxl ignores the mode: Xen's QEMU listens there, so it is ours (background.md §2),
    # and the server's socket file, now stale, is cleared for it.
    assert call(host, "libxl", "prepare", "begin", xml.replace(b"virtio", b"xen"))[0] == 0
    assert Registry(host.rundir).claim_owner(server_path) == uuid
    assert not os.path.lexists(server_path)


def test_a_path_outside_the_roots_is_not_ours(host: HookHost, tmp_path: Path) -> None:
    """The rule: a domain that starts without our hooks starts with them.  A
    channel outside every allowed root is recorded and claimed, nothing more:
    no directory is made, nothing there is removed, nothing is refused."""
    uuid = new_uuid()
    app = tmp_path / "myapp"  # does not exist: we must not create it
    taken = tmp_path / "taken"
    taken.write_text("not a socket")
    before = os.stat("/etc/passwd")
    xml = domain_xml("foreign", uuid, [
        channel_xml("unix", "xen", "org.a.0", "/etc/passwd"),
        channel_xml("unix", "xen", "org.b.0", f"{app}/agent.sock"),
        channel_xml("unix", "xen", "org.c.0", str(taken)),
    ])
    for op, subop in (("prepare", "begin"), ("start", "begin"), ("started", "begin")):
        assert call(host, "libxl", op, subop, xml, domain="foreign") == (0, "", "")
    assert os.stat("/etc/passwd") == before
    assert not app.exists() and taken.read_text() == "not a socket"
    found = record(host, uuid)
    assert found is not None
    assert [c["path"] for c in found["channels"]] == [
        "/etc/passwd", f"{app}/agent.sock", str(taken)]
    assert not any(c["created_dir"] for c in found["channels"])
    for op, subop in (("stopped", "end"), ("release", "end")):
        assert call(host, "libxl", op, subop, xml, domain="foreign") == (0, "", "")
    assert os.stat("/etc/passwd") == before and taken.read_text() == "not a socket"
    assert record(host, uuid) is None


def test_two_running_domains_on_one_foreign_path_are_refused(
    host: HookHost, tmp_path: Path
) -> None:
    """The one exception to the rule: QEMU would unlink and steal the other's socket."""
    path = f"{tmp_path}/shared.sock"
    first, second = new_uuid(), new_uuid()
    assert call(host, "qemu", "prepare", "begin", domain_xml(
        "vm-first", first, [channel_xml("unix", "virtio", "org.a.0", path)]))[0] == 0
    code, _, err = call(host, "qemu", "prepare", "begin", domain_xml(
        "vm-second", second, [channel_xml("unix", "virtio", "org.a.0", path)]),
        domain="vm-second")
    assert code == 1 and err.count("\n") == 1
    assert "vm-first" in err and "vm-second" in err
    assert record(host, second) is None


def test_prepare_refuses_another_domains_directory(host: HookHost) -> None:
    uuid, other = new_uuid(), new_uuid()
    xml = domain_xml("vm1", uuid, [
        channel_xml("unix", "xen", "org.a.0", f"{host.domain_dir(other)}/org.a.0"),
    ])
    code, _, err = call(host, "libxl", "prepare", "begin", xml)
    assert code == 1 and "not in this domain's directory" in err


@pytest.mark.parametrize("bad", [
    ("name", "../../etc/evil"),
    ("path", "/tmp/../etc/shadow"),
    ("path", "relative/sock"),
    ("name", "a b"),
])
def test_prepare_refuses_dot_dot_and_bad_names(host: HookHost, bad: tuple[str, str]) -> None:
    uuid = new_uuid()
    field, value = bad
    name = value if field == "name" else "org.a.0"
    path = value if field == "path" else f"{host.domain_dir(uuid)}/org.a.0"
    xml = domain_xml("vm1", uuid, [channel_xml("unix", "xen", name, path)])
    code, out, err = call(host, "libxl", "prepare", "begin", xml)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert not os.path.exists("/tmp/etc") and record(host, uuid) is None


def test_prepare_does_not_follow_a_symlinked_domain_dir(host: HookHost) -> None:
    uuid = new_uuid()
    elsewhere = os.path.join(host.base, "elsewhere")
    os.mkdir(elsewhere)
    os.makedirs(host.rundir)
    os.symlink(elsewhere, host.domain_dir(uuid))
    stale_socket(os.path.join(elsewhere, "org.a.0"))
    code, _, err = call(host, "libxl", "prepare", "begin", xen_domain(host, uuid, "org.a.0"))
    assert code == 1 and "not a plain directory" in err
    assert os.listdir(elsewhere) == ["org.a.0"]  # the socket over there survives
    assert record(host, uuid) is None


def test_prepare_refuses_a_symlinked_run_dir(host: HookHost) -> None:
    uuid = new_uuid()
    elsewhere = os.path.join(host.base, "elsewhere")
    os.mkdir(elsewhere)
    os.symlink(elsewhere, host.rundir)
    code, _, err = call(host, "libxl", "prepare", "begin", xen_domain(host, uuid, "org.a.0"))
    assert code == 1 and "run directory" in err
    assert os.listdir(elsewhere) == []


def test_prepare_explicit_path_in_an_extra_root(host: HookHost) -> None:
    uuid = new_uuid()
    path = os.path.join(host.extra_root, "vm1", "agent.sock")
    xml = domain_xml("vm1", uuid, [channel_xml("unix", "xen", "org.a.0", path)])
    assert call(host, "libxl", "prepare", "begin", xml)[0] == 0
    assert stat.S_IMODE(os.lstat(os.path.dirname(path)).st_mode) == 0o750
    assert call(host, "libxl", "release", "end", xml)[0] == 0
    assert not os.path.exists(os.path.dirname(path))
    assert os.path.isdir(host.extra_root)


def test_two_domains_one_path_second_fails_naming_both(host: HookHost) -> None:
    first, second = new_uuid(), new_uuid()
    path = os.path.join(host.extra_root, "shared.sock")
    xml1 = domain_xml("alpha", first, [channel_xml("unix", "xen", "org.a.0", path)])
    xml2 = domain_xml("beta", second, [channel_xml("unix", "xen", "org.a.0", path)])
    assert call(host, "libxl", "prepare", "begin", xml1, domain="alpha")[0] == 0
    code, _, err = call(host, "libxl", "prepare", "begin", xml2, domain="beta")
    assert code == 1 and "'alpha'" in err and "'beta'" in err and first in err
    assert record(host, second) is None
    assert Registry(host.rundir).claim_owner(path) == first


def test_failed_prepare_releases_only_what_it_claimed(host: HookHost) -> None:
    uuid = new_uuid()
    good = f"{host.domain_dir(uuid)}/org.a.0"
    blocked = os.path.join(host.extra_root, "blocked")
    with open(blocked, "w"):
        pass
    xml = domain_xml("vm1", uuid, [channel_xml("unix", "xen", "org.a.0", good),
                                  channel_xml("unix", "xen", "org.b.0", blocked)])
    assert call(host, "libxl", "prepare", "begin", xml)[0] == 1
    registry = Registry(host.rundir)
    assert registry.claim_owner(good) is None and registry.claim_owner(blocked) is None
    assert not os.path.exists(host.domain_dir(uuid))  # the directory it made is gone too
    assert os.path.isfile(blocked)


def test_prepare_without_uuid_fails(host: HookHost) -> None:
    xml = domain_xml("vm1", None, [channel_xml("unix", "xen", "org.a.0", "/x/y")])
    code, _, err = call(host, "libxl", "prepare", "begin", xml)
    assert code == 1 and "<uuid>" in err


def test_prepare_rejects_doctype(host: HookHost) -> None:
    xml = b"<!DOCTYPE d [<!ENTITY x 'y'>]><domain><channel/></domain>"
    code, _, err = call(host, "qemu", "prepare", "begin", xml)
    assert code == 1 and "DOCTYPE" in err


def test_libxl_ignores_virtio_qemu_manages_it(host: HookHost) -> None:
    uuid = new_uuid()
    path = f"{host.domain_dir(uuid)}/org.qemu.guest_agent.0"
    xml = domain_xml("vm1", uuid, [
        channel_xml("unix", "virtio", "org.qemu.guest_agent.0", path),
        "<channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>",
    ], domain_type="kvm")
    assert call(host, "libxl", "prepare", "begin", xml)[0] == 0
    rec = record(host, uuid)
    assert rec is not None and rec["channels"] == []
    assert call(host, "libxl", "release", "end", xml)[0] == 0
    assert call(host, "qemu", "prepare", "begin", xml)[0] == 0
    rec = record(host, uuid)
    assert rec is not None and [c["path"] for c in rec["channels"]] == [path]
    assert os.path.isdir(host.domain_dir(uuid))


# --- start / started ----------------------------------------------------------------


def test_started_records_live_xml_as_running(host: HookHost) -> None:
    """start is answered by the shim alone (and is a no-op here): started sees
    everything start would, plus the pty paths."""
    uuid = new_uuid()
    sock = f"{host.domain_dir(uuid)}/org.a.0"
    defined = domain_xml("vm1", uuid, [channel_xml("unix", "xen", "org.a.0", sock),
                                      channel_xml("pty", "xen", "org.p.0")])
    live = domain_xml("vm1", uuid, [channel_xml("unix", "xen", "org.a.0", sock),
                                   channel_xml("pty", "xen", "org.p.0", "/dev/pts/7")])
    assert call(host, "libxl", "prepare", "begin", defined)[0] == 0
    assert call(host, "libxl", "start", "begin", defined) == (0, "", "")
    rec = record(host, uuid)
    assert rec is not None and rec["state"] == "preparing"
    assert call(host, "libxl", "started", "begin", live) == (0, "", "")
    rec = record(host, uuid)
    assert rec is not None and rec["state"] == "running"
    assert rec["channels"] == [
        {"name": "org.a.0", "connection": "socket", "path": sock, "target": "xen",
         "created_dir": True},
        {"name": "org.p.0", "connection": "pty", "path": "/dev/pts/7", "target": "xen",
         "created_dir": False},
    ]


# --- stopped / release ---------------------------------------------------------------


def test_release_removes_everything_and_is_idempotent(host: HookHost) -> None:
    """stopped is answered by the shim alone: release always follows it."""
    uuid = new_uuid()
    xml = xen_domain(host, uuid, "org.a.0", "org.b.0")
    assert call(host, "libxl", "prepare", "begin", xml)[0] == 0
    stale_socket(f"{host.domain_dir(uuid)}/org.a.0")  # what QEMU leaves behind
    assert call(host, "libxl", "stopped", "end", xml) == (0, "", "")
    assert os.path.exists(host.domain_dir(uuid))
    assert call(host, "libxl", "release", "end", xml) == (0, "", "")
    assert not os.path.exists(host.domain_dir(uuid))
    assert record(host, uuid) is None
    assert Registry(host.rundir).claim_owner(f"{host.domain_dir(uuid)}/org.a.0") is None
    assert call(host, "libxl", "release", "end", xml) == (0, "", "")
    assert call(host, "libxl", "release", "end", xml) == (0, "", "")


def test_release_also_removes_a_running_brokers_socket(host: HookHost) -> None:
    from xen_channel_backend.paths import broker_socket_for

    uuid = new_uuid()
    xml = xen_domain(host, uuid, "org.a.0")
    assert call(host, "libxl", "prepare", "begin", xml)[0] == 0
    qemu_socket = f"{host.domain_dir(uuid)}/org.a.0"
    stale_socket(qemu_socket)
    stale_socket(broker_socket_for(qemu_socket))  # the broker has not polled yet
    assert call(host, "libxl", "release", "end", xml) == (0, "", "")
    assert not os.path.exists(host.domain_dir(uuid))


def test_release_removes_a_listening_brokers_socket_in_our_directory(host: HookHost) -> None:
    """The broker listens until its next registry poll; its socket must not pin our dir."""
    from xen_channel_backend.paths import broker_socket_for

    uuid = new_uuid()
    xml = xen_domain(host, uuid, "org.a.0")
    assert call(host, "libxl", "prepare", "begin", xml)[0] == 0
    with live_socket(broker_socket_for(f"{host.domain_dir(uuid)}/org.a.0")):
        assert call(host, "libxl", "release", "end", xml) == (0, "", "")
        assert not os.path.exists(host.domain_dir(uuid))


def test_prepare_leaves_a_shared_directory_of_another_root_as_it_is(host: HookHost) -> None:
    # Like libvirt's 0777 libxl channel directory: not ours to repair.
    shared = os.path.join(host.extra_root, "target")
    os.makedirs(shared)
    os.chmod(shared, 0o777)
    xml = domain_xml("shared", new_uuid(),
                     [channel_xml("unix", "xen", "a.0", os.path.join(shared, "a.0"))])
    assert call(host, "libxl", "prepare", "begin", xml)[0] == 0
    assert stat.S_IMODE(os.stat(shared).st_mode) == 0o777


def test_release_without_prepare_is_fine(host: HookHost) -> None:
    assert call(host, "libxl", "release", "end", xen_domain(host, new_uuid(), "a.0")) == (0, "", "")


def test_release_leaves_foreign_files_in_our_dir(host: HookHost) -> None:
    uuid = new_uuid()
    xml = xen_domain(host, uuid, "org.a.0")
    assert call(host, "libxl", "prepare", "begin", xml)[0] == 0
    foreign = os.path.join(host.domain_dir(uuid), "notes.txt")
    with open(foreign, "w"):
        pass
    code, _, err = call(host, "libxl", "release", "end", xml)
    assert code == 0 and "left" in err
    assert os.path.exists(foreign) and record(host, uuid) is None


# --- reconnect --------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"", b"\x00\xff garbage", b"<domain><uuid>nope</uuid>",
                                     b"<notadomain/>", b"<!DOCTYPE x><domain/>"])
def test_reconnect_never_fails(host: HookHost, garbage: bytes) -> None:
    code, out, err = call(host, "qemu", "reconnect", "begin", garbage)
    assert code == 0 and out == ""
    assert err.count("\n") <= 1


def test_reconnect_registers_running(host: HookHost) -> None:
    uuid = new_uuid()
    assert call(host, "libxl", "reconnect", "begin", xen_domain(host, uuid, "org.a.0"))[0] == 0
    rec = record(host, uuid)
    assert rec is not None and rec["state"] == "running"


def test_reconnect_with_a_conflicting_path_still_exits_0(host: HookHost) -> None:
    path = os.path.join(host.extra_root, "s")
    one, two = new_uuid(), new_uuid()
    xml1 = domain_xml("one", one, [channel_xml("unix", "xen", "a.0", path)])
    xml2 = domain_xml("two", two, [channel_xml("unix", "xen", "a.0", path)])
    assert call(host, "libxl", "prepare", "begin", xml1)[0] == 0
    code, out, err = call(host, "libxl", "reconnect", "begin", xml2, domain="two")
    assert (code, out) == (0, "") and "already claimed" in err


def test_release_after_a_conflicting_reconnect_spares_the_owners_socket(host: HookHost) -> None:
    path = os.path.join(host.extra_root, "s")
    one, two = new_uuid(), new_uuid()
    xml1 = domain_xml("one", one, [channel_xml("unix", "xen", "a.0", path)])
    xml2 = domain_xml("two", two, [channel_xml("unix", "xen", "a.0", path)])
    assert call(host, "libxl", "prepare", "begin", xml1)[0] == 0
    stale_socket(path)  # domain one's live socket, as far as files go
    assert call(host, "libxl", "reconnect", "begin", xml2, domain="two")[0] == 0
    code, _, err = call(host, "libxl", "release", "end", xml2, domain="two")
    assert code == 0 and "claimed by another domain" in err
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert Registry(host.rundir).claim_owner(path) == one


def test_hook_never_scans_the_registry(host: HookHost, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its cost must not grow with the number of domains (Registry.list scans)."""
    uuid = new_uuid()
    xml = xen_domain(host, uuid, "org.a.0")
    assert call(host, "libxl", "prepare", "begin", xml)[0] == 0

    def scan(self: Registry) -> list[object]:
        raise AssertionError("Registry.list() called from a hook")

    monkeypatch.setattr(Registry, "list", scan)
    for op, subop in (("prepare", "begin"), ("start", "begin"), ("started", "begin"),
                      ("reconnect", "begin"), ("stopped", "end"), ("release", "end")):
        assert call(host, "libxl", op, subop, xml) == (0, "", ""), op
    other = xen_domain(host, new_uuid(), "org.a.0")
    assert call(host, "libxl", "prepare", "begin", other) == (0, "", "")
    assert call(host, "libxl", "release", "end", other) == (0, "", "")


def test_reconnect_with_unreadable_settings_exits_0(host: HookHost) -> None:
    with open(host.config, "w") as handle:
        handle.write("not an ini file")
    code, _, err = call(host, "libxl", "reconnect", "begin", xen_domain(host, new_uuid(), "a.0"))
    assert code == 0 and err.count("\n") == 1


# --- migrate / restore ---------------------------------------------------------------


@pytest.mark.parametrize(("driver", "op"), [("qemu", "migrate"), ("libxl", "migrate"),
                                            ("qemu", "restore")])
def test_migrate_and_restore_reallocate_our_paths(host: HookHost, driver: str, op: str) -> None:
    uuid = new_uuid()
    foreign_root = f"/var/run/other-host/{uuid}"
    hand_typed = "/var/lib/libvirt/libxl/channel/target/vm1-hand"
    from lxml import etree

    from xen_channel_backend import metadata
    from xen_channel_backend.model import Channel, Connection

    ours = [  # what fill/define wrote on the source host
        Channel("org.a.0", Connection.SOCKET, f"{foreign_root}/org.a.0", target=Target.XEN),
        Channel("org.b.0", Connection.SOCKET, hand_typed, target=Target.XEN),
        Channel("org.p.0", Connection.PTY, target=Target.XEN),
    ]
    xml = domain_xml("vm1", uuid, [
        channel_xml("unix", "xen", "org.a.0", f"{foreign_root}/org.a.0"),
        channel_xml("unix", "xen", "org.b.0", hand_typed),
        "<channel type='pty'><target type='xen' name='org.p.0'/></channel>",
    ]).replace(b"<devices>", b"<metadata><other xmlns='urn:someone:else'/>"
               + etree.tostring(metadata.metadata_element(ours, "running"))
               + b"</metadata>\n  <devices>")
    code, out, err = call(host, driver, op, "begin", xml)
    assert (code, err) == (0, "")

    root = etree.fromstring(out.encode())
    paths = [s.get("path") for s in root.iterfind("devices/channel/source")]
    assert paths == [f"{host.domain_dir(uuid)}/org.a.0", hand_typed]
    assert root.find("memory").text == "65536"  # type: ignore[union-attr]
    # Our metadata follows the devices; other namespaces are left alone.
    found = metadata.find_domain_metadata(root)
    assert found is not None and found.state == "running"
    assert [c.path for c in found.channels] == [*paths, None]
    assert root.find("metadata/{urn:someone:else}other") is not None
    # Already right for this host: no output means "unchanged" to libvirt.
    assert call(host, driver, op, "begin", out) == (0, "", "")
    assert record(host, uuid) is None  # migrate/restore never register


@pytest.mark.parametrize("op", ["migrate", "restore"])
def test_migrate_ignores_channels_we_do_not_manage(host: HookHost, op: str) -> None:
    """libvirt's own virtio path (with '=') and odd names elsewhere must not abort it."""
    uuid = new_uuid()
    libvirts = "/var/lib/libvirt/qemu/channel/target/domain-1-a=b/org.qemu.guest_agent.0"
    xml = domain_xml("a=b", uuid, [
        channel_xml("unix", "virtio", "org.qemu.guest_agent.0", libvirts),
        channel_xml("unix", "virtio", "not a valid name", "/srv/other,host/sock"),
        channel_xml("unix", "virtio", "org.a.0", f"/var/run/other-host/{uuid}/org.a.0"),
        # connect mode: QEMU is the client; whatever the path, it is not ours.
        channel_xml("unix", "virtio", "org.c.0", f"/var/run/other-host/{uuid}/org.c.0")
        .replace("mode='bind'", "mode='connect'"),
    ], domain_type="kvm")
    code, out, err = call(host, "qemu", op, "begin", xml, domain="a=b")
    assert (code, err) == (0, "")
    from lxml import etree

    root = etree.fromstring(out.encode())
    paths = [s.get("path") for s in root.iterfind("devices/channel/source")]
    assert paths == [libvirts, "/srv/other,host/sock", f"{host.domain_dir(uuid)}/org.a.0",
                     f"/var/run/other-host/{uuid}/org.c.0"]


def test_libxl_has_no_restore_hook(host: HookHost) -> None:
    uuid = new_uuid()
    xml = domain_xml("vm1", uuid, [channel_xml("unix", "xen", "org.a.0", f"/elsewhere/{uuid}/a")])
    assert call(host, "libxl", "restore", "begin", xml) == (0, "", "")


def test_migrate_of_malformed_xml_fails(host: HookHost) -> None:
    code, out, err = call(host, "qemu", "migrate", "begin", b"<domain><devices><channel")
    assert code == 1 and out == "" and "malformed XML" in err


# --- everything else ------------------------------------------------------------------


@pytest.mark.parametrize(("op", "subop"), [
    ("attach", "begin"), ("prepare", "end"), ("start", "end"), ("stopped", "begin"),
    ("release", "begin"), ("migrate", "end"), ("restore", "end"), ("bogus", "-"),
])
def test_other_operations_do_nothing(host: HookHost, op: str, subop: str) -> None:
    uuid = new_uuid()
    assert call(host, "qemu", op, subop, b"garbage, not even XML") == (0, "", "")
    assert call(host, "qemu", op, subop, xen_domain(host, uuid, "a.0")) == (0, "", "")
    assert not os.path.exists(host.rundir)


@pytest.mark.parametrize(
    "argv", [[], ["qemu", "vm1", "prepare"], ["lxc", "vm1", "prepare", "begin"]]
)
def test_bad_command_line_is_a_usage_error(argv: list[str]) -> None:
    err = io.StringIO()
    assert hook.main(argv, io.BytesIO(b""), io.StringIO(), err, {}) == 2
    assert err.getvalue().startswith("xen-channel: error: usage:")


def test_scan_domain_reads_only_device_channels() -> None:
    xml = b"""<domain><name>d</name><uuid> 1B4E28BA-2FA1-11D2-883F-0016D3CCA427 </uuid>
      <metadata><channel type='unix'><source path='/etc/x'/><target type='xen' name='m'/></channel>
      </metadata>
      <devices><channel type='unix'><source mode='bind' path='/run/a/b'/><source path='/x'/>
      <target type='xen' name='n.0'/></channel></devices></domain>"""
    scanned = channelxml.scan_domain(xml, [Target.XEN])
    assert scanned.name == "d" and scanned.uuid == "1B4E28BA-2FA1-11D2-883F-0016D3CCA427"
    assert [(c.name, c.path) for c in scanned.channels] == [("n.0", "/run/a/b")]


DATA = Path(__file__).parent / "data"


DOMAIN_DOCUMENTS = sorted(p for p in DATA.rglob("*.xml") if b"<domain" in p.read_bytes())


@pytest.mark.parametrize("document", DOMAIN_DOCUMENTS, ids=lambda p: p.name)
def test_scan_domain_agrees_with_domxml(document: Path) -> None:
    """The hook's expat reader and domxml (lxml) see the same channels."""
    from xen_channel_backend import domxml

    data = document.read_bytes()
    for targets in ([Target.XEN], [Target.VIRTIO, Target.XEN]):
        root = domxml.parse_domain(data, str(document)).getroot()
        expected = [
            domxml.channel_from_element(element) for element in domxml.channel_elements(root)
            if element.get("type") in ("unix", "pty")
            and domxml.target_type(element) in {t.value for t in targets}
        ]
        scanned = channelxml.scan_domain(data, targets)
        assert list(scanned.channels) == expected
        assert (scanned.name, scanned.uuid) == (
            domxml.domain_name(root), (root.findtext("uuid") or "").strip() or None
        )


def test_hook_module_imports_no_lxml() -> None:
    import subprocess
    import sys

    probe = ("import sys, xen_channel_backend.hook, xen_channel_backend.registry, "
             "xen_channel_backend.settings; print('lxml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


UTF16_ENTITY_DOMAIN = (
    '<?xml version="1.0" encoding="UTF-16"?>\n'
    '<!DOCTYPE domain [<!ENTITY e "org.evil.0">]>\n'
    "<domain type='xen'><name>vm1</name><uuid>{uuid}</uuid><devices>"
    "<channel type='unix'><source mode='bind' path='{path}'/>"
    "<target type='xen' name='&e;'/></channel></devices></domain>\n"
)


@pytest.mark.parametrize("op", ["prepare", "reconnect"])
def test_utf16_doctype_is_refused_by_the_parser(host: HookHost, op: str) -> None:
    """A byte search for b"<!DOCTYPE" cannot see it in UTF-16; expat must refuse it."""
    uuid = new_uuid()
    text = UTF16_ENTITY_DOMAIN.format(uuid=uuid, path=f"{host.domain_dir(uuid)}/org.evil.0")
    data = text.encode("utf-16")  # with a BOM
    assert data.startswith((b"\xff\xfe", b"\xfe\xff")) and b"<!DOCTYPE" not in data
    code, out, err = call(host, "libxl", op, "begin", data)
    assert out == "" and err.count("\n") == 1
    assert "DOCTYPE/ENTITY declarations are not allowed" in err
    assert code == (0 if op == "reconnect" else 1)  # reconnect must never kill the domain
    assert record(host, uuid) is None
    assert not os.path.exists(host.domain_dir(uuid))


def test_migrate_between_hosts_with_one_run_directory_never_loads_lxml(host: HookHost) -> None:
    """The common case (every host has the same run directory): nothing to
    re-allocate, no output, and lxml (tens of ms) is never imported."""
    import subprocess
    import sys

    uuid = new_uuid()
    xml = domain_xml("vm1", uuid, [
        channel_xml("unix", "xen", "org.a.0", f"{host.domain_dir(uuid)}/org.a.0"),
        channel_xml("unix", "xen", "org.b.0", f"{host.domain_dir(uuid)}/custom-leaf"),
    ])
    script = (
        "import sys, io\n"
        "from xen_channel_backend.hook import main\n"
        "code = main(['libxl', 'vm1', 'migrate', 'begin', '-'])\n"
        "print(code, 'lxml' in sys.modules, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", f"import sys; sys.path[:0] = {sys.path!r}\n" + script],
        input=xml, capture_output=True, env={**host.environ, "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert done.stdout == b"" and done.stderr == b"0 False\n"
