"""The libvirt hook: dispatch and lifecycle, ``main(argv, stdin, stdout, stderr) -> int``.

libvirtd runs ``/etc/libvirt/hooks/{qemu,libxl}.d/xen-channel DOMAIN OP SUBOP
EXTRA`` with the domain XML on stdin (background.md §1).  The shell shim
(install.py) answers every operation not in :data:`HANDLERS` and every
domain without a ``<channel`` itself; the rest arrives here as
``main([DRIVER, DOMAIN, OP, SUBOP, EXTRA])``.  :data:`HANDLERS` is the whole
contract (docs/hooks.md):

=================  ==========================================================
prepare begin      claim each unix channel path; for paths that are ours
                   (paths.is_ours) create the directory and clear a stale
                   socket (sockets.prepare_socket_dir); record ``preparing``
started begin      record the live XML (generated and pty paths) as ``running``
release end        remove our stale sockets and the directories we created
                   (sockets.remove_domain_files), then record and claims
reconnect begin    re-register; ALWAYS exit 0 (a failure kills the domain)
migrate begin,     print the XML with the paths we allocated re-allocated for
restore begin      this host, or nothing when nothing changes
=================  ==========================================================

What libvirt does with the exit status (background.md §1): non-zero at
prepare or started aborts the start and libvirt shows our one stderr line;
at release it is ignored; at reconnect it kills the running domain.  The
hook never calls libvirt (libvirtd waits for us synchronously: a call back
would deadlock) and prints nothing but XML on stdout.

What lives elsewhere: reading the XML (channelxml, a lean expat reader;
domxml with lxml only for migrate and restore, which rewrite it), "is this
path ours" (paths), the filesystem (sockets) and the records (registry).
Start-up cost matters, since libvirtd runs every hook synchronously: this
module and what it imports load only cheap standard-library modules
(docs/performance.md).
"""

from __future__ import annotations

import os
import sys

from .errors import (
    SettingsError,
    XenChannelError,
    XmlInputError,
    shown,
)
from .model import Connection, Target

# Not typing.TYPE_CHECKING: importing typing costs every hook call (mypy
# treats a module-level TYPE_CHECKING = False the same way).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from typing import IO, Any

    Handler = Callable[["HookCall"], int]

    from .channelxml import ScannedDomain
    from .registry import ChannelRecord, DomainRecord, Registry
    from .settings import Settings


PROG = "xen-channel"
DRIVERS = ("qemu", "libxl")
#: libxl accepts only Xen channels (background.md §2); QEMU serves virtio ones, and a
#: Xen target on a QEMU domain is refused by QEMU at start, not by us.
MANAGED_TARGETS: Mapping[str, tuple[Target, ...]] = {
    "qemu": (Target.VIRTIO, Target.XEN),
    "libxl": (Target.XEN,),
}


# --- one hook call ----------------------------------------------------------------


class HookCall:
    """One invocation: argv fields, the XML bytes, the streams and the environment."""

    def __init__(
        self, driver: str, domain: str, op: str, subop: str, data: bytes,
        stdout: IO[str], stderr: IO[str], environ: Mapping[str, str],
    ) -> None:
        self.driver = driver
        self.domain = domain
        self.op = op
        self.subop = subop
        self.data = data
        self.stdout = stdout
        self.stderr = stderr
        self.environ = environ
        self._settings: Settings | None = None

    def warn(self, message: str) -> None:
        # Not the logging module: importing it costs the hook more than its work.
        print(f"{PROG}: warning: {message}", file=self.stderr)

    @property
    def targets(self) -> tuple[Target, ...]:
        return MANAGED_TARGETS[self.driver]

    def settings(self) -> Settings:
        if self._settings is None:
            from .settings import load_settings

            self._settings = load_settings(environ=self.environ)
        return self._settings

    def registry(self) -> Registry:
        from .registry import Registry

        return Registry(self.settings().rundir)

    def scan(self) -> ScannedDomain:
        from .channelxml import scan_domain

        # libxl ignores the mode: Xen's QEMU always listens (background.md §2).
        return scan_domain(self.data, self.targets, skip_connect_mode=self.driver == "qemu")

    def identity(self, domain: ScannedDomain) -> tuple[str, str]:
        """(canonical UUID, name) of the domain; libvirt always sends a UUID."""
        from .paths import canonical_uuid

        if domain.uuid is None:
            raise XmlInputError("<stdin>", "the domain XML has no <uuid>")
        return canonical_uuid(domain.uuid), domain.name or self.domain


def _record(
    call: HookCall, domain: ScannedDomain, uuid: str, name: str, state: str,
    channels: Sequence[ChannelRecord],
) -> DomainRecord:
    from .registry import DomainRecord

    return DomainRecord(uuid=uuid, name=name, driver=call.driver, state=state,
                        channels=tuple(channels), domain_id=domain.domain_id)


# --- prepare ----------------------------------------------------------------------


def prepare(call: HookCall) -> int:
    """Claim, create directories, clear stale sockets, record ``preparing``.

    Only paths that are ours (paths.is_ours: inside an allowed root) get a
    directory and a stale-socket check; any other path is recorded and
    claimed, nothing more, so a domain that starts without our hooks starts
    with them.  The claim comes before any filesystem change: when two
    domains race for one path, the loser must not delete the winner's
    socket (QEMU unlinks whatever sits at its path before binding).  Any
    failure, a full disk included, undoes what this call claimed and made.
    """
    from .paths import is_ours
    from .registry import PREPARING, ChannelRecord, check_channel_count
    from .sockets import group_id, prepare_socket_dir

    domain = call.scan()
    uuid, name = call.identity(domain)
    check_channel_count(len(domain.channels), f"domain {shown(name)}")
    settings = call.settings()
    ours = [
        c for c in domain.channels
        if c.connection is Connection.SOCKET and c.path
        and is_ours(settings, uuid, c.name, c.path)
    ]
    registry = call.registry()
    previous = registry.by_uuid(uuid)
    created: list[str] = []
    try:
        registry.claim_paths(
            _record(call, domain, uuid, name, PREPARING,
                    [ChannelRecord.from_channel(c) for c in domain.channels]))
        gid = group_id(settings)
        made_dirs: set[str] = set()
        for channel in ours:
            made_dirs.update(prepare_socket_dir(settings, uuid, channel, gid, created))
        channels = [
            ChannelRecord.from_channel(
                c, created_dir=c in ours and os.path.dirname(c.path or "") in made_dirs)
            for c in domain.channels
        ]
        registry.put(_record(call, domain, uuid, name, PREPARING, channels))
        # started has nothing to add when every channel is a socket whose
        # path is already in the definition (no pty, nothing libvirt fills in).
        registry.mark_settled(uuid, all(
            c.connection is Connection.SOCKET and c.path for c in domain.channels))
    except BaseException:
        # Undo exactly this call: its directories, and its claims (back to
        # what the domain held before, or none).  remove() only unlinks, so
        # it works on a full disk too.
        for directory in reversed(created):
            try:
                os.rmdir(directory)
            except OSError:
                pass  # not empty or gone: left, as release would leave it
        try:
            if previous is None:
                registry.remove(uuid)
            else:
                registry.claim_paths(previous)
        except (XenChannelError, OSError):
            pass  # the original failure is the one to report
        raise
    return 0


# --- start / started / reconnect ----------------------------------------------------


def _register_running(call: HookCall, *, lenient: bool) -> None:
    """Record the live XML as ``running``, keeping ``created_dir`` from prepare."""
    from .errors import PathConflict
    from .paths import domain_socket_dir
    from .registry import RUNNING, ChannelRecord, check_channel_count

    domain = call.scan()
    uuid, name = call.identity(domain)
    check_channel_count(len(domain.channels), f"domain {shown(name)}")
    registry = call.registry()
    previous = registry.by_uuid(uuid)
    ours = {c.path for c in previous.channels if c.created_dir} if previous else set()
    # The domain's own directory is ours even when the record is gone (a
    # reconnect after the registry was lost), as at prepare.
    own_dir = domain_socket_dir(call.settings(), uuid)
    record = _record(call, domain, uuid, name, RUNNING, [
        ChannelRecord.from_channel(
            c, created_dir=c.path in ours or (
                c.connection is Connection.SOCKET and c.path is not None
                and os.path.dirname(c.path) == own_dir),
        )
        for c in domain.channels
    ])
    try:
        registry.claim_paths(record)
    except PathConflict as exc:
        if not lenient:
            raise
        call.warn(f"reconnect of domain {shown(name)}: {exc.message()}")
    registry.put(record)


def start(call: HookCall) -> int:
    _register_running(call, lenient=False)
    return 0


def reconnect(call: HookCall) -> int:
    """Re-register after a daemon restart; never fails (that would kill the domain)."""
    try:
        _register_running(call, lenient=True)
    except XenChannelError as exc:
        call.warn(f"reconnect of domain {shown(call.domain)}: {exc.message()}")
    except Exception as exc:  # a bug here must not kill a running domain either
        call.warn(f"reconnect of domain {shown(call.domain)}: internal error: "
                  f"{type(exc).__name__}: {exc}")
    return 0


# --- stopped / release ------------------------------------------------------------


def release(call: HookCall) -> int:
    """Remove the stale sockets and the directories we created, then the record.  Idempotent.

    sockets.remove_domain_files is shared with the monitor, which does the
    same for a domain that vanished without its release hook.
    """
    from .sockets import remove_domain_files

    domain = call.scan()
    uuid, _name = call.identity(domain)
    registry = call.registry()
    record = registry.by_uuid(uuid)
    if record is not None:
        remove_domain_files(call.settings(), registry, record, call.warn)
    # Even without a record: a prepare that failed before writing one may
    # have left claims (registry.remove releases them), and libvirt calls
    # release after every failed start.
    registry.remove(uuid)
    return 0


# --- migrate / restore --------------------------------------------------------------


def reallocate(call: HookCall) -> int:
    """Print the XML with our channel paths re-allocated here, or nothing if unchanged.

    A path is ours when we allocated it (paths.is_allocated: its directory
    is named by the domain's UUID, as paths.socket_path lays them out on
    every host whatever its run directory) and it is not already in this
    host's directory for the domain; other paths (typed by hand, or
    libvirt's) pass unchanged and are not even validated: a migration must
    never fail on a channel we do not manage (libvirt's own paths may hold
    ``=`` or ``,``).  For the qemu driver a connect-mode channel is never
    ours (channelxml.connects).
    """
    from .channelxml import connects, scan_domain
    from .paths import canonical_uuid, domain_socket_dir, is_allocated, socket_path

    raw_uuid = scan_domain(call.data, ()).uuid  # expat: well-formed, no DOCTYPE
    if raw_uuid is None:
        return 0
    uuid = canonical_uuid(raw_uuid)
    here = domain_socket_dir(call.settings(), uuid) + "/"
    if call.data.count(f"/{uuid}/".encode()) == call.data.count(here.encode()):
        # Every path we allocated is already in this host's directory for the
        # domain (the common case: hosts share one run directory), so nothing
        # changes and lxml (~40 ms) need not load.
        return 0

    from . import domxml

    tree = domxml.parse_domain(call.data, "<stdin>")
    root = tree.getroot()
    wanted = {t.value for t in call.targets}
    changed = False
    for element in domxml.channel_elements(root):
        values = domxml.channel_values(element)
        path = values["path"]
        if values["connection"] != "unix" or values["target"] not in wanted or not path:
            continue
        if call.driver == "qemu" and connects(values):
            continue
        if not is_allocated(uuid, path) or path.startswith(here):
            continue
        channel = domxml.channel_from_element(element)  # ours: validated from here on
        if channel.path is None or channel.name is None:
            continue
        new_path = socket_path(call.settings(), uuid, channel.name)
        if new_path != channel.path:
            domxml.set_source_path(element, new_path)
            changed = True
    changed = _reallocate_metadata(call, root, uuid) or changed
    if changed:
        call.stdout.write(domxml.serialize(tree))
        call.stdout.flush()
    return 0


def _reallocate_metadata(call: HookCall, root: Any, uuid: str) -> bool:
    """Point our ``<xcb:channels>`` at this host's paths too; True if it changed.

    The metadata names each channel's path (fill/define write it), so after
    a migration it must follow the devices, by the same rule: a socket path
    in the UUID-named directory is re-allocated with paths.socket_path.
    Invalid metadata is left as it is (a warning): the migration must not
    fail over it, and the monitor reports and replaces it.
    """
    from . import metadata
    from .errors import InvalidMetadata
    from .paths import domain_socket_dir, is_allocated, socket_path

    try:
        current = metadata.find_domain_metadata(root)
    except InvalidMetadata as exc:
        call.warn(f"{exc.message()}; left unchanged")
        return False
    if current is None:
        return False
    channels = []
    for channel in current.channels:
        if (channel.connection is Connection.SOCKET and channel.path and channel.name
                and is_allocated(uuid, channel.path)
                and not channel.path.startswith(domain_socket_dir(call.settings(), uuid) + "/")):
            channel = channel.with_path(socket_path(call.settings(), uuid, channel.name))
        channels.append(channel)
    if tuple(channels) == current.channels:
        return False
    metadata.set_domain_metadata(root, channels, current.state)
    return True


#: (OP, SUBOP) -> handler, for both drivers; (op, subop) pairs not here exit 0.
#: No start or stopped: libvirt always follows start with started and
#: stopped with release, which see everything those would, so the shim
#: answers start and stopped itself and a domain start costs two Python
#: runs (prepare, started) and a stop one (release).
HANDLERS: dict[tuple[str, str], Handler] = {
    ("prepare", "begin"): prepare,
    ("started", "begin"): start,
    ("release", "end"): release,
    ("reconnect", "begin"): reconnect,
    ("migrate", "begin"): reallocate,
    ("restore", "begin"): reallocate,
}
#: libxl has no restore hook; a call would be someone else's mistake.
_NOT_FOR = {("restore", "begin"): {"libxl"}}


def shim_operations(driver: str) -> list[tuple[str, str]]:
    """The (OP, SUBOP) pairs the shim must hand to Python for ``driver``."""
    return [key for key in HANDLERS if driver not in _NOT_FOR.get(key, ())]


def _read_stdin(stdin: IO[Any]) -> bytes:
    # One byte past the limit, so channelxml.scan_domain can refuse the document.
    from .channelxml import MAX_DOMAIN_XML

    stream = getattr(stdin, "buffer", stdin)
    data = stream.read(MAX_DOMAIN_XML + 1)
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def main(
    argv: Sequence[str] | None = None,
    stdin: IO[Any] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run one hook call: ``argv`` is ``DRIVER DOMAIN OP SUBOP [EXTRA...]``.

    Exit codes: 0 done (or nothing to do); 1 the operation failed, with one
    line on stderr that libvirt shows; 2 a malformed command line (not from
    libvirtd).  reconnect always exits 0.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    if len(args) < 4 or args[0] not in DRIVERS:
        print(f"{PROG}: error: usage: hook {{qemu|libxl}} DOMAIN OP SUBOP [EXTRA]", file=err)
        return 2
    driver, domain, op, subop = args[:4]
    handler = HANDLERS.get((op, subop))
    if handler is None or driver in _NOT_FOR.get((op, subop), ()):
        return 0
    try:
        call = HookCall(driver=driver, domain=domain, op=op, subop=subop,
                        data=_read_stdin(stdin or sys.stdin), stdout=out, stderr=err,
                        environ=os.environ if environ is None else environ)
        return handler(call)
    except SettingsError as exc:
        # A broken installation (an unreadable settings file) must not stop a
        # domain that does not use us; the shim tells us whether it plainly
        # does (our metadata, or a channel under the run directory).
        if (environ or os.environ).get("XEN_CHANNEL_PLAINLY_OURS") == "no":
            print(f"{PROG}: warning: {op} hook for domain {shown(domain)}: {exc.message()}; "
                  "not our domain, so it is let through", file=err)
            return 0
        return _fail(err, op, domain, exc.message(), exc.exit_code)
    except XenChannelError as exc:
        return _fail(err, op, domain, exc.message(), exc.exit_code)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(err, op, domain, f"{exc.strerror or exc}{where}", 1)
    except Exception as exc:
        # libvirt shows our stderr in its error message: one line, not a traceback.
        return _fail(err, op, domain, f"internal error: {type(exc).__name__}: {exc}", 1)


def _fail(err: IO[str], op: str, domain: str, message: str, code: int) -> int:
    print(f"{PROG}: error: {op} hook for domain {shown(domain)}: {message}", file=err)
    # A failed reconnect kills the domain (background.md §1), whatever went wrong.
    return 0 if op == "reconnect" else code
