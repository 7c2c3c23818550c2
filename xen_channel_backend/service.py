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

import logging
import os
from collections.abc import Mapping
from typing import IO, Any

#: logging level -> syslog priority (RFC 5424: 3 err, 4 warning, 6 info, 7 debug).
_PRIORITIES = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
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


class PriorityFormatter(logging.Formatter):
    """Prefix each line with ``<N>``, its syslog priority, for journald."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        # A message is one line by our rules, but a traceback is not: give
        # every line the prefix so journald files none of it under "info".
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def configure_logging(
    stream: IO[str], fmt: str, *, debug: bool = False,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """``logging.basicConfig`` on ``stream``, with priorities when it is the journal."""
    handler = logging.StreamHandler(stream)
    journal = stream_is_journal(stream, environ)
    handler.setFormatter(PriorityFormatter(fmt) if journal else logging.Formatter(fmt))
    logging.basicConfig(handlers=[handler], level=logging.DEBUG if debug else logging.INFO)


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to systemd; False when not run by it.

    Errors sending are ignored (returned as False): a lost notification must
    never stop the service, and systemd reports a missing ``READY=1`` itself.
    """
    address = environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False  # unset, or a vsock address we do not speak
    import socket  # here, not at the top: every command configures logging through us

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
