"""The libvirt side: the only module that parses or edits domain XML.

Domain XML reaches us from files, stdin and libvirtd's hooks, and any of them
may be hostile, so parsing is done with a locked-down lxml parser: no DTD, no
entity expansion, no network, and a document with a DOCTYPE is refused
outright.  Edits are made on the parsed tree in place, so elements we do not
know (other devices, foreign ``<metadata>``) survive a round trip untouched.

lxml is imported lazily: the hook's fast path must not pay for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from .errors import UnsupportedChannel, XmlInputError
from .model import Channel, Connection, Target
from .translate import CONNECTIONS, FIELDS, connection_from_xml

if TYPE_CHECKING:
    from lxml import etree

#: virsh refuses domain XML files over 10 MiB (VSH_MAX_XML_FILE); so do we.
MAX_DOMAIN_XML = 10 * 1024 * 1024

# libvirt formats <devices> children in this order (virDomainDefFormatInternal);
# a new <channel> goes after every kind that precedes it, i.e. "after consoles,
# before inputs".
_BEFORE_CHANNEL = (
    "emulator", "disk", "controller", "lease", "filesystem", "interface",
    "smartcard", "serial", "parallel", "console",
)


# One parser per thread, reused: building an lxml parser costs about as much as
# a tenth of parsing a whole domain, and lxml parsers must not be shared
# between threads.
_parsers = threading.local()


def _parser() -> etree.XMLParser:
    from lxml import etree

    parser: etree.XMLParser | None = getattr(_parsers, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
            huge_tree=False, remove_comments=False,
        )
        _parsers.parser = parser
    return parser


def _child(element: etree._Element, tag: str) -> etree._Element | None:
    """The first child named ``tag``: ``find`` without ElementPath's Python-level cost."""
    for child in element.iterchildren(tag):
        return child
    return None


def parse_untrusted(
    data: bytes, fail: Callable[[str, int | None], Exception]
) -> etree._ElementTree:
    """The one locked-down lxml parse for XML from outside (files, libvirt, metadata).

    ``fail(detail, line)`` builds the caller's error.  No DTD, no network,
    and any DOCTYPE/ENTITY is refused: first by a byte check before parsing
    (even unexpanded, an internal subset can declare entity bombs, and
    libvirt never emits one), then on the parsed document, because the byte
    check cannot see a DOCTYPE in UTF-16/32 (or EBCDIC) and libxml2 expands
    internal entities even with resolve_entities=False.
    """
    from lxml import etree

    refused = "DOCTYPE/ENTITY declarations are not allowed"
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise fail(refused, None)
    try:
        tree = etree.ElementTree(etree.fromstring(data, _parser()))
    except etree.XMLSyntaxError as exc:
        raise fail(f"malformed XML: {exc.msg}", exc.lineno or None) from None
    if tree.docinfo.internalDTD is not None or tree.docinfo.doctype:
        raise fail(refused, None)
    return tree


def parse_domain(data: bytes, source: str) -> etree._ElementTree:
    """Parse untrusted domain XML; raise XmlInputError naming ``source``."""
    if len(data) > MAX_DOMAIN_XML:
        raise XmlInputError(source, f"document is {len(data)} bytes, over the 10 MiB limit")

    def fail(detail: str, line: int | None) -> XmlInputError:
        if detail.startswith("DOCTYPE"):
            detail += " in domain XML"
        return XmlInputError(source, detail, line)

    tree = parse_untrusted(data, fail)
    root = tree.getroot()
    if root.tag != "domain":
        raise XmlInputError(source, f"root element is <{root.tag}>, expected <domain>")
    return tree


def serialize(tree: etree._ElementTree) -> str:
    from lxml import etree

    return etree.tostring(tree, encoding="unicode") + "\n"


def domain_name(root: etree._Element) -> str | None:
    return root.findtext("name")


def domain_uuid(root: etree._Element) -> str | None:
    text = root.findtext("uuid")
    return text.strip().lower() if text else None


def channel_elements(root: etree._Element) -> list[etree._Element]:
    """Every ``<channel>`` under ``<devices>``, in document order."""
    devices = _child(root, "devices")
    return list(devices.iterchildren("channel")) if devices is not None else []


def target_type(element: etree._Element) -> str | None:
    target = _child(element, "target")
    return target.get("type") if target is not None else None


def channel_from_element(element: etree._Element) -> Channel:
    """Read one ``<channel>`` into the model, by the mapping table.

    Raises UnsupportedChannel for a source type the Xen side cannot express
    (tcp, udp, file, spicevmc, ...) or an unknown target type, and the model's
    own errors for a bad name or path.
    """
    # One pass over the (two or three) children instead of a lookup per field.
    children: dict[object, etree._Element] = {}
    for child in element:
        children.setdefault(child.tag, child)
    target_element = children.get("target")
    raw_target = target_element.get("type") if target_element is not None else None
    name = target_element.get("name") if target_element is not None else None
    try:
        target = Target(raw_target or "")
    except ValueError:
        detail = f"target type {raw_target!r} is not xen, virtio or guestfwd"
        raise UnsupportedChannel(name, detail) from None
    source_type = element.get("type")
    connection = connection_from_xml(source_type or "")
    if connection is None:
        what = f"source type {source_type!r}" if source_type else "a <channel> without a type"
        raise UnsupportedChannel(name, f"{what} has no Xen equivalent (only unix and pty)")
    values: dict[str, str | None] = {"name": name}
    for field in FIELDS:
        if field.xml is None or field.attr in ("connection", "name"):
            continue
        tag, attribute = field.xml
        node = children.get(tag)
        values[field.attr] = node.get(attribute) if node is not None else None
    return Channel(
        name=values["name"], connection=connection, path=values["path"], target=target
    )


def iter_channels(
    root: etree._Element, targets: Iterable[Target] = (Target.XEN,)
) -> Iterator[tuple[etree._Element, Channel]]:
    """(element, Channel) for each channel whose target type is in ``targets``.

    Channels of other target types are not parsed at all, so a guestfwd tcp
    channel never raises here.
    """
    wanted = {t.value for t in targets}
    for element in channel_elements(root):
        if target_type(element) in wanted:
            yield element, channel_from_element(element)


def channel_element(channel: Channel) -> etree._Element:
    """Build ``<channel>`` for ``channel``, in libvirt's own attribute order."""
    from lxml import etree

    element = etree.Element("channel", type=CONNECTIONS[channel.connection][1])
    if channel.path is not None:
        # libxl ignores the mode, but libvirt's parser requires one for unix
        # sources; 'bind' matches QEMU being the listening side.
        source = etree.SubElement(element, "source")
        if channel.connection is Connection.SOCKET:
            source.set("mode", "bind")
        source.set("path", channel.path)
    target = etree.SubElement(element, "target", type=channel.target.value)
    if channel.name is not None:
        target.set("name", channel.name)
    return element


def set_source_path(element: etree._Element, path: str) -> None:
    """Give a unix ``<channel>`` the socket path ``path`` (source is the first child)."""
    from lxml import etree

    source = element.find("source")
    if source is None:
        source = etree.Element("source")
        element.insert(0, source)
        source.tail = element.text
    if source.get("mode") is None:
        source.set("mode", "bind")
    source.set("path", path)


def devices_element(root: etree._Element) -> etree._Element:
    from lxml import etree

    devices = root.find("devices")
    if devices is None:
        devices = etree.SubElement(root, "devices")
        indent_new_child(root, devices)
    return devices


def replace_channels(
    root: etree._Element, channels: Iterable[Channel], targets: Iterable[Target] = (Target.XEN,)
) -> None:
    """Replace the channels of the given target types with ``channels``.

    New elements take the place of the first removed one, or else libvirt's
    device-order slot (after consoles, before inputs), indented like their
    siblings so the output reads like libvirt's own.
    """
    devices = devices_element(root)
    wanted = {t.value for t in targets}
    old = [el for el in devices.iterfind("channel") if target_type(el) in wanted]
    position = devices.index(old[0]) if old else _channel_slot(devices)
    for element in old:
        remove_keeping_layout(element)
    for offset, channel in enumerate(channels):
        element = channel_element(channel)
        devices.insert(position + offset, element)
        indent_new_child(devices, element)


def _channel_slot(devices: etree._Element) -> int:
    slot = 0
    for index, child in enumerate(devices):
        if child.tag in _BEFORE_CHANNEL or child.tag == "channel":
            slot = index + 1
    return slot


def remove_keeping_layout(element: etree._Element) -> None:
    """Remove ``element``, handing its tail (the indentation of what follows) on."""
    parent = element.getparent()
    assert parent is not None
    previous = element.getprevious()
    if previous is not None:
        previous.tail = element.tail
    else:
        parent.text = element.tail
    parent.remove(element)


def indent_new_child(parent: etree._Element, child: etree._Element) -> None:
    """Indent a just-inserted ``child`` (and its subtree) in libvirt's 2-space layout."""
    depth = sum(1 for _ in parent.iterancestors()) + 1
    inner = "\n" + "  " * depth
    outer = "\n" + "  " * (depth - 1)
    previous = child.getprevious()
    if previous is not None:
        child.tail = previous.tail
        previous.tail = inner
    else:
        child.tail = inner if len(parent) > 1 else outer
        parent.text = inner
    _indent_subtree(child, depth + 1)


def _indent_subtree(element: etree._Element, depth: int) -> None:
    if not len(element):
        return
    inner = "\n" + "  " * depth
    element.text = inner
    for child in element:
        child.tail = inner
        _indent_subtree(child, depth + 1)
    element[-1].tail = "\n" + "  " * (depth - 1)
