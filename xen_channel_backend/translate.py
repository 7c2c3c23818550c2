"""The one mapping table between libvirt's ``<channel>`` and xl's channel SPEC.

Both directions are driven by :data:`FIELDS` and :data:`CONNECTIONS`: the
XML readers and writer (:mod:`channelxml`, used by :mod:`domxml` with lxml
and by the hook with expat) walk the table's XML positions, and xlcfg reads
and writes SPECs by its xl keys.  Nothing else in the project spells out
which attribute of ``<channel>`` or which xl key holds what.

The table's order is the xl key order libvirt itself emits
(``connection=socket,path=P,name=N``, src/libxl/xen_xl.c xenFormatXLChannel)
and, within each element, libvirt's XML attribute order
(``<source mode= path=>``, ``<target type= name=>``); the golden files in
tests/data/ pin both byte for byte.
"""

from __future__ import annotations

from .model import Connection, Frozen


class Field(Frozen):
    """One channel attribute and where each side keeps it.

    ``attr`` is the :class:`~xen_channel_backend.model.Channel` attribute, or
    for the XML-only fields (``mode``, guestfwd's ``address`` and ``port``)
    the key readers use.  ``xl_key`` is xl's SPEC key, None when xl has none.
    ``xml`` is ``(child, attribute)`` relative to ``<channel>``; ``"."`` means
    the ``<channel>`` element itself; None means libvirt cannot express it.
    ``xl_connections`` limits the xl key to those connection types: xl drops a
    pty's path silently (background.md §3), so we never write one.  ``xml_connections``
    does the same for the XML attribute, and ``xml_default`` is written when
    the value is unset but its element is written anyway: libvirt requires a
    ``mode`` on a unix ``<source>``, and ``bind`` is QEMU listening.
    The ``connection`` value is translated by :data:`CONNECTIONS` on both
    sides; every other value is the same string on both.
    """

    __slots__ = ("attr", "xl_connections", "xl_key", "xml", "xml_connections", "xml_default")
    attr: str
    xl_key: str | None
    xml: tuple[str, str] | None
    xl_connections: frozenset[Connection]
    xml_connections: frozenset[Connection]
    xml_default: str | None

    # Not a dataclass: the hooks read XML by this table, and importing
    # dataclasses costs each hook call ~8 ms (model.Frozen).
    def __init__(
        self, attr: str, xl_key: str | None, xml: tuple[str, str] | None,
        xl_connections: frozenset[Connection] = frozenset(Connection),
        xml_connections: frozenset[Connection] = frozenset(Connection),
        xml_default: str | None = None,
    ) -> None:
        self._set(attr=attr, xl_key=xl_key, xml=xml, xl_connections=xl_connections,
                  xml_connections=xml_connections, xml_default=xml_default)


_UNIX = frozenset({Connection.SOCKET})

FIELDS: tuple[Field, ...] = (
    Field("connection", "connection", (".", "type")),
    Field("mode", None, ("source", "mode"), xml_connections=_UNIX, xml_default="bind"),
    Field("path", "path", ("source", "path"), xl_connections=_UNIX),
    Field("target", None, ("target", "type")),
    Field("name", "name", ("target", "name")),
    # A guestfwd target's address, read only to name the channel in messages.
    Field("address", None, ("target", "address")),
    Field("port", None, ("target", "port")),
    Field("backend", "backend", None),
)

#: The fields xl's SPEC has, in libvirt's key order.
XL_FIELDS: tuple[Field, ...] = tuple(f for f in FIELDS if f.xl_key is not None)
#: The fields libvirt's XML has, in libvirt's attribute order.
XML_FIELDS: tuple[Field, ...] = tuple(f for f in FIELDS if f.xml is not None)

#: model value -> (xl ``connection=`` value, libvirt ``<channel type=>``)
CONNECTIONS: dict[Connection, tuple[str, str]] = {
    Connection.SOCKET: ("socket", "unix"),
    Connection.PTY: ("pty", "pty"),
}

XL_KEYS: frozenset[str] = frozenset(f.xl_key for f in XL_FIELDS if f.xl_key is not None)

_FROM_XML: dict[str, Connection] = {xml: c for c, (_xl, xml) in CONNECTIONS.items()}
# xl compares with strcmp: "SOCKET" is refused by xl, so it is by us.
_FROM_XL: dict[str, Connection] = {xl: c for c, (xl, _xml) in CONNECTIONS.items()}


def connection_from_xml(source_type: str) -> Connection | None:
    return _FROM_XML.get(source_type)


def connection_from_xl(value: str) -> Connection | None:
    return _FROM_XL.get(value)
