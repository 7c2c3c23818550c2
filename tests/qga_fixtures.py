"""Debian's real qemu-ga on the guest end of the QEMU stand-in, made safe to run here.

qemu-ga acts on the machine it runs on: it can freeze every filesystem
(the root one too, even inside a private mount namespace), shut the machine
down, suspend it, run commands, write files and change accounts.  So every
qemu-ga started by the tests goes through :func:`start_qemu_ga`, which
always passes ``--block-rpcs`` with :data:`DANGEROUS`.  A test may unblock
one of the commands in :data:`CONFINABLE` only by also running qemu-ga in a
:class:`PrivateNamespace`: a private mount namespace (``unshare -m``) set up
by a script that confines the command (a loop-mounted image of the test's
own for the freeze, a private copy of /etc for a password), held open by a
process of its own so it outlives qemu-ga until the test has cleaned up.
The freeze additionally goes through tests/freeze_guard.py.

scripts/demo.py uses :func:`blocked` too, and imports this module without
pytest.

The agent runs unmodified in isa-serial mode on the pty slave that
tests/backend_standin.py bridges to the channel socket: the same path a
Xen guest's qemu-ga sees (/dev/hvcN is a tty) and the one the demo uses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid as uuid_module
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from backend_standin import BackendStandin
from broker_fixtures import write_record
from waiting import WAIT

from xen_channel_backend.qga import AGENT_CHANNEL

QEMU_GA = "/usr/sbin/qemu-ga"

#: Every qemu-ga 7.2 command that changes the machine it runs on.  The
#: all-filesystems freeze-list is here too: without mountpoints (or with an
#: empty list) it freezes everything, / included.
DANGEROUS: tuple[str, ...] = (
    "guest-shutdown",
    "guest-suspend-disk",
    "guest-suspend-ram",
    "guest-suspend-hybrid",
    "guest-exec",
    "guest-exec-status",
    "guest-file-open",
    "guest-file-close",
    "guest-file-read",
    "guest-file-write",
    "guest-file-seek",
    "guest-file-flush",
    "guest-fsfreeze-freeze",
    "guest-fsfreeze-freeze-list",
    "guest-fstrim",
    "guest-set-user-password",
    "guest-set-time",
    "guest-set-vcpus",
    "guest-set-memory-blocks",
    "guest-ssh-add-authorized-keys",
    "guest-ssh-remove-authorized-keys",
)
#: The only ones a test may unblock, and then only inside a confining namespace.
CONFINABLE = frozenset({"guest-fsfreeze-freeze-list", "guest-set-user-password"})


def require_qemu_ga() -> None:
    # pytest only when it matters: scripts/demo.py imports this module too.
    if not os.access(QEMU_GA, os.X_OK):
        import pytest

        pytest.skip("Debian's qemu-guest-agent is not installed (scripts/install-deps)")


def blocked(allow: Sequence[str] = ()) -> str:
    """The --block-rpcs value: every dangerous command but ``allow``."""
    unknown = set(allow) - CONFINABLE
    if unknown:
        raise AssertionError(f"{sorted(unknown)} may never be unblocked in a test")
    return ",".join(c for c in DANGEROUS if c not in allow)


class PrivateNamespace:
    """A private mount namespace, set up by ``setup`` (sh, ``set -e``) and held by a process.

    The holder prints ``ready`` only after the whole script succeeded, so a
    failed confinement (a bind mount that did not happen) stops the test
    before qemu-ga ever starts.  :meth:`enter` is the argv prefix that runs
    a command inside; :meth:`run` runs one there now.
    """

    def __init__(self, setup: str) -> None:
        if shutil.which("unshare") is None or shutil.which("nsenter") is None:
            import pytest

            pytest.skip("needs unshare and nsenter (util-linux)")
        script = f"set -e\n{setup}\necho ready\nexec sleep 3600\n"
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line != "ready\n":
            self.close()
            stderr = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"private namespace set-up failed: {stderr}")

    def enter(self) -> list[str]:
        return ["nsenter", "-t", str(self.proc.pid), "-m", "--"]

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.enter(), *argv], capture_output=True, text=True,
                              timeout=WAIT, check=False)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(WAIT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


class QemuGa:
    """One qemu-ga process on ``tty`` (a pty slave), with its own state directory."""

    def __init__(
        self,
        tty: str,
        statedir: str,
        *,
        allow: Sequence[str] = (),
        namespace: PrivateNamespace | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        require_qemu_ga()
        if allow and namespace is None:
            raise AssertionError("unblocking a command needs a confining PrivateNamespace")
        os.makedirs(statedir, exist_ok=True)
        self.statedir = statedir
        self.log_path = os.path.join(statedir, "qemu-ga.log")
        argv = [
            QEMU_GA, "-m", "isa-serial", "-p", tty, "-t", statedir,
            "-f", os.path.join(statedir, "qemu-ga.pid"), "-l", self.log_path,
            f"--block-rpcs={blocked(allow)}", *extra,
        ]
        if namespace is not None:
            argv = [*namespace.enter(), *argv]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@dataclass
class AgentDomain:
    """A registered running domain whose agent channel leads to a real qemu-ga."""

    base: str
    rundir: str
    name: str
    uuid: str
    socket: str
    qemu: BackendStandin
    agent: QemuGa


def short_base() -> str:
    """A short private directory (socket paths must fit 107 bytes)."""
    return tempfile.mkdtemp(prefix="xcbqga", dir="/dev/shm" if os.path.isdir("/dev/shm")
                            else "/tmp")


@contextlib.contextmanager
def agent_domain(
    name: str = "vm1",
    *,
    allow: Sequence[str] = (),
    namespace: PrivateNamespace | None = None,
    base: str | None = None,
    qemu_socket: str | None = None,
) -> Iterator[AgentDomain]:
    """Register ``name`` with an org.qemu.guest_agent.0 socket channel, as the hooks
    would; serve the socket with the QEMU stand-in; run qemu-ga on its pty.

    ``qemu_socket``: let the stand-in listen there instead of at the registered
    path, so that something can sit between the client and QEMU (freeze_guard.py).
    """
    require_qemu_ga()
    own_base = base is None
    base = base or short_base()
    try:
        rundir = os.path.join(base, "run")
        uuid = str(uuid_module.uuid4())
        socket_path = write_record(Path(rundir), uuid, name, [AGENT_CHANNEL])[AGENT_CHANNEL]
        with BackendStandin(qemu_socket or socket_path) as qemu:
            agent = QemuGa(qemu.guest_tty, os.path.join(base, "qga"), allow=allow,
                           namespace=namespace)
            try:
                yield AgentDomain(base, rundir, name, uuid, socket_path, qemu, agent)
            finally:
                agent.stop()
    finally:
        if own_base:
            shutil.rmtree(base, ignore_errors=True)
