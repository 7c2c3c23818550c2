"""``xen-channel-guest``: the in-guest end of a channel (protocol v1).

It waits for ``/dev/xen-channel/NAME`` (the udev helper links it to the
channel's ``/dev/hvcN``), opens it, answers ``hello``/``config``/``ping``
from dom0 and applies configs through :mod:`.appliers`.  It then runs for
the life of the guest:

- dom0 disconnecting and reconnecting is invisible in the guest (QEMU keeps
  the console open), so the tty just goes quiet; the next ``hello``
  resyncs, and the frame decoder drops any half frame left behind;
- the device going away (hvc hangs the tty up: EOF, EIO or ENODEV) closes
  it, and the agent waits for the link again.

A guest may have no lxml or libvirt, so this module and everything it
imports use the standard library only (tests/test_guest_agent.py checks).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import select
import sys
import termios
import time
import tty
from collections.abc import Callable, Sequence
from typing import IO, Any, NoReturn

from .. import __version__, protocol
from ..errors import (
    InvalidChannelName,
    InvalidMessage,
    UsageError,
    XenChannelError,
    escaped,
    shown,
)
from ..model import validate_name
from .appliers import ApplyContext, ConfigOutcome, Registry, default_registry

log = logging.getLogger(__name__)

PROG = "xen-channel-guest"
AGENT_NAME = "xen-channel-guest"
DEFAULT_DEVDIR = "/dev/xen-channel"

#: Errors that mean the device behind the link is gone or not there yet.
#: hvc_open() fails with ENODEV before the console is probed (background.md §4);
#: a pty slave whose master closed reads EIO; ENOENT is a dangling link.
DEVICE_GONE = frozenset({errno.EIO, errno.ENODEV, errno.ENXIO, errno.ENOENT, errno.EBADF})

#: How long a reply may wait for room in the tty before it is dropped.
#: hvc output blocks while the ring is full and nobody in dom0 reads it;
#: a reply nobody reads is stale anyway (dom0 resyncs with a new hello).
WRITE_TIMEOUT = 10.0
OPEN_RETRY_FIRST = 0.1
OPEN_RETRY_MAX = 2.0
_READ_SIZE = 65536


# --------------------------------------------------------------------------
# Waiting for the link: inotify through ctypes, polling as a fallback
# --------------------------------------------------------------------------

_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_DELETE_SELF = 0x00000400
_IN_MOVE_SELF = 0x00000800
_IN_ONLYDIR = 0x01000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_WATCH_MASK = _IN_CREATE | _IN_MOVED_TO | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_ONLYDIR


class Inotify:
    """A minimal inotify(7) instance via ctypes (the stdlib has no binding).

    Only wake-ups matter here: after any event the caller re-checks the
    path, so events are drained, not parsed.
    """

    def __init__(self) -> None:
        import ctypes  # lazily: only the waiting path needs it

        libc = ctypes.CDLL(None, use_errno=True)
        self._init1 = libc.inotify_init1
        self._init1.argtypes = [ctypes.c_int]
        self._init1.restype = ctypes.c_int
        self._add_watch = libc.inotify_add_watch
        self._add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add_watch.restype = ctypes.c_int
        self._get_errno = ctypes.get_errno
        fd = self._init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            code = self._get_errno()
            raise OSError(code, f"inotify_init1: {os.strerror(code)}")
        self.fd: int = fd

    def add_watch(self, path: str, mask: int = _WATCH_MASK) -> None:
        if self._add_watch(self.fd, os.fsencode(path), mask) < 0:
            code = self._get_errno()
            raise OSError(code, f"inotify_add_watch: {os.strerror(code)}", path)

    def wait(self, timeout: float | None) -> bool:
        """Block until an event (True) or ``timeout`` (False); drain the queue."""
        readable, _, _ = select.select([self.fd], [], [], timeout)
        if not readable:
            return False
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 65536):
                pass
        return True

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class PathWaiter:
    """Wait until ``path`` exists (a dangling symlink counts: the open retries).

    The nearest existing ancestor is watched - the device directory, or its
    parent while the udev helper has not created it yet - and the path is
    re-checked after every event, so a directory created and a link placed
    inside it both wake us.  Without inotify (an old kernel, seccomp, no
    ctypes) the path is polled every ``poll_interval`` seconds.
    """

    def __init__(self, path: str, *, use_inotify: bool = True, poll_interval: float = 1.0) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self.mode = "poll"
        if use_inotify:
            try:
                Inotify().close()
                self.mode = "inotify"
            except (OSError, AttributeError, ImportError) as exc:
                log.warning("inotify unavailable (%s); polling %s", exc, path)

    def wait(self, timeout: float | None = None) -> bool:
        """True once the path exists; False if ``timeout`` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if os.path.lexists(self.path):
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            if self.mode == "poll":
                time.sleep(
                    self.poll_interval if remaining is None else min(remaining, self.poll_interval)
                )
                continue
            self._wait_event(remaining)

    def _wait_event(self, timeout: float | None) -> None:
        watcher = Inotify()
        try:
            watched = _nearest_directory(self.path)
            try:
                watcher.add_watch(watched)
            except OSError as exc:  # removed meanwhile, or not allowed: look again soon
                log.debug("cannot watch %s: %s", watched, exc)
                time.sleep(min(self.poll_interval, timeout or self.poll_interval))
                return
            # Re-check after arming: the link, or a deeper directory on its
            # way, may have appeared in between, and its event is lost.
            if not os.path.lexists(self.path) and _nearest_directory(self.path) == watched:
                watcher.wait(timeout)
        finally:
            watcher.close()


def _nearest_directory(path: str) -> str:
    directory = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(directory):
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    return directory


# --------------------------------------------------------------------------
# The tty
# --------------------------------------------------------------------------


def open_channel(path: str) -> int:
    """Open the channel's tty read/write, raw and flushed.

    O_NOCTTY: the agent must never acquire the console as its controlling
    terminal.  Raw mode because hvc starts in cooked mode (echo, CR/LF
    translation, ^C as a signal), which would corrupt binary framing; the
    flush drops bytes that queued before we were listening (qemu-ga does
    the same for serial ports, background.md §4).
    """
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if os.isatty(fd):
            tty.setraw(fd, termios.TCSAFLUSH)
            termios.tcflush(fd, termios.TCIOFLUSH)
    except (termios.error, OSError) as exc:
        os.close(fd)
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else errno.EIO
        raise OSError(code, f"cannot set raw mode: {exc}", path) from None
    return fd


def wait_and_open(
    link: str, waiter: PathWaiter, sleep: Callable[[float], None] = time.sleep
) -> int:
    """Wait for the link, then open it, retrying while its device is not usable yet."""
    delay = OPEN_RETRY_FIRST
    reported = False
    while True:
        if not os.path.lexists(link):
            log.info("waiting for %s (%s)", link, waiter.mode)
            waiter.wait()
            delay = OPEN_RETRY_FIRST
        try:
            fd = open_channel(link)
        except OSError as exc:
            # Before hvc probes the console the node fails to open (background.md §4);
            # udev may also relink it at any moment.  Keep trying.
            log.log(logging.DEBUG if reported else logging.INFO, "cannot open %s: %s", link, exc)
            reported = True
            sleep(delay)
            delay = min(delay * 2, OPEN_RETRY_MAX)
            continue
        log.info("opened %s -> %s", link, os.path.realpath(link))
        return fd


class LinkLost(Exception):
    """The tty hung up or vanished; close it and wait for the link again."""


def write_frame(fd: int, frame: bytes, timeout: float = WRITE_TIMEOUT) -> None:
    """Write a whole frame, or drop it (and flush) if the tty stays full."""
    deadline = time.monotonic() + timeout
    view = memoryview(frame)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            if exc.errno in DEVICE_GONE:
                raise LinkLost(str(exc)) from None
            raise
        view = view[written:]
        if not view:
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            # Nobody drains the ring.  A partial frame left there is harmless:
            # dom0's decoder drops it at the next sync byte.
            log.warning("tty full for %.0f s; dropping a reply nobody reads", timeout)
            with contextlib.suppress(termios.error, OSError):
                termios.tcflush(fd, termios.TCOFLUSH)
            return
        select.select([], [fd], [], remaining)


# --------------------------------------------------------------------------
# The protocol (sans-IO)
# --------------------------------------------------------------------------

_IGNORED_REPLIES = frozenset({protocol.HELLO_ACK, protocol.ACK, protocol.PONG, protocol.ERROR})


class GuestAgent:
    """Answers one message at a time; knows nothing about ttys."""

    def __init__(self, registry: Registry, context: ApplyContext) -> None:
        self.registry = registry
        self.context = context
        #: Status of every config answered, in order (``--once`` looks at it).
        self.config_statuses: list[str] = []

    def handle(self, message: dict[str, Any] | protocol.FrameError) -> list[dict[str, Any]]:
        """The replies to one decoded message (usually one, none for replies)."""
        if isinstance(message, protocol.FrameError):
            log.warning("bad frame from dom0: %s", message.detail)
            return [protocol.error(None, message.code, message.detail)]
        kind = message.get("type")
        request_id = message.get("id") if isinstance(message.get("id"), str) else None
        if kind == protocol.HELLO:
            return [self._hello(message)]
        if kind == protocol.CONFIG:
            return [self._config(message, request_id)]
        if kind == protocol.PING:
            problems = protocol.validate_message(message)
            if problems or request_id is None:
                return [protocol.error(request_id, "bad-request", "; ".join(problems))]
            return [protocol.pong(request_id)]
        if kind in _IGNORED_REPLIES:
            # Replies are never answered: two agents (or an echoing tty) must
            # not be able to start an endless error ping-pong.
            log.info("ignoring a %s message: the guest sends no requests", shown(kind))
            return []
        return [protocol.error(request_id, "unknown-type", f"unknown message type {shown(kind)}")]

    def _hello(self, message: dict[str, Any]) -> dict[str, Any]:
        problems = protocol.validate_hello(message)
        version = protocol.negotiate_version(message.get("versions"))
        if problems:
            return protocol.error(None, "bad-request", "hello: " + "; ".join(problems))
        if version is None:
            return protocol.error(
                None,
                "unsupported-version",
                f"this agent speaks protocol versions {list(protocol.PROTOCOL_VERSIONS)}, "
                f"dom0 offered {shown(message.get('versions'))}",
            )
        log.info("hello from dom0: protocol version %d", version)
        return protocol.hello_ack(
            message["nonce"],
            agent_name=AGENT_NAME,
            agent_version=__version__,
            capabilities=self.registry.capabilities(),
            version=version,
        )

    def _config(self, message: dict[str, Any], request_id: str | None) -> dict[str, Any]:
        problems = protocol.validate_message(message)
        if problems or request_id is None:
            return protocol.error(request_id, "bad-request", "config: " + "; ".join(problems))
        outcome = self.apply(message.get("payload"))
        self.config_statuses.append(outcome.status)
        # The id and the items come from dom0, the details partly from guest
        # files (a home directory in /etc/passwd): all escaped for the log.
        log.info(
            "config %s: %s, %d items", shown(request_id), outcome.status, len(outcome.results)
        )
        for result in outcome.results:
            log.debug(
                "config %s: %s %s %s",
                shown(request_id), escaped(result.item), result.status, escaped(result.detail),
            )
        return protocol.ack(
            request_id,
            outcome.status,
            [result.as_dict() for result in outcome.results],
            error=outcome.error,
        )

    def apply(self, payload: object) -> ConfigOutcome:
        """Validate with the appliers (per-item messages) and the protocol's own
        validator (the contract), then apply - or reject the whole payload."""
        return self.registry.apply(
            payload, self.context, validators=[protocol.validate_config_payload]
        )


def serve_channel(fd: int, agent: GuestAgent, once: bool = False) -> None:
    """Answer frames on an open tty until it goes away (LinkLost) or, with
    ``once``, until the first config has been answered."""
    decoder = protocol.FrameDecoder()
    while True:
        select.select([fd], [], [])
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            continue
        except OSError as exc:
            if exc.errno in DEVICE_GONE:
                raise LinkLost(str(exc)) from None
            raise
        if not data:
            raise LinkLost("end of file (the tty was hung up)")
        for message in decoder.feed(data):
            for reply in agent.handle(message):
                write_frame(fd, encode_reply(reply))
            if once and agent.config_statuses:
                return


def encode_reply(reply: dict[str, Any]) -> bytes:
    """Frame a reply; one too big for a frame becomes a short error instead.

    An ack carries one result per item, so a payload of many thousands of
    extra keys could need more than the 1 MiB frame limit; the agent must
    answer something rather than die.
    """
    try:
        return protocol.encode(reply)
    except InvalidMessage as exc:
        log.warning("cannot send the %s reply: %s", reply.get("type"), exc)
        request_id = reply.get("id") if isinstance(reply.get("id"), str) else None
        return protocol.encode(
            protocol.error(request_id, "bad-request", f"the reply cannot be sent: {exc}")
        )


def run(
    link: str, agent: GuestAgent, *, once: bool = False, waiter: PathWaiter | None = None
) -> None:
    """Serve the channel behind ``link`` forever (or once): open, serve, reopen."""
    waiter = waiter or PathWaiter(link)
    while True:
        fd = wait_and_open(link, waiter)
        try:
            serve_channel(fd, agent, once)
            return
        except LinkLost as exc:
            log.info("%s went away (%s); waiting for it to return", link, exc)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Serve a Xen PV channel inside the guest: answer dom0's handshake "
        "and apply the configuration it sends.",
    )
    parser.add_argument("--channel", required=True, metavar="NAME", help="the channel's name")
    parser.add_argument(
        "--root",
        default="/",
        metavar="DIR",
        help="write files under DIR instead of / (the running hostname is set only for /)",
    )
    parser.add_argument(
        "--devdir",
        default=DEFAULT_DEVDIR,
        metavar="DIR",
        help=f"where the udev helper links channels (default: {DEFAULT_DEVDIR})",
    )
    parser.add_argument(
        "--once",
        action="store_true",
        help="exit after answering the first config: 0 if every item applied, else 1",
    )
    parser.add_argument("--debug", action="store_true", help="log debug details to stderr")
    return parser


def main(
    argv: Sequence[str] | None = None,
    stdin: IO[Any] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    del stdin  # the agent reads its tty, never stdin
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser()
    try:
        try:
            with contextlib.redirect_stdout(out):
                args = parser.parse_args(argv)
        except SystemExit as exc:  # --help
            return exc.code if isinstance(exc.code, int) else 0
        try:
            validate_name(args.channel)
        except InvalidChannelName as exc:
            raise UsageError(f"--channel: {exc}") from None
        if not os.path.isdir(args.root):
            raise UsageError(f"--root {shown(args.root)} is not a directory")
    except XenChannelError as exc:
        print(f"{PROG}: error: {exc.message()}", file=err)
        return exc.exit_code
    del out  # nothing is printed on stdout; logs go to stderr

    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter(f"{PROG}[%(process)d]: %(message)s"))
    package_logger = logging.getLogger("xen_channel_backend")
    package_logger.addHandler(handler)
    package_logger.setLevel(logging.DEBUG if args.debug else logging.INFO)
    try:
        agent = GuestAgent(default_registry(), ApplyContext.for_root(args.root))
        link = os.path.join(args.devdir, args.channel)
        run(link, agent, once=args.once)
    except KeyboardInterrupt:
        return 130
    except (XenChannelError, OSError) as exc:
        print(f"{PROG}: error: {exc}", file=err)
        return 1
    finally:
        package_logger.removeHandler(handler)
    if args.once:
        return 0 if agent.config_statuses[-1] == "ok" else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
