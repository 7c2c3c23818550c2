"""``xen-channel list`` and ``xen-channel show``: the registry, read without libvirt.

These read only the files the hooks keep under the run directory
(registry.py), so they work when libvirtd is down or hung, and never import
lxml or libvirt.  The JSON form is the stable interface for scripts:

    {"domain": NAME, "uuid": UUID, "driver": "qemu"|"libxl",
     "state": "preparing"|"running"|"stopped",
     "channels": [{"name": .., "connection": "socket"|"pty",
                   "path": ..|null, "target": "xen"|"virtio"|"guestfwd"}]}

``list --json`` prints an array of these, ``show --json`` one object.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from .console import Streams
from .errors import UnknownDomain
from .registry import DomainRecord, Registry
from .settings import load_settings


def record_json(record: DomainRecord) -> dict[str, Any]:
    """The documented JSON shape of one domain (``name`` becomes ``domain``)."""
    return {
        "domain": record.name,
        "uuid": record.uuid,
        "driver": record.driver,
        "state": record.state,
        "channels": [
            {
                "name": c.name,
                "connection": c.connection.value,
                "path": c.path,
                "target": c.target.value,
            }
            for c in record.channels
        ],
    }


def _printable(value: str | None) -> str:
    """A table cell: names come from domain XML, so escape anything unprintable."""
    if value is None:
        return "-"
    return value if value.isprintable() and " " not in value else repr(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = [headers, *rows]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in lines
    )


def _registry(args: argparse.Namespace) -> Registry:
    return Registry(load_settings(args.rundir).rundir)


def _dump(value: object, streams: Streams) -> None:
    streams.stdout.write(json.dumps(value, indent=2) + "\n")


def run_list(args: argparse.Namespace, streams: Streams) -> int:
    """``xen-channel list``: every registered domain, one per line."""
    records = _registry(args).list()
    if args.json:
        _dump([record_json(r) for r in records], streams)
        return 0
    rows = [
        (
            _printable(r.name), r.uuid, r.driver, r.state,
            ",".join(_printable(c.name) for c in r.channels) or "-",
        )
        for r in records
    ]
    streams.stdout.write(_table(("DOMAIN", "UUID", "DRIVER", "STATE", "CHANNELS"), rows))
    return 0


def run_show(args: argparse.Namespace, streams: Streams) -> int:
    """``xen-channel show DOMAIN``: one domain's channels (by name or UUID)."""
    record = _registry(args).get(args.domain)
    if record is None:
        raise UnknownDomain(args.domain)
    if args.json:
        _dump(record_json(record), streams)
        return 0
    header = (
        f"Domain: {_printable(record.name)}\nUUID:   {record.uuid}\n"
        f"Driver: {record.driver}\nState:  {record.state}\n"
    )
    rows = [
        (_printable(c.name), c.connection.value, c.target.value, _printable(c.path))
        for c in record.channels
    ]
    streams.stdout.write(header)
    if rows:
        streams.stdout.write("\n" + _table(("CHANNEL", "CONNECTION", "TARGET", "PATH"), rows))
    return 0
