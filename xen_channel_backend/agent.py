"""The dom0 side of a channel: a protocol v1 client and ``xen-channel send``.

A write to QEMU's channel socket "succeeds" whether or not anything in the
guest reads it (CloudStack 3333, background.md §5), so nothing here counts as
delivered until the guest agent's ``ack`` for that request id comes back.
And because QEMU keeps the guest side open across dom0 reconnects, a new
client can meet stale or half-written bytes (why qemu-ga has
``guest-sync-delimited``): every connect and every timeout is followed by a
fresh ``hello`` whose random nonce tells the one true ``hello-ack`` apart
from stale ones.  The wire rules are in docs/protocol.md.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import socket
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import protocol
from .errors import (
    AckTimeout,
    ChannelUnavailable,
    ConfigRefused,
    InputError,
    InvalidMessage,
    ProtocolViolation,
    UnknownDomain,
    UnsupportedChannel,
    XenChannelError,
    escaped,
    shown,
)
from .paths import broker_socket_for
from .trust import check_channel_socket

if TYPE_CHECKING:
    import argparse

    from .console import Streams

log = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 0.2
#: Backoff doubles per attempt up to this, so a bounded retry stays bounded in time.
MAX_BACKOFF = 5.0
#: Repeat an unanswered hello this often during a handshake (see handshake()).
DEFAULT_HELLO_INTERVAL = 1.0
_READ_SIZE = 65536


@dataclasses.dataclass(frozen=True)
class AgentInfo:
    """What the guest agent said about itself in its hello-ack."""

    name: str
    version: str
    protocol_version: int
    capabilities: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ItemResult:
    item: str
    status: str
    detail: str


@dataclasses.dataclass(frozen=True)
class AckResult:
    """The guest's ack of one config: every item applied or unchanged."""

    id: str
    status: str
    results: tuple[ItemResult, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "results": [dataclasses.asdict(r) for r in self.results],
        }


class ChannelClient:
    """A protocol v1 client on one channel's Unix socket (QEMU's or the broker's).

    ``label`` names the channel in error messages (default: the path).
    Not thread-safe: one request at a time, like the protocol itself.
    """

    def __init__(
        self,
        path: str,
        *,
        label: str | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        hello_interval: float = DEFAULT_HELLO_INTERVAL,
    ) -> None:
        self.path = path
        self.hello_interval = hello_interval
        self.label = label or f"channel socket {shown(path)}"
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.backoff = backoff
        self.agent: AgentInfo | None = None
        self._sock: socket.socket | None = None
        self._decoder = protocol.FrameDecoder()
        # Decoded but not yet examined: one recv() may carry several frames.
        self._pending: collections.deque[dict[str, Any] | protocol.FrameError] = collections.deque()
        self._synced = False

    # --- connection --------------------------------------------------------

    def connect(self) -> None:
        """Connect with bounded retry: ``retries`` more attempts, backoff doubling.

        A missing socket or a refused connect is retried, since QEMU may
        still be creating the socket while the domain starts.  EACCES is
        not: retrying a permission error only hides it (background.md §5).
        """
        self.close()
        delay = self.backoff
        attempt = 0
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.settimeout(self.connect_timeout)
            try:
                sock.connect(self.path)
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                if attempt >= self.retries:
                    reason = (
                        "no such socket (is the domain running?)"
                        if isinstance(exc, FileNotFoundError)
                        else "connection refused (no QEMU or broker listening)"
                    )
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise ChannelUnavailable(self.path, reason + tries) from None
                log.debug("%s: %s; retrying in %.2f s", self.label, exc.strerror, delay)
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF)
                attempt += 1
                continue
            except PermissionError:
                sock.close()
                raise ChannelUnavailable(self.path, "permission denied") from None
            except TimeoutError:
                sock.close()
                raise ChannelUnavailable(
                    self.path, f"connect timed out after {self.connect_timeout:g} s"
                ) from None
            except OSError as exc:
                sock.close()
                raise ChannelUnavailable(self.path, exc.strerror or str(exc)) from None
            self._sock = sock
            self._decoder.reset()
            self._pending.clear()
            self._synced = False
            return

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._synced = False

    def __enter__(self) -> ChannelClient:
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

    def handshake(self, timeout: float) -> AgentInfo:
        """Send hello with a fresh nonce; discard everything until a hello-ack echoing it.

        Anything else that arrives first - stale bytes, half frames, acks
        and hello-acks meant for an earlier client - is left over from
        before this connection and is dropped (logged at debug level).

        The hello is repeated, each time with a new nonce, every
        ``hello_interval`` seconds until ``timeout``: a guest agent that
        opens its tty just after our hello was written puts the tty in raw
        mode with TCSAFLUSH, which discards that hello unread.  A hello-ack
        for any nonce of this handshake is current (it was sent after this
        connection began), so each stays accepted.
        """
        if self._sock is None:
            self.connect()
        self._synced = False
        nonces: list[str] = []
        deadline = time.monotonic() + timeout

        def match(message: dict[str, Any]) -> bool:
            kind = message.get("type")
            if kind == protocol.HELLO_ACK:
                return message.get("nonce") in nonces
            # No common version: the guest answers the hello with this error
            # (id = our nonce, or null from agents that do not echo it).
            return (
                kind == protocol.ERROR
                and message.get("code") == "unsupported-version"
                and (message.get("id") is None or message.get("id") in nonces)
            )

        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AckTimeout(self.label, nonces[0], timeout)
            nonces.append(protocol.new_nonce())
            self._send(protocol.hello(nonces[-1]), nonces[0], remaining)
            try:
                reply = self._wait(
                    match, nonces[0], min(self.hello_interval, remaining), strict=False
                )
                break
            except AckTimeout:
                log.debug("%s: no hello-ack yet; repeating hello", self.label)
        if reply.get("type") == protocol.ERROR:
            raise ProtocolViolation(
                self.label,
                "the guest agent speaks none of the protocol versions we offer "
                f"{list(protocol.PROTOCOL_VERSIONS)}: {shown(reply.get('message'))}",
            )
        problems = protocol.validate_hello_ack(reply)
        if problems:
            raise ProtocolViolation(self.label, "bad hello-ack: " + "; ".join(problems))
        agent = reply["agent"]
        self.agent = AgentInfo(
            name=agent["name"],
            version=agent["version"],
            protocol_version=reply["version"],
            capabilities=tuple(reply["capabilities"]),
        )
        self._synced = True
        log.debug(
            "%s: handshake done with %s %s",
            self.label, shown(self.agent.name), shown(self.agent.version),
        )
        return self.agent

    def send_config(self, payload: Mapping[str, Any], timeout: float) -> AckResult:
        """Push a config; return only on the guest's ack of it with status "ok".

        "ok" means one result per payload item, in payload order, each
        ``applied`` or ``unchanged`` (docs/protocol.md 4.4).  Raises
        ConfigRefused for status "error" (rejected whole) or "partial"
        (some items not applied; the exception keeps the results),
        AckTimeout when no ack comes, ProtocolViolation for a malformed
        answer or results that do not answer exactly the items sent.
        """
        problems = protocol.validate_config_payload(payload)
        if problems:
            raise InvalidMessage(protocol.CONFIG, "; ".join(problems))
        request_id = protocol.new_id()
        reply = self._request(protocol.config(request_id, payload), request_id, timeout)
        if reply.get("type") != protocol.ACK:
            self._raise_error_reply(reply, "config")
        problems = protocol.validate_ack(reply)
        if problems:
            raise ProtocolViolation(self.label, "bad ack: " + "; ".join(problems))
        results = [dict(r) for r in reply.get("results", [])]
        if reply["status"] != "error":
            # An ok must confirm every item sent, and only those: otherwise
            # a guest could ack a key revocation it never applied.  An error
            # ack lists problems, not items (docs/protocol.md 4.4).
            mismatch = protocol.results_problem(payload, results)
            if mismatch is not None:
                raise ProtocolViolation(self.label, mismatch)
        if reply["status"] != "ok":
            raise ConfigRefused(self.label, reply["status"], reply.get("error"), results)
        return AckResult(
            id=request_id,
            status=reply["status"],
            results=tuple(
                ItemResult(r["item"], r["status"], str(r.get("detail", ""))) for r in results
            ),
        )

    def ping(self, timeout: float) -> float:
        """Round trip of a ping to the guest agent, in seconds."""
        request_id = protocol.new_id()
        started = time.monotonic()
        reply = self._request(protocol.ping(request_id), request_id, timeout)
        if reply.get("type") != protocol.PONG:
            self._raise_error_reply(reply, "ping")
        return time.monotonic() - started

    # --- plumbing ------------------------------------------------------------

    def _request(self, message: dict[str, Any], request_id: str, timeout: float) -> dict[str, Any]:
        if not self._synced:
            self.handshake(timeout)
        self._send(message, request_id, timeout)
        reply_type = {protocol.CONFIG: protocol.ACK, protocol.PING: protocol.PONG}[message["type"]]

        def match(reply: dict[str, Any]) -> bool:
            return reply.get("id") == request_id and reply.get("type") in (
                reply_type,
                protocol.ERROR,
            )

        return self._wait(match, request_id, timeout, strict=True)

    def _raise_error_reply(self, reply: dict[str, Any], what: str) -> None:
        code, text = reply.get("code"), reply.get("message")
        if what == "config" and code == "bad-request":
            raise ConfigRefused(self.label, "error", f"bad-request: {text}")
        raise ProtocolViolation(
            self.label,
            f"the guest agent answered our {what} with error {shown(code)}: {shown(text)}",
        )

    def _send(self, message: dict[str, Any], request_id: str, timeout: float) -> None:
        assert self._sock is not None
        frame = protocol.encode(message)
        self._sock.settimeout(timeout)
        try:
            self._sock.sendall(frame)
        except TimeoutError:
            # QEMU stopped reading: the guest's ring is full and nobody drains it.
            self._synced = False
            raise AckTimeout(self.label, request_id, timeout) from None
        except OSError as exc:
            raise self._lost(exc) from None

    def _wait(
        self,
        match: Callable[[dict[str, Any]], bool],
        request_id: str,
        timeout: float,
        *,
        strict: bool,
    ) -> dict[str, Any]:
        """Read until a message satisfies ``match``; drop the rest.

        ``strict`` (after the handshake): a frame the guest got wrong is a
        protocol violation reported at once, rather than a timeout later.
        Before the handshake such frames may be stale and are dropped.
        """
        assert self._sock is not None
        deadline = time.monotonic() + timeout
        while True:
            pending = self._pending
            while pending:
                item = pending.popleft()
                if isinstance(item, protocol.FrameError):
                    if strict:
                        self._synced = False
                        raise ProtocolViolation(
                            self.label, f"guest sent {item.code}: {item.detail}"
                        )
                    log.debug("%s: dropped before handshake: %s", self.label, item.detail)
                    continue
                if match(item):
                    return item
                if strict and self._answers_us(item):
                    self._synced = False
                    raise ProtocolViolation(
                        self.label,
                        f"the guest agent could not read our request: {item.get('code')}: "
                        f"{shown(item.get('message'))}",
                    )
                log.debug("%s: ignored %s message", self.label, shown(item.get("type")))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._synced = False  # resync (new hello) before the next request
                raise AckTimeout(self.label, request_id, timeout)
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(_READ_SIZE)
            except TimeoutError:
                continue
            except OSError as exc:
                raise self._lost(exc) from None
            if not data:
                raise self._lost(None)
            self._pending.extend(self._decoder.feed(data))

    def _lost(self, exc: OSError | None) -> ChannelUnavailable:
        """The connection ended: QEMU exited with its domain, or the broker stopped."""
        self.close()
        how = "" if exc is None else f" ({exc.strerror or exc})"
        return ChannelUnavailable(
            self.path, f"connection closed{how}: the domain or the broker went away"
        )

    @staticmethod
    def _answers_us(message: dict[str, Any]) -> bool:
        # An id-less error about framing answers whatever we just sent.
        return (
            message.get("type") == protocol.ERROR
            and message.get("id") is None
            and message.get("code") in ("bad-frame", "frame-too-large")
        )


# --- xen-channel send --------------------------------------------------------


def find_channel_socket(rundir: str, domain: str, channel: str) -> str:
    """QEMU's socket path for ``channel`` of ``domain`` (name or UUID), from the registry.

    The registry builds every record it reads through the model, so the
    path has passed the model's rules already.
    """
    from .model import Connection, DomainState
    from .registry import Registry  # lazily: only `send` needs the registry

    record = Registry(rundir).get(domain)
    if record is None:
        raise UnknownDomain(domain)
    for entry in record.channels:
        if entry.name != channel:
            continue
        if entry.connection != Connection.SOCKET or not entry.path:
            raise UnsupportedChannel(
                channel,
                f"of domain {shown(record.name)} is a {entry.connection} channel; "
                "only socket channels carry the protocol",
            )
        if record.state is not DomainState.RUNNING:
            raise ChannelUnavailable(
                entry.path, f"domain {shown(record.name)} is {record.state}, not running"
            )
        return entry.path
    names = ", ".join(shown(c.name) for c in record.channels if c.name) or "none"
    raise UnsupportedChannel(
        channel, f"domain {shown(record.name)} has no such channel (it has: {names})"
    )


def connect_trusted(qemu_socket: str, label: str) -> ChannelClient:
    """A connected client: on the broker's consumer socket when a broker serves it, else QEMU's.

    QEMU serves one client at a time, so while the broker runs it holds
    QEMU's socket and every other tool must go through the broker.  Both
    sockets are verified by the one rule for sockets we are about to trust
    (trust.check_channel_socket, shared with the qemu-ga commands) before
    anything is sent.
    An untrusted broker socket is an error, not a reason to fall back: it
    sits in the same directory as QEMU's, which is then untrusted as well.
    Only a broker socket nobody listens on (a broker killed with SIGKILL
    leaves it; it let go of QEMU's socket too) sends us to QEMU's.
    """
    try:
        brokered: str | None = broker_socket_for(qemu_socket)
    except XenChannelError:
        brokered = None  # no room for one beside this path: the broker never serves it
    if brokered is not None and check_channel_socket(brokered, "broker socket"):
        # A live broker accepts at once; only QEMU's socket is worth waiting for.
        client = ChannelClient(brokered, label=label, retries=0)
        try:
            client.connect()
            return client
        except ChannelUnavailable as exc:
            log.debug("%s: broker socket unusable (%s); using QEMU's", label, exc.detail)
    check_channel_socket(qemu_socket, "QEMU socket")
    client = ChannelClient(qemu_socket, label=label)
    client.connect()  # retries while QEMU is still creating the socket
    # It may have appeared only during those retries: check what we reached.
    if not check_channel_socket(qemu_socket, "QEMU socket"):
        client.close()
        raise ChannelUnavailable(qemu_socket, "the socket went away")
    return client


def _load_payload(spec: str, streams: Streams) -> dict[str, Any]:
    from .console import read_input

    data, label = read_input(spec, streams)
    try:
        payload = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(label, "not UTF-8 text") from None
    except ValueError as exc:
        line = getattr(exc, "lineno", None)
        raise InputError(label, f"invalid JSON: {getattr(exc, 'msg', exc)}", line) from None
    problems = protocol.validate_config_payload(payload)
    if problems:
        raise InputError(label, "; ".join(problems))
    assert isinstance(payload, dict)
    return payload


def _print_results(results: list[dict[str, Any]], streams: Streams) -> None:
    if not results:
        streams.stdout.write("(no items)\n")
        return
    # Guest-supplied text: escaped, so it can neither redraw the terminal
    # (ESC, OSC 52) nor fake a row (newlines, bidi overrides).
    rows = [
        tuple(escaped(str(r.get(key, ""))) for key in ("item", "status", "detail"))
        for r in results
    ]
    width = max(4, *(len(item) for item, _status, _detail in rows))
    streams.stdout.write(f"{'ITEM':<{width}}  {'STATUS':<11}  DETAIL\n")
    for item, status, detail in rows:
        streams.stdout.write(f"{item:<{width}}  {status:<11}  {detail}\n")


def _print_json(document: dict[str, Any], streams: Streams) -> None:
    # json escapes every control character but DEL; guest text may hold one.
    text = json.dumps(document, indent=2).replace("\x7f", "\\u007f")
    streams.stdout.write(text + "\n")


def run_send(args: argparse.Namespace, streams: Streams) -> int:
    """``xen-channel send DOMAIN CHANNEL --config FILE.json [--timeout S] [--json]``.

    Exit 0 only when the guest acknowledged every item (status "ok").
    """
    from .model import validate_name
    from .settings import load_settings

    if args.timeout <= 0:
        from .errors import UsageError

        raise UsageError("--timeout must be positive")
    validate_name(args.channel)
    if args.channel == protocol.QEMU_GA_CHANNEL:
        raise UnsupportedChannel(
            args.channel, "speaks qemu-ga's protocol, not ours; send does not write to it"
        )
    payload = _load_payload(args.config, streams)
    rundir = load_settings(args.rundir).rundir
    qemu_socket = find_channel_socket(rundir, args.domain, args.channel)
    label = f"domain {shown(args.domain)} channel {shown(args.channel)}"
    client = connect_trusted(qemu_socket, label)
    log.debug("%s: sending through %s", label, shown(client.path))
    try:
        with client:
            result = client.send_config(payload, args.timeout)
    except ConfigRefused as exc:
        if args.json:
            _print_json({"status": exc.status, "error": exc.error, "results": exc.results}, streams)
        elif exc.results:
            _print_results(exc.results, streams)
        raise
    agent = client.agent
    if args.json:
        document = result.as_json()
        if agent is not None:
            document["agent"] = {"name": agent.name, "version": agent.version}
        _print_json(document, streams)
    else:
        _print_results([dataclasses.asdict(r) for r in result.results], streams)
    return 0


__all__ = [
    "AckResult",
    "AgentInfo",
    "ChannelClient",
    "ItemResult",
    "broker_socket_for",
    "connect_trusted",
    "find_channel_socket",
    "run_send",
]
