"""The safe domain-XML layer: parsing hostile input, reading and replacing channels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

from xen_channel_backend import channelxml, domxml
from xen_channel_backend.errors import InvalidChannelName, UnsupportedChannel, XmlInputError
from xen_channel_backend.model import Channel, Connection, Target
from xen_channel_backend.translate import FIELDS, XML_FIELDS

SCHEMA = "/usr/share/libvirt/schemas/domain.rng"
ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).parent / "data"

DOMAIN = b"""<domain type='xen'>
  <name>guest</name>
  <uuid>45B60F51-88A9-47A8-A3B3-5E66D71B2283</uuid>
  <memory unit='KiB'>524288</memory>
  <os>
    <type arch='x86_64' machine='xenpv'>linux</type>
  </os>
  <devices>
    <console type='pty'>
      <target type='xen' port='0'/>
    </console>
    <channel type='unix'>
      <source mode='bind' path='/run/a.sock'/>
      <target type='xen' name='org.example.a.0'/>
    </channel>
    <channel type='unix'>
      <source mode='bind' path='/run/v.sock'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <channel type='pipe'>
      <source path='/tmp/guestfwd'/>
      <target type='guestfwd' address='10.0.2.1' port='4600'/>
    </channel>
    <channel type='pty'>
      <target type='xen' name='org.example.b.0'/>
    </channel>
    <input type='mouse' bus='xen'/>
    <foreign:thing xmlns:foreign='urn:example:foreign'/>
  </devices>
</domain>
"""


def test_reads_xen_channels_in_document_order_and_ignores_other_targets() -> None:
    root = domxml.parse_domain(DOMAIN, "d.xml").getroot()
    channels = [c for _el, c in domxml.iter_channels(root)]
    assert channels == [
        Channel("org.example.a.0", Connection.SOCKET, "/run/a.sock"),
        Channel("org.example.b.0", Connection.PTY),
    ]
    virtio = [c for _el, c in domxml.iter_channels(root, (Target.VIRTIO,))]
    assert virtio == [
        Channel("org.qemu.guest_agent.0", Connection.SOCKET, "/run/v.sock", target=Target.VIRTIO)
    ]
    assert domxml.domain_uuid(root) == "45b60f51-88a9-47a8-a3b3-5e66d71b2283"
    assert domxml.domain_name(root) == "guest"


def test_a_guestfwd_pipe_channel_is_unsupported_when_asked_for() -> None:
    root = domxml.parse_domain(DOMAIN, "d.xml").getroot()
    with pytest.raises(UnsupportedChannel, match="'pipe' has no Xen equivalent"):
        list(domxml.iter_channels(root, (Target.GUESTFWD,)))


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"<domain><name>x</name>", "malformed XML"),
        (b"", "malformed XML"),
        (b"<!DOCTYPE domain [<!ENTITY e 'x'>]><domain>&e;</domain>", "DOCTYPE"),
        (b"<!DOCTYPE domain SYSTEM 'http://example.invalid/x.dtd'><domain/>", "DOCTYPE"),
        (b"<network/>", "expected <domain>"),
        (b"<domain>" + b" " * (10 * 1024 * 1024) + b"</domain>", "10 MiB"),
    ],
)
def test_hostile_or_malformed_documents_are_refused_with_one_line(data: bytes, detail: str) -> None:
    with pytest.raises(XmlInputError) as info:
        domxml.parse_domain(data, "evil.xml")
    assert detail in str(info.value)
    assert str(info.value).startswith("evil.xml")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32"])
def test_a_doctype_hidden_by_another_encoding_is_refused(codec: str) -> None:
    encoding = {"utf-16": "UTF-16", "utf-16-be": "UTF-16BE", "utf-32": "UTF-32"}[codec]
    doc = (
        f'<?xml version="1.0" encoding="{encoding}"?>'
        '<!DOCTYPE domain [<!ENTITY e "org.evil.0">]><domain><devices>'
        '<channel type="pty"><target type="xen" name="&e;"/></channel></devices></domain>'
    )
    data = doc.encode(codec)
    assert b"<!DOCTYPE" not in data  # the cheap byte check cannot see it
    with pytest.raises(XmlInputError, match="DOCTYPE"):
        domxml.parse_domain(data, "u16.xml")


def test_hostile_channel_names_in_xml_are_refused() -> None:
    data = DOMAIN.replace(b"org.example.b.0", b"../../etc/evil")
    root = domxml.parse_domain(data, "d.xml").getroot()
    with pytest.raises(InvalidChannelName):
        list(domxml.iter_channels(root))


def test_replace_keeps_everything_else_and_puts_channels_in_libvirt_order() -> None:
    tree = domxml.parse_domain(DOMAIN, "d.xml")
    root = tree.getroot()
    new = [Channel("org.example.c.0", Connection.SOCKET, "/run/c.sock")]
    domxml.replace_channels(root, new)
    devices = root.find("devices")
    assert devices is not None
    tags = [(child.tag, domxml.target_type(child)) for child in devices]
    assert tags == [
        ("console", "xen"),
        ("channel", "xen"),
        ("channel", "virtio"),
        ("channel", "guestfwd"),
        ("input", None),
        ("{urn:example:foreign}thing", None),
    ]
    assert [c for _e, c in domxml.iter_channels(root)] == new
    text = domxml.serialize(tree)
    assert "    <channel type=\"unix\">\n      <source mode=\"bind\" path=\"/run/c.sock\"/>" in text


def test_channels_go_after_consoles_when_there_were_none() -> None:
    data = b"<domain type='xen'><name>n</name><devices><input type='mouse' bus='xen'/>" \
           b"<console type='pty'/><memballoon model='xen'/></devices></domain>"
    root = domxml.parse_domain(data, "d.xml").getroot()
    domxml.replace_channels(root, [Channel("a.b", Connection.PTY)])
    assert [c.tag for c in root.find("devices")] == ["input", "console", "channel", "memballoon"]  # type: ignore[union-attr]


def test_a_domain_without_devices_gets_them() -> None:
    root = domxml.parse_domain(b"<domain type='xen'><name>n</name></domain>", "d.xml").getroot()
    domxml.replace_channels(root, [Channel("a.b", Connection.PTY)])
    assert [c for _e, c in domxml.iter_channels(root)] == [Channel("a.b", Connection.PTY)]


def test_set_source_path_adds_a_bind_source() -> None:
    root = domxml.parse_domain(
        b"<domain><devices><channel type='unix'><target type='xen' name='a.b'/></channel>"
        b"</devices></domain>", "d.xml").getroot()
    element = domxml.channel_elements(root)[0]
    domxml.set_source_path(element, "/run/xen-channel/x/a.b")
    assert domxml.channel_from_element(element).path == "/run/xen-channel/x/a.b"
    assert element[0].tag == "source" and element[0].get("mode") == "bind"


def test_written_channels_validate_against_libvirts_schema() -> None:
    schema = etree.RelaxNG(etree.parse(SCHEMA))
    tree = domxml.parse_domain(DOMAIN, "d.xml")
    domxml.replace_channels(tree.getroot(), [
        Channel("org.example.c.0", Connection.SOCKET, "/run/c.sock"),
        Channel("org.example.d.0", Connection.PTY),
    ])
    # The foreign element is ours to keep but not libvirt's to accept.
    devices = tree.getroot().find("devices")
    assert devices is not None
    devices.remove(devices[-1])
    assert schema.validate(tree), schema.error_log


def test_a_channel_without_a_type_says_so() -> None:
    root = domxml.parse_domain(
        b"<domain><devices><channel><target type='xen' name='a.b'/></channel></devices></domain>",
        "d.xml").getroot()
    with pytest.raises(UnsupportedChannel, match="without a type"):
        list(domxml.iter_channels(root))


# --- the table drives reading and writing (translate.FIELDS, channelxml) -------------

ALL_KINDS = [
    Channel("org.example.a.0", Connection.SOCKET, "/run/xen-channel/u/org.example.a.0"),
    Channel("org.example.b.0", Connection.SOCKET),
    Channel("org.example.c.0", Connection.PTY),
    Channel("org.example.d.0", Connection.PTY, "/dev/pts/3"),
    Channel("v.0", Connection.SOCKET, "/run/v=1,x", target=Target.VIRTIO),
    Channel(None, Connection.PTY, target=Target.VIRTIO),
    Channel(None, Connection.SOCKET, "/run/g", target=Target.GUESTFWD),
]


@pytest.mark.parametrize("channel", ALL_KINDS, ids=lambda c: f"{c.connection}-{c.target}")
def test_every_written_field_is_read_back_from_where_the_table_puts_it(channel: Channel) -> None:
    element = domxml.channel_element(channel)
    values = domxml.channel_values(element)
    assert set(values) == set(channelxml.KEYS)
    for field in XML_FIELDS:
        assert field.xml is not None
        tag, attribute = field.xml
        node = element if tag == "." else element.find(tag)
        assert values[field.attr] == (node.get(attribute) if node is not None else None)
    assert domxml.channel_from_element(element) == channel
    # mode is XML only (libvirt requires it on a unix source): bind, QEMU listens.
    expected_mode = "bind" if channel.connection is Connection.SOCKET and channel.path else None
    assert values["mode"] == expected_mode


def test_mode_is_in_the_table_and_only_xml_has_it() -> None:
    mode = next(f for f in FIELDS if f.attr == "mode")
    assert mode.xml == ("source", "mode") and mode.xl_key is None
    assert mode.xml_connections == frozenset({Connection.SOCKET})


def test_written_attributes_follow_libvirts_order() -> None:
    element = domxml.channel_element(ALL_KINDS[0])
    assert etree.tostring(element, encoding="unicode") == (
        '<channel type="unix"><source mode="bind" path="/run/xen-channel/u/org.example.a.0"/>'
        '<target type="xen" name="org.example.a.0"/></channel>'
    )


def test_the_first_source_and_target_count_and_comments_are_skipped() -> None:
    element = etree.fromstring(
        "<channel type='unix'><!-- c --><alias name='x'/><source mode='connect' path='/a'/>"
        "<source path='/b'/><target type='xen' name='a.b'/><target type='virtio'/></channel>"
    )
    values = domxml.channel_values(element)
    assert (values["mode"], values["path"], values["target"], values["name"]) == (
        "connect", "/a", "xen", "a.b"
    )
    assert channelxml.connects(values)


def test_set_source_path_keeps_an_existing_mode() -> None:
    element = etree.fromstring(
        "<channel type='unix'><source mode='connect'/><target type='xen' name='a.b'/></channel>"
    )
    domxml.set_source_path(element, "/run/x")
    assert etree.tostring(element[0]) == b'<source mode="connect" path="/run/x"/>'


@pytest.mark.parametrize(
    "document",
    sorted(p for p in DATA.rglob("*.xml") if b"<domain" in p.read_bytes()),
    ids=lambda p: p.name,
)
def test_lean_expat_reader_agrees_with_lxml(document: Path) -> None:
    data = document.read_bytes()
    root = domxml.parse_domain(data, str(document)).getroot()
    for targets in ([Target.XEN], [Target.VIRTIO, Target.XEN]):
        for skip_connect in (False, True):
            expected = []
            for element in domxml.channel_elements(root):
                values = domxml.channel_values(element)
                if values["connection"] not in ("unix", "pty"):
                    continue
                if values["target"] not in {t.value for t in targets}:
                    continue
                if skip_connect and values["connection"] == "unix" and channelxml.connects(values):
                    continue
                expected.append(domxml.channel_from_element(element))
            scanned = channelxml.scan_domain(data, targets, skip_connect_mode=skip_connect)
            assert list(scanned.channels) == expected
            assert (scanned.name, scanned.uuid) == (
                domxml.domain_name(root), (root.findtext("uuid") or "").strip() or None
            )


def test_lean_reader_imports_neither_lxml_nor_typing_nor_dataclasses() -> None:
    probe = (
        "import sys; import xen_channel_backend.channelxml; "
        "print(sorted(m for m in ('lxml', 'typing', 'dataclasses', 'xml.parsers.expat') "
        "if m in sys.modules))"
    )
    # -I -S: as the hooks' shim runs Python, with the package put on the path by hand.
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); {probe}"
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_lean_reader_refuses_what_domxml_refuses() -> None:
    utf16 = (
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE domain [<!ENTITY e "a.b">]>'
        "<domain><devices><channel type='pty'><target type='xen' name='&e;'/></channel>"
        "</devices></domain>"
    ).encode("utf-16")
    for data in (utf16, b"<other/>", b"<domain>"):
        with pytest.raises(XmlInputError):
            channelxml.scan_domain(data, [Target.XEN])
        with pytest.raises(XmlInputError):
            domxml.parse_domain(data, "d.xml")


# --- libvirt's element order: one insert_in_libvirt_order ------------------------------


@pytest.mark.parametrize(
    ("children", "tag", "index"),
    [
        (["emulator", "disk", "console", "input", "graphics"], "channel", 3),
        (["disk", "channel", "channel", "input"], "channel", 3),
        (["input", "video"], "channel", 0),
        (["serial", "parallel"], "channel", 2),
    ],
)
def test_insert_in_libvirt_order_among_devices(children: list[str], tag: str, index: int) -> None:
    devices = etree.Element("devices")
    for child in children:
        etree.SubElement(devices, child)
    new = etree.Element(tag)
    domxml.insert_in_libvirt_order(devices, new)
    assert devices.index(new) == index


@pytest.mark.parametrize(
    ("children", "tag", "index"),
    [
        (["name", "uuid", "title", "description", "memory"], "metadata", 4),
        (["name", "memory"], "metadata", 1),
        (["memory"], "metadata", 0),
        (["name", "title", "memory"], "uuid", 1),
        (["memory", "name"], "uuid", 2),
        (["memory", "devices"], "uuid", 0),
    ],
)
def test_insert_in_libvirt_order_in_a_domain(children: list[str], tag: str, index: int) -> None:
    domain = etree.Element("domain")
    for child in children:
        etree.SubElement(domain, child)
    new = etree.Element(tag)
    domxml.insert_in_libvirt_order(domain, new)
    assert domain.index(new) == index


def test_insert_in_libvirt_order_indents_like_libvirt() -> None:
    root = domxml.parse_domain(
        b"<domain>\n  <name>n</name>\n  <memory>1</memory>\n</domain>\n", "d.xml"
    ).getroot()
    uuid = etree.Element("uuid")
    uuid.text = "u"
    domxml.insert_in_libvirt_order(root, uuid)
    assert etree.tostring(root, encoding="unicode") == (
        "<domain>\n  <name>n</name>\n  <uuid>u</uuid>\n  <memory>1</memory>\n</domain>"
    )


def test_a_read_only_parse_reads_the_same_channels_and_checks_the_same() -> None:
    editable = domxml.parse_domain(DOMAIN, "d.xml").getroot()
    read_only = domxml.parse_domain(DOMAIN, "d.xml", read_only=True).getroot()
    assert [domxml.channel_values(e) for e in domxml.channel_elements(read_only)] == [
        domxml.channel_values(e) for e in domxml.channel_elements(editable)
    ]
    with pytest.raises(XmlInputError, match="DOCTYPE"):
        domxml.parse_domain(b"<!DOCTYPE domain><domain/>", "d.xml", read_only=True)
