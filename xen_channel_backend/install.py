"""``xen-channel install-hooks``: put the hook shims where libvirtd runs them.

libvirt 6.5+ runs every executable in ``/etc/libvirt/hooks/<driver>.d/``
after the main ``<driver>`` script, in byte order, all of them even if one
fails (background.md §1).  So we install ``libxl.d/xen-channel`` and
``qemu.d/xen-channel`` and never touch the admin's own ``qemu``/``libxl``
scripts.  libvirtd discovers hooks only at start or on SIGHUP (tested here),
so the command ends by saying so.

The shim is rendered from :data:`SHIM_TEMPLATE`: the interpreter this command
runs under (an absolute path: libvirt's hook environment is only HOME,
``LC_ALL=C`` and PATH, background.md §1) and the directories holding this package and
lxml.  hooks/qemu and hooks/libxl in the source tree are the same template
rendered for a distribution install (``/usr/bin/python3`` and
:data:`DISTRIBUTION_PYTHONPATH`); tests/test_install.py keeps them in step.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
from collections.abc import Sequence

from .atomic import atomic_write
from .console import Streams
from .errors import XenChannelError, shown
from .settings import DEFAULT_RUNDIR

DRIVERS = ("libxl", "qemu")
#: Where Debian's python3 finds this package (and lxml) once the .deb put
#: it there; hooks/qemu and hooks/libxl are the shim rendered for it.
DISTRIBUTION_PYTHONPATH = ("/usr/lib/python3/dist-packages",)
SHIM_NAME = "xen-channel"
#: The line by which install and uninstall recognise a file as ours.
MARKER = "# xen-channel-backend hook shim, format 2"
#: Earlier formats are still ours: install-hooks updates them, uninstall removes them.
_MARKER_PREFIX = "# xen-channel-backend hook shim, format "
SHIM_MODE = 0o755
#: The bootstrap's exit status when the package does not load (sysexits'
#: EX_UNAVAILABLE); the shim then decides whether the domain may still start.
EXIT_BROKEN = 69

SHIM_TEMPLATE = r"""#!/bin/sh
@MARKER@
# libvirt @DRIVER@ hook: libvirtd runs it as `HOOK DOMAIN OP SUBOP EXTRA`, with
# the domain XML on stdin and only HOME, LC_ALL=C and PATH in the environment.
# Written by `xen-channel install-hooks` (which rewrites it; --uninstall
# removes it).  The contract is in docs/hooks.md.
driver=@DRIVER@
python=@PYTHON@
pythonpath=@PYTHONPATH@
config=@CONFIG@
rundir=@RUNDIR@

# Only these operations do work; every other one exits here, without
# Python (libvirtd waits for every hook).  start and stopped are not among
# them: started and release always follow and see everything they would.
# libvirt ignores EPIPE when a hook leaves its stdin unread (vircommand.c).
case "$2 $3" in
@OPERATIONS@) ;;
*) exit 0 ;;
esac

# A domain without a <channel has nothing for us: answer without Python.
xml=$(cat)
case $xml in
*"<channel"*) ;;
*) exit 0 ;;
esac

# Two answers that need no Python, keyed on the domain's UUID (libvirt
# writes it in lower case; anything else goes to Python):
uuid=${xml#*<uuid>}
uuid=${uuid%%</uuid>*}
case $uuid in
"" | *[!0-9a-f-]*) uuid= ;;
esac
if [ -n "$uuid" ]; then
    case "$2 $3" in
    "started begin")
        # Nothing to add for a domain prepare marked settled (all its
        # channels sockets with their paths in the definition): record the
        # start with a shell redirection (registry.mark_settled).
        if [ -e "$rundir/registry/settled/$uuid" ]; then
            true >"$rundir/registry/started/$uuid" 2>/dev/null
            exit 0
        fi
        ;;
    "migrate begin" | "restore begin")
        # Nothing to re-allocate when every path we allocated (in a
        # directory named by the UUID) is already in this host's directory
        # for the domain: the usual fleet, one run directory everywhere.
        here="$rundir/$uuid/"
        rest=$xml
        while :; do
            case $rest in
            *"$here"*) rest=${rest%%"$here"*}${rest#*"$here"} ;;
            *) break ;;
            esac
        done
        case $rest in
        *"/$uuid/"*) ;;
        *) exit 0 ;;
        esac
        ;;
    esac
fi

# Plainly ours: it carries our metadata, or a channel under our run
# directory.  A broken installation never stops any other domain.
ours=no
case $xml in
*"@NAMESPACE@"* | *"path='$rundir/"* | *"path=\"$rundir/"*) ours=yes ;;
esac

if [ -x "$python" ]; then
    if [ -n "$config" ]; then
        XEN_CHANNEL_CONFIG=$config
        export XEN_CHANNEL_CONFIG
    fi
    XEN_CHANNEL_PLAINLY_OURS=$ours
    export XEN_CHANNEL_PLAINLY_OURS
    # -I -S: no environment, no site.py and its .pth files (~10 ms);
    # $pythonpath names the directories holding the package and lxml.  The
    # XML goes in as a here-document: the shell writes it into the pipe
    # itself when it fits (no fork); a larger one is written by a child that
    # exits as soon as Python has read it, so no child of ours outlives the
    # hook holding libvirtd's stdout (virt-manager issue 299).
    "$python" -I -S -c '
import os, sys
sys.path += [p for p in sys.argv[1].split(":") if p]  # after the standard library
try:
    from xen_channel_backend.hook import main
except BaseException as exc:
    if os.environ.get("XEN_CHANNEL_PLAINLY_OURS") == "yes" and sys.argv[4] != "reconnect":
        why = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        sys.stderr.write(f"xen-channel: error: the hook cannot load ({why!r}); "
                         "run xen-channel doctor\n")
    sys.exit(@EXIT_BROKEN@)
sys.exit(main(sys.argv[2:]))
' "$pythonpath" "$driver" "$@" <<EOF_XEN_CHANNEL_XML
$xml
EOF_XEN_CHANNEL_XML
    status=$?
    if [ "$status" -eq @EXIT_BROKEN@ ]; then
        if [ "$ours" = yes ]; then status=1; else status=0; fi
    fi
else
    status=0
    if [ "$ours" = yes ] && [ "$2" != reconnect ]; then
        echo "xen-channel: error: the hook's interpreter $python is missing;" \
            "run xen-channel doctor" >&2
        status=1
    fi
fi
# A failed reconnect kills the running domain: never report one.
[ "$2" = reconnect ] && exit 0
exit $status
"""

# Values are rendered inside single quotes, so they may not contain one; ':'
# separates $pythonpath entries; control characters would split the script.
_UNSAFE = re.compile(r"['\\:\x00-\x1f\x7f]")


class HookInstallError(XenChannelError):
    """A hook file or directory that install-hooks will not write or remove."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(path, detail)
        self.path = path
        self.detail = detail

    def message(self) -> str:
        return f"{shown(self.path)}: {self.detail}"


def render_shim(
    driver: str, python: str, pythonpath: Sequence[str] = (), config: str | None = None,
    rundir: str = DEFAULT_RUNDIR,
) -> str:
    """The shim text for ``driver`` running ``python`` (absolute).

    ``rundir`` lets the shim recognise a domain that is plainly ours without
    Python; the operations come from the hook's own table, so the two agree.
    """
    from .hook import shim_operations
    from .metadata import NAMESPACE

    if driver not in DRIVERS:
        raise ValueError(f"unknown driver {driver!r}")
    if not os.path.isabs(python):
        raise HookInstallError(python, "the hook interpreter must be an absolute path")
    for value in (python, *pythonpath, rundir, *([config] if config else [])):
        if _UNSAFE.search(value):
            raise HookInstallError(value, "contains a quote, backslash, ':' or control "
                                   "character, which the shim cannot carry")
    operations = " | ".join(f'"{op} {subop}"' for op, subop in shim_operations(driver))
    return (
        SHIM_TEMPLATE.replace("@MARKER@", MARKER)
        .replace("@DRIVER@", driver)
        .replace("@PYTHON@", _quote(python))
        .replace("@PYTHONPATH@", _quote(":".join(pythonpath)))
        .replace("@CONFIG@", _quote(config or ""))
        .replace("@RUNDIR@", _quote(rundir))
        .replace("@OPERATIONS@", operations)
        .replace("@NAMESPACE@", NAMESPACE)
        .replace("@EXIT_BROKEN@", str(EXIT_BROKEN))
    )


def _quote(value: str) -> str:
    return f"'{value}'"


def check_shim_inputs(python: str, pythonpath: Sequence[str], config: str | None) -> None:
    """Raise UntrustedPath unless only root can change what the shim runs.

    libvirtd runs the shim as root at every domain start: whoever can write
    the interpreter, a directory on its path, or the settings file (which
    names the run directory root creates and removes things in) would be
    root at the next start.  OpenSSH's StrictModes rule (trust.py), on each
    and on every directory above it up to ``/``.
    """
    from .trust import check_trusted_path

    for path in (python, *pythonpath, *([config] if config else [])):
        check_trusted_path(path)


def runtime_pythonpath() -> list[str]:
    """The directories holding this package and lxml, for the shim's ``python -S``."""
    import lxml

    import xen_channel_backend

    paths: list[str] = []
    for module_file in (xen_channel_backend.__file__, lxml.__file__):
        assert module_file is not None
        directory = os.path.dirname(os.path.dirname(os.path.abspath(module_file)))
        if directory not in paths:
            paths.append(directory)
    return paths


def shim_paths(hooks_dir: str) -> dict[str, str]:
    return {d: os.path.join(hooks_dir, f"{d}.d", SHIM_NAME) for d in DRIVERS}


def is_ours(path: str) -> bool:
    """The file carries our marker line (any format) in its first lines."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError:
        return False
    return any(line.startswith(_MARKER_PREFIX.encode()) for line in head.split(b"\n")[:3])


def install(
    hooks_dir: str, python: str, pythonpath: Sequence[str], config: str | None,
    rundir: str = DEFAULT_RUNDIR,
) -> list[tuple[str, str]]:
    """Write both shims; returns (path, "installed"|"updated"|"unchanged").

    ``hooks_dir`` itself may be created (libvirt creates it only when it
    first needs it), but its parent must exist: a typo must not build a tree
    that libvirt never reads and report success.
    """
    parent = os.path.dirname(os.path.normpath(hooks_dir))
    if not os.path.isdir(parent):
        raise HookInstallError(hooks_dir, f"its parent {parent} is not a directory; "
                               "check --hooks-dir")
    check_shim_inputs(python, pythonpath, config)
    done = []
    for driver, path in shim_paths(hooks_dir).items():
        text = render_shim(driver, python, pythonpath, config, rundir)
        directory = os.path.dirname(path)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        if os.path.islink(path) or (os.path.lexists(path) and not is_ours(path)):
            raise HookInstallError(path, "exists and is not ours; move it away first")
        action = "installed"
        if os.path.exists(path):
            with open(path, encoding="utf-8", errors="replace") as handle:
                same = handle.read() == text
            executable = os.stat(path).st_mode & 0o777 == SHIM_MODE
            if same and executable:
                done.append((path, "unchanged"))
                continue
            action = "updated"
        atomic_write(path, text, mode=SHIM_MODE)
        done.append((path, action))
    return done


def uninstall(hooks_dir: str) -> list[tuple[str, str]]:
    """Remove our shims (only files carrying :data:`MARKER`)."""
    done = []
    for path in shim_paths(hooks_dir).values():
        if not os.path.lexists(path):
            done.append((path, "absent"))
            continue
        if os.path.islink(path) or not is_ours(path):
            raise HookInstallError(path, "is not ours; left in place")
        os.unlink(path)
        done.append((path, "removed"))
        with contextlib.suppress(OSError):
            # Only if empty: the admin may keep other hooks there.
            os.rmdir(os.path.dirname(path))
    return done


def run_install_hooks(args: argparse.Namespace, streams: Streams) -> int:
    hooks_dir = os.path.abspath(args.hooks_dir)
    if args.uninstall:
        results = uninstall(hooks_dir)
    else:
        from .settings import load_settings

        config = os.path.abspath(args.config) if getattr(args, "config", None) else None
        environ = {**os.environ, "XEN_CHANNEL_CONFIG": config} if config else os.environ
        settings = load_settings(environ=environ)
        python = os.path.abspath(sys.executable)
        results = install(hooks_dir, python, runtime_pythonpath(), config, settings.rundir)
    for path, action in results:
        print(f"{action}: {path}", file=streams.stdout)
    if any(action not in ("unchanged", "absent") for _, action in results):
        print(
            "xen-channel: note: libvirtd reads its hooks only at start or reload: run "
            "'systemctl reload libvirtd' (virtqemud or virtxend on a modular host) to apply this",
            file=streams.stderr,
        )
    return 0
