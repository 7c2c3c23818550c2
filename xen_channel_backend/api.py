"""The Python API for management tools: where are a domain's channel sockets?

Two sources, one result type (:class:`ChannelInfo`):

* :func:`channels` reads this host's registry (written by the libvirt hooks
  and the monitor).  It needs no libvirt connection and no libvirt-python,
  so it works for any local tool that can read the run directory.
* :func:`remote_channels` reads our ``<xcb:channels>`` metadata through
  libvirt on any URI (``qemu+ssh://host/system``, ``xen:///system``...).
  The metadata travels with the domain, so this works for a domain on
  another host without knowing that host's run directory.

And for a fleet, :func:`host_inventory` (every domain carrying our metadata on
each of many URIs, queried concurrently with a per-host timeout, returning
:class:`Inventory`: :class:`HostDomain` results and one :class:`HostError` per
host or domain that failed) and :func:`host_domain` (one domain on one URI).
``xen-channel list/show --connect`` print these.

``channels`` and ``remote_channels`` are re-exported lazily from the package root::

    import xen_channel_backend as xcb
    for info in xcb.channels("vm1"):
        print(info.name, info.path)

Errors are :class:`~xen_channel_backend.errors.XenChannelError` subclasses
with a one-line ``message()``: UnknownDomain, NoSuchDomain,
LibvirtUnavailable, InvalidMetadata, RegistryError, SettingsError.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .errors import (
    InvalidMetadata,
    LibvirtUnavailable,
    NoSuchDomain,
    UnknownDomain,
    escaped,
    shown,
)
from .model import Channel, Connection, DomainState, Target

__all__ = ["ChannelInfo", "HostDomain", "HostError", "Inventory", "channels", "host_domain",
           "host_inventory", "remote_channels"]

#: Seconds one host may take to answer (connect, list, read metadata) by default.
DEFAULT_TIMEOUT = 30.0
#: conn.getType() -> the driver name our registry records use (libvirt's Xen
#: driver is libxl); other drivers are shown lower-cased ("test", "lxc").
_DRIVERS = {"QEMU": "qemu", "Xen": "libxl"}

_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelInfo:
    """One managed channel of one domain.

    ``path`` is the Unix socket for ``connection == "socket"`` (a dom0 agent
    connects to it as a client; QEMU listens) and the pty device for
    ``connection == "pty"`` once the domain runs (None before).
    ``state`` is the domain's state as last recorded: ``"preparing"``,
    ``"running"`` or ``"stopped"`` (a :class:`~.model.DomainState`); None
    when nothing has recorded it (the persistent metadata of a running
    domain whose monitor has not written the live copy).  ``Connection``,
    ``Target`` and ``DomainState`` are string choices, so
    ``info.connection == "socket"`` works.

    The channel fields are the model's :class:`~.model.Channel`, flattened
    for callers: :meth:`from_channel` is the one way this module builds one,
    and :attr:`channel` gives the model value back.
    """

    domain: str
    uuid: str
    name: str | None
    connection: Connection
    path: str | None
    target: Target
    state: DomainState | None

    @classmethod
    def from_channel(
        cls, domain: str, uuid: str, channel: Channel, state: DomainState | None
    ) -> ChannelInfo:
        """The entry for ``channel`` (already validated by the model) of ``domain``."""
        return cls(domain, uuid, channel.name, channel.connection, channel.path, channel.target,
                   state)

    @property
    def channel(self) -> Channel:
        """The channel as the model's value (validated again if built by hand)."""
        return Channel(self.name, self.connection, self.path, target=self.target)


def channels(domain: str, *, rundir: str | None = None) -> list[ChannelInfo]:
    """The channels of ``domain`` (a name or UUID) from this host's registry.

    ``rundir`` overrides the run directory like ``--rundir``; otherwise the
    settings decide ($XEN_CHANNEL_RUNDIR, the config file, /run/xen-channel).
    Raises UnknownDomain when the registry has no such domain (it is not
    running here, or the hooks are not installed).
    """
    from .registry import Registry
    from .settings import load_settings

    settings = load_settings(rundir)
    record = Registry(settings.rundir).get(domain)
    if record is None:
        raise UnknownDomain(domain)
    return [ChannelInfo.from_channel(record.name, record.uuid, c.channel, record.state)
            for c in record.channels]


def remote_channels(uri: str | None, domain: str) -> list[ChannelInfo]:
    """The channels of ``domain`` (a name or UUID) from its metadata, via libvirt at ``uri``.

    ``uri`` None uses libvirt's own default (``$LIBVIRT_DEFAULT_URI``,
    ``uri_default`` in libvirt.conf, else the hypervisor it finds).

    Uses a read-only connection.  For a running domain the live copy is read
    (the monitor keeps its pty paths and ``state`` current); for an inactive
    one the persistent copy, with state ``"stopped"``.  A domain without our
    metadata has no managed channels: the result is empty.  Raises
    NoSuchDomain, LibvirtUnavailable, or InvalidMetadata when the element was
    edited into something invalid.
    """
    from .libvirtconn import libvirt_module, open_read_only, uri_of
    from .metadata import NAMESPACE, parse_metadata

    libvirt = libvirt_module(uri)
    conn = open_read_only(uri)
    uri = uri_of(conn, uri)
    try:
        found = _lookup(conn, uri, domain)
        name, uuid = found.name(), found.UUIDString()
        active = bool(found.isActive())
        try:
            # AFFECT_CURRENT (0): the live definition if running, else the persistent one.
            text = found.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                return []
            raise LibvirtUnavailable(uri, _libvirt_text(exc)) from None
    finally:
        conn.close()
    parsed = parse_metadata(text, _source(name, uri))
    state = _state(parsed.state) if active else DomainState.STOPPED
    return [ChannelInfo.from_channel(name, uuid, c, state) for c in parsed.channels]


def _state(recorded: str | None) -> DomainState | None:
    """The live metadata's ``state`` (metadata.py checked it is one of DomainState's)."""
    return DomainState(recorded) if recorded is not None else None


def _libvirt_text(exc: Any) -> str:
    """libvirt's message, which may echo names it was given, safe for a one-line error."""
    return escaped(str(exc.get_error_message()))


def _source(name: str, uri: str) -> str:
    """Where metadata came from, for InvalidMetadata: both parts from libvirt."""
    return f"domain {shown(name)} at {escaped(uri)}"


def _lookup(conn: Any, uri: str, domain: str) -> Any:
    """Find a domain by UUID (any spelling libvirt accepts), else by name."""
    import libvirt

    for lookup in (conn.lookupByUUIDString, conn.lookupByName):
        try:
            return lookup(domain)
        except libvirt.libvirtError as exc:
            # A name is not a UUID: libvirt says "invalid argument" for it.
            if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_INVALID_ARG):
                raise LibvirtUnavailable(uri, _libvirt_text(exc)) from None
    raise NoSuchDomain(uri, domain)


# --- many hosts ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class HostDomain:
    """One domain carrying our metadata, as libvirt at ``host`` (its URI) describes it.

    ``state`` is ``"running"`` (or ``"preparing"`` while the live metadata says
    so) for an active domain, whose live metadata copy is read, and
    ``"stopped"`` for an inactive one, whose persistent copy is read.
    ``persistent`` is False for a transient domain (one that exists only while
    it runs: a domain migrated in without ``--persistent``).  ``driver`` is
    ``qemu``, ``libxl`` (libvirt's Xen driver), or the lower-cased name of
    another driver (``test``).  Each channel's ``state`` is the domain's.
    """

    host: str
    domain: str
    uuid: str
    driver: str
    state: DomainState
    persistent: bool
    channels: tuple[ChannelInfo, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class HostError:
    """A host that could not be read (``domain`` None), or one domain on it.

    ``message`` is one line naming the host (and the domain), with untrusted
    text escaped, as ``xen-channel list`` prints it.
    """

    host: str
    message: str
    domain: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Inventory:
    """What :func:`host_inventory` found: domains in host order, then name order."""

    domains: tuple[HostDomain, ...]
    errors: tuple[HostError, ...]


def host_inventory(
    uris: Iterable[str], *, timeout: float = DEFAULT_TIMEOUT
) -> Inventory:
    """Every domain with our ``<xcb:channels>`` metadata on each URI, read concurrently.

    Each host is read by its own thread over its own read-only connection
    (libvirt-python releases the GIL while it waits), so N hosts take about
    as long as the slowest one, not N times one.  A host that cannot be
    reached, or has not answered within ``timeout`` seconds of the start, gets
    one :class:`HostError` and the others are still returned.  A thread that
    is still waiting on a hung host is a daemon thread: it is abandoned, and
    does not keep the process alive.  A domain whose metadata is invalid
    gets a :class:`HostError` naming it; its host's other domains are listed.
    A URI given twice is read once.

    This replaces libvirt's default error handler (which prints every error
    to stderr) with one that ignores them, as the monitor does: every error
    is returned here instead.
    """
    hosts = list(dict.fromkeys(uris))
    _quiet_libvirt_errors()
    outcomes = _run_all([functools.partial(_read_host, uri) for uri in hosts], timeout)
    domains: list[HostDomain] = []
    errors: list[HostError] = []
    for uri, outcome in zip(hosts, outcomes, strict=True):
        if isinstance(outcome, _Failed):
            errors.append(HostError(uri, _failure_message(uri, outcome, timeout)))
        else:
            found, problems = outcome
            domains.extend(found)
            errors.extend(problems)
    return Inventory(tuple(domains), tuple(errors))


def host_domain(uri: str, domain: str, *, timeout: float = DEFAULT_TIMEOUT) -> HostDomain:
    """One domain (a name or UUID) on libvirt at ``uri``, with our metadata.

    Like an entry of :func:`host_inventory`; a domain without our metadata
    has no channels (``channels == ()``).  Raises NoSuchDomain,
    LibvirtUnavailable (also when ``uri`` has not answered within
    ``timeout`` seconds) or InvalidMetadata.
    """
    _quiet_libvirt_errors()
    (outcome,) = _run_all([lambda: _read_one(uri, domain)], timeout)
    if isinstance(outcome, _Failed):
        if isinstance(outcome.error, NoSuchDomain | InvalidMetadata | LibvirtUnavailable):
            raise outcome.error
        raise LibvirtUnavailable(uri, _failure_message(uri, outcome, timeout)) from None
    return outcome


@dataclasses.dataclass(frozen=True)
class _Failed:
    """A host's thread raised ``error``, or (``error`` None) did not finish in time."""

    error: BaseException | None


def _run_all(jobs: list[Callable[[], _T]], timeout: float) -> list[_T | _Failed]:
    """Run each job in its own daemon thread; wait for all until ``timeout`` from now."""
    results: list[_T | _Failed] = [_Failed(None)] * len(jobs)
    finished = [threading.Event() for _ in jobs]

    def work(index: int) -> None:
        try:
            results[index] = jobs[index]()
        except Exception as exc:  # handed back to the caller as data
            results[index] = _Failed(exc)
        finally:
            finished[index].set()

    for index in range(len(jobs)):
        threading.Thread(target=work, args=(index,), name="xcb-host", daemon=True).start()
    deadline = time.monotonic() + timeout
    for event in finished:
        event.wait(max(0.0, deadline - time.monotonic()))
    # A job still running keeps its _Failed(None): it timed out.
    return [results[i] if finished[i].is_set() else _Failed(None) for i in range(len(jobs))]


def _failure_message(uri: str, failed: _Failed, timeout: float) -> str:
    from .errors import XenChannelError

    error = failed.error
    if error is None:
        return LibvirtUnavailable(uri, f"no answer within {timeout:g} s").message()
    if isinstance(error, XenChannelError):
        return error.message()
    detail = f"internal error: {type(error).__name__}: {escaped(str(error))}"
    return LibvirtUnavailable(uri, detail).message()


def _quiet_libvirt_errors() -> None:
    from .libvirtconn import libvirt_module

    with contextlib.suppress(LibvirtUnavailable):
        libvirt_module()  # silences libvirt's printing; a missing binding is reported per host


def _open(uri: str) -> Any:
    from .libvirtconn import open_read_only

    return open_read_only(uri)


def _read_host(uri: str) -> tuple[list[HostDomain], list[HostError]]:
    import libvirt

    conn = _open(uri)
    try:
        try:
            driver = _driver(conn)
            # Two calls say which are active, instead of one isActive() per domain.
            active = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            inactive = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE)
        except libvirt.libvirtError as exc:
            raise LibvirtUnavailable(uri, _libvirt_text(exc)) from None
        found: list[HostDomain] = []
        problems: list[HostError] = []
        for handle, is_active in [(d, True) for d in active] + [(d, False) for d in inactive]:
            try:
                entry = _describe(uri, driver, handle, is_active)
            except InvalidMetadata as exc:
                problems.append(HostError(uri, exc.message(), handle.name()))
                continue
            if entry is not None:
                found.append(entry)
    finally:
        conn.close()
    found.sort(key=lambda d: (d.domain, d.uuid))
    return found, problems


def _read_one(uri: str, domain: str) -> HostDomain:
    conn = _open(uri)
    try:
        handle = _lookup(conn, uri, domain)
        import libvirt

        try:
            driver, is_active = _driver(conn), bool(handle.isActive())
        except libvirt.libvirtError as exc:
            raise LibvirtUnavailable(uri, _libvirt_text(exc)) from None
        entry = _describe(uri, driver, handle, is_active, with_empty=True)
    finally:
        conn.close()
    assert entry is not None
    return entry


def _driver(conn: Any) -> str:
    kind = str(conn.getType())
    return _DRIVERS.get(kind, kind.lower())


def _describe(
    uri: str, driver: str, handle: Any, is_active: bool, *, with_empty: bool = False
) -> HostDomain | None:
    """A domain's entry from its metadata (live if active, else persistent).

    None for a domain without our metadata (unless ``with_empty``), or one
    that vanished since it was listed.
    """
    import libvirt

    from .metadata import NAMESPACE, parse_metadata

    name, uuid = handle.name(), handle.UUIDString()
    flags = libvirt.VIR_DOMAIN_AFFECT_LIVE if is_active else libvirt.VIR_DOMAIN_AFFECT_CONFIG
    text: str | None
    try:
        text = handle.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE, flags)
        persistent = bool(handle.isPersistent())
    except libvirt.libvirtError as exc:
        code = exc.get_error_code()
        if code == libvirt.VIR_ERR_NO_DOMAIN or (
            code == libvirt.VIR_ERR_OPERATION_INVALID and is_active
        ):
            return None  # gone (or stopped) between the listing and this call
        if code != libvirt.VIR_ERR_NO_DOMAIN_METADATA:
            raise LibvirtUnavailable(uri, _libvirt_text(exc)) from None
        if not with_empty:
            return None
        text, persistent = None, bool(handle.isPersistent())
    metadata = parse_metadata(text, _source(name, uri)) if text is not None else None
    state: DomainState
    if is_active:
        recorded = metadata.state if metadata is not None else None
        preparing = recorded == DomainState.PREPARING
        state = DomainState.PREPARING if preparing else DomainState.RUNNING
    else:
        state = DomainState.STOPPED
    channels = tuple(
        ChannelInfo.from_channel(name, uuid, c, state)
        for c in (metadata.channels if metadata is not None else ())
    )
    return HostDomain(uri, name, uuid, driver, state, persistent, channels)


# --- the guest agent: qemu-ga on a domain's org.qemu.guest_agent.0 channel ------
#
# One function per virsh guest-agent command (guestcmds.py prints them like
# virsh).  Each opens the domain's agent socket from this host's registry
# (through the broker when one serves it), syncs, runs its command(s) with
# ``timeout`` seconds per phase, and closes.  Errors: UnknownDomain,
# AgentNotConnected, AgentTimeout, AgentCommandDisabled, AgentError (the
# guest's own error), AgentProtocolError, UntrustedPath.

import collections.abc as _abc  # noqa: E402 - for this section's annotations only

from .agenttypes import (  # noqa: E402 - re-exported: the result types below
    GuestDisk,
    GuestFilesystem,
    GuestFSDisk,
    GuestInfo,
    GuestInterface,
    GuestIPAddress,
    GuestOSInfo,
    GuestTime,
    GuestTimezone,
    GuestUser,
)

__all__ += [
    "GuestDisk", "GuestFSDisk", "GuestFilesystem", "GuestIPAddress", "GuestInfo",
    "GuestInterface", "GuestOSInfo", "GuestTime", "GuestTimezone", "GuestUser",
    "agent_command", "agent_power", "fs_freeze", "fs_info", "fs_thaw", "get_time",
    "guest_info", "interface_addresses", "set_time", "set_user_password",
]

#: Seconds per phase (the sync, then the command) unless the caller says otherwise.
AGENT_TIMEOUT = 10.0


def _agent(domain: str, rundir: str | None) -> Any:
    from .qga import connect_agent

    return connect_agent(domain, rundir=rundir)


def agent_command(
    domain: str, request: dict[str, Any], *, timeout: float = AGENT_TIMEOUT,
    rundir: str | None = None,
) -> dict[str, Any]:
    """Pass one request (``{"execute": ..., "arguments": ...}``) through; return the reply.

    The reply is the agent's whole answer object, ``{"return": VALUE}``, as
    ``virDomainQemuAgentCommand`` returns it.  An error answer raises.
    """
    with _agent(domain, rundir) as agent:
        reply: dict[str, Any] = agent.request(request, timeout=timeout).raw
        return reply


def interface_addresses(
    domain: str, *, timeout: float = AGENT_TIMEOUT, rundir: str | None = None
) -> tuple[GuestInterface, ...]:
    """The guest's interfaces and addresses (``virsh domifaddr --source agent``)."""
    from .guestcmds import get_interfaces

    with _agent(domain, rundir) as agent:
        return get_interfaces(agent, timeout)


def guest_info(
    domain: str, groups: _abc.Iterable[str] = (), *, timeout: float = AGENT_TIMEOUT,
    rundir: str | None = None,
) -> GuestInfo:
    """``virsh guestinfo``: ``groups`` among users, os, timezone, hostname,
    filesystems, disks, interfaces (none: all the agent supports).
    ``GuestInfo.params()`` gives libvirt's typed-parameter keys."""
    from .guestcmds import GUEST_INFO_GROUPS, get_guest_info

    wanted = list(groups)
    unknown = [g for g in wanted if g not in GUEST_INFO_GROUPS]
    if unknown:
        raise ValueError(f"unknown guest info group(s): {', '.join(unknown)}")
    with _agent(domain, rundir) as agent:
        return get_guest_info(agent, wanted, timeout)


def fs_freeze(
    domain: str, mountpoints: _abc.Iterable[str] = (), *, timeout: float = AGENT_TIMEOUT,
    rundir: str | None = None,
) -> int:
    """Freeze ``mountpoints`` (none: every filesystem of the guest); return how many froze."""
    from .guestcmds import freeze_filesystems

    with _agent(domain, rundir) as agent:
        return freeze_filesystems(agent, list(mountpoints), timeout)


def fs_thaw(domain: str, *, timeout: float = AGENT_TIMEOUT, rundir: str | None = None) -> int:
    """Thaw every frozen filesystem; return how many thawed."""
    from .guestcmds import thaw_filesystems

    with _agent(domain, rundir) as agent:
        return thaw_filesystems(agent, timeout)


def fs_info(
    domain: str, *, timeout: float = AGENT_TIMEOUT, rundir: str | None = None
) -> tuple[GuestFilesystem, ...]:
    """The guest's mounted filesystems (``virsh domfsinfo``)."""
    from .guestcmds import get_filesystems

    with _agent(domain, rundir) as agent:
        return get_filesystems(agent, timeout)


def set_user_password(
    domain: str, user: str, password: str, *, encrypted: bool = False,
    timeout: float = AGENT_TIMEOUT, rundir: str | None = None,
) -> None:
    """Set ``user``'s password in the guest (``encrypted``: ``password`` is a crypt(3) hash)."""
    from .guestcmds import set_user_password as run

    with _agent(domain, rundir) as agent:
        run(agent, user, password, encrypted, timeout)


def get_time(
    domain: str, *, timeout: float = AGENT_TIMEOUT, rundir: str | None = None
) -> GuestTime:
    """The guest's clock."""
    from .guestcmds import get_time as run

    with _agent(domain, rundir) as agent:
        return run(agent, timeout)


def set_time(
    domain: str, nanoseconds: int | None, *, timeout: float = AGENT_TIMEOUT,
    rundir: str | None = None,
) -> None:
    """Set the guest's clock to ``nanoseconds`` since the epoch; None: from its hardware clock."""
    from .guestcmds import set_time as run

    with _agent(domain, rundir) as agent:
        run(agent, nanoseconds, timeout)


def agent_power(
    domain: str, action: str, *, timeout: float = AGENT_TIMEOUT, rundir: str | None = None
) -> bool:
    """Shut the guest down or reboot it (``action``) through its agent.

    True when the agent confirmed it took the request; False when it
    stopped answering right after (the guest going down looks like that).
    """
    from .guestcmds import SHUTDOWN_MODES, shutdown

    if action not in SHUTDOWN_MODES:
        raise ValueError(f"action must be one of {', '.join(SHUTDOWN_MODES)}")
    with _agent(domain, rundir) as agent:
        return shutdown(agent, action, timeout)
