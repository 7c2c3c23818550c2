"""A broken installation never stops a domain that is not ours; install-hooks
runs only what root alone can change.  The shim runs under real sh with
libvirt's cut environment; the interpreter is the real one or none."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hook_fixtures import channel_xml, domain_xml, libvirt_env, new_uuid

from xen_channel_backend import cli, install
from xen_channel_backend.errors import UntrustedPath
from xen_channel_backend.metadata import NAMESPACE

RUNDIR = "/run/xcb-safety-test"
NOBODY = 65534

#: libvirt's own generated guest-agent path for a KVM domain: not ours.
KVM_AGENT = "/var/lib/libvirt/qemu/channel/target/domain-3-web/org.qemu.guest_agent.0"


def shim(tmp_path: Path, python: str, pythonpath: tuple[str, ...] = ()) -> Path:
    path = tmp_path / "xen-channel"
    path.write_text(install.render_shim("qemu", python, pythonpath, rundir=RUNDIR))
    path.chmod(0o755)
    return path


def run(path: Path, op: str, xml: bytes, subop: str = "begin") -> tuple[int, str]:
    done = subprocess.run([str(path), "vm1", op, subop, "-"], input=xml, capture_output=True,
                          env=libvirt_env(), timeout=60, check=False)
    return done.returncode, done.stderr.decode()


FOREIGN = domain_xml("kvm-web", new_uuid(), [
    channel_xml("unix", "virtio", "org.qemu.guest_agent.0", KVM_AGENT)], "kvm")
UNDER_RUNDIR = domain_xml("ours", new_uuid(), [
    channel_xml("unix", "xen", "org.a.0", f"{RUNDIR}/{new_uuid()}/org.a.0")])
WITH_METADATA = domain_xml("ours-meta", new_uuid(), [channel_xml("pty", "xen", "org.b.0")]).replace(
    b"<devices>", f"<metadata><xcb:channels xmlns:xcb='{NAMESPACE}'/></metadata><devices>".encode())


@pytest.fixture(params=["interpreter removed", "package removed"])
def broken(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A shim whose venv was deleted (make clean), or whose package is gone."""
    if request.param == "interpreter removed":
        return shim(tmp_path, str(tmp_path / "venv" / "bin" / "python3"))
    empty = tmp_path / "empty"
    empty.mkdir()
    return shim(tmp_path, "/usr/bin/python3", (str(empty),))


@pytest.mark.parametrize("op", ["prepare", "started", "migrate", "reconnect"])
def test_a_broken_install_lets_a_domain_that_is_not_ours_start(broken: Path, op: str) -> None:
    assert run(broken, op, FOREIGN) == (0, "")


@pytest.mark.parametrize("xml", [UNDER_RUNDIR, WITH_METADATA], ids=["rundir path", "metadata"])
def test_a_broken_install_stops_our_domain_with_one_line(broken: Path, xml: bytes) -> None:
    code, err = run(broken, "prepare", xml)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("xen-channel: error: ") and "xen-channel doctor" in err
    assert ("venv/bin/python3 is missing" in err) or ("cannot load" in err), err
    # Release is ignored by libvirt; reconnect must never fail (it kills the domain).
    assert run(broken, "reconnect", xml)[0] == 0


def test_an_unreadable_settings_file_lets_a_foreign_domain_through(tmp_path: Path) -> None:
    path = tmp_path / "xen-channel"
    root = str(Path(install.__file__).resolve().parent.parent)
    lxml_dir = install.runtime_pythonpath()[-1]
    path.write_text(install.render_shim("qemu", sys.executable, (root, lxml_dir),
                                        str(tmp_path / "missing.conf"), RUNDIR))
    path.chmod(0o755)
    code, err = run(path, "prepare", FOREIGN)
    assert code == 0 and "warning:" in err and "missing.conf" in err
    code, err = run(path, "prepare", UNDER_RUNDIR)
    assert code == 1 and "missing.conf" in err


# --- install-hooks: root-only inputs ------------------------------------------------


def test_install_refuses_a_pythonpath_others_can_write(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "lib").mkdir(parents=True)
    (venv / "lib").chmod(0o777)
    with pytest.raises(UntrustedPath) as caught:
        install.install(str(tmp_path / "hooks"), "/usr/bin/python3", [str(venv / "lib")], None)
    assert caught.value.path == str(venv / "lib")
    assert not (tmp_path / "hooks").exists()


def test_install_refuses_an_interpreter_in_a_directory_a_group_can_write(
    tmp_path: Path
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    os.symlink("/usr/bin/python3", bindir / "python3")
    bindir.chmod(0o775)
    with pytest.raises(UntrustedPath, match="writable by group"):
        install.install(str(tmp_path / "hooks"), str(bindir / "python3"), [], None)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown the settings file")
def test_install_hooks_refuses_a_settings_file_another_user_owns(tmp_path: Path) -> None:
    config = tmp_path / "x.conf"
    config.write_text("[xen-channel]\n")
    os.chown(config, NOBODY, -1)
    err = io.StringIO()
    code = cli.main(["install-hooks", "--hooks-dir", str(tmp_path / "hooks"),
                     "--config", str(config)], stdout=io.StringIO(), stderr=err)
    assert code == 1 and err.getvalue().count("\n") == 1
    assert f"'{config}' is owned by uid {NOBODY}" in err.getvalue()
    assert not (tmp_path / "hooks").exists()


def test_install_hooks_with_a_missing_parent_creates_nothing(tmp_path: Path) -> None:
    typo = tmp_path / "etc" / "libvirt" / "hoks"
    err, out = io.StringIO(), io.StringIO()
    code = cli.main(["install-hooks", "--hooks-dir", str(typo)], stdout=out, stderr=err)
    assert code == 1 and out.getvalue() == "" and err.getvalue().count("\n") == 1
    assert "is not a directory" in err.getvalue() and "--hooks-dir" in err.getvalue()
    assert not (tmp_path / "etc").exists()


def test_doctor_fails_an_installed_shim_with_an_untrusted_pythonpath(tmp_path: Path) -> None:
    from xen_channel_backend.doctor import FAIL, check_hooks

    lib = tmp_path / "lib"
    lib.mkdir()
    hooks = tmp_path / "hooks"
    for driver, path in install.shim_paths(str(hooks)).items():
        os.makedirs(os.path.dirname(path))
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(install.render_shim(driver, "/usr/bin/python3", (str(lib),)))
        os.chmod(path, 0o755)
    assert all(c.status != FAIL for c in check_hooks(str(hooks))), check_hooks(str(hooks))
    lib.chmod(0o777)
    checks = check_hooks(str(hooks))
    assert [c.status for c in checks] == [FAIL, FAIL]
    assert all(f"'{lib}' is writable by group and others" in c.detail for c in checks)


def test_the_real_python_and_this_tree_pass_the_check() -> None:
    """What make test installs with must itself be installable (root-owned here)."""
    if shutil.which("python3") is None:  # pragma: no cover - always there
        pytest.skip("no python3")
    install.check_shim_inputs(os.path.abspath(sys.executable), install.runtime_pythonpath(), None)


def test_the_shim_hands_python_the_xml_byte_for_byte(tmp_path: Path) -> None:
    """The here-document expands $xml once and never what it holds: backslashes,
    $(...), backticks and $VAR in a domain's text reach Python untouched."""
    got = tmp_path / "got.xml"
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\ncat > {got}\nexit 0\n")
    fake.chmod(0o755)
    marker = tmp_path / "pwned"
    xml = ("<domain><description>a\\\\b \\n $(touch " + str(marker) + ") `touch "
           + str(marker) + "` $HOME ${PATH}</description><devices><channel type='pty'/>"
           "</devices></domain>").encode()
    code, err = run(shim(tmp_path, str(fake)), "prepare", xml)
    assert (code, err) == (0, "")
    assert got.read_bytes() == xml + b"\n" and not marker.exists()
