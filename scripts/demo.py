#!/usr/bin/env python3
"""``make demo``: the whole scenario on embedded defaults, as a readable step log.

Part A (issue 2) converts every example in ``xml/examples/`` to xl.cfg and
back and shows the round trip is exact.  Part B (issue 6) walks through the
seed's eleven steps with every real part that can run here; then (issue 10)
the guest's own qemu-guest-agent answers on the domain's second channel,
``org.qemu.guest_agent.0``, and dom0 asks it through ``domifaddr``,
``guestinfo`` and ``qemu-agent-command``; then the stopped/release hooks
clean up:

- libvirt-python on ``test:///default`` (the domain is defined and started
  there; that driver lives in this process, so nothing persists);
- the project's own modules: ``convert``/``fill`` through the real CLI, the
  real hook entry point, metadata, the dom0 ``ChannelClient``;
- the guest half as shipped: ``guest/xen-channel-setup`` (POSIX sh) with
  Debian's real ``xenstore-read``, ``guest/xen-channel-guest`` as a
  separate process, and Debian's unmodified ``qemu-ga`` started with the
  command line of ``guest/xen-channel-qemu-ga@.service``.  qemu-ga acts on
  the machine it runs on, so every command that would change this machine
  (shutdown, suspend, exec, files, freeze, passwords, time, vCPUs, memory,
  ssh keys) is blocked with ``--block-rpcs``; the demo shows them refused;
- where no Xen hypervisor can run, the two test doubles under ``tests/``:
  ``backend_standin`` for the device-model QEMU (socket <-> pty, the pty
  slave standing for the guest's /dev/hvcN) and ``xenstore_standin`` for
  xenstored.

Everything lives in one temporary directory (the run directory, the
settings file, the guest's /dev and root), removed at the end unless
``--keep``; no root is needed and nothing is written elsewhere.  Exit
status: 0 when every step is OK, 1 otherwise (the failed step says why).
``--break-step N`` makes step N fail on purpose, and ``--bad-payload``
pushes an ssh key for a user the guest does not have (the guest answers
"partial"): both exist for tests/test_demo.py.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import copy
import dataclasses
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "xml" / "examples"
GUEST_SETUP = REPO / "guest" / "xen-channel-setup"
GUEST_AGENT = REPO / "guest" / "xen-channel-guest"
# Run from a source tree (make demo): the package next to scripts/ first, and
# the two stand-ins from tests/ (they are test doubles, not part of the package).
sys.path[:0] = [str(REPO), str(REPO / "tests")]

if TYPE_CHECKING:
    from backend_standin import BackendStandin
    from xenstore_standin import XenstoreStandin

    from xen_channel_backend.agent import AckResult, ChannelClient

URI = "test:///default"
DOMAIN_NAME = "demo-guest"
DOMAIN_UUID = "0d3e0c0d-e000-4a6e-8d3e-00000000d3e0"
CHANNEL = "org.example.agent.0"
#: Channel i of a domain is xenbus device console-(i+1) (background.md §4); ours is the first.
CONSOLE = 1
#: The second channel: the guest's qemu-guest-agent (issue 10).
AGENT_CHANNEL = "org.qemu.guest_agent.0"
AGENT_CONSOLE = 2
QGA_UNIT = REPO / "guest" / "xen-channel-qemu-ga@.service"
HOSTNAME = "demo-guest.example.org"
ADDRESS = {"interface": "eth0", "address": "192.0.2.10/24", "gateway": "192.0.2.1",
           "dns": ["192.0.2.53"]}
TIMEOUT = 10.0
#: A domain template as a management tool would hold it: no channel yet.
TEMPLATE = f"""<domain type='test'>
  <name>{DOMAIN_NAME}</name>
  <uuid>{DOMAIN_UUID}</uuid>
  <memory unit='KiB'>262144</memory>
  <os>
    <type arch='x86_64'>xen</type>
  </os>
  <devices>
    <console type='pty'>
      <target type='xen' port='0'/>
    </console>
  </devices>
</domain>
"""


def demo_ssh_key() -> str:
    """A well-formed ed25519 public key line (RFC 4253 wire format), for show only."""
    key_type = b"ssh-ed25519"
    point = hashlib.sha256(b"xen-channel-backend demo key").digest()
    blob = len(key_type).to_bytes(4, "big") + key_type + len(point).to_bytes(4, "big") + point
    return f"ssh-ed25519 {base64.b64encode(blob).decode('ascii')} demo@dom0"


class StepFailed(Exception):
    """A step's check did not hold; the message is the one line shown."""


@dataclasses.dataclass
class Outcome:
    number: str
    title: str
    ok: bool
    detail: str


class Log:
    """Prints the step log: one status line per step, indented detail lines."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.outcomes: list[Outcome] = []
        self._details: list[str] = []

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def detail(self, text: str) -> None:
        """A detail of the current step, printed under its status line."""
        self._details.extend(line.rstrip() for line in text.rstrip("\n").splitlines())

    def record(self, number: str, title: str, ok: bool, detail: str) -> None:
        self.outcomes.append(Outcome(number, title, ok, detail))
        status = "OK" if ok else "FAILED"
        self.say(f"[{number:>2}] {status:<6} {title}: {detail}")
        for line in self._details:
            self.say(f"            {line}".rstrip())
        self._details.clear()

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


def one_line(exc: BaseException) -> str:
    from xen_channel_backend.errors import XenChannelError

    if isinstance(exc, XenChannelError):
        text = exc.message()
    elif isinstance(exc, StepFailed):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


# --- running the project's entry points in this process --------------------------


@dataclasses.dataclass
class Ran:
    code: int
    out: str
    err: str


def xen_channel(*argv: str, stdin: str = "") -> Ran:
    """``xen-channel ARGV`` through cli.main, as a user would run it."""
    from xen_channel_backend import cli

    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(argv), io.StringIO(stdin), out, err)
    return Ran(code, out.getvalue(), err.getvalue())


def checked(ran: Ran, what: str) -> str:
    if ran.code != 0:
        raise StepFailed(f"{what} exited {ran.code}: {ran.err.strip() or '(no message)'}")
    return ran.out


# --- part A: the translator round trip -------------------------------------------


def part_a(log: Log, work: Path) -> None:
    """Each example: XML -> xl.cfg -> XML -> xl.cfg, and the .cfg shipped beside it."""
    log.say("== Part A: xl.cfg <-> libvirt XML round trip of xml/examples/")
    examples = sorted(EXAMPLES.glob("*.xml"))
    if not examples:
        log.record("A", "examples", False, f"no examples in {EXAMPLES}")
    for xml_path in examples:
        try:
            detail = round_trip(log, work, xml_path)
        except Exception as exc:
            log.record("A", xml_path.stem, False, one_line(exc))
        else:
            log.record("A", xml_path.stem, True, detail)
    log.say()


def round_trip(log: Log, work: Path, xml_path: Path) -> str:
    name = xml_path.stem
    # A KVM domain's channels are virtio; moving it to Xen retargets them.
    flags = ["--retarget-virtio"] if name.startswith("kvm-") else []
    to_xl = xen_channel("convert", "--to", "xl", *flags, str(xml_path))
    line = checked(to_xl, "convert --to xl")
    (work / f"{name}.cfg").write_text(line)
    # Back into the same domain: its Xen channels are replaced by the xl.cfg's.
    back = checked(
        xen_channel("convert", "--to", "libvirt", str(work / f"{name}.cfg"),
                    "--into", str(xml_path)),
        "convert --to libvirt --into",
    )
    (work / f"{name}.xml").write_text(back)
    again = checked(xen_channel("convert", "--to", "xl", str(work / f"{name}.xml")),
                    "convert --to xl (again)")
    log.detail(f"XML -> xl.cfg:          {line.strip()}")
    log.detail(f"-> XML -> xl.cfg again: {again.strip()}")
    for warning in to_xl.err.splitlines():
        log.detail(f"({warning.strip()})")
    if again != line:
        raise StepFailed("round trip: DIFFERENT (compare the two lines below)")
    notes = []
    if flags:
        # The Xen form is added next to the virtio channels, which stay.
        notes.append("virtio channels retargeted to Xen")
    elif canonical_xml(back) != canonical_xml(xml_path.read_text()):
        raise StepFailed(f"the XML that came back differs from {xml_path.name}")
    else:
        notes.append(f"XML back equals {xml_path.name} (canonical form)")
    cfg_path = xml_path.with_suffix(".cfg")
    if cfg_path.exists():
        if xl_channels(cfg_path.read_text(), str(cfg_path)) != xl_channels(line, name):
            raise StepFailed(f"{cfg_path.name} holds other channels than {xml_path.name}")
        notes.append(f"{cfg_path.name} holds the same channels")
    return "round trip: identical; " + "; ".join(notes)


def canonical_xml(text: str) -> bytes:
    """C14N 2.0 without indentation: equal for documents that differ only in
    quoting and whitespace between elements."""
    from lxml import etree

    parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False, no_network=True)
    root = etree.fromstring(text.encode("utf-8"), parser)
    return bytes(etree.tostring(root, method="c14n2"))


def xl_channels(text: str, label: str) -> list[Any]:
    """The channels of an xl.cfg, without backend= (it has no place in XML)."""
    from xen_channel_backend import xlcfg

    parsed = xlcfg.read_channels(xlcfg.parse_config(text, label)).channels
    return [c.replace(backend=None) for c in parsed]


# --- part B: the scenario ------------------------------------------------------------


class Scenario:
    """State shared by the steps; ``close`` undoes whatever is still running."""

    def __init__(self, log: Log, tmp: Path, bad_payload: bool) -> None:
        self.log = log
        self.tmp = tmp
        self.bad_payload = bad_payload
        self.rundir = tmp / "run"
        self.config_file = tmp / "xen-channel.conf"
        self.template = tmp / "template.xml"
        self.with_channel = tmp / "with-channel.xml"
        self.filled = tmp / "filled.xml"
        self.guest_dev = tmp / "guest-dev"  # the guest's /dev
        self.devdir = self.guest_dev / "xen-channel"  # the guest's /dev/xen-channel
        self.guest_root = tmp / "guest-root"  # the guest's /
        self.xenstored = tmp / "xenstored.sock"
        self.socket_path = ""
        self.agent_socket_path = ""
        self.agent_qemu: BackendStandin | None = None
        self.qga: subprocess.Popen[bytes] | None = None
        self.conn: Any = None
        self.dom: Any = None
        self.domid = 0
        self.qemu: BackendStandin | None = None
        self.xenstore: XenstoreStandin | None = None
        self.agent: subprocess.Popen[bytes] | None = None
        self.agent_log: list[str] = []
        self.agent_log_changed = threading.Condition()
        self.agent_reader: threading.Thread | None = None
        self.inotify_fd = -1
        self.client: ChannelClient | None = None
        self.ack: AckResult | None = None
        self.ack_results: list[dict[str, Any]] = []
        self.hooks_done = False
        self.shim: Path | None = None

    # -- helpers ------------------------------------------------------------------

    def install_hooks(self) -> Path:
        """``xen-channel install-hooks`` into the demo's own hooks directory."""
        hooks_dir = self.tmp / "libvirt-hooks"
        checked(xen_channel("install-hooks", "--hooks-dir", str(hooks_dir),
                            "--config", str(self.config_file)), "xen-channel install-hooks")
        shim = hooks_dir / "libxl.d" / "xen-channel"
        if not os.access(shim, os.X_OK):
            raise StepFailed(f"install-hooks did not install {shim}")
        return shim

    def hook(self, op: str, subop: str, xml: str) -> None:
        """Run the installed libxl shim exactly as libvirtd does.

        libvirtd runs ``HOOK DOMAIN OP SUBOP EXTRA`` with the domain XML on
        stdin and only HOME, LC_ALL=C and PATH in the environment (background.md §1);
        the shim passes the call to hook.main with its driver in front.
        """
        if self.shim is None:
            self.shim = self.install_hooks()
        env = {"HOME": "/", "LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        run = subprocess.run([str(self.shim), DOMAIN_NAME, op, subop, "-"], input=xml,
                             env=env, capture_output=True, text=True, timeout=TIMEOUT,
                             check=False)
        if run.returncode != 0:
            raise StepFailed(f"{op} {subop} hook exited {run.returncode}: {run.stderr.strip()}")
        if run.stdout:
            raise StepFailed(f"{op} {subop} hook printed on stdout (only migrate/restore may)")

    def guest_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            XEN_CHANNEL_DEVDIR=str(self.devdir),
            XEN_CHANNEL_DEVPREFIX=str(self.guest_dev),
            XENSTORED_PATH=str(self.xenstored),
        )
        return env

    def wait_agent_log(self, needle: str, timeout: float = TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        with self.agent_log_changed:
            while True:
                for line in self.agent_log:
                    if needle in line:
                        return line
                remaining = deadline - time.monotonic()
                reader_done = self.agent_reader is None or not self.agent_reader.is_alive()
                if remaining <= 0 or reader_done:
                    tail = "; ".join(self.agent_log[-3:]) or "(nothing)"
                    raise StepFailed(f"the guest agent never logged {needle!r}; it said: {tail}")
                self.agent_log_changed.wait(min(remaining, 0.2))

    def agent_fds(self) -> dict[int, str]:
        """The guest agent's open descriptors: fd -> what it refers to (/proc)."""
        assert self.agent is not None
        fds = {}
        directory = f"/proc/{self.agent.pid}/fd"
        for fd in os.listdir(directory):
            with contextlib.suppress(OSError):  # closed meanwhile
                fds[int(fd)] = os.readlink(f"{directory}/{fd}")
        return fds

    def wait_agent_fd(self, wanted: Callable[[str], bool], what: str) -> int:
        """Poll /proc until the agent holds a descriptor ``wanted`` accepts."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            for fd, target in self.agent_fds().items():
                if wanted(target):
                    return fd
            if time.monotonic() > deadline:
                raise StepFailed(f"the guest agent never held {what}")
            time.sleep(0.02)

    def _read_agent_log(self, stream: IO[bytes]) -> None:
        for raw in stream:
            with self.agent_log_changed:
                self.agent_log.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self.agent_log_changed.notify_all()

    # -- the steps ----------------------------------------------------------------

    def step1_template(self) -> str:
        from lxml import etree

        from xen_channel_backend import domxml
        from xen_channel_backend.model import Channel, Connection, Target

        self.template.write_text(TEMPLATE)
        tree = domxml.parse_domain(TEMPLATE.encode(), str(self.template))
        channels = [Channel(name=name, connection=Connection.SOCKET, path=None,
                            target=Target.XEN) for name in (CHANNEL, AGENT_CHANNEL)]
        domxml.replace_channels(tree.getroot(), channels, (Target.XEN,))
        self.with_channel.write_text(domxml.serialize(tree))
        for element in domxml.channel_elements(tree.getroot()):
            shown = copy.deepcopy(element)
            shown.tail = None
            etree.indent(shown, space="  ")
            self.log.detail(etree.tostring(shown, encoding="unicode"))
        return (f"{DOMAIN_NAME} gets unix channels {CHANNEL} and {AGENT_CHANNEL} "
                "(target xen, no path yet)")

    def step2_fill(self) -> str:
        from xen_channel_backend import domxml
        from xen_channel_backend.model import MAX_SOCKET_PATH, Target

        checked(xen_channel("fill", str(self.with_channel), "-o", str(self.filled)),
                "xen-channel fill")
        root = domxml.parse_domain(self.filled.read_bytes(), str(self.filled)).getroot()
        paths = {c.name: c.path for _, c in domxml.iter_channels(root, (Target.XEN,))
                 if c.path}
        for name in (CHANNEL, AGENT_CHANNEL):
            if name not in paths:
                raise StepFailed(f"fill left {name} without a socket path")
        self.socket_path = str(paths[CHANNEL])
        self.agent_socket_path = str(paths[AGENT_CHANNEL])
        if not self.socket_path.startswith(str(self.rundir) + "/"):
            raise StepFailed(f"socket path {self.socket_path} is outside the run directory")
        length = len(self.socket_path.encode())
        self.log.detail(f"path: {self.socket_path}")
        self.log.detail(f"path: {self.agent_socket_path}")
        return f"socket path allocated, {length} bytes (limit {MAX_SOCKET_PATH})"

    def step3_define(self) -> str:
        import libvirt

        from xen_channel_backend import api

        # libvirt-python prints every error it raises to stderr unless told
        # not to; the errors that matter reach us as exceptions anyway.
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        from xen_channel_backend.metadata import NAMESPACE, parse_metadata

        xl = checked(xen_channel("convert", "--to", "xl", str(self.filled)), "convert --to xl")
        self.conn = libvirt.open(URI)
        self.dom = self.conn.defineXML(self.filled.read_text())
        self.log.detail(f"xl.cfg equivalent: {xl.strip()}")
        # Issue 4: fill wrote <xcb:channels> into the persistent definition;
        # read it back the way a management tool would.
        text = self.dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE,
                                 libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        self.log.detail(f"metadata ({NAMESPACE}) via libvirt-python:")
        self.log.detail(f"  {' '.join(text.split())}")
        meta = parse_metadata(text, DOMAIN_NAME)
        expected = [(CHANNEL, self.socket_path), (AGENT_CHANNEL, self.agent_socket_path)]
        if [(c.name, c.path) for c in meta.channels] != expected:
            raise StepFailed("the domain's metadata does not list the allocated channels")
        # The same through the project's Python API for tools (issue 4).
        found = api.remote_channels(URI, DOMAIN_NAME)
        if [(c.name, c.path) for c in found] != expected:
            raise StepFailed(f"api.remote_channels({URI!r}) gave {found}")
        self.log.detail(f"api.remote_channels: {found[0].name} {found[0].connection.value} "
                        f"state={found[0].state}")
        return (f"defined on {URI} (uuid {self.dom.UUIDString()}); metadata lists {CHANNEL} "
                f"and {AGENT_CHANNEL}")

    def step4_hooks(self) -> str:
        from xen_channel_backend.registry import Registry

        self.hook("prepare", "begin", self.dom.XMLDesc())
        record = Registry(str(self.rundir)).get(DOMAIN_UUID)
        if record is None or record.state != "preparing":
            raise StepFailed(f"after prepare the registry holds {record}")
        if not os.path.isdir(os.path.dirname(self.socket_path)):
            raise StepFailed("prepare did not create the socket directory")
        self.dom.create()
        self.domid = self.dom.ID()
        self.hook("start", "begin", self.dom.XMLDesc())
        self.hook("started", "begin", self.dom.XMLDesc())
        record = Registry(str(self.rundir)).get(DOMAIN_UUID)
        if record is None or record.state != "running":
            raise StepFailed(f"after start/started the registry holds {record}")
        mode = os.stat(os.path.dirname(self.socket_path)).st_mode & 0o777
        self.log.detail(checked(xen_channel("show", DOMAIN_NAME), "xen-channel show"))
        return (f"prepare: socket dir created (mode {mode:o}), record 'preparing'; "
                f"domain started (id {self.domid}); start/started: record 'running'")

    def step5_backend(self) -> str:
        from backend_standin import BackendStandin

        self.qemu = BackendStandin(self.socket_path).start()
        self.agent_qemu = BackendStandin(self.agent_socket_path).start()
        # The guest's /dev/hvc1 and /dev/hvc2 are the stand-ins' pty slaves.
        self.guest_dev.mkdir()
        os.symlink(self.qemu.guest_tty, self.guest_dev / f"hvc{CONSOLE}")
        os.symlink(self.agent_qemu.guest_tty, self.guest_dev / f"hvc{AGENT_CONSOLE}")
        return (f"QEMU stand-in listens on both sockets; guest ttys {self.qemu.guest_tty} "
                f"and {self.agent_qemu.guest_tty} = guest's /dev/hvc{CONSOLE} and "
                f"/dev/hvc{AGENT_CONSOLE}")

    def step6_xenstore(self) -> str:
        from xenstore_standin import XenstoreStandin

        # What libxl writes for a channel (background.md §4), as the guest's home sees it.
        tree: dict[str, str] = {}
        for console, name, path in ((CONSOLE, CHANNEL, self.socket_path),
                                    (AGENT_CONSOLE, AGENT_CHANNEL, self.agent_socket_path)):
            front = f"/local/domain/{self.domid}/device/console/{console}"
            back = f"/local/domain/0/backend/console/{self.domid}/{console}"
            tree.update({
                f"{front}/name": name, f"{front}/type": "ioemu", f"{front}/limit": "1048576",
                f"{front}/output": "pty", f"{front}/tty": "",
                f"{back}/name": name, f"{back}/connection": "socket", f"{back}/path": path,
            })
        self.xenstore = XenstoreStandin(self.xenstored, domid=self.domid, tree=tree).start()
        key = f"device/console/{CONSOLE}/name"
        read = subprocess.run(["xenstore-read", key], env=self.guest_env(),
                              capture_output=True, text=True, timeout=TIMEOUT, check=False)
        if read.returncode != 0:
            raise StepFailed(f"xenstore-read {key} exited {read.returncode}: "
                             f"{read.stderr.strip()}")
        if read.stdout.strip() != CHANNEL:
            raise StepFailed(f"xenstore-read {key} gave {read.stdout.strip()!r}")
        return f"the guest's `xenstore-read {key}` = {read.stdout.strip()}"

    def start_guest_agent(self) -> None:
        """Start the guest agent before the link exists: it must wait for it."""
        self.guest_root.mkdir()
        (self.guest_root / "etc").mkdir()
        (self.guest_root / "root").mkdir(mode=0o700)
        (self.guest_root / "etc" / "passwd").write_text(
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        )
        self.agent = subprocess.Popen(
            [sys.executable, str(GUEST_AGENT), "--channel", CHANNEL, "--root",
             str(self.guest_root), "--devdir", str(self.devdir), "--once"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        assert self.agent.stderr is not None
        self.agent_reader = threading.Thread(target=self._read_agent_log,
                                             args=(self.agent.stderr,), daemon=True)
        self.agent_reader.start()
        self.wait_agent_log("waiting for")
        # Evidence that it waits the way the issue asks: an inotify descriptor.
        self.inotify_fd = self.wait_agent_fd(lambda t: t == "anon_inode:inotify",
                                             "an inotify descriptor")

    def step7_udev(self) -> str:
        self.start_guest_agent()
        run = subprocess.run(["sh", str(GUEST_SETUP), "add", f"console-{CONSOLE}"],
                             env=self.guest_env(), capture_output=True, text=True,
                             timeout=TIMEOUT, check=False)
        if run.returncode != 0:
            raise StepFailed(f"xen-channel-setup exited {run.returncode}: {run.stderr.strip()}")
        link = self.devdir / CHANNEL
        if not link.is_symlink():
            raise StepFailed(f"{link} was not created")
        return f"{link} -> {os.readlink(link)}"

    def step8_guest_agent(self) -> str:
        assert self.agent is not None and self.qemu is not None
        tty = self.qemu.guest_tty
        fd = self.wait_agent_fd(lambda target: target == tty, tty)
        self.log.detail(f"before the link: its fd {self.inotify_fd} was anon_inode:inotify "
                        "(/proc/PID/fd)")
        self.log.detail(f"now: its fd {fd} is {tty}")
        for line in self.agent_log:
            self.log.detail(f"log: {line}")
        return f"xen-channel-guest (pid {self.agent.pid}) waited with inotify, then opened the tty"

    def step9_handshake(self) -> str:
        from xen_channel_backend.agent import ChannelClient

        self.client = ChannelClient(self.socket_path, label=f"channel {CHANNEL}")
        self.client.connect()
        info = self.client.handshake(TIMEOUT)
        return (f"connected to {os.path.basename(self.socket_path)}; hello-ack from "
                f"{info.name} {info.version}, protocol v{info.protocol_version}, "
                f"capabilities {', '.join(info.capabilities)}")

    def payload(self) -> dict[str, Any]:
        user = "alice" if self.bad_payload else "root"  # alice has no account in the guest
        return {
            "hostname": HOSTNAME,
            "addresses": [ADDRESS],
            "ssh_keys": [{"user": user, "keys": [demo_ssh_key()]}],
        }

    def step10_push(self) -> str:
        from xen_channel_backend.errors import ConfigRefused

        assert self.client is not None
        payload = self.payload()
        self.log.detail(f"hostname {HOSTNAME}; address {ADDRESS['address']} on "
                        f"{ADDRESS['interface']} (gw {ADDRESS['gateway']}); ssh key for "
                        f"{payload['ssh_keys'][0]['user']}")
        try:
            self.ack = self.client.send_config(payload, TIMEOUT)
        except ConfigRefused as exc:
            # The guest answered: step 11 reports what it refused.
            self.ack_results = [dict(r) for r in (getattr(exc, "results", None) or [])]
            return f"config pushed; the guest answered {getattr(exc, 'status', '?')}"
        self.ack_results = [dataclasses.asdict(r) for r in self.ack.results]
        return f"config pushed ({len(self.ack.results)} items); the guest acked {self.ack.status}"

    def step11_applied(self) -> str:
        bad = [r for r in self.ack_results if r.get("status") not in ("applied", "unchanged")]
        if self.ack is None or bad:
            what = "; ".join(f"{r.get('item')}: {r.get('status')} ({r.get('detail')})"
                             for r in bad) or "no ack"
            raise StepFailed(f"the guest did not apply everything: {what}")
        expected = self.expected_files()
        for item, (path, needle) in expected.items():
            if not path.is_file() or needle not in path.read_text():
                raise StepFailed(f"{item}: {path} does not hold {needle!r}")
        assert self.agent is not None
        try:
            code = self.agent.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            raise StepFailed("the guest agent did not exit after its --once config") from None
        if code != 0:
            raise StepFailed(f"the guest agent exited {code}")
        return f"{len(self.ack_results)} items applied under {self.guest_root}, acked ok"

    def step12_qemu_ga(self) -> str:
        """The guest's qemu-ga on org.qemu.guest_agent.0, as guest/ starts it."""
        import shlex

        from qga_fixtures import QEMU_GA, blocked

        from xen_channel_backend.qga import AgentClient

        if not os.access(QEMU_GA, os.X_OK):
            raise StepFailed(f"{QEMU_GA} is missing (Debian package qemu-guest-agent; "
                             "scripts/install-deps installs it)")
        # 60-xen-channel.rules' helper links the agent's console too.
        run = subprocess.run(["sh", str(GUEST_SETUP), "add", f"console-{AGENT_CONSOLE}"],
                             env=self.guest_env(), capture_output=True, text=True,
                             timeout=TIMEOUT, check=False)
        link = self.devdir / AGENT_CHANNEL
        if run.returncode != 0 or not link.is_symlink():
            raise StepFailed(f"xen-channel-setup add console-{AGENT_CONSOLE} exited "
                             f"{run.returncode}: {run.stderr.strip()}")
        # The unit's own command line, with the guest's /dev and a private state
        # directory; every command that would change this machine blocked.
        (exec_start,) = [line.split("=", 1)[1] for line in QGA_UNIT.read_text().splitlines()
                         if line.startswith("ExecStart=")]
        state = self.tmp / "qemu-ga"
        state.mkdir()
        argv = [arg.replace("/dev/xen-channel", str(self.devdir))
                .replace("/run/qemu-ga-%i.pid", str(state / "qemu-ga.pid"))
                for arg in shlex.split(exec_start)]
        argv += ["--statedir", str(state), f"--block-rpcs={blocked()}"]
        self.qga = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with AgentClient(self.agent_socket_path, domain=DOMAIN_NAME) as client:
            client.sync(TIMEOUT)  # repeated until qemu-ga has opened its tty
            version = client.execute("guest-info", timeout=TIMEOUT).get("version", "?")
        self.log.detail(f"{link} -> {os.readlink(link)}")
        self.log.detail(f"ExecStart from {QGA_UNIT.name}, paths made the demo's:")
        self.log.detail(f"  {shlex.join(argv[:4])} ...")
        self.log.detail(f"blocked: {blocked().replace(',', ' ')}")
        return f"qemu-ga {version} (pid {self.qga.pid}) answers on /dev/hvc{AGENT_CONSOLE}"

    def step13_agent_commands(self) -> str:
        """dom0 asks the agent what libvirt's libxl driver cannot."""
        import json

        interfaces = checked(xen_channel("domifaddr", DOMAIN_NAME), "xen-channel domifaddr")
        if "127.0.0.1/8" not in interfaces:
            raise StepFailed(f"domifaddr shows no loopback address: {interfaces!r}")
        self.log.detail(f"$ xen-channel domifaddr {DOMAIN_NAME}")
        self.log.detail(interfaces)
        info = checked(xen_channel("guestinfo", DOMAIN_NAME, "--os", "--hostname"),
                       "xen-channel guestinfo")
        keys = [line.split(":", 1)[0].strip() for line in info.splitlines() if line]
        if "os.id" not in keys or keys[-1] != "hostname":
            raise StepFailed(f"guestinfo --os --hostname gave {keys}")
        self.log.detail(f"$ xen-channel guestinfo {DOMAIN_NAME} --os --hostname")
        self.log.detail(info)
        raw = checked(xen_channel("qemu-agent-command", DOMAIN_NAME, '{"execute":"guest-info"}'),
                      "xen-channel qemu-agent-command")
        reply = json.loads(raw)["return"]
        commands = {c["name"]: c["enabled"] for c in reply["supported_commands"]}
        enabled = sum(commands.values())
        self.log.detail(f"$ xen-channel qemu-agent-command {DOMAIN_NAME} "
                        "'{\"execute\":\"guest-info\"}'")
        self.log.detail(f"{raw[:90]}... (qemu-ga {reply['version']}: {enabled} of "
                        f"{len(commands)} commands enabled)")
        refused = []
        for argv in (("shutdown", DOMAIN_NAME, "--mode", "agent"),
                     ("domfsfreeze", DOMAIN_NAME),
                     ("qemu-agent-command", DOMAIN_NAME, '{"execute":"guest-exec",'
                      '"arguments":{"path":"/bin/true"}}')):
            ran = xen_channel(*argv)
            if ran.code != 1 or "has been disabled" not in ran.err:
                raise StepFailed(f"xen-channel {' '.join(argv[:1])} was not refused: {ran.err}")
            refused.append(argv[0])
            self.log.detail(f"$ xen-channel {' '.join(argv[:2])} ...")
            self.log.detail(ran.err.strip())
        return (f"domifaddr, guestinfo --os --hostname and guest-info answered; "
                f"{', '.join(refused)} refused as disabled")

    def expected_files(self) -> dict[str, tuple[Path, str]]:
        root = self.guest_root
        return {
            "hostname": (root / "etc/hostname", HOSTNAME),
            f"addresses/{ADDRESS['interface']}": (
                root / f"etc/systemd/network/50-xen-channel-{ADDRESS['interface']}.network",
                f"Address={ADDRESS['address']}",
            ),
            "ssh_keys/root": (root / "root/.ssh/authorized_keys", demo_ssh_key()),
        }

    def step14_release(self) -> str:
        from xen_channel_backend.registry import Registry

        if self.client is not None:
            self.client.close()
        self.stop_qemu_ga()
        self.dom.destroy()
        for standin in (self.qemu, self.agent_qemu):
            if standin is not None:
                standin.close()  # QEMU exits with the domain
        self.qemu = self.agent_qemu = None
        directory = os.path.dirname(self.socket_path)
        registry = Registry(str(self.rundir))
        # QEMU unlinks its listening socket when it exits; the directory and
        # the record are left for the hooks.
        if not os.path.isdir(directory) or registry.get(DOMAIN_UUID) is None:
            raise StepFailed("the socket directory or the record vanished before the hooks ran")
        xml = self.dom.XMLDesc()
        self.hook("stopped", "end", xml)
        self.hook("release", "end", xml)
        self.hooks_done = True
        if os.path.lexists(self.socket_path) or os.path.lexists(directory):
            raise StepFailed(f"{directory} is still there")
        if registry.get(DOMAIN_UUID) is not None:
            raise StepFailed("the registry still holds the domain")
        listed = checked(xen_channel("list"), "xen-channel list").strip().splitlines()
        if listed[1:]:  # more than the heading
            raise StepFailed(f"xen-channel list still shows: {listed[1]}")
        self.log.detail("xen-channel list: no domains registered")
        return (f"domain destroyed; the hooks removed {os.path.basename(directory)}/ "
                "and the registry record")

    # -- teardown -----------------------------------------------------------------

    def stop_qemu_ga(self) -> None:
        if self.qga is not None and self.qga.poll() is None:
            self.qga.terminate()
            try:
                self.qga.wait(5)
            except subprocess.TimeoutExpired:
                self.qga.kill()
                self.qga.wait()

    def close(self) -> None:
        """Stop everything still running, in reverse order; never raises."""
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
        with contextlib.suppress(Exception):
            self.stop_qemu_ga()
        if self.agent is not None and self.agent.poll() is None:
            self.agent.terminate()
            try:
                self.agent.wait(5)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
        if self.xenstore is not None:
            with contextlib.suppress(Exception):
                self.xenstore.stop()
        for standin in (self.qemu, self.agent_qemu):
            if standin is not None:
                with contextlib.suppress(Exception):
                    standin.close()
        if self.dom is not None:
            with contextlib.suppress(Exception):
                if self.dom.isActive():
                    self.dom.destroy()
            if not self.hooks_done and self.socket_path:
                with contextlib.suppress(Exception):
                    self.hook("release", "end", self.dom.XMLDesc())
            with contextlib.suppress(Exception):
                self.dom.undefine()
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()


STEPS: Sequence[tuple[str, Callable[[Scenario], str]]] = (
    ("a template domain XML gets a channel", Scenario.step1_template),
    ("allocation fills its socket path", Scenario.step2_fill),
    ("the domain is defined, its xl.cfg and metadata shown", Scenario.step3_define),
    ("the prepare hook, then start/started", Scenario.step4_hooks),
    ("the backend creates the socket and the guest's tty", Scenario.step5_backend),
    ("xenstore announces the console", Scenario.step6_xenstore),
    ("the udev helper links the channel", Scenario.step7_udev),
    ("the guest agent sees it (inotify) and opens it", Scenario.step8_guest_agent),
    ("the dom0 agent connects and handshakes", Scenario.step9_handshake),
    ("it pushes a hostname, an address and an ssh key", Scenario.step10_push),
    ("the guest applies them and acknowledges", Scenario.step11_applied),
    ("the guest's qemu-ga starts on org.qemu.guest_agent.0", Scenario.step12_qemu_ga),
    ("dom0 asks the agent; dangerous commands stay blocked", Scenario.step13_agent_commands),
    ("the stopped/release hooks clean up", Scenario.step14_release),
)


def part_b(log: Log, scenario: Scenario, break_step: int | None) -> None:
    log.say(f"== Part B: the seed's eleven steps, the guest agent, then the release "
            f"({URI}, {scenario.tmp})")
    for number, (title, step) in enumerate(STEPS, 1):
        try:
            if number == break_step:
                raise StepFailed("broken on purpose (--break-step)")
            detail = step(scenario)
        except Exception as exc:
            log.record(str(number), title, False, one_line(exc))
            for later, (skipped, _) in enumerate(STEPS[number:], number + 1):
                log.say(f"[{later:>2}] {'SKIP':<6} {skipped}")
            return  # later steps need this one
        log.record(str(number), title, True, detail)


def applied_table(log: Log, scenario: Scenario) -> None:
    if not scenario.ack_results:
        return
    files = scenario.expected_files()
    rows = [("item", "status", "file written (under the demo root)")]
    for result in scenario.ack_results:
        item = str(result.get("item"))
        path = files.get(item, (None, ""))[0]
        where = "/" + str(path.relative_to(scenario.guest_root)) if path else "-"
        rows.append((item, str(result.get("status")), where))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    log.say()
    log.say("What the guest applied:")
    for index, row in enumerate(rows):
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        log.say(("  " + "  ".join(cells)).rstrip())
        if index == 0:
            log.say("  " + "  ".join("-" * width for width in widths))


# --- the entry point ---------------------------------------------------------------


@contextlib.contextmanager
def demo_directory(keep: bool, log: Log) -> Iterator[Path]:
    from xen_channel_backend.paths import MAX_RUNDIR

    tmp = Path(tempfile.mkdtemp(prefix="xcb-demo-"))
    if len(str(tmp / "run")) > MAX_RUNDIR:
        # The run directory must leave room for UUID/name under 107 bytes.
        shutil.rmtree(tmp)
        tmp = Path(tempfile.mkdtemp(prefix="xcb-demo-", dir="/tmp"))
    try:
        yield tmp
    finally:
        if keep:
            log.say(f"demo state kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def write_settings(tmp: Path) -> Path:
    from xen_channel_backend.atomic import atomic_write

    path = tmp / "xen-channel.conf"
    # allowed_roots: the demo's own directory only, not libvirt's defaults.
    atomic_write(str(path), f"[xen-channel]\nrundir = {tmp}/run\nallowed_roots = {tmp}\n")
    return path


def main(argv: Sequence[str] | None = None, stdout: IO[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (its path is printed)")
    parser.add_argument("--break-step", type=int, metavar="N",
                        help="make step N fail on purpose (for tests)")
    parser.add_argument("--bad-payload", action="store_true",
                        help="push an ssh key for a user the guest lacks (for tests)")
    parser.add_argument("--skip-part-a", action="store_true", help="only run the scenario")
    args = parser.parse_args(argv)
    log = Log(stdout or sys.stdout)
    with demo_directory(args.keep, log) as tmp:
        # Our own process and its children read only the demo's settings.
        os.environ["XEN_CHANNEL_CONFIG"] = str(write_settings(tmp))
        os.environ["XEN_CHANNEL_RUNDIR"] = str(tmp / "run")
        if not args.skip_part_a:
            (tmp / "part-a").mkdir()
            part_a(log, tmp / "part-a")
        scenario = Scenario(log, tmp, args.bad_payload)
        try:
            part_b(log, scenario, args.break_step)
        except KeyboardInterrupt:
            log.say("interrupted; cleaning up")
            return 130
        finally:
            scenario.close()
        applied_table(log, scenario)
        if scenario.agent_log and log.failed:
            log.say("guest agent log (last lines):")
            for line in scenario.agent_log[-5:]:
                log.say(f"  {line}")
    log.say()
    if log.failed:
        names = ", ".join(f"[{o.number}] {o.title}" for o in log.failed)
        log.say(f"demo FAILED: {names}")
        return 1
    log.say(f"demo OK: {len(log.outcomes)} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
