"""``xen-channel doctor``: each check against the real thing where it exists here."""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from xen_channel_backend import cli, doctor, install


@pytest.fixture
def rundir() -> Iterator[str]:
    base = tempfile.mkdtemp(prefix="xcbdoc", dir="/tmp")
    try:
        yield os.path.join(base, "run")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def run_doctor(hooks_dir: Path, rundir: str) -> tuple[int, list[str], str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["doctor", "--hooks-dir", str(hooks_dir), "--rundir", rundir],
                    stdout=out, stderr=err)
    return code, out.getvalue().splitlines(), err.getvalue()


def by_name(checks: list[doctor.Check]) -> dict[str, doctor.Check]:
    return {c.name: c for c in checks}


# --- hooks -----------------------------------------------------------------------------


def test_missing_hooks_fail(tmp_path: Path) -> None:
    checks = by_name(doctor.check_hooks(str(tmp_path)))
    assert checks["qemu hook"].status == doctor.FAIL
    assert "install-hooks" in checks["libxl hook"].detail


def test_installed_hooks_pass_and_broken_ones_fail(tmp_path: Path) -> None:
    install.install(str(tmp_path), os.path.abspath(sys.executable), [], None)
    assert {c.status for c in doctor.check_hooks(str(tmp_path))} == {doctor.OK}
    qemu = tmp_path / "qemu.d" / "xen-channel"
    qemu.chmod(0o644)
    assert by_name(doctor.check_hooks(str(tmp_path)))["qemu hook"].status == doctor.FAIL
    qemu.write_text(install.render_shim("qemu", str(tmp_path / "gone" / "python")))
    qemu.chmod(0o755)
    check = by_name(doctor.check_hooks(str(tmp_path)))["qemu hook"]
    assert check.status == doctor.FAIL and "not an executable" in check.detail
    qemu.write_text("#!/bin/sh\n# the admin's own\n")
    check = by_name(doctor.check_hooks(str(tmp_path)))["qemu hook"]
    assert "not a xen-channel shim" in check.detail


# --- run directory -------------------------------------------------------------------------


def test_rundir_missing_is_a_warning(rundir: str) -> None:
    checks = by_name(doctor.check_rundir(rundir, {}))
    assert checks["settings"].status == doctor.OK
    assert checks["run directory"].status == doctor.WARN


def test_rundir_root_owned_0755_passes(rundir: str) -> None:
    os.mkdir(rundir, 0o755)
    os.chmod(rundir, 0o755)
    assert by_name(doctor.check_rundir(rundir, {}))["run directory"].status == doctor.OK


@pytest.mark.parametrize("problem", ["world-writable", "symlink", "not-root", "file"])
def test_rundir_problems_fail(rundir: str, problem: str) -> None:
    if problem == "symlink":
        os.mkdir(rundir + ".real")
        os.symlink(rundir + ".real", rundir)
    elif problem == "file":
        Path(rundir).write_text("")
    else:
        os.mkdir(rundir)
        os.chmod(rundir, 0o777 if problem == "world-writable" else 0o755)
        if problem == "not-root":
            if os.geteuid() != 0:
                pytest.skip("chown to another user needs root")
            os.chown(rundir, 65534, 65534)
    check = by_name(doctor.check_rundir(rundir, {}))["run directory"]
    assert check.status == doctor.FAIL


def test_bad_settings_fail(tmp_path: Path) -> None:
    config = tmp_path / "bad.conf"
    config.write_text("[xen-channel]\nfrobnicate = 1\n")
    check = by_name(doctor.check_rundir(None, {"XEN_CHANNEL_CONFIG": str(config)}))["settings"]
    assert check.status == doctor.FAIL and "frobnicate" in check.detail


# --- libvirt version -----------------------------------------------------------------------


def test_libvirt_version_of_this_host() -> None:
    if shutil.which("libvirtd", path=os.environ.get("PATH", "") + ":/usr/sbin") is None and \
            shutil.which("virsh") is None:
        pytest.skip("libvirt is not installed: cannot read its version")
    check = doctor.check_libvirt()
    assert check.status == doctor.OK and "runs <driver>.d/" in check.detail


@pytest.mark.parametrize(("answer", "status"), [
    ("libvirtd (libvirt) 6.4.0\n", doctor.FAIL),
    ("libvirtd (libvirt) 6.5.0\n", doctor.OK),
    ("libvirtd (libvirt) 10.10.0\n", doctor.OK),
    (None, doctor.FAIL),
])
def test_libvirt_version_threshold(answer: str | None, status: str) -> None:
    # Stands in for `libvirtd --version` of libvirt releases not installed here.
    assert doctor.check_libvirt(lambda command: answer).status == status


# --- xl --------------------------------------------------------------------------------------


def test_xl_of_debian_12_loses_the_first_channel() -> None:
    """The real xl 4.17 through the translator's test-only LD_PRELOAD stub (background.md §3)."""
    import xl_dryrun

    xl_dryrun.require_xl()
    check = doctor.check_xl(xl_dryrun.XL, xl_dryrun.stub_env())
    assert check.status == doctor.WARN
    assert "LOSES the first channel" in check.detail and "libvirt" in check.detail


def test_xl_verdicts() -> None:
    assert doctor.check_xl(None, {}).status == doctor.OK
    assert doctor.check_xl("/x/xl", {}, lambda path, env: False).status == doctor.OK
    unknown = doctor.check_xl("/x/xl", {}, lambda path, env: None)
    assert unknown.status == doctor.WARN and "cannot tell" in unknown.detail


# --- the command -------------------------------------------------------------------------------


def test_doctor_prints_one_line_per_check_and_fails_on_any_failure(
    tmp_path: Path, rundir: str
) -> None:
    code, lines, err = run_doctor(tmp_path, rundir)
    assert code == 1 and err.count("\n") == 1 and "checks failed" in err
    assert len(lines) == 6
    assert all(line.split()[0] in ("ok", "warn", "FAIL") for line in lines)
    install.install(str(tmp_path), os.path.abspath(sys.executable), [], None)
    os.mkdir(rundir, 0o755)
    os.chmod(rundir, 0o755)
    code, lines, err = run_doctor(tmp_path, rundir)
    failing = [line for line in lines if line.startswith("FAIL")]
    assert (code == 0) == (not failing), lines
    assert not [line for line in failing if "hook" in line or "run directory" in line]


def test_paths_in_check_details_are_printed_escaped(tmp_path: Path, rundir: str) -> None:
    """A path with ESC sequences (colour, OSC 52), a C1 CSI, a bidi override or a
    line separator reaches the terminal through errors.escaped (issue 9)."""
    hostile = tmp_path / "h\x1b[31m\x1b]52;c;SGk=\x07\u202e\u2028\x9b"
    code, lines, _err = run_doctor(hostile, rundir)
    out = "\n".join(lines)
    assert code == 1 and len(lines) == 6
    assert not any(c in out for c in ("\x1b", "\x07", "\u202e", "\u2028", "\x9b"))
    hook = next(line for line in lines if line.startswith("FAIL  qemu hook: "))
    assert "h\\x1b[31m\\x1b]52;c;SGk=\\x07\\u202e\\u2028\\x9b/qemu.d/xen-channel is missing" in hook
