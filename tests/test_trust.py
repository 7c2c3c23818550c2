"""trust.check_trusted_path: OpenSSH's StrictModes rule, on real files (we run as root)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from xen_channel_backend.errors import UntrustedPath
from xen_channel_backend.trust import check_trusted_path

NOBODY = 65534

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown test files")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """tmp_path is below /tmp (sticky, root's): a root-owned 0755 tree inside it."""
    root = tmp_path / "root"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "mod.py").write_text("")
    for path in (tmp_path, root, root / "lib"):
        os.chown(path, 0, 0)
        path.chmod(0o755)
    return root


def test_a_root_owned_tree_is_trusted(tree: Path) -> None:
    check_trusted_path(str(tree / "lib" / "mod.py"))
    check_trusted_path("/usr/bin/python3")  # a symlink into root's /usr/bin


def test_the_sticky_tmp_is_accepted(tree: Path) -> None:
    assert os.stat("/tmp").st_mode & 0o1000
    check_trusted_path(str(tree))


@pytest.mark.parametrize(
    "mode, who", [(0o775, "group"), (0o757, "others"), (0o777, "group and others")]
)
def test_a_writable_directory_above_is_named(tree: Path, mode: int, who: str) -> None:
    (tree / "lib").chmod(mode)
    with pytest.raises(UntrustedPath) as caught:
        check_trusted_path(str(tree / "lib" / "mod.py"))
    assert caught.value.path == str(tree / "lib")
    assert f"writable by {who}" in caught.value.message()
    assert "\n" not in caught.value.message()


def test_a_file_owned_by_another_user_is_refused(tree: Path) -> None:
    os.chown(tree / "lib" / "mod.py", NOBODY, -1)
    with pytest.raises(UntrustedPath, match="owned by uid 65534"):
        check_trusted_path(str(tree / "lib" / "mod.py"))
    check_trusted_path(str(tree / "lib" / "mod.py"), uids=(0, NOBODY))


def test_a_sticky_file_is_not_a_sticky_directory(tree: Path) -> None:
    (tree / "lib" / "mod.py").chmod(0o1666)
    with pytest.raises(UntrustedPath, match="writable by group and others"):
        check_trusted_path(str(tree / "lib" / "mod.py"))


def test_a_symlink_is_followed_and_its_target_checked(tree: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil"
    evil.mkdir()
    evil.chmod(0o777)
    (evil / "mod.py").write_text("")
    (tree / "link").symlink_to(evil)
    with pytest.raises(UntrustedPath) as caught:
        check_trusted_path(str(tree / "link" / "mod.py"))
    assert caught.value.path == str(evil)


def test_a_symlink_loop_and_a_missing_path_are_one_line_errors(tree: Path) -> None:
    (tree / "a").symlink_to(tree / "b")
    (tree / "b").symlink_to(tree / "a")
    with pytest.raises(UntrustedPath, match="too many levels"):
        check_trusted_path(str(tree / "a"))
    with pytest.raises(UntrustedPath, match="cannot be checked"):
        check_trusted_path(str(tree / "missing"))
    with pytest.raises(UntrustedPath, match="not an absolute path"):
        check_trusted_path("relative/path")
