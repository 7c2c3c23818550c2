"""pip's view of the project: package data, the sdist, the wheel, one version.

* ``xen_channel_backend/data/`` holds symlinks to the top-level ``xml/``,
  ``guest/``, ``systemd/``, ``hooks/``, ``etc/`` and ``docs/`` (in git) or
  copies of them (in an sdist); either way the files are identical, and
  setup.cfg's package_data patterns take every one of them into the wheel.
* etc/xen-channel.conf, the file the Debian package installs, shows every
  setting with settings.py's default, commented out.
* The integration test builds an sdist from this tree with Debian's own
  python3 tools (PEP 517 hook, no network), builds a wheel from that sdist
  with ``pip wheel``, installs the wheel into a fresh venv, finds every
  installer file through importlib.resources there, and runs a set of this
  suite's tests *from the sdist* against the installed wheel.
"""

from __future__ import annotations

import configparser
import fnmatch
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import xen_channel_backend
from xen_channel_backend import resources
from xen_channel_backend.install import MARKER
from xen_channel_backend.settings import _KEYS, load_settings

TREE = Path(__file__).resolve().parent.parent
DATA = TREE / "xen_channel_backend" / "data"
LINKED = ("xml", "guest", "systemd", "hooks", "etc", "docs")
SYSTEM_PYTHON = "/usr/bin/python3"
#: Tests the sdist must carry and pass against the installed wheel: they use
#: tests/data, the fixtures modules, hooks/, xml/examples, docs/ and scripts/.
SDIST_TESTS = (
    "tests/test_packaging.py", "tests/test_cli_help.py", "tests/test_manpages.py",
    "tests/test_install.py", "tests/test_settings.py", "tests/test_guest_agent.py",
    "tests/test_convert.py", "tests/test_allocate.py", "tests/test_hook.py",
)


def files_under(top: Path) -> dict[str, bytes]:
    found = {}
    for directory, _dirs, names in os.walk(top, followlinks=True):
        for name in names:
            if "__pycache__" in directory:
                continue
            path = Path(directory, name)
            found[str(path.relative_to(top))] = path.read_bytes()
    return found


@pytest.mark.parametrize("name", LINKED)
def test_package_data_is_the_top_level_directory(name: str) -> None:
    """One source of truth: data/NAME is ../../NAME (git) or a byte-identical copy (sdist)."""
    link = DATA / name
    if link.is_symlink():
        assert os.readlink(link) == f"../../{name}"
    assert files_under(link) == files_under(TREE / name)


def test_package_data_patterns_take_every_file() -> None:
    parser = configparser.ConfigParser()
    parser.read(TREE / "setup.cfg")
    patterns = parser["options.package_data"]["xen_channel_backend"].split()
    # setuptools expands each pattern as a glob: '*' never crosses a '/'.
    missed = [path for path in (f"data/{name}/{relative}" for name in LINKED
                                for relative in files_under(DATA / name))
              if not any(fnmatch.fnmatch(path, p) and path.count("/") == p.count("/")
                         for p in patterns)]
    # docs/ ships its Markdown only; anything else there is not documentation.
    missed = [m for m in missed if not (m.startswith("data/docs/") and not m.endswith(".md"))]
    assert missed == [], f"package_data does not take: {missed}"


def test_installer_files_are_found_through_importlib_resources() -> None:
    for name in resources.INSTALLER_FILES:
        assert resources.data_file(name).read_bytes() == (TREE / name).read_bytes()
    with pytest.raises(FileNotFoundError):
        resources.data_file("../setup.cfg")
    out = io.BytesIO()
    wrapper = io.TextIOWrapper(out)
    assert resources.main(["cat", "xml/metadata.rng"], wrapper) == 0
    assert out.getvalue() == (TREE / "xml" / "metadata.rng").read_bytes()
    listing = io.StringIO()
    assert resources.main(["list"], listing) == 0
    assert "xml/examples/vm.json\texample payload for xen-channel send\n" in listing.getvalue()
    assert resources.main(["cat", "no/such"], io.StringIO()) == 1


def test_conffile_shows_every_default_commented_out(tmp_path: Path) -> None:
    text = (TREE / "etc" / "xen-channel.conf").read_text()
    assigned = re.findall(r"^#([a-z_]+) =", text, flags=re.M)
    assert sorted(assigned) == sorted(_KEYS)
    assert not re.search(r"^[a-z_]+ *=", text, flags=re.M), "a setting is not commented out"
    # Uncommented, it sets exactly the defaults.
    uncommented = tmp_path / "xen-channel.conf"
    uncommented.write_text(re.sub(r"^#([a-z_]+ =)", r"\1", text, flags=re.M))
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    assert load_settings(environ={"XEN_CHANNEL_CONFIG": str(uncommented)}) == load_settings(
        environ={"XEN_CHANNEL_CONFIG": str(empty)})


def test_maintainer_scripts_recognise_our_shims() -> None:
    """postinst/prerm match install.py's marker by its prefix (the format number may change)."""
    for script in ("xen-channel-backend.postinst", "xen-channel-backend.prerm"):
        text = (TREE / "debian" / script).read_text()
        prefix = re.search(r"^MARKER='([^']*)'$", text, flags=re.M)
        assert prefix is not None and MARKER.startswith(prefix.group(1)), script
    for hook in ("qemu", "libxl"):
        assert MARKER in (TREE / "hooks" / hook).read_text().splitlines()[:3]


def test_one_version_everywhere() -> None:
    changelog = (TREE / "debian" / "changelog").read_text().splitlines()[0]
    assert changelog.startswith(f"xen-channel-backend ({xen_channel_backend.__version__})")


# --- the sdist and the wheel, built as pip builds them ---------------------------------


def _system_tools_reason() -> str | None:
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import setuptools, wheel, pip"], capture_output=True,
        check=False) if os.path.exists(SYSTEM_PYTHON) else None
    if probe is None or probe.returncode != 0:
        return ("SDIST AND WHEEL NOT BUILT: Debian's python3-setuptools, python3-wheel and "
                "python3-pip are needed (scripts/install-deps)")
    return None


def _copy_tree(target: Path) -> None:
    """The tree as a clean checkout with the working-tree edits (what scripts/build-deb copies)."""
    if (TREE / ".git").exists() and shutil.which("git"):
        names = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=TREE,
            capture_output=True, check=True).stdout.decode().split("\0")
    else:  # already an unpacked sdist
        names = [str(p.relative_to(TREE)) for p in TREE.rglob("*")
                 if not p.is_dir() or p.is_symlink()]
    for name in filter(None, names):
        source = TREE / name
        if not os.path.lexists(source) or "/__pycache__/" in f"/{name}":
            continue
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), destination)
        elif source.is_file():
            shutil.copy2(source, destination)


@pytest.mark.integration
def test_sdist_to_wheel_to_installed_tests(tmp_path: Path) -> None:
    reason = _system_tools_reason()
    if reason is not None:
        pytest.skip(reason)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    source = tmp_path / "checkout"
    _copy_tree(source)
    dist = tmp_path / "dist"
    subprocess.run(  # the PEP 517 hook pip and `python -m build` call; offline
        [SYSTEM_PYTHON, "-c", "import sys; from setuptools import build_meta as b; "
         "print(b.build_sdist(sys.argv[1]))", str(dist)],
        cwd=source, env=env, capture_output=True, check=True)
    (sdist,) = dist.glob("*.tar.gz")
    assert sdist.name == f"xen-channel-backend-{xen_channel_backend.__version__}.tar.gz"
    top = sdist.name[: -len(".tar.gz")]
    with tarfile.open(sdist) as archive:
        members = {m.name[len(top) + 1:] for m in archive.getmembers()}
        archive.extractall(tmp_path / "unpacked", filter="tar")
    for needed in ("MANIFEST.in", "Makefile", "tox.ini", "COPYING", "tests/hook_fixtures.py",
                   "tests/conftest.py", "tests/data/README.md", "scripts/manpages.py",
                   "debian/rules", "docs/cli.md", "hooks/qemu", "etc/xen-channel.conf",
                   *SDIST_TESTS,
                   *(f"xen_channel_backend/data/{n}" for n in resources.INSTALLER_FILES)):
        assert needed in members, f"the sdist lacks {needed}"

    wheels = tmp_path / "wheels"
    subprocess.run([SYSTEM_PYTHON, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(wheels), str(sdist)],
                   env=env, capture_output=True, check=True)
    (wheel,) = wheels.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for name in resources.INSTALLER_FILES:
        assert f"xen_channel_backend/data/{name}" in names, f"the wheel lacks {name}"

    # A fresh venv with the wheel installed; pytest, lxml and libvirt come from
    # this suite's environment, appended after the venv's own site-packages.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path("
                           "'purelib'))"], capture_output=True, text=True, check=True).stdout
    ours = subprocess.run([sys.executable, "-c", "import pytest, os; print(os.path.dirname("
                           "os.path.dirname(pytest.__file__)))"], capture_output=True, text=True,
                          check=True).stdout.strip()
    Path(site.strip(), "zz-test-dependencies.pth").write_text(ours + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], env=env, capture_output=True, check=True)

    unpacked = tmp_path / "unpacked" / top
    found = subprocess.run(
        [str(python), "-I", "-c", "import xen_channel_backend.resources as r, sys; "
         "print(r.data().joinpath('xml').joinpath('metadata.rng')); "
         "[r.data_file(n) for n in r.INSTALLER_FILES]"],
        capture_output=True, text=True, check=True).stdout
    assert found.startswith(str(venv)), found  # the installed copy, not this tree

    result = subprocess.run(
        # -I: not the sdist's own xen_channel_backend/ in the current directory.
        # Whether docs/cli.md is complete is the main run's question, not the sdist's.
        [str(python), "-I", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m",
         "not integration", "--deselect",
         "tests/test_manpages.py::test_cli_md_documents_every_subcommand_and_option",
         *SDIST_TESTS],
        cwd=unpacked, env={**env, "PATH": f"{venv / 'bin'}:{env.get('PATH', '')}"},
        capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "error" not in result.stdout.splitlines()[-1]
