"""Concurrent hook processes, through the real installed shim and a cut environment.

libvirtd runs the hooks of different domains at the same time (background.md §1:
CloudStack raced on mkdir, Qubes needed flock).  Each process here is
``<hooks>/libxl.d/xen-channel DOMAIN prepare begin -`` with the XML on stdin
and only HOME, LC_ALL=C and PATH, exactly as libvirtd starts it.  All are
spawned first and then released together by feeding their stdin, so their
Python parts overlap.
"""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hook_fixtures import (
    HookHost,
    channel_xml,
    domain_xml,
    install_shims,
    libvirt_env,
    make_host,
    new_uuid,
)

from xen_channel_backend.registry import Registry


@pytest.fixture
def shimmed(tmp_path: Path) -> Iterator[tuple[HookHost, str]]:
    host = make_host()
    try:
        install_shims(str(tmp_path / "hooks"), host.config)
        yield host, str(tmp_path / "hooks" / "libxl.d" / "xen-channel")
    finally:
        shutil.rmtree(host.base, ignore_errors=True)


def run_together(shim: str, calls: list[tuple[str, bytes]]) -> list[tuple[int, bytes, bytes]]:
    """Start every ``(domain, xml)`` prepare, then feed all stdins at once."""
    procs = [
        subprocess.Popen([shim, domain, "prepare", "begin", "-"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=libvirt_env())
        for domain, _ in calls
    ]
    for proc, (_, xml) in zip(procs, calls, strict=True):
        assert proc.stdin is not None
        proc.stdin.write(xml)
        proc.stdin.close()
    results = []
    for proc in procs:
        assert proc.stdout is not None and proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read()
        results.append((proc.wait(timeout=300), out, err))
        proc.stdout.close()
        proc.stderr.close()
    return results


def test_100_concurrent_prepares_all_recorded_right(shimmed: tuple[HookHost, str]) -> None:
    host, shim = shimmed
    domains = [(f"vm{i:03d}", new_uuid()) for i in range(100)]
    calls = [
        (name, domain_xml(name, uuid, [
            *(channel_xml("unix", "xen", n, f"{host.domain_dir(uuid)}/{n}")
              for n in ("org.example.a.0", "org.example.b.0")),
            channel_xml("pty", "xen", "org.example.c.0"),
        ]))
        for name, uuid in domains
    ]
    results = run_together(shim, calls)
    assert [r for r in results if r != (0, b"", b"")] == []
    registry = Registry(host.rundir)
    gid = grp.getgrnam(host.group).gr_gid
    for name, uuid in domains:
        record = registry.get(uuid)
        assert record is not None, name
        assert (record.name, record.driver, record.state) == (name, "libxl", "preparing")
        assert [(c.name, c.path, c.created_dir) for c in record.channels] == [
            ("org.example.a.0", f"{host.domain_dir(uuid)}/org.example.a.0", True),
            ("org.example.b.0", f"{host.domain_dir(uuid)}/org.example.b.0", True),
            ("org.example.c.0", None, False),
        ]
        for channel in record.channels[:2]:
            assert channel.path is not None
            assert registry.claim_owner(channel.path) == uuid
        info = os.lstat(host.domain_dir(uuid))
        assert stat.S_IMODE(info.st_mode) == 0o750 and info.st_gid == gid
    assert len(registry.list()) == 100


def test_domains_racing_for_one_path_exactly_one_wins(shimmed: tuple[HookHost, str]) -> None:
    host, shim = shimmed
    for round_number in range(5):
        path = os.path.join(host.extra_root, f"contested-{round_number}.sock")
        racers = [(f"racer{round_number}-{i}", new_uuid()) for i in range(4)]
        calls = [(name, domain_xml(name, uuid, [channel_xml("unix", "xen", "org.a.0", path)]))
                 for name, uuid in racers]
        results = run_together(shim, calls)
        winners = [racers[i] for i, (code, _, _) in enumerate(results) if code == 0]
        assert len(winners) == 1, results
        winner_name, winner_uuid = winners[0]
        registry = Registry(host.rundir)
        assert registry.claim_owner(path) == winner_uuid
        for (name, uuid), (code, out, err) in zip(racers, results, strict=True):
            if uuid == winner_uuid:
                continue
            assert code == 1 and out == b""
            text = err.decode()
            assert text.count("\n") == 1 and "already claimed" in text
            assert f"'{name}'" in text and f"'{winner_name}'" in text  # names both domains
            assert registry.get(uuid) is None
