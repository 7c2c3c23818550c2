"""``xen-channel fill`` and ``xen-channel define``: give channels their socket paths.

``fill`` turns a domain definition into one whose unix channels all have a
path before libvirt ever sees it.  That has to happen here, ahead of time:
at prepare/start the hook may not change the XML (background.md §1), and left alone
libxl invents a name-keyed path with no length check (background.md §2).

* A missing ``<uuid>`` is generated (uuid4) and written in, since the path
  policy keys every socket on the UUID (paths.py) and libvirt would otherwise
  pick a random one at define time that our paths could not know.
* Every Xen unix channel without a path gets ``paths.socket_path`` (with
  ``--all-targets``, virtio unix channels too); pty channels are left alone.
* Explicit paths are kept.  They must pass the model's rules, and
  ``paths.is_ours`` decides, as the hooks do, whether one is ours (inside an
  allowed root) or only recorded (anywhere else); a path in the run
  directory outside this domain's own directory is refused here, as the
  prepare hook would refuse it.
* A domain with more than ``registry.MAX_CHANNELS`` channels is refused, as
  the prepare hook refuses it.
* Our ``<xcb:channels>`` metadata is written into the persistent definition.

``define`` then hands the result to libvirt-python.  This is the only place
in the allocation path that talks to libvirt; hooks never do (background.md §1:
calling back into libvirtd from a hook deadlocks).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import uuid as uuidlib
from typing import TYPE_CHECKING, Any

from . import domxml
from .console import Streams, read_input, write_output
from .errors import (
    InvalidMetadata,
    InvalidUUID,
    LibvirtUnavailable,
    PathNotAllowed,
    UnsupportedChannel,
    XmlInputError,
    escaped,
    shown,
)
from .model import Channel, Connection, Target
from .paths import canonical_uuid, is_ours, socket_path
from .settings import Settings, load_settings

if TYPE_CHECKING:
    from lxml import etree

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Filled:
    """The result of :func:`fill_domain`.

    ``channels`` are the managed channels (xen; with ``all_targets`` also
    virtio) with their final paths, in document order.  ``discarded_metadata``
    is set when an invalid ``<xcb:channels>`` (a hand edit) was replaced.
    ``warnings`` are what the caller should tell the user: virtio unix
    channels skipped for lack of ``all_targets``, and a domain with nothing
    to manage (which gets no ``<xcb:channels>`` at all).
    """

    tree: etree._ElementTree
    uuid: str
    channels: list[Channel]
    discarded_metadata: InvalidMetadata | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)


def fill_domain(
    data: bytes, source: str, settings: Settings, *, all_targets: bool = False
) -> Filled:
    """Parse a domain, allocate its channel paths and write our metadata."""
    from .metadata import set_domain_metadata

    tree = domxml.parse_domain(data, source)
    root = tree.getroot()
    uuid = _ensure_uuid(root, source)
    targets = (Target.XEN, Target.VIRTIO) if all_targets else (Target.XEN,)
    channels: list[Channel] = []
    users: dict[str, str] = {}
    for element, channel in domxml.iter_channels(root, targets):
        if channel.connection is Connection.SOCKET:
            if channel.path is None:
                if channel.name is None:
                    raise UnsupportedChannel(
                        None,
                        f"{channel.target} unix channel has no target name, so no path can be "
                        "allocated for it (add <target name='...'/>)",
                    )
                path = socket_path(settings, uuid, channel.name)
                domxml.set_source_path(element, path)
                channel = channel.with_path(path)
            else:
                path = channel.path
                is_ours(settings, uuid, channel.name, path)  # refuses another domain's
            key = os.path.normpath(path)
            if key in users:
                # QEMU unlinks whatever is at its path before binding (background.md §2):
                # two channels on one path would silently take each other's socket.
                raise PathNotAllowed(
                    channel.name, key, f"is also the path of channel {users[key]!r}"
                )
            users[key] = channel.label
        channels.append(channel)
    from .registry import check_channel_count

    check_channel_count(len(channels), f"{source}: the domain")
    warnings = _skipped_virtio(root, source) if not all_targets else []
    if not channels and not _has_our_metadata(root):
        # Nothing to manage: an empty <xcb:channels/> would only make the
        # monitor treat the domain as ours.  (One that had channels keeps
        # its element, rewritten empty, so it does not list stale ones.)
        what = "no <channel>" if not domxml.channel_elements(root) else "no Xen channel"
        warnings.append(f"{escaped(source)}: the domain has {what}: nothing to allocate, "
                        "no metadata added")
        return Filled(tree, uuid, channels, None, warnings)
    discarded = set_domain_metadata(root, channels)
    return Filled(tree, uuid, channels, discarded, warnings)


def _skipped_virtio(root: etree._Element, source: str) -> list[str]:
    """A warning naming the virtio unix channels that only ``--all-targets`` allocates."""
    names = []
    for element in domxml.channel_elements(root):
        if domxml.target_type(element) == Target.VIRTIO.value and element.get("type") == "unix":
            target = element.find("target")
            name = target.get("name") if target is not None else None
            names.append(shown(name) if name else "(no name)")
    if not names:
        return []
    return [f"{escaped(source)}: skipped {len(names)} virtio unix channel(s) "
            f"({', '.join(names)}): fill allocates Xen channels only; --all-targets "
            "allocates these too"]


def _has_our_metadata(root: etree._Element) -> bool:
    from .metadata import NAMESPACE

    return root.find(f"metadata/{{{NAMESPACE}}}channels") is not None


def _ensure_uuid(root: etree._Element, source: str) -> str:
    from lxml import etree

    element = root.find("uuid")
    if element is not None and element.text and element.text.strip():
        try:
            return canonical_uuid(element.text)
        except InvalidUUID as exc:
            raise XmlInputError(source, exc.message()) from None
    generated = str(uuidlib.uuid4())
    if element is None:
        element = etree.Element("uuid")
        domxml.insert_in_libvirt_order(root, element)  # after <name>
    element.text = generated
    log.debug("%s: no <uuid>; generated %s", source, generated)
    return generated


def _filled(args: argparse.Namespace, streams: Streams) -> Filled:
    settings = load_settings(args.rundir)
    data, label = read_input(args.input, streams)
    filled = fill_domain(data, label, settings, all_targets=args.all_targets)
    for warning in filled.warnings:
        streams.warn(warning)
    if filled.discarded_metadata is not None:
        streams.warn(f"replaced invalid metadata: {filled.discarded_metadata.message()}")
    return filled


def run_fill(args: argparse.Namespace, streams: Streams) -> int:
    """``xen-channel fill``: print (or write with ``-o``) the filled domain XML."""
    filled = _filled(args, streams)
    write_output(domxml.serialize(filled.tree), args.output, streams)
    return 0


def define_xml(conn: Any, xml: str, uri: str) -> Any:
    """Define ``xml`` on an open libvirt connection; return the virDomain."""
    from .libvirtconn import libvirt_module, one_line

    libvirt = libvirt_module(uri)
    try:
        return conn.defineXML(xml)
    except libvirt.libvirtError as exc:
        raise LibvirtUnavailable(uri, f"cannot define the domain: {one_line(exc)}") from None


def run_define(args: argparse.Namespace, streams: Streams) -> int:
    """``xen-channel define``: fill the domain, then define it through libvirt."""
    filled = _filled(args, streams)
    from .libvirtconn import open_connection, uri_of

    # No --connect: None, so libvirt resolves its own default URI
    # ($LIBVIRT_DEFAULT_URI, uri_default in libvirt.conf, else probing);
    # messages name the URI it actually connected to.
    conn = open_connection(args.connect)
    uri = uri_of(conn, args.connect)
    try:
        domain = define_xml(conn, domxml.serialize(filled.tree), uri)
        name = domain.name()
    finally:
        conn.close()
    # The name comes back from libvirt: shown escapes it and bounds its length.
    print(f"Domain {shown(name)} ({filled.uuid}) defined on {escaped(uri)}", file=streams.stdout)
    return 0
