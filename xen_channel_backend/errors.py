"""The project's exceptions.

Every expected failure is a :class:`XenChannelError`.  Each subclass keeps
the offending values as attributes (so tests and API users can inspect
them) and renders a one-line message naming the thing at fault.  Entry
points (``cli.main``, ``hook.main``) turn these into ``xen-channel: error:
...`` on stderr and an exit code; nothing below the entry points prints or
exits.
"""

from __future__ import annotations


def shown(value: object) -> str:
    """Quote a value from untrusted input for a one-line message.

    ``repr`` escapes newlines, control characters and quotes, so a hostile
    name can never split an error over two lines or forge a second one.
    Long values are cut, since a 1 MB attribute must not become a 1 MB
    error line.
    """
    text = repr(value)
    return text if len(text) <= 120 else text[:100] + "...'" + f" ({len(str(value))} chars)"


class XenChannelError(Exception):
    """Base class: an expected failure with a one-line message."""

    exit_code = 1

    def __str__(self) -> str:
        return self.message()

    def message(self) -> str:
        return " ".join(str(a) for a in self.args)


class UsageError(XenChannelError):
    """The command line itself is wrong (exit code 2, like argparse)."""

    exit_code = 2

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def message(self) -> str:
        return self.detail


class InputError(XenChannelError):
    """A file or stream could not be read or parsed.

    ``source`` names the input (a path or ``<stdin>``); ``line`` is set
    when the position is known.
    """

    def __init__(self, source: str, detail: str, line: int | None = None) -> None:
        super().__init__(source, detail, line)
        self.source = source
        self.detail = detail
        self.line = line

    def message(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.detail}"


class XmlInputError(InputError):
    """Domain XML that is malformed, unsafe (DOCTYPE/entities) or not a domain."""


class XlConfigError(InputError):
    """An xl.cfg file that xl itself would refuse, or whose meaning xl would lose."""


class InvalidChannelName(XenChannelError):
    """A channel name outside the shared naming rules (see model.NAME_RULE)."""

    def __init__(self, name: str | None, reason: str) -> None:
        super().__init__(name, reason)
        self.name = name
        self.reason = reason

    def message(self) -> str:
        if self.name is None:
            return f"channel has no name: {self.reason}"
        return f"channel name {shown(self.name)} is invalid: {self.reason}"


class InvalidSocketPath(XenChannelError):
    """A socket path that breaks one of the path rules (see model.validate_path)."""

    def __init__(self, channel: str | None, path: str, rule: str) -> None:
        super().__init__(channel, path, rule)
        self.channel = channel
        self.path = path
        self.rule = rule

    def message(self) -> str:
        who = f"channel {shown(self.channel)}" if self.channel else "channel"
        return f"{who}: path {shown(self.path)} {self.rule}"


class UnsupportedChannel(XenChannelError):
    """A channel that the Xen side cannot express (e.g. a tcp source)."""

    def __init__(self, channel: str | None, detail: str) -> None:
        super().__init__(channel, detail)
        self.channel = channel
        self.detail = detail

    def message(self) -> str:
        who = f"channel {shown(self.channel)}" if self.channel else "unnamed channel"
        return f"{who}: {self.detail}"
