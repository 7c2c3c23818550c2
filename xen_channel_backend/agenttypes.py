"""What a guest agent reports, as typed values: qemu-ga's JSON in, frozen dataclasses out.

Pure functions: no I/O, no imports beyond the standard library's
dataclasses.  The shapes follow libvirt's QEMU driver, so that what a
management tool reads here is what it reads from ``virDomainGetGuestInfo``
and ``virDomainInterfaceAddresses(..., SOURCE_AGENT)`` on a KVM host:

- interface names with an alias suffix (``eth0:1``) merge into ``eth0``,
  as libvirt merges them;
- :meth:`GuestInfo.params` lists libvirt's typed-parameter keys
  (``os.id``, ``fs.0.mountpoint``, ``if.count``...) in libvirt's order.

Everything here comes from the guest and is untrusted.  A required field of
the wrong type raises ValueError naming it (the caller turns that into a
one-line AgentProtocolError); an optional field of the wrong type counts as
absent.  Strings are kept as sent: escaping is the printer's job
(errors.escaped).

Where libvirt maps a guest disk to the domain's ``<disk>`` by its PCI
address, there is no domain definition to consult here; the disk's
``alias`` is the guest's device name instead (``xvda`` for ``/dev/xvda``).
On a Xen guest these are the names ``<target dev=.../>`` uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

#: One typed parameter value, as libvirt types it (uint/ullong/int, string, boolean).
ParamValue = int | str | bool

#: ``guest-get-osinfo`` keys -> libvirt keys, in libvirt's order.
_OS_KEYS = (
    ("id", "id"),
    ("name", "name"),
    ("pretty-name", "pretty_name"),
    ("version", "version"),
    ("version-id", "version_id"),
    ("machine", "machine"),
    ("variant", "variant"),
    ("variant-id", "variant_id"),
    ("kernel-release", "kernel_release"),
    ("kernel-version", "kernel_version"),
)


@dataclasses.dataclass(frozen=True, slots=True)
class GuestIPAddress:
    """One address of a guest interface: ``type`` is ``"ipv4"`` or ``"ipv6"``."""

    type: str
    address: str
    prefix: int


@dataclasses.dataclass(frozen=True, slots=True)
class GuestInterface:
    """One network interface as the guest sees it (``guest-network-get-interfaces``)."""

    name: str
    hwaddr: str | None
    addresses: tuple[GuestIPAddress, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class GuestOSInfo:
    """``guest-get-osinfo``: the guest's os-release and uname; None where not reported."""

    id: str | None = None
    name: str | None = None
    pretty_name: str | None = None
    version: str | None = None
    version_id: str | None = None
    machine: str | None = None
    variant: str | None = None
    variant_id: str | None = None
    kernel_release: str | None = None
    kernel_version: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class GuestUser:
    """A logged-in user; ``login_time`` in milliseconds since the epoch (as libvirt)."""

    name: str
    domain: str | None
    login_time: int


@dataclasses.dataclass(frozen=True, slots=True)
class GuestTimezone:
    """``name`` (None when the guest has none to report) and ``offset`` from UTC in seconds."""

    name: str | None
    offset: int


@dataclasses.dataclass(frozen=True, slots=True)
class GuestFSDisk:
    """A disk behind a filesystem: ``alias`` is the guest's device name (``xvda``)."""

    alias: str | None
    serial: str | None
    device: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class GuestFilesystem:
    """A mounted filesystem (``guest-get-fsinfo``); sizes are None from older agents."""

    mountpoint: str
    name: str
    fstype: str
    total_bytes: int | None
    used_bytes: int | None
    disks: tuple[GuestFSDisk, ...]

    @property
    def targets(self) -> tuple[str, ...]:
        """The disk names, as ``virsh domfsinfo`` lists them in its Target column."""
        return tuple(d.alias for d in self.disks if d.alias)


@dataclasses.dataclass(frozen=True, slots=True)
class GuestDisk:
    """A block device (``guest-get-disks``); ``dependencies`` lists what it sits on."""

    name: str
    partition: bool
    dependencies: tuple[str, ...]
    serial: str | None
    alias: str | None
    guest_alias: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class GuestTime:
    """The guest's clock: ``seconds`` since the epoch and ``nseconds`` past it."""

    seconds: int
    nseconds: int


@dataclasses.dataclass(frozen=True, slots=True)
class GuestInfo:
    """What ``guestinfo`` asked for; a group not asked for (or not supported) is None."""

    users: tuple[GuestUser, ...] | None = None
    os: GuestOSInfo | None = None
    timezone: GuestTimezone | None = None
    hostname: str | None = None
    filesystems: tuple[GuestFilesystem, ...] | None = None
    disks: tuple[GuestDisk, ...] | None = None
    interfaces: tuple[GuestInterface, ...] | None = None

    def params(self) -> list[tuple[str, ParamValue]]:
        """libvirt's typed parameters for this information, in libvirt's order."""
        return list(_params(self))


# --- parsing ----------------------------------------------------------------------


def parse_interfaces(value: Any) -> tuple[GuestInterface, ...]:
    """``guest-network-get-interfaces``; aliases (``eth0:1``) merge into their interface."""
    merged: dict[str, tuple[str | None, list[GuestIPAddress]]] = {}
    for index, item in enumerate(_list(value, "interfaces")):
        where = f"interface {index}"
        entry = _object(item, where)
        full_name = _required_str(entry, "name", where)
        name = full_name.split(":", 1)[0]
        addresses = [
            _address(address, f"{where} address {n}")
            for n, address in enumerate(_optional_list(entry, "ip-addresses"))
        ]
        if name in merged:
            merged[name][1].extend(addresses)
        else:
            merged[name] = (_optional_str(entry, "hardware-address"), addresses)
    return tuple(
        GuestInterface(name, hwaddr, tuple(addresses))
        for name, (hwaddr, addresses) in merged.items()
    )


def _address(value: Any, where: str) -> GuestIPAddress:
    entry = _object(value, where)
    kind = _required_str(entry, "ip-address-type", where)
    if kind not in ("ipv4", "ipv6"):
        raise ValueError(f"{where}: unknown ip-address-type")
    return GuestIPAddress(
        kind, _required_str(entry, "ip-address", where), _required_int(entry, "prefix", where)
    )


def parse_osinfo(value: Any) -> GuestOSInfo:
    entry = _object(value, "osinfo")
    return GuestOSInfo(**{field: _optional_str(entry, key) for key, field in _OS_KEYS})


def parse_hostname(value: Any) -> str:
    return _required_str(_object(value, "host name"), "host-name", "host name")


def parse_users(value: Any) -> tuple[GuestUser, ...]:
    users = []
    for index, item in enumerate(_list(value, "users")):
        entry = _object(item, f"user {index}")
        login = entry.get("login-time")
        if not isinstance(login, int | float) or isinstance(login, bool):
            raise ValueError(f"user {index}: login-time is not a number")
        users.append(
            GuestUser(
                _required_str(entry, "user", f"user {index}"),
                _optional_str(entry, "domain"),
                int(login * 1000),
            )
        )
    return tuple(users)


def parse_timezone(value: Any) -> GuestTimezone:
    entry = _object(value, "timezone")
    return GuestTimezone(_optional_str(entry, "zone"), _required_int(entry, "offset", "timezone"))


def parse_filesystems(value: Any) -> tuple[GuestFilesystem, ...]:
    filesystems = []
    for index, item in enumerate(_list(value, "filesystems")):
        where = f"filesystem {index}"
        entry = _object(item, where)
        disks = []
        for n, disk in enumerate(_optional_list(entry, "disk")):
            disk_entry = _object(disk, f"{where} disk {n}")
            device = _optional_str(disk_entry, "dev")
            disks.append(
                GuestFSDisk(_device_name(device), _optional_str(disk_entry, "serial"), device)
            )
        filesystems.append(
            GuestFilesystem(
                mountpoint=_required_str(entry, "mountpoint", where),
                name=_required_str(entry, "name", where),
                fstype=_required_str(entry, "type", where),
                total_bytes=_optional_int(entry, "total-bytes"),
                used_bytes=_optional_int(entry, "used-bytes"),
                disks=tuple(disks),
            )
        )
    return tuple(filesystems)


def parse_disks(value: Any) -> tuple[GuestDisk, ...]:
    disks = []
    for index, item in enumerate(_list(value, "disks")):
        where = f"disk {index}"
        entry = _object(item, where)
        partition = entry.get("partition")
        if not isinstance(partition, bool):
            raise ValueError(f"{where}: partition is not true or false")
        dependencies = tuple(
            _str(dep, f"{where} dependency {n}")
            for n, dep in enumerate(_optional_list(entry, "dependencies"))
        )
        address = entry.get("address")
        address = address if isinstance(address, dict) else {}
        disks.append(
            GuestDisk(
                name=_required_str(entry, "name", where),
                partition=partition,
                dependencies=dependencies,
                serial=_optional_str(address, "serial"),
                alias=_device_name(_optional_str(address, "dev")),
                guest_alias=_optional_str(entry, "alias"),
            )
        )
    return tuple(disks)


def parse_time(value: Any) -> GuestTime:
    """``guest-get-time``: nanoseconds since the epoch."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError("time is not an integer")
    seconds, nseconds = divmod(value, 1_000_000_000)
    return GuestTime(seconds, nseconds)


def parse_frozen_count(value: Any) -> int:
    """``guest-fsfreeze-freeze-list`` and ``-thaw``: how many filesystems."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError("the count of filesystems is not a non-negative integer")
    return value


def _device_name(device: str | None) -> str | None:
    """``/dev/xvda`` -> ``xvda``, the name ``<target dev=.../>`` uses on Xen."""
    if not device:
        return None
    return device.rsplit("/", 1)[-1] or None


# --- typed parameters, as libvirt's QEMU driver lays them out ---------------------


def _params(info: GuestInfo) -> Iterator[tuple[str, ParamValue]]:
    if info.users is not None:
        yield "user.count", len(info.users)
        for i, user in enumerate(info.users):
            yield f"user.{i}.name", user.name
            if user.domain is not None:
                yield f"user.{i}.domain", user.domain
            yield f"user.{i}.login-time", user.login_time
    if info.os is not None:
        for _key, field in _OS_KEYS:
            value = getattr(info.os, field)
            if value is not None:
                yield f"os.{field.replace('_', '-')}", value
    if info.timezone is not None:
        if info.timezone.name is not None:
            yield "timezone.name", info.timezone.name
        yield "timezone.offset", info.timezone.offset
    if info.hostname is not None:
        yield "hostname", info.hostname
    if info.filesystems is not None:
        yield "fs.count", len(info.filesystems)
        for i, fs in enumerate(info.filesystems):
            yield f"fs.{i}.name", fs.name
            yield f"fs.{i}.mountpoint", fs.mountpoint
            yield f"fs.{i}.fstype", fs.fstype
            if fs.total_bytes is not None:
                yield f"fs.{i}.total-bytes", fs.total_bytes
            if fs.used_bytes is not None:
                yield f"fs.{i}.used-bytes", fs.used_bytes
            yield f"fs.{i}.disk.count", len(fs.disks)
            for j, fs_disk in enumerate(fs.disks):
                if fs_disk.alias is not None:
                    yield f"fs.{i}.disk.{j}.alias", fs_disk.alias
                if fs_disk.serial is not None:
                    yield f"fs.{i}.disk.{j}.serial", fs_disk.serial
                if fs_disk.device is not None:
                    yield f"fs.{i}.disk.{j}.device", fs_disk.device
    if info.disks is not None:
        yield "disk.count", len(info.disks)
        for i, disk in enumerate(info.disks):
            yield f"disk.{i}.name", disk.name
            yield f"disk.{i}.partition", disk.partition
            if disk.dependencies:
                yield f"disk.{i}.dependency.count", len(disk.dependencies)
                for j, dependency in enumerate(disk.dependencies):
                    yield f"disk.{i}.dependency.{j}.name", dependency
            if disk.serial is not None:
                yield f"disk.{i}.serial", disk.serial
            if disk.alias is not None:
                yield f"disk.{i}.alias", disk.alias
            if disk.guest_alias is not None:
                yield f"disk.{i}.guest_alias", disk.guest_alias
    if info.interfaces is not None:
        yield "if.count", len(info.interfaces)
        for i, iface in enumerate(info.interfaces):
            yield f"if.{i}.name", iface.name
            if iface.hwaddr is not None:
                yield f"if.{i}.hwaddr", iface.hwaddr
            yield f"if.{i}.addr.count", len(iface.addresses)
            for j, address in enumerate(iface.addresses):
                yield f"if.{i}.addr.{j}.type", address.type
                yield f"if.{i}.addr.{j}.addr", address.address
                yield f"if.{i}.addr.{j}.prefix", address.prefix


# --- checked access to untrusted JSON ------------------------------------------


def _object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{where} is not a JSON object")
    return value


def _list(value: Any, where: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{where}: not a JSON array")
    return value


def _optional_list(entry: Mapping[str, Any], key: str) -> Sequence[Any]:
    value = entry.get(key)
    return value if isinstance(value, list) else ()


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where} is not a string")
    return value


def _required_str(entry: Mapping[str, Any], key: str, where: str) -> str:
    value = entry.get(key)
    if not isinstance(value, str):
        raise ValueError(f"{where}: {key} is missing or not a string")
    return value


def _optional_str(entry: Mapping[str, Any], key: str) -> str | None:
    value = entry.get(key)
    return value if isinstance(value, str) else None


def _required_int(entry: Mapping[str, Any], key: str, where: str) -> int:
    value = entry.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{where}: {key} is missing or not an integer")
    return value


def _optional_int(entry: Mapping[str, Any], key: str) -> int | None:
    value = entry.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
