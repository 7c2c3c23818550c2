"""The one libvirt door: every libvirt connection this project opens goes through here.

* **The URI.**  ``None`` (no ``--connect``) is passed to libvirt as it is, so
  libvirt's own default resolution applies: ``$LIBVIRT_DEFAULT_URI``, then
  ``uri_default`` in libvirt.conf (``/etc/libvirt/libvirt.conf`` for root,
  ``$XDG_CONFIG_HOME/libvirt/libvirt.conf`` for other users), then probing
  the hypervisors the daemon offers.  Messages name the URI libvirt actually
  connected to (:func:`uri_of`, ``virConnectGetURI``); when the connection
  fails there is none, so :func:`default_uri_source` names the one libvirt
  was going to use and where it came from.
* **Quiet.**  libvirt-python's default error handler prints every error to
  stderr (``libvirt: Domain Config error : Invalid UUID`` for a name tried
  as a UUID).  Our callers turn errors into one line themselves, so the
  handler is silenced once per process, before the first connection.
* **One-line errors.**  A failure raises :class:`LibvirtUnavailable` with
  libvirt's message folded into one line; a missing binding says which
  package provides it.

Hooks never import this module: a hook must not call libvirt (libvirtd waits
for the hook, so a call back into it deadlocks; docs/hooks.md).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from .errors import LibvirtUnavailable

#: What a missing binding tells the admin (Debian package, then pip extra).
MISSING_BINDING = (
    "libvirt-python is not installed (apt-get install python3-libvirt, "
    "or pip install 'xen-channel-backend[libvirt]')"
)
#: libvirt.conf for root; other users read $XDG_CONFIG_HOME/libvirt/libvirt.conf.
SYSTEM_LIBVIRT_CONF = "/etc/libvirt/libvirt.conf"

_quiet_lock = threading.Lock()
_quieted = False
# libvirt's conf syntax: `uri_default = "qemu:///system"` (single quotes too).
_URI_DEFAULT = re.compile(r"""^\s*uri_default\s*=\s*(["'])(.*?)\1\s*(?:#.*)?$""")


def libvirt_module(uri: str | None = None) -> ModuleType:
    """Import libvirt-python with its error printing silenced, or raise one line."""
    try:
        import libvirt
    except ImportError:
        raise LibvirtUnavailable(uri, MISSING_BINDING) from None
    module: ModuleType = libvirt
    _quiet(module)
    return module


def _quiet(libvirt: ModuleType) -> None:
    global _quieted
    with _quiet_lock:
        if _quieted:
            return

        def ignore(_context: object, _error: object) -> None:
            return None

        libvirt.registerErrorHandler(ignore, None)
        _quieted = True


def open_connection(uri: str | None, *, read_only: bool = False) -> Any:
    """Open a connection to ``uri`` (None: libvirt's default); raise a one-line error."""
    libvirt = libvirt_module(uri)
    try:
        if read_only:
            return libvirt.openReadOnly(uri)
        return libvirt.open(uri)
    except libvirt.libvirtError as exc:
        raise connect_error(uri, exc) from None


def open_read_only(uri: str | None) -> Any:
    """A read-only connection (enough for lookups and metadata reads)."""
    return open_connection(uri, read_only=True)


def connect_error(uri: str | None, exc: BaseException) -> LibvirtUnavailable:
    """The one-line error for a failed connection to ``uri`` (None: the default)."""
    if uri:
        return LibvirtUnavailable(uri, f"cannot connect: {one_line(exc)}")
    default, source = default_uri_source()
    return LibvirtUnavailable(default, f"cannot connect ({source}): {one_line(exc)}")


def uri_of(conn: Any, fallback: str | None = None) -> str:
    """The URI ``conn`` is actually connected to, as libvirt reports it."""
    try:
        uri = conn.getURI()
    except Exception:  # any failure: report what was asked for
        uri = None
    return str(uri or fallback or "libvirt's default URI")


def one_line(exc: BaseException) -> str:
    """libvirt's message for ``exc``, folded onto one line and escaped.

    libvirt echoes names and paths it was given (a domain's name, a URI), so
    its text is untrusted: it reaches the terminal through errors.escaped.
    """
    from .errors import escaped

    getter = getattr(exc, "get_error_message", None)
    text = getter() if callable(getter) else None
    return escaped(" ".join(str(text or exc).split())) or type(exc).__name__


def default_uri_source(
    environ: Mapping[str, str] = os.environ, euid: int | None = None
) -> tuple[str | None, str]:
    """(the URI libvirt will pick for None, where it comes from), for messages.

    Mirrors libvirt's lookup (virConnectGetDefaultURI) without calling it:
    the connection it would describe has just failed.  The URI is None when
    nothing names one and libvirt probes the hypervisors instead.
    """
    value = environ.get("LIBVIRT_DEFAULT_URI")
    if value:
        return value, "$LIBVIRT_DEFAULT_URI"
    conf = libvirt_conf_path(environ, os.geteuid() if euid is None else euid)
    found = _uri_default_in(conf)
    if found:
        return found, f"uri_default in {conf}"
    return None, "no default URI set, so libvirt probed the hypervisors"


def libvirt_conf_path(environ: Mapping[str, str], euid: int) -> str:
    """The libvirt.conf a client of this user reads."""
    if euid == 0:
        return SYSTEM_LIBVIRT_CONF
    config_home = environ.get("XDG_CONFIG_HOME") or os.path.join(
        environ.get("HOME", "/"), ".config"
    )
    return os.path.join(config_home, "libvirt", "libvirt.conf")


def _uri_default_in(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read(1024 * 1024).splitlines()
    except OSError:
        return None
    for line in lines:
        match = _URI_DEFAULT.match(line)
        if match:
            return match.group(2) or None  # virConfGetValue takes the first
    return None
