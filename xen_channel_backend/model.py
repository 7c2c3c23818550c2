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

from .errors import InvalidChannelName, InvalidSocketPath, UnsupportedChannel

TYPE_CHECKING = False  # not typing's: the hooks import this module on every call
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any, Self

#: sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
MAX_NAME = 100

# A name becomes a file name under /dev/xen-channel in the guest and part of a
# socket path in dom0, and xl's SPEC grammar cannot carry ',', '=' or '"'.
# Restricting to this set rules out '/', '..', whitespace, quotes and control
# characters in one place.
# Checked with set membership rather than a regular expression: the hooks
# validate every channel they read, and importing re costs each of them ~3 ms.
_NAME_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_NAME_CHARS = _NAME_FIRST | frozenset("._-")
NAME_RULE = (
    f"use 1-{MAX_NAME} characters of A-Z a-z 0-9 . _ -, starting with a letter or digit "
    "(reverse-DNS style, e.g. org.example.agent.0)"
)
_CONTROL = frozenset(map(chr, (*range(0x20), 0x7F)))


class _ChoiceType(type):
    """Iteration and len() over a Choice class's members, as over an Enum."""

    def __iter__(cls) -> Iterator[Any]:
        return iter(cls._members)  # type: ignore[attr-defined]

    def __len__(cls) -> int:
        return len(cls._members)  # type: ignore[attr-defined]


class Choice(str, metaclass=_ChoiceType):
    """A string from a fixed set: what we used enum.StrEnum for, without enum.

    The hooks import this module on every call, and ``import enum`` (with
    the functools and collections it pulls in) costs each of them several
    milliseconds.  Members are single instances, so ``is`` compares them;
    ``Cls(value)`` returns the member or raises ValueError; a member is
    equal to its plain string, formats as it and has ``.value`` and
    ``.name``; iterating the class yields the members in order.
    """

    _members: tuple[Choice, ...] = ()
    _by_value: dict[str, Choice] = {}
    name: str

    def __new__(cls, value: object) -> Self:
        member = cls._by_value.get(value) if isinstance(value, str) else None
        if member is None or not isinstance(member, cls):
            raise ValueError(f"{value!r} is not a valid {cls.__name__}")
        return member

    @classmethod
    def _define(cls, **members: str) -> None:
        made = []
        for name, value in members.items():
            member = str.__new__(cls, value)
            object.__setattr__(member, "name", name)
            setattr(cls, name, member)
            made.append(member)
        cls._members = tuple(made)
        cls._by_value = {m: m for m in made}

    @property
    def value(self) -> str:
        return str.__str__(self)

    def __str__(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {str.__repr__(self)}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.value,)


class Connection(Choice):
    """How dom0 sees the channel: xl's ``connection=`` / libvirt's source type."""

    SOCKET: Connection
    PTY: Connection


class Target(Choice):
    """libvirt's ``<target type=...>`` of a channel."""

    XEN: Target
    VIRTIO: Target
    GUESTFWD: Target


class DomainState(Choice):
    """Where a domain is in its life, as the registry and our metadata record it."""

    PREPARING: DomainState
    RUNNING: DomainState
    STOPPED: DomainState


Connection._define(SOCKET="socket", PTY="pty")
Target._define(XEN="xen", VIRTIO="virtio", GUESTFWD="guestfwd")
DomainState._define(PREPARING="preparing", RUNNING="running", STOPPED="stopped")


def validate_name(name: str | None, *, required: bool = True) -> None:
    """Raise :class:`InvalidChannelName` unless ``name`` follows NAME_RULE.

    ``required`` is False only for non-Xen targets, where libvirt allows a
    nameless channel; libxl refuses a nameless Xen channel at start.
    """
    if name is None:
        if required:
            raise InvalidChannelName(None, f"libxl refuses a nameless Xen channel; {NAME_RULE}")
        return
    if not (isinstance(name, str) and 0 < len(name) <= MAX_NAME and name[0] in _NAME_FIRST
            and _NAME_CHARS.issuperset(name)):
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
    if not _CONTROL.isdisjoint(path):
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


class Frozen:
    """An immutable value with ``__slots__``: equality, hash, repr and replace().

    What a frozen dataclass gives, without importing dataclasses: that module
    pulls in inspect, ast, dis and tokenize, about 8 ms of every hook call.
    Subclasses list their fields in ``__slots__`` and set them in
    ``__init__`` through :meth:`_set` after validating them.
    """

    __slots__: tuple[str, ...] = ()

    def _set(self, **values: Any) -> None:
        for key, value in values.items():
            object.__setattr__(self, key, value)

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot set {key}")

    def __delattr__(self, key: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {key}")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, key) for key in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={getattr(self, key)!r}" for key in self.__slots__)
        return f"{type(self).__name__}({fields})"

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes``, validated again by the constructor."""
        values = {key: getattr(self, key) for key in self.__slots__}
        values.update(changes)
        return type(self)(**values)


class Channel(Frozen):
    """One channel, as both libvirt and xl can describe it.

    ``path`` is the Unix socket for ``socket`` channels (None until
    allocated) and, in live XML, the pty device for ``pty`` channels.
    ``backend`` is xl's backend domain, which libvirt cannot express.
    Every instance has passed the name and path rules.
    """

    __slots__ = ("backend", "connection", "name", "path", "target")
    name: str | None
    connection: Connection
    path: str | None
    backend: str | None
    target: Target

    def __init__(
        self, name: str | None, connection: Connection, path: str | None = None,
        backend: str | None = None, target: Target = Target.XEN,
    ) -> None:
        validate_name(name, required=target is Target.XEN)
        if path is not None:
            validate_path(path, name, for_xl=target is Target.XEN)
        if backend is not None and not backend.strip():
            raise UnsupportedChannel(name, "backend is empty")
        self._set(name=name, connection=Connection(connection), path=path, backend=backend,
                  target=Target(target))

    @property
    def label(self) -> str:
        """How messages refer to this channel."""
        return self.name if self.name is not None else f"<unnamed {self.target} channel>"

    def with_path(self, path: str | None) -> Channel:
        return self.replace(path=path)

    def to_dict(self) -> dict[str, Any]:
        """The one JSON form of a channel: registry records, ``list --json``, the API."""
        data: dict[str, Any] = {"name": self.name, "connection": self.connection.value,
                                "path": self.path, "target": self.target.value}
        if self.backend is not None:
            data["backend"] = self.backend
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Channel:
        """Build (and so validate) a channel from :meth:`to_dict`'s form.

        Raises ValueError, TypeError or KeyError, and the model's own errors,
        on anything malformed; callers say which file or message it came from.
        """
        if not isinstance(data, dict):
            raise TypeError("a channel is a JSON object")
        for key in ("name", "path", "backend"):
            if not (data.get(key) is None or isinstance(data.get(key), str)):
                raise TypeError(f"channel {key} must be a string or null")
        return cls(data["name"], Connection(data["connection"]), data["path"],
                   data.get("backend"), Target(data["target"]))
