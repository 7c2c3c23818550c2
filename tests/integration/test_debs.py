"""The Debian packages, built and used as an admin would, on this machine.

One session builds both packages with ``scripts/build-deb`` (what ``make
deb`` runs: debhelper, pybuild, lintian failing on any error) and the test
then, holding the real libvirtd's lock the whole time:

1. lists /etc, /usr (/lib is /usr/lib here; both are walked if not) and the
   run directory;
2. installs both packages with ``apt-get install ./*.deb``.  libvirtd is
   told to reload by the package itself: the daemon runs with its pid file
   in a private place, so /run/libvirtd.pid (the file the package reads
   when systemd is not running, as here) is pointed at it for the duration;
3. checks what landed: the conffile, the run directory, the hook shims, the
   units (``systemd-analyze verify``), the man pages, the guest launcher
   importing neither lxml nor libvirt, every file of guest/ in the guest
   package;
4. runs ``xen-channel doctor``;
5. starts and destroys a TCG domain whose channel got its path from the
   installed ``xen-channel define``: the installed hooks, run by the real
   libvirtd, register and release it in /run/xen-channel;
6. purges both packages (in ``finally``, so a failure halfway still purges)
   and lists again: nothing may be left behind, and a domain with a channel
   still starts.

It skips, loudly, where the machine cannot provide the parts or where it
could not be left as it was found (the packages or our hooks already there).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import uuid as uuid_module
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TREE = HERE.parent.parent
sys.path.insert(0, str(HERE))

from libvirtd import Libvirtd, new_domain_name, skip_reason, tcg_domain_xml  # noqa: E402

PACKAGES = ("xen-channel-backend", "xen-channel-guest")
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
RUNDIR = "/run/xen-channel"
HOOKS = ("/etc/libvirt/hooks/qemu.d/xen-channel", "/etc/libvirt/hooks/libxl.d/xen-channel")
CHANNEL = "org.example.test.0"
PIDFILE = "/run/libvirtd.pid"
TOOLS = ("dpkg-buildpackage", "dh", "lintian", "apt-get", "dpkg-query", "man")

pytestmark = pytest.mark.integration


def system(*argv: str, check: bool = True, cwd: str | Path | None = None,
           timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a command as an admin's shell would: Debian's PATH, no venv, no Python overrides."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "LIBVIRT_DEFAULT_URI",
                        "XEN_CHANNEL_CONFIG", "XEN_CHANNEL_RUNDIR")}
    env.update(PATH=SYSTEM_PATH, DEBIAN_FRONTEND="noninteractive", LC_ALL="C.UTF-8")
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                            cwd=cwd, env=env, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def installed(package: str) -> bool:
    result = system("dpkg-query", "-W", "-f=${Status}", package, check=False)
    return result.returncode == 0 and "ok installed" in result.stdout


def listing() -> dict[str, tuple[str, int, int, int, str]]:
    """path -> (kind, mode, uid, gid, link target) for everything under the watched trees."""
    found: dict[str, tuple[str, int, int, int, str]] = {}
    tops = ["/etc", "/usr", RUNDIR]
    if not os.path.islink("/lib"):
        tops.append("/lib")
    for top in tops:
        if not os.path.lexists(top):
            continue
        for directory, dirs, files in os.walk(top):
            for name in [*dirs, *files, ""]:
                path = os.path.join(directory, name) if name else directory
                try:
                    info = os.lstat(path)
                except FileNotFoundError:
                    continue  # removed while we walked
                kind = stat.S_IFMT(info.st_mode)
                target = os.readlink(path) if stat.S_ISLNK(info.st_mode) else ""
                found[path] = (oct(kind), stat.S_IMODE(info.st_mode), info.st_uid,
                               info.st_gid, target)
    return found


@pytest.fixture(scope="session")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both .deb files, built once per test session."""
    if os.geteuid() != 0:
        pytest.skip("DEBIAN PACKAGES NOT TESTED: installing them needs root (make test)")
    missing = [tool for tool in TOOLS if shutil.which(tool, path=SYSTEM_PATH) is None]
    if missing:
        pytest.skip(f"DEBIAN PACKAGES NOT TESTED: {', '.join(missing)} missing "
                    "(scripts/install-deps)")
    outdir = tmp_path_factory.mktemp("deb")
    result = system("sh", str(TREE / "scripts" / "build-deb"), str(outdir), timeout=900)
    built = {path.name.split("_")[0]: path for path in outdir.glob("*.deb")}
    assert sorted(built) == sorted(PACKAGES), result.stdout
    lintian = (outdir / "lintian.log").read_text()
    assert not [line for line in lintian.splitlines() if line.startswith("E:")], lintian
    return built


@contextlib.contextmanager
def pidfile_for(daemon: Libvirtd) -> Iterator[None]:
    """/run/libvirtd.pid naming the test daemon, as a system libvirtd's would."""
    if os.path.lexists(PIDFILE):
        pytest.skip(f"DEBIAN PACKAGES NOT TESTED: {PIDFILE} exists: another libvirtd is "
                    "running on this machine")
    with open(PIDFILE, "w", encoding="ascii") as handle:
        handle.write(f"{daemon.pid}\n")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(PIDFILE)


def purge() -> None:
    """Purge both packages; if apt cannot, dpkg must (the machine must be left as found)."""
    present = [package for package in PACKAGES if installed(package)
               or system("dpkg-query", "-W", package, check=False).returncode == 0]
    if not present:
        return
    result = system("apt-get", "purge", "-y", "-q", "-o", "DPkg::Lock::Timeout=600", *present,
                    check=False)
    if result.returncode != 0:
        system("dpkg", "--purge", "--force-remove-reinstreq", *present, check=False)
        raise AssertionError(f"apt-get purge failed:\n{result.stdout}\n{result.stderr}")


def xen_channel(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The installed command, /usr/bin/xen-channel, never the development venv's."""
    return system("/usr/bin/xen-channel", *args, check=check)


def registered(uuid: str) -> dict[str, object] | None:
    for domain in json.loads(xen_channel("list", "--json").stdout):
        if domain["uuid"] == uuid:
            return dict(domain)
    return None


def test_packages_install_work_and_purge_without_a_trace(
    debs: dict[str, Path], tmp_path: Path
) -> None:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    for package in PACKAGES:
        if installed(package):
            pytest.skip(f"DEBIAN PACKAGES NOT TESTED: {package} is installed on this machine; "
                        "the test could not leave it as it found it")
    daemon = Libvirtd()
    daemon.start()  # the lock first: no other test's daemon may run while our hooks are in place
    try:
        for hook in HOOKS:
            if os.path.lexists(hook):
                pytest.skip(f"DEBIAN PACKAGES NOT TESTED: {hook} exists (left by another "
                            "install?); the package would take it over")
        before = listing()
        with pidfile_for(daemon):
            try:
                result = system("sh", "-c", "apt-get install -y -q --no-install-recommends "
                                "-o DPkg::Lock::Timeout=600 ./*.deb", cwd=debs[PACKAGES[0]].parent)
                assert all(installed(package) for package in PACKAGES), result.stdout
                check_installed_files(debs)
                check_doctor()
                check_hooks_under_libvirtd(daemon, tmp_path)
            finally:
                purge()
            assert not any(installed(package) for package in PACKAGES)
            assert not any(os.path.lexists(hook) for hook in HOOKS)
            check_domains_still_start(daemon, tmp_path)
        after = listing()
        appeared = sorted(set(after) - set(before))
        vanished = sorted(set(before) - set(after))
        changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
        assert (appeared, vanished, changed) == ([], [], []), (
            f"left behind: {appeared[:20]}; gone: {vanished[:20]}; changed: {changed[:20]}")
    finally:
        daemon.stop()


def check_installed_files(debs: dict[str, Path]) -> None:
    conffiles = system("dpkg-query", "-W", "-f=${Conffiles}", "xen-channel-backend").stdout
    assert "/etc/xen-channel/xen-channel.conf" in conffiles
    # Every default is there, commented out: the file changes nothing.
    text = Path("/etc/xen-channel/xen-channel.conf").read_text()
    assert "#rundir = /run/xen-channel" in text and "\nrundir" not in text
    info = os.stat(RUNDIR)  # the tmpfiles.d entry, applied at install
    assert (stat.S_ISDIR(info.st_mode), stat.S_IMODE(info.st_mode), info.st_uid) == (True, 0o755, 0)
    for hook in HOOKS:
        info = os.lstat(hook)
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o755
        assert info.st_uid == 0
        shipped = Path("/usr/share/xen-channel-backend/hooks") / hook.split("/")[-2][:-2]
        assert Path(hook).read_bytes() == shipped.read_bytes()
        assert "python='/usr/bin/python3'" in Path(hook).read_text()
    assert xen_channel("--version").stdout.startswith("xen-channel ")
    for page in ("xen-channel", "xen-channel.conf", "xen-channel-guest"):
        shown = system("man", "--warnings", page, check=False)
        assert (shown.returncode, shown.stderr) == (0, ""), page
    # The schema and examples, found through importlib.resources from the install.
    found = system("/usr/bin/python3", "-I", "-m", "xen_channel_backend.resources", "list").stdout
    for name in ("xml/metadata.rng", "xml/examples/vm.json", "systemd/xen-channel-monitor.service",
                 "guest/60-xen-channel.rules", "hooks/qemu"):
        assert name in found
    units = [path for package in PACKAGES
             for path in system("dpkg-query", "-L", package).stdout.split()
             if path.startswith("/lib/systemd/system/") and path.endswith(".service")]
    assert len(units) >= 3, units
    verify = system("systemd-analyze", "verify", *units, check=False)
    assert verify.returncode == 0 and "xen-channel" not in verify.stderr, verify.stderr
    # The guest side: its own launcher and module tree, no lxml, no libvirt.
    imports = system("/usr/bin/python3", "-X", "importtime", "/usr/bin/xen-channel-guest",
                     "--help")
    assert "--channel NAME" in imports.stdout
    # ... and its modules come from the guest package's tree, not dist-packages.
    verbose = system("/usr/bin/python3", "-v", "/usr/bin/xen-channel-guest", "--help").stderr
    assert "/usr/share/xen-channel-guest/xen_channel_backend/__init__.py" in verbose
    loaded = {line.rsplit("|", 1)[-1].strip() for line in imports.stderr.splitlines()}
    assert not {m for m in loaded if m.split(".")[0] in ("lxml", "libvirt", "libvirtmod")}
    guest_files = system("dpkg-query", "-L", "xen-channel-guest").stdout.split()
    for path in (TREE / "guest").iterdir():
        assert any(f.endswith("/" + path.name) for f in guest_files), (
            f"guest/{path.name} is not in the xen-channel-guest package")


def check_doctor() -> None:
    doctor = xen_channel("doctor", check=False)
    lines = doctor.stdout.splitlines()
    for driver in ("libxl", "qemu"):
        line = next((ln for ln in lines if f"{driver} hook" in ln), "")
        assert line.startswith("ok"), f"doctor on the installed {driver} hook: {doctor.stdout}"
    assert doctor.returncode == 0, f"doctor:\n{doctor.stdout}{doctor.stderr}"


def check_hooks_under_libvirtd(daemon: Libvirtd, tmp_path: Path) -> None:
    """The installed hooks, run by the real libvirtd, follow a domain's start and stop."""
    name, uuid = new_domain_name("deb"), str(uuid_module.uuid4())
    source = tmp_path / f"{name}.xml"
    source.write_text(tcg_domain_xml(name, uuid, channels=[(CHANNEL, None)]))
    defined = xen_channel("define", "--all-targets", "--connect", daemon.uri, str(source))
    assert defined.stdout.endswith(f"defined on {daemon.uri}\n")
    path = f"{RUNDIR}/{uuid}/{CHANNEL}"
    try:
        # No daemon.sighup() here: the package's own postinst made libvirtd reload.
        daemon.virsh("start", name)
        record = registered(uuid)
        assert record is not None and record["state"] == "running", record
        assert [c["path"] for c in record["channels"]] == [path]  # type: ignore[union-attr]
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        daemon.virsh("destroy", name)
        assert registered(uuid) is None
        assert not os.path.lexists(os.path.dirname(path))
    finally:
        daemon.virsh("destroy", name, check=False)
        daemon.virsh("undefine", name, check=False)


def check_domains_still_start(daemon: Libvirtd, tmp_path: Path) -> None:
    """After the purge libvirtd runs no hook of ours, and domains with channels start."""
    name = new_domain_name("nodeb")
    socket_dir = tmp_path / "sockets"
    socket_dir.mkdir()
    source = tmp_path / f"{name}.xml"
    source.write_text(tcg_domain_xml(name, None, channels=[(CHANNEL, str(socket_dir / "c"))]))
    try:
        daemon.virsh("define", str(source))
        daemon.virsh("start", name)
        daemon.virsh("destroy", name)
    finally:
        daemon.virsh("destroy", name, check=False)
        daemon.virsh("undefine", name, check=False)
