"""``xen-channel monitor``: keep the live metadata and the registry in step with libvirt.

Hooks must never call libvirt (background.md §1: the call is synchronous and
libvirtd waits, so calling back deadlocks), yet the live ``<xcb:channels>``
copy (with pty paths, which appear only at ``started``) can only be written
through the API.  This long-running process does it:

* It registers for domain lifecycle events with libvirt-python's default
  event loop (``virEventRegisterDefaultImpl`` + a thread running
  ``virEventRunDefaultImpl``).  The callbacks only note the domain's UUID and
  wake the main thread, which does the libvirt calls: a callback runs on the
  event loop thread, and blocking it stalls every event and keepalive.
* For each noted domain the main thread *syncs* it (:meth:`Monitor.sync`),
  an idempotent step that looks the domain up again instead of trusting the
  event: libvirt delivers events after the fact (a transient domain is
  already gone when its ``stopped`` event arrives), and after a reconnect we
  have missed some anyway.
* At start, after every reconnect and every ``--reconcile-interval`` seconds
  it reconciles the registry with libvirt's domain list
  (:meth:`Monitor.reconcile`): records of domains that no longer exist are
  removed, with their stale sockets and our socket directories, exactly as
  the release hook removes them (sockets.remove_domain_files).
* It survives libvirtd restarts: a close callback and keepalive
  (``virConnectSetKeepAlive``) detect the dead connection, and it reconnects
  with bounded exponential backoff, then reconciles.
* One log line per action on stderr (journald picks it up, with each
  line's priority: service.py); SIGTERM and SIGINT end it cleanly with exit
  status 0.
* Under systemd (``Type=notify``) it reports ready once its first attempt
  to connect is over: connected and reconciled, or libvirt unreachable and
  retrying (``systemctl status`` shows which).  Blocking start-up until
  libvirtd answers would hold up boot, and the monitor catches up on its
  own the moment libvirtd is back.
* The URI is libvirt's to resolve when ``--connect`` is not given
  (libvirtconn.py); log lines name the URI it actually connected to.
* With ``--agent-interval S`` (opt-in), every S seconds it asks the guest's
  qemu-ga of each running domain with an ``org.qemu.guest_agent.0`` socket
  channel (qga.py, through the broker when one serves it) for its host
  name, OS id and version and interface addresses, and keeps them, with
  whether the agent answered, in the live metadata's ``<xcb:agent>``
  (:meth:`Monitor.poll_agents`): a libvirt-aware tool reads a Xen guest's
  addresses through the libvirt API, as vdsm shows them.  Each agent gets a
  short timeout; one that does not answer costs that much of the loop once
  per poll.

Which channels are ours: those in the domain's registry record (written by
the hooks) and those in the ``<xcb:channels>`` metadata that ``fill`` and
``define`` put in the definition (it is copied into the live definition at
start).  A domain with neither is left alone: we never write metadata into
domains we do not manage.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import os
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import metadata, service
from .console import Streams
from .errors import InvalidMetadata, LibvirtUnavailable, XenChannelError, escaped, shown
from .model import Channel, Connection, DomainState

if TYPE_CHECKING:
    from lxml import etree

    from .registry import ChannelRecord, DomainRecord, Registry
    from .settings import Settings

log = logging.getLogger(__name__)

#: Reconnect backoff: 0.5 s doubling to at most 30 s, so a libvirtd that is
#: down for long costs two log lines a minute and comes back within 30 s.
BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
#: virConnectSetKeepAlive(interval, count): a hung daemon is declared dead
#: after about interval * (count + 1) seconds.
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3

#: virConnectGetType() -> the driver name the hooks record (hooks/<driver>).
_DRIVERS = {"QEMU": "qemu", "Xen": "libxl", "xenlight": "libxl", "Test": "test"}

_loop_lock = threading.Lock()
_loop_thread: threading.Thread | None = None


def ensure_event_loop() -> None:
    """Register libvirt's default event loop once per process and run it in a thread.

    It must be registered before the connection whose events and keepalive
    it serves is opened.
    """
    import libvirt

    global _loop_thread
    with _loop_lock:
        if _loop_thread is not None:
            return
        libvirt.virEventRegisterDefaultImpl()
        _loop_thread = threading.Thread(
            target=_run_event_loop, name="libvirt-event-loop", daemon=True
        )
        _loop_thread.start()


def _run_event_loop() -> None:
    import libvirt

    while True:
        if libvirt.virEventRunDefaultImpl() < 0:  # pragma: no cover - libvirt internal failure
            log.warning("libvirt event loop iteration failed")
            time.sleep(0.1)


#: Seconds a domain's claims may stand without its record before the
#: reconcile takes them for a dead prepare's (a live one takes milliseconds).
ORPHAN_AGE = 60.0
#: Upper bound on one guest agent's timeout per phase under --agent-interval.
AGENT_TIMEOUT = 5.0


@dataclasses.dataclass
class ReconcileReport:
    """What one reconcile pass did (for logs, tests and the benchmark)."""

    domains: int = 0
    records: int = 0
    removed: list[str] = dataclasses.field(default_factory=list)
    synced: list[str] = dataclasses.field(default_factory=list)
    orphans: list[str] = dataclasses.field(default_factory=list)


class Monitor:
    """The monitor's state and steps; :meth:`serve` is the loop.

    Tests drive it in-process: construct, :meth:`connect`, call
    :meth:`reconcile` / :meth:`process_pending`, or run :meth:`serve` in a
    thread and end it with :meth:`stop`.
    """

    def __init__(
        self, uri: str | None, settings: Settings, registry: Registry, *,
        reconcile_interval: float = 60.0, agent_interval: float | None = None,
    ) -> None:
        #: What was asked for; None lets libvirt pick its default URI.
        self.uri = uri
        #: What libvirt says it connected to (virConnectGetURI), once connected.
        self.connected_uri: str | None = None
        self.settings = settings
        self.registry = registry
        self.reconcile_interval = reconcile_interval
        self.conn: Any = None
        self.driver: str | None = None
        self._callback_id: int | None = None
        self._pending: deque[str] = deque()
        self._connection_lost = False
        self._stopping = False
        # UUID -> (domain id, registry record) when we last synced it while
        # running.  A running domain keeps its id, so reconcile skips it
        # while both are unchanged; an event, a restart (a new id) or a
        # record rewritten by someone else makes it sync again.
        self._synced: dict[str, tuple[int, DomainRecord | None]] = {}
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        #: --agent-interval: None (off), or seconds between guest-agent polls.
        self.agent_interval = agent_interval
        #: Per phase (sync, each command): short, as one stuck agent holds the loop.
        self.agent_timeout = min(AGENT_TIMEOUT, agent_interval / 4) if agent_interval else 0.0
        #: UUID -> what its guest agent said at the last poll (written into the metadata).
        self._agents: dict[str, metadata.AgentStatus] = {}

    # --- lifecycle ------------------------------------------------------------

    def close(self) -> None:
        self.disconnect()
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)

    def stop(self) -> None:
        """Ask :meth:`serve` to return (safe from a signal handler or another thread)."""
        self._stopping = True
        self._wake()

    @property
    def where(self) -> str:
        """The URI for messages: the one connected to, else the one asked for."""
        uri = self.connected_uri or self.uri
        return escaped(uri) if uri else "libvirt's default URI"

    def serve(self) -> int:
        """Run until :meth:`stop`: connect, reconcile, then follow events."""
        next_reconcile = 0.0
        next_agents = 0.0 if self.agent_interval else float("inf")
        announced = False
        while not self._stopping:
            if self.conn is None:
                if not self.connect_with_backoff(announce=not announced):
                    break
                next_reconcile = 0.0  # reconcile after every (re)connect
            if time.monotonic() >= next_reconcile:
                self._attempt("reconcile", self.reconcile)
                next_reconcile = time.monotonic() + self.reconcile_interval
            if self.agent_interval and time.monotonic() >= next_agents:
                self._attempt("guest agents", self.poll_agents)
                next_agents = time.monotonic() + self.agent_interval
            if not announced:
                service.ready(f"following domain events on {self.where}")
                announced = True
            self._wait(max(0.0, min(next_reconcile, next_agents) - time.monotonic()))
            if self._stopping:
                break
            self.process_pending()
            if self._connection_lost:
                log.warning("lost the connection to %s; reconnecting", self.where)
                service.status(f"lost the connection to {self.where}; reconnecting")
                self.disconnect()
        self.disconnect()
        log.info("monitor stopped")
        return 0

    # --- connection -------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection and register for lifecycle events; raise on failure."""
        from .libvirtconn import libvirt_module, one_line, open_connection, uri_of

        libvirt = libvirt_module(self.uri)
        ensure_event_loop()
        conn = open_connection(self.uri)
        uri = uri_of(conn, self.uri)
        try:
            conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
        except libvirt.libvirtError:
            pass  # local drivers (test://) have no keepalive and cannot hang
        try:
            conn.registerCloseCallback(self._on_close, None)
        except libvirt.libvirtError:
            pass  # only remote connections can close under us
        try:
            self._callback_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
            )
        except libvirt.libvirtError as exc:
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
            raise LibvirtUnavailable(
                uri, f"cannot register for domain events: {one_line(exc)}"
            ) from None
        self.conn = conn
        self.connected_uri = uri
        self.driver = _DRIVERS.get(conn.getType(), conn.getType().lower())
        self._connection_lost = False
        self._synced.clear()
        log.info("connected to %s (driver %s); following domain events",
                 escaped(uri), escaped(self.driver))
        service.status(f"following domain events on {uri}")

    def connect_with_backoff(self, *, announce: bool = False) -> bool:
        """Connect, retrying with bounded exponential backoff; False if stopped first.

        ``announce``: tell systemd the monitor is ready after the first failed
        attempt (it keeps retrying; see the module docstring).
        """
        delay = BACKOFF_START
        while not self._stopping:
            try:
                self.connect()
                return True
            except LibvirtUnavailable as exc:
                log.warning("%s; retrying in %.1f s", exc.message(), delay)
                if announce:
                    service.ready(f"{exc.message()}; retrying")
                    announce = False
                else:
                    service.status(f"{exc.message()}; retrying")
            self._wait(delay)
            delay = min(delay * 2, BACKOFF_MAX)
        return False

    def disconnect(self) -> None:
        import libvirt

        conn, self.conn = self.conn, None
        if conn is None:
            return
        with contextlib.suppress(libvirt.libvirtError):
            if self._callback_id is not None:
                conn.domainEventDeregisterAny(self._callback_id)
        with contextlib.suppress(libvirt.libvirtError):
            conn.unregisterCloseCallback()
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
        self._callback_id = None
        self._synced.clear()
        self._connection_lost = False  # handled: the caller reconnects

    # --- callbacks (event loop thread: note and wake, nothing else) --------------

    def _on_lifecycle(self, _conn: Any, domain: Any, event: int, detail: int, _opaque: Any) -> None:
        uuid = domain.UUIDString()  # no RPC: the event carries it
        log.debug("event %d/%d for %s", event, detail, uuid)
        self._pending.append(uuid)
        self._wake()

    def _on_close(self, _conn: Any, reason: int, _opaque: Any) -> None:
        self._connection_lost = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_write, b"x")

    def _wait(self, timeout: float) -> None:
        if self._stopping or (self.conn is not None and (self._pending or self._connection_lost)):
            timeout = 0.0
        with contextlib.suppress(InterruptedError):
            select.select([self._wake_read], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_read, 4096):
                pass

    def _attempt(self, what: str, step: Callable[[], object]) -> bool:
        """Run one step, logging its failure instead of dying; True if it succeeded.

        A long-running monitor must outlive one bad domain (a corrupt record,
        unparsable XML, a directory it may not remove).  A libvirt error on a
        dead connection marks the connection lost instead: serve() reconnects.
        """
        import libvirt

        if self.conn is None:
            return False
        try:
            step()
            return True
        except libvirt.libvirtError as exc:
            if not self._alive():
                self._connection_lost = True
            else:
                log.warning("%s: libvirt error: %s", what, _libvirt_text(exc))
        except XenChannelError as exc:
            log.warning("%s: %s", what, exc.message())
        except OSError as exc:
            log.warning("%s: %s", what, exc)
        return False

    def _alive(self) -> bool:
        import libvirt

        try:
            return bool(self.conn is not None and self.conn.isAlive() == 1)
        except libvirt.libvirtError:
            return False

    # --- the work -----------------------------------------------------------------

    def process_pending(self) -> int:
        """Sync every domain noted by events so far; return how many were synced.

        Events already queued for one domain collapse into one sync, which
        sees the domain's current state.  Events that arrive during the
        batch wait for the next one: the domain may have changed after its
        sync looked at it.  If the connection drops, the rest of the batch
        is left to the reconcile that follows the reconnect.
        """
        batch: list[str] = []
        while self._pending:
            batch.append(self._pending.popleft())
        synced = 0
        for uuid in dict.fromkeys(batch):
            self._attempt(f"domain {uuid}", functools.partial(self.sync, uuid))
            synced += 1
            if self._connection_lost:
                break
        return synced

    def sync(self, uuid: str) -> None:
        """Bring one domain's live metadata and registry record in line with libvirt."""
        import libvirt

        uuid = uuid.lower()
        try:
            domain = self.conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            self._synced.pop(uuid, None)
            self._agents.pop(uuid, None)
            record = self.registry.by_uuid(uuid)
            if record is not None and record.driver == self.driver:
                self._forget(record)
            return
        if domain.ID() != -1:
            self._sync_active(domain, uuid)
        else:
            self._synced.pop(uuid, None)
            self._agents.pop(uuid, None)
            self._sync_inactive(uuid)

    def reconcile(self) -> ReconcileReport:
        """Compare the registry with libvirt's domain list; fix what differs."""
        report = ReconcileReport()
        # Records first, then domains: a hook writes a record only while its
        # domain is in libvirt's list, so a record read before the listing
        # whose domain is missing from it is really gone (the other order
        # could catch a domain created in between).
        records = self._list_records()
        domains = {d.UUIDString().lower(): d for d in self.conn.listAllDomains(0)}
        report.domains = len(domains)
        report.records = len(records)
        recorded = {r.uuid: r for r in records}
        for record in records:
            if record.driver != self.driver:
                continue  # another driver's domain: this connection cannot see it
            if record.uuid not in domains:
                # sync() looks it up once more before removing anything.
                self._attempt(f"domain {record.uuid}", functools.partial(self.sync, record.uuid))
                if self._connection_lost:
                    return report
                if self.registry.by_uuid(record.uuid) is None:
                    report.removed.append(record.uuid)
        for uuid, domain in domains.items():
            domain_id = domain.ID()
            if domain_id == -1:
                self._synced.pop(uuid, None)
                known = recorded.get(uuid)
                if known is not None and known.state is DomainState.RUNNING:
                    self._attempt(f"domain {uuid}", functools.partial(self._sync_inactive, uuid))
                continue
            if self._synced.get(uuid) == (domain_id, recorded.get(uuid)):
                continue
            if self._attempt(f"domain {uuid}", functools.partial(self._sync_active, domain, uuid)):
                report.synced.append(uuid)
            if self._connection_lost:
                return report
        self._collect_orphan_claims(domains, report)
        if report.removed or report.orphans:
            log.info(
                "reconciled %d domains with %d records: removed %d stale, "
                "released the claims of %d without a record",
                report.domains, report.records, len(report.removed), len(report.orphans),
            )
        return report

    def poll_agents(self) -> int:
        """Ask the guest agent of every running domain of ours; return how many changed.

        A domain whose agent says something new (or stops answering) gets
        its live metadata rewritten with the new ``<xcb:agent>``; the rest
        are not touched.
        """
        import libvirt

        from .qga import AGENT_CHANNEL

        changed = 0
        running: set[str] = set()
        for record in self._list_records():
            if record.driver != self.driver or record.state is not DomainState.RUNNING:
                continue
            if not any(c.name == AGENT_CHANNEL and c.connection is Connection.SOCKET and c.path
                       for c in record.channels):
                continue
            running.add(record.uuid)
            status = self._query_agent(record)
            if self._agents.get(record.uuid) == status:
                continue
            self._agents[record.uuid] = status
            try:
                domain = self.conn.lookupByUUIDString(record.uuid)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                    raise
                continue  # gone meanwhile: its event syncs it
            self._sync_active(domain, record.uuid)
            changed += 1
        for uuid in set(self._agents) - running:
            del self._agents[uuid]
        return changed

    def _query_agent(self, record: DomainRecord) -> metadata.AgentStatus:
        """One domain's hostname, OS and addresses, or "not-responding"."""
        from .agenttypes import GuestInfo
        from .errors import AgentError
        from .guestcmds import get_guest_info
        from .qga import connect_agent

        found: dict[str, GuestInfo] = {}
        try:
            with connect_agent(record.uuid, rundir=self.settings.rundir) as agent:
                for group in ("hostname", "os", "interfaces"):
                    try:
                        found[group] = get_guest_info(agent, [group], self.agent_timeout)
                    except AgentError as exc:
                        # A command this guest lacks or blocks: report the others.
                        if exc.error_class != "CommandNotFound":
                            raise
        except XenChannelError as exc:
            previous = self._agents.get(record.uuid)
            if previous is None or previous.state != "not-responding":
                log.info("domain %s (%s): guest agent not responding: %s",
                         shown(record.name), record.uuid, exc.message())
            return metadata.agent_status("not-responding")
        os_info = found["os"].os if "os" in found else None
        return metadata.agent_status(
            "connected",
            hostname=found["hostname"].hostname if "hostname" in found else None,
            os_id=os_info.id if os_info else None,
            os_version=(os_info.version_id or os_info.version) if os_info else None,
            interfaces=(found["interfaces"].interfaces or ()) if "interfaces" in found else (),
        )

    def _collect_orphan_claims(self, domains: dict[str, Any], report: ReconcileReport) -> None:
        """Release claims left by a prepare that died before writing its record.

        libvirt's release hook frees them after a failed start, but a hook
        killed outright, or a daemon that died in between, leaves them to
        block the path for every other domain.  A prepare under way holds
        claims without a record for a moment, so only claims older than
        ORPHAN_AGE whose domain libvirt does not run are collected.
        """
        try:
            orphans = self.registry.orphan_claims()
        except XenChannelError as exc:
            log.warning("orphan claims: %s", exc.message())
            return
        for uuid, age in orphans:
            domain = domains.get(uuid)
            if age < ORPHAN_AGE or (domain is not None and domain.ID() != -1):
                continue
            if self.registry.release_orphan(uuid):
                report.orphans.append(uuid)

    def _list_records(self) -> list[DomainRecord]:
        """Every readable record; a corrupt one is logged and skipped, not fatal."""
        records, problems = self.registry.scan()
        for problem in problems:
            log.warning("%s; skipped", problem.message())
        return records

    def _sync_active(self, domain: Any, uuid: str) -> None:
        import libvirt

        try:
            self._sync_running(domain, uuid)
        except libvirt.libvirtError as exc:
            # Stopped ("domain is not running") or gone while we looked at
            # it: its own stopped/undefined event follows and syncs it again.
            if exc.get_error_code() not in (
                libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID,
            ):
                raise
            self._synced.pop(uuid, None)
            log.debug("domain %s changed state while being synced: %s", uuid,
                      _libvirt_text(exc))

    def _sync_running(self, domain: Any, uuid: str) -> None:
        import libvirt

        from .domxml import parse_domain

        name = domain.name()
        label = f"domain {shown(name)} ({uuid})"
        root = parse_domain(domain.XMLDesc(0).encode("utf-8"), label).getroot()
        try:
            current = metadata.find_domain_metadata(root)
        except InvalidMetadata as exc:
            log.warning("%s; replacing it", exc.message())
            current = None
        record = self.registry.by_uuid(uuid)
        managed = _managed_names(record, current)
        if not managed:
            self._synced[uuid] = (domain.ID(), record)
            return  # not a domain of ours
        channels = _live_channels(root, managed, label)
        agent = self._agents.get(uuid)
        wanted = metadata.Metadata(tuple(channels), DomainState.RUNNING, agent)
        if current != wanted:
            domain.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                metadata.metadata_xml(channels, DomainState.RUNNING, agent),
                metadata.PREFIX, metadata.NAMESPACE, libvirt.VIR_DOMAIN_AFFECT_LIVE,
            )
            log.info("%s: live metadata written (%s)", label, _describe(channels))
        record = self._update_record(record, uuid, name, channels, label)
        self._synced[uuid] = (domain.ID(), record)

    def _update_record(
        self, record: DomainRecord | None, uuid: str, name: str, channels: list[Channel],
        label: str,
    ) -> DomainRecord | None:
        """Record ``running`` and the live pty paths; return the record as now stored."""
        from .registry import ChannelRecord, DomainRecord

        live = {c.name: c for c in channels}
        if record is None:
            if self.driver is None:
                return None
            new = DomainRecord(uuid, name, self.driver, DomainState.RUNNING,
                               tuple(ChannelRecord.from_channel(c) for c in channels))
            self.registry.put(new)
            log.info("%s: registered %d channels from its metadata", label, len(channels))
            return new
        if record.state is DomainState.PREPARING:
            return record  # the hooks are between prepare and started; they own it now
        updated = record.replace(
            name=name, state=DomainState.RUNNING,
            channels=tuple(_with_live_path(c, live.get(c.name)) for c in record.channels),
        )
        if updated != record:
            self.registry.put(updated)
            log.info("%s: registry record updated (state running, %s)", label, _describe(channels))
        return updated

    def _sync_inactive(self, uuid: str) -> None:
        """A defined domain that is not running: a "running" record is out of date.

        The hooks remove a record at ``release`` (before libvirt emits
        ``stopped``), so this happens only without hooks or when libvirtd
        died together with the domain.  Its pty paths are gone with it.
        """
        record = self.registry.by_uuid(uuid)
        if (record is None or record.state is not DomainState.RUNNING
                or record.driver != self.driver):
            return
        updated = record.replace(
            state=DomainState.STOPPED,
            channels=tuple(
                c.replace(channel=c.channel.with_path(None))
                if c.connection is Connection.PTY else c
                for c in record.channels
            ),
        )
        self.registry.put(updated)
        log.info("domain %s (%s): not running; registry record marked stopped",
                 shown(record.name), uuid)

    def _forget(self, record: DomainRecord) -> None:
        """The domain no longer exists: remove its sockets, directories and record."""
        from .sockets import remove_domain_files

        removed = remove_domain_files(self.settings, self.registry, record, _warn)
        self.registry.remove(record.uuid)
        what = f"; removed {', '.join(map(shown, removed))}" if removed else ""
        log.info("domain %s (%s) no longer exists: record removed%s",
                 shown(record.name), record.uuid, what)


def _managed_names(record: DomainRecord | None, current: metadata.Metadata | None) -> set[str]:
    names: set[str] = set()
    if record is not None:
        names.update(c.name for c in record.channels if c.name is not None)
    if current is not None:
        names.update(c.name for c in current.channels if c.name is not None)
    return names


def _live_channels(root: etree._Element, managed: set[str], label: str) -> list[Channel]:
    """The managed channels as the live XML has them (pty paths included), in order."""
    from .domxml import channel_elements, channel_from_element

    channels: list[Channel] = []
    for element in channel_elements(root):
        target = element.find("target")
        if target is None or target.get("name") not in managed:
            continue
        try:
            channels.append(channel_from_element(element))
        except XenChannelError as exc:
            log.warning("%s: channel left out of the metadata: %s", label, exc.message())
    return channels


def _with_live_path(record: ChannelRecord, live: Channel | None) -> ChannelRecord:
    if live is None or record.connection is not Connection.PTY:
        return record
    return record.replace(channel=record.channel.with_path(live.path))


def _libvirt_text(exc: Any) -> str:
    """libvirt's message, which may echo names and XML it was given, made safe to log."""
    return escaped(str(exc.get_error_message()))


def _warn(message: str) -> None:
    log.warning("%s", message)


def _describe(channels: Iterable[Channel]) -> str:
    # Paths come from the live XML: the model keeps C0 controls out, not C1
    # controls, bidi overrides or line separators.
    parts = [f"{escaped(c.label)}={shown(c.path) if c.path else '-'}" for c in channels]
    return ", ".join(parts) if parts else "no channels"


def run(args: argparse.Namespace, streams: Streams) -> int:
    """Entry point of ``xen-channel monitor`` (see cli.py for the options)."""
    from .errors import UsageError
    from .registry import Registry
    from .settings import load_settings

    interval = float(args.reconcile_interval)
    if not interval > 0:
        raise UsageError(
            f"--reconcile-interval must be a positive number of seconds, not {interval:g}"
        )
    agent_interval = getattr(args, "agent_interval", None)
    if agent_interval is not None and not agent_interval > 0:
        raise UsageError(
            f"--agent-interval must be a positive number of seconds, not {agent_interval:g}"
        )
    from .libvirtconn import libvirt_module

    libvirt_module(args.connect)  # a missing binding is fatal at once, not retried
    settings = load_settings(args.rundir)
    # --connect absent: None, and libvirt resolves its own default URI.
    monitor = Monitor(args.connect, settings, Registry(settings.rundir),
                      reconcile_interval=interval, agent_interval=agent_interval)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        monitor.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    log.info("monitor starting (run directory %s, reconcile every %g s)", settings.rundir, interval)
    try:
        return monitor.serve()
    finally:
        service.stopping()
        monitor.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
