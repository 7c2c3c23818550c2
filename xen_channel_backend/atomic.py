"""Crash-safe file writes: temporary file in the same directory, fsync, rename.

A reader (or a process restarted after SIGKILL) sees either the old file or
the new one, never a prefix of the new one.
"""

from __future__ import annotations

import os
import stat


def unlink_if_present(path: str, *, dir_fd: int | None = None) -> None:
    """Remove a file that may already be gone (a racing remover, a crash)."""
    try:
        os.unlink(path, dir_fd=dir_fd)
    except FileNotFoundError:
        pass

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
                if os.geteuid() == 0:
                    owner = (info.st_uid, info.st_gid)
    directory, name = os.path.split(os.path.abspath(target))
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        replace_at(dir_fd, name, payload, mode, owner)
    finally:
        os.close(dir_fd)


def replace_at(
    dir_fd: int, name: str, data: bytes, mode: int, owner: tuple[int, int] | None = None
) -> None:
    """Make ``name`` in the directory ``dir_fd`` hold ``data``, atomically and durably.

    The core of every state write: a new temporary file beside the target
    (O_EXCL|O_NOFOLLOW, so never a planted file or a symlink), its mode and
    owner set before it becomes visible, fsync, rename over ``name`` (a
    symlink there is replaced, never followed), fsync of the directory.
    Working relative to ``dir_fd`` lets a caller that opened the directory
    without following symlinks (the guest's appliers) keep that guarantee.
    """
    fd, tmp = _create_temporary(dir_fd)
    try:
        # Written through the descriptor O_EXCL made, never reopened by name:
        # whoever may write the directory could swap the name meanwhile.
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        unlink_if_present(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


def _create_temporary(dir_fd: int) -> tuple[int, str]:
    """Create a new, empty ``.<random>.tmp`` file in ``dir_fd``; return (fd, name).

    Not tempfile.mkstemp: importing tempfile (shutil, random, ...) costs the
    libvirt hook more than the write itself.  O_EXCL and O_NOFOLLOW give the
    same guarantees: a fresh file of ours, never a planted one or a symlink.
    """
    for _attempt in range(100):
        name = f".{os.urandom(6).hex()}.tmp"
        try:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue
        return fd, name
    raise FileExistsError("no free temporary name")


def fsync_directory(directory: str) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
