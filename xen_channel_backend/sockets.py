"""Socket files at channel paths: is one stale, and removing one only if it is.

QEMU listens on a channel's Unix socket and unlinks whatever sits at the path
before binding (FACTS §2); a killed QEMU leaves its socket file behind.  The
hooks, the monitor and the broker each clear such leftovers, and none of them
may ever remove a socket somebody still listens on (another domain's QEMU, a
second broker, the server a ``<source mode='connect'>`` channel points at).
The one test that tells them apart is a connect: refused means nobody
listens, so the file is stale.

Imported by the hook on every prepare and release: only the standard library
here, and nothing done at import time.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat

ABSENT = "absent"
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


def remove_stale(path: str) -> bool:
    """Unlink ``path`` if it is a stale socket; True if one was removed.

    Raises :class:`Occupied` for anything else there (nothing is removed).
    The unlink works relative to the parent opened with O_NOFOLLOW and the
    entry is lstat'ed again through it, so neither a symlinked directory nor
    a symlink at the path itself is followed.
    """
    try:
        parent = os.open(os.path.dirname(path) or ".",
                         os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise Occupied(Occupied.PARENT, "has a parent that is not a plain directory "
                       f"({exc.strerror})") from None
    leaf = os.path.basename(path)
    try:
        try:
            info = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISSOCK(info.st_mode):
            raise Occupied(Occupied.OTHER, f"is taken by a {file_kind(info.st_mode)}")
        if _connect_probe(path) == ABSENT:
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(leaf, dir_fd=parent)
        return True
    finally:
        os.close(parent)
