"""A real libvirtd with the QEMU driver, for integration tests.

This is the tested recipe of docs/background.md §6 (Debian 12, libvirt 9.0):
the ``libvirt-qemu`` user and group must exist (the daemon looks them up
before reading qemu.conf), ``/var/log/libvirt/qemu`` must exist, and
qemu.conf runs QEMU as root with no security driver, cgroups, namespaces or
virtlogd.  The daemon is started detached under ``tini -s`` (a subreaper:
without it destroy takes 2 s instead of 0.4 s) with its own config and pid
file, and is ready once ``virsh -c qemu:///system version`` answers.

Only one system libvirtd can run on a host, so every user of this module is
serialised by an ``flock`` on :data:`LOCK_PATH`, held from :meth:`start` to
:meth:`stop` (a second test process waits; it never starts a second daemon).
The two namespaced daemons of ``two_daemons.py`` (migration tests) share
nothing with the system daemon and do not take this lock; they reuse
:data:`QEMU_CONF_TEXT`, :func:`tcg_domain_xml` and the account set-up here.

API (for tests under tests/integration/)::

    from libvirtd import Libvirtd, skip_reason, tcg_domain_xml

    reason = skip_reason()          # None, or why this host cannot run it
    daemon = Libvirtd()
    daemon.start()                  # lock, host set-up, qemu.conf, start, wait
    daemon.uri                      # "qemu:///system"
    daemon.hooks_dir                # "/etc/libvirt/hooks" (fixed for a system daemon)
    daemon.virsh("list", "--all")   # CompletedProcess (text); check=True by default
    daemon.pid                      # the running libvirtd's pid
    daemon.sighup()                 # re-read hooks (found at start or SIGHUP, background.md §1)
    daemon.restart()                # SIGTERM, wait, start again; running domains survive
    daemon.kill9()                  # SIGKILL; domains survive; start() brings it back
    daemon.stop()                   # destroy+undefine our test domains, stop,
                                    # restore qemu.conf, release the lock

    with Libvirtd() as daemon: ...  # start() ... stop()

    tcg_domain_xml(name, uuid, channels=[("org.example.test.0", "/run/x/sock")])

Domains a test defines must be named with :data:`DOMAIN_PREFIX` so
:meth:`Libvirtd.stop` can clean them up (it never touches other domains).
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import shutil
import signal
import subprocess
import time
import uuid as uuid_module
from collections.abc import Iterable, Iterator
from types import TracebackType
from xml.sax.saxutils import quoteattr

URI = "qemu:///system"
HOOKS_DIR = "/etc/libvirt/hooks"
QEMU_CONF = "/etc/libvirt/qemu.conf"
STATE_DIR = "/run/xcb-test-libvirtd"
LOCK_PATH = "/run/xcb-test-libvirtd.lock"
DOMAIN_PREFIX = "xcbtest-"
#: The first start probes QEMU (4-8 s here); a loaded CI box may need more.
START_TIMEOUT = 90.0
LOCK_TIMEOUT = 900.0

# docs/background.md §6: the settings that let QEMU run in this sandbox.
QEMU_CONF_TEXT = """\
# Written by tests/integration/libvirtd.py for the integration tests;
# the original is restored when the test daemon stops.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"""

_BACKUP = os.path.join(STATE_DIR, "qemu.conf.orig")
_ABSENT_MARKER = os.path.join(STATE_DIR, "qemu.conf.was-absent")


def skip_reason() -> str | None:
    """Why this host cannot run a real libvirtd, or None when it can."""
    if os.geteuid() != 0:
        return "REAL LIBVIRTD NOT TESTED: needs root (run make test as root)"
    for tool in ("libvirtd", "virsh", "tini", "setsid", "qemu-system-x86_64"):
        if _which(tool) is None:
            return f"REAL LIBVIRTD NOT TESTED: {tool} is not installed (see scripts/install-deps)"
    return None


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


class LibvirtdError(RuntimeError):
    """The test daemon could not be started or stopped (message includes its log)."""


class Libvirtd:
    """One system libvirtd with the QEMU driver, owned by this test process."""

    uri = URI
    hooks_dir = HOOKS_DIR

    def __init__(self, state_dir: str = STATE_DIR) -> None:
        self.state_dir = state_dir
        self.conf_path = os.path.join(state_dir, "libvirtd.conf")
        self.pid_path = os.path.join(state_dir, "libvirtd.pid")
        self.log_path = os.path.join(state_dir, "libvirtd.log")
        self._lock_fd: int | None = None
        self._conf_installed = False

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Take the lock, prepare the host, start the daemon and wait for it."""
        if self._lock_fd is None:
            self._lock()
            try:
                self._prepare_host()
            except BaseException:
                self._unlock()
                raise
        if self._running_pid() is not None:
            return
        self._launch()

    def stop(self) -> None:
        """Clean up our domains, stop the daemon, restore qemu.conf, unlock."""
        if self._lock_fd is None:
            return
        try:
            if self._running_pid() is not None:
                with contextlib.suppress(Exception):
                    self._remove_test_domains()
                self._terminate(signal.SIGTERM)
        finally:
            try:
                self._restore_qemu_conf()
            finally:
                self._unlock()

    def restart(self) -> None:
        """Stop the daemon (SIGTERM) and start it again; QEMU processes keep running."""
        self._terminate(signal.SIGTERM)
        self._launch()

    def kill9(self) -> None:
        """SIGKILL the daemon (a crash); :meth:`start` brings it back."""
        self._terminate(signal.SIGKILL)

    def sighup(self) -> None:
        """Make the daemon re-read its hooks directory."""
        pid = self._running_pid()
        if pid is None:
            raise LibvirtdError("libvirtd is not running")
        os.kill(pid, signal.SIGHUP)
        # The daemon handles SIGHUP in its event loop; a round trip shows it is done.
        self.virsh("version")

    @property
    def pid(self) -> int:
        pid = self._running_pid()
        if pid is None:
            raise LibvirtdError("libvirtd is not running")
        return pid

    def virsh(self, *args: str, check: bool = True, stdin: str | None = None,
              timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``virsh -c qemu:///system ARGS``; raise with its stderr when check fails."""
        result = subprocess.run(
            ["virsh", "-c", self.uri, *args], input=stdin, capture_output=True, text=True,
            timeout=timeout, check=False,
        )
        if check and result.returncode != 0:
            raise LibvirtdError(
                f"virsh {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result

    def __enter__(self) -> Libvirtd:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return "".join(handle.readlines()[-lines:])
        except OSError:
            return ""

    # -- internals ---------------------------------------------------------

    def _lock(self) -> None:
        os.makedirs(os.path.dirname(LOCK_PATH), exist_ok=True)
        fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise LibvirtdError(
                        f"another test process held {LOCK_PATH} for {LOCK_TIMEOUT:.0f} s"
                    ) from None
                time.sleep(0.2)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _prepare_host(self) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        # A daemon left by a test process that died holding the lock: ours, by its pid file.
        stale = self._running_pid()
        if stale is not None:
            self._terminate(signal.SIGTERM)
        _ensure_system_account("libvirt-qemu")
        os.makedirs("/var/log/libvirt/qemu", exist_ok=True)
        with open(self.conf_path, "w", encoding="utf-8") as handle:
            # Warnings and errors only, to a file the failure messages quote.
            handle.write(f'log_outputs = "3:file:{self.log_path}"\n')
        self._install_qemu_conf()

    def _install_qemu_conf(self) -> None:
        # A backup left by a crashed run is the real original: keep it.
        if not os.path.exists(_BACKUP) and not os.path.exists(_ABSENT_MARKER):
            if os.path.exists(QEMU_CONF):
                shutil.copy2(QEMU_CONF, _BACKUP)
            else:
                open(_ABSENT_MARKER, "w").close()
        os.makedirs(os.path.dirname(QEMU_CONF), exist_ok=True)
        with open(QEMU_CONF + ".xcb-tmp", "w", encoding="utf-8") as handle:
            handle.write(QEMU_CONF_TEXT)
        os.replace(QEMU_CONF + ".xcb-tmp", QEMU_CONF)
        self._conf_installed = True

    def _restore_qemu_conf(self) -> None:
        if not self._conf_installed:
            return
        if os.path.exists(_BACKUP):
            os.replace(_BACKUP, QEMU_CONF)
        elif os.path.exists(_ABSENT_MARKER):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(QEMU_CONF)
            os.unlink(_ABSENT_MARKER)
        self._conf_installed = False

    def _launch(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pid_path)
        libvirtd = _which("libvirtd") or "libvirtd"
        subprocess.run(
            ["setsid", "-f", "tini", "-s", "--", libvirtd, "-f", self.conf_path,
             "-p", self.pid_path],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            check=True,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._running_pid() is not None:
                answer = subprocess.run(
                    ["virsh", "-c", self.uri, "version"], capture_output=True, text=True,
                    timeout=30, check=False,
                )
                if answer.returncode == 0:
                    return
            time.sleep(0.1)
        raise LibvirtdError(
            f"libvirtd did not answer within {START_TIMEOUT:.0f} s; log:\n{self.log_tail()}"
        )

    def _running_pid(self) -> int | None:
        try:
            with open(self.pid_path, encoding="ascii") as handle:
                pid = int(handle.read().strip())
        except (OSError, ValueError):
            return None
        try:
            with open(f"/proc/{pid}/comm", encoding="ascii") as handle:
                if handle.read().strip() != "libvirtd":
                    return None
            with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return None
        except OSError:
            return None
        return pid

    def _terminate(self, signum: int) -> None:
        pid = self._running_pid()
        if pid is None:
            return
        os.kill(pid, signum)
        deadline = time.monotonic() + 30
        while self._running_pid() == pid:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
            time.sleep(0.05)
        if signum == signal.SIGKILL:
            # libvirtd removes its pid file only on a clean exit.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.pid_path)

    def _remove_test_domains(self) -> None:
        names = self.virsh("list", "--all", "--name").stdout.split()
        for name in names:
            if not name.startswith(DOMAIN_PREFIX):
                continue
            self.virsh("destroy", name, check=False)
            self.virsh("undefine", name, check=False)


def _ensure_system_account(name: str) -> None:
    """Create the system group and user ``name`` unless they exist (background.md §6)."""
    try:
        grp.getgrnam(name)
    except KeyError:
        subprocess.run(["groupadd", "--system", name], check=True, capture_output=True)
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--gid", name, "--no-create-home",
             "--home-dir", "/var/lib/libvirt", "--shell", "/usr/sbin/nologin", name],
            check=True, capture_output=True,
        )


def new_domain_name(tag: str = "dom") -> str:
    """A unique domain name carrying :data:`DOMAIN_PREFIX`."""
    return f"{DOMAIN_PREFIX}{tag}-{uuid_module.uuid4().hex[:8]}"


def tcg_domain_xml(
    name: str,
    uuid: str | None = None,
    channels: Iterable[tuple[str, str | None]] = (("org.example.test.0", None),),
) -> str:
    """A domain that starts under TCG in under a second here (background.md §6).

    Type qemu, 64 MiB, no disk, no graphics, video none, a virtio-serial
    controller and one unix virtio channel per ``(target name, path)``
    (path None: no ``<source>``, for a filler to allocate).
    """
    devices: list[str] = [
        "<controller type='virtio-serial' index='0'/>",
        "<video><model type='none'/></video>",
        "<memballoon model='none'/>",
    ]
    for target_name, path in channels:
        source = f"<source mode='bind' path={quoteattr(path)}/>" if path is not None else ""
        devices.append(
            f"<channel type='unix'>{source}"
            f"<target type='virtio' name={quoteattr(target_name)}/></channel>"
        )
    uuid_line = f"  <uuid>{uuid}</uuid>\n" if uuid is not None else ""
    body = "\n    ".join(devices)
    return (
        f"<domain type='qemu'>\n  <name>{name}</name>\n{uuid_line}"
        "  <memory unit='MiB'>64</memory>\n  <vcpu>1</vcpu>\n"
        "  <os><type arch='x86_64'>hvm</type></os>\n"
        "  <on_poweroff>destroy</on_poweroff>\n"
        f"  <devices>\n    {body}\n  </devices>\n</domain>\n"
    )


@contextlib.contextmanager
def running_libvirtd() -> Iterator[Libvirtd]:
    """``with running_libvirtd() as daemon:`` - start() ... stop()."""
    daemon = Libvirtd()
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()
