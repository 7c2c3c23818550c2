"""``xen-channel broker``: share each channel's one QEMU connection among local consumers.

QEMU serves a channel's ``server,nowait`` socket to one client at a time
(background.md §2), so a debugging client or a monitoring probe that connects first
locks the real agent out (background.md §5, "known pain").  The broker is that one
client for every running socket channel in the registry, and serves any
number of local consumers on a second socket beside QEMU's
(:func:`broker_socket_for`):

- guest-to-host frames go to every consumer of that channel;
- consumer-to-guest frames are cut by :class:`~.protocol.FrameSplitter`
  per consumer and queued whole, so two consumers' frames never
  interleave and a consumer's partial frame waits until it is complete;
- oversized and garbage frames from either side are dropped with one log
  line, and every other channel keeps being served;
- a consumer socket belongs to exactly one channel: nothing a consumer
  sends can reach another channel or another domain.

One thread runs one :mod:`selectors` loop.  Not asyncio: the broker needs
non-blocking sockets, a few timers and explicit control over buffers
(backpressure, dropping a slow consumer), which selectors gives without an
extra layer per byte on the bulk path (bench/bench_broker.py), and the
whole state machine stays visible in this file.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import grp
import json
import logging
import os
import secrets
import selectors
import signal
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Final

from . import qga, service, sockets
from .errors import (
    InvalidSocketPath,
    SettingsError,
    UntrustedPath,
    UsageError,
    shown,
)
from .model import Channel, Connection, DomainState
from .paths import broker_socket_for, is_within
from .protocol import MAX_FRAME, FrameError, FrameSplitter
from .registry import Registry
from .settings import load_settings
from .trust import check_trusted_path

if TYPE_CHECKING:
    import argparse

    from .console import Streams

log = logging.getLogger(__name__)

#: qemu-guest-agent's channel.  It speaks qemu-ga's protocol, not ours, and is
#: served in *agent mode* (one command at a time, a fresh sync every turn).
#: Under libvirt's qemu driver libvirt itself holds its one connection, so
#: only libxl domains' agent channels are served.
AGENT_CHANNEL: Final = qga.AGENT_CHANNEL
AGENT_DRIVERS: Final = frozenset({"libxl"})

_READ_SIZE: Final = 256 * 1024
#: Queued guest frames a consumer may fall behind by before it is dropped,
#: so one stuck consumer can neither stall the guest nor the other consumers.
CONSUMER_BACKLOG_LIMIT: Final = 4 * MAX_FRAME
#: Above this many bytes queued for QEMU, stop reading consumers of that
#: channel (backpressure) until the guest has drained it to the low mark.
UPSTREAM_HIGH_WATER: Final = 2 * MAX_FRAME
UPSTREAM_LOW_WATER: Final = MAX_FRAME // 4

#: Repeated log lines (dropped frames, refused consumers, ...): at most this
#: many of one kind per channel (or for the broker) per window.
DROP_LOG_LIMIT: Final = 20
DROP_LOG_WINDOW: Final = 60.0

#: Consumers served at once, per channel and in all.  Each consumer may hold
#: CONSUMER_BACKLOG_LIMIT plus one partial frame, so the total bounds memory
#: as well as descriptors (256 x 5 MiB); a consumer over a limit is accepted
#: and closed at once, so it fails fast instead of hanging in the backlog.
MAX_CONSUMERS_PER_CHANNEL: Final = 32
MAX_CONSUMERS_TOTAL: Final = 256
#: Out of descriptors, accept() fails while the listener stays readable: the
#: loop would spin.  Listeners are then left out of the selector for a
#: back-off that doubles from the first value to the second.
ACCEPT_PAUSE_FIRST: Final = 0.05
ACCEPT_PAUSE_MAX: Final = 1.0
_OUT_OF_DESCRIPTORS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

#: Agent mode.  A turn first syncs (guest-sync-delimited with a fresh id,
#: repeated at doubling intervals from AGENT_SYNC_INTERVAL) for at most
#: AGENT_SYNC_TIMEOUT, then waits AGENT_ANSWER_TIMEOUT at most for the
#: answer; a command that never answers (guest-shutdown succeeding) holds
#: the agent no longer than that.
AGENT_SYNC_INTERVAL: Final = 1.0
AGENT_SYNC_TIMEOUT: Final = 10.0
AGENT_ANSWER_TIMEOUT: Final = 30.0
#: Longest answer line from the guest: it must fit a consumer's backlog.
AGENT_MAX_LINE: Final = CONSUMER_BACKLOG_LIMIT - 1024
#: Longest request line from a consumer, and requests it may queue before
#: the broker stops reading from it.
AGENT_MAX_REQUEST: Final = 1024 * 1024
AGENT_MAX_QUEUED: Final = 8

BACKOFF_FIRST: Final = 0.1
BACKOFF_MAX: Final = 2.0
#: A connection that lasted this long counts as healthy: the next retry
#: starts again from BACKOFF_FIRST.
_HEALTHY_AFTER: Final = 1.0


# --- naming ---------------------------------------------------------------


def _temporary_sibling(path: str) -> str:
    """A random name to bind under before renaming to ``path``; never longer than it."""
    directory, base = os.path.split(path)
    # '@' keeps it out of the channel-name namespace, like the socket itself.
    size = min(1 + 12, len(base.encode("utf-8", "surrogateescape")))
    return os.path.join(directory, ("@" + secrets.token_hex(12))[:size])


# --- the registry ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ChannelSpec:
    """One running socket channel the broker serves: the registry's
    :class:`~.model.Channel` (validated by the model when the record was
    read) and its domain, plus the broker's own fact, ``agent``: qemu-ga's
    channel, served in agent mode.
    """

    domain_uuid: str
    domain_name: str
    channel: Channel
    agent: bool = False

    def __post_init__(self) -> None:
        if self.channel.name is None or self.channel.path is None:
            raise ValueError("the broker serves only named channels with a socket path")

    @property
    def name(self) -> str:
        assert self.channel.name is not None  # __post_init__
        return self.channel.name

    @property
    def path(self) -> str:
        assert self.channel.path is not None  # __post_init__
        return self.channel.path

    @property
    def key(self) -> tuple[str, str]:
        return (self.domain_uuid, self.name)

    @property
    def label(self) -> str:
        return f"domain {shown(self.domain_name)} channel {shown(self.name)}"


def read_running_channels(
    registry: Registry, allowed_roots: Sequence[str], limited: _LogLimiter | None = None
) -> tuple[dict[tuple[str, str], ChannelSpec], set[str] | None]:
    """Every brokerable channel of every running domain in the registry.

    Brokerable: a socket channel with a path below one of ``allowed_roots``
    (the settings' run directory and roots, which the prepare hook enforced
    too), not one libvirt connects to itself (the agent channel of a
    qemu-driver domain).  Names and paths need no second check: the
    registry builds every record it reads through the model.  The roots are
    checked here because the broker connects to the path as root and hands
    the connection to a group: a path pointing elsewhere (libvirt's own
    socket, say) must never be proxied.  An unreadable record is logged and
    skipped: it must not cut every other domain off.

    Also returns the UUIDs whose records could not be read (None: the
    registry as a whole could not), so that what is served for them is
    kept: a record unreadable for a moment (no descriptors left, say) does
    not mean its domain stopped.
    """
    specs: dict[tuple[str, str], ChannelSpec] = {}
    records, problems = registry.scan()
    unreadable: set[str] | None = set()
    for problem in problems:
        (limited or _LogLimiter("")).log(
            "registry", logging.WARNING, "%s; its channels are not served", problem.message()
        )
        name = os.path.basename(problem.path)
        if unreadable is not None and name.endswith(".json"):
            unreadable.add(name[: -len(".json")])
        else:
            unreadable = None
    for record in records:
        if record.state is not DomainState.RUNNING:
            continue
        for entry in record.channels:
            channel = entry.channel
            if (
                channel.connection is not Connection.SOCKET
                or channel.name is None
                or channel.path is None
                or (channel.name == AGENT_CHANNEL and record.driver not in AGENT_DRIVERS)
            ):
                continue
            spec = ChannelSpec(record.uuid, record.name, channel,
                               agent=channel.name == AGENT_CHANNEL)
            if not is_within(spec.path, allowed_roots, strict=True):
                log.warning(
                    "broker: %s: socket %s is outside the allowed roots; not served",
                    spec.label, shown(spec.path),
                )
                continue
            specs[spec.key] = spec
    return specs, unreadable


_FRESH_NS: Final = 100_000_000


class RegistryWatcher:
    """Tell when the registry may have changed, cheaply, by polling.

    inotify is not in the standard library, and a ctypes binding is more
    code to get wrong than a once-a-second ``stat``.  Records are replaced
    by rename (atomic_write), and the shim records a settled domain's start
    by creating a marker in a directory of its own; both change their
    directory's mtime, so a stat of each directory per poll notices every
    start and stop; the broker re-reads records only then.  A second of delay is harmless: QEMU has
    just created the socket and the guest agent is still booting.
    """

    def __init__(self, *directories: str) -> None:
        self.directories = directories
        self._seen: tuple[tuple[int, int, int], ...] | None = None

    def changed(self) -> bool:
        stamps = []
        for directory in self.directories:
            try:
                st = os.stat(directory)
                stamps.append((st.st_ino, st.st_mtime_ns, st.st_ctime_ns))
            except FileNotFoundError:
                stamps.append((0, 0, 0))
        stamp = tuple(stamps)
        # The kernel stamps mtime from a coarse clock (one tick, 1-10 ms), so a
        # second rename within the tick of our last stat leaves the same
        # mtime; while the stamp is that fresh, look again on the next poll.
        fresh = any(time.time_ns() - s[1] < _FRESH_NS for s in stamp)
        if stamp == self._seen and not fresh:
            return False
        self._seen = stamp
        return True


# --- the event loop -------------------------------------------------------

_Callback = Callable[[int], None]


class _LogLimiter:
    """At most DROP_LOG_LIMIT lines of each kind per DROP_LOG_WINDOW seconds.

    Whatever repeats - a guest spewing garbage, a client reconnecting in a
    loop, accept() failing for want of descriptors - must not flood the
    journal.  The number of lines left out is reported with the first line
    of that kind in the next window.  One per channel (it goes with the
    channel) and one for the broker.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._windows: dict[str, list[float]] = {}  # kind -> [start, logged, left out]

    def log(self, kind: str, level: int, message: str, *args: object) -> None:
        now = time.monotonic()
        window = self._windows.get(kind)
        if window is None or now - window[0] >= DROP_LOG_WINDOW:
            if window is not None and window[2]:
                log.warning(
                    "broker: %s%d more lines of this kind were not logged (%s)",
                    self.prefix, int(window[2]), kind,
                )
            window = self._windows[kind] = [now, 0, 0]
        if window[1] < DROP_LOG_LIMIT:
            window[1] += 1
            log.log(level, "broker: " + self.prefix + message, *args)
        else:
            window[2] += 1


class _Consumer:
    """One local client of one channel."""

    def __init__(self, sock: socket.socket, link: _Link, peer: str) -> None:
        self.sock = sock
        self.link = link
        self.peer = peer
        self.splitter = FrameSplitter()
        self.outgoing = bytearray()
        self.events = 0
        self.closed = False
        # Agent mode: request lines cut from the consumer's stream, and the
        # ones waiting for a turn (already re-encoded: one line each).
        self.lines = qga.LineReader(AGENT_MAX_REQUEST) if link.spec.agent else None
        self.requests: collections.deque[tuple[str, bytes]] = collections.deque()


class _Link:
    """One channel: the QEMU connection, the consumer listener, the consumers."""

    def __init__(self, spec: ChannelSpec) -> None:
        self.spec = spec
        self.consumer_path = broker_socket_for(spec.path)
        self.listener: socket.socket | None = None
        self.listener_id: tuple[int, int] | None = None
        self.listener_problem: str | None = None
        self.upstream: socket.socket | None = None
        self.upstream_since = 0.0
        self.upstream_events = 0
        self.upstream_splitter = FrameSplitter()
        self.upstream_outgoing = bytearray()
        self.connect_problem: str | None = None
        self.backoff = 0.0
        self.next_attempt = 0.0
        self.listening = False  # the listener is in the selector
        self.consumers: list[_Consumer] = []
        self.reading_consumers = True
        self.limited = _LogLimiter(f"{spec.label}: ")
        self.agent = _AgentTurns() if spec.agent else None


class _AgentTurns:
    """Agent mode: qemu-ga shared in turns, one command at a time.

    A turn is one request of one consumer: a fresh ``guest-sync-delimited``
    (its answer is found among stale output by qga.SyncWaiter), then the
    request, then its one answer line, which goes to that consumer only.
    Consumers wait in ``waiting``, in order; one with more requests goes
    to the back after its turn, so nobody holds the agent for long.

    While the agent is *warm* (the last turn on this connection got its
    answer), the request is written right behind the sync instead of
    after its answer: qemu-ga reads and answers in order, so the line after
    the sync's answer is still the request's, and the turn costs one round
    trip instead of two.  A cold agent (just connected, or after any
    failure) is synced first and sent the request only once it answered,
    with the sync repeated meanwhile, so a request is never sent to an
    agent that may not be there and never sent twice.
    """

    def __init__(self) -> None:
        self.reader = qga.LineReader(AGENT_MAX_LINE)
        self.waiting: collections.deque[_Consumer] = collections.deque()
        self.turn: _Consumer | None = None
        self.command = ""
        self.request = b""
        self.waiter = qga.SyncWaiter()
        self.synced = False
        self.after_marker = False
        self.deadline = 0.0
        self.next_sync = 0.0
        self.sync_interval = AGENT_SYNC_INTERVAL
        self.turns = 0
        self.warm = False
        self.pipelined = False  # this turn's request went right behind its sync

    def next_timer(self) -> float:
        if self.turn is None:
            return float("inf")
        if self.synced or self.pipelined:
            return self.deadline
        return min(self.deadline, self.next_sync)


class Broker:
    """The daemon's state and loop; :meth:`run` until :meth:`stop`."""

    def __init__(
        self,
        rundir: str,
        gid: int | None = None,
        poll_interval: float = 1.0,
        *,
        allowed_roots: Sequence[str] | None = None,
        backoff_max: float = BACKOFF_MAX,
        max_consumers: int = MAX_CONSUMERS_PER_CHANNEL,
        max_consumers_total: int = MAX_CONSUMERS_TOTAL,
        agent_timeout: float = AGENT_ANSWER_TIMEOUT,
        agent_sync_timeout: float = AGENT_SYNC_TIMEOUT,
    ) -> None:
        self.rundir = rundir
        self.allowed_roots = tuple(allowed_roots) if allowed_roots is not None else (rundir,)
        self.gid = gid
        self.poll_interval = poll_interval
        self.backoff_max = backoff_max
        self.max_consumers = max_consumers
        self.max_consumers_total = max_consumers_total
        self.agent_timeout = agent_timeout
        self.agent_sync_timeout = agent_sync_timeout
        self.consumer_count = 0
        # Agent-mode links with a turn in progress: the only ones with timers.
        self._agent_links: set[_Link] = set()
        self.registry = Registry(rundir)
        # A settled domain's start is recorded by the shim alone, as a marker
        # in registry/started/ (registry.mark_settled): its record file does
        # not change, so that directory is watched too.
        self.watcher = RegistryWatcher(
            *self.registry.watched_dirs())
        self._registry_problem: str | None = None
        self.links: dict[tuple[str, str], _Link] = {}
        self._by_consumer_path: dict[str, _Link] = {}
        # Links with a consumer socket but no QEMU connection: the only ones
        # the loop visits each turn (for retry deadlines), so an idle
        # turn costs nothing per connected channel.
        self._unconnected: set[_Link] = set()
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = False
        self._stop_reason = ""
        self._rescan = False
        self._next_poll = 0.0
        self.limited = _LogLimiter("")
        # Out of descriptors: listeners are out of the selector until then.
        self._accepting = True
        self._accept_pause = 0.0
        self._accept_resume_at = 0.0
        self._short_since: float | None = None

    # -- control (safe from signal handlers and other threads)

    def stop(self, reason: str = "asked to stop") -> None:
        self._stopping = True
        self._stop_reason = reason
        self._wake()

    def rescan(self) -> None:
        self._rescan = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    # -- main loop

    def run(self) -> int:
        self.selector.register(self._wake_r, selectors.EVENT_READ, self._on_wake)
        log.info("broker: watching registry %s", shown(self.rundir))
        announced = False
        try:
            while not self._stopping:
                now = time.monotonic()
                if self._rescan or now >= self._next_poll:
                    force, self._rescan = self._rescan, False
                    self._next_poll = now + self.poll_interval
                    self._poll_registry(force)
                    if not announced:
                        # Registry read, consumer sockets bound: tell systemd (Type=notify).
                        service.ready(f"serving {len(self.links)} channel(s) from {self.rundir}")
                        announced = True
                self._attempt_connections(now)
                if not self._accepting and now >= self._accept_resume_at:
                    self._resume_accepting()
                if self._agent_links:
                    self._agent_tick(now)
                for ready, mask in self.selector.select(self._timeout()):
                    callback: _Callback = ready.data
                    callback(mask)
            log.info("broker: stopping (%s)", self._stop_reason)
            service.stopping(f"stopping ({self._stop_reason})")
        finally:
            for key in list(self.links):
                self._remove_link(key, "broker stopping")
            self.selector.close()
            self._wake_r.close()
            self._wake_w.close()
        log.info("broker: stopped")
        return 0

    def _timeout(self) -> float:
        deadline = self._next_poll
        if not self._accepting:
            deadline = min(deadline, self._accept_resume_at)
        for link in self._agent_links:
            assert link.agent is not None
            deadline = min(deadline, link.agent.next_timer())
        for link in self._unconnected:
            deadline = min(deadline, link.next_attempt)
        return max(0.0, deadline - time.monotonic())

    def _on_wake(self, _mask: int) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)

    # -- registry

    def _poll_registry(self, force: bool) -> None:
        if self.watcher.changed() or force or self._registry_problem:
            try:
                wanted, unreadable = read_running_channels(
                    self.registry, self.allowed_roots, self.limited
                )
            except OSError as exc:
                # The registry directory itself is unreadable: keep serving
                # what we have, and retry on every poll.
                problem = f"registry {shown(self.registry.records_dir)}: {_describe(exc)}"
                if problem != self._registry_problem:
                    log.warning("broker: %s; keeping the channels served so far", problem)
                self._registry_problem = problem
            else:
                if self._registry_problem:
                    log.info("broker: registry readable again")
                self._registry_problem = None
                self._follow(wanted, unreadable)
        # A consumer socket that could not be created (its directory not
        # there yet, a live socket in the way) is retried on every poll.
        for link in self.links.values():
            if link.listener is None:
                self._open_listener(link)

    def _follow(
        self, wanted: dict[tuple[str, str], ChannelSpec], unreadable: set[str] | None
    ) -> None:
        for key, link in list(self.links.items()):
            spec = wanted.get(key)
            if spec is None and (unreadable is None or key[0] in unreadable):
                continue  # its record could not be read just now: keep serving it
            if spec is None:
                self._remove_link(key, "domain is no longer running")
            elif spec.path != link.spec.path:
                self._remove_link(key, "its socket path changed")
        for key, spec in wanted.items():
            if key not in self.links:
                self._add_link(spec)

    def _add_link(self, spec: ChannelSpec) -> None:
        try:
            link = _Link(spec)
        except InvalidSocketPath as exc:
            log.warning("broker: %s: %s; not served", spec.label, exc.message())
            return
        clash = self._by_consumer_path.get(link.consumer_path)
        if clash is not None:
            log.warning(
                "broker: %s: consumer socket %s is already %s's; not served",
                spec.label, shown(link.consumer_path), clash.spec.label,
            )
            return
        self.links[spec.key] = link
        self._by_consumer_path[link.consumer_path] = link
        log.info("broker: %s: following QEMU socket %s", spec.label, shown(spec.path))

    def _remove_link(self, key: tuple[str, str], why: str) -> None:
        link = self.links.pop(key)
        del self._by_consumer_path[link.consumer_path]
        self._unconnected.discard(link)
        if link.agent is not None:
            link.agent.waiting.clear()  # no new turns for consumers about to go
        for consumer in list(link.consumers):
            self._drop_consumer(consumer, None)
        self._close_upstream(link)
        if link.listener is not None:
            self._set_listening(link, False)
            link.listener.close()
            link.listener = None
            self._unlink_own_socket(link)
        log.info("broker: %s: stopped serving (%s)", link.spec.label, why)

    # -- consumer listener

    def _open_listener(self, link: _Link) -> None:
        try:
            listener, identity = _create_consumer_socket(link.consumer_path, self.gid)
        except (OSError, _UnsafeSocketPath) as exc:
            problem = str(exc) if isinstance(exc, _UnsafeSocketPath) else _describe(exc)
            if problem != link.listener_problem:
                log.warning(
                    "broker: %s: cannot serve consumers at %s: %s",
                    link.spec.label, shown(link.consumer_path), problem,
                )
                link.listener_problem = problem
            return
        link.listener, link.listener_id, link.listener_problem = listener, identity, None
        self._unconnected.add(link)
        self._set_listening(link, self._accepting)
        log.info("broker: %s: serving consumers at %s", link.spec.label, shown(link.consumer_path))
        link.next_attempt = 0.0

    def _unlink_own_socket(self, link: _Link) -> None:
        # Remove the path only while it is still the socket we bound: an
        # admin or a new broker may have replaced it since.
        try:
            st = os.lstat(link.consumer_path)
        except FileNotFoundError:
            return
        if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == link.listener_id:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link.consumer_path)

    def _set_listening(self, link: _Link, listening: bool) -> None:
        if link.listener is None or link.listening == listening:
            return
        if listening:
            self.selector.register(
                link.listener, selectors.EVENT_READ, lambda _m, link=link: self._on_accept(link)
            )
        else:
            self.selector.unregister(link.listener)
        link.listening = listening

    def _on_accept(self, link: _Link) -> None:
        while link.listener is not None:  # None: closed earlier in this batch of events
            try:
                sock, _addr = link.listener.accept()
            except (BlockingIOError, InterruptedError):
                self._accepted_all()
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._pause_accepting(exc)
                else:  # ECONNABORTED and the like: that client is gone
                    link.limited.log("accept", logging.WARNING, "accept failed: %s", _describe(exc))
                return
            if len(link.consumers) >= self.max_consumers:
                sock.close()
                link.limited.log(
                    "refused", logging.WARNING,
                    "consumer refused: the channel has %d consumers, the limit",
                    len(link.consumers),
                )
                continue
            if self.consumer_count >= self.max_consumers_total:
                sock.close()
                link.limited.log(
                    "refused", logging.WARNING,
                    "consumer refused: the broker serves %d consumers, the limit",
                    self.consumer_count,
                )
                continue
            sock.setblocking(False)
            consumer = _Consumer(sock, link, _peer_of(sock))
            link.consumers.append(consumer)
            self.consumer_count += 1
            self._set_consumer_events(consumer)
            link.limited.log("consumers", logging.INFO, "consumer %s connected", consumer.peer)

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of descriptors: stop watching every listener for a back-off.

        EMFILE is the process's limit, so every listener would fail alike.
        Consumers already connected are served meanwhile, and their leaving
        is what frees descriptors; the clients waiting in the backlogs are
        accepted once accept() works again.
        """
        now = time.monotonic()
        pause = self._accept_pause
        self._accept_pause = min(ACCEPT_PAUSE_MAX, pause * 2) if pause else ACCEPT_PAUSE_FIRST
        self._accept_resume_at = now + self._accept_pause
        self._accepting = False
        for link in self.links.values():
            self._set_listening(link, False)
        if self._short_since is None:
            self._short_since = now
            self.limited.log(
                "descriptors", logging.WARNING,
                "out of file descriptors (%s) with %d consumers; not accepting more "
                "until some leave (retrying every %g s at most)",
                _describe(exc), self.consumer_count, ACCEPT_PAUSE_MAX,
            )

    def _resume_accepting(self) -> None:
        self._accepting = True
        for link in self.links.values():
            self._set_listening(link, True)

    def _accepted_all(self) -> None:
        """A backlog was drained without running short: the shortage, if any, is over."""
        if self._short_since is not None and self._accepting:
            self.limited.log(
                "descriptors", logging.INFO,
                "accepting again after %.1f s without file descriptors",
                time.monotonic() - self._short_since,
            )
            self._short_since = None
            self._accept_pause = 0.0

    # -- consumers

    def _set_consumer_events(self, consumer: _Consumer) -> None:
        # Agent mode: a consumer with AGENT_MAX_QUEUED requests waiting is not
        # read until its turns come (memory stays bounded per consumer).
        reading = consumer.link.reading_consumers and len(consumer.requests) < AGENT_MAX_QUEUED
        events = selectors.EVENT_READ if reading else 0
        if consumer.outgoing:
            events |= selectors.EVENT_WRITE
        if events == consumer.events:
            return
        if consumer.events == 0:
            self.selector.register(
                consumer.sock, events, lambda m, c=consumer: self._on_consumer(c, m)
            )
        elif events == 0:
            self.selector.unregister(consumer.sock)
        else:
            self.selector.modify(
                consumer.sock, events, lambda m, c=consumer: self._on_consumer(c, m)
            )
        consumer.events = events

    def _on_consumer(self, consumer: _Consumer, mask: int) -> None:
        if consumer.closed:
            return  # dropped earlier in this batch of events
        if mask & selectors.EVENT_WRITE and not self._flush_consumer(consumer):
            return
        if mask & selectors.EVENT_READ and consumer.link.reading_consumers:
            self._read_consumer(consumer)

    def _read_consumer(self, consumer: _Consumer) -> None:
        link = consumer.link
        try:
            data = consumer.sock.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop_consumer(consumer, _describe(exc))
            return
        if not data:
            if consumer.splitter.pending:
                log.warning(
                    "broker: %s: consumer %s left mid-frame; %d bytes dropped",
                    link.spec.label, consumer.peer, consumer.splitter.pending,
                )
            self._drop_consumer(consumer, "disconnected")
            return
        if link.agent is not None:
            self._agent_read_consumer(consumer, data)
            return
        for item in consumer.splitter.feed(data):
            frame = _checked(item)
            if isinstance(frame, str):
                self._log_drop(link, f"dropped a frame from consumer {consumer.peer}: {frame}")
            elif link.upstream is None:
                self._log_drop(
                    link, f"dropped a frame from consumer {consumer.peer}: not connected to QEMU"
                )
            else:
                link.upstream_outgoing += frame
        if link.upstream_outgoing:
            self._flush_upstream(link)

    def _flush_consumer(self, consumer: _Consumer) -> bool:
        try:
            sent = consumer.sock.send(consumer.outgoing)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._drop_consumer(consumer, _describe(exc))
            return False
        del consumer.outgoing[:sent]
        self._set_consumer_events(consumer)
        return True

    def _drop_consumer(self, consumer: _Consumer, why: str | None) -> None:
        link = consumer.link
        if consumer in link.consumers:
            link.consumers.remove(consumer)
            self.consumer_count -= 1
        if consumer.events:
            self.selector.unregister(consumer.sock)
            consumer.events = 0
        consumer.sock.close()
        consumer.closed = True
        if link.agent is not None:
            consumer.requests.clear()
            with contextlib.suppress(ValueError):
                link.agent.waiting.remove(consumer)
            if link.agent.turn is consumer:
                self._agent_end_turn(link)  # the late answer is skipped by the next sync
        if why is not None:
            link.limited.log("consumers", logging.INFO, "consumer %s %s", consumer.peer, why)

    def _log_drop(self, link: _Link, what: str) -> None:
        """A dropped frame: logged, but at most DROP_LOG_LIMIT lines per channel per window."""
        link.limited.log("dropped frames", logging.WARNING, "%s", what)

    def _set_reading_consumers(self, link: _Link, reading: bool) -> None:
        if link.reading_consumers == reading:
            return
        link.reading_consumers = reading
        for consumer in link.consumers:
            self._set_consumer_events(consumer)

    # -- agent mode (org.qemu.guest_agent.0)

    def _agent_read_consumer(self, consumer: _Consumer, data: bytes) -> None:
        """Cut a consumer's bytes into requests and queue them for turns."""
        assert consumer.lines is not None
        consumer.lines.feed(data)
        while not consumer.closed and (event := consumer.lines.next_event()) is not None:
            if isinstance(event, qga.Marker):
                continue  # a delimited sync follows; its own line says so
            if isinstance(event, qga.Overlong):
                self._agent_answer(
                    consumer, _agent_error(f"request over {AGENT_MAX_REQUEST} bytes; dropped")
                )
                continue
            self._agent_request(consumer, event.data)
        self._agent_next_turn(consumer.link)

    def _agent_request(self, consumer: _Consumer, line: bytes) -> None:
        agent = consumer.link.agent
        assert agent is not None
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):
            request = None
        if not isinstance(request, dict):
            self._agent_answer(consumer, _agent_error("the request is not a JSON object"))
            return
        if request.get("execute") == "guest-sync-delimited":
            # The consumer's own sync: it drops whatever it had outstanding.
            # Answered here: every turn begins with the broker's own fresh
            # sync, so all a consumer ever reads are answers to its requests.
            arguments = request.get("arguments")
            sync_id = arguments.get("id") if isinstance(arguments, dict) else None
            if type(sync_id) is not int:
                problem = _agent_error("guest-sync-delimited needs an integer id")
                self._agent_answer(consumer, problem)
                return
            consumer.requests.clear()
            with contextlib.suppress(ValueError):
                agent.waiting.remove(consumer)
            if agent.turn is consumer:
                self._agent_end_turn(consumer.link)
            self._set_consumer_events(consumer)
            answer = json.dumps({"return": sync_id}).encode("ascii")
            self._agent_answer(consumer, b"\xff" + answer + b"\n")
            return
        try:
            # Re-encoded: one line, ASCII, nothing smuggled after it.
            encoded = qga.encode_request(request)
        except ValueError as exc:
            self._agent_answer(consumer, _agent_error(str(exc)))
            return
        consumer.requests.append((str(request["execute"]), encoded))
        if consumer is not agent.turn and consumer not in agent.waiting:
            agent.waiting.append(consumer)
        if len(consumer.requests) >= AGENT_MAX_QUEUED:
            self._set_consumer_events(consumer)

    def _agent_answer(self, consumer: _Consumer, data: bytes) -> None:
        if consumer.closed:
            return
        if len(consumer.outgoing) + len(data) > CONSUMER_BACKLOG_LIMIT:
            self._drop_consumer(consumer, f"dropped: over {CONSUMER_BACKLOG_LIMIT} bytes unread")
            return
        consumer.outgoing += data
        self._flush_consumer(consumer)

    def _agent_next_turn(self, link: _Link) -> None:
        """Give the agent to the next consumer waiting, if it is free and reachable."""
        agent = link.agent
        if agent is None or agent.turn is not None or link.upstream is None:
            return
        while agent.waiting:
            consumer = agent.waiting.popleft()
            if consumer.closed or not consumer.requests:
                continue
            agent.command, agent.request = consumer.requests.popleft()
            agent.turn = consumer
            agent.turns += 1
            agent.synced = False
            agent.after_marker = False
            agent.sync_interval = AGENT_SYNC_INTERVAL
            now = time.monotonic()
            agent.deadline = now + self.agent_sync_timeout
            self._agent_links.add(link)
            self._set_consumer_events(consumer)  # its queue shrank: may read again
            agent.pipelined = agent.warm
            log.debug(
                "broker: %s: turn %d: %s for consumer %s%s",
                link.spec.label, agent.turns, shown(agent.command), consumer.peer,
                " (behind the sync)" if agent.pipelined else "",
            )
            self._agent_send_sync(link, now)
            return

    def _agent_send_sync(self, link: _Link, now: float) -> None:
        agent = link.agent
        assert agent is not None
        link.upstream_outgoing += agent.waiter.start()  # a fresh id every time
        if agent.pipelined:
            link.upstream_outgoing += agent.request
        agent.next_sync = now + agent.sync_interval
        agent.sync_interval *= 2
        self._flush_upstream(link)

    def _agent_read_upstream(self, link: _Link, data: bytes) -> None:
        agent = link.agent
        assert agent is not None
        agent.reader.feed(data)
        while link.upstream is not None and (event := agent.reader.next_event()) is not None:
            consumer = agent.turn
            if consumer is None:
                continue  # nobody asked: a late answer after its turn ended
            if not agent.synced:
                # Stale lines, 7.2's parse-error line for our 0xFF, answers
                # to older syncs: skipped until the marker and the latest id.
                if agent.waiter.on_event(event):
                    agent.synced = True
                    agent.deadline = time.monotonic() + self.agent_timeout
                    if not agent.pipelined:
                        link.upstream_outgoing += agent.request
                        self._flush_upstream(link)
                continue
            if isinstance(event, qga.Marker):
                agent.after_marker = True
                continue
            if agent.after_marker:
                agent.after_marker = False  # an answer to an older sync: not the answer
                continue
            agent.warm = isinstance(event, qga.Line)
            if isinstance(event, qga.Overlong):
                link.limited.log(
                    "agent", logging.WARNING, "answer to %s over %d bytes dropped",
                    shown(agent.command), AGENT_MAX_LINE,
                )
                self._agent_answer(consumer, _agent_error(
                    f"the guest's answer to {agent.command} is over {AGENT_MAX_LINE} bytes; "
                    "dropped"
                ))
            else:
                self._agent_answer(consumer, event.data + b"\n")
            self._agent_end_turn(link)

    def _agent_end_turn(self, link: _Link) -> None:
        agent = link.agent
        assert agent is not None
        consumer, agent.turn = agent.turn, None
        agent.synced = False
        self._agent_links.discard(link)
        if consumer is not None and not consumer.closed and consumer.requests:
            agent.waiting.append(consumer)  # its next request waits for its next turn
        self._agent_next_turn(link)

    def _agent_tick(self, now: float) -> None:
        for link in list(self._agent_links):
            agent = link.agent
            assert agent is not None
            consumer = agent.turn
            if consumer is None:
                self._agent_links.discard(link)
            elif not agent.synced and now >= agent.deadline:
                # Say what became of the request, as far as the broker knows.
                agent.warm = False
                fate = "may have been run" if agent.pipelined else "was not sent"
                link.limited.log(
                    "agent", logging.WARNING,
                    "qemu-ga did not answer guest-sync-delimited within %g s; %s %s",
                    self.agent_sync_timeout, shown(agent.command), fate,
                )
                self._agent_answer(consumer, _agent_error(
                    f"{qga.BROKER_NO_SYNC} within "
                    f"{self.agent_sync_timeout:g} s (is it running in the guest?); "
                    f"{agent.command} {fate}"
                ))
                self._agent_end_turn(link)
            elif not agent.synced and not agent.pipelined and now >= agent.next_sync:
                self._agent_send_sync(link, now)  # the last one may have been flushed unread
            elif agent.synced and now >= agent.deadline:
                # No answer (guest-shutdown succeeding, a hung agent): free the
                # agent for the others.  The consumer keeps its own timeout,
                # and the next turn's sync skips a late answer.
                agent.warm = False
                link.limited.log(
                    "agent", logging.WARNING, "no answer to %s within %g s; next turn",
                    shown(agent.command), self.agent_timeout,
                )
                self._agent_end_turn(link)

    # -- the QEMU side

    def _attempt_connections(self, now: float) -> None:
        for link in [link for link in self._unconnected if now >= link.next_attempt]:
            self._connect_upstream(link, now)

    def _connect_upstream(self, link: _Link, now: float) -> None:
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:  # EMFILE: retry later, keep serving the rest
            self._connect_failed(link, now, _describe(exc))
            return
        # Never through a symlink (the directory is root's alone, see
        # _check_directory, so this is defence in depth).
        try:
            if not stat.S_ISSOCK(os.lstat(link.spec.path).st_mode):
                sock.close()
                self._connect_failed(link, now, "it is not a socket (or is a symlink)")
                return
        except OSError as exc:
            sock.close()
            self._connect_failed(link, now, _describe(exc))
            return
        # A non-blocking connect on a Unix socket completes at once or fails
        # (EAGAIN: QEMU's listen backlog is full); it is never in progress.
        # While another client holds QEMU's one connection, the connect still
        # succeeds into the backlog and is served when that client leaves.
        code = sock.connect_ex(link.spec.path)
        if code != 0:
            sock.close()
            self._connect_failed(link, now, os.strerror(code))
            return
        link.upstream = sock
        self._unconnected.discard(link)
        link.upstream_since = now
        link.connect_problem = None
        link.upstream_splitter.reset()
        self._set_upstream_events(link, selectors.EVENT_READ)
        if link.agent is not None:
            link.agent.reader.reset()
            link.agent.warm = False
            self._agent_next_turn(link)
        # A QEMU that accepts and closes in a loop must not flood the journal.
        link.limited.log("qemu", logging.INFO, "connected to QEMU socket %s", shown(link.spec.path))

    def _connect_failed(self, link: _Link, now: float, problem: str) -> None:
        link.backoff = min(self.backoff_max, link.backoff * 2) if link.backoff else BACKOFF_FIRST
        link.next_attempt = now + link.backoff
        if problem != link.connect_problem:
            log.warning(
                "broker: %s: cannot connect to QEMU socket %s: %s; retrying every %gs at most",
                link.spec.label, shown(link.spec.path), problem, self.backoff_max,
            )
            link.connect_problem = problem

    def _set_upstream_events(self, link: _Link, events: int) -> None:
        sock = link.upstream
        assert sock is not None
        if events == link.upstream_events:
            return

        def callback(mask: int) -> None:
            # Events for a socket closed earlier in the same batch are stale.
            if link.upstream is sock:
                self._on_upstream(link, mask)

        if link.upstream_events == 0:
            self.selector.register(sock, events, callback)
        else:
            self.selector.modify(sock, events, callback)
        link.upstream_events = events

    def _on_upstream(self, link: _Link, mask: int) -> None:
        now = time.monotonic()
        if mask & selectors.EVENT_WRITE:
            self._flush_upstream(link)
            if link.upstream is None:
                return
        if mask & selectors.EVENT_READ:
            self._read_upstream(link, now)

    def _read_upstream(self, link: _Link, now: float) -> None:
        assert link.upstream is not None
        try:
            data = link.upstream.recv(_READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._upstream_lost(link, now, _describe(exc))
            return
        if not data:
            self._upstream_lost(link, now, "QEMU closed the connection")
            return
        if link.agent is not None:
            self._agent_read_upstream(link, data)
            return
        for item in link.upstream_splitter.feed(data):
            frame = _checked(item)
            if isinstance(frame, str):
                self._log_drop(link, f"dropped a frame from the guest: {frame}")
                continue
            for consumer in list(link.consumers):
                if len(consumer.outgoing) + len(frame) > CONSUMER_BACKLOG_LIMIT:
                    self._drop_consumer(
                        consumer, f"dropped: over {CONSUMER_BACKLOG_LIMIT} bytes behind the guest"
                    )
                    continue
                consumer.outgoing += frame
        for consumer in list(link.consumers):
            if consumer.outgoing:
                self._flush_consumer(consumer)

    def _flush_upstream(self, link: _Link) -> None:
        if link.upstream is None:
            return
        try:
            sent = link.upstream.send(link.upstream_outgoing)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self._upstream_lost(link, time.monotonic(), _describe(exc))
            return
        del link.upstream_outgoing[:sent]
        pending = len(link.upstream_outgoing)
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if pending else 0)
        self._set_upstream_events(link, events)
        if pending > UPSTREAM_HIGH_WATER:
            self._set_reading_consumers(link, False)
        elif pending <= UPSTREAM_LOW_WATER:
            self._set_reading_consumers(link, True)

    def _upstream_lost(self, link: _Link, now: float, why: str) -> None:
        lived = now - link.upstream_since
        self._close_upstream(link)
        if lived >= _HEALTHY_AFTER:
            link.backoff = 0.0
        link.backoff = min(self.backoff_max, link.backoff * 2) if link.backoff else BACKOFF_FIRST
        link.next_attempt = now + link.backoff
        if link.listener is not None:
            self._unconnected.add(link)
        link.limited.log(
            "qemu", logging.WARNING, "lost QEMU socket (%s); reconnecting in %.1fs",
            why, link.backoff,
        )

    def _close_upstream(self, link: _Link) -> None:
        if link.upstream is None:
            return
        if link.upstream_events:
            self.selector.unregister(link.upstream)
            link.upstream_events = 0
        link.upstream.close()
        link.upstream = None
        if link.upstream_outgoing:
            log.warning(
                "broker: %s: %d bytes for the guest discarded with the connection",
                link.spec.label, len(link.upstream_outgoing),
            )
            link.upstream_outgoing.clear()
        link.upstream_splitter.reset()
        self._set_reading_consumers(link, True)
        if link.agent is not None:
            link.agent.reader.reset()
            link.agent.warm = False
            consumer, link.agent.turn = link.agent.turn, None
            self._agent_links.discard(link)
            if consumer is not None:
                # What a direct client would see: the connection closes (a
                # guest-shutdown that succeeded ends like this).
                self._drop_consumer(consumer, "dropped: QEMU's connection closed during its turn")


# --- helpers ---------------------------------------------------------------


class _UnsafeSocketPath(Exception):
    """Something other than our own stale socket is in the way."""


def _checked(item: bytes | FrameError) -> bytes | str:
    """A frame fit to forward, or why it is not (a reason string).

    Only the frame's shape is checked (a JSON object between the sync
    byte and the newline), not its JSON: a full parse measured ~10 us per
    small frame, more than everything else the broker does for it, and
    every consumer parses what it receives anyway (protocol.FrameDecoder
    reports bad frames as values).  Oversized frames were already cut
    off by the splitter.
    """
    if isinstance(item, FrameError):
        return f"{item.code}: {item.detail}"
    if item[1:2] != b"{" or item[-2:-1] != b"}":
        return f"bad-frame: not a JSON object ({len(item)} bytes starting {shown(item[:24])})"
    return item


def _agent_error(desc: str) -> bytes:
    """An answer in qemu-ga's error shape, from the broker itself (never the guest's).

    qga.AgentClient tells it from the guest's by the prefix (and a failed
    sync by qga.BROKER_NO_SYNC), so the CLI does not blame the guest.
    """
    body = {"error": {"class": "GenericError", "desc": qga.BROKER_ERROR_PREFIX + desc}}
    return json.dumps(body, ensure_ascii=True).encode("ascii") + b"\n"


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _peer_of(sock: socket.socket) -> str:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return "(unknown peer)"
    pid, uid, gid = struct.unpack("3i", creds)
    return f"pid {pid} uid {uid} gid {gid}"


def trusted_uids() -> tuple[int, ...]:
    """Who may own a channel socket and the directories above it: root, and us."""
    euid = os.geteuid()
    return (0,) if euid == 0 else (0, euid)


def check_socket_directory(directory: str) -> None:
    """Raise UntrustedPath unless only root (or we) could put a socket in ``directory``.

    Where the broker binds its consumer sockets: the StrictModes rule of
    trust.py on the directory and everything above it, and, for the
    directory itself, no write permission for group or others even with
    the sticky bit.  A sticky directory keeps others from replacing a
    socket that is there, but not from binding the name first; libvirt's
    own libxl channel directory (mode 0777) fails this rule.  Clients about
    to trust a socket (``send``, the qemu-ga commands) apply the same
    directory rule through trust.check_channel_socket, which also accepts
    the user QEMU runs as under libvirt's QEMU driver.
    """
    uids = trusted_uids()
    check_trusted_path(directory, uids=uids)
    mode = stat.S_IMODE(os.stat(directory).st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UntrustedPath(directory, f"is writable by group or others (mode {mode:04o})")


def _check_directory(directory: str) -> None:
    """Refuse a directory where someone else could swap files under us."""
    try:
        check_socket_directory(directory)
    except UntrustedPath as exc:
        raise _UnsafeSocketPath(exc.message()) from None
    except OSError as exc:  # removed between the checks
        raise _UnsafeSocketPath(f"{shown(directory)}: {_describe(exc)}") from None


def _check_stale(path: str) -> bool:
    """Allow binding at ``path`` only if it is free or holds a dead socket.

    Never follows a symlink (lstat), never touches a regular file or a
    directory, and never steals a socket somebody still listens on (a
    second broker): a connect that is refused proves the socket is stale.
    """
    try:
        return sockets.probe(path) == sockets.STALE
    except sockets.Occupied as exc:
        if exc.kind == sockets.Occupied.LIVE:
            raise _UnsafeSocketPath(
                f"{shown(path)} is in use by another process (another broker?)"
            ) from None
        if exc.kind == sockets.Occupied.OTHER:
            raise _UnsafeSocketPath(
                f"{shown(path)} exists and is not a socket; left alone"
            ) from None
        raise _UnsafeSocketPath(f"{shown(path)} cannot be probed: {exc.detail}") from None


def _create_consumer_socket(path: str, gid: int | None) -> tuple[socket.socket, tuple[int, int]]:
    """Bind, restrict and publish a listening socket at ``path``.

    It is bound under a temporary name, given mode 0660 and its group, set
    listening, and only then renamed into place: nobody can connect while
    the permissions are still the umask's, and a stale socket is replaced
    atomically rather than unlinked first.
    """
    directory = os.path.dirname(path)
    _check_directory(directory)
    stale = _check_stale(path)
    group = os.lstat(directory).st_gid if gid is None else gid
    temporary = _temporary_sibling(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        sock.bind(temporary)
        try:
            os.chown(temporary, -1, group, follow_symlinks=False)
            os.chmod(temporary, 0o660)  # a fresh socket in a directory only we may write
            sock.listen(64)
            stale = _check_stale(path)  # again: it may have changed while we bound
            os.rename(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        st = os.lstat(path)
    except BaseException:
        sock.close()
        raise
    if stale:
        log.info("broker: replaced stale consumer socket %s", shown(path))
    return sock, (st.st_dev, st.st_ino)


def resolve_group(group: str | None, source: str = "--group") -> int | None:
    """The gid for a group name or number; ``source`` names where it came from.

    None means "the group of the socket's directory", which the prepare
    hook gives the configured group (issue 3), so that is the right
    default too.  An unknown group is a usage error on the command line
    and a settings error in the file.
    """
    if group is None:
        return None
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        if source == "--group":
            raise UsageError(f"--group: no such group {shown(group)}") from None
        raise SettingsError(source, f"no such group {shown(group)}") from None


#: The soft descriptor limit the daemon asks for (each channel takes two
#: descriptors, each consumer one); systemd's default soft limit is 1024.
WANTED_DESCRIPTORS: Final = 65536


def _raise_descriptor_limit() -> None:
    """Raise the soft RLIMIT_NOFILE towards the hard one (selectors uses epoll,
    so high descriptor numbers are fine); the caps and the accept pause
    still guard whatever limit there is."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = WANTED_DESCRIPTORS if hard == resource.RLIM_INFINITY else min(hard, WANTED_DESCRIPTORS)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def run_broker(args: argparse.Namespace, streams: Streams) -> int:
    """``xen-channel broker``: run until SIGTERM/SIGINT; SIGHUP re-reads the registry."""
    del streams  # the daemon logs through logging, configured by cli.main
    if not args.poll_interval > 0:
        raise UsageError("--poll-interval must be a positive number of seconds")
    settings = load_settings(args.rundir)
    if args.group is not None:
        gid = resolve_group(args.group)
    else:
        gid = resolve_group(settings.group, "settings: group")
    _raise_descriptor_limit()
    broker = Broker(
        settings.rundir, gid, args.poll_interval, allowed_roots=settings.allowed_roots
    )
    if threading.current_thread() is not threading.main_thread():
        return broker.run()  # signals can only be handled in the main thread

    # Handlers only set flags: logging from inside a signal handler could
    # interleave with a line being written.
    def on_stop(signum: int, _frame: FrameType | None) -> None:
        broker.stop(f"{signal.Signals(signum).name} received")

    def on_hup(_signum: int, _frame: FrameType | None) -> None:
        broker.rescan()

    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, on_stop),
        signal.SIGINT: signal.signal(signal.SIGINT, on_stop),
        signal.SIGHUP: signal.signal(signal.SIGHUP, on_hup),
    }
    try:
        return broker.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
