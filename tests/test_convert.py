"""``xen-channel convert`` through main(): goldens, warnings, --into edits, hostile input."""

from __future__ import annotations

from pathlib import Path

import pytest
from convert_cases import (
    EXAMPLES,
    LIBVIRT_PAIRS,
    convert,
    example_names,
    pair_names,
    retarget_flags,
)
from golden import canonical_xml, check_golden
from lxml import etree

# --- libvirt's own golden pairs (tests/data/libvirt-xlconfigdata) ---------------------


def channel_line(cfg: Path) -> str:
    lines = [
        line for line in cfg.read_text().splitlines(keepends=True) if line.startswith("channel")
    ]
    assert len(lines) == 1
    return lines[0]


@pytest.mark.parametrize("pair", pair_names())
def test_libvirt_pair_xml_to_xl_is_byte_exact(pair: str) -> None:
    result = convert("--to", "xl", LIBVIRT_PAIRS / f"{pair}.xml")
    assert (result.code, result.err) == (0, "")
    assert result.out == channel_line(LIBVIRT_PAIRS / f"{pair}.cfg")


@pytest.mark.parametrize("pair", pair_names())
def test_libvirt_pair_xl_to_xml_channels_are_canonically_equal(pair: str) -> None:
    result = convert("--to", "libvirt", LIBVIRT_PAIRS / f"{pair}.cfg")
    assert (result.code, result.err) == (0, "")
    ours = etree.fromstring(result.out.encode())
    theirs = etree.parse(str(LIBVIRT_PAIRS / f"{pair}.xml")).getroot().findall("devices/channel")
    assert [canonical_xml(etree.tostring(c)) for c in ours] == [
        canonical_xml(etree.tostring(c)) for c in theirs
    ]


@pytest.mark.parametrize("pair", pair_names())
def test_libvirt_pair_channels_land_in_libvirts_device_slot(pair: str, tmp_path: Path) -> None:
    # Remove the channel from libvirt's XML, put it back from the .cfg: the
    # whole document must come out as libvirt wrote it.
    tree = etree.parse(str(LIBVIRT_PAIRS / f"{pair}.xml"))
    for channel in tree.getroot().findall("devices/channel"):
        channel.getparent().remove(channel)  # type: ignore[union-attr]
    stripped = tmp_path / "stripped.xml"
    tree.write(str(stripped))
    result = convert("--to", "libvirt", LIBVIRT_PAIRS / f"{pair}.cfg", "--into", stripped)
    assert result.code == 0, result.err
    assert canonical_xml(result.out) == canonical_xml((LIBVIRT_PAIRS / f"{pair}.xml").read_bytes())


@pytest.mark.parametrize("pair", pair_names())
def test_libvirt_pair_xl_into_its_own_cfg_changes_nothing(pair: str, tmp_path: Path) -> None:
    cfg = LIBVIRT_PAIRS / f"{pair}.cfg"
    result = convert("--to", "xl", LIBVIRT_PAIRS / f"{pair}.xml", "--into", cfg)
    assert result.code == 0, result.err
    assert result.out == cfg.read_text()
    # Without a channel setting, the line is appended where libvirt put it (last).
    bare = tmp_path / "bare.cfg"
    bare.write_text(cfg.read_text().replace(channel_line(cfg), ""))
    result = convert("--to", "xl", LIBVIRT_PAIRS / f"{pair}.xml", "--into", bare)
    assert result.out == cfg.read_text()


# --- our examples (xml/examples), against goldens in tests/data/golden ---------------


@pytest.mark.parametrize("example", example_names())
def test_example_to_xl_matches_golden(example: str) -> None:
    result = convert("--to", "xl", *retarget_flags(example), EXAMPLES / f"{example}.xml")
    assert result.code == 0, result.err
    check_golden(f"{example}.to-xl.cfg", result.out)


@pytest.mark.parametrize("example", example_names())
def test_example_to_xl_into_its_cfg_matches_golden(example: str) -> None:
    flags = retarget_flags(example)
    result = convert(
        "--to", "xl", *flags, EXAMPLES / f"{example}.xml", "--into", EXAMPLES / f"{example}.cfg"
    )
    assert result.code == 0, result.err
    check_golden(f"{example}.into.cfg", result.out)


@pytest.mark.parametrize("example", example_names())
def test_example_to_libvirt_matches_golden(example: str) -> None:
    result = convert("--to", "libvirt", EXAMPLES / f"{example}.cfg")
    assert result.code == 0, result.err
    check_golden(f"{example}.to-libvirt.xml", result.out, xml=True)


@pytest.mark.parametrize("example", example_names())
def test_example_to_libvirt_into_its_xml_matches_golden(example: str) -> None:
    result = convert(
        "--to", "libvirt", EXAMPLES / f"{example}.cfg", "--into", EXAMPLES / f"{example}.xml"
    )
    assert result.code == 0, result.err
    check_golden(f"{example}.into.xml", result.out, xml=True)


def test_examples_are_equivalent_both_ways() -> None:
    # Each example's .cfg and .xml describe the same Xen channels.
    for example in example_names():
        to_xl = convert("--to", "xl", *retarget_flags(example), EXAMPLES / f"{example}.xml")
        round_trip = convert(
            "--to",
            "xl",
            "-",
            stdin=convert(
                "--to",
                "libvirt",
                EXAMPLES / f"{example}.cfg",
                "--into",
                EXAMPLES / f"{example}.xml",
            ).out,
        )
        if example.startswith("kvm-"):
            continue  # the KVM domain has virtio channels; the .cfg is its retargeted form
        assert round_trip.out == to_xl.out, example


# --- behaviour -------------------------------------------------------------------


DOMAIN = """<domain type='xen'>
  <name>g</name>
  <memory>65536</memory>
  <os><type>linux</type></os>
  <devices>
    <console type='pty'><target type='xen' port='0'/></console>
{channels}
    <input type='mouse' bus='xen'/>
  </devices>
</domain>
"""

UNIX = (
    "<channel type='unix'><source mode='bind' path='{path}'/>"
    "<target type='{target}' name='{name}'/></channel>"
)
PTY = "<channel type='pty'><target type='{target}' name='{name}'/></channel>"


def domain(*channels: str) -> str:
    return DOMAIN.format(channels="\n".join(f"    {c}" for c in channels))


def test_no_xen_channels_prints_nothing() -> None:
    result = convert("--to", "xl", "-", stdin=domain())
    assert (result.code, result.out, result.err) == (0, "", "")


def test_virtio_and_guestfwd_are_skipped_with_a_warning_naming_each() -> None:
    xml = domain(
        UNIX.format(path="/run/a", target="virtio", name="org.qemu.guest_agent.0"),
        "<channel type='pipe'><source path='/tmp/p'/>"
        "<target type='guestfwd' address='10.0.2.1' port='4600'/></channel>",
        PTY.format(target="xen", name="org.example.a"),
    )
    result = convert("--to", "xl", "-", stdin=xml)
    assert result.code == 0
    assert result.out == 'channel = [ "connection=pty,name=org.example.a" ]\n'
    assert len(result.warnings) == 2
    assert "virtio channel 'org.qemu.guest_agent.0'" in result.warnings[0]
    assert "--retarget-virtio" in result.warnings[0]
    assert "guestfwd channel to '10.0.2.1' port 4600" in result.warnings[1]


def test_retarget_virtio_turns_unix_and_pty_virtio_channels_into_xen_ones() -> None:
    xml = domain(
        UNIX.format(path="/run/a", target="virtio", name="org.qemu.guest_agent.0"),
        PTY.format(target="virtio", name="org.example.b"),
        "<channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>",
    )
    result = convert("--to", "xl", "--retarget-virtio", "-", stdin=xml)
    assert result.code == 0
    assert result.out == (
        'channel = [ "connection=socket,path=/run/a,name=org.qemu.guest_agent.0", '
        '"connection=pty,name=org.example.b" ]\n'
    )
    assert len(result.warnings) == 1 and "'com.redhat.spice.0'" in result.warnings[0]


@pytest.mark.parametrize("source", ["tcp", "udp", "file", "pipe"])
def test_a_xen_channel_with_another_source_type_is_an_error_naming_it(source: str) -> None:
    xml = domain(f"<channel type='{source}'><target type='xen' name='org.example.bad'/></channel>")
    result = convert("--to", "xl", "-", stdin=xml)
    assert result.code == 1 and result.out == ""
    assert (
        result.err.count("\n") == 1 and "'org.example.bad'" in result.err and source in result.err
    )


def test_a_unix_xen_channel_without_a_path_is_an_error() -> None:
    xml = domain("<channel type='unix'><target type='xen' name='org.example.a'/></channel>")
    result = convert("--to", "xl", "-", stdin=xml)
    assert result.code == 1 and "'org.example.a'" in result.err and "path" in result.err


def test_a_live_pty_path_is_not_written_to_xl() -> None:
    xml = domain(
        "<channel type='pty'><source path='/dev/pts/3'/><target type='xen' name='a.b'/></channel>"
    )
    assert convert("--to", "xl", "-", stdin=xml).out == 'channel = [ "connection=pty,name=a.b" ]\n'


def test_to_libvirt_prints_a_devices_element_in_spec_order() -> None:
    cfg = 'channel = [ "connection = pty, name = b.b", "path=/run/s,connection=socket,name=a.a" ]\n'
    result = convert("--to", "libvirt", "-", stdin=cfg)
    assert (result.code, result.err) == (0, "")
    assert canonical_xml(result.out) == canonical_xml(
        "<devices><channel type='pty'><target type='xen' name='b.b'/></channel>"
        "<channel type='unix'><source mode='bind' path='/run/s'/>"
        "<target type='xen' name='a.a'/></channel></devices>"
    )


def test_to_libvirt_with_no_channels_prints_an_empty_devices_element() -> None:
    result = convert("--to", "libvirt", "-", stdin='name = "x"\n')
    assert result.code == 0 and canonical_xml(result.out) == "<devices></devices>"


def test_xl_warnings_are_passed_on_naming_the_key() -> None:
    cfg = 'channel = [ "connection=pty,name=a.b,foo=bar,path=/x" ]\n'
    result = convert("--to", "libvirt", "-", stdin=cfg)
    assert result.code == 0 and len(result.warnings) == 2
    assert "'foo'" in result.warnings[0] and "path=" in result.warnings[1]


def test_backend_warns_for_libvirt_and_survives_an_xl_to_xl_edit(tmp_path: Path) -> None:
    cfg = tmp_path / "g.cfg"
    cfg.write_text('name = "g"\nchannel = [ "connection=pty,name=a.b,backend=dom1" ]\n')
    to_xml = convert("--to", "libvirt", cfg, "--into", "-", stdin=domain())
    assert to_xml.code == 0
    assert len(to_xml.warnings) == 1 and "backend='dom1'" in to_xml.warnings[0]
    back = convert("--to", "xl", "-", "--into", cfg, stdin=to_xml.out)
    assert back.out == 'name = "g"\nchannel = [ "connection=pty,name=a.b,backend=dom1" ]\n'


def test_into_replaces_every_channel_setting_at_the_first_and_keeps_all_else(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "g.cfg"
    cfg.write_text(
        "# header comment\n"
        'name = "g" # trailing comment\n'
        "channel = [\n"
        '    "connection=pty,name=old.a",   # inside the list\n'
        "]\n"
        "memory = 512; channel += [ 'connection=pty,name=old.b' ]\n"
        "\n"
        "  channel += [ 'connection=pty,name=old.c' ]\n"
        "vcpus = 2\n"
    )
    xml = domain(PTY.format(target="xen", name="new.a"))
    result = convert("--to", "xl", "-", "--into", cfg, stdin=xml)
    assert result.code == 0, result.err
    assert result.out == (
        "# header comment\n"
        'name = "g" # trailing comment\n'
        'channel = [ "connection=pty,name=new.a" ]\n'
        "memory = 512; \n"
        "\n"
        "vcpus = 2\n"
    )


def test_into_with_no_channels_removes_the_settings(tmp_path: Path) -> None:
    cfg = tmp_path / "g.cfg"
    cfg.write_text('name = "g"\nchannel = [ "connection=pty,name=a.b" ]\nvcpus = 1')
    result = convert("--to", "xl", "-", "--into", cfg, stdin=domain())
    assert result.out == 'name = "g"\nvcpus = 1'


def test_into_appends_after_a_file_without_final_newline(tmp_path: Path) -> None:
    cfg = tmp_path / "g.cfg"
    cfg.write_text('name = "g"')
    result = convert(
        "--to", "xl", "-", "--into", cfg, stdin=domain(PTY.format(target="xen", name="a"))
    )
    assert result.out == 'name = "g"\nchannel = [ "connection=pty,name=a" ]\n'


def test_output_file_is_written(tmp_path: Path) -> None:
    out = tmp_path / "out.cfg"
    result = convert("--to", "xl", "-", "-o", out, stdin=domain(PTY.format(target="xen", name="a")))
    assert (result.code, result.out) == (0, "")
    assert out.read_text() == 'channel = [ "connection=pty,name=a" ]\n'


def test_stdin_twice_is_a_usage_error() -> None:
    result = convert("--to", "xl", "-", "--into", "-")
    assert result.code == 2 and "stdin" in result.err


def test_missing_to_is_a_usage_error() -> None:
    result = convert("x.xml")
    assert result.code == 2 and result.err.startswith("xen-channel: error: ")


# --- hostile input: one line on stderr, exit 1, no traceback, no output file ----------


def _huge_domain() -> str:
    return domain() + "<!--" + "x" * (11 * 1024 * 1024) + "-->"


HOSTILE_XML = {
    "malformed": "<domain><name>g</name>",
    "doctype-entities": (
        '<?xml version="1.0"?><!DOCTYPE domain [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><domain>&b;</domain>'
    ),
    "huge": "HUGE",
    "dotdot-name": domain(PTY.format(target="xen", name="../../etc/evil")),
    "comma-name": domain(PTY.format(target="xen", name="a,b")),
    "equals-path": domain(UNIX.format(path="/run/a=b", target="xen", name="a.b")),
    "200-byte-path": domain(UNIX.format(path="/" + "p" * 199, target="xen", name="a.b")),
    "not-a-domain": "<network/>",
    "binary": "\x00\x01\x02garbage",
}

UNPARSEABLE_XML = {"malformed", "doctype-entities", "huge", "not-a-domain", "binary"}

HOSTILE_CFG = {
    "unbalanced-double-quote": 'channel = [ "connection=pty,name=a.b ]\n',
    "unbalanced-single-quote": "name = 'g\n",
    "unbalanced-bracket": 'channel = [ "connection=pty,name=a.b"\n',
    "dotdot-name": 'channel = [ "connection=pty,name=../../etc/evil" ]\n',
    "comma-name": 'channel = [ "connection=pty,name=a\\,b" ]\n',
    "equals-path": 'channel = [ "connection=socket,name=a.b,path=/run/a=b" ]\n',
    "200-byte-path": 'channel = [ "connection=socket,name=a.b,path=/' + "p" * 199 + '" ]\n',
    "hex-escape": 'channel = [ "connection=pty,name=a\\x41" ]\n',
    "crlf": 'name = "g"\r\n',
    "python": "import os\n",
    "empty-spec": 'channel = [ "" ]\n',
    "nested": 'channel = [ [ "connection=pty,name=a" ] ]\n',
    "deeply-nested": "x = " + "[" * 100_000 + "\n",
    "huge-identifier": "a" * 1_000_000 + "\n",
    "not-utf8": "name = '\udcff'\n",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_XML))
def test_hostile_xml_gets_one_line_and_exit_1(case: str, tmp_path: Path) -> None:
    text = _huge_domain() if HOSTILE_XML[case] == "HUGE" else HOSTILE_XML[case]
    source = tmp_path / "in.xml"
    source.write_bytes(text.encode("utf-8", "surrogateescape"))
    out = tmp_path / "out.cfg"
    result = convert("--to", "xl", source, "-o", out)
    assert result.code == 1 and result.out == ""
    assert result.err.startswith("xen-channel: error: ") and result.err.count("\n") == 1, result.err
    assert "Traceback" not in result.err and len(result.err) < 400
    assert not out.exists()
    if case in UNPARSEABLE_XML:
        # The same through --into: the domain we would edit is unreadable.
        # (Bad Xen channels in it are fine there: they are being replaced.)
        result = convert("--to", "libvirt", "-", "--into", source, "-o", out, stdin='name = "g"\n')
        assert result.code == 1 and result.err.count("\n") == 1 and not out.exists()


@pytest.mark.parametrize("case", sorted(HOSTILE_CFG))
def test_hostile_xl_cfg_gets_one_line_and_exit_1(case: str, tmp_path: Path) -> None:
    source = tmp_path / "in.cfg"
    source.write_bytes(HOSTILE_CFG[case].encode("utf-8", "surrogateescape"))
    out = tmp_path / "out.xml"
    result = convert("--to", "libvirt", source, "-o", out)
    assert result.code == 1 and result.out == ""
    assert result.err.startswith("xen-channel: error: ") and result.err.count("\n") == 1, result.err
    assert str(source) in result.err and "Traceback" not in result.err and len(result.err) < 400
    assert not out.exists()


def test_an_existing_output_file_is_untouched_on_error(tmp_path: Path) -> None:
    out = tmp_path / "out.cfg"
    out.write_text("precious\n")
    result = convert("--to", "xl", "-", "-o", out, stdin="<domain")
    assert result.code == 1 and out.read_text() == "precious\n"
