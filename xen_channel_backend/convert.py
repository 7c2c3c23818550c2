"""``xen-channel convert``: channels between libvirt domain XML and xl.cfg.

``--to xl`` reads domain XML and prints xl's ``channel = [ ... ]`` line (or,
with ``--into XL.cfg``, that file with its channel settings replaced);
``--to libvirt`` reads an xl.cfg and prints a ``<devices>`` element (or, with
``--into DOMAIN.xml``, that domain with its Xen channels replaced).

All XML work is done by :mod:`domxml` and all xl.cfg work by :mod:`xlcfg`;
this module only decides which channels cross over and says what does not.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from . import channelxml, domxml, xlcfg
from .console import Streams, read_input, write_output
from .errors import UnsupportedChannel, UsageError, shown
from .model import Channel, Connection, Target

if TYPE_CHECKING:
    from lxml import etree


def run(args: argparse.Namespace, streams: Streams) -> int:
    """Handler of ``xen-channel convert`` (cli.py declares its arguments)."""
    if args.input == "-" and args.into == "-":
        raise UsageError("FILE and --into cannot both be '-' (stdin)")
    if args.to == "xl":
        text = _to_xl(args, streams)
    else:
        if args.retarget_virtio:
            streams.warn("--retarget-virtio only applies to --to xl; ignored")
        text = _to_libvirt(args, streams)
    # Everything is computed before anything is written: a bad input never
    # leaves a half-written or emptied output file behind.
    if text or args.output not in (None, "-"):
        write_output(text, args.output, streams)
    return 0


# --- libvirt -> xl ----------------------------------------------------------------


def xen_channels_from_domain(
    root: etree._Element, retarget_virtio: bool, streams: Streams
) -> list[Channel]:
    """The channels a Xen guest gets from this domain, in document order.

    xen targets are converted; virtio ones only with ``retarget_virtio``
    (moving a KVM guest to Xen); everything else is skipped with a warning
    naming it, since libxl refuses any other target type at start.
    """
    channels: list[Channel] = []
    for element in domxml.channel_elements(root):
        values = domxml.channel_values(element)
        target = values["target"]
        if target == Target.XEN:
            # A tcp/udp/file/... source raises UnsupportedChannel naming it.
            channels.append(channelxml.channel_from_values(values))
        elif target == Target.VIRTIO and retarget_virtio:
            retargeted = _retarget(values, streams)
            if retargeted is not None:
                channels.append(retargeted)
        else:
            hint = (
                " (use --retarget-virtio to make it a Xen channel)"
                if target == Target.VIRTIO
                else ""
            )
            streams.warn(
                f"skipping {_describe(values)}: Xen channels must have target type 'xen'{hint}"
            )
    return channels


def _retarget(values: dict[str, str | None], streams: Streams) -> Channel | None:
    try:
        channel = channelxml.channel_from_values(values)
    except UnsupportedChannel as exc:
        # A virtio channel with e.g. a spicevmc source has no Xen form.
        streams.warn(f"skipping {_describe(values)}: {exc.detail}")
        return None
    # Re-validated as a Xen channel: a name is now required.
    return channel.replace(target=Target.XEN)


def _describe(values: dict[str, str | None]) -> str:
    """How a warning names a channel: by its target name, or guestfwd's address."""
    name, address = values["name"], values["address"]
    label = f"{values['target'] or 'untargeted'} channel"
    if name:
        return f"{label} {shown(name)}"
    if address:
        return f"{label} to {shown(address)} port {values['port']}"
    return f"unnamed {label}"


def xl_channels(data: bytes, label: str, retarget_virtio: bool, streams: Streams) -> list[Channel]:
    """What ``--to xl`` writes for a domain XML document: its Xen channels, each with a path.

    The document is only read, never written back, so it is parsed
    read-only (domxml.parse_domain), with every safety check.
    """
    root = domxml.parse_domain(data, label, read_only=True).getroot()
    channels = xen_channels_from_domain(root, retarget_virtio, streams)
    for channel in channels:
        if channel.path is None and channel.connection is Connection.SOCKET:
            raise UnsupportedChannel(
                channel.name,
                "is a unix channel without a socket path; xl requires path= "
                "(give it one, e.g. with 'xen-channel fill')",
            )
    return channels


def _to_xl(args: argparse.Namespace, streams: Streams) -> str:
    data, label = read_input(args.input, streams)
    channels = xl_channels(data, label, args.retarget_virtio, streams)
    if args.into is None:
        return xlcfg.format_setting(channels) + "\n" if channels else ""
    cfg_data, cfg_label = read_input(args.into, streams)
    config = xlcfg.parse_config(cfg_data, cfg_label)
    # XML has no backend=; a channel that keeps its name keeps the backend
    # the xl.cfg gave it, so an xl -> XML -> xl edit loses nothing.
    backends = xlcfg.backends_by_name(config)
    channels = [
        c.replace(backend=backends[c.name]) if c.name in backends else c
        for c in channels
    ]
    return xlcfg.replace_channels(config, channels)


# --- xl -> libvirt ----------------------------------------------------------------


def _to_libvirt(args: argparse.Namespace, streams: Streams) -> str:
    from lxml import etree

    data, label = read_input(args.input, streams)
    parsed = xlcfg.read_channels(xlcfg.parse_config(data, label))
    for warning in parsed.warnings:
        streams.warn(warning)
    for channel in parsed.channels:
        if channel.backend is not None:
            streams.warn(
                f"channel {shown(channel.name)}: backend={shown(channel.backend)} has no place "
                "in libvirt XML; dropped"
            )
    channels = [c.replace(backend=None) for c in parsed.channels]
    if args.into is None:
        devices = etree.Element("devices")
        for channel in channels:
            devices.append(domxml.channel_element(channel))
        etree.indent(devices, space="  ")
        return etree.tostring(devices, encoding="unicode") + "\n"
    xml_data, xml_label = read_input(args.into, streams)
    tree = domxml.parse_domain(xml_data, xml_label)
    domxml.replace_channels(tree.getroot(), channels, (Target.XEN,))
    return domxml.serialize(tree)


__all__ = ["run", "xen_channels_from_domain", "xl_channels"]
