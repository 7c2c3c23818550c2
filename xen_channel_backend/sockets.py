"""Socket files at channel paths: is one stale, and removing one only if it is.

QEMU listens on a channel's Unix socket and unlinks whatever sits at the path
before binding (background.md §2); a killed QEMU leaves its socket file behind.  The
hooks, the monitor and the broker each clear such leftovers, and none of them
may ever remove a socket somebody still listens on (another domain's QEMU, a
second broker, the server a ``<source mode='connect'>`` channel points at).
The one test that tells them apart is a connect: refused means nobody
listens, so the file is stale.

Imported by the hook on every prepare and release: only the standard library
here, and nothing done at import time.
"""

from __future__ import annotations

import errno
import os
import stat

from .atomic import unlink_if_present
from .errors import XenChannelError, shown

# Not typing.TYPE_CHECKING: importing typing costs every hook call.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .model import Channel
    from .registry import DomainRecord, Registry
    from .settings import Settings

ABSENT = "absent"
#: A socket directory we create: root and the configured group only.
SOCKET_DIR_MODE = 0o750
STALE = "stale"

#: connect() results that prove a listener: accepted into the backlog (0), a
#: full backlog (EAGAIN on a non-blocking Unix socket), or a listening socket
#: of another type (EPROTOTYPE; a dead one is refused whatever its type).
_LIVE_CODES = (0, errno.EAGAIN, errno.EWOULDBLOCK, errno.EINPROGRESS, errno.EPROTOTYPE)


class Occupied(Exception):
    """Something at a path that must not be removed; ``reason`` follows the path in a message.

    ``kind`` is :data:`LIVE` (a socket somebody listens on), :data:`OTHER`
    (not a socket at all), :data:`UNPROBED` (a socket whose connect failed
    otherwise) or :data:`PARENT` (the directory holding it is not a plain
    directory).
    """

    LIVE = "live"
    OTHER = "other"
    UNPROBED = "unprobed"
    PARENT = "parent"

    def __init__(self, kind: str, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.detail = detail


def file_kind(mode: int) -> str:
    """A file type in words, for messages."""
    for test, kind in ((stat.S_ISSOCK, "socket"), (stat.S_ISREG, "regular file"),
                       (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISFIFO, "FIFO")):
        if test(mode):
            return kind
    return "device or special file"


def probe(path: str) -> str:
    """:data:`ABSENT` or :data:`STALE` for ``path``; raise :class:`Occupied` otherwise.

    Never follows a symlink at ``path`` (lstat).  The connect is
    non-blocking, so it never waits: a listener answers at once (accepted
    into its backlog, or EAGAIN when the backlog is full) and a socket file
    nobody listens on at once refuses (ECONNREFUSED).
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return ABSENT
    if not stat.S_ISSOCK(info.st_mode):
        raise Occupied(Occupied.OTHER, f"is taken by a {file_kind(info.st_mode)}")
    return _connect_probe(path)


def _connect_probe(path: str) -> str:
    # Imported here, not at the top: the socket module builds its enums at
    # import (~9 ms), and a prepare meets an existing socket file only after
    # a crash.
    import socket

    probe_socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        code = probe_socket.connect_ex(path)
    finally:
        probe_socket.close()
    if code == errno.ECONNREFUSED:
        return STALE
    if code == errno.ENOENT:
        return ABSENT  # removed between the lstat and the connect
    if code in _LIVE_CODES:
        raise Occupied(Occupied.LIVE, "is a live socket in use by another process")
    detail = os.strerror(code)
    raise Occupied(Occupied.UNPROBED, f"is a socket that cannot be probed ({detail})", detail)


def remove_stale(path: str, *, even_live: bool = False, root: str | None = None) -> bool:
    """Unlink ``path`` if it is a stale socket; True if one was removed.

    Raises :class:`Occupied` for anything else there (nothing is removed);
    ``even_live`` also removes a socket somebody listens on (only for a
    socket that can be nobody's but ours).

    Nothing on the way is followed: with ``root`` (an allowed root holding
    ``path``) the parent directory is reached by walking down from the root
    with O_NOFOLLOW at every component (paths.open_dir_nofollow), so a
    middle directory swapped for a symlink while the domain ran cannot send
    root's unlink elsewhere; without it only the parent itself is opened
    with O_NOFOLLOW.  The entry is lstat'ed, probed and unlinked through
    that descriptor.
    """
    leaf = os.path.basename(path)
    try:
        parent = _open_parent(path, root)
    except FileNotFoundError:
        return False
    try:
        try:
            info = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISSOCK(info.st_mode):
            raise Occupied(Occupied.OTHER, f"is taken by a {file_kind(info.st_mode)}")
        try:
            if _connect_probe(_through(parent, leaf, path)) == ABSENT:
                return False
        except Occupied as exc:
            if not (even_live and exc.kind == Occupied.LIVE):
                raise
        unlink_if_present(leaf, dir_fd=parent)
        return True
    finally:
        os.close(parent)


def _open_parent(path: str, root: str | None) -> int:
    """A descriptor of ``path``'s directory, opened without following symlinks."""
    from .paths import open_dir_nofollow

    directory = os.path.dirname(path) or "."
    try:
        if root is not None:
            return open_dir_nofollow(directory, root)
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except XenChannelError as exc:
        raise Occupied(Occupied.PARENT, "has a parent that is not a plain directory "
                       f"({exc.message()})") from None
    except OSError as exc:
        raise Occupied(Occupied.PARENT, "has a parent that is not a plain directory "
                       f"({exc.strerror})") from None


def _through(parent: int, leaf: str, path: str) -> str:
    """Name ``leaf`` through the descriptor ``parent`` for connect(), which takes no dir_fd.

    /proc/self/fd/N is the directory that was opened, whatever has been
    renamed or swapped since; the plain path is the fallback only when the
    /proc name would not fit in sun_path.
    """
    through = f"/proc/self/fd/{parent}/{leaf}"
    return through if len(through.encode("utf-8", "surrogateescape")) <= 107 else path


def remove_domain_files(
    settings: Settings, registry: Registry, record: DomainRecord, warn: Callable[[str], None]
) -> list[str]:
    """Remove a stopped or vanished domain's stale sockets and our directories.

    The one implementation for the release hook and the monitor.  For each
    recorded socket channel, only inside the allowed roots and only unless
    another domain holds the claim on its path (a reconnect may have
    recorded a path another domain owns): its socket if stale, the broker's
    socket beside it, then the directories we created and the domain's own
    ``RUNDIR/<uuid>`` if they are empty.  A live socket, anything that is
    not a socket, and a directory that is not empty are left in place and
    reported through ``warn``.  Never follows a symlink.  Returns what was
    removed.  The caller removes the record (and with it the claims).
    """
    from .model import Connection
    from .paths import broker_socket_for, domain_socket_dir, is_within, root_of

    label = f"domain {shown(record.name)}"
    own_dir = domain_socket_dir(settings, record.uuid)
    removed: list[str] = []
    directories: list[tuple[str, str]] = []
    for channel in record.channels:
        path = channel.path
        if channel.connection is not Connection.SOCKET or not path:
            continue
        if not is_within(path, settings.allowed_roots, strict=True):
            continue  # not ours (paths.is_ours): recorded, never removed
        root = root_of(settings, path)
        if registry.claim_owner(path) not in (None, record.uuid):
            warn(f"{label}: left {shown(path)} alone: its path is claimed by another domain")
            continue
        directory = os.path.dirname(path)
        our_directory = channel.created_dir or directory == own_dir
        if _remove_reporting(path, root, label, warn):
            removed.append(path)
        try:
            broker = broker_socket_for(path)
        except XenChannelError:
            broker = None  # no room for a broker socket: there is none
        # A running broker still listens there until its next registry poll;
        # in a directory we made, no one else can have put a socket by that
        # name, and it would keep the directory alive.
        if (broker is not None and registry.claim_owner(broker) in (None, record.uuid)
                and _remove_reporting(broker, root, label, warn, even_live=our_directory)):
            removed.append(broker)
        if our_directory:
            directories.append((directory, root))
    directories.append((own_dir, settings.rundir))  # named by the UUID: nobody else's
    for directory, root in dict.fromkeys(directories):
        if _rmdir_reporting(directory, root, label, warn):
            removed.append(directory)
    return removed


def _remove_reporting(
    path: str, root: str, label: str, warn: Callable[[str], None], *, even_live: bool = False
) -> bool:
    try:
        return remove_stale(path, even_live=even_live, root=root)
    except Occupied as exc:
        warn(f"{label}: left {shown(path)} in place: it {exc.reason}")
    except OSError as exc:
        warn(f"{label}: left {shown(path)} in place: {exc.strerror or exc}")
    return False


def _rmdir_reporting(
    directory: str, root: str, label: str, warn: Callable[[str], None]
) -> bool:
    """Remove an empty ``directory`` through its parent, reached from ``root`` without symlinks."""
    if os.path.normpath(directory) == os.path.normpath(root):
        return False  # an allowed root itself is configuration, never ours to remove
    leaf = os.path.basename(directory)
    try:
        parent = _open_parent(directory, root)
    except FileNotFoundError:
        return False
    except Occupied as exc:
        warn(f"{label}: left {shown(directory)} in place: it {exc.reason}")
        return False
    try:
        try:
            info = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISDIR(info.st_mode):
            warn(f"{label}: left {shown(directory)} in place: it is a "
                 f"{file_kind(info.st_mode)}")
            return False
        try:
            os.rmdir(leaf, dir_fd=parent)
        except FileNotFoundError:
            return False
        except OSError as exc:
            warn(f"{label}: left {shown(directory)} in place: {exc.strerror or exc}")
            return False
        return True
    finally:
        os.close(parent)


# --- prepare: the socket's directory -------------------------------------------


def group_id(settings: Settings) -> int | None:
    if settings.group is None:
        return None
    if settings.group.isdigit():
        return int(settings.group)
    import grp

    try:
        return grp.getgrnam(settings.group).gr_gid
    except KeyError:
        from .errors import SettingsError

        raise SettingsError("group", f"group {shown(settings.group)} does not exist") from None


def prepare_socket_dir(
    settings: Settings, uuid: str, channel: Channel, gid: int | None, created: list[str]
) -> set[str]:
    """Create the socket's directory (no symlinks) and clear a stale socket.

    Returns the directories that count as ours for release: those created
    now, and the domain's own directory under the run directory (named by its
    UUID, it belongs to no one else, so a leftover from a crash is ours too).
    """
    from .paths import domain_socket_dir, make_dirs_nofollow, root_of

    assert channel.path is not None
    directory = os.path.dirname(channel.path)
    root = root_of(settings, channel.path)
    # Below our own run directory every directory must be ours (owner, mode);
    # another allowed root (libvirt's channel directories) keeps its layout.
    made = make_dirs_nofollow(directory, root, mode=SOCKET_DIR_MODE, gid=gid,
                              trust_existing=root != settings.rundir)
    created.extend(made)
    ours = set(made)
    if directory == domain_socket_dir(settings, uuid):
        ours.add(directory)
    clear_stale_socket(channel.label, channel.path, root)
    return ours & {directory}


def clear_stale_socket(label: str, path: str, root: str) -> None:
    """Unlink a stale socket at ``path``; anything else there fails the prepare.

    QEMU unlinks whatever sits at its path before binding (background.md §2), so a
    regular file, a directory, a symlink or a socket somebody still listens
    on (another domain's QEMU, any other server) must stop the start here.
    """
    try:
        remove_stale(path, root=root)
    except Occupied as exc:
        reason = exc.reason
        if exc.kind == Occupied.OTHER:
            reason += "; only a stale socket would be removed there"
        from .errors import PathNotAllowed

        raise PathNotAllowed(label, path, reason) from None
