"""Host settings: the run directory, the socket group and the allowed roots.

Sources, highest precedence first:

1. ``--rundir`` on the command line (run directory only);
2. ``$XEN_CHANNEL_RUNDIR`` (run directory only);
3. the INI file named by ``$XEN_CHANNEL_CONFIG``, else
   ``/etc/xen-channel/xen-channel.conf``, section ``[xen-channel]``;
4. the built-in defaults.

A missing *default* file is normal (a fresh install has none); a missing file
that ``$XEN_CHANNEL_CONFIG`` names is an error, because the admin asked for it.
Hooks load settings on every call, so this module stays import-light
(configparser only) and does no I/O at import time.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Mapping

from .errors import InvalidSocketPath, SettingsError
from .model import Frozen, validate_path

DEFAULT_CONFIG = "/etc/xen-channel/xen-channel.conf"
DEFAULT_RUNDIR = "/run/xen-channel"
SECTION = "xen-channel"

#: Directories libvirt itself already puts channel sockets in (FACTS §2: libxl's
#: /var/lib/libvirt/libxl/channel/target/..., qemu's /var/lib/libvirt/qemu/channel/
#: target/... on libvirt 9.0 and /run/libvirt/qemu/channel/... on newer ones).
#: Allowing them by default keeps hand-typed paths of existing domains working
#: once the hooks are installed, and grants nothing libvirt does not already do
#: there.  ``allowed_roots =`` (empty) in the file narrows this to the run
#: directory alone.
LIBVIRT_CHANNEL_ROOTS = (
    "/var/lib/libvirt/qemu/channel",
    "/var/lib/libvirt/libxl/channel",
    "/run/libvirt/qemu/channel",
)

_KEYS = ("rundir", "group", "allowed_roots")
_GROUP_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\$?")


class Settings(Frozen):
    """Resolved settings.

    ``rundir`` is absolute and normalized; ``allowed_roots`` always starts
    with ``rundir`` and holds normalized absolute directories.
    ``group`` is a group name or numeric gid (resolved by whoever chowns).
    """

    __slots__ = ("rundir", "group", "allowed_roots")
    rundir: str
    group: str | None
    allowed_roots: tuple[str, ...]

    def __init__(self, rundir: str, group: str | None, allowed_roots: tuple[str, ...]) -> None:
        self._set(rundir=rundir, group=group, allowed_roots=tuple(allowed_roots))


def load_settings(
    rundir: str | None = None, environ: Mapping[str, str] = os.environ
) -> Settings:
    """Resolve settings from ``rundir`` (``--rundir``), ``environ`` and the file.

    Raises SettingsError (naming the file and line, or the variable) for a
    missing named file, a malformed file, an unknown key or a bad value.
    A run directory too long for the path policy is *not* refused here, so
    ``list``/``show`` still read it; paths.socket_path raises RunDirTooLong.
    """
    named = environ.get("XEN_CHANNEL_CONFIG") or None
    config_path = named or DEFAULT_CONFIG
    values = _read_file(config_path, required=named is not None)

    chosen_rundir: str
    source: str
    if rundir:
        chosen_rundir, source = rundir, "--rundir"
    elif environ.get("XEN_CHANNEL_RUNDIR"):
        chosen_rundir, source = environ["XEN_CHANNEL_RUNDIR"], "$XEN_CHANNEL_RUNDIR"
    elif "rundir" in values:
        chosen_rundir, source = values["rundir"], f"{config_path}: rundir"
    else:
        chosen_rundir, source = DEFAULT_RUNDIR, "default rundir"
    normalized_rundir = _directory(chosen_rundir, source)
    if normalized_rundir == "/":
        raise SettingsError(source, "the run directory cannot be '/'")

    group = values.get("group", "").strip() or None
    if group is not None and not _GROUP_RE.fullmatch(group):
        raise SettingsError(f"{config_path}: group", f"{group!r} is not a group name or gid")

    if "allowed_roots" in values:
        extra = tuple(
            _directory(root, f"{config_path}: allowed_roots")
            for root in re.split(r"[:\s]+", values["allowed_roots"])
            if root
        )
    else:
        extra = LIBVIRT_CHANNEL_ROOTS
    roots = tuple(dict.fromkeys((normalized_rundir, *extra)))

    return Settings(rundir=normalized_rundir, group=group, allowed_roots=roots)


def _read_file(path: str, *, required: bool) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    try:
        with open(path, encoding="utf-8") as handle:
            parser.read_file(handle, source=path)
    except FileNotFoundError:
        if required:
            raise SettingsError(path, "no such file (named by $XEN_CHANNEL_CONFIG)") from None
        return {}
    except UnicodeDecodeError:
        raise SettingsError(path, "is not UTF-8 text") from None
    except OSError as exc:
        raise SettingsError(path, f"cannot read: {exc.strerror or exc}") from None
    except configparser.Error as exc:
        # configparser's own messages span several lines; keep one.
        line = getattr(exc, "lineno", None)
        if line is None and getattr(exc, "errors", None):
            line = exc.errors[0][0]  # type: ignore[attr-defined]
        detail = {
            configparser.MissingSectionHeaderError: "text before the first [section] header",
            configparser.DuplicateSectionError: "a section appears twice",
            configparser.DuplicateOptionError: "a key appears twice",
        }.get(type(exc), "malformed INI syntax")
        raise SettingsError(path, detail, line) from None
    if not parser.has_section(SECTION):
        return {}
    values = dict(parser.items(SECTION, raw=True))
    for key in values:
        if key not in _KEYS and key not in parser.defaults():
            raise SettingsError(
                path, f"unknown key {key!r} in [{SECTION}] (known: {', '.join(_KEYS)})"
            )
    return {k: v for k, v in values.items() if k in _KEYS}


def _directory(value: str, source: str) -> str:
    """Validate and normalize a directory setting (absolute, no '..', xl-safe)."""
    try:
        validate_path(value)
    except InvalidSocketPath as exc:
        raise SettingsError(source, f"directory {value!r} {exc.rule}") from None
    normalized = os.path.normpath(value)
    # POSIX normpath keeps a leading '//' (implementation-defined); we do not.
    return "/" + normalized.lstrip("/")
