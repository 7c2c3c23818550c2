"""Hosts for the fleet inventory (``list/show --connect``, api.host_inventory).

Each "host" is a real libvirt connection on this machine: libvirt's test
driver opened on a custom node XML file (``test:///path/to/node.xml``), whose
domains carry our ``<xcb:channels>`` metadata as ``xen-channel fill`` writes
it.  In a node file a domain runs unless it holds ``<test:runstate>5``
(shut off); all of them are persistent.  A host that is down is a
``qemu+unix`` URI whose socket does not exist, and a host that hangs is a
Unix socket that listens but never answers (:func:`hung_host`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from collections.abc import Iterator, Sequence
from xml.sax.saxutils import escape, quoteattr

NAMESPACE = "urn:xen-channel-backend:channels:1"
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"
DOWN_URI = "qemu+unix:///system?socket=/nonexistent/xcb-test/libvirt-sock"


@dataclasses.dataclass(frozen=True)
class NodeDomain:
    """One domain of a node file; ``channels`` None: no metadata at all."""

    name: str
    uuid: str
    running: bool = True
    channels: Sequence[tuple[str, str, str | None, str]] | None = ()  # name, conn, path, target
    raw_metadata: str | None = None  # instead of channels: this text inside <metadata>


def agent_channels(rundir: str, uuid: str) -> list[tuple[str, str, str | None, str]]:
    """A socket channel in our layout and a pty channel, as fill writes them."""
    return [
        ("org.example.agent.0", "socket", f"{rundir}/{uuid}/org.example.agent.0", "xen"),
        ("org.example.console.0", "pty", None, "xen"),
    ]


def domain_xml(domain: NodeDomain) -> str:
    metadata = ""
    if domain.raw_metadata is not None:
        metadata = f"<metadata>{domain.raw_metadata}</metadata>"
    elif domain.channels is not None:
        items = "".join(
            f"<xcb:channel name={quoteattr(name)} connection={quoteattr(conn)}"
            + (f" path={quoteattr(path)}" if path is not None else "")
            + f" target={quoteattr(target)}/>"
            for name, conn, path, target in domain.channels
        )
        metadata = (f"<metadata><xcb:channels xmlns:xcb={quoteattr(NAMESPACE)}>{items}"
                    "</xcb:channels></metadata>")
    runstate = "" if domain.running else "<test:runstate>5</test:runstate>"
    return (
        f"<domain type='test' xmlns:test={quoteattr(TEST_NS)}>"
        f"<name>{escape(domain.name)}</name><uuid>{domain.uuid}</uuid>{metadata}"
        "<memory>65536</memory><vcpu>1</vcpu><os><type>hvm</type></os>"
        f"{runstate}</domain>\n"
    )


def node_xml(domains: Sequence[NodeDomain]) -> str:
    return (
        "<node>\n<cpu><nodes>1</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads>"
        "<active>2</active><mhz>2000</mhz><model>i686</model></cpu>\n"
        "<memory>8388608</memory>\n" + "".join(domain_xml(d) for d in domains) + "</node>\n"
    )


def write_host(directory: str, tag: str, domains: Sequence[NodeDomain]) -> str:
    """Write a node file for ``domains``; returns its ``test:///...`` URI."""
    path = os.path.join(os.path.abspath(directory), f"{tag}.xml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(node_xml(domains))
    return f"test://{path}"


@contextlib.contextmanager
def hung_host(directory: str) -> Iterator[str]:
    """A URI whose socket accepts the connection (backlog) but never answers."""
    path = os.path.join(os.path.abspath(directory), "hung.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        server.bind(path)
        server.listen(64)
        yield f"qemu+unix:///system?socket={path}"
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
