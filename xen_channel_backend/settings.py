"""Host settings: the run directory, the socket group and the allowed roots.

Sources, highest precedence first:

1. ``--rundir`` on the command line (run directory only);
2. ``$XEN_CHANNEL_RUNDIR`` (run directory only);
3. the INI file named by ``$XEN_CHANNEL_CONFIG``, else
   ``/etc/xen-channel/xen-channel.conf``, section ``[xen-channel]``;
4. the built-in defaults.

A missing *default* file is normal (a fresh install has none); a missing file
that ``$XEN_CHANNEL_CONFIG`` names is an error, because the admin asked for it.
Hooks load settings on every call, so this module stays import-light (no
configparser, no re: together they cost each hook call ~5 ms) and does no
I/O at import time.  The file is read by :func:`parse_ini`, which reads the
subset of INI the settings use exactly as configparser would
(tests/test_settings.py checks the two agree).
"""

from __future__ import annotations

import os

from .errors import InvalidSocketPath, SettingsError
from .model import Frozen, validate_path

TYPE_CHECKING = False  # not typing's: the hooks import this module on every call
if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_CONFIG = "/etc/xen-channel/xen-channel.conf"
DEFAULT_RUNDIR = "/run/xen-channel"
SECTION = "xen-channel"

#: Directories libvirt itself already puts channel sockets in (background.md §2: libxl's
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
_GROUP_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_GROUP_CHARS = _GROUP_FIRST | frozenset(".-")


def _is_group_name(text: str) -> bool:
    """A group name or gid as shadow-utils accepts it (a trailing ``$`` for Samba)."""
    body = text[:-1] if text.endswith("$") else text
    return (0 < len(body) <= 32 and body[0] in _GROUP_FIRST
            and _GROUP_CHARS.issuperset(body))


class Settings(Frozen):
    """Resolved settings.

    ``rundir`` is absolute and normalized; ``allowed_roots`` always starts
    with ``rundir`` and holds normalized absolute directories.
    ``group`` is a group name or numeric gid (resolved by whoever chowns).
    """

    __slots__ = ("allowed_roots", "group", "rundir")
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
    if group is not None and not _is_group_name(group):
        raise SettingsError(f"{config_path}: group", f"{group!r} is not a group name or gid")

    if "allowed_roots" in values:
        extra = tuple(
            _directory(root, f"{config_path}: allowed_roots")
            for root in values["allowed_roots"].replace(":", " ").split()
        )
    else:
        extra = LIBVIRT_CHANNEL_ROOTS
    roots = tuple(dict.fromkeys((normalized_rundir, *extra)))

    return Settings(rundir=normalized_rundir, group=group, allowed_roots=roots)


def _read_file(path: str, *, required: bool) -> dict[str, str]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        if required:
            raise SettingsError(path, "no such file (named by $XEN_CHANNEL_CONFIG)") from None
        return {}
    except UnicodeDecodeError:
        raise SettingsError(path, "is not UTF-8 text") from None
    except OSError as exc:
        raise SettingsError(path, f"cannot read: {exc.strerror or exc}") from None
    sections = parse_ini(text, path)
    defaults = sections.get("DEFAULT", {})
    if SECTION not in sections:
        return {}
    values = {**defaults, **sections[SECTION]}
    for key in sections[SECTION]:
        if key not in _KEYS:
            raise SettingsError(
                path, f"unknown key {key!r} in [{SECTION}] (known: {', '.join(_KEYS)})"
            )
    return {k: v for k, v in values.items() if k in _KEYS}


def parse_ini(text: str, source: str) -> dict[str, dict[str, str]]:
    """Sections of ``key = value`` (or ``key: value``) lines, as configparser reads them.

    configparser's defaults, strict mode, no interpolation: whole-line ``#``
    and ``;`` comments, keys folded to lower case, values stripped, an
    indented line continuing the value before it, and a duplicate section or
    key, text before the first header, or a line that is no ``key = value``
    an error naming the line.
    """
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    last_key: str | None = None
    key_indent = 0
    blank_lines = 0  # kept inside a value when a continuation line follows
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line[:1] in ("#", ";"):
            continue
        if not line:
            blank_lines += 1
            continue
        indent = len(raw) - len(raw.lstrip())
        if current is not None and last_key is not None and indent > key_indent:
            current[last_key] += "\n" * (blank_lines + 1) + line
            blank_lines = 0
            continue
        blank_lines = 0
        last_key = None
        key_indent = indent
        if line.startswith("[") and line.rfind("]") > 1:
            name = line[1:line.rindex("]")]  # configparser ignores what follows
            if name in sections:
                raise SettingsError(source, "a section appears twice", number)
            current = sections[name] = {}
            continue
        if current is None:
            raise SettingsError(source, "text before the first [section] header", number)
        cut = min((i for i in (line.find("="), line.find(":")) if i >= 0), default=-1)
        key = line[:cut].strip().lower() if cut > 0 else ""
        if not key:
            raise SettingsError(source, "malformed INI syntax", number)
        if key in current:
            raise SettingsError(source, "a key appears twice", number)
        current[key] = line[cut + 1:].strip()
        last_key = key
    return sections


def _directory(value: str, source: str) -> str:
    """Validate and normalize a directory setting (absolute, no '..', xl-safe)."""
    try:
        validate_path(value)
    except InvalidSocketPath as exc:
        raise SettingsError(source, f"directory {value!r} {exc.rule}") from None
    normalized = os.path.normpath(value)
    # POSIX normpath keeps a leading '//' (implementation-defined); we do not.
    return "/" + normalized.lstrip("/")
