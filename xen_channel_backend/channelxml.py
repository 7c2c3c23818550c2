"""The shape of libvirt's ``<channel>`` element, by :data:`translate.FIELDS`, without lxml.

Every reader and writer of ``<channel>`` goes through this module: domxml
with lxml elements, and :func:`scan_domain`, the lean expat reader for the
hook's hot path.
Which child and attribute holds what comes from the table alone, in the
spirit of virtinst's ``XMLProperty``: :data:`READ_PLAN` says where each
value is read from, :func:`xml_attributes` what to write, in libvirt's order.

The hooks import this module on every domain start, so it imports nothing
beyond the standard library's cheapest modules at import time: no lxml, no
``typing``, no ``dataclasses`` (its values are model.Frozen), and expat
only inside :func:`scan_domain`.
"""

from __future__ import annotations

from .errors import UnsupportedChannel, XmlInputError
from .model import Channel, Connection, Frozen, Target
from .translate import CONNECTIONS, XML_FIELDS, connection_from_xml

# Not typing.TYPE_CHECKING: importing typing costs every hook call.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

#: virsh refuses domain XML over 10 MiB (VSH_MAX_XML_FILE); so do we.
MAX_DOMAIN_XML = 10 * 1024 * 1024

#: Where each value is read from: child tag (``"."`` for ``<channel>`` itself)
#: -> ((value key, XML attribute), ...).  The first child of a tag counts,
#: like ElementTree's ``find()``.
READ_PLAN: dict[str, tuple[tuple[str, str], ...]] = {}
for _field in XML_FIELDS:
    assert _field.xml is not None
    _child, _attribute = _field.xml
    READ_PLAN[_child] = (*READ_PLAN.get(_child, ()), (_field.attr, _attribute))
del _field, _child, _attribute

#: Every value key a read yields (None when absent).
KEYS: tuple[str, ...] = tuple(f.attr for f in XML_FIELDS)
#: value key -> (child tag or ".", attribute): where a writer puts it.
POSITIONS: dict[str, tuple[str, str]] = {
    f.attr: f.xml for f in XML_FIELDS if f.xml is not None
}

_TARGETS: dict[str, Target] = {t.value: t for t in Target}
_CONNECTIONS: dict[str, Connection] = {xml: c for c, (_xl, xml) in CONNECTIONS.items()}


def empty_values() -> dict[str, str | None]:
    """A values dict with every key of :data:`KEYS` unset, for a reader to fill."""
    return dict.fromkeys(KEYS)


def read_into(values: dict[str, str | None], tag: str, get: Callable[[str], str | None]) -> None:
    """Read element ``tag``'s attributes (``"."``: the channel's) with ``get`` into ``values``."""
    for key, attribute in READ_PLAN.get(tag, ()):
        values[key] = get(attribute)


def channel_from_values(values: dict[str, str | None]) -> Channel:
    """Build the model's Channel from what a reader found.

    Raises UnsupportedChannel for a source type the Xen side cannot express
    (tcp, udp, file, spicevmc, ...) or an unknown target type, and the
    model's own errors for a bad name or path.
    """
    name, raw_target = values["name"], values["target"]
    target = _TARGETS.get(raw_target or "")
    if target is None:
        detail = f"target type {raw_target!r} is not xen, virtio or guestfwd"
        raise UnsupportedChannel(name, detail)
    source_type = values["connection"]
    connection = _CONNECTIONS.get(source_type or "")
    if connection is None:
        what = f"source type {source_type!r}" if source_type else "a <channel> without a type"
        raise UnsupportedChannel(name, f"{what} has no Xen equivalent (only unix and pty)")
    return Channel(name, connection, values["path"], None, target)


def connects(values: dict[str, str | None]) -> bool:
    """QEMU connects to the channel's path rather than listening on it.

    libvirt reads a unix source without ``mode`` as connect mode (tested:
    ``virsh define`` on test:///default formats it back as
    ``mode='connect'``), and always writes the mode out when there is a
    path.  A channel without a path gets a generated one in bind mode.
    """
    return values["path"] is not None and values["mode"] in (None, "connect")


# Writing: the fields grouped by element, in the table's (libvirt's) order.
_WRITE_PLAN: list[tuple[str, list[tuple[str, str, frozenset[Connection], str | None]]]] = []
for _field in XML_FIELDS:
    assert _field.xml is not None
    if not _WRITE_PLAN or _WRITE_PLAN[-1][0] != _field.xml[0]:
        _WRITE_PLAN.append((_field.xml[0], []))
    _WRITE_PLAN[-1][1].append(
        (_field.attr, _field.xml[1], _field.xml_connections, _field.xml_default)
    )
del _field
_WRITE_GROUPS = dict(_WRITE_PLAN)


def defaults(tag: str, connection: Connection | None) -> list[tuple[str, str]]:
    """(attribute, default) of element ``tag`` for a channel of ``connection``.

    What a writer fills in when it writes that element: ``mode='bind'`` on
    a unix channel's ``<source>``.
    """
    return [
        (attribute, default)
        for _key, attribute, connections, default in _WRITE_GROUPS.get(tag, ())
        if default is not None and connection in connections
    ]


def xml_attributes(channel: Channel) -> list[tuple[str, list[tuple[str, str]]]]:
    """What ``<channel>`` holds for ``channel``: [(child or ".", [(attribute, value)])].

    In libvirt's order.  An element is written when one of its values is
    set; a field's ``xml_default`` fills its attribute in an element that is
    written anyway (``mode='bind'`` next to a unix path).
    """
    groups: list[tuple[str, list[tuple[str, str]]]] = []
    connection = channel.connection
    for tag, fields in _WRITE_PLAN:
        pairs: list[tuple[str, str]] = []
        written = False
        for key, attribute, connections, default in fields:
            if connection not in connections:
                continue
            value = getattr(channel, key, None)
            if value is None:
                if default is not None:
                    pairs.append((attribute, default))
                continue
            written = True
            text = CONNECTIONS[value][1] if key == "connection" else str(value)
            pairs.append((attribute, text))
        if written:
            groups.append((tag, pairs))
    return groups


# --- the hook's lean reader -------------------------------------------------------


class ScannedDomain(Frozen):
    """What the hook's read-only operations need from the domain XML."""

    __slots__ = ("name", "uuid", "channels", "domain_id")  # noqa: RUF023 (constructor order)
    name: str | None
    uuid: str | None
    channels: tuple[Channel, ...]
    domain_id: int | None

    def __init__(
        self, name: str | None, uuid: str | None, channels: tuple[Channel, ...],
        domain_id: int | None = None,
    ) -> None:
        self._set(name=name, uuid=uuid, channels=tuple(channels), domain_id=domain_id)


def scan_domain(
    data: bytes, targets: Sequence[Target], source: str = "<stdin>", *,
    skip_connect_mode: bool = False,
) -> ScannedDomain:
    """Read name, UUID and the unix/pty channels of ``targets`` from domain XML.

    A lean read-only pass with expat (about 1 ms to import, where lxml costs
    35-50 ms), for the hook's hot path; domxml (lxml) edits XML.  Same
    safety rules as domxml.parse_domain: DOCTYPE/ENTITY declarations are
    refused (libvirt never emits them), and every channel becomes a
    validated :class:`~xen_channel_backend.model.Channel`.  Channels of
    other source types (spicevmc, tcp, ...) or targets are skipped, not
    refused; an empty path counts as none.  With ``skip_connect_mode``
    (the qemu driver) a unix channel whose source is in connect mode is left
    out: QEMU is then the client, and the socket belongs to whoever listens.
    """
    # pyexpat itself: xml.parsers.expat only re-exports it, and importing the
    # xml package on the way costs each hook call ~0.4 ms.
    import pyexpat

    if len(data) > MAX_DOMAIN_XML:
        raise XmlInputError(source, f"document is {len(data)} bytes, over the 10 MiB limit")
    wanted = {t.value for t in targets}
    stack: list[str] = []
    text: dict[str, list[str]] = {"name": [], "uuid": []}
    # Per <channel>: its values, and the child tags still to read.
    found: list[tuple[dict[str, str | None], set[str]]] = []
    domain_id: list[int] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        stack.append(tag)
        depth = len(stack)
        if depth == 1:
            if tag != "domain":
                raise XmlInputError(source, f"root element is <{tag}>, expected <domain>")
            # libvirt's id of a running domain; anything but digits is ignored.
            raw_id = attrs.get("id", "")
            if raw_id.isdigit() and raw_id.isascii() and len(raw_id) < 10:
                domain_id.append(int(raw_id))
        if depth == 3 and tag == "channel" and stack[1] == "devices":
            values = empty_values()
            read_into(values, ".", attrs.get)
            found.append((values, set(READ_PLAN) - {"."}))
        elif depth == 4 and stack[1:3] == ["devices", "channel"]:
            values, pending = found[-1]
            if tag in pending:  # the first <source>/<target> counts
                pending.discard(tag)
                read_into(values, tag, attrs.get)

    def end(tag: str) -> None:
        stack.pop()

    def chars(data: str) -> None:
        if len(stack) == 2 and stack[1] in text:
            text[stack[1]].append(data)

    def refuse(*_args: object) -> None:
        raise XmlInputError(source, "DOCTYPE/ENTITY declarations are not allowed in domain XML")

    parser = pyexpat.ParserCreate()
    # Expat itself refuses them, whatever the document's encoding: a byte
    # search for "<!DOCTYPE" misses a UTF-16 document, whose entities would
    # then be expanded into channel names and paths.
    parser.SetParamEntityParsing(pyexpat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(data, True)
    except pyexpat.ExpatError as exc:
        raise XmlInputError(
            source, f"malformed XML: {pyexpat.ErrorString(exc.code)}", exc.lineno
        ) from None
    channels = []
    for values, _pending in found:
        connection = connection_from_xml(values["connection"] or "")
        if connection is None or values["target"] not in wanted:
            continue
        if skip_connect_mode and connection is Connection.SOCKET and connects(values):
            continue
        values["path"] = values["path"] or None
        channels.append(channel_from_values(values))
    name = "".join(text["name"]).strip() or None
    uuid = "".join(text["uuid"]).strip() or None
    return ScannedDomain(name=name, uuid=uuid, channels=tuple(channels),
                         domain_id=domain_id[0] if domain_id else None)


__all__ = [
    "KEYS",
    "POSITIONS",
    "READ_PLAN",
    "ScannedDomain",
    "channel_from_values",
    "connects",
    "defaults",
    "empty_values",
    "read_into",
    "scan_domain",
    "xml_attributes",
]
