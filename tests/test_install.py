"""``xen-channel install-hooks`` and the shell shim it writes (run with real sh)."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hook_fixtures import libvirt_env

from xen_channel_backend import cli, install

REPO = Path(__file__).resolve().parent.parent


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["install-hooks", *argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_install_writes_both_shims_executable(tmp_path: Path) -> None:
    code, out, err = run_cli("--hooks-dir", str(tmp_path))
    assert code == 0
    for driver in ("libxl", "qemu"):
        shim = tmp_path / f"{driver}.d" / "xen-channel"
        assert f"installed: {shim}" in out
        assert stat.S_IMODE(shim.stat().st_mode) == 0o755
        text = shim.read_text()
        assert text.startswith("#!/bin/sh\n" + install.MARKER + "\n")
        assert f"driver={driver}\n" in text
        assert f"python='{os.path.abspath(sys.executable)}'" in text
    assert "systemctl reload libvirtd" in err


def test_install_is_idempotent_and_updates_in_place(tmp_path: Path) -> None:
    assert run_cli("--hooks-dir", str(tmp_path))[0] == 0
    code, out, err = run_cli("--hooks-dir", str(tmp_path))
    assert code == 0 and out.count("unchanged:") == 2 and err == ""
    shim = tmp_path / "qemu.d" / "xen-channel"
    shim.chmod(0o644)
    config = tmp_path / "x.conf"
    config.write_text("[xen-channel]\nrundir = /run/xcb-elsewhere\n")
    code, out, err = run_cli("--hooks-dir", str(tmp_path), "--config", str(config))
    assert code == 0 and out.count("updated:") == 2 and "reload" in err
    assert f"config='{config}'" in shim.read_text()
    assert "rundir='/run/xcb-elsewhere'" in shim.read_text()
    assert stat.S_IMODE(shim.stat().st_mode) == 0o755


def test_install_leaves_the_admins_own_hooks_alone(tmp_path: Path) -> None:
    own = tmp_path / "qemu"
    own.write_text("#!/bin/sh\nexit 0\n")
    neighbour = tmp_path / "qemu.d" / "10-admin"
    neighbour.parent.mkdir()
    neighbour.write_text("#!/bin/sh\n")
    assert run_cli("--hooks-dir", str(tmp_path))[0] == 0
    assert own.read_text() == "#!/bin/sh\nexit 0\n" and neighbour.exists()
    code, out, _ = run_cli("--hooks-dir", str(tmp_path), "--uninstall")
    assert code == 0 and out.count("removed:") == 2
    assert own.exists() and neighbour.exists()
    assert not (tmp_path / "qemu.d" / "xen-channel").exists()
    assert not (tmp_path / "libxl.d").exists()  # emptied, so removed


def test_install_refuses_to_overwrite_a_foreign_file(tmp_path: Path) -> None:
    foreign = tmp_path / "libxl.d" / "xen-channel"
    foreign.parent.mkdir()
    foreign.write_text("#!/bin/sh\n# someone else's\n")
    code, _, err = run_cli("--hooks-dir", str(tmp_path))
    assert code == 1 and "is not ours" in err and err.count("\n") == 1
    assert foreign.read_text() == "#!/bin/sh\n# someone else's\n"
    code, _, err = run_cli("--hooks-dir", str(tmp_path), "--uninstall")
    assert code == 1 and foreign.exists()


def test_uninstall_when_nothing_is_installed(tmp_path: Path) -> None:
    code, out, err = run_cli("--hooks-dir", str(tmp_path), "--uninstall")
    assert code == 0 and out.count("absent:") == 2 and err == ""


def test_repository_shims_are_the_template_for_a_system_python() -> None:
    for driver in ("libxl", "qemu"):
        shim = REPO / "hooks" / driver
        assert shim.read_text() == install.render_shim(
            driver, "/usr/bin/python3", install.DISTRIBUTION_PYTHONPATH)
        assert os.access(shim, os.X_OK)


@pytest.mark.parametrize("bad", ["/opt/it's/python", "/opt/a:b/python", "/opt/x\n/python",
                                 "relative/python"])
def test_render_refuses_what_the_shim_cannot_quote(bad: str) -> None:
    with pytest.raises(install.HookInstallError):
        install.render_shim("qemu", bad)


def test_shim_is_posix_sh() -> None:
    for shell in ("dash", "sh", "bash"):
        subprocess.run([shell, "-n", str(REPO / "hooks" / "qemu")], check=True)


# --- the fast path: proven by a shim whose Python does not exist ---------------------


@pytest.fixture
def shim_without_python(tmp_path: Path) -> Path:
    shim = tmp_path / "xen-channel"
    shim.write_text(install.render_shim("qemu", str(tmp_path / "no-such-python")))
    shim.chmod(0o755)
    return shim


def run(shim: Path, op: str, subop: str, xml: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(shim), "vm1", op, subop, "-"], input=xml, capture_output=True,
                          env=libvirt_env(), timeout=30, check=False)


@pytest.mark.parametrize(("op", "subop"), [("attach", "begin"), ("prepare", "end"),
                                           ("start", "end"), ("restore", "end"),
                                           ("start", "begin"), ("stopped", "end")])
def test_ignored_operations_never_start_python(
    shim_without_python: Path, op: str, subop: str
) -> None:
    result = run(shim_without_python, op, subop, b"<domain><devices><channel/></devices></domain>")
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_domains_without_channels_never_start_python(shim_without_python: Path) -> None:
    for op, subop in (("prepare", "begin"), ("started", "begin"), ("release", "end"),
                      ("migrate", "begin")):
        result = run(shim_without_python, op, subop, b"<domain><devices/></domain>")
        assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_domains_with_channels_do_reach_python(tmp_path: Path) -> None:
    """A stand-in interpreter that says it ran: every handled operation of a
    domain with a channel reaches it, with -I -S and the hook's arguments."""
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\necho "ran with $1 $2" >&2\nexit 3\n')
    fake.chmod(0o755)
    shim = tmp_path / "xen-channel"
    shim.write_text(install.render_shim("qemu", str(fake)))
    shim.chmod(0o755)
    xml = b"<domain><devices><channel type='pty'/></devices></domain>"
    for op, subop in (("prepare", "begin"), ("started", "begin"), ("release", "end")):
        result = run(shim, op, subop, xml)
        assert (result.returncode, result.stderr) == (3, b"ran with -I -S\n")
    # ...except that reconnect must never fail, whatever breaks.
    assert run(shim, "reconnect", "begin", xml).returncode == 0


def test_libxl_shim_ignores_restore(tmp_path: Path) -> None:
    shim = tmp_path / "xen-channel"
    shim.write_text(install.render_shim("libxl", str(tmp_path / "no-such-python")))
    shim.chmod(0o755)
    xml = b"<domain><devices><channel type='pty'/></devices></domain>"
    assert run(shim, "restore", "begin", xml).returncode == 0
