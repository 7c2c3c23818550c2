"""virsh's guest-agent commands for Xen domains: the operations and their CLI.

libvirt's libxl driver implements none of ``qemu-agent-command``,
``domifaddr --source agent``, ``guestinfo``, ``domfsfreeze``/``domfsthaw``/
``domfsinfo``, ``set-user-password``, ``domtime`` and ``shutdown``/``reboot
--mode agent``.  These commands do the same through the guest's qemu-ga on
the domain's ``org.qemu.guest_agent.0`` channel (qga.py), with virsh's names,
options and output layouts (pinned by golden files taken from virsh 9.0), so
an admin's habits carry over.

Three layers, each usable alone:

- operations on a connected :class:`~.qga.AgentClient` (``get_interfaces``,
  ``get_guest_info``, ...): which qemu-ga command, which arguments, and the
  typed result (agenttypes.py);
- :mod:`.api` opens the domain's agent and runs one operation (what
  management tools call);
- ``run_*``: argument handling and virsh's output, on top of the API.

Everything from the guest that is printed as text passes through
:func:`errors.escaped`; ``--json`` output is ASCII-escaped JSON.
"""

from __future__ import annotations

import json
import time

from .errors import AgentError, AgentProtocolError, InputError, UsageError, escaped, shown

# Not typing's: qemu-agent-command, which a script calls in a loop, imports
# this module on every call.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import Any, TypeVar

    from . import agenttypes as types
    from .console import Streams
    from .qga import AgentClient

    _T = TypeVar("_T")

# agenttypes (ten dataclasses) is imported by the operations that use it, not
# here: qemu-agent-command, the one a script calls in a loop, needs none.

#: guestinfo's groups: option/field name -> (qemu-ga command, agenttypes parser).
GUEST_INFO_GROUPS: dict[str, tuple[str, str]] = {
    "users": ("guest-get-users", "parse_users"),
    "os": ("guest-get-osinfo", "parse_osinfo"),
    "timezone": ("guest-get-timezone", "parse_timezone"),
    "hostname": ("guest-get-host-name", "parse_hostname"),
    "filesystems": ("guest-get-fsinfo", "parse_filesystems"),
    "disks": ("guest-get-disks", "parse_disks"),
    "interfaces": ("guest-network-get-interfaces", "parse_interfaces"),
}
SHUTDOWN_MODES = {"shutdown": "powerdown", "reboot": "reboot"}


# --- operations on a connected agent ------------------------------------------


def _parsed(
    agent: AgentClient,
    command: str,
    parse: Callable[[Any], _T],
    timeout: float,
    arguments: Mapping[str, Any] | None = None,
) -> _T:
    value = agent.execute(command, arguments, timeout=timeout)
    try:
        return parse(value)
    except ValueError as exc:
        raise AgentProtocolError(agent.domain, f"bad answer to {shown(command)}: {exc}") from None


def get_interfaces(agent: AgentClient, timeout: float) -> tuple[types.GuestInterface, ...]:
    from . import agenttypes as types

    return _parsed(agent, "guest-network-get-interfaces", types.parse_interfaces, timeout)


def get_guest_info(
    agent: AgentClient, groups: Iterable[str], timeout: float
) -> types.GuestInfo:
    """The groups asked for (names of :data:`GUEST_INFO_GROUPS`); none asked: every group.

    Like libvirt: groups asked for by name must all succeed; when none was
    named, a group whose command the agent lacks or has disabled is left
    out (None) instead of failing the rest.
    """
    from . import agenttypes as types

    wanted = list(groups)
    explicit = bool(wanted)
    found: dict[str, Any] = {}
    for group in wanted or GUEST_INFO_GROUPS:
        command, parser = GUEST_INFO_GROUPS[group]
        parse: Callable[[Any], Any] = getattr(types, parser)
        try:
            found[group] = _parsed(agent, command, parse, timeout)
        except AgentError as exc:
            if explicit or exc.error_class != "CommandNotFound":
                raise
    return types.GuestInfo(**found)


def get_filesystems(agent: AgentClient, timeout: float) -> tuple[types.GuestFilesystem, ...]:
    from . import agenttypes as types

    return _parsed(agent, "guest-get-fsinfo", types.parse_filesystems, timeout)


def freeze_filesystems(agent: AgentClient, mountpoints: Sequence[str], timeout: float) -> int:
    """Freeze the given mountpoints, or every filesystem when none is given (as libvirt)."""
    from . import agenttypes as types

    if mountpoints:
        return _parsed(agent, "guest-fsfreeze-freeze-list", types.parse_frozen_count, timeout,
                       {"mountpoints": list(mountpoints)})
    return _parsed(agent, "guest-fsfreeze-freeze", types.parse_frozen_count, timeout)


def thaw_filesystems(agent: AgentClient, timeout: float) -> int:
    from . import agenttypes as types

    return _parsed(agent, "guest-fsfreeze-thaw", types.parse_frozen_count, timeout)


def get_time(agent: AgentClient, timeout: float) -> types.GuestTime:
    from . import agenttypes as types

    return _parsed(agent, "guest-get-time", types.parse_time, timeout)


def set_time(agent: AgentClient, nanoseconds: int | None, timeout: float) -> None:
    """Set the guest's clock; None: from its own hardware clock (virsh's ``--sync``)."""
    arguments = None if nanoseconds is None else {"time": nanoseconds}
    agent.execute("guest-set-time", arguments, timeout=timeout)


def set_user_password(
    agent: AgentClient, user: str, password: str, encrypted: bool, timeout: float
) -> None:
    import base64

    data = base64.b64encode(password.encode("utf-8")).decode("ascii")
    agent.execute(
        "guest-set-user-password",
        {"username": user, "password": data, "crypted": encrypted},
        timeout=timeout,
    )


def shutdown(agent: AgentClient, action: str, timeout: float) -> bool:
    """``guest-shutdown`` (``action`` shutdown or reboot); see request_without_success_reply."""
    return agent.request_without_success_reply(
        {"execute": "guest-shutdown", "arguments": {"mode": SHUTDOWN_MODES[action]}},
        timeout=timeout,
    )


# --- virsh's layouts ---------------------------------------------------------------


def vsh_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table laid out as virsh's vshTable prints it (domfsinfo, list, domiflist).

    Each cell follows one space, columns are padded to their widest cell
    plus two spaces, the last column is not padded, and the rule under the
    header is as long as every column's width plus three.
    """
    body = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(row[i]) for row in body) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        out = ""
        for i, cell in enumerate(cells):
            out += " " + cell
            if i < len(cells) - 1:
                out += " " * (widths[i] - len(cell) + 2)
        return out + "\n"

    rule = "-" * sum(w + 3 for w in widths) + "\n"
    return line(body[0]) + rule + "".join(line(row) for row in body[1:])


def format_domifaddr(
    interfaces: Iterable[types.GuestInterface], *, full: bool = False,
    interface: str | None = None,
) -> str:
    """virsh domifaddr's table (tools/virsh-domain-monitor.c, cmdDomIfAddr)."""
    out = [
        " {:<10} {:<20} {:<8}     {}\n".format("Name", "MAC address", "Protocol", "Address"),
        "-" * 79 + "\n",
    ]
    for iface in interfaces:
        if interface is not None and iface.name != interface:
            continue
        name = escaped(iface.name)
        if not iface.addresses:
            hwaddr = escaped(iface.hwaddr) if iface.hwaddr is not None else "N/A"
            out.append(f" {name:<10} {hwaddr:<17}    {'N/A':<12} N/A\n")
            continue
        for index, address in enumerate(iface.addresses):
            text = f"{address.type:<12} {escaped(address.address)}/{address.prefix}"
            if full or index == 0:
                out.append(f" {name:<10} {escaped(iface.hwaddr or ''):<17}    {text}\n")
            else:
                out.append(f" {'-':<10} {'-':<17}    {text}\n")
    return "".join(out)


def format_param(value: types.ParamValue) -> str:
    """A typed parameter as virsh prints one (vshGetTypedParamValue)."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    return escaped(value)


def format_guestinfo(params: Iterable[tuple[str, types.ParamValue]]) -> str:
    """virsh guestinfo's ``%-20s: %s`` lines."""
    return "".join(f"{key:<20}: {format_param(value)}\n" for key, value in params)


def format_domfsinfo(filesystems: Iterable[types.GuestFilesystem]) -> str:
    rows = [
        (escaped(fs.mountpoint), escaped(fs.name), escaped(fs.fstype),
         escaped(",".join(fs.targets)))
        for fs in filesystems
    ]
    return vsh_table(("Mountpoint", "Name", "Type", "Target"), rows)


def format_domtime(guest_time: types.GuestTime, *, pretty: bool) -> str:
    if pretty:
        return "Time: " + time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(guest_time.seconds))
    return f"Time: {guest_time.seconds}"


# --- the CLI -------------------------------------------------------------------------
#
# Every handler prints what virsh prints for the same data, including the
# blank line virsh ends most commands with (vsh.c prints a newline after
# every command), so a script that parsed virsh's output parses ours.


def _timeout(args: argparse.Namespace) -> float:
    timeout: float = args.timeout
    if not timeout > 0:
        raise UsageError("--timeout must be positive")
    return timeout


def _json(value: Any, streams: Streams) -> None:
    streams.stdout.write(json.dumps(value, indent=2, ensure_ascii=True) + "\n")


def _to_json(value: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    return value


def run_qemu_agent_command(args: argparse.Namespace, streams: Streams) -> int:
    """``xen-channel qemu-agent-command DOMAIN JSON [--pretty]``: raw pass-through.

    What api.agent_command does, without importing the API module and its
    result types: scripts call this one in loops.
    """
    from .qga import connect_agent

    try:
        request = json.loads(" ".join(args.command))
    except ValueError as exc:
        raise InputError("command", f"invalid JSON: {getattr(exc, 'msg', exc)}") from None
    if not isinstance(request, dict):
        raise InputError("command", 'must be a JSON object like {"execute": "guest-ping"}')
    timeout = _timeout(args)
    with connect_agent(args.domain, rundir=args.rundir) as agent:
        reply = agent.request(request, timeout=timeout).raw
    if args.pretty:
        text = json.dumps(reply, indent=2, ensure_ascii=True)
    else:
        text = json.dumps(reply, separators=(",", ":"), ensure_ascii=True)
    streams.stdout.write(text + "\n" + ("" if args.json else "\n"))
    return 0


def run_domifaddr(args: argparse.Namespace, streams: Streams) -> int:
    from . import api

    interfaces = api.interface_addresses(args.domain, timeout=_timeout(args), rundir=args.rundir)
    if args.interface is not None:
        interfaces = tuple(i for i in interfaces if i.name == args.interface)
    if args.json:
        _json(_to_json(interfaces), streams)
    else:
        streams.stdout.write(format_domifaddr(interfaces, full=args.full) + "\n")
    return 0


def run_guestinfo(args: argparse.Namespace, streams: Streams) -> int:
    from . import api

    groups = [
        group for option, group in (
            ("user", "users"), ("os", "os"), ("timezone", "timezone"),
            ("hostname", "hostname"), ("filesystem", "filesystems"), ("disk", "disks"),
            ("interface", "interfaces"),
        ) if getattr(args, option)
    ]
    info = api.guest_info(args.domain, groups, timeout=_timeout(args), rundir=args.rundir)
    if args.json:
        _json(dict(info.params()), streams)
    else:
        streams.stdout.write(format_guestinfo(info.params()) + "\n")
    return 0


def run_domfsfreeze(args: argparse.Namespace, streams: Streams) -> int:
    from . import api

    count = api.fs_freeze(args.domain, args.mountpoint or (), timeout=_timeout(args),
                          rundir=args.rundir)
    if args.json:
        _json({"frozen": count}, streams)
    else:
        streams.stdout.write(f"Froze {count} filesystem(s)\n\n")
    return 0


def run_domfsthaw(args: argparse.Namespace, streams: Streams) -> int:
    from . import api

    if args.mountpoint:
        # As libvirt's QEMU driver: qemu-ga's guest-fsfreeze-thaw takes no list.
        raise UsageError(
            "--mountpoint is not supported by domfsthaw: qemu-ga thaws every frozen "
            "filesystem at once"
        )
    count = api.fs_thaw(args.domain, timeout=_timeout(args), rundir=args.rundir)
    if args.json:
        _json({"thawed": count}, streams)
    else:
        streams.stdout.write(f"Thawed {count} filesystem(s)\n\n")
    return 0


def run_domfsinfo(args: argparse.Namespace, streams: Streams) -> int:
    from . import api

    filesystems = api.fs_info(args.domain, timeout=_timeout(args), rundir=args.rundir)
    if args.json:
        _json(_to_json(filesystems), streams)
        return 0
    if not filesystems:
        streams.error("No filesystems are mounted in the domain")
        return 1
    streams.stdout.write(format_domfsinfo(filesystems) + "\n")
    return 0


def _read_password(args: argparse.Namespace, streams: Streams) -> str:
    """The password from ``--password-file`` (``-``: stdin), or a prompt on a terminal."""
    from .console import read_input

    spec = args.password_file
    if spec is None:
        isatty = getattr(streams.stdin, "isatty", None)
        if isatty is not None and isatty():
            import getpass

            stream: Any = streams.stderr
            return getpass.getpass("Password: ", stream=stream)
        spec = "-"
    data, label = read_input(spec, streams)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(label, "the password is not UTF-8 text") from None
    # One line, as a password file or `printf '%s\n' ... |` gives it.
    if text.endswith("\n"):
        text = text[:-1].removesuffix("\r")
    if not text:
        raise InputError(label, "the password is empty")
    if "\n" in text or "\r" in text:
        raise InputError(label, "the password must be one line")
    return text


def run_set_user_password(args: argparse.Namespace, streams: Streams) -> int:
    from . import api

    timeout = _timeout(args)
    if not args.user or ":" in args.user or not args.user.isprintable():
        raise UsageError(f"user name {shown(args.user)} is not valid")
    password = _read_password(args, streams)
    api.set_user_password(args.domain, args.user, password, encrypted=args.encrypted,
                          timeout=timeout, rundir=args.rundir)
    if args.json:
        _json({"user": args.user, "domain": args.domain, "set": True}, streams)
    else:
        streams.stdout.write(
            f"Password set successfully for {escaped(args.user)} in {escaped(args.domain)}\n"
        )
    return 0


def run_domtime(args: argparse.Namespace, streams: Streams) -> int:
    from . import api

    timeout = _timeout(args)
    if args.now or args.sync or args.time is not None:
        if args.pretty:
            raise UsageError("--pretty only applies when reading the time")
        if args.time is not None:
            nanoseconds: int | None = args.time * 1_000_000_000
        elif args.now:
            nanoseconds = time.time_ns()
        else:
            nanoseconds = None
        api.set_time(args.domain, nanoseconds, timeout=timeout, rundir=args.rundir)
        streams.stdout.write("{}\n" if args.json else "\n")
        return 0
    guest_time = api.get_time(args.domain, timeout=timeout, rundir=args.rundir)
    if args.json:
        _json(_to_json(guest_time), streams)
    else:
        streams.stdout.write(format_domtime(guest_time, pretty=args.pretty) + "\n")
    return 0


def _run_power(args: argparse.Namespace, streams: Streams, action: str) -> int:
    from . import api

    if args.mode != "agent":
        raise UsageError(
            f"only --mode agent is supported here; for other modes use "
            f"'virsh {action} DOMAIN --mode {args.mode}'"
        )
    confirmed = api.agent_power(args.domain, action, timeout=_timeout(args), rundir=args.rundir)
    if not confirmed:
        streams.warn(
            "the guest agent stopped answering after the request (the guest is going down?)"
        )
    if args.json:
        _json({"domain": args.domain, "action": action, "mode": "agent",
               "confirmed": confirmed}, streams)
    else:
        done = "shutdown" if action == "shutdown" else "rebooted"
        streams.stdout.write(f"Domain {shown(args.domain)} is being {done}\n\n")
    return 0


def run_shutdown(args: argparse.Namespace, streams: Streams) -> int:
    return _run_power(args, streams, "shutdown")


def run_reboot(args: argparse.Namespace, streams: Streams) -> int:
    return _run_power(args, streams, "reboot")
