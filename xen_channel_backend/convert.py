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
import dataclasses
from typing import TYPE_CHECKING

from . import domxml, xlcfg
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
        target = domxml.target_type(element)
        if target == Target.XEN:
            # A tcp/udp/file/... source raises UnsupportedChannel naming it.
            channels.append(domxml.channel_from_element(element))
        elif target == Target.VIRTIO and retarget_virtio:
            retargeted = _retarget(element, streams)
            if retargeted is not None:
                channels.append(retargeted)
        else:
            hint = (
                " (use --retarget-virtio to make it a Xen channel)"
                if target == Target.VIRTIO
                else ""
            )
            streams.warn(
                f"skipping {_describe(element)}: Xen channels must have target type 'xen'{hint}"
            )
    return channels


def _retarget(element: etree._Element, streams: Streams) -> Channel | None:
    try:
        channel = domxml.channel_from_element(element)
    except UnsupportedChannel as exc:
        # A virtio channel with e.g. a spicevmc source has no Xen form.
        streams.warn(f"skipping {_describe(element)}: {exc.detail}")
        return None
    # Re-validated as a Xen channel: a name is now required.
    return channel.replace(target=Target.XEN)


def _describe(element: etree._Element) -> str:
    target = element.find("target")
    kind = target.get("type") if target is not None else None
    name = target.get("name") if target is not None else None
    label = f"{kind or 'untargeted'} channel"
    if name:
        return f"{label} {shown(name)}"
    if target is not None and target.get("address"):
        return f"{label} to {shown(target.get('address'))} port {target.get('port')}"
    return f"unnamed {label}"


def _to_xl(args: argparse.Namespace, streams: Streams) -> str:
    data, label = read_input(args.input, streams)
    root = domxml.parse_domain(data, label).getroot()
    channels = xen_channels_from_domain(root, args.retarget_virtio, streams)
    for channel in channels:
        if channel.path is None and channel.connection is Connection.SOCKET:
            raise UnsupportedChannel(
                channel.name,
                "is a unix channel without a socket path; xl requires path= "
                "(give it one, e.g. with 'xen-channel fill')",
            )
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


__all__ = ["run", "xen_channels_from_domain"]
