"""``xen-channel``: argument parsing and dispatch, nothing else.

Each subcommand is a row of :data:`COMMANDS` and is handled by
``module:function(args, streams) -> int`` in the module that owns the job;
the module is imported only when its subcommand runs, so ``xen-channel
list`` never pays for lxml or libvirt.  Exit codes: 0 success, 1 bad input
or failed operation, 2 usage.

Start-up is every command's fixed cost (a script calls ``qemu-agent-command``
in a loop), so :func:`main` builds the parser of the one subcommand being
run: the top-level ``--help`` and an unknown command's error still name
every subcommand, from :data:`COMMANDS` alone.  :func:`build_parser` builds
them all, for the man pages and the tests that walk the parsers.  Nothing
here imports typing, dataclasses, logging or shutil (docs/performance.md).
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .console import PROG, Streams
from .errors import UsageError, XenChannelError
from .service import LoggingOnImport

TYPE_CHECKING = False  # not typing's: see the module docstring
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import IO, Any, NoReturn

    Handler = Callable[[argparse.Namespace, Streams], int]
    AddArguments = Callable[[argparse.ArgumentParser], None]
    _SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]
else:
    _SubParsers = argparse._SubParsersAction


def _terminal_columns() -> int:
    """``shutil.get_terminal_size().columns``, without importing shutil (bz2, lzma...)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    stdout = sys.__stdout__
    try:
        if stdout is not None:
            return os.get_terminal_size(stdout.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        pass  # closed, detached or not a terminal
    return 80


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help says its default: appended when the text does not.

    Options added later get this for free; an option without a default (None)
    must say in its own words what happens without it (tests/test_cli_help.py).
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None, **more: Any) -> None:
        # argparse sizes a formatter for every add_argument() call, importing
        # shutil for it; the width it would compute, computed here.
        if width is None:
            width = _terminal_columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width, **more)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings and action.nargs != 0 and not action.required
            and default is not None and default is not argparse.SUPPRESS
            and "default" not in text.lower()
        ):
            if isinstance(default, float) and default.is_integer():
                default = int(default)
            shown = str(default).replace("%", "%%")
            text = f"{text} (default: {shown})" if text else f"default: {shown}"
        return text


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() owns the exit code."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


# --- the subcommands' arguments -----------------------------------------------------


def _rundir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rundir", metavar="DIR",
        help="run directory (default: $XEN_CHANNEL_RUNDIR, the config file, /run/xen-channel)",
    )


def _connect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--connect", "-c", metavar="URI",
        help="libvirt URI (default: libvirt's own choice: $LIBVIRT_DEFAULT_URI, else "
             "uri_default in libvirt.conf, else the hypervisor libvirt finds)",
    )


def _convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", required=True, choices=("xl", "libvirt"),
                   help="output side: an xl.cfg channel line, or libvirt <channel> XML")
    p.add_argument("input", metavar="FILE",
                   help="domain XML (--to xl) or xl.cfg (--to libvirt); - for stdin")
    p.add_argument("--into", metavar="FILE",
                   help="print FILE with its channels replaced (default: the channels alone)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write to FILE atomically (default: standard output)")
    p.add_argument("--retarget-virtio", action="store_true",
                   help="turn virtio unix/pty channels into Xen channels")


def _fill(p: argparse.ArgumentParser) -> None:
    _rundir(p)
    p.add_argument("input", metavar="DOMAIN.xml", help="domain XML; - for stdin")
    p.add_argument("--all-targets", action="store_true", help="also allocate virtio channels")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write to FILE atomically (default: standard output)")


def _define(p: argparse.ArgumentParser) -> None:
    _rundir(p)
    _connect(p)
    p.add_argument("input", metavar="DOMAIN.xml", help="domain XML; - for stdin")
    p.add_argument("--all-targets", action="store_true", help="also allocate virtio channels")


def _list(p: argparse.ArgumentParser) -> None:
    _rundir(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--connect", "-c", metavar="URI", action="append",
                   help="read our metadata from libvirt at URI instead of the local "
                        "registry (repeatable; hosts are queried concurrently; default: "
                        "the local registry)")
    p.add_argument("--hosts", metavar="FILE",
                   help="read more URIs from FILE, one per line (# starts a comment; "
                        "default: none)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long each host may take to answer (default 30)")


def _show(p: argparse.ArgumentParser) -> None:
    _rundir(p)
    p.add_argument("domain", metavar="DOMAIN", help="domain id, name or UUID")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--connect", "-c", metavar="URI",
                   help="read the domain's metadata from libvirt at URI instead of the "
                        "local registry (default: the local registry)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long the host may take to answer (default 30)")


def _install_hooks(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hooks-dir", default="/etc/libvirt/hooks", metavar="DIR",
                   help="libvirt's hooks directory")
    p.add_argument("--uninstall", action="store_true", help="remove our shims")
    p.add_argument("--config", metavar="FILE",
                   help="make the hooks read this settings file (libvirt passes them no "
                        "environment, so $XEN_CHANNEL_CONFIG cannot reach them; default: "
                        "/etc/xen-channel/xen-channel.conf)")


def _doctor(p: argparse.ArgumentParser) -> None:
    _rundir(p)
    p.add_argument("--hooks-dir", default="/etc/libvirt/hooks", metavar="DIR",
                   help="libvirt's hooks directory")


def _monitor(p: argparse.ArgumentParser) -> None:
    _rundir(p)
    _connect(p)
    p.add_argument("--reconcile-interval", type=float, default=60.0, metavar="SECONDS",
                   help="seconds between full comparisons of the registry with libvirt")
    p.add_argument("--agent-interval", type=float, metavar="SECONDS",
                   help="ask each running domain's qemu-guest-agent this often and keep its "
                        "state, host name, OS and addresses in the live metadata (default: "
                        "off)")


def _send(p: argparse.ArgumentParser) -> None:
    _rundir(p)
    p.add_argument("domain", metavar="DOMAIN", help="domain id, name or UUID")
    p.add_argument("channel", metavar="CHANNEL", help="channel name")
    p.add_argument("--config", required=True, metavar="FILE.json", help="payload; - for stdin")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="seconds to wait for the guest's acknowledgement")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _broker(p: argparse.ArgumentParser) -> None:
    _rundir(p)
    p.add_argument("--group", metavar="GROUP",
                   help="group owning the consumer sockets (default: group = in the settings "
                        "file, else the group of the socket's directory)")
    p.add_argument("--poll-interval", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between looks at the registry")


# virsh's guest-agent commands, through qemu-ga on org.qemu.guest_agent.0 (guestcmds.py):
# each takes a domain, --timeout and --json before its own arguments.


def _agent(own: AddArguments | None = None) -> AddArguments:
    def add(p: argparse.ArgumentParser) -> None:
        _rundir(p)
        p.add_argument("domain", metavar="DOMAIN", help="domain id, name or UUID")
        p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                       help="seconds to wait for the agent, per phase (sync, then command)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        if own is not None:
            own(p)

    return add


def _qemu_agent_command(p: argparse.ArgumentParser) -> None:
    p.add_argument("command", metavar="JSON", nargs="+",
                   help='the request, e.g. \'{"execute":"guest-info"}\'')
    p.add_argument("--pretty", action="store_true", help="indent the JSON reply")


def _domifaddr(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interface", metavar="NAME",
                   help="only this interface (default: all)")
    p.add_argument("--full", action="store_true",
                   help="repeat the name and MAC address on every address line")
    p.add_argument("--source", choices=("agent",), default="agent",
                   help="where addresses come from; only the agent is available here")


def _guestinfo(p: argparse.ArgumentParser) -> None:
    for flag, what in (("--user", "logged-in users"), ("--os", "operating system"),
                       ("--timezone", "time zone"), ("--hostname", "host name"),
                       ("--filesystem", "filesystems"), ("--disk", "disks"),
                       ("--interface", "network interfaces")):
        p.add_argument(flag, action="store_true", help=f"report {what} (none given: all)")


def _domfsfreeze(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mountpoint", action="append", metavar="PATH",
                   help="freeze only this mount point (repeatable; default: every filesystem)")


def _domfsthaw(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mountpoint", action="append", metavar="PATH",
                   help="refused, as by libvirt: qemu-ga thaws every frozen filesystem "
                        "(default: all)")


def _set_user_password(p: argparse.ArgumentParser) -> None:
    p.add_argument("user", metavar="USER", help="the guest account")
    p.add_argument("--password-file", metavar="FILE",
                   help="read the password from FILE, - for stdin (default: prompt on a "
                        "terminal, else stdin)")
    p.add_argument("--encrypted", action="store_true",
                   help="the password is already a crypt(3) hash")


def _domtime(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--now", action="store_true", help="set it to this host's time")
    group.add_argument("--sync", action="store_true",
                       help="set it from the guest's own hardware clock")
    group.add_argument("--time", type=int, metavar="EPOCH",
                       help="set it to EPOCH seconds (default: only read the time)")
    p.add_argument("--pretty", action="store_true", help="print the time as a UTC date")


def _power(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", required=True, choices=("agent",),
                   help="how; only agent (qemu-ga's guest-shutdown) is available here")


#: (name, "module:function" handling it, one-line help, adds its arguments), in
#: the order --help and the man page list them.
COMMANDS: tuple[tuple[str, str, str, AddArguments], ...] = (
    ("convert", "convert:run", "convert channels between libvirt XML and xl.cfg", _convert),
    ("fill", "allocate:run_fill", "allocate socket paths for a domain's channels", _fill),
    ("define", "allocate:run_define", "fill a domain, then define it in libvirt", _define),
    ("list", "inventory:run_list", "list domains with registered channels", _list),
    ("show", "inventory:run_show", "show one domain's channels", _show),
    ("install-hooks", "install:run_install_hooks", "install the libvirt hook shims",
     _install_hooks),
    ("doctor", "doctor:run", "check this host's set-up", _doctor),
    ("monitor", "monitor:run", "follow libvirt events; keep metadata and registry current",
     _monitor),
    ("send", "agent:run_send", "push a configuration to a guest and wait for its ack", _send),
    ("broker", "broker:run_broker", "share each channel socket among local consumers",
     _broker),
    ("qemu-agent-command", "guestcmds:run_qemu_agent_command",
     "send a raw command to the guest's qemu-guest-agent", _agent(_qemu_agent_command)),
    ("domifaddr", "guestcmds:run_domifaddr",
     "show the guest's interface addresses, as its agent reports them", _agent(_domifaddr)),
    ("guestinfo", "guestcmds:run_guestinfo",
     "show what the guest agent reports (libvirt's typed-parameter keys)", _agent(_guestinfo)),
    ("domfsfreeze", "guestcmds:run_domfsfreeze", "freeze the guest's filesystems",
     _agent(_domfsfreeze)),
    ("domfsthaw", "guestcmds:run_domfsthaw", "thaw the guest's frozen filesystems",
     _agent(_domfsthaw)),
    ("domfsinfo", "guestcmds:run_domfsinfo", "list the guest's mounted filesystems", _agent()),
    ("set-user-password", "guestcmds:run_set_user_password",
     "set a guest user's password (read from a file or stdin, never argv)",
     _agent(_set_user_password)),
    ("domtime", "guestcmds:run_domtime", "get or set the guest's clock", _agent(_domtime)),
    ("shutdown", "guestcmds:run_shutdown", "shut down the guest through its agent",
     _agent(_power)),
    ("reboot", "guestcmds:run_reboot", "reboot the guest through its agent", _agent(_power)),
)


# --- the parser -----------------------------------------------------------------------


class _Commands(_SubParsers):
    """The subcommands, each parser built when its command is the one run.

    argparse looks a subcommand up in ``choices`` (is it one?) and in its
    name -> parser map (parse the rest) only in :meth:`__call__`; listing them
    in --help takes their names and help texts.  So until a parser is needed,
    ``choices`` maps the name to None and the help text is all there is.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: dict[str, tuple[str, str, AddArguments]] = {}
        self.choices: dict[str, Any] = {}

    def add_command(self, name: str, handler: str, help_text: str,
                    add_arguments: AddArguments) -> None:
        # What add_parser(name, help=...) records for --help, without the parser.
        self._choices_actions.append(self._ChoicesPseudoAction(name, (), help_text))
        self._pending[name] = (handler, help_text, add_arguments)
        self.choices[name] = None

    def build(self, name: str) -> argparse.ArgumentParser:
        """The parser of ``name``, exactly what ``add_parser`` would have made."""
        pending = self._pending.pop(name, None)
        if pending is not None:
            handler, help_text, add_arguments = pending
            parser = self._parser_class(prog=f"{self._prog_prefix} {name}",
                                        description=help_text,
                                        formatter_class=_HelpFormatter)
            parser.set_defaults(handler=handler)
            add_arguments(parser)
            self._name_parser_map[name] = parser
            self.choices[name] = parser
        return self._name_parser_map[name]

    def build_all(self) -> None:
        for name in list(self._pending):
            self.build(name)
        # From here on, as argparse itself has it: choices *is* the name -> parser map.
        self.choices = self._name_parser_map

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        if values and values[0] in self._pending:
            self.build(values[0])
        super().__call__(parser, namespace, values, option_string)


def _top_parser() -> tuple[argparse.ArgumentParser, _Commands]:
    parser = _Parser(prog=PROG, description="Xen PV channels for libvirt hosts.",
                     formatter_class=_HelpFormatter)
    parser.add_argument("--debug", action="store_true", help="log debug details to stderr")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser,
                                action=_Commands)
    assert isinstance(sub, _Commands)
    sub.required = True
    for name, handler, help_text, add_arguments in COMMANDS:
        sub.add_command(name, handler, help_text, add_arguments)
    return parser, sub


def build_parser() -> argparse.ArgumentParser:
    """The whole parser, every subcommand's built (scripts/manpages.py, the tests)."""
    parser, commands = _top_parser()
    commands.build_all()
    return parser


def _resolve(spec: str) -> Handler:
    import importlib

    module_name, function = spec.split(":")
    module = importlib.import_module(f"{__package__}.{module_name}")
    handler: Handler = getattr(module, function)
    return handler


def main(
    argv: Sequence[str] | None = None,
    stdin: IO[Any] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    streams = Streams.from_args(stdin, stdout, stderr)
    parser, _ = _top_parser()  # each subcommand's parser is built when it runs
    try:
        if argv is None:
            argv = sys.argv[1:]
        if any(a in ("-h", "--help", "--version") for a in argv):
            import contextlib

            # argparse prints help (or the version) and exits; let it print to our stdout.
            try:
                with contextlib.redirect_stdout(streams.stdout):
                    parser.parse_args(argv)
            except SystemExit as exc:
                return int(exc.code or 0)
        args = parser.parse_args(argv)
        # Under systemd each line carries its syslog priority (service.py); set up
        # when logging is first imported, which most commands never do.
        with LoggingOnImport(streams.stderr, f"{PROG}: %(message)s", debug=args.debug):
            return _resolve(args.handler)(args, streams)
    except XenChannelError as exc:
        streams.error(exc.message())
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except OSError as exc:
        # An environment problem (permissions, a full disk): still one line.
        where = f": {exc.filename}" if exc.filename else ""
        streams.error(f"{exc.strerror or exc}{where}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
