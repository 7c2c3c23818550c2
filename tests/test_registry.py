"""The registry: records, claims, flock, and crash/concurrency safety with real processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import signal
import threading
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest

from xen_channel_backend.errors import PathConflict, RegistryError, UnsafeRegistryDir
from xen_channel_backend.model import Channel, Connection, Target
from xen_channel_backend.registry import (
    PREPARING,
    RUNNING,
    ChannelRecord,
    DomainRecord,
    Registry,
)

fork = multiprocessing.get_context("fork")
UUID_A = "11111111-2222-3333-4444-555555555555"
UUID_B = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"


def record(uuid: str, name: str, *paths: str, state: str = PREPARING) -> DomainRecord:
    channels = tuple(
        ChannelRecord(Channel(f"ch{i}", Connection.SOCKET, p, target=Target.XEN), created_dir=True)
        for i, p in enumerate(paths)
    )
    pty = ChannelRecord(Channel("console.0", Connection.PTY, None, target=Target.VIRTIO))
    return DomainRecord(uuid, name, "qemu", state, (*channels, pty))


def test_json_round_trip() -> None:
    original = record(UUID_A.upper(), "vm1", "/run/x/a")
    assert original.uuid == UUID_A
    again = DomainRecord.from_json(original.to_json())
    assert again == original
    assert json.loads(original.to_json())["channels"][0] == {
        "name": "ch0", "connection": "socket", "path": "/run/x/a", "target": "xen",
        "created_dir": True,
    }


def test_put_get_by_uuid_spelling_and_name(tmp_path: Path) -> None:
    reg = Registry(str(tmp_path))
    assert reg.get(UUID_A) is None and reg.list() == []
    rec = record(UUID_A, "vm1")
    reg.put(rec)
    assert reg.get(UUID_A) == rec
    assert reg.get(UUID_A.replace("-", "").upper()) == rec
    assert reg.get("vm1") == rec
    assert os.listdir(reg.records_dir) == [f"{UUID_A}.json"]


def test_rename_moves_the_name_index(tmp_path: Path) -> None:
    reg = Registry(str(tmp_path))
    reg.put(record(UUID_A, "old"))
    reg.put(record(UUID_A, "new", state=RUNNING))
    assert reg.get("old") is None
    assert reg.get("new") is not None and reg.get("new").state == RUNNING  # type: ignore[union-attr]


def test_a_domain_named_like_a_uuid(tmp_path: Path) -> None:
    reg = Registry(str(tmp_path))
    reg.put(record(UUID_A, UUID_B))
    found = reg.get(UUID_B)
    assert found is not None and found.uuid == UUID_A


def test_lost_name_index_falls_back_to_a_scan(tmp_path: Path) -> None:
    reg = Registry(str(tmp_path))
    reg.put(record(UUID_A, "vm1"))
    for entry in os.listdir(tmp_path / "registry" / "names"):
        os.unlink(tmp_path / "registry" / "names" / entry)
    assert reg.get("vm1") is not None


def test_list_is_sorted_and_skips_temporary_files(tmp_path: Path) -> None:
    reg = Registry(str(tmp_path))
    reg.put(record(UUID_B, "b"))
    reg.put(record(UUID_A, "a"))
    (Path(reg.records_dir) / ".leftover.tmp").write_text("{half")
    (Path(reg.records_dir) / "README").write_text("x")
    assert [r.name for r in reg.list()] == ["a", "b"]


def test_corrupt_record_is_a_one_line_error_naming_the_file(tmp_path: Path) -> None:
    reg = Registry(str(tmp_path))
    reg.put(record(UUID_A, "vm1"))
    path = Path(reg.records_dir) / f"{UUID_A}.json"
    path.write_text('{"version": 1, "uuid": ')
    with pytest.raises(RegistryError) as info:
        reg.get(UUID_A)
    assert info.value.path == str(path) and "\n" not in info.value.message()


def test_record_under_the_wrong_file_name_is_refused(tmp_path: Path) -> None:
    reg = Registry(str(tmp_path))
    reg.put(record(UUID_A, "vm1"))
    os.rename(Path(reg.records_dir) / f"{UUID_A}.json", Path(reg.records_dir) / f"{UUID_B}.json")
    with pytest.raises(RegistryError, match="holds UUID"):
        reg.get(UUID_B)


def test_remove_is_idempotent_and_releases_claims(tmp_path: Path) -> None:
    reg = Registry(str(tmp_path))
    rec = record(UUID_A, "vm1", "/srv/s/a")
    reg.claim_paths(rec)
    reg.put(rec)
    reg.remove(UUID_A)
    reg.remove(UUID_A)
    Registry(str(tmp_path / "never-used")).remove(UUID_A)
    assert reg.get(UUID_A) is None and reg.get("vm1") is None
    assert reg.claim_owner("/srv/s/a") is None
    assert os.listdir(tmp_path / "registry" / "locks") == []


def test_claims(tmp_path: Path) -> None:
    reg = Registry(str(tmp_path))
    a = record(UUID_A, "alpha", "/srv/s/one", "/srv/s/two")
    assert reg.claim_paths(a) == ["/srv/s/one", "/srv/s/two"]
    assert reg.claim_paths(a) == []  # re-claiming one's own paths is fine
    reg.put(a)
    b = record(UUID_B, "beta", "/srv/s/three", "/srv/s//two")
    with pytest.raises(PathConflict) as info:
        reg.claim_paths(b)
    err = info.value
    assert (err.path, err.owner_uuid, err.claimant_uuid) == ("/srv/s/two", UUID_A, UUID_B)
    assert "'alpha'" in err.message() and "'beta'" in err.message()
    # All or nothing: beta's claim on "three" was rolled back.
    assert reg.claim_owner("/srv/s/three") is None
    reg.release(UUID_A)
    reg.release(UUID_A)  # idempotent
    assert reg.claim_paths(b) == ["/srv/s/three", "/srv/s/two"]
    assert reg.claim_owner("/srv/s/two") == UUID_B


def test_claim_paths_drops_paths_no_longer_wanted(tmp_path: Path) -> None:
    reg = Registry(str(tmp_path))
    reg.claim_paths(record(UUID_A, "vm", "/srv/old", "/srv/kept"))
    assert reg.claim_paths(record(UUID_A, "vm", "/srv/kept", "/srv/new")) == ["/srv/new"]
    assert reg.claim_owner("/srv/old") is None
    assert reg.claim_owner("/srv/kept") == UUID_A


def test_symlinked_registry_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "registry").symlink_to(tmp_path / "elsewhere")
    registry = Registry(str(tmp_path / "run"))
    with pytest.raises(UnsafeRegistryDir, match=r"registry directory .* is a symlink"):
        registry.put(record(UUID_A, "vm"))
    with pytest.raises(UnsafeRegistryDir):
        registry.list()
    assert list((tmp_path / "elsewhere").iterdir()) == []


def _populated_target(tmp_path: Path) -> tuple[Path, Path]:
    """A real run directory holding one record, and a symlink to it as the run directory."""
    real = tmp_path / "real"
    Registry(str(real)).put(record(UUID_B, "victim", str(real / UUID_B / "a")))
    link = tmp_path / "run"
    link.symlink_to(real)
    return real, link


def _tree(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
        for p in sorted(root.rglob("*"))
    }


def test_symlinked_run_directory_is_never_written_through(tmp_path: Path) -> None:
    real, link = _populated_target(tmp_path)
    before = _tree(real)
    registry = Registry(str(link))
    with pytest.raises(UnsafeRegistryDir) as caught:
        registry.put(record(UUID_A, "vm", str(link / UUID_A / "a")))
    message = caught.value.message()
    assert message.startswith(f"run directory {link} is a symlink (to '{real}')")
    assert "\n" not in message
    with pytest.raises(UnsafeRegistryDir):
        registry.claim_paths(record(UUID_A, "vm", str(link / UUID_A / "a")))
    with pytest.raises(UnsafeRegistryDir):
        registry.release(UUID_B)
    with pytest.raises(UnsafeRegistryDir):
        registry.remove(UUID_B)
    assert _tree(real) == before


def test_symlinked_run_directory_is_never_read_through(tmp_path: Path) -> None:
    real, link = _populated_target(tmp_path)
    registry = Registry(str(link))
    refused = re.escape(f"run directory {link} is a symlink")
    for read in (
        registry.list, lambda: registry.get("victim"), lambda: registry.get(UUID_B),
        lambda: registry.by_uuid(UUID_B), lambda: registry.claim_owner(str(real / UUID_B / "a")),
    ):
        with pytest.raises(UnsafeRegistryDir, match=refused):
            read()
    # Daemons scan: they get the one problem, and no record from the target.
    records, problems = registry.scan()
    assert records == []
    assert [type(p) for p in problems] == [UnsafeRegistryDir]


def test_dangling_symlink_or_file_as_run_directory_is_refused(tmp_path: Path) -> None:
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "missing")
    with pytest.raises(UnsafeRegistryDir, match="is a symlink"):
        Registry(str(dangling)).put(record(UUID_A, "vm"))
    assert not (tmp_path / "missing").exists()
    plain_file = tmp_path / "file"
    plain_file.write_text("")
    with pytest.raises(UnsafeRegistryDir, match="is not a directory"):
        Registry(str(plain_file)).list()


# --- real processes ------------------------------------------------------------


def _hold_lock(rundir: str, uuid: str, held: Any, release: Any) -> None:
    with Registry(rundir)._locked(uuid):
        held.set()
        release.wait(30)


def test_writers_of_one_domain_serialize_on_flock(tmp_path: Path) -> None:
    reg = Registry(str(tmp_path))
    reg.put(record(UUID_A, "vm"))
    held, release = fork.Event(), fork.Event()
    holder = fork.Process(target=_hold_lock, args=(str(tmp_path), UUID_A, held, release))
    holder.start()
    assert held.wait(30)
    writer = threading.Thread(target=reg.put, args=(record(UUID_A, "vm", state=RUNNING),))
    writer.start()
    writer.join(0.5)
    blocked = writer.is_alive()
    release.set()
    writer.join(30)
    holder.join(30)
    assert blocked, "put() did not wait for the flock held by another process"
    assert reg.get(UUID_A).state == RUNNING  # type: ignore[union-attr]


def _race_claim(rundir: str, uuid: str, name: str, path: str, go: Any, out: Any) -> None:
    reg = Registry(rundir)
    rec = record(uuid, name, path)
    go.wait(30)
    try:
        reg.claim_paths(rec)
        out.put((uuid, "won"))
    except PathConflict as exc:
        out.put((uuid, exc.owner_uuid))


def test_claim_race_between_two_processes_has_exactly_one_winner(tmp_path: Path) -> None:
    for round_ in range(25):
        rundir = str(tmp_path / f"r{round_}")
        Registry(rundir)._ensure_dirs()
        go, out = fork.Event(), fork.Queue()
        path = f"/srv/shared/{round_}"
        procs = [
            fork.Process(target=_race_claim, args=(rundir, u, n, path, go, out))
            for u, n in ((UUID_A, "alpha"), (UUID_B, "beta"))
        ]
        for p in procs:
            p.start()
        go.set()
        results = dict(out.get(timeout=30) for _ in procs)
        for p in procs:
            p.join(30)
        winners = [u for u, r in results.items() if r == "won"]
        assert len(winners) == 1, results
        loser = next(u for u in results if u not in winners)
        assert results[loser] == winners[0]  # the loser's error names the winner
        assert Registry(rundir).claim_owner(path) == winners[0]


def _prepare_like(rundir: str, index: int, go: Any) -> None:
    reg = Registry(rundir)
    uuid = str(uuidlib.UUID(int=index + 1))
    rec = record(uuid, f"vm{index}", f"/srv/s/{index}/a", f"/srv/s/{index}/b")
    go.wait(60)
    reg.claim_paths(rec)
    reg.put(rec)
    reg.put(record(uuid, f"vm{index}", f"/srv/s/{index}/a", f"/srv/s/{index}/b", state=RUNNING))


def test_100_concurrent_writer_processes_leave_every_record_right(tmp_path: Path) -> None:
    rundir = str(tmp_path)
    go = fork.Event()
    procs = [fork.Process(target=_prepare_like, args=(rundir, i, go)) for i in range(100)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 100
    reg = Registry(rundir)
    records = reg.list()
    assert len(records) == 100
    for i in range(100):
        uuid = str(uuidlib.UUID(int=i + 1))
        assert reg.get(uuid) == record(
            uuid, f"vm{i}", f"/srv/s/{i}/a", f"/srv/s/{i}/b", state=RUNNING
        )
        assert reg.get(f"vm{i}") == reg.get(uuid)
        assert reg.claim_owner(f"/srv/s/{i}/b") == uuid


def _write_forever(rundir: str, writes: Any) -> None:
    reg = Registry(rundir)
    states = (PREPARING, RUNNING)
    n = os.getpid()  # vary which record each writer starts with
    while True:
        n += 1
        rec = record(UUID_A, f"vm{n % 2}", f"/srv/k/{n % 2}", state=states[n % 2])
        reg.claim_paths(rec)
        reg.put(rec)
        writes.value += 1


def test_writer_sigkilled_in_a_loop_never_leaves_a_corrupt_record(tmp_path: Path) -> None:
    rundir = str(tmp_path)
    reg = Registry(rundir)
    valid = {
        record(UUID_A, f"vm{k}", f"/srv/k/{k}", state=(PREPARING, RUNNING)[k]) for k in (0, 1)
    }
    rng = random.Random(1234)
    seen = set()
    for _ in range(200):
        writes = fork.Value("i", 0)
        writer = fork.Process(target=_write_forever, args=(rundir, writes))
        writer.start()
        # Half the kills land before the first write completes, half later,
        # at a random point inside some later write.
        if rng.random() < 0.5:
            deadline = time.monotonic() + 30
            while writes.value < 1 and time.monotonic() < deadline:
                time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.01))
        os.kill(writer.pid, signal.SIGKILL)  # type: ignore[arg-type]
        writer.join(10)
        current = reg.get(UUID_A)  # raises RegistryError on a torn record
        assert current is None or current in valid
        if current is not None:
            seen.add(current.state)
            # A claim of the same UUID left by the killed writer stays re-claimable.
            reg.claim_paths(current)
    assert seen == {PREPARING, RUNNING}, "the writer never got far enough to test anything"
    reg.release(UUID_A)
    assert reg.claim_owner("/srv/k/0") is None and reg.claim_owner("/srv/k/1") is None


def _put_or_remove(rundir: str, seed: int) -> None:
    reg = Registry(rundir)
    rng = random.Random(seed)
    for _ in range(30):
        if rng.random() < 0.5:
            reg.put(record(UUID_A, "vm", "/srv/pr/a"))
        else:
            reg.remove(UUID_A)


def test_remove_racing_put_neither_deadlocks_nor_corrupts(tmp_path: Path) -> None:
    procs = [fork.Process(target=_put_or_remove, args=(str(tmp_path), s)) for s in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 8
    current = Registry(str(tmp_path)).get(UUID_A)
    assert current is None or current == record(UUID_A, "vm", "/srv/pr/a")


def test_uuid_lookups_never_scan_every_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = Registry(str(tmp_path))
    reg.put(record(UUID_A, "vm1"))

    def no_scan(self: Registry) -> None:
        raise AssertionError("a UUID lookup must not read every record")

    monkeypatch.setattr(Registry, "scan", no_scan)
    assert reg.get(UUID_B) is None and reg.by_uuid(UUID_B) is None
    found = reg.by_uuid(UUID_A.upper())
    assert found is not None and found.name == "vm1"


def test_scan_reports_a_corrupt_record_without_hiding_the_others(tmp_path: Path) -> None:
    reg = Registry(str(tmp_path))
    reg.put(record(UUID_A, "vm1"))
    reg.put(record(UUID_B, "vm2"))
    (Path(reg.records_dir) / f"{UUID_B}.json").write_text("{")
    records, problems = reg.scan()
    assert [r.name for r in records] == ["vm1"]
    assert [p.path for p in problems] == [str(Path(reg.records_dir) / f"{UUID_B}.json")]
    with pytest.raises(RegistryError):
        reg.list()


def test_a_record_missing_a_key_names_the_key(tmp_path: Path) -> None:
    reg = Registry(str(tmp_path))
    reg.put(record(UUID_A, "vm1"))
    path = Path(reg.records_dir) / f"{UUID_A}.json"
    path.write_text(f'{{"version": 1, "uuid": "{UUID_A}", "name": "vm1"}}')
    with pytest.raises(RegistryError, match="missing key 'channels'"):
        reg.get(UUID_A)
