"""Two real libvirtd daemons on this machine: two "hosts" that migrate domains for real.

The recipe, tested here (Debian 12, libvirt 9.0; restated in docs/testing.md):

* Each daemon runs in its own mount namespace (``unshare -m --propagation
  private``) with private bind mounts over ``/etc/libvirt``, ``/run/libvirt``,
  ``/var/lib/libvirt``, ``/var/log/libvirt`` and ``/var/cache/libvirt``.  The
  sources are directories under this harness's state directory in /tmp;
  ``/var/cache/libvirt/qemu`` is copied in first, or the first start probes
  QEMU for 4-8 s.
* Each daemon's libvirtd.conf names its own ``unix_sock_dir`` under /tmp (so
  ``qemu+unix:///system?socket=DIR/libvirt-sock`` reaches it from outside)
  and a distinct ``host_uuid`` (equal UUIDs make libvirt refuse with "Attempt
  to migrate guest to the same host").
* The daemon is a child of the test process: ``unshare ... sh -c 'mount ...;
  exec tini -s -- libvirtd ...'``.  tini is a subreaper (without it a destroy
  takes ~2 s instead of ~0.4 s); it also gets SIGTERM if the test process
  dies (PR_SET_PDEATHSIG), and forwards it to libvirtd.
* Migrate with ``virsh -c URI_A migrate --live DOM URI_B --migrateuri
  tcp:127.0.0.1:PORT --listen-address 127.0.0.1`` (no disk, so no
  ``--unsafe``).

Each side has its own xen-channel settings file at :data:`CONFIG` *inside*
its namespace (the private /etc/libvirt) naming a different run directory
under the private /run/libvirt, so each side's run directory, registry and
sockets are visible only inside its own namespace, as on two real hosts.
Look inside with :meth:`Daemon.run` / :meth:`Daemon.xen_channel` /
:meth:`Daemon.probe` (``nsenter -t PID -m``).

Nothing here touches the host's /etc/libvirt, /run/libvirt or the system
daemon's sockets, so this harness does **not** take the single-daemon
harness's lock (/run/xcb-test-libvirtd.lock): the two can run at the same
time.  It leaves the machine as it found it: :meth:`TwoDaemons.stop` destroys
and undefines every domain on its daemons (all of them are the test's),
kills whatever still runs in each namespace, stops the daemons and removes
the state directory; a state directory left by a test process that died is
swept at the next start.

API (for tests under tests/integration/)::

    from two_daemons import TwoDaemons, skip_reason

    with TwoDaemons() as pair:          # both daemons running
        pair.a.uri, pair.b.uri          # qemu+unix:///system?socket=...
        pair.a.rundir                   # this side's run directory (inside its namespace)
        pair.a.install_hooks()          # real `xen-channel install-hooks`, then SIGHUP
        pair.a.virsh("start", name)
        pair.a.xen_channel("list", "--json")       # run inside the namespace
        pair.a.probe([path])            # {path: {"kind": ..., "accepts": bool}}
        pair.a.spawn([XEN_CHANNEL, "monitor", "--connect", pair.a.uri])  # Popen, in the namespace
        pair.migrate(name, pair.a, pair.b)         # CompletedProcess; check=False to inspect
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid as uuid_module
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from libvirtd import QEMU_CONF_TEXT, _ensure_system_account, _which

#: Parent of every harness's state directory; one subdirectory per TwoDaemons.
STATE_PARENT = "/tmp/xcb-two-daemons"
#: What each namespace gets privately (the recipe above, docs/background.md §6).
PRIVATE_DIRS = ("/etc/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/log/libvirt",
                "/var/cache/libvirt")
#: The xen-channel settings file, as seen inside a namespace (the private /etc/libvirt).
CONFIG = "/etc/libvirt/xen-channel.conf"
HOOKS_DIR = "/etc/libvirt/hooks"
START_TIMEOUT = 90.0
XEN_CHANNEL = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "xen-channel")
PYTHON = os.path.abspath(sys.executable)

_PR_SET_PDEATHSIG = 1


def skip_reason() -> str | None:
    """Why this host cannot run two namespaced daemons, or None when it can."""
    if os.geteuid() != 0:
        return "TWO-DAEMON MIGRATION NOT TESTED: needs root (run make test as root)"
    for tool in ("libvirtd", "virsh", "tini", "unshare", "nsenter", "mount",
                 "qemu-system-x86_64"):
        if _which(tool) is None:
            return (f"TWO-DAEMON MIGRATION NOT TESTED: {tool} is not installed "
                    "(see scripts/install-deps)")
    return None


class DaemonError(RuntimeError):
    """A namespaced daemon could not be started or a command in it failed."""


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the test process dies, the
    # daemon (tini, which forwards it to libvirtd) gets SIGTERM.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _namespace_of(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _pids_in_namespace(namespace: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _namespace_of(int(entry)) == namespace:
            pids.append(int(entry))
    return pids


def _kill_namespace(namespace: str, spare: Sequence[int] = ()) -> None:
    """SIGKILL every process in ``namespace`` (except ``spare``) and wait for them."""
    if namespace == _namespace_of(os.getpid()):
        return  # never the test's own (the host's) namespace
    victims = [p for p in _pids_in_namespace(namespace) if p not in spare]
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in victims) and time.monotonic() < deadline:
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# A probe run inside a namespace: what is at each path, and does a socket accept?
_PROBE = r"""
import json, os, socket, stat, sys
out = {}
for path in sys.argv[1:]:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        out[path] = {"kind": "absent", "accepts": False}
        continue
    kind = ("socket" if stat.S_ISSOCK(mode) else "directory" if stat.S_ISDIR(mode)
            else "symlink" if stat.S_ISLNK(mode) else "file")
    accepts = False
    if kind == "socket":
        client = socket.socket(socket.AF_UNIX)
        client.settimeout(5)
        try:
            client.connect(path)
            accepts = True
        except OSError:
            pass
        finally:
            client.close()
    out[path] = {"kind": kind, "accepts": accepts}
print(json.dumps(out))
"""


class Daemon:
    """One libvirtd in its own mount namespace: one "host"."""

    hooks_dir = HOOKS_DIR
    config = CONFIG

    def __init__(self, base: str, tag: str) -> None:
        self.tag = tag
        self.base = os.path.join(base, tag)
        self.sock_dir = os.path.join(self.base, "sock")
        self.uri = f"qemu+unix:///system?socket={self.sock_dir}/libvirt-sock"
        #: This side's run directory, inside its namespace (the private /run/libvirt).
        self.rundir = f"/run/libvirt/xen-channel-{tag}"
        self.host_uuid = str(uuid_module.uuid4())
        self.conf_path = os.path.join(self.base, "libvirtd.conf")
        self.pid_path = os.path.join(self.base, "libvirtd.pid")
        self.log_path = os.path.join(self.base, "libvirtd.log")
        self.output_path = os.path.join(self.base, "output.log")
        self._process: subprocess.Popen[bytes] | None = None
        self.namespace: str | None = None

    # -- where things are --------------------------------------------------

    def private(self, inside: str) -> str:
        """The host path of ``inside`` (a path under one of :data:`PRIVATE_DIRS`).

        For set-up only (writing a config file before the daemon starts);
        tests look inside the namespace with :meth:`run` and :meth:`probe`.
        """
        for directory in PRIVATE_DIRS:
            if inside == directory or inside.startswith(directory + "/"):
                return os.path.join(self.base, "root" + directory) + inside[len(directory):]
        raise ValueError(f"{inside} is not under a private directory")

    @property
    def pid(self) -> int:
        """The pid of tini, the namespace's first process (for ``nsenter -t``)."""
        if self._process is None or self._process.poll() is not None:
            raise DaemonError(f"daemon {self.tag} is not running")
        return self._process.pid

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        for directory in PRIVATE_DIRS:
            os.makedirs(self.private(directory), exist_ok=True)
        os.makedirs(self.private("/var/log/libvirt/qemu"), exist_ok=True)
        os.makedirs(self.sock_dir, exist_ok=True)
        cache = "/var/cache/libvirt/qemu"
        if os.path.isdir(cache) and not os.path.exists(self.private(cache)):
            shutil.copytree(cache, self.private(cache), symlinks=True)
        with open(self.private("/etc/libvirt/qemu.conf"), "w", encoding="utf-8") as handle:
            handle.write(QEMU_CONF_TEXT)
        self.write_config(self.rundir)
        with open(self.conf_path, "w", encoding="utf-8") as handle:
            handle.write(
                f'unix_sock_dir = "{self.sock_dir}"\n'
                f'host_uuid = "{self.host_uuid}"\n'
                f'log_outputs = "3:file:{self.log_path}"\n'
            )
        mounts = "".join(
            f"mount --bind {shlex.quote(self.private(d))} {d} && " for d in PRIVATE_DIRS
        )
        libvirtd = _which("libvirtd") or "libvirtd"
        script = (f"{mounts}exec tini -s -- {libvirtd} -f {shlex.quote(self.conf_path)} "
                  f"-p {shlex.quote(self.pid_path)}")
        with open(self.output_path, "ab") as output:
            self._process = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent, start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise DaemonError(f"daemon {self.tag} exited ({self._process.returncode}): "
                                  f"{self.log_tail()}")
            if self.namespace is None:
                namespace = _namespace_of(self._process.pid)
                if namespace is not None and namespace != _namespace_of(os.getpid()):
                    self.namespace = namespace
                    with open(os.path.join(self.base, "namespace"), "w",
                              encoding="ascii") as handle:
                        handle.write(namespace + "\n")
            if self.namespace is not None and os.path.exists(self.pid_path):
                answer = subprocess.run(["virsh", "-c", self.uri, "version"],
                                        capture_output=True, timeout=30, check=False)
                if answer.returncode == 0:
                    return
            if time.monotonic() > deadline:
                raise DaemonError(f"daemon {self.tag} did not answer within "
                                  f"{START_TIMEOUT:.0f} s: {self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Destroy and undefine every domain, kill the rest of the namespace, stop."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.poll() is None:
                with contextlib.suppress(Exception):
                    self._remove_domains()
        finally:
            if self.namespace is not None:
                # QEMU processes left over (a failed destroy): killed while tini
                # still runs, so it reaps them.
                daemons = [process.pid, *self._libvirtd_pids()]
                _kill_namespace(self.namespace, spare=daemons)
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # tini forwards it to libvirtd
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
            if self.namespace is not None:
                _kill_namespace(self.namespace)

    def _libvirtd_pids(self) -> list[int]:
        try:
            with open(self.pid_path, encoding="ascii") as handle:
                return [int(handle.read().strip())]
        except (OSError, ValueError):
            return []

    def _remove_domains(self) -> None:
        for name in self.virsh("list", "--name", check=False).stdout.split():
            self.virsh("destroy", name, check=False)
        for name in self.virsh("list", "--all", "--name", check=False).stdout.split():
            self.virsh("undefine", "--managed-save", name, check=False)

    def sighup(self) -> None:
        """Make libvirtd re-read its hooks directory (hooks are found at start or SIGHUP)."""
        pids = self._libvirtd_pids()
        if not pids:
            raise DaemonError(f"daemon {self.tag} has no pid file")
        os.kill(pids[0], signal.SIGHUP)
        self.virsh("version")  # handled in its event loop: a round trip shows it is done

    # -- acting and looking ------------------------------------------------

    def virsh(self, *args: str, check: bool = True, timeout: float = 120.0,
              ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["virsh", "-c", self.uri, *args], capture_output=True,
                                text=True, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise DaemonError(f"[{self.tag}] virsh {' '.join(args)} failed "
                              f"({result.returncode}): {result.stderr.strip()}")
        return result

    def run(self, argv: Sequence[str], *, check: bool = True, input: str | None = None,
            env: Mapping[str, str] | None = None, timeout: float = 120.0,
            ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside this daemon's mount namespace (``nsenter -t PID -m``)."""
        environ = {**os.environ, "XEN_CHANNEL_CONFIG": CONFIG, **(env or {})}
        environ.pop("XEN_CHANNEL_RUNDIR", None)
        result = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "--", *argv],
                                input=input, capture_output=True, text=True, env=environ,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise DaemonError(f"[{self.tag}] {' '.join(argv)} failed ({result.returncode}): "
                              f"{result.stderr.strip()}")
        return result

    def spawn(self, argv: Sequence[str]) -> subprocess.Popen[str]:
        """Start ``argv`` inside the namespace, in the background (stderr piped, text).

        The caller stops it; :meth:`stop` kills whatever is left in the namespace.
        """
        environ = {**os.environ, "XEN_CHANNEL_CONFIG": CONFIG}
        environ.pop("XEN_CHANNEL_RUNDIR", None)
        return subprocess.Popen(["nsenter", "-t", str(self.pid), "-m", "--", *argv],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=environ)

    def xen_channel(self, *args: str, check: bool = True, input: str | None = None,
                    ) -> subprocess.CompletedProcess[str]:
        """The real command-line tool, run on this "host" with its settings file."""
        return self.run([XEN_CHANNEL, *args], check=check, input=input)

    def python(self, code: str, *args: str) -> str:
        """Run ``code`` with the test interpreter inside the namespace; its stdout."""
        return self.run([PYTHON, "-c", code, *args]).stdout

    def probe(self, paths: Sequence[str]) -> dict[str, dict[str, Any]]:
        """What is at each path inside the namespace, and whether a socket accepts."""
        if not paths:
            return {}
        found: dict[str, dict[str, Any]] = json.loads(self.python(_PROBE, *paths))
        return found

    def registry(self) -> list[dict[str, Any]]:
        """``xen-channel list --json`` on this side."""
        listed: list[dict[str, Any]] = json.loads(self.xen_channel("list", "--json").stdout)
        return listed

    def record(self, uuid: str) -> dict[str, Any] | None:
        for entry in self.registry():
            if entry["uuid"] == uuid:
                return entry
        return None

    def write_config(self, rundir: str, extra: str = "") -> None:
        """(Re)write this side's xen-channel settings file (read by its hooks on each call)."""
        path = self.private(CONFIG)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(f"[xen-channel]\nrundir = {rundir}\ngroup = root\n{extra}")
        os.replace(path + ".tmp", path)

    def install_hooks(self) -> None:
        """The real ``xen-channel install-hooks`` inside the namespace, then SIGHUP."""
        self.xen_channel("install-hooks", "--hooks-dir", HOOKS_DIR, "--config", CONFIG)
        self.sighup()

    def uninstall_hooks(self) -> None:
        self.xen_channel("install-hooks", "--hooks-dir", HOOKS_DIR, "--uninstall")
        self.sighup()

    def log_tail(self, lines: int = 30) -> str:
        text = ""
        for path in (self.output_path, self.log_path):
            with contextlib.suppress(OSError), open(path, errors="replace") as handle:
                text += "".join(handle.readlines()[-lines:])
        return text


class TwoDaemons:
    """Two namespaced daemons, ``a`` and ``b``, owned by this test process."""

    def __init__(self) -> None:
        self.base = ""
        self.a: Daemon
        self.b: Daemon

    def start(self) -> None:
        _sweep_stale()
        os.makedirs(STATE_PARENT, mode=0o700, exist_ok=True)
        self.base = os.path.join(STATE_PARENT, f"{os.getpid()}-{uuid_module.uuid4().hex[:8]}")
        os.makedirs(self.base, mode=0o755)
        with open(os.path.join(self.base, "owner"), "w", encoding="ascii") as handle:
            handle.write(f"{os.getpid()}\n")
        _ensure_system_account("libvirt-qemu")  # libvirtd dies without it
        self._made_dirs = [d for d in PRIVATE_DIRS if not os.path.isdir(d)]
        for directory in self._made_dirs:  # mount points (e.g. /run/libvirt after a reboot)
            os.makedirs(directory)
        self.a = Daemon(self.base, "a")
        self.b = Daemon(self.base, "b")
        try:
            self.a.start()
            self.b.start()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if not self.base:
            return
        try:
            for daemon in (getattr(self, "a", None), getattr(self, "b", None)):
                if daemon is not None:
                    daemon.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
            for directory in reversed(getattr(self, "_made_dirs", [])):
                with contextlib.suppress(OSError):
                    os.rmdir(directory)
            with contextlib.suppress(OSError):
                os.rmdir(STATE_PARENT)  # only if no other harness uses it
            self.base = ""

    def migrate(self, name: str, source: Daemon, destination: Daemon, *,
                check: bool = True, extra: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
        """``virsh -c SOURCE migrate --live NAME DEST --migrateuri tcp:127.0.0.1:PORT ...``."""
        return source.virsh(
            "migrate", "--live", *extra, name, destination.uri,
            "--migrateuri", f"tcp:127.0.0.1:{free_port()}", "--listen-address", "127.0.0.1",
            check=check,
        )

    def __enter__(self) -> TwoDaemons:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()


def _sweep_stale() -> None:
    """Remove what a test process that died (SIGKILL) left: its namespaces' processes, its dir."""
    try:
        entries = os.listdir(STATE_PARENT)
    except FileNotFoundError:
        return
    for entry in entries:
        base = os.path.join(STATE_PARENT, entry)
        try:
            with open(os.path.join(base, "owner"), encoding="ascii") as handle:
                owner = int(handle.read().strip())
        except (OSError, ValueError):
            owner = 0
        if owner and _alive(owner):
            continue  # another live test process's harness
        for tag in ("a", "b"):
            with contextlib.suppress(OSError), open(os.path.join(base, tag, "namespace"),
                                                    encoding="ascii") as handle:
                namespace = handle.read().strip()
                if namespace:
                    _kill_namespace(namespace)
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def two_daemons() -> Iterator[TwoDaemons]:
    """``with two_daemons() as pair:`` - start() ... stop()."""
    pair = TwoDaemons()
    pair.start()
    try:
        yield pair
    finally:
        pair.stop()
