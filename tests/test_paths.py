"""The path policy as properties, plus the explicit-path and no-follow checks."""

from __future__ import annotations

import os
import stat
import uuid as uuidlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from xen_channel_backend.errors import (
    InvalidChannelName,
    InvalidUUID,
    PathNotAllowed,
    RunDirTooLong,
)
from xen_channel_backend.model import MAX_SOCKET_PATH, validate_name, validate_path
from xen_channel_backend.paths import (
    HASH_MARK,
    MAX_RUNDIR,
    canonical_uuid,
    domain_socket_dir,
    is_ours,
    is_within,
    make_dirs_nofollow,
    open_dir_nofollow,
    socket_path,
)
from xen_channel_backend.settings import Settings

UUID = "4dea22b3-1d52-d8f3-2516-782e98ab3fa0"

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", fullmatch=True)
uuids = st.uuids().map(str)
# Run directories from 2 bytes up to the longest that fits (52).
rundirs = st.lists(
    st.from_regex(r"[a-z0-9_.-]{1,12}", fullmatch=True).filter(lambda c: c not in (".", "..")),
    min_size=1, max_size=8,
).map(lambda parts: "/" + "/".join(parts)).filter(lambda d: len(d) <= MAX_RUNDIR)


def at(rundir: str, *roots: str) -> Settings:
    return Settings(rundir, None, (rundir, *roots))


DEFAULT = at("/run/xen-channel", "/var/lib/libvirt/qemu/channel")


def test_the_documented_layout() -> None:
    assert domain_socket_dir(DEFAULT, UUID) == f"/run/xen-channel/{UUID}"
    assert socket_path(DEFAULT, UUID, "org.qemu.guest_agent.0") == (
        f"/run/xen-channel/{UUID}/org.qemu.guest_agent.0"
    )


def test_uuid_spellings_share_one_directory() -> None:
    spellings = [UUID, UUID.upper(), UUID.replace("-", ""), f"  {UUID}\n"]
    assert {domain_socket_dir(DEFAULT, s) for s in spellings} == {f"/run/xen-channel/{UUID}"}


@pytest.mark.parametrize("bad", ["", "../../etc", UUID + "0", UUID[:-1] + "g", "x" * 36])
def test_non_uuid_is_refused(bad: str) -> None:
    with pytest.raises(InvalidUUID):
        canonical_uuid(bad)


def test_long_name_is_hashed_to_exactly_107_bytes() -> None:
    name = "org.example." + "x" * 88
    path = socket_path(DEFAULT, UUID, name)
    assert len(path) == MAX_SOCKET_PATH
    leaf = os.path.basename(path)
    assert leaf.startswith("org.example.xxx") and HASH_MARK in leaf
    # Two long names with the same prefix still differ.
    assert path != socket_path(DEFAULT, UUID, name[:-1] + "y")


def test_name_that_just_fits_stays_plain() -> None:
    budget = MAX_SOCKET_PATH - len(f"/run/xen-channel/{UUID}/")
    assert os.path.basename(socket_path(DEFAULT, UUID, "n" * budget)) == "n" * budget
    assert HASH_MARK in socket_path(DEFAULT, UUID, "n" * (budget + 1))


@given(rundir=rundirs, uuid=uuids, name=names)
def test_property_bounded_valid_inside_and_deterministic(rundir: str, uuid: str, name: str) -> None:
    settings = at(rundir)
    path = socket_path(settings, uuid, name)
    assert len(path.encode()) <= MAX_SOCKET_PATH
    validate_path(path)  # usable in XML and xl.cfg alike
    assert is_within(path, (domain_socket_dir(settings, uuid),), strict=True)
    assert os.path.dirname(path) == f"{rundir}/{uuid}"
    assert os.path.normpath(path) == path
    # Deterministic: a fresh Settings with the same values gives the same path.
    assert socket_path(Settings(rundir, "kvm", (rundir,)), uuid.upper(), name) == path


@hsettings(max_examples=300)
@given(rundir=rundirs, a=st.tuples(uuids, names), b=st.tuples(uuids, names))
def test_property_injective(rundir: str, a: tuple[str, str], b: tuple[str, str]) -> None:
    settings = at(rundir)
    if a != b:
        assert socket_path(settings, *a) != socket_path(settings, *b)


@given(uuid=uuids, prefix=st.from_regex(r"[a-z][a-z0-9._-]{60,80}", fullmatch=True),
       tails=st.lists(names, min_size=2, max_size=20, unique=True))
def test_property_injective_for_long_names_sharing_a_prefix(
    uuid: str, prefix: str, tails: list[str]
) -> None:
    settings = at("/" + "r" * (MAX_RUNDIR - 1))  # the tightest budget
    long_names = [(prefix + t)[:100] for t in tails]
    paths = {socket_path(settings, uuid, n) for n in long_names}
    assert len(paths) == len(set(long_names))


@given(name=names)
def test_property_hashed_form_never_equals_a_plain_name(name: str) -> None:
    leaf = os.path.basename(socket_path(at("/" + "r" * (MAX_RUNDIR - 1)), UUID, name))
    if leaf != name:
        # A hashed leaf carries a character no valid name has.
        assert HASH_MARK in leaf
        with pytest.raises(InvalidChannelName):
            validate_name(leaf)


@pytest.mark.parametrize("length", [MAX_RUNDIR + 1, 80, 95])
def test_run_directory_of_80_plus_bytes_is_a_clear_error(length: int) -> None:
    rundir = "/" + "r" * (length - 1)
    with pytest.raises(RunDirTooLong) as info:
        socket_path(at(rundir), UUID, "a")
    assert info.value.rundir == rundir and info.value.needed == MAX_RUNDIR
    assert rundir in info.value.message() and "107" in info.value.message()


def test_longest_allowed_run_directory_still_fits_a_100_char_name() -> None:
    path = socket_path(at("/" + "r" * (MAX_RUNDIR - 1)), UUID, "z" * 100)
    assert len(path) == MAX_SOCKET_PATH


@pytest.mark.parametrize(
    ("path", "roots", "strict", "expected"),
    [
        ("/run/xc/a", ["/run/xc"], False, True),
        ("/run/xc", ["/run/xc"], False, True),
        ("/run/xc", ["/run/xc"], True, False),
        ("/run/xcx/a", ["/run/xc"], False, False),  # a sibling sharing a prefix
        ("/run/xc/../etc/passwd", ["/run/xc"], False, False),
        ("/run/xc//a/./b", ["/run/xc/"], True, True),
        ("relative/a", ["/"], False, False),
        ("/etc/passwd", ["/run/xc", "/var/lib/libvirt/qemu/channel"], False, False),
        ("/anything", ["/"], True, True),
    ],
)
def test_is_within(path: str, roots: list[str], strict: bool, expected: bool) -> None:
    assert is_within(path, roots, strict=strict) is expected


def test_is_ours_decides_which_explicit_paths_we_manage() -> None:
    assert is_ours(DEFAULT, UUID, "c", f"/run/xen-channel/{UUID}/custom")
    assert is_ours(DEFAULT, UUID, "c", "/var/lib/libvirt/qemu/channel/target/x.sock")
    # Outside every root: not ours, and not refused (the hooks leave it alone).
    assert not is_ours(DEFAULT, UUID, "c", "/var/lib/myapp/agent.sock")
    assert not is_ours(DEFAULT, UUID, "c", "/etc/passwd")
    assert not is_ours(DEFAULT, UUID, "c", "/var/lib/libvirt/qemu/channel")  # a root itself
    other = "0" * 8 + UUID[8:]
    with pytest.raises(PathNotAllowed, match="not in this domain's directory"):
        is_ours(DEFAULT, UUID, "c", f"/run/xen-channel/{other}/stolen")
    with pytest.raises(PathNotAllowed, match="not in this domain's directory"):
        is_ours(DEFAULT, UUID, "c", "/run/xen-channel/registry/claims/x")


def test_open_dir_nofollow_refuses_a_symlinked_middle_directory(tmp_path: Path) -> None:
    root = tmp_path / "run"
    (root / UUID / "sub").mkdir(parents=True)
    fd = open_dir_nofollow(str(root / UUID / "sub"), str(root))
    os.close(fd)
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (root / UUID).rename(tmp_path / "moved")
    (root / UUID).symlink_to(outside)
    with pytest.raises(PathNotAllowed, match="not a plain directory"):
        open_dir_nofollow(str(root / UUID / "sub"), str(root))
    with pytest.raises(FileNotFoundError):
        open_dir_nofollow(str(root / "missing" / "sub"), str(root))


def test_make_dirs_nofollow_creates_with_mode_and_reports(tmp_path: Path) -> None:
    root = tmp_path / "run"
    target = root / UUID / "sub"
    created = make_dirs_nofollow(str(target), str(root), mode=0o750, gid=os.getgid())
    assert created == [str(root), str(root / UUID), str(target)]
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o750
    assert make_dirs_nofollow(str(target), str(root)) == []  # idempotent


def test_make_dirs_nofollow_refuses_a_symlink_below_the_root(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / UUID).symlink_to(outside)
    with pytest.raises(PathNotAllowed, match="not a plain directory"):
        make_dirs_nofollow(str(root / UUID / "x"), str(root))
    assert list(outside.iterdir()) == []


def test_make_dirs_nofollow_refuses_a_file_and_outside_paths(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    (root / "file").write_text("")
    with pytest.raises(PathNotAllowed):
        make_dirs_nofollow(str(root / "file" / "x"), str(root))
    with pytest.raises(PathNotAllowed):
        make_dirs_nofollow(str(tmp_path / "elsewhere"), str(root))


def test_make_dirs_nofollow_repairs_a_leftover_world_writable_domain_dir(
    tmp_path: Path,
) -> None:
    """An old 0777 RUNDIR/<uuid> (libxl's channel directory mode, issue 3) is not reused as is."""
    root = tmp_path / "run"
    domain_dir = root / UUID
    domain_dir.mkdir(parents=True)
    os.chmod(domain_dir, 0o777)
    gid = os.getgid()
    assert make_dirs_nofollow(str(domain_dir), str(root), mode=0o750, gid=gid) == []
    info = os.stat(domain_dir)
    assert stat.S_IMODE(info.st_mode) == 0o750
    assert info.st_gid == gid


def test_make_dirs_nofollow_leaves_a_safe_existing_dir_alone(tmp_path: Path) -> None:
    root = tmp_path / "run"
    domain_dir = root / UUID
    domain_dir.mkdir(parents=True)
    os.chmod(domain_dir, 0o700)
    make_dirs_nofollow(str(domain_dir), str(root), mode=0o750)
    assert stat.S_IMODE(os.stat(domain_dir).st_mode) == 0o700


@pytest.mark.parametrize("last", [True, False], ids=["domain-dir", "intermediate"])
def test_make_dirs_nofollow_refuses_a_dir_owned_by_another_user(
    tmp_path: Path, last: bool,
) -> None:
    if os.geteuid() != 0:
        pytest.skip("NOT TESTED: needs root to chown a directory to uid 65534")
    root = tmp_path / "run"
    foreign = root / UUID
    foreign.mkdir(parents=True)
    os.chmod(foreign, 0o755)
    os.chown(foreign, 65534, -1)
    target = foreign if last else foreign / "sub"
    with pytest.raises(PathNotAllowed, match="owned by uid 65534") as caught:
        make_dirs_nofollow(str(target), str(root), mode=0o750)
    assert str(foreign) in caught.value.message()
    assert "\n" not in caught.value.message()
    assert list(foreign.iterdir()) == []
    assert stat.S_IMODE(os.stat(foreign).st_mode) == 0o755  # not "repaired" either


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o770], ids=lambda m: f"{m:04o}")
def test_make_dirs_nofollow_refuses_below_a_group_or_world_writable_dir(
    tmp_path: Path, mode: int,
) -> None:
    root = tmp_path / "run"
    shared = root / "shared"
    shared.mkdir(parents=True)
    os.chmod(shared, mode)
    with pytest.raises(PathNotAllowed, match="writable by group or others") as caught:
        make_dirs_nofollow(str(shared / UUID), str(root), mode=0o750)
    assert str(shared) in caught.value.message()
    assert list(shared.iterdir()) == []
    assert stat.S_IMODE(os.stat(shared).st_mode) == mode


def test_generated_uuid_spelling_round_trips() -> None:
    value = uuidlib.uuid4()
    assert canonical_uuid(value.hex) == str(value)


@given(st.uuids(), st.sampled_from(["lower", "upper", "nodash"]))
def test_canonical_uuid_agrees_with_the_uuid_module_for_every_spelling(
    value: uuidlib.UUID, spelling: str
) -> None:
    text = {"lower": str(value), "upper": str(value).upper(), "nodash": value.hex}[spelling]
    assert canonical_uuid(text) == str(value)


def test_directories_in_a_root_that_is_not_ours_are_used_as_they_are(tmp_path: Path) -> None:
    root = tmp_path / "libvirt-channel"
    shared = root / "target"
    shared.mkdir(parents=True)
    shared.chmod(0o777)  # libxl's own channel directory is 0777 by design
    make_dirs_nofollow(str(shared), str(root), trust_existing=True)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777
    (root / "link").symlink_to(tmp_path)
    with pytest.raises(PathNotAllowed):
        make_dirs_nofollow(str(root / "link" / "x"), str(root), trust_existing=True)
