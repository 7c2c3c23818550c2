"""Debian's real qemu-ga on the guest end of the QEMU stand-in, made safe to run here.

qemu-ga acts on the machine it runs on: it can freeze every filesystem
(the root one too, even inside a private mount namespace), shut the machine
down, suspend it, run commands, write files and change accounts.  So every
qemu-ga started by the tests goes through :func:`start_qemu_ga`, which
always passes ``--block-rpcs`` with :data:`DANGEROUS`.  A test may unblock
one of the commands in :data:`CONFINABLE` only by also giving a
``namespace_setup`` shell script: qemu-ga then runs inside ``unshare -m``
after that script, which must confine the command (a loop-mounted image of
the test's own for the freeze, a private copy of /etc for a password), and
the freeze additionally goes through tests/freeze_guard.py.

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

import pytest
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
    if not os.access(QEMU_GA, os.X_OK):
        pytest.skip("Debian's qemu-guest-agent is not installed (scripts/install-deps)")


def blocked(allow: Sequence[str] = ()) -> str:
    """The --block-rpcs value: every dangerous command but ``allow``."""
    unknown = set(allow) - CONFINABLE
    if unknown:
        raise AssertionError(f"{sorted(unknown)} may never be unblocked in a test")
    return ",".join(c for c in DANGEROUS if c not in allow)


class QemuGa:
    """One qemu-ga process on ``tty`` (a pty slave), with its own state directory."""

    def __init__(
        self,
        tty: str,
        statedir: str,
        *,
        allow: Sequence[str] = (),
        namespace_setup: str | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        require_qemu_ga()
        if allow and namespace_setup is None:
            raise AssertionError("unblocking a command needs a confining namespace_setup")
        os.makedirs(statedir, exist_ok=True)
        self.statedir = statedir
        self.log_path = os.path.join(statedir, "qemu-ga.log")
        argv = [
            QEMU_GA, "-m", "isa-serial", "-p", tty, "-t", statedir,
            "-f", os.path.join(statedir, "qemu-ga.pid"), "-l", self.log_path,
            f"--block-rpcs={blocked(allow)}", *extra,
        ]
        if namespace_setup is not None:
            # set -e: if the confinement fails, qemu-ga never starts.
            script = f"set -e\n{namespace_setup}\nexec \"$@\"\n"
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                    "qemu-ga", *argv]
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
    namespace_setup: str | None = None,
    base: str | None = None,
) -> Iterator[AgentDomain]:
    """Register ``name`` with an org.qemu.guest_agent.0 socket channel, as the hooks
    would; serve the socket with the QEMU stand-in; run qemu-ga on its pty."""
    require_qemu_ga()
    own_base = base is None
    base = base or short_base()
    try:
        rundir = os.path.join(base, "run")
        uuid = str(uuid_module.uuid4())
        socket_path = write_record(Path(rundir), uuid, name, [AGENT_CHANNEL])[AGENT_CHANNEL]
        with BackendStandin(socket_path) as qemu:
            agent = QemuGa(qemu.guest_tty, os.path.join(base, "qga"), allow=allow,
                           namespace_setup=namespace_setup)
            try:
                yield AgentDomain(base, rundir, name, uuid, socket_path, qemu, agent)
            finally:
                agent.stop()
    finally:
        if own_base:
            shutil.rmtree(base, ignore_errors=True)
