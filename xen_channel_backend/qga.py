"""A client for qemu-guest-agent (qemu-ga) on a domain's ``org.qemu.guest_agent.0`` channel.

libvirt's libxl driver speaks to no guest agent (docs/guest.md), but the
guest's qemu-ga serves a Xen PV channel as it serves a serial port
(``qemu-ga -m isa-serial -p /dev/xen-channel/org.qemu.guest_agent.0``), and
dom0 reaches it through the channel's socket like any other channel.

The wire, as qemu-ga 7.2 speaks it (measured on a pty, the guest's view of
a Xen channel):

- one JSON object per line each way: ``{"execute": NAME, "arguments": {...}}``
  in, ``{"return": VALUE}`` or ``{"error": {"class": C, "desc": D}}`` out;
- a client that (re)connects may meet stale bytes: half an answer meant for
  an earlier client, or answers to requests that client never read.  So on
  every connect, and after every timeout, the client sends
  ``0xFF {"execute": "guest-sync-delimited", "arguments": {"id": N}}`` with a
  fresh random N.  The agent answers ``0xFF {"return": N}``; the client skips
  everything up to an 0xFF followed by its own N (0xFF never occurs in
  UTF-8, so it cannot be part of a JSON line).  7.2 first answers the 0xFF it
  received with a line of its own, ``{"error": {"class": "GenericError",
  "desc": "JSON parse error, stray '\\uFFFD'"}}``: it comes before the
  agent's 0xFF, so it is skipped like any other stale line;
- qemu-ga answers in order, so the first line after the sync is the answer
  to the next request;
- ``guest-shutdown`` and ``guest-suspend-*`` send no answer when they
  succeed, only when they fail.

Against a hostile guest, memory stays bounded: the socket is read in
chunks of :data:`READ_SIZE`, a line longer than ``max_line`` is dropped as
it arrives (never buffered whole), and a flood of lines is examined one at
a time.  Time is bounded by the per-call deadline, which a stream of bytes
that never matches does not extend.

**For reuse (the broker):** :class:`LineReader`, :class:`SyncWaiter`,
:func:`encode_request`, :func:`sync_request` and :func:`decode_reply` do no
I/O.  A broker that shares one agent among consumers runs, per turn::

    waiter = SyncWaiter()
    send(waiter.start())                    # a fresh id every turn
    ... for each event of reader.next_event(): if waiter.on_event(ev): synced
    send(encode_request(request))           # the consumer's one command
    ... the next Line event is its answer (decode_reply)

:class:`AgentClient` is exactly that loop over a blocking socket.

Finding the socket (:func:`connect_agent`): the domain's
``org.qemu.guest_agent.0`` socket channel from the registry; the broker's
``PATH@broker`` when a broker serves it, else QEMU's socket.  Before
connecting, the socket must pass the one rule ``send`` applies too,
:func:`trust.check_channel_socket` (owned by root, the caller or
``libvirt-qemu``, in a directory chain only they can change), since a
socket planted by anybody else would receive what dom0 sends (passwords)
and forge what the guest answers.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Mapping

from .errors import (
    AgentCommandDisabled,
    AgentError,
    AgentNotConnected,
    AgentProtocolError,
    AgentTimeout,
    InputError,
    UnknownDomain,
    XenChannelError,
    escaped,
    shown,
)
from .service import DebugLog

# Not typing's: qemu-agent-command imports this module on every call (typing
# costs more than the command's own work).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Any, Final

    from .registry import DomainRecord, Registry

log = DebugLog(__name__)  # logging is imported only when it is asked for

#: The channel name qemu-ga uses everywhere (virtio-serial, Xen, Hyper-V).
AGENT_CHANNEL: Final = "org.qemu.guest_agent.0"
#: The sync delimiter byte: never part of UTF-8 text.
DELIMITER: Final = 0xFF
#: Longest answer line accepted.  Legitimate answers are far smaller (the
#: interfaces of a busy guest are tens of KiB); raw pass-through callers
#: that read files through the agent can raise it per client.
DEFAULT_MAX_LINE: Final = 4 * 1024 * 1024
#: Bytes read from the socket at a time: the other term of the memory bound.
READ_SIZE: Final = 64 * 1024
DEFAULT_TIMEOUT: Final = 10.0
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
#: First interval between repeated syncs (doubling): an agent that opens its
#: tty just after our sync was written flushes it unread.
DEFAULT_SYNC_INTERVAL: Final = 1.0
#: The broker answers for the guest, in qemu-ga's error shape (class
#: GenericError), with a description starting with this; and with
#: BROKER_NO_SYNC after it when qemu-ga did not answer the broker's sync.
BROKER_ERROR_PREFIX: Final = "xen-channel broker: "
BROKER_NO_SYNC: Final = "qemu-ga did not answer guest-sync-delimited"
#: Compact, ASCII-only: a request can never contain a raw newline.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True)
#: Commands the client issues itself around every request.
_SYNC_COMMANDS: Final = frozenset({"guest-sync", "guest-sync-delimited"})


# --- sans-IO: framing ------------------------------------------------------------


class Line:
    """One complete line (without its newline), as the agent sent it."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Line({self.data[:60]!r})"


class Marker:
    """The agent sent the 0xFF delimiter: what follows is a sync answer."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Marker()"


class Overlong:
    """A line over the limit was dropped; ``size`` bytes of it were seen when it was cut."""

    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size

    def __repr__(self) -> str:
        return f"Overlong({self.size})"


Event = Line | Marker | Overlong
MARKER: Final = Marker()


class LineReader:
    """Cut the agent's byte stream into :class:`Line`, :class:`Marker` and :class:`Overlong`.

    Call :meth:`feed` with what the socket gave, then :meth:`next_event`
    until it returns None.  Whitespace-only lines are skipped.  The buffer
    never holds more than ``max_line`` plus one fed chunk: once a line
    passes ``max_line`` without a newline it is dropped, one
    :class:`Overlong` is reported, and everything up to the next newline or
    0xFF is discarded as it is fed.
    """

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError("max_line must be positive")
        self.max_line = max_line
        self._buf = bytearray()
        self._scanned = 0  # bytes at the front known to hold no newline or 0xFF
        self._discarding = False

    def reset(self) -> None:
        """Forget everything (a new connection)."""
        self._buf.clear()
        self._scanned = 0
        self._discarding = False

    @property
    def buffered(self) -> int:
        """Bytes held now (for tests of the memory bound)."""
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        if self._discarding:
            cut = _boundary(data, 0)
            if cut < 0:
                return
            self._discarding = False
            # A newline ends the dropped line; an 0xFF starts something new.
            data = data[cut + 1:] if data[cut] == 0x0A else data[cut:]
        self._buf += data

    def next_event(self) -> Event | None:
        buf = self._buf
        while True:
            cut = _boundary(buf, self._scanned)
            if cut < 0:
                self._scanned = len(buf)
                if len(buf) > self.max_line:
                    size = len(buf)
                    buf.clear()
                    self._scanned = 0
                    self._discarding = True
                    return Overlong(size)
                return None
            self._scanned = 0
            if buf[cut] == DELIMITER:
                # Everything before the delimiter is a stale half line.
                del buf[: cut + 1]
                return MARKER
            if cut > self.max_line:
                del buf[: cut + 1]
                return Overlong(cut)
            line = bytes(buf[:cut])
            del buf[: cut + 1]
            if line.strip():
                return Line(line)


def _boundary(data: bytes | bytearray, start: int) -> int:
    """Index of the first newline or 0xFF at or after ``start``, or -1."""
    newline = data.find(b"\n", start)
    delimiter = data.find(b"\xff", start, newline if newline >= 0 else len(data))
    return delimiter if delimiter >= 0 else newline


# --- sans-IO: requests, sync, replies ---------------------------------------------


def new_sync_id() -> int:
    """A fresh random sync id (positive, within every JSON reader's exact range).

    From os.urandom rather than the secrets module, whose import (hmac,
    hashlib, random) would cost every command more than its round trip.
    """
    return int.from_bytes(os.urandom(4), "big") % (2**31 - 1) + 1


def sync_request(sync_id: int) -> bytes:
    """``0xFF`` + ``guest-sync-delimited`` with ``sync_id`` + newline."""
    body = {"execute": "guest-sync-delimited", "arguments": {"id": sync_id}}
    return b"\xff" + json.dumps(body, separators=(",", ":")).encode("ascii") + b"\n"


def encode_request(request: Mapping[str, Any]) -> bytes:
    """One request as one line: ``{"execute": NAME[, "arguments": {...}]}``.

    Re-serialized here, ASCII only and without newlines, so nothing a
    caller passes can split into two requests or smuggle a second one.
    Raises ValueError for a request that is not of that shape.
    """
    execute = request.get("execute")
    if not isinstance(execute, str) or not execute:
        raise ValueError('a request needs "execute": a command name')
    unknown = set(request) - {"execute", "arguments"}
    if unknown:
        raise ValueError(f"unknown request key(s): {', '.join(sorted(map(str, unknown)))}")
    if "arguments" in request and not isinstance(request["arguments"], Mapping):
        raise ValueError('"arguments" must be an object')
    try:
        text = _ENCODER.encode(request if type(request) is dict else dict(request))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the request cannot be written as JSON: {exc}") from None
    return text.encode() + b"\n"


def encode_command(command: str, arguments: Mapping[str, Any] | None = None) -> bytes:
    """``encode_request`` for a command name and its arguments."""
    request: dict[str, Any] = {"execute": command}
    if arguments is not None:
        request["arguments"] = dict(arguments)
    return encode_request(request)


class SyncWaiter:
    """Recognise the answer to the latest ``guest-sync-delimited`` among stale output.

    Only the latest id counts: an answer to an earlier sync of the same
    round may still be followed by that later sync's own answer (and by
    7.2's parse-error line for its 0xFF), which must not be mistaken for
    the answer to the next request.
    """

    def __init__(self) -> None:
        self.sync_id: int | None = None
        self._after_marker = False

    def start(self) -> bytes:
        """A new sync (a fresh id): the bytes to send."""
        self.sync_id = new_sync_id()
        self._after_marker = False
        return sync_request(self.sync_id)

    def on_event(self, event: Event) -> bool:
        """True once ``event`` completes the answer to the latest sync."""
        if isinstance(event, Marker):
            self._after_marker = True
            return False
        after_marker, self._after_marker = self._after_marker, False
        if not after_marker or not isinstance(event, Line):
            return False
        try:
            reply = json.loads(event.data)
        except (ValueError, RecursionError):
            return False
        return (
            isinstance(reply, dict)
            and self.sync_id is not None
            and type(reply.get("return")) is int
            and reply["return"] == self.sync_id
        )


class Reply:
    """A decoded answer: ``ok`` with ``value`` (the ``return``), or an error."""

    __slots__ = ("description", "error_class", "ok", "raw", "value")

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.ok = "return" in raw
        self.value: Any = raw.get("return")
        error = raw.get("error") if not self.ok else None
        self.error_class: str = ""
        self.description: str = ""
        if isinstance(error, dict):
            self.error_class = str(error.get("class", ""))
            self.description = str(error.get("desc", ""))

    @property
    def disabled(self) -> bool:
        """qemu-ga's answer to a command blocked by ``--block-rpcs`` (or while frozen)."""
        return self.error_class == "CommandNotFound" and "has been disabled" in self.description


def decode_reply(line: bytes) -> Reply:
    """Decode one answer line; raise ValueError (with a short reason) if it is none."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("answer is not UTF-8") from None
    try:
        obj = json.loads(text)
    except RecursionError:
        raise ValueError("answer is nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"answer is not JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(obj, dict):
        raise ValueError("answer is not a JSON object")
    if "return" in obj:
        return Reply(obj)
    error = obj.get("error")
    if isinstance(error, dict) and isinstance(error.get("class"), str):
        return Reply(obj)
    raise ValueError('answer has neither "return" nor "error"')


# --- the blocking client ----------------------------------------------------------


class AgentClient:
    """qemu-ga over one Unix socket (QEMU's channel socket, or the broker's).

    ``domain`` names the agent in errors (default: the path).  Every call
    takes its own ``timeout`` (seconds) for each phase: the sync, when one
    is needed, and the request.  Not thread-safe: one request at a time,
    like the agent itself.

    ``through_broker``: ``path`` is the broker's consumer socket.  The
    broker's own errors (qemu-ga's shape, BROKER_ERROR_PREFIX) are then
    raised as AgentNotConnected (qemu-ga did not sync) or
    AgentProtocolError, not as the guest's AgentError.  On QEMU's socket
    nothing but the guest answers, so there such text is the guest's.
    """

    def __init__(
        self,
        path: str,
        *,
        domain: str | None = None,
        max_line: int = DEFAULT_MAX_LINE,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        sync_interval: float = DEFAULT_SYNC_INTERVAL,
        through_broker: bool = False,
    ) -> None:
        self.path = path
        self.domain = domain if domain is not None else path
        self.through_broker = through_broker
        self.connect_timeout = connect_timeout
        self.sync_interval = sync_interval
        self._reader = LineReader(max_line)
        self._sock: socket.socket | None = None
        self._synced = False

    # --- connection ------------------------------------------------------------

    def connect(self) -> None:
        self.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(self.connect_timeout)
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            raise AgentNotConnected(
                self.domain, f"no socket at {shown(self.path)} (is the domain running?)"
            ) from None
        except ConnectionRefusedError:
            sock.close()
            raise AgentNotConnected(
                self.domain, f"socket {shown(self.path)} refuses connections (no QEMU listening)"
            ) from None
        except TimeoutError:
            sock.close()
            raise AgentNotConnected(
                self.domain, f"connect to {shown(self.path)} timed out"
            ) from None
        except OSError as exc:
            sock.close()
            raise AgentNotConnected(
                self.domain, f"socket {shown(self.path)}: {exc.strerror or exc}"
            ) from None
        self._sock = sock
        self._reader.reset()
        self._synced = False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._synced = False

    def __enter__(self) -> AgentClient:
        if self._sock is None:
            self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- requests ------------------------------------------------------------

    def sync(self, timeout: float) -> None:
        """Skip stale output until the agent answers a fresh ``guest-sync-delimited``.

        The sync is repeated with a new id at growing intervals (1 s, 2 s,
        ...) until ``timeout``; only the latest id is accepted.  Raises
        AgentNotConnected when nothing answers.
        """
        if self._sock is None:
            self.connect()
        self._synced = False
        waiter = SyncWaiter()
        deadline = time.monotonic() + timeout
        interval = self.sync_interval
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AgentNotConnected(
                    self.domain,
                    f"no answer to guest-sync-delimited within {timeout:g} s (is qemu-ga "
                    "running in the guest, and no other client on the channel?)",
                )
            self._send(waiter.start(), "guest-sync-delimited", timeout, not_connected=True)
            round_end = min(deadline, time.monotonic() + interval)
            interval *= 2
            while True:
                event = self._next_event(round_end, "guest-sync-delimited", timeout)
                if event is None:
                    break  # this round is over: send a fresh sync
                if waiter.on_event(event):
                    self._synced = True
                    log.debug("%s: synced (id %d)", shown(self.path), waiter.sync_id)
                    return
                log.debug("%s: skipped before sync: %r", shown(self.path), event)

    def execute(
        self, command: str, arguments: Mapping[str, Any] | None = None, *, timeout: float
    ) -> Any:
        """Run ``command``; return its ``return`` value.

        Raises AgentCommandDisabled, AgentError (the guest's error),
        AgentTimeout, AgentNotConnected, AgentProtocolError.
        """
        request: dict[str, Any] = {"execute": command}
        if arguments is not None:
            request["arguments"] = dict(arguments)
        return self.request(request, timeout=timeout).value

    def request(self, request: Mapping[str, Any], *, timeout: float) -> Reply:
        """Send one request object (raw pass-through); return the successful :class:`Reply`."""
        command = _command_name(request)
        data = self._encode(request)
        if not self._synced:
            self.sync(timeout)
        self._send(data, command, timeout)
        reply = self._read_reply(command, time.monotonic() + timeout, timeout)
        if reply is None:
            self._synced = False  # a late answer would pass for the next one's
            raise AgentTimeout(self.domain, command, timeout)
        return self._checked(command, reply)

    def request_without_success_reply(
        self, request: Mapping[str, Any], *, timeout: float
    ) -> bool:
        """For ``guest-shutdown`` / ``guest-suspend-*``: silent when they succeed.

        A plain ``guest-sync`` with a fresh id follows the request: an error
        line before its answer is the request's failure (raised); its
        answer first means the agent accepted the request.  Returns True
        then, and False when the agent stopped answering (closed or timed
        out) after the request was sent, which is what a guest going down
        looks like.
        """
        command = _command_name(request)
        data = self._encode(request)
        if not self._synced:
            self.sync(timeout)
        probe_id = new_sync_id()
        probe = encode_command("guest-sync", {"id": probe_id})
        self._send(data + probe, command, timeout)
        self._synced = False  # the guest may be gone; never reuse this state
        deadline = time.monotonic() + timeout
        try:
            while True:
                reply = self._read_reply(command, deadline, timeout)
                if reply is None:
                    return False
                if reply.ok and reply.value == probe_id:
                    return True
                if not reply.ok:
                    self._checked(command, reply)
                # A success answer to the request itself (not qemu-ga's habit): skip.
        except AgentNotConnected:
            return False

    # --- plumbing ------------------------------------------------------------

    def _encode(self, request: Mapping[str, Any]) -> bytes:
        try:
            return encode_request(request)
        except ValueError as exc:
            raise InputError("request", str(exc)) from None

    def _checked(self, command: str, reply: Reply) -> Reply:
        if reply.ok:
            return reply
        if (self.through_broker and reply.error_class == "GenericError"
                and reply.description.startswith(BROKER_ERROR_PREFIX)):
            said = reply.description[len(BROKER_ERROR_PREFIX):]
            detail = f"the xen-channel broker at {shown(self.path)} says: {escaped(said)}"
            if said.startswith(BROKER_NO_SYNC):
                raise AgentNotConnected(self.domain, detail)
            raise AgentProtocolError(self.domain, detail)
        if reply.disabled:
            raise AgentCommandDisabled(self.domain, command, reply.error_class, reply.description)
        raise AgentError(self.domain, command, reply.error_class, reply.description)

    def _read_reply(self, command: str, deadline: float, timeout: float) -> Reply | None:
        """The next answer line, decoded; None at the deadline."""
        after_marker = False
        while True:
            event = self._next_event(deadline, command, timeout)
            if event is None:
                return None
            if isinstance(event, Marker):
                after_marker = True
                continue
            if isinstance(event, Overlong):
                self._synced = False
                raise AgentProtocolError(
                    self.domain,
                    f"answer to {shown(command)} is over {self._reader.max_line} bytes; dropped",
                )
            if after_marker:
                after_marker = False  # a late answer to a sync of ours: not for us
                continue
            try:
                return decode_reply(event.data)
            except ValueError as exc:
                self._synced = False
                raise AgentProtocolError(
                    self.domain, f"bad answer to {shown(command)}: {exc}"
                ) from None

    def _next_event(self, deadline: float, command: str, timeout: float) -> Event | None:
        """The next event from the socket, or None once ``deadline`` passes."""
        assert self._sock is not None
        while True:
            event = self._reader.next_event()
            if event is not None:
                return event
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(READ_SIZE)
            except TimeoutError:
                return None
            except OSError as exc:
                raise self._lost(exc) from None
            if not data:
                raise self._lost(None)
            self._reader.feed(data)

    def _send(self, data: bytes, command: str, timeout: float, *,
              not_connected: bool = False) -> None:
        assert self._sock is not None
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(data)
        except TimeoutError:
            # QEMU stopped taking bytes: the guest side is not being read.
            self._synced = False
            if not_connected:
                raise AgentNotConnected(
                    self.domain, f"the channel took no request within {timeout:g} s"
                ) from None
            raise AgentTimeout(self.domain, command, timeout) from None
        except OSError as exc:
            raise self._lost(exc) from None

    def _lost(self, exc: OSError | None) -> AgentNotConnected:
        self.close()
        how = "" if exc is None else f" ({exc.strerror or exc})"
        return AgentNotConnected(self.domain, f"the connection closed{how}")


def _command_name(request: Mapping[str, Any]) -> str:
    command = request.get("execute")
    if not isinstance(command, str):
        raise InputError("request", 'a request needs "execute": a command name')
    if command in _SYNC_COMMANDS:
        raise InputError(
            "request", f"{command} is what the client itself sends around every request"
        )
    return command


# --- finding and trusting the socket -------------------------------------------


def lookup_domain(registry: Registry, domain: str) -> DomainRecord:
    """The one place that resolves a DOMAIN argument to its record.

    A running domain's id (as virsh accepts one; the hooks record it), a
    UUID or a name, by Registry.get.  Every guest-agent command and API
    function goes through here.  Raises UnknownDomain.
    """
    record = registry.get(domain)
    if record is None:
        raise UnknownDomain(domain)
    return record


def agent_socket_path(domain: str, *, rundir: str | None = None) -> str:
    """QEMU's socket for the ``org.qemu.guest_agent.0`` channel of ``domain``, from the registry."""
    from .model import Connection, DomainState
    from .registry import Registry
    from .settings import load_settings

    record = lookup_domain(Registry(load_settings(rundir).rundir), domain)
    for entry in record.channels:
        if entry.name != AGENT_CHANNEL:
            continue
        if entry.connection != Connection.SOCKET or not entry.path:
            raise AgentNotConnected(
                domain, f"its {AGENT_CHANNEL} channel is a {entry.connection.value} channel; "
                "dom0 reaches the agent only through a socket channel",
            )
        if record.state is not DomainState.RUNNING:
            raise AgentNotConnected(domain, f"the domain is {record.state}, not running")
        return entry.path  # the registry built the record through the model: checked
    raise AgentNotConnected(
        domain, f"the domain has no {AGENT_CHANNEL} channel (see docs/guest.md)"
    )


def connect_agent(
    domain: str,
    *,
    rundir: str | None = None,
    max_line: int = DEFAULT_MAX_LINE,
    uids: tuple[int, ...] | None = None,
) -> AgentClient:
    """A connected, trusted client for the agent of ``domain`` (a name or UUID).

    Goes through the broker's consumer socket when a broker serves the
    channel (QEMU takes one client, and the broker is it), else to QEMU's
    socket.  A broker socket that refuses (a broker that died) falls back
    to QEMU's socket, which that broker no longer holds.
    """
    from .paths import broker_socket_for
    from .trust import check_channel_socket

    qemu_socket = agent_socket_path(domain, rundir=rundir)
    try:
        brokered: str | None = broker_socket_for(qemu_socket)
    except XenChannelError:
        brokered = None
    if brokered is not None and check_channel_socket(brokered, "broker socket", uids=uids):
        client = AgentClient(brokered, domain=domain, max_line=max_line, through_broker=True)
        try:
            client.connect()
            log.debug("%s: through the broker at %s", shown(domain), shown(brokered))
            return client
        except AgentNotConnected as exc:
            log.debug("%s: broker socket unusable (%s); using QEMU's", shown(domain), exc.detail)
    if not check_channel_socket(qemu_socket, "QEMU socket", uids=uids):
        raise AgentNotConnected(
            domain, f"no socket at {shown(qemu_socket)} (is the domain running?)"
        )
    client = AgentClient(qemu_socket, domain=domain, max_line=max_line)
    client.connect()
    return client


__all__ = [
    "AGENT_CHANNEL",
    "BROKER_ERROR_PREFIX",
    "BROKER_NO_SYNC",
    "AgentClient",
    "Line",
    "LineReader",
    "Marker",
    "Overlong",
    "Reply",
    "SyncWaiter",
    "agent_socket_path",
    "connect_agent",
    "decode_reply",
    "encode_command",
    "encode_request",
    "lookup_domain",
    "new_sync_id",
    "sync_request",
]
