"""The one libvirt door (libvirtconn.py): libvirt's own default URI, quiet errors, one line.

The default-URI tests run the real command under ``unshare -m`` with a
private libvirt.conf bind-mounted over /etc/libvirt/libvirt.conf (root's
copy, the one libvirt reads for uid 0), so libvirt itself resolves
``uri_default`` exactly as on an admin's host, and the host's file is never
touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xen_channel_backend import libvirtconn
from xen_channel_backend.errors import LibvirtUnavailable

HERE = Path(__file__).resolve().parent
TREE = HERE.parent
BIN = Path(sys.executable).parent
XEN_CHANNEL = str(BIN / "xen-channel")

DOMAIN = """<domain type='test'>
  <name>NAME</name>
  <memory unit='KiB'>131072</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <channel type='unix'><target type='xen' name='org.example.config.0'/></channel>
  </devices>
</domain>
"""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LIBVIRT_DEFAULT_URI"}
    env.update(extra)
    return env


def test_default_uri_source_follows_libvirts_order(tmp_path: Path) -> None:
    conf = tmp_path / "libvirt" / "libvirt.conf"
    conf.parent.mkdir()
    conf.write_text('# uri_default = "qemu:///system"\nuri_default = "test:///default"\n'
                    'uri_default = "xen:///system"\n')
    user = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert libvirtconn.default_uri_source({**user, "LIBVIRT_DEFAULT_URI": "qemu:///x"}, 1000) == (
        "qemu:///x", "$LIBVIRT_DEFAULT_URI")
    # libvirt's conf reader takes the first assignment; comments do not count.
    assert libvirtconn.default_uri_source(user, 1000) == (
        "test:///default", f"uri_default in {conf}")
    assert libvirtconn.default_uri_source({"HOME": str(tmp_path / "none")}, 1000)[0] is None
    assert libvirtconn.libvirt_conf_path({}, 0) == "/etc/libvirt/libvirt.conf"


def test_connect_errors_are_one_line_and_name_the_uri() -> None:
    pytest.importorskip("libvirt", reason="libvirt-python is missing: pip install .[test]")
    with pytest.raises(LibvirtUnavailable) as caught:
        libvirtconn.open_connection("test:///nonexistent/xcb-no-such-file.xml")
    message = caught.value.message()
    assert message.startswith("libvirt at 'test:///nonexistent/xcb-no-such-file.xml': cannot "
                              "connect: ") and "\n" not in message


def test_connection_reports_the_uri_libvirt_used() -> None:
    libvirt = pytest.importorskip("libvirt", reason="libvirt-python is missing")
    conn = libvirtconn.open_read_only("test:///default")
    try:
        assert libvirtconn.uri_of(conn) == "test:///default"
        with pytest.raises(libvirt.libvirtError, match="read only"):
            conn.defineXML(DOMAIN.replace("NAME", "xcb-read-only"))
    finally:
        conn.close()


def test_libvirt_never_prints_its_own_errors() -> None:
    """A name tried as a UUID used to print 'libvirt: Domain Config error : Invalid UUID'."""
    pytest.importorskip("libvirt", reason="libvirt-python is missing: pip install .[test]")
    # A fresh process: the handler is process-wide, and this one's may be quiet already.
    script = ("from xen_channel_backend import api\n"
              "assert api.remote_channels('test:///default', 'test') == []\n"
              "try:\n    api.remote_channels('test:///default', 'xcb-no-such')\n"
              "except Exception as exc:\n    print(type(exc).__name__)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=False)
    assert (result.returncode, result.stderr, result.stdout) == (0, "", "NoSuchDomain\n")


# --- libvirt's own default resolution, through the real commands ------------------------


def _private_libvirt_conf(tmp_path: Path, uri: str) -> Path:
    if os.geteuid() != 0:
        pytest.skip("DEFAULT URI NOT TESTED: needs root to bind-mount libvirt.conf (make test)")
    if shutil.which("unshare") is None or not os.path.exists(libvirtconn.SYSTEM_LIBVIRT_CONF):
        pytest.skip("DEFAULT URI NOT TESTED: needs unshare and /etc/libvirt/libvirt.conf "
                    "(util-linux, libvirt-clients)")
    pytest.importorskip("libvirt", reason="libvirt-python is missing: pip install .[test]")
    conf = tmp_path / "libvirt.conf"
    conf.write_text(f'# a test copy\nuri_default = "{uri}"\n')
    return conf


def _in_private_conf(conf: Path, *argv: str) -> list[str]:
    """argv run with ``conf`` mounted over root's libvirt.conf, in a private mount namespace."""
    return ["unshare", "-m", "sh", "-c",
            'mount --bind "$1" /etc/libvirt/libvirt.conf && shift && exec "$@"',
            "sh", str(conf), *argv]


def test_define_honours_uri_default_in_libvirt_conf(tmp_path: Path) -> None:
    conf = _private_libvirt_conf(tmp_path, "test:///default")
    domain = tmp_path / "dom.xml"
    domain.write_text(DOMAIN.replace("NAME", "xcb-uri-default"))
    result = subprocess.run(
        _in_private_conf(conf, XEN_CHANNEL, "define", "--rundir", "/run/xcb", str(domain)),
        capture_output=True, text=True, timeout=60, check=False, env=_env(),
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.endswith("defined on test:///default\n")


def test_an_unusable_default_uri_is_named_with_its_source(tmp_path: Path) -> None:
    conf = _private_libvirt_conf(tmp_path, "nosuchdriver:///x")
    domain = tmp_path / "dom.xml"
    domain.write_text(DOMAIN.replace("NAME", "xcb-uri-bad"))
    result = subprocess.run(
        _in_private_conf(conf, XEN_CHANNEL, "define", "--rundir", "/run/xcb", str(domain)),
        capture_output=True, text=True, timeout=60, check=False, env=_env(),
    )
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        "xen-channel: error: libvirt at 'nosuchdriver:///x': cannot connect "
        "(uri_default in /etc/libvirt/libvirt.conf): ")


def test_monitor_honours_uri_default_and_names_it(tmp_path: Path) -> None:
    conf = _private_libvirt_conf(tmp_path, "test:///default")
    process = subprocess.Popen(
        _in_private_conf(conf, XEN_CHANNEL, "monitor", "--rundir", str(tmp_path / "run")),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    assert process.stderr is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stderr.readline()
            if not line:
                break
            lines.append(line)
            if "following domain events" in line:
                break
    finally:
        process.send_signal(signal.SIGTERM)
        _rest, _ = process.communicate(timeout=30)
    assert "xen-channel: connected to test:///default (driver test); following domain events\n" \
        in lines, lines
    assert process.returncode == 0
