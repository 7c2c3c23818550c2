"""Running under systemd: journal-aware log lines and readiness notification.

Standard library only, no libsystemd binding, so the daemons need nothing
that Debian's ``python3`` does not already have.

* **Log priorities.**  systemd connects a service's stderr to the journal and
  says so in ``$JOURNAL_STREAM`` (``DEVICE:INODE`` of that stream;
  systemd.exec(5)).  When stderr *is* that stream, each line starts with its
  syslog priority, ``<N>`` (sd-daemon(3)), which journald strips and stores,
  so ``journalctl -p warning`` shows only warnings and worse.  Anywhere else
  (a terminal, a pipe, a test) the lines stay as they were.  The check
  compares device and inode because a child inherits ``$JOURNAL_STREAM``
  even when its stderr was redirected elsewhere.
* **Readiness.**  A ``Type=notify`` unit is started when the service sends
  ``READY=1`` to ``$NOTIFY_SOCKET`` (sd_notify(3)): one datagram on a Unix
  socket, an ``@`` prefix meaning the abstract namespace.  :func:`notify`
  does exactly that and nothing when the variable is unset.
"""

from __future__ import annotations

import os
import sys

# Not typing's, and logging only where it is used: every xen-channel command
# imports this module, and most never log (logging brings threading,
# traceback and string with it).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from collections.abc import Callable, Mapping
    from importlib.machinery import ModuleSpec
    from types import ModuleType, TracebackType
    from typing import IO, Any

#: logging level -> syslog priority (RFC 5424: 3 err, 4 warning, 6 info, 7 debug).
#: The levels are logging's documented numbers (CRITICAL 50, ERROR 40,
#: WARNING 30, INFO 20), written out so this module need not import logging.
_PRIORITIES = (
    (50, 2),
    (40, 3),
    (30, 4),
    (20, 6),
)


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level (DEBUG and below: 7)."""
    for level, priority in _PRIORITIES:
        if levelno >= level:
            return priority
    return 7


def stream_is_journal(stream: IO[Any], environ: Mapping[str, str] = os.environ) -> bool:
    """True when ``stream`` is the journal stream systemd named in ``$JOURNAL_STREAM``."""
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        status = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False  # not a real file (a test's StringIO), or closed
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def priority_formatter(fmt: str) -> logging.Formatter:
    """A formatter prefixing each line with ``<N>``, its syslog priority, for journald."""
    import logging

    class PriorityFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            prefix = f"<{syslog_priority(record.levelno)}>"
            # A message is one line by our rules, but a traceback is not: give
            # every line the prefix so journald files none of it under "info".
            return "\n".join(prefix + line for line in super().format(record).split("\n"))

    return PriorityFormatter(fmt)


def configure_logging(
    stream: IO[str], fmt: str, *, debug: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """``logging.basicConfig`` on ``stream``, with priorities when it is the journal."""
    import logging

    handler = logging.StreamHandler(stream)
    journal = stream_is_journal(stream, environ)
    handler.setFormatter(priority_formatter(fmt) if journal else logging.Formatter(fmt))
    logging.basicConfig(handlers=[handler], level=logging.DEBUG if debug else logging.INFO)


class LoggingOnImport:
    """:func:`configure_logging` as soon as the logging module exists, for a ``with`` block.

    If logging is imported already, or ``debug`` asks for its output, that is
    at once.  Otherwise this waits in ``sys.meta_path`` for the first
    ``import logging``, wherever it comes from (a command's module, or one
    imported halfway through a run, such as xlprobe under ``doctor``), and
    configures logging right after the module has run, before anything can
    log.  A command that never imports logging never pays for it.  Leaving
    the block stops waiting.

    So a module may also skip importing logging for its debug records while
    ``"logging" not in sys.modules``: then nobody asked for them.
    """

    def __init__(
        self, stream: IO[str], fmt: str, *, debug: bool = False,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._stream, self._fmt, self._debug, self._environ = stream, fmt, debug, environ
        self._done = False

    def __enter__(self) -> LoggingOnImport:
        if self._debug or "logging" in sys.modules:
            self._configure()
        else:
            sys.meta_path.insert(0, self)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop_waiting()

    def _stop_waiting(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)

    def _configure(self) -> None:
        self._stop_waiting()
        if not self._done:
            self._done = True
            configure_logging(self._stream, self._fmt, debug=self._debug,
                              environ=self._environ)

    def find_spec(
        self, name: str, path: Any = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        """importlib.abc.MetaPathFinder: logging's own spec, with one step after its loader."""
        if name != "logging":
            return None
        for finder in sys.meta_path:
            find = None if finder is self else getattr(finder, "find_spec", None)
            spec: ModuleSpec | None = find(name, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        if hasattr(spec.loader, "exec_module"):
            # A Loader by its methods; importlib.abc.Loader itself would cost an import.
            spec.loader = _ThenConfigure(spec.loader, self._configure)  # type: ignore[assignment]
        return spec


class _ThenConfigure:
    """A module's loader, and a step run once the module has executed."""

    def __init__(self, loader: Any, then: Callable[[], None]) -> None:
        self._loader, self._then = loader, then

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)  # get_source, is_package, ...: the loader's own

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The module keeps its own loader: nothing of this wrapper stays behind.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        self._then()


class DebugLog:
    """``logging.getLogger(name)`` for debug records, without importing logging for them.

    While logging is not imported, nothing has configured it, so a debug
    record could only reach logging's last-resort handler, which drops
    everything below WARNING: skipping the record (and the import) changes
    nothing anyone can see.  ``xen-channel --debug`` imports and configures
    logging before the command runs (:class:`LoggingOnImport`), and an
    application that configured logging has imported it.  For a module on
    the path of a command that a script runs in a loop (qga.py), where
    importing logging (threading, traceback, string...) costs more than the
    command's own work.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def debug(self, message: str, *args: object) -> None:
        logging = sys.modules.get("logging")
        if logging is not None:
            logging.getLogger(self.name).debug(message, *args)


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; False when not run by it.

    Errors sending are ignored (returned as False): a lost notification must
    never stop the service, and systemd reports a missing ``READY=1`` itself.
    """
    address = environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False  # unset, or a vsock address we do not speak
    import socket  # here, not at the top: every command imports this module

    target = "\0" + address[1:] if address[0] == "@" else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode("utf-8", "replace"), target)
    except OSError:
        return False
    return True


def ready(status: str) -> bool:
    """Tell systemd the service is up, with a one-line ``STATUS=``."""
    return notify(f"READY=1\nSTATUS={_one_line(status)}")


def status(text: str) -> bool:
    """Update the ``STATUS=`` line ``systemctl status`` shows."""
    return notify(f"STATUS={_one_line(text)}")


def stopping(text: str = "stopping") -> bool:
    """Tell systemd the service is shutting down."""
    return notify(f"STOPPING=1\nSTATUS={_one_line(text)}")


def _one_line(text: str) -> str:
    return " ".join(text.split())
