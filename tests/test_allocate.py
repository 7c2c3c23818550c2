"""``fill`` and ``define``: golden outputs, hostile input, libvirt's schema and test:///default."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from golden import check_golden
from lxml import etree

from xen_channel_backend.allocate import define_xml, fill_domain
from xen_channel_backend.cli import main
from xen_channel_backend.domxml import serialize
from xen_channel_backend.libvirtconn import open_connection
from xen_channel_backend.metadata import NAMESPACE, read_domain_metadata
from xen_channel_backend.paths import canonical_uuid, socket_path
from xen_channel_backend.settings import Settings

DATA = Path(__file__).parent / "data" / "fill"
SCHEMA = "/usr/share/libvirt/schemas/domain.rng"
RUNDIR = "/run/xen-channel"
OWN_DIR = "/run/xen-channel/0b7d4c1e-9a2f-4e63-b1d8-7f3a5c2e9d41"
SETTINGS = Settings(RUNDIR, None, (RUNDIR, "/var/lib/libvirt/libxl/channel"))


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep the host's /etc/xen-channel and environment out of every test here."""
    config = tmp_path / "xen-channel.conf"
    config.write_text("[xen-channel]\nallowed_roots = /var/lib/libvirt/libxl/channel\n")
    monkeypatch.setenv("XEN_CHANNEL_CONFIG", str(config))
    monkeypatch.delenv("XEN_CHANNEL_RUNDIR", raising=False)
    monkeypatch.delenv("LIBVIRT_DEFAULT_URI", raising=False)
    yield


@pytest.fixture(scope="module")
def domain_schema() -> etree.RelaxNG:
    if not os.path.exists(SCHEMA):
        pytest.skip(f"libvirt's schema {SCHEMA} is missing: install libvirt-daemon to test")
    return etree.RelaxNG(file=SCHEMA)


def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def assert_valid(schema: etree.RelaxNG, xml: str) -> None:
    document = etree.fromstring(xml.encode())
    assert schema.validate(document), schema.error_log.last_error


@pytest.mark.parametrize(
    ("case", "extra"),
    [
        ("xen-pv", ()),
        ("xen-pv", ("--all-targets",)),
        ("explicit", ()),
        ("long-names", ()),
    ],
)
def test_fill_golden(case: str, extra: tuple[str, ...], domain_schema: etree.RelaxNG) -> None:
    code, out, err = run("fill", "--rundir", RUNDIR, *extra, str(DATA / f"{case}.xml"))
    # xen-pv.xml also has a virtio unix channel: without --all-targets fill says it skipped it.
    skipped = f"xen-channel: warning: {DATA / 'xen-pv.xml'}: skipped 1 virtio unix channel(s) " \
        "('org.qemu.guest_agent.0'): fill allocates Xen channels only; --all-targets " \
        "allocates these too\n"
    assert (code, err) == (0, skipped if (case, extra) == ("xen-pv", ()) else "")
    suffix = ".all-targets" if extra else ""
    check_golden(f"fill/{case}{suffix}.xml", out, xml=True)
    assert_valid(domain_schema, out)


NO_CHANNEL = """<domain type='xen'>
  <name>plain</name>
  <uuid>0b7d4c1e-9a2f-4e63-b1d8-7f3a5c2e9d41</uuid>
  <devices>
    <console type='pty'/>
    DEVICE
  </devices>
</domain>
"""


@pytest.mark.parametrize(("device", "what"), [
    ("", "no <channel>"),
    ("<channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>",
     "no Xen channel"),
])
def test_fill_says_so_when_there_is_nothing_to_allocate(device: str, what: str) -> None:
    """It used to add an empty <xcb:channels/> without a word."""
    domain = NO_CHANNEL.replace("DEVICE", device)
    code, out, err = run("fill", "--rundir", RUNDIR, "-", stdin=domain)
    assert (code, err) == (0, f"xen-channel: warning: <stdin>: the domain has {what}: "
                              "nothing to allocate, no metadata added\n")
    assert NAMESPACE not in out and "<metadata" not in out


def test_fill_empties_our_metadata_when_the_channels_are_gone() -> None:
    with_channel = run("fill", "--rundir", RUNDIR, str(DATA / "xen-pv.xml"), "--all-targets")[1]
    root = etree.fromstring(with_channel.encode())
    devices = root.find("devices")
    assert devices is not None
    for channel in devices.findall("channel"):
        devices.remove(channel)
    code, out, err = run("fill", "--rundir", RUNDIR, "-", stdin=etree.tostring(root).decode())
    assert code == 0 and "nothing to allocate" not in err
    # Still ours, now with no channels: the monitor must not keep stale ones.
    assert read_domain_metadata(etree.fromstring(out.encode())) == []
    assert f"{{{NAMESPACE}}}channels" in {e.tag for e in etree.fromstring(out.encode()).iter()}


def test_fill_names_skipped_virtio_channels_only_without_all_targets() -> None:
    code, _out, err = run("fill", "--rundir", RUNDIR, str(DATA / "xen-pv.xml"))
    assert code == 0 and "'org.qemu.guest_agent.0'" in err and "--all-targets" in err
    code, _out, err = run("fill", "--rundir", RUNDIR, "--all-targets", str(DATA / "xen-pv.xml"))
    assert (code, err) == (0, "")


def test_fill_is_idempotent() -> None:
    once = run("fill", "--rundir", RUNDIR, str(DATA / "xen-pv.xml"))[1]
    twice = run("fill", "--rundir", RUNDIR, "-", stdin=once)[1]
    assert once == twice


def test_long_names_stay_within_107_bytes_and_distinct() -> None:
    filled = fill_domain((DATA / "long-names.xml").read_bytes(), "long-names.xml", SETTINGS)
    paths = [c.path for c in filled.channels]
    assert all(p is not None and len(p) <= 107 for p in paths)
    assert len(set(paths)) == 3
    fits = "org.example.exactly-fits-the-53-byte-budget.xxxxxxxxx"
    assert paths[2] is not None and paths[2].endswith(f"/{fits}")


def test_missing_uuid_is_generated_and_written_in(domain_schema: etree.RelaxNG) -> None:
    code, out, _err = run("fill", "--rundir", RUNDIR, str(DATA / "no-uuid.xml"))
    assert code == 0
    root = etree.fromstring(out.encode())
    uuid = root.findtext("uuid")
    assert uuid is not None and canonical_uuid(uuid) == uuid
    # libvirt's order: <name> then <uuid>.
    assert [child.tag for child in root][:2] == ["name", "uuid"]
    path = root.find("devices/channel/source").get("path")  # type: ignore[union-attr]
    assert path == socket_path(SETTINGS, uuid, "org.example.config.0")
    assert_valid(domain_schema, out)
    # A second run sees the UUID and keeps it.
    assert run("fill", "--rundir", RUNDIR, "-", stdin=out)[1] == out


def test_output_file_is_written_atomically(tmp_path: Path) -> None:
    target = tmp_path / "out.xml"
    target.write_text("old")
    code, out, _err = run("fill", "--rundir", RUNDIR, "-o", str(target), str(DATA / "xen-pv.xml"))
    assert (code, out) == (0, "")
    assert "org.example.config.0" in target.read_text()
    assert sorted(os.listdir(tmp_path)) == ["out.xml", "xen-channel.conf"]  # no temp left


def test_metadata_lists_the_managed_channels() -> None:
    out = run("fill", "--rundir", RUNDIR, str(DATA / "explicit.xml"))[1]
    root = etree.fromstring(out.encode())
    channels = read_domain_metadata(root)
    assert [(c.name, c.path) for c in channels] == [
        ("org.qemu.guest_agent.0", "/var/lib/libvirt/libxl/channel/target/db01.agent"),
        ("org.example.custom", f"{OWN_DIR}/custom.sock"),
        ("org.example.new", f"{OWN_DIR}/org.example.new"),
    ]
    # The admin's own metadata namespace survives.
    assert root.find("metadata/{http://example.org/app/1}owner") is not None
    assert len(root.findall(f"metadata/{{{NAMESPACE}}}channels")) == 1


def domain(channels: str, uuid: str = "0b7d4c1e-9a2f-4e63-b1d8-7f3a5c2e9d41") -> str:
    return (
        f"<domain type='xen'><name>h</name><uuid>{uuid}</uuid><memory>1024</memory>"
        f"<os><type>linux</type></os><devices>{channels}</devices></domain>"
    )


def unix(name: str, path: str | None = None, target: str = "xen") -> str:
    source = f"<source mode='bind' path='{path}'/>" if path is not None else ""
    return f"<channel type='unix'>{source}<target type='{target}' name='{name}'/></channel>"


@pytest.mark.parametrize(
    ("xml", "fragment"),
    [
        (domain(unix("a", "/run/xen-channel/../etc/passwd")), "has a '..' component"),
        (domain(unix("a", "/run/xen-channel/11111111-2222-3333-4444-555555555555/x")),
         "not in this domain's directory"),
        (domain(unix("a", "/run/xen-channel/registry/claims/x")), "not in this domain's directory"),
        (domain(unix("../../etc/passwd")), "channel name '../../etc/passwd' is invalid"),
        (domain(unix("a&#10;b")), "channel name 'a\\nb' is invalid"),
        (domain(unix("a") + unix("a")), "is also the path of channel 'a'"),
        (domain(unix("a", "/run/xen-channel/0b7d4c1e-9a2f-4e63-b1d8-7f3a5c2e9d41/b") + unix("b")),
         "is also the path of channel 'a'"),
        (domain(unix("a"), uuid="not-a-uuid"), "domain UUID 'not-a-uuid' is not a UUID"),
        (domain("<channel type='tcp'><target type='xen' name='t'/></channel>"),
         "has no Xen equivalent"),
        ("<!DOCTYPE d [<!ENTITY x 'y'>]>" + domain(unix("a")), "DOCTYPE"),
        ("<domain><name>x</name>", "malformed XML"),
        ("<notadomain/>", "expected <domain>"),
    ],
)
def test_hostile_input_is_a_one_line_error(xml: str, fragment: str) -> None:
    code, out, err = run("fill", "--rundir", RUNDIR, "-", stdin=xml)
    assert code == 1 and out == ""
    assert err.startswith("xen-channel: error: ") and err.count("\n") == 1
    assert fragment in err


def test_all_targets_needs_a_name_for_a_virtio_socket() -> None:
    xml = domain("<channel type='unix'><target type='virtio'/></channel>")
    assert run("fill", "--rundir", RUNDIR, "-", stdin=xml)[0] == 0  # not our channel by default
    code, _out, err = run("fill", "--rundir", RUNDIR, "--all-targets", "-", stdin=xml)
    assert code == 1 and "no target name" in err


def test_run_directory_too_long_is_named() -> None:
    rundir = "/" + "r" * 79
    code, _out, err = run("fill", "--rundir", rundir, str(DATA / "xen-pv.xml"))
    assert code == 1 and rundir in err and err.count("\n") == 1


# --- define, against libvirt's own test driver ------------------------------------


def driver_domain(name: str) -> str:
    """A domain for libvirt's test driver, whose state is shared by the whole process."""
    return TEST_DOMAIN.replace("NAME", name)


TEST_DOMAIN = """<domain type='test'>
  <name>NAME</name>
  <memory unit='KiB'>131072</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <channel type='unix'><target type='xen' name='org.example.config.0'/></channel>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>
"""


def test_filled_domain_is_accepted_by_libvirt(tmp_path: Path) -> None:
    pytest.importorskip("libvirt", reason="libvirt-python is missing: pip install .[test]")
    filled = fill_domain(
        driver_domain("fill-accepted").encode(), "<test>", SETTINGS, all_targets=True
    )
    uuid = filled.uuid
    conn = open_connection("test:///default")
    try:
        defined = define_xml(conn, serialize(filled.tree), "test:///default")
        assert defined.UUIDString() == uuid
        live = etree.fromstring(defined.XMLDesc(0).encode())
        paths = [s.get("path") for s in live.iterfind("devices/channel/source")]
        assert paths == [
            socket_path(SETTINGS, uuid, "org.example.config.0"),
            socket_path(SETTINGS, uuid, "org.qemu.guest_agent.0"),
        ]
        # libvirt kept our metadata in the persistent definition.
        assert live.find(f"metadata/{{{NAMESPACE}}}channels") is not None
    finally:
        conn.close()


def test_define_command_on_the_test_driver(tmp_path: Path) -> None:
    pytest.importorskip("libvirt", reason="libvirt-python is missing: pip install .[test]")
    source = tmp_path / "dom.xml"
    source.write_text(driver_domain("define-cmd"))
    code, out, err = run("define", "--connect", "test:///default", "--rundir", RUNDIR,
                         "--all-targets", str(source))
    assert (code, err) == (0, "")
    assert out.startswith("Domain 'define-cmd' (") and out.endswith("defined on test:///default\n")


def test_define_prints_a_hostile_domain_name_escaped_on_one_bounded_line(
    tmp_path: Path,
) -> None:
    """The name comes back from libvirt: a bidi override, a line separator or a C1
    CSI in it is escaped, and a huge one is cut, by errors.shown (issue 9).
    (XML cannot carry ESC or BEL, so libvirt never returns those in a name.)"""
    pytest.importorskip("libvirt", reason="libvirt-python is missing: pip install .[test]")
    name = "define-\u202eevil\u2028forged\x9b" + "x" * 300
    source = tmp_path / "dom.xml"
    source.write_text(driver_domain(name), encoding="utf-8")
    code, out, err = run("define", "--connect", "test:///default", "--rundir", RUNDIR,
                         "--all-targets", str(source))
    assert (code, err) == (0, "")
    assert out.count("\n") == 1 and not any(c in out for c in ("\u202e", "\u2028", "\x9b"))
    assert out.startswith("Domain 'define-\\u202eevil\\u2028forged\\x9bxxx")
    assert len(out) < 250 and out.endswith("defined on test:///default\n")


def test_define_uses_libvirt_default_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("libvirt", reason="libvirt-python is missing: pip install .[test]")
    monkeypatch.setenv("LIBVIRT_DEFAULT_URI", "test:///default")
    source = tmp_path / "dom.xml"
    source.write_text(driver_domain("define-default-uri"))
    code, out, err = run("define", "--all-targets", str(source))
    assert (code, err) == (0, "") and out.endswith("defined on test:///default\n")


def test_define_errors_are_one_line_naming_the_uri(tmp_path: Path) -> None:
    pytest.importorskip("libvirt", reason="libvirt-python is missing: pip install .[test]")
    source = tmp_path / "dom.xml"
    without_os = driver_domain("define-bad").replace("<os><type arch='x86_64'>hvm</type></os>", "")
    source.write_text(without_os)
    code, _out, err = run("define", "-c", "test:///default", "--all-targets", str(source))
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("xen-channel: error: libvirt at 'test:///default': cannot define")
    source.write_text(driver_domain("define-bad-uri"))
    code, _out, err = run("define", "-c", "nosuchdriver:///x", "--all-targets", str(source))
    assert code == 1 and err.count("\n") == 1 and "'nosuchdriver:///x'" in err
