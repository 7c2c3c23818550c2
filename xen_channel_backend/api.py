"""The Python API for management tools: where are a domain's channel sockets?

Two sources, one result type (:class:`ChannelInfo`):

* :func:`channels` reads this host's registry (written by the libvirt hooks
  and the monitor).  It needs no libvirt connection and no libvirt-python,
  so it works for any local tool that can read the run directory.
* :func:`remote_channels` reads our ``<xcb:channels>`` metadata through
  libvirt on any URI (``qemu+ssh://host/system``, ``xen:///system``...).
  The metadata travels with the domain, so this works for a domain on
  another host without knowing that host's run directory.

Both re-exported lazily from the package root::

    import xen_channel_backend as xcb
    for info in xcb.channels("vm1"):
        print(info.name, info.path)

Errors are :class:`~xen_channel_backend.errors.XenChannelError` subclasses
with a one-line ``message()``: UnknownDomain, NoSuchDomain,
LibvirtUnavailable, InvalidMetadata, RegistryError, SettingsError.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import LibvirtUnavailable, NoSuchDomain, UnknownDomain
from .model import Connection, Target

__all__ = ["ChannelInfo", "channels", "remote_channels"]


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelInfo:
    """One managed channel of one domain.

    ``path`` is the Unix socket for ``connection == "socket"`` (a dom0 agent
    connects to it as a client; QEMU listens) and the pty device for
    ``connection == "pty"`` once the domain runs (None before).
    ``state`` is the domain's state as last recorded: ``"preparing"``,
    ``"running"`` or ``"stopped"``; None when nothing has recorded it (the
    persistent metadata of a running domain whose monitor has not written
    the live copy).  ``Connection`` and ``Target`` are string enums, so
    ``info.connection == "socket"`` works.
    """

    domain: str
    uuid: str
    name: str | None
    connection: Connection
    path: str | None
    target: Target
    state: str | None


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
    return [
        ChannelInfo(record.name, record.uuid, c.name, c.connection, c.path, c.target,
                    record.state)
        for c in record.channels
    ]


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
            raise LibvirtUnavailable(uri, str(exc.get_error_message())) from None
    finally:
        conn.close()
    parsed = parse_metadata(text, f"domain {name!r} at {uri}")
    state = parsed.state if active else "stopped"
    return [
        ChannelInfo(name, uuid, c.name, c.connection, c.path, c.target, state)
        for c in parsed.channels
    ]


def _lookup(conn: Any, uri: str, domain: str) -> Any:
    """Find a domain by UUID (any spelling libvirt accepts), else by name."""
    import libvirt

    for lookup in (conn.lookupByUUIDString, conn.lookupByName):
        try:
            return lookup(domain)
        except libvirt.libvirtError as exc:
            # A name is not a UUID: libvirt says "invalid argument" for it.
            if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_INVALID_ARG):
                raise LibvirtUnavailable(uri, str(exc.get_error_message())) from None
    raise NoSuchDomain(uri, domain)
