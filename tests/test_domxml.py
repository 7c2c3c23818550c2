"""The safe domain-XML layer: parsing hostile input, reading and replacing channels."""

from __future__ import annotations

import pytest
from lxml import etree

from xen_channel_backend import domxml
from xen_channel_backend.errors import InvalidChannelName, UnsupportedChannel, XmlInputError
from xen_channel_backend.model import Channel, Connection, Target

SCHEMA = "/usr/share/libvirt/schemas/domain.rng"

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
