"""Who may change a path: the StrictModes rule, shared by every trust check.

libvirtd runs our hooks as root, and ``send`` hands a guest's configuration
to whatever listens at a socket path.  Both must trust a path only if
nobody but its rightful owner could have put what is there.  The rule is
OpenSSH's StrictModes, applied to the path and to every directory above it
up to ``/``:

- each component is owned by an allowed uid (root, normally);
- none is writable by group or others, except a directory with the sticky
  bit (``/tmp``): there others may add entries but not replace ours;
- a symlink anywhere on the way is followed, and the same rule applies to
  where it leads (the link itself can only be replaced by whoever may write
  its directory, which the rule already checks).

The checks use ``lstat`` on each component; they are lexical snapshots, so
callers that then open the path must still open it safely (O_NOFOLLOW
where it matters).  They say what is wrong in one line naming the path.
"""

from __future__ import annotations

import os
import stat

from .errors import UntrustedPath

#: Symlink hops followed before the path counts as a loop.
_MAX_LINKS = 40


def check_trusted_path(path: str, *, uids: tuple[int, ...] = (0,)) -> None:
    """Raise UntrustedPath unless only ``uids`` can change ``path`` or what leads to it.

    ``path`` must be absolute.  A missing component raises UntrustedPath too
    (the caller asked to trust something that is not there).
    """
    if not os.path.isabs(path):
        raise UntrustedPath(path, "is not an absolute path")
    _check(os.path.normpath(path), uids, _MAX_LINKS)


def _check(path: str, uids: tuple[int, ...], links_left: int) -> None:
    current = "/"
    parts = [p for p in path.split("/") if p]
    for index, part in enumerate(["", *parts]):
        current = os.path.join(current, part) if part else "/"
        try:
            info = os.lstat(current)
        except OSError as exc:
            raise UntrustedPath(current, f"cannot be checked ({exc.strerror})") from None
        if stat.S_ISLNK(info.st_mode):
            if links_left <= 0:
                raise UntrustedPath(current, "has too many levels of symbolic links")
            target = os.readlink(current)
            resolved = os.path.normpath(os.path.join(os.path.dirname(current), target))
            rest = "/".join(parts[index:])
            _check(os.path.normpath(os.path.join(resolved, rest)), uids, links_left - 1)
            return
        _check_component(current, info, uids)


def _check_component(path: str, info: os.stat_result, uids: tuple[int, ...]) -> None:
    if info.st_uid not in uids:
        owners = " or ".join(f"uid {u}" for u in uids)
        raise UntrustedPath(path, f"is owned by uid {info.st_uid}, not by {owners}")
    mode = stat.S_IMODE(info.st_mode)
    writable = mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and not (stat.S_ISDIR(info.st_mode) and mode & stat.S_ISVTX):
        who = "group and others" if writable == stat.S_IWGRP | stat.S_IWOTH else (
            "group" if writable & stat.S_IWGRP else "others")
        raise UntrustedPath(path, f"is writable by {who} (mode {mode:04o})")


def channel_socket_owners() -> tuple[int, ...]:
    """The users trusted to own a channel socket (check_channel_socket's default).

    root; the caller; and ``libvirt-qemu``, the user libvirt's QEMU driver
    runs QEMU as on Debian, when it exists.
    """
    import pwd

    found = [0, os.geteuid()]
    try:
        found.append(pwd.getpwnam("libvirt-qemu").pw_uid)
    except KeyError:
        pass
    return tuple(dict.fromkeys(found))


def check_channel_socket(path: str, role: str, *, uids: tuple[int, ...] | None = None) -> bool:
    """Raise UntrustedSocket unless only a trusted user could have bound the socket at ``path``.

    The one rule for a channel socket a client is about to trust (``send``
    in agent.py, the qemu-ga commands in qga.py; ``role`` names it in the
    error: ``broker socket``, ``QEMU socket``).  Such a socket receives what
    dom0 sends (configs, passwords) and its answers are believed, so:

    - the directory holding it, and every directory above, pass
      :func:`check_trusted_path`;
    - that directory itself is writable by nobody else, sticky or not: the
      sticky bit keeps others from replacing a socket, not from binding its
      name first (libvirt's own libxl channel directory is 0777);
    - the socket, looked at with ``lstat`` (a symlink is refused, never
      followed), is a socket owned by a trusted user.

    Trusted users (``uids`` unless given): root; the caller; and the user
    libvirt's QEMU driver runs QEMU as, ``libvirt-qemu`` (Debian's), when
    it exists, since that QEMU creates its channel sockets, and libvirt the
    channel directories, as that user.  Xen's device model runs as root.
    The socket's mode bits are not checked: they say who may connect, not
    who may replace it.  Returns False when nothing is at ``path`` (yet).
    """
    from .errors import UntrustedSocket

    if uids is None:
        uids = channel_socket_owners()
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise UntrustedSocket(path, role, f"it cannot be checked ({exc.strerror})") from None
    directory = os.path.dirname(path) or "/"
    try:
        check_trusted_path(directory, uids=uids)
        mode = stat.S_IMODE(os.stat(directory).st_mode)
    except UntrustedPath as exc:
        raise UntrustedSocket(path, role, exc.message()) from None
    except OSError as exc:
        reason = f"its directory cannot be checked ({exc.strerror})"
        raise UntrustedSocket(path, role, reason) from None
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        loose = UntrustedPath(directory, f"is writable by group or others (mode {mode:04o})")
        raise UntrustedSocket(path, role, loose.message())
    if not stat.S_ISSOCK(info.st_mode):
        raise UntrustedSocket(path, role, "it is not a socket (a symlink or another file is there)")
    if info.st_uid not in uids:
        owners = " or ".join(f"uid {u}" for u in uids)
        raise UntrustedSocket(path, role, f"it is owned by uid {info.st_uid}, not by {owners}")
    return True
