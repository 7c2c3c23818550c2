"""The project's exceptions.

Every expected failure is a :class:`XenChannelError`.  Each subclass keeps
the offending values as attributes (so tests and API users can inspect
them) and renders a one-line message naming the thing at fault.  Entry
points (``cli.main``, ``hook.main``) turn these into ``xen-channel: error:
...`` on stderr and an exit code; nothing below the entry points prints or
exits.
"""

from __future__ import annotations


def escaped(text: str) -> str:
    """Text from a guest or a file, made safe to print unquoted on one line.

    The one definition of what may not reach a terminal or a log raw:
    every character ``str.isprintable`` refuses, which is C0 and C1
    controls (ESC, so no colour, cursor, title or OSC 52 clipboard
    sequences), DEL, newlines and the Unicode line and paragraph
    separators (no forged second line), every format character (the bidi
    overrides and isolates U+202A-202E and U+2066-2069, zero-width
    characters, soft hyphens: text that displays other than it reads),
    surrogates (which a UTF-8 stream cannot even encode), unassigned and
    private-use code points, and spaces other than U+0020.  Each becomes
    the escape Python's ``repr`` uses (``\\x1b``, ``\\u202e``), and a
    backslash becomes two, so the result reads back unambiguously.
    Nothing is cut: :func:`shown` bounds length for messages.
    """
    if text.isprintable() and "\\" not in text:
        return text  # the common case costs one C-level scan
    return "".join(c if c.isprintable() and c != "\\" else repr(c)[1:-1] for c in text)


def shown(value: object) -> str:
    """Quote a value from untrusted input for a one-line message.

    Strings are quoted as ``repr`` quotes them, with :func:`escaped` doing
    the escaping, so a hostile name can never split an error over two
    lines, forge a second one, or send escape sequences to a terminal.
    Other values show as their ``repr`` (escaped again in case a custom
    ``__repr__`` returns something raw).  Long values are cut, since a
    1 MB attribute must not become a 1 MB error line.
    """
    if isinstance(value, str):
        body = escaped(value)
        if "'" in value and '"' not in value:
            text = f'"{body}"'
        else:
            text = "'" + body.replace("'", "\\'") + "'"
    else:
        text = repr(value)
        if not text.isprintable():
            text = escaped(text)
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
        # A file name is untrusted too: one with a newline must not split the line.
        source = self.source if self.source.isprintable() else shown(self.source)
        where = f"{source}:{self.line}" if self.line is not None else source
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


# --- channel protocol (protocol.py, agent.py) ---------------------------------


class InvalidMessage(XenChannelError):
    """A message we were asked to send cannot be framed (no "type", too big, not JSON)."""

    def __init__(self, message_type: str | None, detail: str) -> None:
        super().__init__(message_type, detail)
        self.message_type = message_type
        self.detail = detail

    def message(self) -> str:
        what = f"{shown(self.message_type)} message" if self.message_type else "message"
        return f"cannot send {what}: {self.detail}"


class ProtocolViolation(XenChannelError):
    """The peer sent something protocol v1 does not allow at that point.

    ``peer`` names the other end (a channel name or socket path).
    """

    def __init__(self, peer: str, detail: str) -> None:
        super().__init__(peer, detail)
        self.peer = peer
        self.detail = detail

    def message(self) -> str:
        return f"{self.peer}: protocol violation: {self.detail}"


class AckTimeout(XenChannelError):
    """No answer to a request within its timeout (guest agent not running or stuck)."""

    def __init__(self, channel: str, request_id: str, seconds: float) -> None:
        super().__init__(channel, request_id, seconds)
        self.channel = channel
        self.request_id = request_id
        self.seconds = seconds

    def message(self) -> str:
        return (
            f"{self.channel}: no answer to request {shown(self.request_id)} within "
            f"{self.seconds:g} s (is the guest agent running?)"
        )


class ConfigRefused(XenChannelError):
    """The guest acked a config with status "error" (rejected whole) or "partial".

    ``results`` keeps the per-item results (a list of dicts) for callers
    that want to show them.
    """

    def __init__(
        self,
        channel: str,
        status: str,
        error: str | None,
        results: list[dict[str, object]] | None = None,
    ) -> None:
        super().__init__(channel, status, error, results)
        self.channel = channel
        self.status = status
        self.error = error
        self.results = results or []

    def message(self) -> str:
        if self.status == "error":
            return f"{self.channel}: guest rejected the config: {shown(self.error)}"
        bad = [r for r in self.results if r.get("status") not in ("applied", "unchanged")]
        listed = ", ".join(f"{shown(r.get('item'))} ({shown(r.get('status'))})" for r in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        return (
            f"{self.channel}: guest applied the config only partly: "
            f"{len(bad)} of {len(self.results)} items not applied: {listed}{more}"
        )


class ChannelUnavailable(XenChannelError):
    """A channel socket cannot be reached (missing, refused, busy, or gone)."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(path, detail)
        self.path = path
        self.detail = detail

    def message(self) -> str:
        return f"channel socket {shown(self.path)}: {self.detail}"


# --- metadata (metadata.py, monitor.py, api.py) --------------------------------


class InvalidMetadata(XenChannelError):
    """Our ``<xcb:channels>`` metadata is malformed (e.g. edited by hand with virsh edit).

    ``source`` names where it came from (a domain name, a file, ``<metadata>``);
    callers that own the domain replace the element with a fresh one.
    """

    def __init__(self, source: str, detail: str) -> None:
        super().__init__(source, detail)
        self.source = source
        self.detail = detail

    def message(self) -> str:
        return f"{self.source}: invalid xen-channel metadata: {self.detail}"


class LibvirtUnavailable(XenChannelError):
    """libvirt (the Python binding or the daemon at ``uri``) cannot be used."""

    def __init__(self, uri: str | None, detail: str) -> None:
        super().__init__(uri, detail)
        self.uri = uri
        self.detail = detail

    def message(self) -> str:
        where = shown(self.uri) if self.uri else "the default libvirt URI"
        return f"libvirt at {where}: {self.detail}"


# --- settings, path policy and registry (settings.py, paths.py, registry.py) ---


class SettingsError(InputError):
    """The settings file (or an environment override) is missing or malformed."""


class RunDirTooLong(XenChannelError):
    """The run directory leaves no room for the shortest socket path form.

    ``needed`` is the longest run directory (in bytes) that still fits.
    """

    def __init__(self, rundir: str, needed: int) -> None:
        super().__init__(rundir, needed)
        self.rundir = rundir
        self.needed = needed

    def message(self) -> str:
        size = len(self.rundir.encode("utf-8", "surrogateescape"))
        return (
            f"run directory {shown(self.rundir)} is {size} bytes; socket paths under it cannot "
            f"fit the 107-byte limit (use a run directory of at most {self.needed} bytes)"
        )


class PathNotAllowed(XenChannelError):
    """An explicit socket path outside the allowed roots (or in another domain's directory)."""

    def __init__(self, channel: str | None, path: str, reason: str) -> None:
        super().__init__(channel, path, reason)
        self.channel = channel
        self.path = path
        self.reason = reason

    def message(self) -> str:
        who = f"channel {shown(self.channel)}" if self.channel else "channel"
        return f"{who}: path {shown(self.path)} {self.reason}"


class PathConflict(XenChannelError):
    """Two domains claim one socket path; the owner keeps it."""

    def __init__(
        self, path: str, owner_uuid: str, owner_name: str | None,
        claimant_uuid: str, claimant_name: str | None,
    ) -> None:
        super().__init__(path, owner_uuid, owner_name, claimant_uuid, claimant_name)
        self.path = path
        self.owner_uuid = owner_uuid
        self.owner_name = owner_name
        self.claimant_uuid = claimant_uuid
        self.claimant_name = claimant_name

    def message(self) -> str:
        def who(name: str | None, uuid: str) -> str:
            return f"domain {shown(name)} ({uuid})" if name else f"domain {uuid}"

        claimant = who(self.claimant_name, self.claimant_uuid)
        owner = who(self.owner_name, self.owner_uuid)
        return f"socket path {shown(self.path)} wanted by {claimant} is already claimed by {owner}"


class RegistryError(XenChannelError):
    """A registry file that cannot be read, parsed or written (``path`` names it)."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(path, detail)
        self.path = path
        self.detail = detail

    def message(self) -> str:
        # The path is built from the validated run directory, so it is shown
        # whole (shown() would cut a long one and hide the file at fault).
        return f"registry file {self.path}: {self.detail}"


class UnknownDomain(XenChannelError):
    """No registry record for this domain name or UUID."""

    def __init__(self, domain: str) -> None:
        super().__init__(domain)
        self.domain = domain

    def message(self) -> str:
        return (
            f"no registered domain {shown(self.domain)} "
            "(is it running with the hooks installed?)"
        )


class InvalidUUID(XenChannelError):
    """A domain UUID that is not 32 hex digits (dashes in the usual places allowed)."""

    def __init__(self, value: str) -> None:
        super().__init__(value)
        self.value = value

    def message(self) -> str:
        return f"domain UUID {shown(self.value)} is not a UUID (32 hex digits)"


class NoSuchDomain(XenChannelError):
    """libvirt at ``uri`` has no domain with this name or UUID (api.remote_channels)."""

    def __init__(self, uri: str, domain: str) -> None:
        super().__init__(uri, domain)
        self.uri = uri
        self.domain = domain

    def message(self) -> str:
        return f"libvirt at {shown(self.uri)} has no domain {shown(self.domain)}"


class UnsafeRegistryDir(RegistryError):
    """The run directory (or a registry directory in it) is a symlink or no directory.

    The registry never follows one: a symlinked run directory would send
    every record, claim and lock wherever it points.
    """

    def __init__(self, role: str, path: str, detail: str) -> None:
        super().__init__(path, detail)
        self.role = role

    def message(self) -> str:
        return f"{self.role} {self.path} {self.detail}"


class UntrustedPath(XenChannelError):
    """A path that someone other than its rightful owner could change (trust.py)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def message(self) -> str:
        return f"{shown(self.path)} {self.reason}; only root may be able to change it"


class UntrustedSocket(XenChannelError):
    """A channel socket that someone other than root (or us) could have bound (agent.py).

    ``role`` says which socket (``broker socket``, ``QEMU socket``);
    ``reason`` why it is not trusted, naming the path at fault.
    """

    def __init__(self, path: str, role: str, reason: str) -> None:
        super().__init__(path, role, reason)
        self.path = path
        self.role = role
        self.reason = reason

    def message(self) -> str:
        return f"{self.role} {shown(self.path)}: refusing to use it: {self.reason}"


# --- qemu guest agent (qga.py, guestcmds.py) -----------------------------------
#
# ``domain`` names the agent in every message: the domain as the caller named
# it (name or UUID), or the socket path when the client was given a path.


class AgentNotConnected(XenChannelError):
    """No qemu-ga answers on the domain's org.qemu.guest_agent.0 channel.

    The channel is missing, its socket is absent or refuses, the connection
    closed, or nothing answered ``guest-sync-delimited`` in time.
    """

    def __init__(self, domain: str, detail: str) -> None:
        super().__init__(domain, detail)
        self.domain = domain
        self.detail = detail

    def message(self) -> str:
        return f"guest agent of domain {shown(self.domain)} is not connected: {self.detail}"


class AgentTimeout(XenChannelError):
    """qemu-ga answered the sync, but not ``command`` within ``seconds``."""

    def __init__(self, domain: str, command: str, seconds: float) -> None:
        super().__init__(domain, command, seconds)
        self.domain = domain
        self.command = command
        self.seconds = seconds

    def message(self) -> str:
        return (
            f"guest agent of domain {shown(self.domain)}: no answer to {shown(self.command)} "
            f"within {self.seconds:g} s"
        )


class AgentError(XenChannelError):
    """qemu-ga answered ``command`` with an error: its class and description.

    Both come from the guest, so the message shows them escaped and cut
    (:func:`shown`); the attributes keep them whole.
    """

    def __init__(self, domain: str, command: str, error_class: str, description: str) -> None:
        super().__init__(domain, command, error_class, description)
        self.domain = domain
        self.command = command
        self.error_class = error_class
        self.description = description

    def message(self) -> str:
        return (
            f"guest agent of domain {shown(self.domain)}: {shown(self.command)} failed: "
            f"{shown(self.error_class)}: {shown(self.description)}"
        )


class AgentCommandDisabled(AgentError):
    """qemu-ga refused ``command`` as disabled (``--block-rpcs``, or while frozen).

    qemu-ga says ``CommandNotFound`` / ``Command X has been disabled``.
    """

    def message(self) -> str:
        return (
            f"guest agent of domain {shown(self.domain)}: command {shown(self.command)} has "
            "been disabled in the guest (qemu-ga --block-rpcs, or filesystems are frozen)"
        )


class AgentProtocolError(XenChannelError):
    """qemu-ga (or whatever answers on its channel) sent something unusable."""

    def __init__(self, domain: str, detail: str) -> None:
        super().__init__(domain, detail)
        self.domain = domain
        self.detail = detail

    def message(self) -> str:
        return f"guest agent of domain {shown(self.domain)}: {self.detail}"
