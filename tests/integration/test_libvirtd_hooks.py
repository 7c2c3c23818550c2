"""Our hooks on a REAL libvirtd with the QEMU driver (background.md §6), and libxl's lifecycle.

The QEMU tests install the shims with the real ``xen-channel install-hooks``
into the real /etc/libvirt/hooks (a system libvirtd reads no other place),
SIGHUP the daemon so it sees them, and start small TCG domains whose virtio
channel got its path from ``xen-channel fill``.  The hooks run with
libvirtd's own cut-down environment; ``install-hooks --config`` bakes a
private settings file into them so nothing touches /run/xen-channel.

libxl cannot run here (no Xen), so the last test calls the installed
``libxl.d`` shim exactly as libvirtd's libxl driver does: the same argv
(``DOMAIN OP SUBOP -``), the XML on stdin, and only HOME, LC_ALL=C and PATH.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/, for hook_fixtures

from hook_fixtures import (  # noqa: E402
    HookHost,
    channel_xml,
    domain_xml,
    install_shims,
    make_host,
    new_uuid,
    run_shim,
)
from libvirtd import Libvirtd, new_domain_name, skip_reason, tcg_domain_xml  # noqa: E402

XEN_CHANNEL = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "xen-channel")
CHANNEL = "org.example.test.0"


def xen_channel(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The real command-line tool, as an admin runs it."""
    result = subprocess.run([XEN_CHANNEL, *args], capture_output=True, text=True, timeout=120,
                            check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"xen-channel {' '.join(args)}: {result.stderr}")
    return result


@pytest.fixture(scope="module")
def hook_host() -> Iterator[HookHost]:
    made = make_host(group="root")
    try:
        yield made
    finally:
        shutil.rmtree(made.base, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(hook_host: HookHost) -> Iterator[Libvirtd]:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    server = Libvirtd()
    server.start()  # takes the lock first: no other test's daemon may run our hooks
    hooks_existed = os.path.isdir(server.hooks_dir)
    try:
        xen_channel("install-hooks", "--hooks-dir", server.hooks_dir,
                    "--config", hook_host.config)
        server.sighup()  # background.md §1: hooks are found at start or on SIGHUP
        yield server
    finally:
        try:
            for name in server.virsh("list", "--all", "--name").stdout.split():
                if name.startswith("xcbtest-"):
                    server.virsh("destroy", name, check=False)
                    server.virsh("undefine", name, check=False)
            xen_channel("install-hooks", "--hooks-dir", server.hooks_dir, "--uninstall",
                        check=False)
            if not hooks_existed:
                with_contents = os.listdir(server.hooks_dir) if os.path.isdir(
                    server.hooks_dir) else []
                if not with_contents:
                    shutil.rmtree(server.hooks_dir, ignore_errors=True)
        finally:
            server.stop()


def define_filled_domain(daemon: Libvirtd, host: HookHost, tmp_dir: str) -> tuple[str, str, str]:
    """fill + define a TCG domain; returns (name, uuid, socket path)."""
    name, uuid = new_domain_name("hook"), new_uuid()
    source = os.path.join(tmp_dir, f"{name}.xml")
    with open(source, "w", encoding="utf-8") as handle:
        handle.write(tcg_domain_xml(name, uuid, channels=[(CHANNEL, None)]))
    filled = os.path.join(tmp_dir, f"{name}.filled.xml")
    xen_channel("fill", "--rundir", host.rundir, "--all-targets", source, "-o", filled)
    with open(filled, encoding="utf-8") as handle:
        text = handle.read()
    path = f"{host.rundir}/{uuid}/{CHANNEL}"
    assert f"path=\"{path}\"" in text or f"path='{path}'" in text
    xen_channel("define", "--rundir", host.rundir, "--all-targets", "--connect", daemon.uri,
                filled)
    return name, uuid, path


def listed(host: HookHost, uuid: str) -> dict[str, Any] | None:
    domains = json.loads(xen_channel("list", "--json", "--rundir", host.rundir).stdout)
    for domain in domains:
        if domain["uuid"] == uuid:
            return dict(domain)
    return None


def accepts_client(path: str) -> bool:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.settimeout(5)
        client.connect(path)
        return True
    except OSError:
        return False
    finally:
        client.close()


def qemu_pid(name: str) -> int:
    with open(f"/run/libvirt/qemu/{name}.pid", encoding="ascii") as handle:
        return int(handle.read().strip())


@pytest.mark.integration
def test_start_and_destroy_follow_the_hooks(
    daemon: Libvirtd, hook_host: HookHost, tmp_path: Any
) -> None:
    name, uuid, path = define_filled_domain(daemon, hook_host, str(tmp_path))
    daemon.virsh("start", name)
    directory = os.path.dirname(path)
    # prepare made the directory; QEMU made the socket in it and listens.
    info = os.lstat(directory)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o750
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    assert accepts_client(path)
    entry = listed(hook_host, uuid)
    assert entry is not None, "xen-channel list --json does not show the domain"
    assert entry["domain"] == name and entry["driver"] == "qemu" and entry["state"] == "running"
    assert {"name": CHANNEL, "connection": "socket", "path": path, "target": "virtio"} in [
        {k: c[k] for k in ("name", "connection", "path", "target")} for c in entry["channels"]
    ]
    daemon.virsh("destroy", name)
    # stopped/release removed the socket, the directory and the record.
    assert not os.path.lexists(path) and not os.path.lexists(directory)
    assert listed(hook_host, uuid) is None
    daemon.virsh("undefine", name)


@pytest.mark.integration
@pytest.mark.parametrize("how", ["restart", "kill9"])
def test_daemon_restart_reconnects_and_keeps_the_domain(
    daemon: Libvirtd, hook_host: HookHost, tmp_path: Any, how: str
) -> None:
    name, uuid, path = define_filled_domain(daemon, hook_host, str(tmp_path))
    daemon.virsh("start", name)
    pid = qemu_pid(name)
    # Forget the domain, so only the reconnect hook can bring the record back.
    records = os.path.join(hook_host.rundir, "registry", "domains", f"{uuid}.json")
    os.unlink(records)
    if how == "restart":
        daemon.restart()
    else:  # a crashed daemon, started again
        daemon.kill9()
        daemon.start()
    assert daemon.virsh("domstate", name).stdout.strip() == "running"
    assert qemu_pid(name) == pid
    entry = listed(hook_host, uuid)
    assert entry is not None and entry["state"] == "running", "reconnect did not re-register"
    assert accepts_client(path)
    daemon.virsh("destroy", name)
    assert not os.path.lexists(os.path.dirname(path))
    daemon.virsh("undefine", name)


@pytest.mark.integration
def test_libvirt_shows_the_prepare_error_and_refuses_to_start(
    daemon: Libvirtd, hook_host: HookHost, tmp_path: Any
) -> None:
    """A path in the run directory but in another domain's directory is the
    one kind of explicit path the hooks refuse (besides a collision)."""
    name, uuid = new_domain_name("evil"), new_uuid()
    stolen = f"{hook_host.rundir}/{new_uuid()}/sock"
    source = tmp_path / "evil.xml"
    source.write_text(tcg_domain_xml(name, uuid, channels=[(CHANNEL, stolen)]))
    daemon.virsh("define", str(source))
    result = daemon.virsh("start", name, check=False)
    assert result.returncode != 0
    assert "xen-channel: error: prepare hook" in result.stderr
    assert "not in this domain's directory" in result.stderr
    assert daemon.virsh("domstate", name).stdout.strip() == "shut off"
    assert not os.path.exists(os.path.dirname(stolen))
    assert listed(hook_host, uuid) is None  # the failed start's release cleaned up
    daemon.virsh("undefine", name)


def _foreign_domain(daemon: Libvirtd, hook_host: HookHost, tmp_path: Any) -> tuple[str, str]:
    """A domain that never asked for us: a bind-mode channel in the admin's own
    directory, outside the run directory and every allowed root."""
    app = os.path.join(hook_host.base, "myapp")
    os.makedirs(app, exist_ok=True)
    with open(os.path.join(app, "keep"), "w", encoding="utf-8") as handle:
        handle.write("the admin's file\n")
    name, uuid = new_domain_name("foreign"), new_uuid()
    source = tmp_path / f"{name}.xml"
    source.write_text(tcg_domain_xml(name, uuid, channels=[(CHANNEL, f"{app}/agent.sock")]))
    daemon.virsh("define", str(source))
    return name, app


@pytest.mark.integration
def test_a_domain_outside_the_roots_starts_and_stops_untouched(
    daemon: Libvirtd, hook_host: HookHost, tmp_path: Any
) -> None:
    name, app = _foreign_domain(daemon, hook_host, tmp_path)
    before = os.stat(app)
    daemon.virsh("start", name)
    assert accepts_client(f"{app}/agent.sock")  # QEMU's, made where the admin said
    entries = [d for d in json.loads(xen_channel("list", "--json", "--rundir",
                                                 hook_host.rundir).stdout)
               if d["domain"] == name]
    assert entries and entries[0]["channels"][0]["path"] == f"{app}/agent.sock"
    daemon.virsh("destroy", name)
    after = os.stat(app)
    assert (after.st_mode, after.st_uid, after.st_gid) == (
        before.st_mode, before.st_uid, before.st_gid)
    with open(os.path.join(app, "keep"), encoding="utf-8") as handle:
        assert handle.read() == "the admin's file\n"
    daemon.virsh("undefine", name)


@pytest.mark.integration
def test_with_the_interpreter_removed_only_our_domains_are_stopped(
    daemon: Libvirtd, hook_host: HookHost, tmp_path: Any
) -> None:
    """make clean deletes the venv the shims point at: a domain that is not
    ours still starts; ours gets one line naming the fix."""
    from xen_channel_backend import install

    gone = os.path.join(hook_host.base, "venv", "bin", "python3")
    shims = install.shim_paths(daemon.hooks_dir)
    saved = {path: Path(path).read_text(encoding="utf-8") for path in shims.values()}
    try:
        for driver, path in shims.items():
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(install.render_shim(driver, gone, (), hook_host.config,
                                                 hook_host.rundir))
        daemon.sighup()
        foreign, _app = _foreign_domain(daemon, hook_host, tmp_path)
        daemon.virsh("start", foreign)
        assert daemon.virsh("domstate", foreign).stdout.strip() == "running"
        daemon.virsh("destroy", foreign)
        daemon.virsh("undefine", foreign)
        ours, _uuid, _path = define_filled_domain(daemon, hook_host, str(tmp_path))
        result = daemon.virsh("start", ours, check=False)
        assert result.returncode != 0
        assert f"the hook's interpreter {gone} is missing; run xen-channel doctor" in (
            result.stderr)
        daemon.virsh("undefine", ours)
    finally:
        for path, text in saved.items():
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
        daemon.sighup()


# --- libxl, called as libvirtd's libxl driver calls it ----------------------------------


def test_libxl_lifecycle_through_the_installed_shim(tmp_path: Any) -> None:
    host = make_host()
    try:
        hooks_dir = str(tmp_path / "hooks")
        install_shims(hooks_dir, host.config)
        shim = os.path.join(hooks_dir, "libxl.d", "xen-channel")
        uuid = new_uuid()
        path = f"{host.rundir}/{uuid}/org.example.agent.0"
        defined = domain_xml("guest1", uuid, [
            channel_xml("unix", "xen", "org.example.agent.0", path),
            channel_xml("pty", "xen", "org.example.console.0"),
        ])
        live = domain_xml("guest1", uuid, [
            channel_xml("unix", "xen", "org.example.agent.0", path),
            channel_xml("pty", "xen", "org.example.console.0", "/dev/pts/9"),
        ])
        # libxlDomainStart: prepare, (libxlPrepareChannel), start, started.
        for op, xml in (("prepare", defined), ("start", defined), ("started", live)):
            result = run_shim(shim, "guest1", op, "begin", xml)
            assert (result.returncode, result.stdout, result.stderr) == (0, b"", b""), op
        assert os.path.isdir(os.path.dirname(path))
        # Xen's QEMU would now bind the socket (background.md §2); stand in for it with a real one.
        server = socket.socket(socket.AF_UNIX)
        server.bind(path)
        server.close()
        shown = json.loads(xen_channel("show", "--json", "--rundir", host.rundir, uuid).stdout)
        assert shown["state"] == "running" and shown["driver"] == "libxl"
        assert [c["path"] for c in shown["channels"]] == [path, "/dev/pts/9"]
        # A daemon restart: reconnect, which must exit 0 even for garbage.
        assert run_shim(shim, "guest1", "reconnect", "begin", live).returncode == 0
        assert run_shim(shim, "guest1", "reconnect", "begin", b"<channel garbage").returncode == 0
        # Migration: our path re-allocated for this host when the source host differs.
        foreign = live.replace(host.rundir.encode(), b"/run/elsewhere")
        result = run_shim(shim, "guest1", "migrate", "begin", foreign)
        assert result.returncode == 0 and path.encode() in result.stdout
        assert run_shim(shim, "guest1", "migrate", "begin", live).stdout == b""
        # libxlDomainCleanup: stopped end, then release end (both with "-").
        for op in ("stopped", "release"):
            result = run_shim(shim, "guest1", op, "end", live)
            assert (result.returncode, result.stdout, result.stderr) == (0, b"", b""), op
        assert not os.path.lexists(os.path.dirname(path))
        assert json.loads(xen_channel("list", "--json", "--rundir", host.rundir).stdout) == []
    finally:
        shutil.rmtree(host.base, ignore_errors=True)
