"""Crash-safe file writes: temporary file in the same directory, fsync, rename.

A reader (or a process restarted after SIGKILL) sees either the old file or
the new one, never a prefix of the new one.
"""

from __future__ import annotations

import contextlib
import os
import stat


def atomic_write(
    path: str | os.PathLike[str], data: bytes | str, mode: int | None = None
) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    ``mode=None`` keeps the mode of the regular file being replaced (and its
    owner, when we may chown), so rewriting a 0600 xl.cfg that holds a VNC
    password never widens it; a new file, or one replacing a non-file, gets
    0644.
    """
    target = os.fspath(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    directory = os.path.dirname(os.path.abspath(target))
    owner: tuple[int, int] | None = None
    if mode is None:
        mode = 0o644
        try:
            info = os.lstat(target)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISREG(info.st_mode):
                mode = stat.S_IMODE(info.st_mode)
                owner = (info.st_uid, info.st_gid)
    fd, tmp = _create_temporary(directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            if owner is not None and os.geteuid() == 0:
                os.fchown(handle.fileno(), *owner)
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)


def _create_temporary(directory: str) -> tuple[int, str]:
    """Create a new ``.<random>.tmp`` file in ``directory``, as mkstemp would.

    Not tempfile.mkstemp: importing tempfile (shutil, random, ...) costs the
    libvirt hook more than the write itself.  O_EXCL and O_NOFOLLOW give the
    same guarantees: a fresh file of ours, never a planted one or a symlink.
    """
    for _attempt in range(100):
        path = os.path.join(directory, f".{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        return fd, path
    raise FileExistsError(f"no free temporary name in {directory}")


def fsync_directory(directory: str) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
