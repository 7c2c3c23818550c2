"""The runtime registry: one JSON record per domain, and socket path claims.

Layout under ``RUNDIR/registry/`` (``registry`` is not a UUID, so it never
meets a domain's socket directory ``RUNDIR/<uuid>``)::

    domains/<uuid>.json     the DomainRecord (``records_dir``; watchers poll it)
    locks/<uuid>.lock       flock(2) target serializing writers of one domain
    owned/<uuid>.json       the paths this domain has claimed (an intent log)
    claims/<sha256(path)>   one file per claimed socket path; content names the owner
    names/<sha256(name)>    symlink -> uuid: the by-name index

Why it is safe:

* Every file is written whole and then renamed (atomic.atomic_write) or
  hard-linked into place, so a process SIGKILLed at any point leaves the old
  record or the new one, never a prefix.  Readers take no lock.
* Writers of one domain serialize on ``locks/<uuid>.lock``.  The lock file is
  unlinked by :meth:`Registry.remove` while held; a waiter that then wins the
  dead inode notices (fstat vs stat) and retries on a fresh file.
* A claim is created with link(2), which fails with EEXIST when the file is
  there: when two domains claim one path at once, exactly one link succeeds
  (background.md §2: QEMU unlinks whatever sits at its path, so a lost race would
  otherwise silently steal a socket).  The content is written before the link,
  so a claim file is never seen empty.  ``owned/<uuid>.json`` is written
  before the links, so even after SIGKILL every claim of a domain is listed
  there and :meth:`Registry.release` finds it without scanning.
* The run directory must not be a symlink, nor ``registry/`` and its
  subdirectories: every operation lstat's them first and refuses one
  (UnsafeRegistryDir), and writers create them with
  paths.make_dirs_nofollow.  Settings name the run directory, but whoever
  can replace it with a symlink could otherwise send every record, claim
  and lock elsewhere; the prepare hook refuses it too.
* A writer killed mid-write can leave a ``.*.tmp`` file behind; readers skip
  dot-files, and the run directory is on tmpfs (/run), so they go at reboot.
* Another domain's claim is never taken over: the owner's own release
  (libvirt calls ``release`` after every stop and failed start, background.md §1)
  frees it.  A claim of the same UUID is simply kept.

Cost: get/put/claim_paths/release/remove by UUID touch a fixed set of files
named by the UUID or a path hash, never a directory listing, so they do not
grow with the number of domains (bench/bench_registry.py).  Lookup by *name*
uses the index and verifies the record; only on a miss (an unknown name, or an
index entry lost to a crash) does it scan ``domains/``.  :meth:`Registry.list`
scans by nature.  Two domains of different drivers may share a name; a name
lookup then returns the one written last - use the UUID to be exact.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import os
import stat

from . import jsonlite
from .atomic import atomic_write, fsync_directory, unlink_if_present
from .errors import (
    InvalidUUID,
    PathConflict,
    RegistryError,
    UnsafeRegistryDir,
    XenChannelError,
    shown,
)
from .model import Channel, Connection, DomainState, Frozen, Target
from .paths import canonical_uuid, make_dirs_nofollow, sha256_hex

TYPE_CHECKING = False  # not typing's: the hook imports this module on every call
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any


PREPARING = DomainState.PREPARING
RUNNING = DomainState.RUNNING
STOPPED = DomainState.STOPPED
FORMAT_VERSION = 1
#: A record is a few hundred bytes; anything this big is not ours.
MAX_RECORD_BYTES = 1024 * 1024
#: The most channels a domain may have.  The writer and the reader must
#: agree: the largest record this allows (every name 100 characters, every
#: path 107 bytes of characters JSON escapes as \uXXXX) stays well under
#: MAX_RECORD_BYTES (tests/test_hook_defects.py builds it), and the prepare
#: hook and ``fill`` refuse a domain beyond it, so no record is ever written
#: that ``list`` and the hooks could not read back.  A Linux guest sees at
#: most seven Xen channels anyway (hvc1-hvc7).
MAX_CHANNELS = 1024


def check_channel_count(count: int, who: str) -> None:
    """Refuse a domain with more channels than a record may hold (MAX_CHANNELS).

    The prepare and started hooks and ``fill`` call it, so the writer and the
    reader always agree.
    """
    if count > MAX_CHANNELS:
        from .errors import UnsupportedChannel

        raise UnsupportedChannel(
            None, f"{who} has {count} channels, over the limit of {MAX_CHANNELS} per domain")


class ChannelRecord(Frozen):
    """A registered channel: the model's :class:`Channel` plus what only the
    registry knows, whether we created its directory (so release removes it).

    Built through the model, so a record read back from disk is validated
    like any other input.
    """

    __slots__ = ("channel", "created_dir")
    channel: Channel
    created_dir: bool

    def __init__(self, channel: Channel, created_dir: bool = False) -> None:
        if not isinstance(created_dir, bool):
            raise TypeError("created_dir must be true or false")
        self._set(channel=channel, created_dir=created_dir)

    @property
    def name(self) -> str | None:
        return self.channel.name

    @property
    def connection(self) -> Connection:
        return self.channel.connection

    @property
    def path(self) -> str | None:
        return self.channel.path

    @property
    def target(self) -> Target:
        return self.channel.target

    @classmethod
    def from_channel(cls, channel: Channel, created_dir: bool = False) -> ChannelRecord:
        return cls(channel, created_dir)

    def to_dict(self) -> dict[str, Any]:
        return {**self.channel.to_dict(), "created_dir": self.created_dir}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChannelRecord:
        return cls(Channel.from_dict(dict(data)), data["created_dir"])


class DomainRecord(Frozen):
    """A domain as the registry knows it.  ``uuid`` is stored canonical."""

    __slots__ = ("channels", "domain_id", "driver", "name", "state", "uuid")
    uuid: str
    name: str
    driver: str
    state: DomainState
    channels: tuple[ChannelRecord, ...]
    #: libvirt's id of the running domain (``<domain id='N'>`` in the hook's
    #: XML), so ``show N`` works as in virsh; None when not known.
    domain_id: int | None

    def __init__(
        self, uuid: str, name: str, driver: str, state: str,
        channels: Iterable[ChannelRecord] = (), domain_id: int | None = None,
    ) -> None:
        if domain_id is not None and (
                not isinstance(domain_id, int) or isinstance(domain_id, bool) or domain_id < 0):
            raise ValueError(f"domain id {domain_id!r} is not a non-negative integer")
        if not isinstance(name, str) or not name:
            raise ValueError("a domain record needs a name")
        if not isinstance(driver, str) or not driver:
            raise ValueError("a domain record needs a driver")
        try:
            known = DomainState(state)
        except ValueError:
            states = ", ".join(s.value for s in DomainState)
            raise ValueError(f"state {state!r} is not one of {states}") from None
        self._set(uuid=canonical_uuid(uuid), name=name, driver=driver, state=known,
                  channels=tuple(channels), domain_id=domain_id)

    def socket_paths(self) -> builtins.list[str]:
        """The normalized socket paths this domain needs claimed, sorted."""
        return sorted(
            {
                _normalize(c.path)
                for c in self.channels
                if c.connection is Connection.SOCKET and c.path
            }
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "uuid": self.uuid,
            "name": self.name,
            "driver": self.driver,
            "state": self.state.value,
            "channels": [c.to_dict() for c in self.channels],
            **({"id": self.domain_id} if self.domain_id is not None else {}),
        }

    def to_json(self) -> str:
        return jsonlite.dumps(self.to_dict()) + "\n"

    @classmethod
    def from_json(cls, data: str | bytes | Mapping[str, Any]) -> DomainRecord:
        """Build a record from JSON text or a decoded mapping.

        Raises ValueError/TypeError/KeyError (and the model's own errors for
        a bad channel) on anything malformed; the registry turns those into
        RegistryError naming the file.
        """
        obj = jsonlite.loads(data) if isinstance(data, str | bytes) else data
        if not isinstance(obj, dict):
            raise TypeError("a record is a JSON object")
        if obj.get("version") != FORMAT_VERSION:
            raise ValueError(f"unknown record version {obj.get('version')!r}")
        channels = obj["channels"]
        if not isinstance(channels, list):
            raise TypeError("channels must be a list")
        return cls(
            uuid=obj["uuid"], name=obj["name"], driver=obj["driver"], state=obj["state"],
            channels=tuple(ChannelRecord.from_dict(c) for c in channels),
            domain_id=obj.get("id"),
        )


def _normalize(path: str) -> str:
    return "/" + os.path.normpath(path).lstrip("/")


def _digest(text: str) -> str:
    return sha256_hex(text.encode("utf-8", "surrogateescape"))


class Registry:
    """The registry under ``rundir`` (see the module docstring for the layout)."""

    def __init__(self, rundir: str) -> None:
        self.rundir = rundir
        self.base = os.path.join(rundir, "registry")
        self.records_dir = os.path.join(self.base, "domains")
        self._locks_dir = os.path.join(self.base, "locks")
        self._owned_dir = os.path.join(self.base, "owned")
        self._claims_dir = os.path.join(self.base, "claims")
        self._names_dir = os.path.join(self.base, "names")
        self._settled_dir = os.path.join(self.base, "settled")
        self._started_dir = os.path.join(self.base, "started")
        self._ready = False

    # --- reading (no locks: every file is replaced atomically) ---------------

    def by_uuid(self, uuid: str) -> DomainRecord | None:
        """The record of domain ``uuid`` (any spelling), or None: one file read.

        What hooks and the monitor use: they always know the UUID, and their
        cost must not grow with the number of registered domains.
        """
        uuid = canonical_uuid(uuid)
        self._check_dirs(self.records_dir)
        return self._read_record(uuid)

    def get(self, name_or_uuid: str) -> DomainRecord | None:
        """The record for a domain id, a UUID (any spelling) or a name, or None.

        virsh's order: a number is first a running domain's id (which takes
        one scan; ids are for humans at a prompt), then a name.  A
        UUID-shaped argument never scans: it is looked up as a UUID, then as
        a name in the index (a domain may be *named* like a UUID).  Only a
        name missing from the index falls back to reading every record, for
        an index entry lost to a crash between the record and index writes.
        """
        self._check_dirs(self.records_dir, self._names_dir)
        if name_or_uuid.isdigit() and name_or_uuid.isascii():
            wanted = int(name_or_uuid)
            for candidate in self.list():
                if candidate.domain_id == wanted and candidate.state is not DomainState.STOPPED:
                    return candidate
        uuid: str | None
        try:
            uuid = canonical_uuid(name_or_uuid)
        except InvalidUUID:
            uuid = None
        if uuid is not None:
            record = self._read_record(uuid)
            if record is not None:
                return record
        uuid_by_name = self._index_lookup(name_or_uuid)
        if uuid_by_name is not None:
            record = self._read_record(uuid_by_name)
            if record is not None and record.name == name_or_uuid:
                return record
        if uuid is not None:
            return None
        for record in self.list():
            if record.name == name_or_uuid:
                return record
        return None

    def list(self) -> builtins.list[DomainRecord]:
        """Every record, sorted by name then UUID; RegistryError if one is unreadable."""
        records, problems = self.scan()
        if problems:
            raise problems[0]
        return records

    def scan(self) -> tuple[builtins.list[DomainRecord], builtins.list[RegistryError]]:
        """Every readable record (sorted), and an error for each unreadable one.

        For daemons (monitor, broker): one corrupt record must not hide every
        other domain from them.  The CLI uses list(), which reports it.  A
        symlinked run or registry directory hides every record: it is the
        one problem reported then.
        """
        try:
            self._check_dirs(self.records_dir)
        except UnsafeRegistryDir as exc:
            return [], [exc]
        try:
            entries = os.listdir(self.records_dir)
        except FileNotFoundError:
            return [], []
        records = []
        problems = []
        for entry in entries:
            # Skip atomic_write's ".*.tmp" files (a writer may be mid-write or
            # have been killed); only "<uuid>.json" is a record.
            if entry.startswith(".") or not entry.endswith(".json"):
                continue
            try:
                uuid = canonical_uuid(entry[: -len(".json")])
            except InvalidUUID:
                continue
            try:
                record = self._read_record(uuid)
            except RegistryError as exc:
                problems.append(exc)
                continue
            if record is not None:
                records.append(record)
        return sorted(records, key=lambda r: (r.name, r.uuid)), problems

    # --- writing ----------------------------------------------------------------

    def put(self, record: DomainRecord) -> None:
        """Write ``record`` atomically (replacing any older one) and index its name.

        A record the readers would refuse (over MAX_RECORD_BYTES) is refused
        here instead, so one oversized domain can never make ``list`` fail
        for every other.
        """
        text = record.to_json()
        if len(text.encode("utf-8")) > MAX_RECORD_BYTES:
            raise RegistryError(self._record_path(record.uuid),
                                f"record of domain {shown(record.name)} would be over 1 MiB "
                                f"({len(record.channels)} channels)")
        self._ensure_dirs()
        with self._locked(record.uuid):
            old = self._read_record(record.uuid)
            atomic_write(self._record_path(record.uuid), text)
            if old is not None and old.name != record.name:
                self._unindex(old.name, record.uuid)
            self._index(record.name, record.uuid)

    def remove(self, uuid: str) -> None:
        """Forget domain ``uuid``: release its claims, delete its record.  Idempotent."""
        uuid = canonical_uuid(uuid)
        self._check_dirs()
        if not os.path.isdir(self.base):
            return
        self._ensure_dirs()
        with self._locked(uuid, remove_lock=True):
            self._release_locked(uuid)
            old = self._read_record(uuid)
            unlink_if_present(self._record_path(uuid))
            self._unmark(uuid)
            if old is not None:
                self._unindex(old.name, uuid)
            fsync_directory(self.records_dir)

    def mark_settled(self, uuid: str, settled: bool) -> None:
        """Say whether the ``started`` hook has anything to add to this record.

        A domain whose channels are all unix sockets with their paths in the
        definition looks the same at ``started`` as at ``prepare``: only its
        state changes.  For it prepare leaves ``settled/<uuid>``, and the
        shim answers ``started`` without Python by creating
        ``started/<uuid>`` (a shell redirection); a ``preparing`` record
        with that marker reads as ``running``.  Any earlier ``started``
        marker (a crash) goes first, so a new start is never read as running
        before libvirt calls started.
        """
        uuid = canonical_uuid(uuid)
        self._ensure_dirs()
        unlink_if_present(os.path.join(self._started_dir, uuid))
        marker = os.path.join(self._settled_dir, uuid)
        if not settled:
            unlink_if_present(marker)
            return
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        os.close(fd)

    def _unmark(self, uuid: str) -> None:
        for directory in (self._settled_dir, self._started_dir):
            unlink_if_present(os.path.join(directory, uuid))

    def claim_paths(self, record: DomainRecord) -> builtins.list[str]:
        """Make this domain's claims exactly ``record.socket_paths()``.

        All or nothing: on a conflict, the claims this call created are
        released again and PathConflict (naming both domains) is raised.
        Claims the domain held before and still wants are kept; ones it no
        longer wants are released.  Returns the paths newly claimed.
        """
        self._ensure_dirs()
        wanted = record.socket_paths()
        with self._locked(record.uuid):
            held = self._read_owned(record.uuid)
            if not set(wanted) <= set(held):
                # Intent first: a claim file must never exist without being
                # listed here, or a crash would leak it past release().
                self._write_owned(record.uuid, sorted(set(held) | set(wanted)))
            created: builtins.list[str] = []
            try:
                for path in wanted:
                    if self._claim_one(path, record):
                        created.append(path)
            except BaseException:
                for path in created:
                    self._unclaim(path, record.uuid)
                self._write_owned(record.uuid, sorted(set(held) - set(created)))
                raise
            finally:
                fsync_directory(self._claims_dir)
            for path in set(held) - set(wanted):
                self._unclaim(path, record.uuid)
            if sorted(held) != wanted:
                self._write_owned(record.uuid, wanted)
            return created

    def release(self, uuid: str) -> None:
        """Release every path claim of ``uuid``.  Idempotent."""
        uuid = canonical_uuid(uuid)
        self._check_dirs()
        if not os.path.isdir(self.base):
            return
        self._ensure_dirs()
        with self._locked(uuid):
            self._release_locked(uuid)

    def orphan_claims(self) -> builtins.list[tuple[str, float]]:
        """(UUID, age in seconds) of every domain holding claims but no record.

        A prepare writes its claims a moment before its record, so a young
        orphan may be a prepare under way: callers collect only old ones
        whose domain libvirt does not run (the monitor's reconcile).
        """
        self._check_dirs(self._owned_dir, self.records_dir)
        try:
            entries = os.listdir(self._owned_dir)
        except FileNotFoundError:
            return []
        import time

        now = time.time()
        orphans = []
        for entry in entries:
            if entry.startswith(".") or not entry.endswith(".json"):
                continue
            try:
                uuid = canonical_uuid(entry[: -len(".json")])
                age = now - os.lstat(os.path.join(self._owned_dir, entry)).st_mtime
            except (InvalidUUID, FileNotFoundError):
                continue
            if not os.path.lexists(self._record_path(uuid)):
                orphans.append((uuid, age))
        return sorted(orphans)

    def release_orphan(self, uuid: str) -> bool:
        """Release ``uuid``'s claims if it still has no record; True if it did."""
        uuid = canonical_uuid(uuid)
        self._ensure_dirs()
        with self._locked(uuid):
            if os.path.lexists(self._record_path(uuid)):
                return False
            self._release_locked(uuid)
            return True

    def watched_dirs(self) -> tuple[str, str]:
        """The directories whose changes mean a domain started or stopped.

        A record is written to ``domains/`` at prepare, started (unless the
        domain is settled) and release; a settled domain's start only adds a
        marker to ``started/``.  A watcher (the broker) polls both.
        """
        return self.records_dir, self._started_dir

    def claim_owner(self, path: str) -> str | None:
        """The UUID holding a claim on ``path``, or None."""
        self._check_dirs(self._claims_dir)
        owner = self._read_claim(_normalize(path))
        return owner["uuid"] if owner else None

    # --- internals --------------------------------------------------------------

    def _check_dirs(self, *subdirs: str) -> None:
        """Raise UnsafeRegistryDir if the run directory, ``registry/`` or a
        given subdirectory is a symlink or not a directory.

        lstat, not a walk of descriptors: only whoever can write the parent
        can swap one of them after the check, and that is root (run
        directory) or the registry itself.  A missing one is fine here:
        readers then find nothing, writers create it without following
        symlinks.
        """
        roles = [("run directory", self.rundir), ("registry directory", self.base)]
        roles += [("registry directory", d) for d in subdirs]
        for role, directory in roles:
            try:
                info = os.lstat(directory)
            except FileNotFoundError:
                return
            if stat.S_ISLNK(info.st_mode):
                try:
                    target = f" (to {shown(os.readlink(directory))})"
                except OSError:  # pragma: no cover - replaced since the lstat
                    target = ""
                raise UnsafeRegistryDir(
                    role, directory,
                    f"is a symlink{target}; the registry is never used through one",
                )
            if not stat.S_ISDIR(info.st_mode):
                raise UnsafeRegistryDir(role, directory, "is not a directory")

    def _ensure_dirs(self) -> None:
        self._check_dirs()
        if self._ready:
            return
        subdirs = (
            self.records_dir, self._locks_dir, self._owned_dir, self._claims_dir, self._names_dir,
            self._settled_dir, self._started_dir,
        )
        if not self._dirs_in_place(subdirs):
            # Never follow a symlink planted inside the run directory; the run
            # directory itself was checked just above.
            for directory in subdirs:
                make_dirs_nofollow(directory, self.rundir, mode=0o755)
        self._ready = True

    def _dirs_in_place(self, subdirs: Iterable[str]) -> bool:
        """True if ``registry/`` and every subdirectory exist as make_dirs_nofollow leaves them.

        The usual case on every hook call after the first: one descriptor
        and a stat each (through it, never following a symlink), instead of
        walking each path from the run directory again.
        """
        try:
            fd = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            euid = os.geteuid()
            for info in (os.fstat(fd), *(os.stat(os.path.basename(d), dir_fd=fd,
                                                  follow_symlinks=False) for d in subdirs)):
                if (not stat.S_ISDIR(info.st_mode) or info.st_uid != euid
                        or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
                    return False
        except OSError:
            return False
        finally:
            os.close(fd)
        return True

    def _record_path(self, uuid: str) -> str:
        return os.path.join(self.records_dir, f"{uuid}.json")

    def _read_record(self, uuid: str) -> DomainRecord | None:
        path = self._record_path(uuid)
        data = self._read_small(path)
        if data is None:
            return None
        try:
            record = DomainRecord.from_json(data)
        except KeyError as exc:
            raise RegistryError(path, f"corrupt record: missing key {exc}") from None
        except (ValueError, TypeError) as exc:
            raise RegistryError(path, f"corrupt record: {exc}") from None
        except XenChannelError as exc:
            raise RegistryError(path, f"corrupt record: {exc.message()}") from None
        if record.uuid != uuid:
            raise RegistryError(path, f"record holds UUID {record.uuid}, not {uuid}")
        if record.state is DomainState.PREPARING and os.path.lexists(
                os.path.join(self._started_dir, uuid)):
            record = record.replace(state=DomainState.RUNNING)
        return record

    def _read_small(self, path: str) -> bytes | None:
        # O_NONBLOCK: opening a FIFO planted here must not hang the hooks
        # (and with them libvirtd); the type check then refuses it.
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RegistryError(path, f"cannot read: {exc.strerror}") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            from .sockets import file_kind

            raise RegistryError(path, f"is a {file_kind(mode)}, not a regular file")
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(MAX_RECORD_BYTES + 1)
        if len(data) > MAX_RECORD_BYTES:
            raise RegistryError(path, "file is over 1 MiB")
        return data

    def _locked(self, uuid: str, *, remove_lock: bool = False) -> _DomainLock:
        return _DomainLock(os.path.join(self._locks_dir, f"{uuid}.lock"), remove_lock)

    def _owned_path(self, uuid: str) -> str:
        return os.path.join(self._owned_dir, f"{uuid}.json")

    def _read_owned(self, uuid: str) -> builtins.list[str]:
        path = self._owned_path(uuid)
        data = self._read_small(path)
        if data is None:
            return []
        try:
            paths = jsonlite.loads(data)
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise ValueError("not a list of paths")
        except ValueError as exc:
            raise RegistryError(path, f"corrupt claim list: {exc}") from None
        return paths

    def _write_owned(self, uuid: str, paths: builtins.list[str]) -> None:
        if paths:
            atomic_write(self._owned_path(uuid), jsonlite.dumps(paths) + "\n")
        else:
            unlink_if_present(self._owned_path(uuid))

    def _claim_path(self, path: str) -> str:
        return os.path.join(self._claims_dir, _digest(path))

    def _read_claim(self, path: str) -> dict[str, str] | None:
        claim = self._claim_path(path)
        data = self._read_small(claim)
        if data is None:
            return None
        try:
            owner = jsonlite.loads(data)
            if not isinstance(owner, dict) or not isinstance(owner.get("uuid"), str):
                raise ValueError("no owner UUID")
        except ValueError as exc:
            raise RegistryError(claim, f"corrupt claim of {path!r}: {exc}") from None
        return owner

    def _claim_one(self, path: str, record: DomainRecord) -> bool:
        """Claim ``path`` for ``record``; True if created, False if already ours."""
        claim = self._claim_path(path)
        payload = jsonlite.dumps({"path": path, "uuid": record.uuid, "name": record.name}) + "\n"
        tmp = os.path.join(self._claims_dir, f".{record.uuid}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            try:
                # link(2) is the atomic test-and-create: EEXIST if anyone holds it.
                os.link(tmp, claim)
                return True
            except FileExistsError:
                pass
        finally:
            unlink_if_present(tmp)
        owner = self._read_claim(path)
        if owner is None:
            # Released between our link and our read: try once more.
            return self._claim_one(path, record)
        if owner["uuid"] == record.uuid:
            return False
        owner_uuid = owner["uuid"]
        owner_name: str | None = owner.get("name")
        try:
            current = self._read_record(canonical_uuid(owner_uuid))
        except (RegistryError, InvalidUUID):
            current = None
        if current is not None:
            owner_name = current.name
        raise PathConflict(path, owner_uuid, owner_name, record.uuid, record.name)

    def _unclaim(self, path: str, uuid: str) -> None:
        owner = self._read_claim(path)
        # Only the owner (holding its own lock) removes its claim, so the file
        # cannot change hands between this read and the unlink.
        if owner is not None and owner["uuid"] == uuid:
            unlink_if_present(self._claim_path(path))

    def _release_locked(self, uuid: str) -> None:
        for path in self._read_owned(uuid):
            self._unclaim(path, uuid)
        self._write_owned(uuid, [])

    def _name_link(self, name: str) -> str:
        return os.path.join(self._names_dir, _digest(name))

    def _index_lookup(self, name: str) -> str | None:
        try:
            target = os.readlink(self._name_link(name))
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.EINVAL, errno.ENOTDIR):
                return None
            raise
        try:
            return canonical_uuid(target)
        except InvalidUUID:
            return None

    def _index(self, name: str, uuid: str) -> None:
        link = self._name_link(name)
        if self._index_lookup(name) == uuid:
            return
        tmp = os.path.join(self._names_dir, f".{uuid}.{os.getpid()}.tmp")
        unlink_if_present(tmp)
        os.symlink(uuid, tmp)
        os.replace(tmp, link)

    def _unindex(self, name: str, uuid: str) -> None:
        if self._index_lookup(name) == uuid:
            unlink_if_present(self._name_link(name))


class _DomainLock:
    """flock(2) on one domain's lock file, for ``with``.

    A class rather than contextlib.contextmanager: the hooks take this lock
    on every call, and contextlib's import costs each of them milliseconds.
    The lock file is unlinked by Registry.remove while held; a waiter that
    then wins the dead inode notices (fstat vs stat) and retries on a fresh
    file.
    """

    def __init__(self, path: str, remove_lock: bool) -> None:
        self.path = path
        self.remove_lock = remove_lock
        self.fd = -1

    def __enter__(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    on_disk = os.stat(self.path, follow_symlinks=False)
                except FileNotFoundError:
                    on_disk = None
                held = os.fstat(fd)
            except BaseException:
                os.close(fd)
                raise
            if on_disk is not None and (on_disk.st_ino, on_disk.st_dev) == (
                held.st_ino, held.st_dev,
            ):
                self.fd = fd
                return
            # remove() unlinked the file we waited on; lock the new one.
            os.close(fd)

    def __exit__(self, kind: object, error: object, trace: object) -> None:
        try:
            if kind is None and self.remove_lock:
                os.unlink(self.path)
        finally:
            os.close(self.fd)
