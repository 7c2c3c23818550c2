"""started without Python: a domain whose channels are all sockets with their
paths is marked settled at prepare, and the shim records its start with a
shell redirection.  The shims run under real sh with libvirt's environment."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from hook_fixtures import HookHost, channel_xml, domain_xml, host, install_shims, new_uuid, run_shim

from xen_channel_backend import install
from xen_channel_backend.model import DomainState
from xen_channel_backend.registry import Registry

__all__ = ["host"]


@pytest.fixture
def shim(host: HookHost) -> Iterator[str]:
    hooks = os.path.join(host.base, "hooks")
    os.mkdir(hooks)
    install_shims(hooks, host.config)
    yield install.shim_paths(hooks)["libxl"]
    shutil.rmtree(hooks, ignore_errors=True)


def settled(host: HookHost, uuid: str) -> bool:
    return os.path.exists(f"{host.rundir}/registry/settled/{uuid}")


def test_a_settled_domain_starts_without_python(host: HookHost, shim: str) -> None:
    uuid = new_uuid()
    xml = domain_xml("vm1", uuid, [
        channel_xml("unix", "xen", "org.a.0", f"{host.domain_dir(uuid)}/org.a.0")])
    assert run_shim(shim, "vm1", "prepare", "begin", xml).returncode == 0
    assert settled(host, uuid)
    registry = Registry(host.rundir)
    assert registry.by_uuid(uuid).state is DomainState.PREPARING  # type: ignore[union-attr]
    # Prove started never reaches Python: point the shim at no interpreter.
    text = Path(shim).read_text()
    Path(shim).write_text(text.replace("python='", "python='/nonexistent"))
    done = run_shim(shim, "vm1", "started", "begin", xml)
    assert (done.returncode, done.stderr) == (0, b"")
    assert registry.by_uuid(uuid).state is DomainState.RUNNING  # type: ignore[union-attr]
    assert [r.state for r in registry.list()] == [DomainState.RUNNING]
    Path(shim).write_text(text)
    assert run_shim(shim, "vm1", "release", "end", xml).returncode == 0
    assert registry.by_uuid(uuid) is None and not settled(host, uuid)
    assert os.listdir(f"{host.rundir}/registry/started") == []


def test_a_new_start_is_not_read_as_running_before_started(host: HookHost, shim: str) -> None:
    """A started marker left by a crash must not make the next prepare look running."""
    uuid = new_uuid()
    xml = domain_xml("vm1", uuid, [
        channel_xml("unix", "xen", "org.a.0", f"{host.domain_dir(uuid)}/org.a.0")])
    assert run_shim(shim, "vm1", "prepare", "begin", xml).returncode == 0
    assert run_shim(shim, "vm1", "started", "begin", xml).returncode == 0
    assert run_shim(shim, "vm1", "prepare", "begin", xml).returncode == 0  # no release: a crash
    assert Registry(host.rundir).by_uuid(uuid).state is DomainState.PREPARING  # type: ignore[union-attr]


@pytest.mark.parametrize("extra", [
    channel_xml("pty", "xen", "org.p.0"),  # its path appears only at started
    channel_xml("unix", "xen", "org.n.0"),  # libvirt fills the path
])
def test_a_domain_started_adds_to_is_not_settled(host: HookHost, shim: str, extra: str) -> None:
    uuid = new_uuid()
    xml = domain_xml("vm1", uuid, [
        channel_xml("unix", "xen", "org.a.0", f"{host.domain_dir(uuid)}/org.a.0"), extra])
    assert run_shim(shim, "vm1", "prepare", "begin", xml).returncode == 0
    assert not settled(host, uuid)
    live = xml.replace(b"<channel type='pty'>", b"<channel type='pty'><source path='/dev/pts/9'/>")
    assert run_shim(shim, "vm1", "started", "begin", live).returncode == 0
    record = Registry(host.rundir).by_uuid(uuid)
    assert record is not None and record.state is DomainState.RUNNING
    if b"pty" in xml:
        assert "/dev/pts/9" in [c.path for c in record.channels]


@pytest.mark.parametrize("uuid_text", ["../../../tmp/evil", "", "ABC$(touch /tmp/x)"])
def test_a_hostile_uuid_never_names_a_marker(host: HookHost, shim: str, uuid_text: str) -> None:
    xml = domain_xml("vm1", None, [channel_xml("pty", "xen", "org.p.0")]).replace(
        b"<devices>", f"<uuid>{uuid_text}</uuid><devices>".encode())
    run_shim(shim, "vm1", "started", "begin", xml)
    started = f"{host.rundir}/registry/started"
    assert not os.path.isdir(started) or os.listdir(started) == []
    assert not os.path.exists("/tmp/evil") and not os.path.exists("/tmp/x")


@pytest.mark.parametrize("op", ["migrate", "restore"])
def test_migrate_with_nothing_to_reallocate_never_starts_python(
    host: HookHost, tmp_path: Path, op: str
) -> None:
    uuid = new_uuid()
    python = tmp_path / "python"
    python.write_text('#!/bin/sh\necho ran >&2\nexit 3\n')
    python.chmod(0o755)
    shim = tmp_path / "xen-channel"
    shim.write_text(install.render_shim("qemu", str(python), rundir=host.rundir))
    shim.chmod(0o755)
    here = domain_xml("vm1", uuid, [
        channel_xml("unix", "virtio", "org.a.0", f"{host.domain_dir(uuid)}/org.a.0"),
        channel_xml("unix", "virtio", "org.b.0", f"{host.domain_dir(uuid)}/org.b.0"),
    ])
    done = run_shim(str(shim), "vm1", op, "begin", here)
    assert (done.returncode, done.stdout, done.stderr) == (0, b"", b"")
    elsewhere = here.replace(f"{host.rundir}/{uuid}/org.b.0".encode(),
                             f"/run/other-host/{uuid}/org.b.0".encode())
    done = run_shim(str(shim), "vm1", op, "begin", elsewhere)
    assert (done.returncode, done.stderr) == (3, b"ran\n")  # Python re-allocates that one


def test_show_finds_a_running_domain_by_its_libvirt_id(host: HookHost, shim: str) -> None:
    """libvirt's <domain id='N'> from the hook's XML: show N works as in virsh."""
    import io
    import json

    from xen_channel_backend import cli

    uuid = new_uuid()
    xml = domain_xml("42", uuid, [
        channel_xml("unix", "xen", "org.a.0", f"{host.domain_dir(uuid)}/org.a.0")])
    assert run_shim(shim, "42", "prepare", "begin",
                    xml.replace(b"<domain type='xen'>", b"<domain type='xen' id='7'>")
                    ).returncode == 0
    for key, found in (("7", True), ("42", True), ("8", False)):
        out = io.StringIO()
        code = cli.main(["show", "--rundir", host.rundir, "--json", key], stdout=out,
                        stderr=io.StringIO())
        assert (code == 0) is found, key
        if found:
            assert json.loads(out.getvalue())["uuid"] == uuid
    assert Registry(host.rundir).by_uuid(uuid).domain_id == 7  # type: ignore[union-attr]
