"""Regression tests for the defects a review found in the hooks and the registry.

Each of these failed on the code before its fix (issue 9, defects 1-4).
"""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from hook_fixtures import HookHost, channel_xml, domain_xml, host, new_uuid

from xen_channel_backend import cli, hook
from xen_channel_backend import registry as registry_module
from xen_channel_backend.errors import RegistryError
from xen_channel_backend.model import Channel, Connection, Target
from xen_channel_backend.registry import (
    MAX_CHANNELS,
    MAX_RECORD_BYTES,
    ChannelRecord,
    DomainRecord,
    Registry,
)

__all__ = ["host"]  # the fixture, imported for pytest


def call(h: HookHost, op: str, subop: str, xml: bytes, domain: str = "vm1") -> tuple[int, str]:
    err = io.StringIO()
    code = hook.main(["libxl", domain, op, subop, "-"], io.BytesIO(xml), io.StringIO(), err,
                     h.environ)
    return code, err.getvalue()


def two_channels(h: HookHost, uuid: str) -> tuple[bytes, list[str]]:
    paths = [f"{h.domain_dir(uuid)}/org.a.0", f"{h.extra_root}/sub/org.b.0"]
    xml = domain_xml("vm1", uuid, [
        channel_xml("unix", "xen", "org.a.0", paths[0]),
        channel_xml("unix", "xen", "org.b.0", paths[1]),
    ])
    return xml, paths


# --- 1. a full disk during prepare leaks no claim ------------------------------------


def _writes_during_prepare(h: HookHost, monkeypatch: pytest.MonkeyPatch) -> int:
    """How many atomic writes one prepare of two_channels makes."""
    count = 0
    real = registry_module.atomic_write

    def counting(*args: Any, **kwargs: Any) -> None:
        nonlocal count
        count += 1
        real(*args, **kwargs)

    monkeypatch.setattr(registry_module, "atomic_write", counting)
    uuid = new_uuid()
    xml, _ = two_channels(h, uuid)
    assert call(h, "prepare", "begin", xml)[0] == 0
    assert call(h, "release", "end", xml)[0] == 0
    monkeypatch.setattr(registry_module, "atomic_write", real)
    return count - 0  # release writes nothing through atomic_write


def test_enospc_at_any_write_of_prepare_leaves_no_claim(
    host: HookHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = _writes_during_prepare(host, monkeypatch)
    assert writes >= 3  # owned list, owned list again, record
    real = registry_module.atomic_write
    for failing in range(1, writes + 1):
        seen = 0

        def full_disk(*args: Any, _failing: int = failing, **kwargs: Any) -> None:
            nonlocal seen
            seen += 1
            if seen == _failing:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), args[0])
            real(*args, **kwargs)

        monkeypatch.setattr(registry_module, "atomic_write", full_disk)
        uuid = new_uuid()
        xml, paths = two_channels(host, uuid)
        code, err = call(host, "prepare", "begin", xml)
        monkeypatch.setattr(registry_module, "atomic_write", real)
        assert code == 1 and "No space left on device" in err, (failing, err)
        registry = Registry(host.rundir)
        assert [registry.claim_owner(p) for p in paths] == [None, None], failing
        assert registry.by_uuid(uuid) is None
        assert not os.path.exists(os.path.dirname(paths[1]))
        # Another domain can now take the same path (the own-directory one
        # is per UUID, so try the shared allowed root).
        other = new_uuid()
        taker = domain_xml("vm2", other, [channel_xml("unix", "xen", "org.b.0", paths[1])])
        assert call(host, "prepare", "begin", taker, domain="vm2")[0] == 0, failing
        assert call(host, "release", "end", taker, domain="vm2")[0] == 0


def test_release_without_a_record_frees_leftover_claims(host: HookHost) -> None:
    """libvirt runs release after every failed start; claims written by a
    prepare that died before its record (SIGKILL, a full disk) go then."""
    uuid = new_uuid()
    xml, paths = two_channels(host, uuid)
    registry = Registry(host.rundir)
    registry.claim_paths(DomainRecord(uuid, "vm1", "libxl", "preparing", (
        ChannelRecord(Channel("org.b.0", Connection.SOCKET, paths[1], target=Target.XEN)),)))
    assert registry.claim_owner(paths[1]) == uuid and registry.by_uuid(uuid) is None
    assert call(host, "release", "end", xml) == (0, "")
    assert registry.claim_owner(paths[1]) is None


def test_orphan_claims_are_listed_and_released_only_without_a_record(host: HookHost) -> None:
    registry = Registry(host.rundir)
    orphan, alive = new_uuid(), new_uuid()
    for uuid, path in ((orphan, f"{host.extra_root}/o"), (alive, f"{host.extra_root}/a")):
        record = DomainRecord(uuid, f"vm-{uuid[:4]}", "libxl", "running", (
            ChannelRecord(Channel("c", Connection.SOCKET, path, target=Target.XEN)),))
        registry.claim_paths(record)
        if uuid == alive:
            registry.put(record)
    assert [u for u, _age in registry.orphan_claims()] == [orphan]
    assert registry.release_orphan(alive) is False
    assert registry.release_orphan(orphan) is True
    assert registry.claim_owner(f"{host.extra_root}/o") is None
    assert registry.claim_owner(f"{host.extra_root}/a") == alive
    assert registry.orphan_claims() == []


# --- 2. a domain the registry could not read back is refused ------------------------


def test_the_largest_allowed_record_fits_the_read_limit() -> None:
    path = "/" + "\u00e9" * 53  # 107 bytes of characters JSON escapes to 6 bytes each
    channels = tuple(
        ChannelRecord(Channel(f"{i:04d}" + "n" * 96, Connection.SOCKET, path,
                              target=Target.XEN), created_dir=True)
        for i in range(MAX_CHANNELS)
    )
    record = DomainRecord(new_uuid(), "d" * 1000, "libxl", "running", channels)
    assert len(record.to_json().encode()) < MAX_RECORD_BYTES


def test_prepare_refuses_more_channels_than_the_registry_holds(host: HookHost) -> None:
    keep = new_uuid()
    xml, _ = two_channels(host, keep)
    assert call(host, "prepare", "begin", xml)[0] == 0
    uuid = new_uuid()
    many = domain_xml("many", uuid, [
        channel_xml("pty", "xen", f"org.example.channel.with.a.long.name.{i}")
        for i in range(8000)
    ])
    code, err = call(host, "prepare", "begin", many, domain="many")
    assert code == 1 and err.count("\n") == 1
    assert "8000 channels, over the limit of 1024" in err
    code, err = call(host, "started", "begin", many, domain="many")
    assert code == 1 and "over the limit" in err
    registry = Registry(host.rundir)
    assert registry.by_uuid(uuid) is None
    assert [r.uuid for r in registry.list()] == [keep]  # list still works for everyone


def test_fill_refuses_more_channels_than_the_registry_holds(host: HookHost) -> None:
    many = domain_xml("many", new_uuid(), [
        channel_xml("pty", "xen", f"c{i}") for i in range(MAX_CHANNELS + 1)
    ]).decode()
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["fill", "--rundir", host.rundir, "-"], io.StringIO(many), out, err)
    assert code == 1 and out.getvalue() == ""
    assert "1025 channels, over the limit of 1024" in err.getvalue()


def test_the_registry_refuses_to_write_a_record_it_could_not_read(host: HookHost) -> None:
    channels = tuple(
        ChannelRecord(Channel("n" * 100, Connection.PTY, "/" + "p" * 106, target=Target.XEN))
        for _ in range(5000)
    )
    with pytest.raises(RegistryError, match="over 1 MiB"):
        Registry(host.rundir).put(DomainRecord(new_uuid(), "big", "libxl", "running", channels))


# --- 3. release never follows a symlink in a middle directory ------------------------


def test_release_does_not_follow_a_middle_directory_swapped_for_a_symlink(
    host: HookHost, tmp_path: Path
) -> None:
    uuid = new_uuid()
    path = f"{host.extra_root}/sub/dom/org.b.0"
    xml = domain_xml("vm1", uuid, [channel_xml("unix", "xen", "org.b.0", path)])
    assert call(host, "prepare", "begin", xml)[0] == 0
    assert json.loads(Registry(host.rundir).by_uuid(uuid).to_json())[  # type: ignore[union-attr]
        "channels"][0]["created_dir"] is True
    # While the domain runs, someone swaps sub/ for a symlink to a tree
    # holding a stale socket and an empty directory of the same names.
    outside = tmp_path / "outside"
    (outside / "dom").mkdir(parents=True)
    bait = outside / "dom" / "org.b.0"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(bait))
    server.close()
    os.rename(f"{host.extra_root}/sub", f"{host.base}/moved")
    os.symlink(outside, f"{host.extra_root}/sub")
    code, err = call(host, "release", "end", xml)
    assert code == 0
    assert bait.exists() and (outside / "dom").is_dir()
    assert "not a plain directory" in err


def test_monitor_removal_does_not_follow_a_middle_symlink_either(
    host: HookHost, tmp_path: Path
) -> None:
    """The monitor removes a vanished domain's files with the same function."""
    from xen_channel_backend.settings import load_settings
    from xen_channel_backend.sockets import remove_domain_files

    uuid = new_uuid()
    path = f"{host.extra_root}/sub/dom/org.b.0"
    xml = domain_xml("vm1", uuid, [channel_xml("unix", "xen", "org.b.0", path)])
    assert call(host, "prepare", "begin", xml)[0] == 0
    outside = tmp_path / "outside"
    (outside / "dom").mkdir(parents=True)
    os.rename(f"{host.extra_root}/sub", f"{host.base}/moved")
    os.symlink(outside, f"{host.extra_root}/sub")
    registry = Registry(host.rundir)
    record = registry.by_uuid(uuid)
    assert record is not None
    warnings: list[str] = []
    settings = load_settings(environ=host.environ)
    removed = remove_domain_files(settings, registry, record, warnings.append)
    assert (outside / "dom").is_dir()
    assert not any(p.startswith(str(outside)) or "/sub/" in p for p in removed)
    assert any("not a plain directory" in w for w in warnings)


# --- 4. a FIFO or a directory at a record's path ------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_fifo_or_directory_at_a_record_path_is_a_one_line_error(
    host: HookHost, kind: str
) -> None:
    uuid = new_uuid()
    xml, _ = two_channels(host, uuid)
    assert call(host, "prepare", "begin", xml)[0] == 0
    registry = Registry(host.rundir)
    target = os.path.join(registry.records_dir, f"{new_uuid()}.json")
    if kind == "fifo":
        os.mkfifo(target)
    else:
        os.mkdir(target)
    result: list[int] = []
    err = io.StringIO()
    worker = threading.Thread(
        target=lambda: result.append(cli.main(["list", "--rundir", host.rundir],
                                              stdout=io.StringIO(), stderr=err)),
        daemon=True)
    worker.start()
    worker.join(timeout=30)  # generous: a hang, not a slow answer, is the defect
    assert result == [1], "list hung on a FIFO in the registry"
    line = err.getvalue()
    assert line.count("\n") == 1 and target in line
    expected = f"is a {'FIFO' if kind == 'fifo' else 'directory'}, not a regular file"
    assert expected in line
