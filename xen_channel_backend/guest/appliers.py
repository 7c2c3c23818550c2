"""Appliers: turn the items of a channel-protocol ``config`` into guest files.

Each payload key (``hostname``, ``addresses``, ``ssh_keys``) has an applier in
a :class:`Registry`; keys under ``extra`` are ``unsupported`` unless an
applier was registered for them with :meth:`Registry.register_extra`.

Applying is two-phase.  :meth:`Registry.plan` validates the whole payload
without touching a file; one problem anywhere rejects the payload whole
(the ack's status "error"), so a typo in an address can never leave the
hostname changed and the keys not.  Only then is each item applied on its
own, and each gets its own status: ``applied``, ``unchanged`` (idempotent
re-apply), ``failed`` or ``unsupported``.

Two kinds of rule apply.  The protocol's rules (docs/protocol.md 4.3) are
defined once, in :mod:`.protocol` (``hostname_problem``,
``address_entry_problems``, ``ssh_entry_problems``, ...); the appliers call
those functions while splitting the payload into items, so a payload the
contract calls malformed is rejected whole, naming the item at fault.  This
guest's own, stricter rules - :func:`guest_hostname_problem` (the kernel's
64 characters), :func:`guest_key_problem` (no options, a real public key),
:func:`guest_interface_problem` (no networkd glob characters) - judge a
well-formed value and fail only its own item, as does a user who does not
exist.

Every file is written below ``ApplyContext.root`` through :class:`RootFS`,
which resolves symlinks itself as if the root were ``/`` (so a symlink can
never lead a write out of the root) and writes files atomically with their
final mode and owner already set.  Tests pass a temporary root and touch
nothing real.

The guest agent imports this module, so it uses the standard library only
(a guest may have no lxml or libvirt).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import errno
import ipaddress
import logging
import os
import re
import shutil
import socket
import stat
import struct
import subprocess
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

from .. import protocol
from ..atomic import replace_at
from ..errors import XenChannelError, escaped, shown

log = logging.getLogger(__name__)

APPLIED = "applied"
UNCHANGED = "unchanged"
FAILED = "failed"
UNSUPPORTED = "unsupported"

#: Header of every file we own, so an admin knows where it comes from.
MANAGED_HEADER = "# Written by xen-channel-guest from the host; local edits are overwritten.\n"


# --------------------------------------------------------------------------
# Results, items and the applier interface
# --------------------------------------------------------------------------


class ApplyFailed(XenChannelError):
    """One item could not be applied (its ack entry says "failed" with ``detail``)."""

    def __init__(self, item: str, detail: str) -> None:
        super().__init__(item, detail)
        self.item = item
        self.detail = detail

    def message(self) -> str:
        return f"{self.item}: {self.detail}"


@dataclasses.dataclass(frozen=True, slots=True)
class ItemResult:
    """The outcome of one item, as the ack's ``results`` entry carries it."""

    item: str
    status: str
    detail: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"item": self.item, "status": self.status, "detail": self.detail}


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    """Why a payload was rejected: the item at fault and a one-line reason."""

    item: str
    message: str

    def __str__(self) -> str:
        return f"{self.item}: {self.message}"


@dataclasses.dataclass(frozen=True, slots=True)
class Item:
    """One independently applied part of the payload, already validated."""

    name: str
    value: object


class Applier(Protocol):
    """What the registry needs from an applier.

    ``check`` is pure (it reads no file): it validates ``value`` and splits it
    into items named after ``item`` (``"addresses"`` -> ``"addresses/eth0"``).
    ``apply`` applies one item and returns APPLIED or UNCHANGED with a
    detail; it raises :class:`ApplyFailed` (or ``OSError``) to fail the item.
    """

    def check(self, value: object, item: str) -> tuple[list[Item], list[Problem]]: ...

    def apply(self, item: Item, ctx: ApplyContext) -> ItemResult: ...


class LiveHostname(Protocol):
    """The running system's hostname (only touched when the root is ``/``)."""

    def get(self) -> str: ...

    def set(self, name: str) -> None: ...


class SystemHostname:
    """The kernel's hostname, via the same sethostname(2) that hostname(1) uses."""

    def get(self) -> str:
        return socket.gethostname()

    def set(self, name: str) -> None:
        socket.sethostname(name)


def reload_networkd() -> None:
    """Ask systemd-networkd to re-read its .network files, if it is there."""
    networkctl = shutil.which("networkctl")
    if networkctl is None:
        log.info("networkctl not found; the .network file takes effect when networkd starts")
        return
    done = subprocess.run(
        [networkctl, "reload"], capture_output=True, text=True, check=False, timeout=30
    )
    if done.returncode != 0:
        # Not fatal: the file is in place and networkd reads it on its next start.
        log.warning(
            "networkctl reload failed: %s", escaped(done.stderr.strip()) or done.returncode
        )


@dataclasses.dataclass
class ApplyContext:
    """Where and how appliers write.

    ``live_hostname`` and ``reload_network`` act on the running system, so
    :meth:`for_root` sets them only when the root is ``/``; tests inject
    doubles to check that they are called.
    """

    root: str = "/"
    live_hostname: LiveHostname | None = None
    reload_network: Callable[[], None] | None = None
    #: chown(2) to another uid needs root; unprivileged runs skip it.
    may_chown: bool = dataclasses.field(default_factory=lambda: os.geteuid() == 0)

    @classmethod
    def for_root(cls, root: str = "/") -> ApplyContext:
        live = os.path.realpath(root) == "/"
        return cls(
            root=root,
            live_hostname=SystemHostname() if live else None,
            reload_network=reload_networkd if live else None,
        )

    @property
    def fs(self) -> RootFS:
        return RootFS(self.root)


# --------------------------------------------------------------------------
# File access confined to the root
# --------------------------------------------------------------------------

_MAX_SYMLINKS = 40  # the kernel's own limit (MAXSYMLINKS) for one lookup
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclasses.dataclass(frozen=True, slots=True)
class Owner:
    uid: int
    gid: int


class RootFS:
    """Files under ``root``, with symlinks resolved as if ``root`` were ``/``.

    Every component is opened with O_NOFOLLOW relative to its parent's file
    descriptor; a symlink is read and resolved here, with absolute targets
    starting again at the root and ``..`` never climbing above it.  So
    ``<root>/home/bob -> /srv/bob`` lands in ``<root>/srv/bob``, and no
    symlink planted in the root (or swapped in during the write) can send a
    write outside it.
    """

    def __init__(self, root: str) -> None:
        self.root = root

    def shown_path(self, path: str) -> str:
        """How messages name ``path``: as the guest sees it under its root."""
        if os.path.realpath(self.root) == "/":
            return path
        return os.path.join(self.root, path.lstrip("/"))

    @contextlib.contextmanager
    def directory(self, path: str, *, create_mode: int | None = None) -> Iterator[int]:
        """Open directory ``path`` (absolute, inside the root) and yield its fd.

        Missing components are created with ``create_mode`` when it is given.
        """
        fd = self.open_directory(path, create_mode)
        try:
            yield fd
        finally:
            os.close(fd)

    def open_directory(self, path: str, create_mode: int | None = None) -> int:
        """Like :meth:`directory`, returning an fd that the caller closes."""
        stack = [os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)]
        pending = [part for part in path.split("/") if part]
        pending.reverse()
        links = 0
        try:
            while pending:
                part = pending.pop()
                if part == ".":
                    continue
                if part == "..":
                    if len(stack) > 1:
                        os.close(stack.pop())
                    continue
                target = _symlink_target(part, stack[-1])
                if target is not None:
                    links += 1
                    if links > _MAX_SYMLINKS:
                        raise OSError(errno.ELOOP, "too many symlinks", self.shown_path(path))
                    if target.startswith("/"):
                        while len(stack) > 1:
                            os.close(stack.pop())
                    pending.extend(reversed([p for p in target.split("/") if p]))
                    continue
                stack.append(_open_subdirectory(part, stack[-1], create_mode))
            result = stack.pop()
        finally:
            for fd in stack:
                os.close(fd)
        return result

    def read_file(self, path: str, limit: int = 4 << 20) -> bytes | None:
        """Return the content of regular file ``path``, or None if it is missing."""
        directory, name = os.path.split(path)
        try:
            with self.directory(directory) as dir_fd:
                found = read_at(dir_fd, name, limit)
        except FileNotFoundError:
            return None
        return None if found is None else found[0]

    def write_file(
        self, path: str, data: bytes, mode: int, *, create_mode: int | None = 0o755
    ) -> bool:
        """Atomically make ``path`` hold ``data`` with ``mode``; False if it already did."""
        directory, name = os.path.split(path)
        with self.directory(directory, create_mode=create_mode) as dir_fd:
            return write_at(dir_fd, name, data, mode)


def _symlink_target(name: str, dir_fd: int) -> str | None:
    try:
        return os.readlink(name, dir_fd=dir_fd)
    except OSError as exc:
        # EINVAL: it exists and is not a symlink; ENOENT: it does not exist.
        if exc.errno in (errno.EINVAL, errno.ENOENT):
            return None
        raise


def _open_subdirectory(name: str, dir_fd: int, create_mode: int | None) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if create_mode is None:
            raise
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, create_mode, dir_fd=dir_fd)
    # O_NOFOLLOW again: something racing us may have put a symlink there.
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def read_at(dir_fd: int, name: str, limit: int) -> tuple[bytes, os.stat_result] | None:
    """Read regular file ``name`` in ``dir_fd`` without following a symlink."""
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd
        )
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink: never ours, write_at replaces it
            return None
        raise
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            return None
        return handle.read(limit + 1), info


def write_at(dir_fd: int, name: str, data: bytes, mode: int, owner: Owner | None = None) -> bool:
    """Atomically make ``name`` in ``dir_fd`` hold ``data``; False if nothing changed.

    :func:`atomic.replace_at` does the write, relative to a directory fd: the
    directory may belong to the user whose keys we write, and a path would
    let that user swap ``~/.ssh`` for a symlink between our check and our
    rename.  Mode and owner are set before the file is visible, and a symlink
    at ``name`` is replaced, never followed.
    """
    found = read_at(dir_fd, name, len(data))
    if found is not None:
        content, info = found
        if (
            content == data
            and stat.S_IMODE(info.st_mode) == mode
            and (owner is None or (info.st_uid, info.st_gid) == (owner.uid, owner.gid))
        ):
            return False
    replace_at(dir_fd, name, data, mode, (owner.uid, owner.gid) if owner else None)
    return True


# --------------------------------------------------------------------------
# hostname
# --------------------------------------------------------------------------

#: sethostname(2) takes at most HOST_NAME_MAX (64) characters, and systemd
#: applies that limit to /etc/hostname; the protocol allows RFC 1123's 253.
MAX_HOSTNAME = 64


def guest_hostname_problem(name: str) -> str | None:
    """This guest's extra rule for a valid host name: the kernel's length limit."""
    if len(name) > MAX_HOSTNAME:
        return (
            f"{shown(name)} is {len(name)} characters; the kernel takes at most "
            f"{MAX_HOSTNAME} (set a shorter name, e.g. its first label)"
        )
    return None


class HostnameApplier:
    """``hostname``: /etc/hostname, plus the running hostname when the root is ``/``."""

    path = "/etc/hostname"

    def check(self, value: object, item: str) -> tuple[list[Item], list[Problem]]:
        problem = protocol.hostname_problem(value)
        if problem is not None:
            return [], [Problem(item, problem)]
        return [Item(item, value)], []

    def apply(self, item: Item, ctx: ApplyContext) -> ItemResult:
        name = str(item.value)
        if (problem := guest_hostname_problem(name)) is not None:
            raise ApplyFailed(item.name, problem)
        changed = ctx.fs.write_file(self.path, f"{name}\n".encode("ascii"), 0o644)
        if ctx.live_hostname is not None and ctx.live_hostname.get() != name:
            ctx.live_hostname.set(name)
            changed = True
        if not changed:
            return ItemResult(item.name, UNCHANGED, f"hostname is already {name}")
        return ItemResult(item.name, APPLIED, f"hostname set to {name}")


# --------------------------------------------------------------------------
# ssh authorized_keys
# --------------------------------------------------------------------------

#: Key types OpenSSH accepts in authorized_keys (ssh-dss is disabled since 7.0).
SSH_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)


def guest_key_problem(line: object) -> str | None:
    """Why ``line`` is not one plain public key line (type, base64, comment), or None.

    This guest's extra rule, beyond the protocol's
    :func:`~xen_channel_backend.protocol.ssh_key_line_problem`: options (``command="..."``,
    ``from=...``) come before the type, so insisting on a known type first
    rules them out; the base64 blob must decode and start with the same type
    (the SSH wire format, RFC 4253 6.6), which rules out a pasted private key
    or a truncated line.
    """
    problem = protocol.ssh_key_line_problem(line)
    if problem is not None:
        return problem
    assert isinstance(line, str)
    key_type, blob = line.split(None, 2)[:2]
    if key_type not in SSH_KEY_TYPES:
        return (
            f"{shown(line)} does not start with a key type ({', '.join(sorted(SSH_KEY_TYPES))}); "
            "options are not allowed"
        )
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return f"the key data of {shown(line)} is not base64"
    if len(raw) < 4:
        return f"the key data of {shown(line)} is too short"
    (size,) = struct.unpack(">I", raw[:4])
    if raw[4 : 4 + size] != key_type.encode("ascii"):
        return f"the key data of {shown(line)} is not a {key_type} key"
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


def lookup_user(fs: RootFS, user: str) -> PasswdEntry:
    """Find ``user`` in ``<root>/etc/passwd`` (not NSS: the root may not be ours)."""
    data = fs.read_file("/etc/passwd")
    if data is None:
        raise ApplyFailed(f"ssh_keys/{user}", f"{fs.shown_path('/etc/passwd')} does not exist")
    for raw in data.decode("utf-8", "replace").splitlines():
        fields = raw.split(":")
        if len(fields) != 7 or fields[0] != user:
            continue
        try:
            uid, gid = int(fields[2]), int(fields[3])
        except ValueError:
            break
        if not fields[5].startswith("/"):
            raise ApplyFailed(
                f"ssh_keys/{user}", f"user {shown(user)} has no absolute home directory"
            )
        return PasswdEntry(user, uid, gid, fields[5])
    raise ApplyFailed(
        f"ssh_keys/{user}", f"user {shown(user)} not found in {fs.shown_path('/etc/passwd')}"
    )


def _check_named_entries(
    value: object,
    item: str,
    key: str,
    name_problem: Callable[[object], str | None],
    entry_problems: Callable[[Mapping[str, object]], list[str]],
    build: Callable[[Mapping[str, object]], object],
) -> tuple[list[Item], list[Problem]]:
    """Check a list of objects each named by ``key`` (a user, an interface).

    Every entry is checked by the protocol's own rules, each name may occur
    once, and a valid entry becomes the Item ``<item>/<name>``; an entry
    whose name is itself invalid is reported by its index instead.
    """
    if not isinstance(value, list):
        return [], [Problem(item, f"must be a list, not {type(value).__name__}")]
    items: list[Item] = []
    problems: list[Problem] = []
    for index, entry in enumerate(value):
        if not isinstance(entry, dict):
            problems.append(Problem(f"{item}[{index}]", "must be an object"))
            continue
        name = entry.get(key)
        where = f"{item}/{name}" if name_problem(name) is None else f"{item}[{index}]"
        found = entry_problems(entry)
        problems.extend(Problem(where, message) for message in found)
        if not found:
            items.append(Item(where, build(entry)))
    names = (entry.get(key) for entry in value if isinstance(entry, dict))
    problems.extend(
        Problem(f"{item}/{name}", "is listed more than once") for name in protocol.repeated(names)
    )
    return items, problems


@dataclasses.dataclass(frozen=True, slots=True)
class UserKeys:
    user: str
    lines: tuple[str, ...]


def _user_keys(entry: Mapping[str, object]) -> UserKeys:
    """The keys of an entry protocol.ssh_entry_problems accepted."""
    keys = entry["keys"]
    assert isinstance(keys, list)
    return UserKeys(str(entry["user"]), tuple(str(key) for key in keys))


class SshKeysApplier:
    """``ssh_keys``: ``~user/.ssh/authorized_keys`` holds exactly the given keys.

    ``.ssh`` is 0700 and the file 0600, both owned by the user, which is what
    sshd's StrictModes demands.  The home directory must exist (we never
    create homes); ``.ssh`` must not be a symlink, because the user owns the
    home directory and could point it anywhere.
    """

    def check(self, value: object, item: str) -> tuple[list[Item], list[Problem]]:
        return _check_named_entries(
            value, item, "user", protocol.user_problem, protocol.ssh_entry_problems,
            _user_keys,
        )

    def apply(self, item: Item, ctx: ApplyContext) -> ItemResult:
        assert isinstance(item.value, UserKeys)
        user = item.value.user
        refused = [
            f"key {number}: {problem}"
            for number, key in enumerate(item.value.lines)
            if (problem := guest_key_problem(key)) is not None
        ]
        if refused:
            # Nothing is written for this user: a half-updated key list could
            # lock out whoever relies on the refused key.
            raise ApplyFailed(item.name, "; ".join(refused))
        # One space between fields: a tab or a run of blanks becomes plain.
        lines = [" ".join(key.split(None, 2)) for key in item.value.lines]
        fs = ctx.fs
        entry = lookup_user(fs, user)
        owner = Owner(entry.uid, entry.gid) if ctx.may_chown else None
        data = (MANAGED_HEADER + "".join(f"{line}\n" for line in lines)).encode("utf-8")
        shown_home = fs.shown_path(entry.home)
        try:
            home_fd = fs.open_directory(entry.home)
        except FileNotFoundError:
            raise ApplyFailed(
                item.name, f"home directory {shown(shown_home)} of {shown(user)} does not exist"
            ) from None
        try:
            with _open_ssh_dir(home_fd, item.name, shown_home) as ssh_fd:
                changed = _fix_directory(ssh_fd, 0o700, owner)
                changed |= write_at(ssh_fd, "authorized_keys", data, 0o600, owner)
        finally:
            os.close(home_fd)
        where = os.path.join(shown_home, ".ssh/authorized_keys")
        count = f"{len(lines)} key{'s' if len(lines) != 1 else ''}"
        if not changed:
            return ItemResult(item.name, UNCHANGED, f"{where} already holds {count}")
        note = "" if owner is not None else " (not chowned: the agent is not root)"
        return ItemResult(item.name, APPLIED, f"wrote {count} to {where}{note}")


@contextlib.contextmanager
def _open_ssh_dir(home_fd: int, item: str, shown_home: str) -> Iterator[int]:
    with contextlib.suppress(FileExistsError):
        os.mkdir(".ssh", 0o700, dir_fd=home_fd)
    try:
        fd = os.open(".ssh", _DIR_FLAGS, dir_fd=home_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ApplyFailed(
                item, f"{shown(shown_home + '/.ssh')} is a symlink or not a directory; refusing"
            ) from None
        raise
    try:
        yield fd
    finally:
        os.close(fd)


def _fix_directory(fd: int, mode: int, owner: Owner | None) -> bool:
    info = os.fstat(fd)
    changed = False
    if owner is not None and (info.st_uid, info.st_gid) != (owner.uid, owner.gid):
        os.fchown(fd, owner.uid, owner.gid)
        changed = True
    if stat.S_IMODE(info.st_mode) != mode:
        os.fchmod(fd, mode)
        changed = True
    return changed


# --------------------------------------------------------------------------
# network addresses (systemd-networkd)
# --------------------------------------------------------------------------

# The protocol takes the kernel's rule for an interface name
# (protocol.interface_problem).  This guest takes less: networkd's Name= is a
# glob ('*', '?', '[') and a list (spaces), and the name becomes part of a
# file name, so only these characters are written.
_SAFE_IFACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
NETWORK_DIR = "/etc/systemd/network"


def guest_interface_problem(name: str) -> str | None:
    """This guest's extra rule for a valid interface name: no networkd pattern characters."""
    if not _SAFE_IFACE_RE.fullmatch(name):
        return (
            f"interface {shown(name)} is not supported by this agent: "
            "use A-Z a-z 0-9 _ . - (systemd-networkd reads other characters as patterns)"
        )
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class InterfaceConfig:
    interface: str
    addresses: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]
    gateways: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    dns: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]

    def network_file(self) -> str:
        """The .network file; every value is re-rendered by ipaddress, so no
        text from the host reaches the file verbatim."""
        lines = [MANAGED_HEADER, "[Match]\n", f"Name={self.interface}\n", "\n", "[Network]\n"]
        lines += [f"Address={address}\n" for address in self.addresses]
        lines += [f"Gateway={gateway}\n" for gateway in self.gateways]
        lines += [f"DNS={server}\n" for server in self.dns]
        return "".join(lines)


def _interface_config(entry: Mapping[str, object]) -> InterfaceConfig:
    """The configuration in an entry protocol.address_entry_problems accepted."""
    gateway = entry.get("gateway")
    dns = entry.get("dns") or []
    assert isinstance(dns, list)
    return InterfaceConfig(
        str(entry["interface"]),
        (ipaddress.ip_interface(str(entry["address"])),),
        () if gateway is None else (ipaddress.ip_address(str(gateway)),),
        tuple(ipaddress.ip_address(str(server)) for server in dns),
    )


class AddressesApplier:
    """``addresses``: one ``50-xen-channel-<iface>.network`` per interface.

    Protocol v1 allows one entry per interface.  Interfaces the payload
    does not name are left alone (their files stay).
    """

    def check(self, value: object, item: str) -> tuple[list[Item], list[Problem]]:
        return _check_named_entries(
            value, item, "interface", protocol.interface_problem,
            protocol.address_entry_problems, _interface_config,
        )

    def apply(self, item: Item, ctx: ApplyContext) -> ItemResult:
        config = item.value
        assert isinstance(config, InterfaceConfig)
        if (problem := guest_interface_problem(config.interface)) is not None:
            raise ApplyFailed(item.name, problem)
        path = f"{NETWORK_DIR}/50-xen-channel-{config.interface}.network"
        changed = ctx.fs.write_file(path, config.network_file().encode("ascii"), 0o644)
        where = ctx.fs.shown_path(path)
        if not changed:
            return ItemResult(item.name, UNCHANGED, f"{where} is up to date")
        if ctx.reload_network is not None:
            ctx.reload_network()
        return ItemResult(item.name, APPLIED, f"wrote {where}")


# --------------------------------------------------------------------------
# The registry and the two-phase apply
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """A validated payload: what to apply, or why nothing will be."""

    steps: list[tuple[Applier | None, Item]]  # None: unsupported
    problems: list[Problem]


@dataclasses.dataclass(frozen=True, slots=True)
class ConfigOutcome:
    """Everything the ack needs: status, per-item results, and the rejection reason."""

    status: str  # "ok" | "partial" | "error"
    results: list[ItemResult]
    error: str | None = None


class Registry:
    """Payload key -> applier, and ``extra`` key -> applier."""

    def __init__(self) -> None:
        self._kinds: dict[str, Applier] = {}
        self._extras: dict[str, Applier] = {}

    def register(self, kind: str, applier: Applier) -> None:
        if kind == "extra":
            raise ValueError("register keys under 'extra' with register_extra()")
        self._kinds[kind] = applier

    def register_extra(self, key: str, applier: Applier) -> None:
        self._extras[key] = applier

    def capabilities(self) -> list[str]:
        """What hello-ack advertises: payload keys, then ``extra/<key>`` we handle."""
        return [*self._kinds, *(f"extra/{key}" for key in self._extras)]

    def plan(self, payload: object) -> Plan:
        """Validate the whole payload without touching any file."""
        if not isinstance(payload, Mapping):
            return Plan([], [Problem("payload", "must be an object")])
        steps: list[tuple[Applier | None, Item]] = []
        problems: list[Problem] = []
        for kind, value in payload.items():
            if kind == "extra":
                self._plan_extra(value, steps, problems)
                continue
            applier = self._kinds.get(kind)
            if applier is None:
                steps.append((None, Item(str(kind), value)))
                continue
            items, found = applier.check(value, kind)
            steps.extend((applier, item) for item in items)
            problems.extend(found)
        return Plan(steps, problems)

    def _plan_extra(
        self, value: object, steps: list[tuple[Applier | None, Item]], problems: list[Problem]
    ) -> None:
        if not isinstance(value, Mapping):
            problems.append(Problem("extra", "must be an object"))
            return
        for key, sub in value.items():
            name = f"extra/{key}"
            applier = self._extras.get(key)
            if applier is None:
                steps.append((None, Item(name, sub)))
                continue
            items, found = applier.check(sub, name)
            steps.extend((applier, item) for item in items)
            problems.extend(found)

    def apply(
        self,
        payload: object,
        ctx: ApplyContext,
        validators: Sequence[Callable[[object], list[str]]] = (),
    ) -> ConfigOutcome:
        """Validate, then (only if all is valid) apply every item on its own.

        ``validators`` are further whole-payload checks (the guest agent
        passes protocol.validate_config_payload: beyond what the appliers
        check with the same protocol functions, it refuses top-level keys that
        v1 does not define and malformed ``extra`` keys, where a registry
        only finds no applier).
        They run when the appliers found nothing, since the appliers' checks
        name the item at fault; theirs are reported under "payload".
        """
        plan = self.plan(payload)
        problems = plan.problems or [
            Problem("payload", message) for check in validators for message in check(payload)
        ]
        if problems:
            results = [ItemResult(p.item, FAILED, p.message) for p in problems]
            summary = "; ".join(str(p) for p in problems)
            return ConfigOutcome("error", results, f"payload rejected, nothing applied: {summary}")
        results = [_apply_one(applier, item, ctx) for applier, item in plan.steps]
        done = all(result.status in (APPLIED, UNCHANGED) for result in results)
        return ConfigOutcome("ok" if done else "partial", results)


def _apply_one(applier: Applier | None, item: Item, ctx: ApplyContext) -> ItemResult:
    if applier is None:
        return ItemResult(item.name, UNSUPPORTED, "no applier for this item in this agent")
    try:
        return applier.apply(item, ctx)
    except ApplyFailed as exc:
        log.warning("%s", escaped(str(exc)))
        return ItemResult(item.name, FAILED, exc.detail)
    except OSError as exc:
        # One item's I/O failure (a full disk, a read-only /home) must not
        # stop the others, and the host needs to know which one failed.
        log.warning("%s: %s", escaped(item.name), escaped(str(exc)))
        return ItemResult(item.name, FAILED, f"{exc.strerror or exc}" + _filename(exc))
    except Exception as exc:
        # A bug in one applier (a plug-in, say) must not kill the agent: the
        # guest would lose its channel until someone restarts the service.
        # The traceback keeps its lines; what is inside each is escaped.
        trace = "\n".join(escaped(line) for line in traceback.format_exc().rstrip().split("\n"))
        log.error("%s: applier crashed\n%s", escaped(item.name), trace)
        return ItemResult(item.name, FAILED, f"internal error: {type(exc).__name__}: {exc}")


def _filename(exc: OSError) -> str:
    return f": {exc.filename}" if exc.filename else ""


def default_registry() -> Registry:
    registry = Registry()
    registry.register("hostname", HostnameApplier())
    registry.register("addresses", AddressesApplier())
    registry.register("ssh_keys", SshKeysApplier())
    return registry
