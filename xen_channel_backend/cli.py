"""``xen-channel``: argument parsing and dispatch, nothing else.

Each subcommand is declared here and handled by ``module:function(args,
streams) -> int`` in the module that owns the job; the module is imported only
when its subcommand runs, so ``xen-channel list`` never pays for lxml or
libvirt.  Exit codes: 0 success, 1 bad input or failed operation, 2 usage.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import IO, Any, NoReturn

from . import __version__
from .console import PROG, Streams
from .errors import UsageError, XenChannelError
from .service import configure_logging

Handler = Callable[[argparse.Namespace, Streams], int]


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help says its default: appended when the text does not.

    Options added later get this for free; an option without a default (None)
    must say in its own words what happens without it (tests/test_cli_help.py).
    """

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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Xen PV channels for libvirt hosts.",
                     formatter_class=_HelpFormatter)
    parser.add_argument("--debug", action="store_true", help="log debug details to stderr")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, handler: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text,
                           formatter_class=_HelpFormatter)
        p.set_defaults(handler=handler)
        return p

    p = command("convert", "convert:run", "convert channels between libvirt XML and xl.cfg")
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

    p = command("fill", "allocate:run_fill", "allocate socket paths for a domain's channels")
    _rundir(p)
    p.add_argument("input", metavar="DOMAIN.xml", help="domain XML; - for stdin")
    p.add_argument("--all-targets", action="store_true", help="also allocate virtio channels")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write to FILE atomically (default: standard output)")

    p = command("define", "allocate:run_define", "fill a domain, then define it in libvirt")
    _rundir(p)
    _connect(p)
    p.add_argument("input", metavar="DOMAIN.xml", help="domain XML; - for stdin")
    p.add_argument("--all-targets", action="store_true", help="also allocate virtio channels")

    p = command("list", "inventory:run_list", "list domains with registered channels")
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

    p = command("show", "inventory:run_show", "show one domain's channels")
    _rundir(p)
    p.add_argument("domain", metavar="DOMAIN", help="domain name or UUID")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--connect", "-c", metavar="URI",
                   help="read the domain's metadata from libvirt at URI instead of the "
                        "local registry (default: the local registry)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="how long the host may take to answer (default 30)")

    p = command("install-hooks", "install:run_install_hooks", "install the libvirt hook shims")
    p.add_argument("--hooks-dir", default="/etc/libvirt/hooks", metavar="DIR",
                   help="libvirt's hooks directory")
    p.add_argument("--uninstall", action="store_true", help="remove our shims")
    p.add_argument("--config", metavar="FILE",
                   help="make the hooks read this settings file (libvirt passes them no "
                        "environment, so $XEN_CHANNEL_CONFIG cannot reach them; default: "
                        "/etc/xen-channel/xen-channel.conf)")

    p = command("doctor", "doctor:run", "check this host's set-up")
    _rundir(p)
    p.add_argument("--hooks-dir", default="/etc/libvirt/hooks", metavar="DIR",
                   help="libvirt's hooks directory")

    p = command("monitor", "monitor:run",
                "follow libvirt events; keep metadata and registry current")
    _rundir(p)
    _connect(p)
    p.add_argument("--reconcile-interval", type=float, default=60.0, metavar="SECONDS",
                   help="seconds between full comparisons of the registry with libvirt")
    p.add_argument("--agent-interval", type=float, metavar="SECONDS",
                   help="ask each running domain's qemu-guest-agent this often and keep its "
                        "state, host name, OS and addresses in the live metadata (default: "
                        "off)")

    p = command("send", "agent:run_send", "push a configuration to a guest and wait for its ack")
    _rundir(p)
    p.add_argument("domain", metavar="DOMAIN", help="domain name or UUID")
    p.add_argument("channel", metavar="CHANNEL", help="channel name")
    p.add_argument("--config", required=True, metavar="FILE.json", help="payload; - for stdin")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                   help="seconds to wait for the guest's acknowledgement")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("broker", "broker:run_broker", "share each channel socket among local consumers")
    _rundir(p)
    p.add_argument("--group", metavar="GROUP",
                   help="group owning the consumer sockets (default: group = in the settings "
                        "file, else the group of the socket's directory)")
    p.add_argument("--poll-interval", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between looks at the registry")

    _guest_agent_commands(command)
    return parser


def _guest_agent_commands(command: Callable[[str, str, str], argparse.ArgumentParser]) -> None:
    """virsh's guest-agent commands, through qemu-ga on org.qemu.guest_agent.0 (guestcmds.py)."""

    def agent_command(name: str, handler: str, help_text: str) -> argparse.ArgumentParser:
        p = command(name, f"guestcmds:{handler}", help_text)
        _rundir(p)
        p.add_argument("domain", metavar="DOMAIN", help="domain name or UUID")
        p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                       help="seconds to wait for the agent, per phase (sync, then command)")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        return p

    p = agent_command("qemu-agent-command", "run_qemu_agent_command",
                      "send a raw command to the guest's qemu-guest-agent")
    p.add_argument("command", metavar="JSON", nargs="+",
                   help='the request, e.g. \'{"execute":"guest-info"}\'')
    p.add_argument("--pretty", action="store_true", help="indent the JSON reply")

    p = agent_command("domifaddr", "run_domifaddr",
                      "show the guest's interface addresses, as its agent reports them")
    p.add_argument("--interface", metavar="NAME",
                   help="only this interface (default: all)")
    p.add_argument("--full", action="store_true",
                   help="repeat the name and MAC address on every address line")
    p.add_argument("--source", choices=("agent",), default="agent",
                   help="where addresses come from; only the agent is available here")

    p = agent_command("guestinfo", "run_guestinfo",
                      "show what the guest agent reports (libvirt's typed-parameter keys)")
    for flag, what in (("--user", "logged-in users"), ("--os", "operating system"),
                       ("--timezone", "time zone"), ("--hostname", "host name"),
                       ("--filesystem", "filesystems"), ("--disk", "disks"),
                       ("--interface", "network interfaces")):
        p.add_argument(flag, action="store_true", help=f"report {what} (none given: all)")

    p = agent_command("domfsfreeze", "run_domfsfreeze", "freeze the guest's filesystems")
    p.add_argument("--mountpoint", action="append", metavar="PATH",
                   help="freeze only this mount point (repeatable; default: every filesystem)")

    p = agent_command("domfsthaw", "run_domfsthaw", "thaw the guest's frozen filesystems")
    p.add_argument("--mountpoint", action="append", metavar="PATH",
                   help="refused, as by libvirt: qemu-ga thaws every frozen filesystem "
                        "(default: all)")

    agent_command("domfsinfo", "run_domfsinfo", "list the guest's mounted filesystems")

    p = agent_command("set-user-password", "run_set_user_password",
                      "set a guest user's password (read from a file or stdin, never argv)")
    p.add_argument("user", metavar="USER", help="the guest account")
    p.add_argument("--password-file", metavar="FILE",
                   help="read the password from FILE, - for stdin (default: prompt on a "
                        "terminal, else stdin)")
    p.add_argument("--encrypted", action="store_true",
                   help="the password is already a crypt(3) hash")

    p = agent_command("domtime", "run_domtime", "get or set the guest's clock")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--now", action="store_true", help="set it to this host's time")
    group.add_argument("--sync", action="store_true",
                       help="set it from the guest's own hardware clock")
    group.add_argument("--time", type=int, metavar="EPOCH",
                       help="set it to EPOCH seconds (default: only read the time)")
    p.add_argument("--pretty", action="store_true", help="print the time as a UTC date")

    for name, what in (("shutdown", "shut down"), ("reboot", "reboot")):
        p = agent_command(name, f"run_{name}", f"{what} the guest through its agent")
        p.add_argument("--mode", required=True, choices=("agent",),
                       help="how; only agent (qemu-ga's guest-shutdown) is available here")


def _resolve(spec: str) -> Handler:
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
    parser = build_parser()
    try:
        if argv is None:
            argv = sys.argv[1:]
        if any(a in ("-h", "--help", "--version") for a in argv):
            # argparse prints help (or the version) and exits; let it print to our stdout.
            try:
                with contextlib.redirect_stdout(streams.stdout):
                    parser.parse_args(argv)
            except SystemExit as exc:
                return int(exc.code or 0)
        args = parser.parse_args(argv)
        # Under systemd each line carries its syslog priority (service.py).
        configure_logging(streams.stderr, f"{PROG}: %(message)s", debug=args.debug)
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
