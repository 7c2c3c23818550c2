"""atomic_write: readers see the old file or the new one, never a mixture."""

from __future__ import annotations

import multiprocessing
import os
import stat
from pathlib import Path

import pytest

from xen_channel_backend.atomic import atomic_write


def test_replaces_the_file_with_the_given_mode_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    target.write_text("old")
    atomic_write(target, "new", mode=0o640)
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["record.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    target = tmp_path / "record.json"
    target.write_text("old")

    class Unencodable(str):
        def encode(self, *args: object, **kwargs: object) -> bytes:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(target, Unencodable("x"))
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path, b"x")  # os.replace onto a directory fails after the write
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["record.json"]


def test_replacing_keeps_the_old_files_mode_and_owner(tmp_path: Path) -> None:
    secret = tmp_path / "guest.cfg"
    secret.write_text('vncpasswd = "x"\n')
    secret.chmod(0o600)
    if os.geteuid() == 0:
        os.chown(secret, 65534, 65534)
    atomic_write(secret, "new")
    info = secret.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and secret.read_text() == "new"
    if os.geteuid() == 0:
        assert (info.st_uid, info.st_gid) == (65534, 65534)
    fresh = tmp_path / "fresh"
    atomic_write(fresh, "x")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644


def test_a_symlink_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "record.json"
    link.symlink_to(victim)
    victim.chmod(0o600)
    atomic_write(link, "new")
    assert victim.read_text() == "precious"
    assert not link.is_symlink() and link.read_text() == "new"
    assert stat.S_IMODE(link.stat().st_mode) == 0o644  # not the victim's mode


def _writer(path: str, letter: str) -> None:
    for _ in range(200):
        atomic_write(path, letter * 65536)


def test_concurrent_writers_never_leave_a_mixture(tmp_path: Path) -> None:
    target = str(tmp_path / "record.json")
    atomic_write(target, "a" * 65536)
    writers = [multiprocessing.Process(target=_writer, args=(target, c)) for c in "bc"]
    for w in writers:
        w.start()
    seen = set()
    while any(w.is_alive() for w in writers):
        with open(target) as handle:
            content = handle.read()
        assert len(content) == 65536 and len(set(content)) == 1
        seen.add(content[0])
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert os.listdir(tmp_path) == ["record.json"]
