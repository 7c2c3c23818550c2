"""The frozen channel model and the validation rules every entry point shares.

Data flows one way through the project: domain XML or xl.cfg is parsed into
:class:`Channel` objects, allocation fills their paths, and XML, xl.cfg,
metadata and the registry are written from them.  A ``Channel`` that exists
has passed :func:`validate_name` and :func:`validate_path`, so no later stage
re-checks (or forgets to check) untrusted text.

The same name rule is implemented in POSIX sh by ``guest/xen-channel-setup``;
keep the two in step (tests/test_guest_setup.py checks both on one table).
"""

from __future__ import annotations

import dataclasses
import enum
import re

from .errors import InvalidChannelName, InvalidSocketPath, UnsupportedChannel

#: sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
MAX_NAME = 100

# A name becomes a file name under /dev/xen-channel in the guest and part of a
# socket path in dom0, and xl's SPEC grammar cannot carry ',', '=' or '"'.
# Restricting to this set rules out '/', '..', whitespace, quotes and control
# characters in one place.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
NAME_RULE = (
    f"use 1-{MAX_NAME} characters of A-Z a-z 0-9 . _ -, starting with a letter or digit "
    "(reverse-DNS style, e.g. org.example.agent.0)"
)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class Connection(enum.StrEnum):
    """How dom0 sees the channel: xl's ``connection=`` / libvirt's source type."""

    SOCKET = "socket"
    PTY = "pty"


class Target(enum.StrEnum):
    """libvirt's ``<target type=...>`` of a channel."""

    XEN = "xen"
    VIRTIO = "virtio"
    GUESTFWD = "guestfwd"


def validate_name(name: str | None, *, required: bool = True) -> None:
    """Raise :class:`InvalidChannelName` unless ``name`` follows NAME_RULE.

    ``required`` is False only for non-Xen targets, where libvirt allows a
    nameless channel; libxl refuses a nameless Xen channel at start.
    """
    if name is None:
        if required:
            raise InvalidChannelName(None, f"libxl refuses a nameless Xen channel; {NAME_RULE}")
        return
    if not _NAME_RE.fullmatch(name):
        raise InvalidChannelName(name, NAME_RULE)


def validate_path(path: str, channel: str | None = None, *, for_xl: bool = True) -> None:
    """Raise :class:`InvalidSocketPath` unless ``path`` is usable as a channel path.

    The rules come from the two consumers: xl's SPEC grammar (no ',', '=',
    '"', and values are trimmed, so no whitespace at the ends) and the kernel
    (sun_path holds 107 bytes).  '..' is refused so that a path checked
    against an allowed root cannot climb out of it.  ``for_xl=False`` (a
    virtio channel, which never passes through xl) drops xl's character
    rules: libvirt's own virtio paths embed the domain name, which may hold
    '=' or ','.
    """
    if not path:
        raise InvalidSocketPath(channel, path, "is empty")
    if not path.startswith("/"):
        raise InvalidSocketPath(channel, path, "is not absolute")
    for bad in (",", "=", '"') if for_xl else ():
        if bad in path:
            raise InvalidSocketPath(channel, path, f"contains {bad!r}, which xl.cfg cannot express")
    if _CONTROL_RE.search(path):
        raise InvalidSocketPath(channel, path, "contains a control character")
    if for_xl and path != path.strip():
        raise InvalidSocketPath(channel, path, "has whitespace at an end, which xl would trim")
    if ".." in path.split("/"):
        raise InvalidSocketPath(channel, path, "has a '..' component")
    size = len(path.encode("utf-8", "surrogateescape"))
    if size > MAX_SOCKET_PATH:
        raise InvalidSocketPath(
            channel, path, f"is {size} bytes, over the {MAX_SOCKET_PATH}-byte socket path limit"
        )


@dataclasses.dataclass(frozen=True, slots=True)
class Channel:
    """One channel, as both libvirt and xl can describe it.

    ``path`` is the Unix socket for ``socket`` channels (None until
    allocated) and, in live XML, the pty device for ``pty`` channels.
    ``backend`` is xl's backend domain, which libvirt cannot express.
    """

    name: str | None
    connection: Connection
    path: str | None = None
    backend: str | None = None
    target: Target = Target.XEN

    def __post_init__(self) -> None:
        validate_name(self.name, required=self.target is Target.XEN)
        if self.path is not None:
            validate_path(self.path, self.name, for_xl=self.target is Target.XEN)
        if self.backend is not None and not self.backend.strip():
            raise UnsupportedChannel(self.name, "backend is empty")

    @property
    def label(self) -> str:
        """How messages refer to this channel."""
        return self.name if self.name is not None else f"<unnamed {self.target} channel>"

    def with_path(self, path: str | None) -> Channel:
        return dataclasses.replace(self, path=path)
