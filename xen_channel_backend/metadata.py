"""Our domain metadata: ``<xcb:channels>`` in libvirt's ``<metadata>`` element.

A management tool finds a domain's channel sockets here without knowing our
run directory layout, and the element travels with the domain (migration,
``virsh dumpxml``).  The namespace is ``urn:xen-channel-backend:channels:1``
with the prefix ``xcb``; ``xml/metadata.rng`` is its schema and
docs/metadata.md its reference.  Version 1 may gain attributes, never change
the meaning of these, so readers ignore attributes they do not know.

Two writers use it:

* ``fill``/``define`` edit the parsed domain tree with :func:`set_domain_metadata`
  (the persistent copy);
* the monitor calls ``virDomainSetMetadata(VIR_DOMAIN_METADATA_ELEMENT,
  metadata_xml(...), PREFIX, NAMESPACE, VIR_DOMAIN_AFFECT_LIVE)`` (the live
  copy, with pty paths and a ``state``; with ``--agent-interval``, also an
  ``<xcb:agent>`` child: what the guest's qemu-ga last reported, see
  :class:`AgentStatus`).

The content is untrusted on the way back in (anyone with ``virsh edit`` may
change it), so :func:`parse_metadata` and :func:`read_domain_metadata` rebuild
every channel through the model's validation and raise
:class:`~xen_channel_backend.errors.InvalidMetadata` on anything else.

lxml is imported lazily, like everywhere a hook might reach.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .domxml import (
    indent_new_child,
    insert_in_libvirt_order,
    parse_untrusted,
    remove_keeping_layout,
)
from .errors import InvalidMetadata, XenChannelError, escaped, shown
from .model import Channel, Connection, DomainState, Target

if TYPE_CHECKING:
    from lxml import etree

    from .agenttypes import GuestInterface

NAMESPACE = "urn:xen-channel-backend:channels:1"
PREFIX = "xcb"
#: Values of the ``state`` attribute: the registry's states (registry.py).
STATES = tuple(state.value for state in DomainState)

_CHANNELS = f"{{{NAMESPACE}}}channels"
_CHANNEL = f"{{{NAMESPACE}}}channel"
#: Far above any real channel list (a Linux guest sees at most 7 Xen channels);
#: stops a hostile metadata blob from costing more than a glance.
MAX_METADATA_BYTES = 1024 * 1024
MAX_CHANNELS = 1024

#: ``<xcb:agent state=...>``: the guest's qemu-ga answered the last poll, or did not.
AGENT_STATES = ("connected", "not-responding")
#: Bounds on what a guest can make the monitor write (its text is untrusted).
MAX_AGENT_TEXT = 255
MAX_AGENT_INTERFACES = 64
MAX_AGENT_ADDRESSES = 64
_MAC_CHARS = frozenset("0123456789abcdef:")


@dataclasses.dataclass(frozen=True, slots=True)
class AgentStatus:
    """What ``xen-channel monitor --agent-interval`` last learned from a guest's qemu-ga.

    Built only through :func:`agent_status` (or read back from metadata), so
    every field is already bounded and printable: guest text is escaped
    (errors.escaped) and cut to :data:`MAX_AGENT_TEXT` characters, addresses
    are normalised by :mod:`ipaddress`, MAC addresses kept only in the usual
    six-byte form.
    """

    state: str
    hostname: str | None = None
    os_id: str | None = None
    os_version: str | None = None
    interfaces: tuple[GuestInterface, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Metadata:
    """The content of one ``<xcb:channels>`` element.

    ``state`` is set only in the live copy the monitor writes, and ``agent``
    only when the monitor polls guest agents.
    """

    channels: tuple[Channel, ...]
    state: str | None = None
    agent: AgentStatus | None = None


def agent_status(
    state: str,
    hostname: str | None = None,
    os_id: str | None = None,
    os_version: str | None = None,
    interfaces: Iterable[GuestInterface] = (),
    *,
    _text: Callable[[str | None], str | None] | None = None,
) -> AgentStatus:
    """An :class:`AgentStatus` from what a guest said, made safe to store and show."""
    text = _text or _escaped_text
    import ipaddress

    from .agenttypes import GuestInterface, GuestIPAddress

    if state not in AGENT_STATES:
        raise ValueError(f"agent state {state!r} is not one of {AGENT_STATES}")
    kept: list[GuestInterface] = []
    for iface in list(interfaces)[:MAX_AGENT_INTERFACES]:
        addresses = []
        for address in iface.addresses[:MAX_AGENT_ADDRESSES]:
            try:
                parsed = ipaddress.ip_address(address.address)
            except ValueError:
                continue
            kind = "ipv4" if parsed.version == 4 else "ipv6"
            if kind == address.type and 0 <= address.prefix <= parsed.max_prefixlen:
                addresses.append(GuestIPAddress(kind, str(parsed), address.prefix))
        hwaddr = (iface.hwaddr or "").lower()
        mac = hwaddr if _is_mac(hwaddr) else None
        kept.append(GuestInterface(text(iface.name) or "?", mac, tuple(addresses)))
    return AgentStatus(state, text(hostname), text(os_id), text(os_version), tuple(kept))


def _escaped_text(value: str | None) -> str | None:
    if value is None:
        return None
    return escaped(value)[:MAX_AGENT_TEXT] or None


def _stored_text(value: str | None) -> str | None:
    """Text read back: what _escaped_text writes is printable and short already."""
    if value is None or (value.isprintable() and 0 < len(value) <= MAX_AGENT_TEXT):
        return value
    return "\0"  # never equal to what was read: the element is refused


def _is_mac(value: str) -> bool:
    return len(value) == 17 and set(value) <= _MAC_CHARS and value[2::3] == ":" * 5


def metadata_element(
    channels: Iterable[Channel], state: str | None = None, agent: AgentStatus | None = None
) -> etree._Element:
    """Build ``<xcb:channels>`` (namespaced, prefix ``xcb``) for ``channels``."""
    from lxml import etree

    element = etree.Element(_CHANNELS, nsmap={PREFIX: NAMESPACE})
    _fill(element, f"{{{NAMESPACE}}}", channels, state, agent)
    return element


def metadata_xml(
    channels: Iterable[Channel], state: str | None = None, agent: AgentStatus | None = None
) -> str:
    """The XML string that ``virDomainSetMetadata`` takes for our namespace.

    libvirt puts every element of the string into the namespace itself
    (virXMLInjectNamespace) and refuses a string that already declares the
    prefix ("failed to create a new XML namespace", tested on test:///default),
    so this is the same element *without* a namespace.
    """
    from lxml import etree

    element = etree.Element("channels")
    _fill(element, "", channels, state, agent)
    return etree.tostring(element, encoding="unicode")


def _fill(
    element: etree._Element, ns: str, channels: Iterable[Channel], state: str | None,
    agent: AgentStatus | None = None,
) -> None:
    from lxml import etree

    if state is not None:
        if state not in STATES:
            raise ValueError(f"state {state!r} is not one of {STATES}")
        element.set("state", state)
    for channel in channels:
        child = etree.SubElement(element, f"{ns}channel")
        # Attribute order follows the schema and docs: name, connection, path, target.
        if channel.name is not None:
            child.set("name", channel.name)
        child.set("connection", channel.connection.value)
        if channel.path is not None:
            child.set("path", channel.path)
        child.set("target", channel.target.value)
    if agent is not None:
        _fill_agent(etree.SubElement(element, f"{ns}agent"), ns, agent)


def _fill_agent(element: etree._Element, ns: str, agent: AgentStatus) -> None:
    from lxml import etree

    element.set("state", agent.state)
    for key, value in (("hostname", agent.hostname), ("os-id", agent.os_id),
                       ("os-version", agent.os_version)):
        if value is not None:
            element.set(key, value)
    for iface in agent.interfaces:
        child = etree.SubElement(element, f"{ns}interface")
        child.set("name", iface.name)
        if iface.hwaddr is not None:
            child.set("hwaddr", iface.hwaddr)
        for address in iface.addresses:
            item = etree.SubElement(child, f"{ns}address")
            item.set("type", address.type)
            item.set("addr", address.address)
            item.set("prefix", str(address.prefix))


def set_domain_metadata(
    root: etree._Element, channels: Iterable[Channel], state: str | None = None
) -> InvalidMetadata | None:
    """Write ``<metadata><xcb:channels>`` for ``channels`` into a parsed ``<domain>``.

    Every element of our namespace directly under ``<metadata>`` is replaced;
    elements of other namespaces are left exactly as they were.  A missing
    ``<metadata>`` is created in libvirt's position.  Returns the problem with
    the element that was replaced when it was invalid (so a caller can warn
    that a hand edit was discarded), else None.
    """
    from lxml import etree

    metadata = root.find("metadata")
    problem: InvalidMetadata | None = None
    if metadata is None:
        metadata = etree.Element("metadata")
        # Where libvirt puts it (after name, uuid, title, description).
        insert_in_libvirt_order(root, metadata)
    else:
        try:
            _read_metadata_element(metadata, _source_of(root))
        except InvalidMetadata as exc:
            problem = exc
        for old in [c for c in metadata if _namespace_of(c) == NAMESPACE]:
            remove_keeping_layout(old)
    element = metadata_element(channels, state)
    metadata.append(element)
    indent_new_child(metadata, element)
    return problem


def read_domain_metadata(root: etree._Element) -> list[Channel]:
    """The channels in a parsed ``<domain>``'s ``<xcb:channels>``; [] when there is none.

    Raises InvalidMetadata (naming the domain) when the element is present but
    not valid.
    """
    found = find_domain_metadata(root)
    return list(found.channels) if found is not None else []


def find_domain_metadata(root: etree._Element) -> Metadata | None:
    """Like :func:`read_domain_metadata`, keeping ``state``; None when there is none."""
    metadata = root.find("metadata")
    if metadata is None:
        return None
    return _read_metadata_element(metadata, _source_of(root))


def parse_metadata(text: str | bytes, source: str = "<metadata>") -> Metadata:
    """Parse what ``virDomainGetMetadata(VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE)`` returns.

    libvirt returns our element with the namespace stripped
    (``<channels state=..><channel .../></channels>``); the namespaced form
    (as in ``virsh dumpxml``) is accepted too.  ``source`` names the origin
    in error messages (e.g. the domain name).
    """
    from lxml import etree

    data = text.encode("utf-8") if isinstance(text, str) else text
    if len(data) > MAX_METADATA_BYTES:
        raise InvalidMetadata(source, f"{len(data)} bytes, over the {MAX_METADATA_BYTES} limit")
    element = parse_untrusted(data, lambda detail, _line: InvalidMetadata(source, detail)).getroot()
    namespace = _namespace_of(element)
    if namespace not in (None, NAMESPACE) or etree.QName(element).localname != "channels":
        raise InvalidMetadata(source, f"root element is {shown(element.tag)}, expected <channels>")
    return _read_channels(element, namespace, source)


def _read_metadata_element(metadata: etree._Element, source: str) -> Metadata | None:
    ours = [c for c in metadata if _namespace_of(c) == NAMESPACE]
    if not ours:
        return None
    if len(ours) > 1 or ours[0].tag != _CHANNELS:
        tags = ", ".join(shown(c.tag) for c in ours[:3])
        raise InvalidMetadata(source, f"expected one <{PREFIX}:channels> element, found {tags}")
    return _read_channels(ours[0], NAMESPACE, source)


def _read_channels(element: etree._Element, namespace: str | None, source: str) -> Metadata:
    from lxml import etree

    state = element.get("state")
    if state is not None and state not in STATES:
        raise InvalidMetadata(source, f"state {shown(state)} is not one of {', '.join(STATES)}")
    if element.text is not None and element.text.strip():
        raise InvalidMetadata(source, f"unexpected text {shown(element.text.strip())}")
    ns = f"{{{namespace}}}" if namespace else ""
    child_tag = f"{ns}channel"
    channels: list[Channel] = []
    names: set[str] = set()
    agent: AgentStatus | None = None
    for child in element:
        if not isinstance(child.tag, str):
            continue  # comments and processing instructions carry no data
        if child.tag == f"{ns}agent" and agent is None:
            if child.tail is not None and child.tail.strip():
                raise InvalidMetadata(source, f"unexpected text {shown(child.tail.strip())}")
            agent = _read_agent(child, ns, source)
            continue
        if agent is not None:
            raise InvalidMetadata(source, "<agent> must come last, and only once")
        if child.tag != child_tag:
            localname = etree.QName(child).localname
            raise InvalidMetadata(source, f"unexpected element {shown(localname)}")
        if child.tail is not None and child.tail.strip():
            raise InvalidMetadata(source, f"unexpected text {shown(child.tail.strip())}")
        if len(channels) >= MAX_CHANNELS:
            raise InvalidMetadata(source, f"more than {MAX_CHANNELS} channels")
        channel = _read_channel(child, source)
        if channel.name is not None:
            if channel.name in names:
                raise InvalidMetadata(source, f"channel {shown(channel.name)} appears twice")
            names.add(channel.name)
        channels.append(channel)
    return Metadata(tuple(channels), state, agent)


def _read_agent(element: etree._Element, ns: str, source: str) -> AgentStatus:
    """Read ``<agent>`` back, checking it is what :func:`agent_status` would have written."""
    from .agenttypes import GuestInterface, GuestIPAddress

    interfaces: list[GuestInterface] = []
    for child in element:
        if not isinstance(child.tag, str):
            continue
        if child.tag != f"{ns}interface" or len(interfaces) >= MAX_AGENT_INTERFACES:
            raise InvalidMetadata(source, "<agent> holds something other than <interface>s")
        addresses = [
            GuestIPAddress(str(a.get("type")), str(a.get("addr")), _prefix(a.get("prefix")))
            for a in child if isinstance(a.tag, str)
        ]
        if any(a.tag != f"{ns}address" for a in child if isinstance(a.tag, str)):
            raise InvalidMetadata(source, "an agent <interface> holds something other than "
                                  "<address>es")
        name = child.get("name")
        if name is None:
            raise InvalidMetadata(source, "an agent <interface> has no name")
        interfaces.append(GuestInterface(name, child.get("hwaddr"), tuple(addresses)))
    try:
        status = agent_status(str(element.get("state")), element.get("hostname"),
                              element.get("os-id"), element.get("os-version"), interfaces,
                              _text=_stored_text)
    except ValueError as exc:
        raise InvalidMetadata(source, str(exc)) from None
    read = AgentStatus(str(element.get("state")), element.get("hostname"),
                       element.get("os-id"), element.get("os-version"), tuple(interfaces))
    if read != status:
        raise InvalidMetadata(source, "<agent> holds text or addresses the monitor never writes")
    return status


def _prefix(value: str | None) -> int:
    return int(value) if value is not None and value.isdigit() and len(value) <= 3 else -1


def _read_channel(element: etree._Element, source: str) -> Channel:
    name = element.get("name")
    who = f"channel {shown(name)}" if name is not None else "a channel"
    raw_connection = element.get("connection")
    raw_target = element.get("target")
    if raw_connection is None or raw_target is None:
        missing = "connection" if raw_connection is None else "target"
        raise InvalidMetadata(source, f"{who} has no {missing} attribute")
    try:
        connection = Connection(raw_connection)
    except ValueError:
        raise InvalidMetadata(
            source, f"{who}: connection {shown(raw_connection)} is not socket or pty"
        ) from None
    try:
        target = Target(raw_target)
    except ValueError:
        raise InvalidMetadata(
            source, f"{who}: target {shown(raw_target)} is not xen, virtio or guestfwd"
        ) from None
    try:
        return Channel(name=name, connection=connection, path=element.get("path"), target=target)
    except XenChannelError as exc:
        raise InvalidMetadata(source, exc.message()) from None


def _namespace_of(element: etree._Element) -> str | None:
    tag = element.tag
    if not isinstance(tag, str) or not tag.startswith("{"):
        return None
    return tag[1:].split("}", 1)[0]


def _source_of(root: etree._Element) -> str:
    name = root.findtext("name")
    return f"domain {shown(name)}" if name else "domain XML"
