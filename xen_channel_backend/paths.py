"""The socket path policy: where a domain's channel sockets live.

Formula (``R`` = the run directory, ``U`` = the domain UUID in canonical
lower-case 8-4-4-4-12 form, ``N`` = the channel's target name)::

    domain_socket_dir = R + "/" + U
    socket_path       = domain_socket_dir + "/" + leaf(N)
    budget            = 107 - len(domain_socket_dir) - 1
    leaf(N)           = N                                    if len(N) <= budget
                      = N[:budget - 17] + "~" + sha256(N)[:16]  otherwise

Why this shape:

* The directory is keyed on the UUID, never on the domain name: names are
  renamable and libvirt's own name-keyed paths overflow sun_path (background.md §2,
  and oVirt moved to UUIDs for the same reason, background.md §5).  The same
  (UUID, name, run directory) gives the same path on every host, which keeps
  migration simple.
* 107 bytes: sun_path is 108 bytes including the NUL (model.MAX_SOCKET_PATH).
  Truncating instead of hashing merged two sockets in virtcontainers #552.
* Injective: distinct UUIDs give distinct directories.  Within one directory a
  plain leaf is a valid channel name and so never contains ``~``
  (model.NAME_RULE), while a hashed leaf always does, so the two forms never
  meet.  Two hashed leaves are equal only if 64 bits of SHA-256 agree
  (a bounded-length form cannot be injective over 100-character names; this
  is as close as counting allows).
* Confined: U is hex and dashes, a leaf is name characters plus ``~``, so no
  ``/`` or ``..`` can appear, and the run directory itself is normalized.
* The run directory must leave room for the shortest leaf (17 bytes), so it is
  at most :data:`MAX_RUNDIR` (52) bytes; a longer one is an error naming it.

Explicit (hand-typed) paths are not rewritten.  :func:`is_ours` decides
whether one is ours to manage (inside an allowed root) or only recorded (any
other path); inside the run directory it must lie in the domain's own
directory.  Those checks are lexical; symlinks are dealt with where
directories are opened (:func:`make_dirs_nofollow`, :func:`open_dir_nofollow`).
"""

from __future__ import annotations

import os
import stat

from .errors import InvalidSocketPath, InvalidUUID, PathNotAllowed, RunDirTooLong
from .model import MAX_SOCKET_PATH, validate_name, validate_path

TYPE_CHECKING = False  # not typing's: the hook imports this module on every call
if TYPE_CHECKING:
    from collections.abc import Iterable

    from .settings import Settings

HASH_CHARS = 16
#: ``~`` is outside model.NAME_RULE's alphabet, so only hashed leaves contain it.
HASH_MARK = "~"
MIN_LEAF = len(HASH_MARK) + HASH_CHARS
UUID_CHARS = 36
#: '@' cannot occur in a channel name (model.NAME_RULE), so a broker socket
#: never collides with a socket that allocation derived from a channel name.
BROKER_SUFFIX = "@broker"
_BROKER_HASHED_PREFIX = "@"
_BROKER_HASH_HEX = 12
#: Longest run directory (bytes) for which every channel name still fits.
MAX_RUNDIR = MAX_SOCKET_PATH - 1 - UUID_CHARS - 1 - MIN_LEAF

_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_UUID_GROUPS = (8, 4, 4, 4, 12)


def sha256_hex(data: bytes) -> str:
    """SHA-256 of ``data`` in hex, without importing hashlib on the hooks' path.

    hashlib loads OpenSSL's libcrypto (2-4 ms of every hook call); CPython's
    built-in _sha256 computes the same digest.  hashlib is the fallback on
    an interpreter without it (3.12 renamed it _sha2).
    """
    try:
        from _sha256 import sha256  # type: ignore[import-not-found]
    except ImportError:  # pragma: no cover - other interpreters
        try:
            from _sha2 import sha256  # type: ignore[import-not-found,no-redef]
        except ImportError:
            from hashlib import sha256
    digest: str = sha256(data).hexdigest()
    return digest


def _is_uuid(text: str) -> bool:
    """8-4-4-4-12 hex digits, each dash optional (as libvirt accepts them)."""
    position = 0
    for index, size in enumerate(_UUID_GROUPS):
        group = text[position:position + size]
        if len(group) != size or not _HEX_DIGITS.issuperset(group):
            return False
        position += size
        if index < len(_UUID_GROUPS) - 1 and text[position:position + 1] == "-":
            position += 1
    return position == len(text)


def canonical_uuid(value: str) -> str:
    """Return ``value`` as lower-case 8-4-4-4-12; raise InvalidUUID otherwise.

    libvirt accepts the UUID with or without dashes and in either case, so the
    one domain must map to one directory whichever spelling its XML uses.
    Formatted by hand: the uuid module imports platform, which costs the hook
    several milliseconds on every call.
    """
    text = value.strip()
    if not _is_uuid(text):
        raise InvalidUUID(value)
    h = text.replace("-", "").lower()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def check_rundir(rundir: str) -> None:
    """Raise RunDirTooLong if ``rundir`` cannot hold the shortest socket path."""
    if len(rundir.encode("utf-8", "surrogateescape")) > MAX_RUNDIR:
        raise RunDirTooLong(rundir, MAX_RUNDIR)


def domain_socket_dir(settings: Settings, uuid: str) -> str:
    """The directory holding every allocated socket of domain ``uuid``."""
    check_rundir(settings.rundir)
    return f"{settings.rundir}/{canonical_uuid(uuid)}"


def socket_leaf(name: str, budget: int) -> str:
    """The file name for channel ``name`` when ``budget`` bytes are free."""
    validate_name(name)
    if budget < MIN_LEAF:
        raise ValueError(f"budget {budget} is below the minimum leaf of {MIN_LEAF}")
    if len(name) <= budget:  # names are ASCII, so characters == bytes
        return name
    digest = sha256_hex(name.encode("ascii"))[:HASH_CHARS]
    return name[: budget - MIN_LEAF] + HASH_MARK + digest


def socket_path(settings: Settings, uuid: str, channel_name: str) -> str:
    """The allocated socket path of channel ``channel_name`` of domain ``uuid``."""
    directory = domain_socket_dir(settings, uuid)
    budget = MAX_SOCKET_PATH - len(directory.encode("utf-8", "surrogateescape")) - 1
    return f"{directory}/{socket_leaf(channel_name, budget)}"


def broker_socket_for(qemu_socket_path: str) -> str:
    """Where the broker serves consumers of the channel whose QEMU socket is given.

    The consumer socket is a sibling of QEMU's, so it lives in the same
    per-domain directory (mode 0750, root and the configured group) and
    disappears with it.  Normally it is ``<path>@broker``.  When that
    would pass the 107-byte sun_path limit, the sibling is
    ``@<12 hex digits of sha256(basename)>``, which fits whenever the
    directory is at most 93 bytes; allocated paths (a run directory of at
    most 52 bytes, then the UUID) always are.
    """
    validate_path(qemu_socket_path)
    direct = qemu_socket_path + BROKER_SUFFIX
    if len(direct.encode("utf-8", "surrogateescape")) <= MAX_SOCKET_PATH:
        return direct
    directory, base = os.path.split(qemu_socket_path)
    digest = sha256_hex(base.encode("utf-8", "surrogateescape"))
    short = os.path.join(directory, _BROKER_HASHED_PREFIX + digest[:_BROKER_HASH_HEX])
    if len(short.encode("utf-8", "surrogateescape")) > MAX_SOCKET_PATH:
        raise InvalidSocketPath(
            None, qemu_socket_path, "leaves no room for a broker socket beside it"
        )
    return short


def is_within(path: str, roots: Iterable[str], *, strict: bool = False) -> bool:
    """True if ``path`` is one of ``roots`` or lies below one (``strict``: below only).

    Lexical only: a path with a ``..`` component or a relative path is never
    within.  It does not see symlinks; code that creates or opens what lies
    under a root must walk it with :func:`make_dirs_nofollow` (O_NOFOLLOW at
    every component below the root), so a symlink planted inside a root
    cannot lead outside it.
    """
    if not path.startswith("/") or ".." in path.split("/"):
        return False
    normalized = "/" + os.path.normpath(path).lstrip("/")
    for root in roots:
        base = "/" + os.path.normpath(root).lstrip("/")
        if normalized == base:
            if not strict:
                return True
            continue
        if normalized.startswith(base.rstrip("/") + "/"):
            return True
    return False


def is_ours(settings: Settings, uuid: str, channel_name: str | None, path: str) -> bool:
    """Whether a socket path is ours to manage: the one answer for hooks, fill and release.

    * Strictly inside an allowed root: ours (its directory is created, a
      stale socket there cleared, and both removed at release).  Inside the
      run directory that means inside this domain's own ``RUNDIR/<uuid>``;
      a path elsewhere in the run directory belongs to another domain or to
      the registry and raises PathNotAllowed.
    * Anywhere else: not ours.  A domain that starts without our hooks must
      start with them, so such a path is never created, removed or refused;
      it is only recorded, and claimed, because two running domains on one
      path would silently steal each other's socket (QEMU unlinks whatever
      sits at its path before binding).

    The path is already valid by model.validate_path; this check is lexical
    (symlinks are dealt with where directories are opened, with O_NOFOLLOW).
    """
    if is_within(path, (settings.rundir,)):
        own = domain_socket_dir(settings, uuid)
        if not is_within(path, (own,), strict=True):
            raise PathNotAllowed(
                channel_name, path,
                f"is inside the run directory but not in this domain's directory {own}",
            )
        return True
    return is_within(path, settings.allowed_roots, strict=True)


def is_allocated(uuid: str, path: str) -> bool:
    """Whether ``path`` is one we allocated for domain ``uuid``, on any host.

    :func:`socket_path` puts every allocated socket in a directory named by
    the domain's UUID, whatever the host's run directory is called; that is
    how migrate and restore recognise the paths to re-allocate for the
    destination (where :func:`is_ours` would judge by this host's roots).
    """
    return os.path.basename(os.path.dirname(path)).lower() == canonical_uuid(uuid)


def root_of(settings: Settings, path: str) -> str:
    """The innermost allowed root strictly containing ``path`` (which must be ours)."""
    roots = [r for r in settings.allowed_roots if is_within(path, (r,), strict=True)]
    if not roots:
        raise PathNotAllowed(None, path, "is outside the allowed roots")
    return max(roots, key=len)


def open_dir_nofollow(path: str, root: str) -> int:
    """Open directory ``path`` (at or below ``root``) without following any symlink below root.

    Walks from ``root`` (trusted: it comes from the settings) one component
    at a time with O_NOFOLLOW|O_DIRECTORY relative to the parent's
    descriptor, so a directory swapped for a symlink anywhere below the root
    raises PathNotAllowed instead of leading outside it.  Returns a
    descriptor the caller closes; FileNotFoundError if a component is gone.
    """
    if not is_within(path, (root,)):
        raise PathNotAllowed(None, path, f"is not inside {root}")
    relative = os.path.relpath(os.path.normpath(path), os.path.normpath(root))
    parts = [] if relative == "." else relative.split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    current = os.path.normpath(root)
    try:
        for part in parts:
            current = f"{current.rstrip('/')}/{part}"
            child = _open_child_nofollow(fd, part, current)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_child_nofollow(parent: int, name: str, shown_as: str) -> int:
    """Open directory ``name`` in ``parent`` without following it (FileNotFoundError if gone).

    ELOOP (a symlink) and ENOTDIR (a file) are refused, never followed.
    """
    try:
        return os.open(name, _NOFOLLOW_DIR, dir_fd=parent)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise PathNotAllowed(
            None, shown_as, f"is not a plain directory ({exc.strerror})"
        ) from None


def make_dirs_nofollow(
    path: str, root: str, *, mode: int = 0o750, gid: int | None = None,
    trust_existing: bool = False,
) -> list[str]:
    """Create ``path`` (a directory at or below ``root``) without following symlinks.

    ``root`` is trusted (it comes from the settings) and is created with
    os.makedirs if missing; every component below it is opened with
    O_NOFOLLOW|O_DIRECTORY relative to its parent's descriptor, so a symlink
    or a non-directory anywhere below the root raises PathNotAllowed instead
    of being followed.  Directories created here get ``mode`` and, if given,
    group ``gid`` (owner: the caller, root in a hook).  Returns the
    directories created, outermost first, so the caller can record them.

    A component that already exists is trusted only as far as its owner and
    mode allow (checked with fstat on the descriptor just opened, so what is
    checked is what is used):

    * not owned by the effective uid (root in a hook): refused, since its
      owner could swap or fill it at will;
    * writable by group or others, above the last component: refused, since
      anyone who can write there can replace what lies below;
    * writable by group or others, the last component (the directory that
      holds the sockets, normally the domain's own): repaired to ``mode``
      and group ``gid``, since we own it.  A leftover 0777 socket directory
      is the weakness libvirt's libxl channel directory has (issue 3): anyone
      could unlink QEMU's socket and bind their own in its place.

    ``trust_existing=True`` skips those owner and mode rules for directories
    that already exist (symlinks are still never followed): for an allowed
    root that is not ours, such as libvirt's own channel directories, whose
    owners (libvirt-qemu) and modes (0777 for libxl's) are libvirt's design
    and must not be changed under other domains.
    """
    if not is_within(path, (root,)):
        raise PathNotAllowed(None, path, f"is not inside {root}")
    created: list[str] = []
    if not os.path.isdir(root):
        os.makedirs(root, mode=mode, exist_ok=True)
        created.append(root)
    relative = os.path.relpath(os.path.normpath(path), os.path.normpath(root))
    parts = [] if relative == "." else relative.split("/")
    euid = os.geteuid()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    current = os.path.normpath(root)
    try:
        for index, part in enumerate(parts):
            current = f"{current.rstrip('/')}/{part}"
            made = False
            try:
                os.mkdir(part, mode, dir_fd=fd)
                made = True
            except FileExistsError:
                pass
            child = _open_child_nofollow(fd, part, current)
            os.close(fd)
            fd = child
            info = os.fstat(fd)
            if not stat.S_ISDIR(info.st_mode):  # pragma: no cover - O_DIRECTORY
                raise PathNotAllowed(None, current, "is not a directory")
            if trust_existing and not made:
                continue
            if info.st_uid != euid:
                # Even one we just made: someone swapped it in between.
                raise PathNotAllowed(
                    None, current, f"is owned by uid {info.st_uid}, not by uid {euid}; "
                    "refusing to use a directory someone else controls",
                )
            if made:
                os.fchmod(fd, mode)  # mkdir's mode is filtered by the umask
                if gid is not None:
                    os.fchown(fd, -1, gid)
                created.append(current)
            elif info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                if index < len(parts) - 1:
                    raise PathNotAllowed(
                        None, current,
                        f"is writable by group or others (mode "
                        f"{stat.S_IMODE(info.st_mode):04o}); refusing to create below it",
                    )
                os.fchmod(fd, mode)
                if gid is not None:
                    os.fchown(fd, -1, gid)
    finally:
        os.close(fd)
    return created
