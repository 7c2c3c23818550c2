"""``xen-channel list`` and ``xen-channel show``: the registry, read without libvirt.

These read only the files the hooks keep under the run directory
(registry.py), so they work when libvirtd is down or hung, and never import
lxml or libvirt.  The JSON form is the stable interface for scripts:

    {"domain": NAME, "uuid": UUID, "driver": "qemu"|"libxl",
     "state": "preparing"|"running"|"stopped",
     "channels": [{"name": .., "connection": "socket"|"pty",
                   "path": ..|null, "target": "xen"|"virtio"|"guestfwd"}]}

``list --json`` prints an array of these, ``show --json`` one object.  Each
channel is model.Channel.to_dict()'s form, the one the registry stores
(without the registry's own ``created_dir``); it would carry ``"backend"``
too, but only xl.cfg can set one, and neither the registry nor the metadata
holds it.

With ``--connect URI`` (repeatable) or ``--hosts FILE``, ``list`` and ``show``
read our ``<xcb:channels>`` metadata through libvirt instead
(api.host_inventory / api.host_domain), from any URI libvirt accepts; hosts
are queried concurrently, each with ``--timeout``.  The table gains a HOST
column, and each JSON object gains ``"host": URI`` (first) and
``"persistent": true|false``.  A host that cannot be read gets one error line
on stderr, the others are still listed, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from typing import Any

from .console import Streams
from .errors import InputError, UnknownDomain, UsageError, escaped, shown
from .model import Channel
from .registry import DomainRecord, Registry
from .settings import load_settings

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .api import HostDomain

#: A hosts file is a short list of URIs; anything bigger is not one.
MAX_HOSTS_FILE_BYTES = 1024 * 1024


def domain_json(
    domain: str, uuid: str, driver: str, state: str, channels: Iterable[Channel],
) -> dict[str, Any]:
    """The documented JSON shape of one domain; each channel is Channel.to_dict()'s form."""
    return {
        "domain": domain,
        "uuid": uuid,
        "driver": driver,
        "state": str(state),
        "channels": [c.to_dict() for c in channels],
    }


def record_json(record: DomainRecord) -> dict[str, Any]:
    """One registry record in the documented shape (``name`` becomes ``domain``).

    Only the channels: ``created_dir`` is the registry's own business.
    """
    return domain_json(record.name, record.uuid, record.driver, record.state,
                       (c.channel for c in record.channels))


def _cell(value: str | None) -> str:
    """A table cell or header value from a file, libvirt or a guest: errors.shown
    quotes (and escapes) anything that is not one plain printable word, so a
    cell can neither carry control or bidi characters nor look like two."""
    if value is None:
        return "-"
    plain = value not in ("", "-") and " " not in value and escaped(value) == value
    return value if plain else shown(value)


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
    uris = _uris(args, getattr(args, "connect", None) or [], getattr(args, "hosts", None))
    if uris is not None:
        return _list_hosts(uris, args, streams)
    records = _registry(args).list()
    if args.json:
        _dump([record_json(r) for r in records], streams)
        return 0
    rows = [
        (
            _cell(r.name), r.uuid, _cell(r.driver), _cell(r.state),
            ",".join(_cell(c.name) for c in r.channels) or "-",
        )
        for r in records
    ]
    streams.stdout.write(_table(("DOMAIN", "UUID", "DRIVER", "STATE", "CHANNELS"), rows))
    return 0


def run_show(args: argparse.Namespace, streams: Streams) -> int:
    """``xen-channel show DOMAIN``: one domain's channels (by name or UUID)."""
    connect = getattr(args, "connect", None)
    if connect is not None:
        uris = _uris(args, [connect], None)
        assert uris is not None
        return _show_host(uris[0], args, streams)
    record = _registry(args).get(args.domain)
    if record is None:
        raise UnknownDomain(args.domain)
    if args.json:
        _dump(record_json(record), streams)
        return 0
    _write_domain(streams, (
        f"Domain: {_cell(record.name)}\nUUID:   {record.uuid}\n"
        f"Driver: {_cell(record.driver)}\nState:  {_cell(record.state)}\n"
    ), record.channels)
    return 0


def _write_domain(streams: Streams, header: str, channels: Iterable[Any]) -> None:
    """``show``'s layout: the header lines, then a table of the channels (if any).

    ``channels``: registry records or API ChannelInfos, read alike (name,
    connection, target, path).
    """
    rows = [
        (_cell(c.name), c.connection.value, c.target.value, _cell(c.path))
        for c in channels
    ]
    streams.stdout.write(header)
    if rows:
        streams.stdout.write("\n" + _table(("CHANNEL", "CONNECTION", "TARGET", "PATH"), rows))


# --- many hosts, through libvirt (api.host_inventory) ----------------------------------


def load_hosts(path: str) -> list[str]:
    """The URIs in a hosts file: one per line; blank lines and ``#`` comments skipped.

    A comment is a line starting with ``#``, or anything after whitespace
    and ``#`` (a libvirt URI holds no whitespace).  Raises InputError naming
    the file and line.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_HOSTS_FILE_BYTES + 1)
    except OSError as exc:
        raise InputError(path, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_HOSTS_FILE_BYTES:
        raise InputError(path, f"is over {MAX_HOSTS_FILE_BYTES} bytes; not a hosts file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(path, "is not UTF-8 text") from None
    uris: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) > 1 and not words[1].startswith("#"):
            raise InputError(path, f"expected one URI, found {shown(line.strip())}", number)
        if not words[0].isprintable():
            raise InputError(path, f"URI {shown(words[0])} holds control characters", number)
        uris.append(words[0])
    return uris


def _uris(args: argparse.Namespace, connect: list[str], hosts_file: str | None) -> list[str] | None:
    """The hosts to ask (in order, each once), or None for the local registry."""
    if not connect and hosts_file is None:
        return None
    if args.rundir:
        raise UsageError("--rundir reads the local registry; it cannot be combined with "
                         "--connect or --hosts")
    if not args.timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds, not {args.timeout}")
    uris = list(connect)
    if hosts_file is not None:
        uris.extend(load_hosts(hosts_file))
        if not uris:
            raise InputError(hosts_file, "names no libvirt URI")
    return list(dict.fromkeys(uris))


def host_json(entry: HostDomain) -> dict[str, Any]:
    """One domain read through libvirt: the documented shape plus host and persistent."""
    data = domain_json(entry.domain, entry.uuid, entry.driver, entry.state,
                       (c.channel for c in entry.channels))
    channels = data.pop("channels")
    return {"host": entry.host, **data, "persistent": entry.persistent, "channels": channels}


def _list_hosts(uris: list[str], args: argparse.Namespace, streams: Streams) -> int:
    from .api import host_inventory

    found = host_inventory(uris, timeout=args.timeout)
    if args.json:
        _dump([host_json(d) for d in found.domains], streams)
    else:
        rows = [
            (
                _cell(d.host), _cell(d.domain), _cell(d.uuid), _cell(d.driver), _cell(d.state),
                ",".join(_cell(c.name) for c in d.channels) or "-",
            )
            for d in found.domains
        ]
        streams.stdout.write(
            _table(("HOST", "DOMAIN", "UUID", "DRIVER", "STATE", "CHANNELS"), rows))
    streams.stdout.flush()
    for error in found.errors:
        streams.error(error.message)
    return 1 if found.errors else 0


def _show_host(uri: str, args: argparse.Namespace, streams: Streams) -> int:
    from .api import host_domain

    entry = host_domain(uri, args.domain, timeout=args.timeout)
    if args.json:
        _dump(host_json(entry), streams)
        return 0
    _write_domain(streams, (
        f"Host:   {_cell(entry.host)}\nDomain: {_cell(entry.domain)}\n"
        f"UUID:   {_cell(entry.uuid)}\nDriver: {_cell(entry.driver)}\n"
        f"State:  {_cell(entry.state)}\n"
    ), entry.channels)
    return 0
