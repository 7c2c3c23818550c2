"""``xen-channel doctor``: check this host's set-up, one line per check.

Each check prints ``ok``, ``warn`` or ``FAIL`` and what it saw; the command
exits 1 if any check failed (warnings do not fail).  It reads files and runs
``libvirtd --version`` and ``xl``'s dry run; it never calls the libvirt API.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Mapping

from .console import Streams
from .errors import XenChannelError, escaped

OK, WARN, FAIL = "ok", "warn", "FAIL"
#: libvirt runs every script in /etc/libvirt/hooks/<driver>.d/ since 6.5.0 (background.md §1).
HOOK_DIRS_SINCE = (6, 5, 0)
#: Where Debian keeps the real xl; /usr/sbin/xl is a wrapper that refuses
#: without /sys/hypervisor (background.md §3).
XL_CANDIDATES = ("/usr/lib/xen-*/bin/xl", "/usr/sbin/xl", "/usr/bin/xl")
LOST_CHANNEL_WORKAROUND = (
    "Debian 12's xl 4.17 gives the first channel devid 0, which collides with the primary "
    "console, so a domain started with 'xl create' never sees its first channel (fixed "
    "upstream in e1ccced4af); start such domains through libvirt (the libxl driver is not "
    "affected) or put a throw-away pty channel first in xl.cfg"
)


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str


def check_hooks(hooks_dir: str) -> list[Check]:
    """Both shims installed, ours, executable, and their interpreter present."""
    from .install import MARKER, check_shim_inputs, is_ours, shim_paths

    checks = []
    for driver, path in shim_paths(hooks_dir).items():
        name = f"{driver} hook"
        if not os.path.lexists(path):
            checks.append(Check(name, FAIL, f"{path} is missing (run xen-channel install-hooks)"))
            continue
        if os.path.islink(path) or not is_ours(path):
            checks.append(Check(name, FAIL, f"{path} is not a xen-channel shim"))
            continue
        if not os.access(path, os.X_OK):
            checks.append(Check(name, FAIL, f"{path} is not executable (libvirt skips it)"))
            continue
        values = _shim_values(path)
        python = values.get("python")
        if python is None or not os.access(python, os.X_OK):
            checks.append(Check(name, FAIL, f"{path} runs {python!r}, which is not an "
                                "executable (re-run xen-channel install-hooks)"))
            continue
        pythonpath = [p for p in values.get("pythonpath", "").split(":") if p]
        try:
            check_shim_inputs(python, pythonpath, values.get("config") or None)
        except XenChannelError as exc:
            checks.append(Check(name, FAIL, f"{path}: {exc.message()} (libvirtd runs it as "
                                "root at every domain start)"))
            continue
        with open(path, encoding="utf-8", errors="replace") as handle:
            current = MARKER in handle.read(512)
        if not current:
            checks.append(Check(name, WARN, f"{path} is an older shim format (re-run "
                                "xen-channel install-hooks)"))
            continue
        checks.append(Check(name, OK, f"{path} (python {python})"))
    return checks


def _shim_values(path: str) -> dict[str, str]:
    """The shim's ``name='value'`` settings lines (install.render_shim writes them)."""
    values = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            match = re.fullmatch(r"(python|pythonpath|config|rundir)='([^']*)'\n?", line)
            if match:
                values[match.group(1)] = match.group(2)
    return values


def check_rundir(rundir: str | None, environ: Mapping[str, str]) -> list[Check]:
    """The run directory: a root-owned real directory nobody else may write."""
    from .settings import load_settings

    try:
        settings = load_settings(rundir, environ)
    except XenChannelError as exc:
        return [Check("settings", FAIL, exc.message())]
    checks = [Check("settings", OK, f"run directory {settings.rundir}, allowed roots "
                    f"{':'.join(settings.allowed_roots)}, group {settings.group or '(none)'}")]
    if settings.group is not None and not settings.group.isdigit():
        import grp

        try:
            grp.getgrnam(settings.group)
        except KeyError:
            checks.append(Check("socket group", FAIL, f"group {settings.group!r} does not exist"))
    try:
        info = os.lstat(settings.rundir)
    except FileNotFoundError:
        checks.append(Check("run directory", WARN, f"{settings.rundir} does not exist yet (the "
                            "first prepare hook creates it)"))
        return checks
    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISDIR(info.st_mode):
        status, detail = FAIL, "is not a directory (a symlink?); the hooks refuse it"
    elif info.st_uid != 0:
        status, detail = FAIL, f"is owned by uid {info.st_uid}, not root"
    elif mode & 0o022:
        status, detail = FAIL, f"has mode {mode:04o}: others could replace sockets; use 0755"
    else:
        status, detail = OK, f"root-owned, mode {mode:04o}"
    checks.append(Check("run directory", status, f"{settings.rundir} {detail}"))
    return checks


def libvirt_version(run: Callable[[list[str]], str | None]) -> tuple[int, ...] | None:
    """libvirt's version from ``libvirtd --version`` (else ``virsh --version``)."""
    for command in (["libvirtd", "--version"], ["virsh", "--version"]):
        output = run(command)
        if output is None:
            continue
        match = re.search(r"(\d+)\.(\d+)\.(\d+)", output)
        if match:
            return tuple(int(part) for part in match.groups())
    return None


def _run(command: list[str]) -> str | None:
    executable = shutil.which(command[0], path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    if executable is None:
        return None
    try:
        result = subprocess.run([executable, *command[1:]], capture_output=True, text=True,
                                timeout=20, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def check_libvirt(run: Callable[[list[str]], str | None] = _run) -> Check:
    version = libvirt_version(run)
    if version is None:
        return Check("libvirt version", FAIL, "neither libvirtd --version nor virsh --version "
                     "answered; is libvirt installed?")
    shown = ".".join(str(v) for v in version)
    if version < HOOK_DIRS_SINCE:
        return Check("libvirt version", FAIL, f"{shown} runs no <driver>.d/ hook scripts "
                     "(needs 6.5.0 or newer)")
    return Check("libvirt version", OK, f"{shown} runs <driver>.d/ hook scripts")


def find_xl() -> str | None:
    for pattern in XL_CANDIDATES:
        for path in sorted(glob.glob(pattern), reverse=True):
            if os.access(path, os.X_OK):
                return path
    return None


def check_xl(
    xl_path: str | None, environ: Mapping[str, str],
    probe: Callable[[str, Mapping[str, str]], bool | None] | None = None,
) -> Check:
    if xl_path is None:
        return Check("xl first channel", OK, "no xl installed (domains start through libvirt)")
    if probe is None:
        from .xlprobe import first_channel_lost

        probe = first_channel_lost
    lost = probe(xl_path, environ)
    if lost is None:
        return Check("xl first channel", WARN, f"{xl_path}: cannot tell (its dry run did not "
                     "run here); if it is Xen 4.17: " + LOST_CHANNEL_WORKAROUND)
    if lost:
        return Check("xl first channel", WARN, f"{xl_path}: LOSES the first channel. "
                     + LOST_CHANNEL_WORKAROUND)
    return Check("xl first channel", OK, f"{xl_path} keeps the first channel")


def run(args: argparse.Namespace, streams: Streams) -> int:
    environ = dict(os.environ)
    checks = [
        *check_hooks(args.hooks_dir),
        *check_rundir(args.rundir, environ),
        check_libvirt(),
        check_xl(find_xl(), environ),
    ]
    for check in checks:
        # Details name paths from the shims, the settings and the file system.
        # Parts a check quoted with errors.shown are printable already and
        # pass as they are; anything raw goes through errors.escaped.
        detail = check.detail if check.detail.isprintable() else escaped(check.detail)
        print(f"{check.status:4}  {check.name}: {detail}", file=streams.stdout)
    failed = sum(1 for c in checks if c.status == FAIL)
    if failed:
        streams.error(f"{failed} of {len(checks)} checks failed")
        return 1
    return 0
