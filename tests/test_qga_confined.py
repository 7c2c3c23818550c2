"""The two dangerous commands tested for real, each confined so it cannot touch this machine.

qemu-ga acts on the machine it runs on, so these tests unblock a command
only inside a private mount namespace (tests/qga_fixtures.py,
PrivateNamespace) that confines it:

- **freeze and thaw**: ``guest-fsfreeze-freeze-list`` on one ext4 image the
  test makes and loop-mounts inside the namespace (FIFREEZE works there as
  root).  A namespace does not protect ``/``, and a freeze-list without
  mountpoints freezes everything, so tests/freeze_guard.py sits between
  the client and qemu-ga and lets through only a freeze-list naming exactly
  that mountpoint; it thaws in a ``finally``, with ``fsfreeze -u`` as the
  last resort.  ``guest-fsfreeze-freeze`` stays blocked in qemu-ga too.
- **set-user-password**: qemu-ga runs chpasswd on a private copy of /etc
  bind-mounted over /etc inside the namespace, for a user that exists only
  in that copy; the machine's own /etc/shadow is checked unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from freeze_guard import FreezeGuard
from qga_fixtures import PrivateNamespace, agent_domain, require_qemu_ga, short_base

from xen_channel_backend.cli import main

pytestmark = pytest.mark.integration


def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def frozen_world() -> Iterator[Any]:
    """A domain whose qemu-ga may freeze one loop-mounted image, behind the guard."""
    require_qemu_ga()
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None or shutil.which("fsfreeze") is None:
        pytest.skip("needs root, mkfs.ext4 (e2fsprogs) and fsfreeze (util-linux)")
    base = short_base()
    image, mountpoint = os.path.join(base, "fs.img"), os.path.join(base, "mnt")
    os.mkdir(mountpoint)
    with open(image, "wb") as handle:
        handle.truncate(16 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", image], check=True)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, base, True)
        try:
            namespace = PrivateNamespace(
                f"mount -o loop {image} {mountpoint}\n"
                # Refuse to go on unless the mountpoint really is the test's ext4 image.
                f"test \"$(findmnt -n -o FSTYPE --mountpoint {mountpoint})\" = ext4\n"
            )
        except AssertionError as exc:
            pytest.skip(f"cannot loop-mount an image in a private namespace here: {exc}")
        stack.callback(namespace.close)
        domain = stack.enter_context(agent_domain(
            "vm1", allow=["guest-fsfreeze-freeze-list"], namespace=namespace, base=base,
            qemu_socket=os.path.join(base, "qemu.sock"),
        ))
        guard = FreezeGuard(domain.socket, domain.qemu.socket_path, mountpoint, namespace)
        stack.callback(guard.close)  # runs first: thaw before qemu-ga and the namespace go
        domain.guard = guard
        domain.mountpoint = mountpoint
        domain.namespace = namespace
        yield domain


def freeze_state(world: Any) -> str:
    """Ask the kernel, not the agent: a second FIFREEZE says EBUSY only if frozen.

    (Never probe with a write: it would block until the thaw.)
    """
    probe = world.namespace.run("fsfreeze", "-f", world.mountpoint)
    if probe.returncode == 0:
        world.namespace.run("fsfreeze", "-u", world.mountpoint)  # it was not frozen: undo
        return "thawed"
    assert "Device or resource busy" in probe.stderr, probe.stderr
    return "frozen"


def test_freeze_and_thaw_the_tests_own_filesystem(frozen_world: Any) -> None:
    world = frozen_world
    rundir = ("--rundir", world.rundir)
    assert freeze_state(world) == "thawed"
    code, out, err = run("domfsfreeze", "vm1", "--mountpoint", world.mountpoint, *rundir)
    assert (code, out, err) == (0, "Froze 1 filesystem(s)\n\n", "")
    assert freeze_state(world) == "frozen"
    # While frozen, qemu-ga refuses what is not on its frozen-state list.
    code, _out, err = run("guestinfo", "vm1", "--os", *rundir)
    assert code == 1 and "'guest-get-osinfo' has been disabled" in err
    code, out, _ = run("qemu-agent-command", "vm1", '{"execute":"guest-fsfreeze-status"}',
                       *rundir)
    assert (code, out) == (0, '{"return":"frozen"}\n\n')
    code, out, err = run("domfsthaw", "vm1", "--json", *rundir)
    assert (code, json.loads(out), err) == (0, {"thawed": 1}, "")
    assert freeze_state(world) == "thawed"
    assert world.guard.forwarded.count("guest-fsfreeze-freeze-list") == 1
    assert world.guard.refused == []


@pytest.mark.parametrize("argv", [
    ["domfsfreeze", "vm1"],
    ["domfsfreeze", "vm1", "--mountpoint", "/"],
    ["domfsfreeze", "vm1", "--mountpoint", "{mp}", "--mountpoint", "/"],
    ["domfsfreeze", "vm1", "--mountpoint", "{mp}/"],
    ["qemu-agent-command", "vm1", '{"execute":"guest-fsfreeze-freeze-list"}'],
    ["qemu-agent-command", "vm1",
     '{"execute":"guest-fsfreeze-freeze-list","arguments":{"mountpoints":[]}}'],
    ["qemu-agent-command", "vm1", '{"execute":"guest-fsfreeze-freeze"}'],
])
def test_the_guard_stops_every_freeze_that_could_reach_this_machine(
    frozen_world: Any, argv: list[str]
) -> None:
    world = frozen_world
    argv = [a.replace("{mp}", world.mountpoint) for a in argv]
    code, out, err = run(*argv, "--rundir", world.rundir)
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert "refused by the test's freeze guard" in err
    assert len(world.guard.refused) == 1
    assert not any(c.startswith("guest-fsfreeze-freeze") for c in world.guard.forwarded)
    code, out, _ = run("qemu-agent-command", "vm1", '{"execute":"guest-fsfreeze-status"}',
                       "--rundir", world.rundir)
    assert out == '{"return":"thawed"}\n\n'


# --- set-user-password on a private /etc -----------------------------------------------

USER = "xcbtestuser"


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def private_etc() -> Iterator[Any]:
    require_qemu_ga()
    if os.geteuid() != 0 or shutil.which("chpasswd") is None:
        pytest.skip("needs root and chpasswd (passwd)")
    for name in ("passwd", "shadow", "group"):
        assert USER not in Path("/etc", name).read_text(), f"{USER} exists on this machine"
    base = short_base()
    copy = os.path.join(base, "etc")
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, base, True)
        subprocess.run(["cp", "-a", "/etc", copy], check=True)
        with open(os.path.join(copy, "passwd"), "a") as handle:
            handle.write(f"{USER}:x:4242:4242::/nonexistent:/usr/sbin/nologin\n")
        with open(os.path.join(copy, "shadow"), "a") as handle:
            handle.write(f"{USER}:!:19000:0:99999:7:::\n")
        with open(os.path.join(copy, "group"), "a") as handle:
            handle.write(f"{USER}:x:4242:\n")
        Path(copy, "xcb-private-etc").write_text("this /etc is the test's copy\n")
        namespace = PrivateNamespace(
            f"mount --bind {copy} /etc\n"
            # Never go on with the machine's own /etc.
            "test -f /etc/xcb-private-etc\n"
        )
        stack.callback(namespace.close)
        domain = stack.enter_context(agent_domain(
            "vm1", allow=["guest-set-user-password"], namespace=namespace, base=base))
        domain.etc = copy
        yield domain


def shadow_entry(etc: str) -> str:
    for line in Path(etc, "shadow").read_text().splitlines():
        if line.startswith(USER + ":"):
            return line.split(":")[1]
    raise AssertionError(f"{USER} is gone from the copy's shadow")


def test_set_user_password_changes_only_the_private_copy(private_etc: Any) -> None:
    machine_shadow = digest("/etc/shadow")
    rundir = ("--rundir", private_etc.rundir)
    code, out, err = run("set-user-password", "vm1", USER, *rundir, stdin="correct horse\n")
    assert (code, out, err) == (0, f"Password set successfully for {USER} in vm1\n", "")
    hashed = shadow_entry(private_etc.etc)
    assert hashed.startswith("$") and hashed != "!"
    # The hash is of what we sent (crypt(3) checks it; the module is gone in 3.13).
    with contextlib.suppress(ImportError), pytest.warns(DeprecationWarning):
        import crypt

        assert crypt.crypt("correct horse", hashed) == hashed
    # --encrypted: the hash goes in as given.
    given = "$6$saltsalt$" + "A" * 86
    code, _out, err = run("set-user-password", "vm1", USER, "--encrypted", *rundir,
                          stdin=given + "\n")
    assert (code, err) == (0, "")
    assert shadow_entry(private_etc.etc) == given
    assert digest("/etc/shadow") == machine_shadow
    assert USER not in Path("/etc/passwd").read_text()


def test_the_guests_refusal_is_one_line(private_etc: Any) -> None:
    code, out, err = run("set-user-password", "vm1", "no-such-user-xcb", "--rundir",
                         private_etc.rundir, stdin="pw\n")
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert err.endswith("'guest-set-user-password' failed: 'GenericError': 'child process has "
                        "failed to set user password'\n")
