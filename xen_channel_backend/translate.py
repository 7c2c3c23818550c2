"""The one mapping table between libvirt's ``<channel>`` and xl's channel SPEC.

Both directions are driven by :data:`FIELDS` and :data:`CONNECTIONS`: domxml
reads and writes XML by it, xlcfg reads and writes SPECs by it.  Nothing else
in the project spells out which xl key corresponds to which XML attribute.

The table's order is the xl key order libvirt itself emits
(``connection=socket,path=P,name=N``, src/libxl/xen_xl.c xenFormatXLChannel),
which the golden files in tests/data/ pin byte for byte.
"""

from __future__ import annotations

from .model import Connection, Frozen


class Field(Frozen):
    """One Channel attribute and where each side keeps it.

    ``xml`` is ``(child, attribute)`` relative to ``<channel>``; ``"."`` means
    the ``<channel>`` element itself; None means libvirt cannot express it.
    ``xl_connections`` limits the xl key to those connection types: xl drops a
    pty's path silently (FACTS §3), so we never write one.
    """

    __slots__ = ("attr", "xl_key", "xml", "xl_connections")
    attr: str
    xl_key: str
    xml: tuple[str, str] | None
    xl_connections: frozenset[Connection]

    # Not a dataclass: the hooks read XML by this table, and importing
    # dataclasses costs each hook call ~8 ms (model.Frozen).
    def __init__(
        self, attr: str, xl_key: str, xml: tuple[str, str] | None,
        xl_connections: frozenset[Connection] = frozenset(Connection),
    ) -> None:
        self._set(attr=attr, xl_key=xl_key, xml=xml, xl_connections=xl_connections)


FIELDS: tuple[Field, ...] = (
    Field("connection", "connection", (".", "type")),
    Field("path", "path", ("source", "path"), frozenset({Connection.SOCKET})),
    Field("name", "name", ("target", "name")),
    Field("backend", "backend", None),
)

#: model value -> (xl ``connection=`` value, libvirt ``<channel type=>``)
CONNECTIONS: dict[Connection, tuple[str, str]] = {
    Connection.SOCKET: ("socket", "unix"),
    Connection.PTY: ("pty", "pty"),
}

XL_KEYS: frozenset[str] = frozenset(f.xl_key for f in FIELDS)


def connection_from_xml(source_type: str) -> Connection | None:
    for connection, (_xl, xml) in CONNECTIONS.items():
        if xml == source_type:
            return connection
    return None


def connection_from_xl(value: str) -> Connection | None:
    # xl compares with strcmp: "SOCKET" is refused by xl, so it is by us.
    for connection, (xl, _xml) in CONNECTIONS.items():
        if xl == value:
            return connection
    return None
