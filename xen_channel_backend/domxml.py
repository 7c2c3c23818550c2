"""The libvirt side: the only module that parses or edits domain XML.

Domain XML reaches us from files, stdin and libvirtd's hooks, and any of them
may be hostile, so parsing is done with a locked-down lxml parser: no DTD, no
entity expansion, no network, and a document with a DOCTYPE is refused
outright.  Edits are made on the parsed tree in place, so elements we do not
know (other devices, foreign ``<metadata>``) survive a round trip untouched.

lxml is imported lazily: the hook's fast path must not pay for it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from . import channelxml
from .channelxml import MAX_DOMAIN_XML as MAX_DOMAIN_XML
from .errors import XmlInputError
from .model import Channel, Target
from .translate import connection_from_xml

if TYPE_CHECKING:
    from lxml import etree

# The order in which libvirt formats the children we insert, per parent
# (virDomainDefFormatInternal for <domain> and <devices>,
# virDomainChrDefFormat for <channel>): a new child goes after the last
# sibling of its own kind or of a kind listed before it, e.g. a <channel>
# "after consoles, before inputs".  Only the kinds that can precede the ones
# we insert are listed.
LIBVIRT_ORDER: dict[str, tuple[str, ...]] = {
    "domain": ("name", "uuid", "genid", "title", "description", "metadata"),
    "devices": (
        "emulator", "disk", "controller", "lease", "filesystem", "interface",
        "smartcard", "serial", "parallel", "console", "channel",
    ),
    "channel": ("source",),
}


# "<!DOCTYPE" or "<!ENTITY" anywhere: one pass over the bytes.
_DECLARATION = re.compile(rb"<!(?:DOCTYPE|ENTITY)")

# One parser per thread and kind, reused: building an lxml parser costs about
# as much as a tenth of parsing a whole domain, and lxml parsers must not be
# shared between threads.
_parsers = threading.local()


def _parser(read_only: bool = False) -> etree.XMLParser:
    kind = "reader" if read_only else "editor"
    parser: etree.XMLParser | None = getattr(_parsers, kind, None)
    if parser is None:
        from lxml import etree

        # collect_ids=False: no table of xml:id values, which nothing here
        # looks up (about 2% of a parse).  A tree that is only read drops
        # the whitespace between elements (about 12%): it is never
        # serialized, and no reader looks at that text.
        parser = etree.XMLParser(
            resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
            huge_tree=False, remove_comments=False, collect_ids=False,
            remove_blank_text=read_only,
        )
        setattr(_parsers, kind, parser)
    return parser


def _child(element: etree._Element, tag: str) -> etree._Element | None:
    """The first child named ``tag``: ``find`` without ElementPath's Python-level cost."""
    for child in element.iterchildren(tag):
        return child
    return None


def parse_untrusted(
    data: bytes, fail: Callable[[str, int | None], Exception], *, read_only: bool = False
) -> etree._ElementTree:
    """The one locked-down lxml parse for XML from outside (files, libvirt, metadata).

    ``fail(detail, line)`` builds the caller's error.  No DTD, no network,
    and any DOCTYPE/ENTITY is refused: first by a byte check before parsing
    (even unexpanded, an internal subset can declare entity bombs, and
    libvirt never emits one), then on the parsed document, because the byte
    check cannot see a DOCTYPE in UTF-16/32 (or EBCDIC) and libxml2 expands
    internal entities even with resolve_entities=False.  ``read_only``: the
    caller only reads the tree (never edits or serializes it), so
    whitespace between elements may be dropped.
    """
    from lxml import etree

    refused = "DOCTYPE/ENTITY declarations are not allowed"
    if _DECLARATION.search(data) is not None:
        raise fail(refused, None)
    try:
        tree = etree.fromstring(data, _parser(read_only)).getroottree()
    except etree.XMLSyntaxError as exc:
        raise fail(f"malformed XML: {exc.msg}", exc.lineno or None) from None
    docinfo = tree.docinfo
    if docinfo.internalDTD is not None or docinfo.doctype:
        raise fail(refused, None)
    return tree


def parse_domain(data: bytes, source: str, *, read_only: bool = False) -> etree._ElementTree:
    """Parse untrusted domain XML; raise XmlInputError naming ``source``.

    ``read_only``: the caller only reads the tree; it must not edit or
    serialize it (the whitespace between elements is dropped, for speed).
    """
    if len(data) > MAX_DOMAIN_XML:
        raise XmlInputError(source, f"document is {len(data)} bytes, over the 10 MiB limit")

    def fail(detail: str, line: int | None) -> XmlInputError:
        if detail.startswith("DOCTYPE"):
            detail += " in domain XML"
        return XmlInputError(source, detail, line)

    tree = parse_untrusted(data, fail, read_only=read_only)
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
    """Every ``<channel>`` under (the first) ``<devices>``, in document order."""
    for devices in root.iterchildren("devices"):
        return list(devices.iterchildren("channel"))
    return []


# The channel's own attributes, and its children's, by the table (channelxml).
_OWN_READ = channelxml.READ_PLAN["."]
_CHILD_READS = {tag: plan for tag, plan in channelxml.READ_PLAN.items() if tag != "."}
_NO_VALUES = channelxml.empty_values()


def channel_values(element: etree._Element) -> dict[str, str | None]:
    """Every value the table reads from one ``<channel>`` (channelxml.KEYS), None when absent."""
    values = dict(_NO_VALUES)
    get = element.get
    for key, attribute in _OWN_READ:
        values[key] = get(attribute)
    seen: tuple[object, ...] = ()
    for child in element:
        # The first child of each tag counts, like find(); comments and
        # children the table does not read are skipped.
        tag = child.tag
        plan = _CHILD_READS.get(tag)  # type: ignore[call-overload]
        if plan is None or tag in seen:
            continue
        seen += (tag,)
        get = child.get
        for key, attribute in plan:
            values[key] = get(attribute)
    return values


def target_type(element: etree._Element) -> str | None:
    """``<channel>``'s target type (xen, virtio, guestfwd...), by the table."""
    return channel_values(element)["target"]


def channel_from_element(element: etree._Element) -> Channel:
    """Read one ``<channel>`` into the model, by the mapping table.

    Raises UnsupportedChannel for a source type the Xen side cannot express
    (tcp, udp, file, spicevmc, ...) or an unknown target type, and the model's
    own errors for a bad name or path.
    """
    return channelxml.channel_from_values(channel_values(element))


def iter_channels(
    root: etree._Element, targets: Iterable[Target] = (Target.XEN,)
) -> Iterator[tuple[etree._Element, Channel]]:
    """(element, Channel) for each channel whose target type is in ``targets``.

    Channels of other target types are not parsed at all, so a guestfwd tcp
    channel never raises here.
    """
    wanted = {t.value for t in targets}
    for element in channel_elements(root):
        values = channel_values(element)
        if values["target"] in wanted:
            yield element, channelxml.channel_from_values(values)


def channel_element(channel: Channel) -> etree._Element:
    """Build ``<channel>`` for ``channel`` by the table, in libvirt's own order."""
    from lxml import etree

    element = etree.Element("channel")
    for tag, attributes in channelxml.xml_attributes(channel):
        node = element if tag == "." else etree.SubElement(element, tag)
        for attribute, value in attributes:
            node.set(attribute, value)
    return element


def set_source_path(element: etree._Element, path: str) -> None:
    """Give a unix ``<channel>`` the socket path ``path``."""
    set_value(element, "path", path)


def set_value(element: etree._Element, key: str, value: str) -> None:
    """Set one table value (channelxml.KEYS) of a ``<channel>``, where the table puts it.

    A missing child is created in libvirt's order.  The child's other
    attributes that have a default and are unset get it first (a unix
    ``<source>`` without a mode gets ``mode='bind'``: QEMU listens), so a
    new element reads as libvirt writes it.
    """
    from lxml import etree

    tag, attribute = channelxml.POSITIONS[key]
    node = element if tag == "." else _child(element, tag)
    if node is None:
        node = etree.Element(tag)
        insert_in_libvirt_order(element, node)
    own_tag, type_attribute = channelxml.POSITIONS["connection"]
    assert own_tag == "."
    connection = connection_from_xml(element.get(type_attribute) or "")
    for other, default in channelxml.defaults(tag, connection):
        if other != attribute and node.get(other) is None:
            node.set(other, default)
    node.set(attribute, value)


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
    old = [el for el in devices.iterchildren("channel") if target_type(el) in wanted]
    if not old:
        for channel in channels:
            insert_in_libvirt_order(devices, channel_element(channel))
        return
    position = devices.index(old[0])
    for element in old:
        remove_keeping_layout(element)
    for offset, channel in enumerate(channels):
        element = channel_element(channel)
        devices.insert(position + offset, element)
        indent_new_child(devices, element)


def insert_in_libvirt_order(parent: etree._Element, child: etree._Element) -> None:
    """Insert ``child`` where libvirt would format it among ``parent``'s children.

    That is after the last sibling of its own kind or of a kind libvirt
    formats before it (:data:`LIBVIRT_ORDER`), or first; indented in
    libvirt's 2-space layout.  The one place that knows libvirt's element
    order: domxml, metadata and allocate all insert through it.
    """
    order = LIBVIRT_ORDER[parent.tag]  # type: ignore[index]
    before = order[: order.index(child.tag) + 1]  # type: ignore[arg-type]
    slot = 0
    for index, sibling in enumerate(parent):
        if sibling.tag in before:
            slot = index + 1
    parent.insert(slot, child)
    indent_new_child(parent, child)


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
