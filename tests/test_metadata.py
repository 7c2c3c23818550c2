"""metadata.py: our <xcb:channels> element, against its RelaxNG schema and real libvirt.

Everything we write is validated against xml/metadata.rng (and whole domains
against libvirt's own domain.rng); the libvirt round trips use the real
test:///default driver through libvirt-python.
"""

from __future__ import annotations

import pathlib
import uuid as uuidlib
from collections.abc import Iterator

import libvirt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from xen_channel_backend import metadata
from xen_channel_backend.domxml import parse_domain, serialize
from xen_channel_backend.errors import InvalidMetadata, XenChannelError
from xen_channel_backend.metadata import NAMESPACE, PREFIX
from xen_channel_backend.model import Channel, Connection, Target

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "xml" / "metadata.rng"
LIBVIRT_DOMAIN_RNG = pathlib.Path("/usr/share/libvirt/schemas/domain.rng")

CHANNELS = (
    Channel("org.qemu.guest_agent.0", Connection.SOCKET,
            "/run/xen-channel/6695eb01-f6a4-8304-79aa-97f2502e193f/org.qemu.guest_agent.0"),
    Channel("org.example.console", Connection.PTY),
    Channel("org.example.virtio", Connection.SOCKET, "/run/xen-channel/x/v", target=Target.VIRTIO),
    Channel(None, Connection.PTY, "/dev/pts/4", target=Target.VIRTIO),
)

FOREIGN = (
    '<app:settings xmlns:app="http://example.org/app/1" level="3">'
    "<app:note>keep &amp; me</app:note></app:settings>"
)


@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(SCHEMA)))


def assert_valid(schema: etree.RelaxNG, element: etree._Element) -> None:
    assert schema.validate(element), f"{schema.error_log}\n{etree.tostring(element).decode()}"


def domain_xml(name: str, *, metadata_block: str = "", description: bool = True) -> bytes:
    desc = "  <title>t</title>\n  <description>d</description>\n" if description else ""
    return (
        f"<domain type='test'>\n  <name>{name}</name>\n  <uuid>{uuidlib.uuid4()}</uuid>\n"
        f"{desc}{metadata_block}  <memory unit='KiB'>65536</memory>\n"
        "  <os>\n    <type arch='x86_64'>hvm</type>\n  </os>\n  <devices/>\n</domain>\n"
    ).encode()


def our_element(root: etree._Element) -> etree._Element:
    found = root.findall(f"metadata/{{{NAMESPACE}}}channels")
    assert len(found) == 1
    return found[0]


# --- what we write ----------------------------------------------------------------


@pytest.mark.parametrize("state", [None, *metadata.STATES])
def test_metadata_element_validates_and_reads_back(
    schema: etree.RelaxNG, state: str | None
) -> None:
    element = metadata.metadata_element(CHANNELS, state)
    assert_valid(schema, element)
    assert element.prefix == PREFIX
    parsed = metadata.parse_metadata(etree.tostring(element))
    assert parsed == metadata.Metadata(CHANNELS, state)


def test_empty_channel_list_validates(schema: etree.RelaxNG) -> None:
    assert_valid(schema, metadata.metadata_element([]))
    assert metadata.parse_metadata(metadata.metadata_xml([])).channels == ()


def test_metadata_xml_has_no_namespace_because_libvirt_injects_it() -> None:
    text = metadata.metadata_xml(CHANNELS[:1], "running")
    assert text.startswith('<channels state="running"><channel name="org.qemu.guest_agent.0" ')
    assert "xmlns" not in text


def test_unknown_state_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        metadata.metadata_element(CHANNELS, "exploded")


names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", fullmatch=True)
paths = st.from_regex(r"/[A-Za-z0-9._ /+:@-]{0,90}", fullmatch=True).filter(
    lambda p: ".." not in p.split("/") and p == p.strip()
)


@st.composite
def channel_lists(draw: st.DrawFn) -> list[Channel]:
    chosen = draw(st.lists(names, unique=True, max_size=8))
    return [
        Channel(name, draw(st.sampled_from(list(Connection))), draw(st.none() | paths),
                target=draw(st.sampled_from(list(Target))))
        for name in chosen
    ]


@settings(max_examples=80, deadline=None)
@given(channels=channel_lists(), state=st.none() | st.sampled_from(metadata.STATES))
def test_any_channel_list_validates_and_round_trips(
    schema: etree.RelaxNG, channels: list[Channel], state: str | None
) -> None:
    element = metadata.metadata_element(channels, state)
    assert_valid(schema, element)
    assert metadata.parse_metadata(metadata.metadata_xml(channels, state)) == metadata.Metadata(
        tuple(channels), state
    )


# --- editing a domain tree ----------------------------------------------------------


def test_set_domain_metadata_creates_metadata_in_libvirt_order(schema: etree.RelaxNG) -> None:
    tree = parse_domain(domain_xml("order"), "order.xml")
    root = tree.getroot()
    assert metadata.set_domain_metadata(root, CHANNELS) is None
    tags = [c.tag for c in root]
    assert tags[:6] == ["name", "uuid", "title", "description", "metadata", "memory"]
    assert_valid(schema, our_element(root))
    assert metadata.read_domain_metadata(root) == list(CHANNELS)
    text = serialize(tree)
    assert "\n  <metadata>\n    <xcb:channels xmlns:xcb=" in text
    assert "\n      <xcb:channel name=\"org.example.console\"" in text
    assert "\n    </xcb:channels>\n  </metadata>\n  <memory" in text


def test_set_domain_metadata_without_title_goes_after_uuid() -> None:
    root = parse_domain(domain_xml("plain", description=False), "plain.xml").getroot()
    metadata.set_domain_metadata(root, CHANNELS[:1])
    assert [c.tag for c in root][:4] == ["name", "uuid", "metadata", "memory"]


def test_set_domain_metadata_is_idempotent() -> None:
    tree = parse_domain(domain_xml("twice"), "twice.xml")
    metadata.set_domain_metadata(tree.getroot(), CHANNELS)
    once = serialize(tree)
    metadata.set_domain_metadata(tree.getroot(), CHANNELS)
    assert serialize(tree) == once


def test_foreign_namespaces_are_untouched(schema: etree.RelaxNG) -> None:
    block = f"  <metadata>\n    {FOREIGN}\n    <other xmlns='urn:x:2'>text</other>\n  </metadata>\n"
    tree = parse_domain(domain_xml("foreign", metadata_block=block), "foreign.xml")
    root = tree.getroot()
    before = [etree.tostring(c, method="c14n") for c in root.find("metadata")]  # type: ignore[union-attr]
    metadata.set_domain_metadata(root, CHANNELS)
    metadata.set_domain_metadata(root, CHANNELS[:2], "running")
    children = list(root.find("metadata"))  # type: ignore[arg-type]
    assert [etree.tostring(c, method="c14n") for c in children[:2]] == before
    assert len(children) == 3
    assert_valid(schema, children[2])
    assert metadata.find_domain_metadata(root) == metadata.Metadata(CHANNELS[:2], "running")


@pytest.mark.skipif(not LIBVIRT_DOMAIN_RNG.exists(), reason="libvirt's schemas are not installed: "
                    "apt-get install libvirt-daemon (provides /usr/share/libvirt/schemas)")
def test_domain_with_our_metadata_validates_against_libvirt_domain_schema() -> None:
    domain_rng = etree.RelaxNG(etree.parse(str(LIBVIRT_DOMAIN_RNG)))
    block = f"  <metadata>\n    {FOREIGN}\n  </metadata>\n"
    root = parse_domain(domain_xml("schema", metadata_block=block), "schema.xml").getroot()
    metadata.set_domain_metadata(root, CHANNELS, "running")
    assert domain_rng.validate(root), str(domain_rng.error_log)


# --- untrusted content ------------------------------------------------------------

BAD_ELEMENTS = {
    "bad name": '<xcb:channel name="../../etc/evil" connection="socket" target="xen"/>',
    "relative path": '<xcb:channel name="a" connection="socket" path="tmp/x" target="xen"/>',
    "path with comma": '<xcb:channel name="a" connection="socket" path="/a,b" target="xen"/>',
    "long path": f'<xcb:channel name="a" connection="socket" path="/{"x" * 200}" target="xen"/>',
    "dotdot path": '<xcb:channel name="a" connection="socket" path="/run/../etc" target="xen"/>',
    "newline path": '<xcb:channel name="a" connection="socket" path="/a&#10;b" target="xen"/>',
    "unknown connection": '<xcb:channel name="a" connection="tcp" target="xen"/>',
    "missing target": '<xcb:channel name="a" connection="pty"/>',
    "unknown target": '<xcb:channel name="a" connection="pty" target="serial"/>',
    "nameless xen": '<xcb:channel connection="pty" target="xen"/>',
    "duplicate": '<xcb:channel name="a" connection="pty" target="xen"/>'
                 '<xcb:channel name="a" connection="pty" target="xen"/>',
    "foreign child": '<xcb:whatever/>',
    "text": 'hello',
}


def hand_edited(inner: str, state: str = "") -> str:
    return f'<xcb:channels xmlns:xcb="{NAMESPACE}"{state}>{inner}</xcb:channels>'


@pytest.mark.parametrize("case", sorted(BAD_ELEMENTS))
def test_invalid_hand_edit_is_reported_then_replaced(schema: etree.RelaxNG, case: str) -> None:
    block = f"  <metadata>\n    {FOREIGN}\n    {hand_edited(BAD_ELEMENTS[case])}\n  </metadata>\n"
    root = parse_domain(domain_xml("edited", metadata_block=block), "edited.xml").getroot()
    with pytest.raises(InvalidMetadata) as caught:
        metadata.read_domain_metadata(root)
    assert caught.value.source == "domain 'edited'"
    assert "\n" not in caught.value.message()
    problem = metadata.set_domain_metadata(root, CHANNELS)
    assert isinstance(problem, InvalidMetadata)
    assert_valid(schema, our_element(root))
    assert metadata.read_domain_metadata(root) == list(CHANNELS)
    assert etree.tostring(root.find("metadata")[0], method="c14n") == etree.tostring(  # type: ignore[index]
        etree.fromstring(FOREIGN), method="c14n"
    )


def test_two_of_our_elements_are_invalid_and_both_replaced() -> None:
    two = hand_edited("") + hand_edited("", ' state="running"')
    root = parse_domain(domain_xml("dup", metadata_block=f"<metadata>{two}</metadata>"),
                        "dup.xml").getroot()
    with pytest.raises(InvalidMetadata, match="expected one"):
        metadata.find_domain_metadata(root)
    assert metadata.set_domain_metadata(root, []) is not None
    assert len(root.findall(f"metadata/{{{NAMESPACE}}}channels")) == 1


def test_bad_state_is_invalid() -> None:
    with pytest.raises(InvalidMetadata, match="state"):
        metadata.parse_metadata(hand_edited("", ' state="on fire"'))


def test_unknown_attributes_are_ignored_for_forward_compatibility() -> None:
    text = hand_edited('<xcb:channel name="a" connection="pty" target="xen" since="2027"/>',
                       ' generation="7"')
    assert metadata.parse_metadata(text).channels == (Channel("a", Connection.PTY),)


@pytest.mark.parametrize("text", [
    "", "not xml", "<channels>", "<other/>", '<x:channels xmlns:x="urn:other"/>',
    '<!DOCTYPE channels [<!ENTITY a "b">]><channels>&a;</channels>',
    '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE channels [<!ENTITY a "b">]>'
    '<channels>&a;</channels>'.encode("utf-16"),
    "<channels>" + "<channel name='a' connection='pty' target='xen'/>" * 2 + "</channels>",
    b"<channels>\xff</channels>",
])
def test_parse_metadata_reports_garbage(text: str | bytes) -> None:
    with pytest.raises(InvalidMetadata) as caught:
        metadata.parse_metadata(text, "domain 'g'")
    assert caught.value.message().startswith("domain 'g': invalid xen-channel metadata: ")


@settings(max_examples=300, deadline=None)
@given(attrs=st.dictionaries(st.sampled_from(["name", "connection", "path", "target", "x"]),
                             st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)))
def test_fuzzed_attributes_never_crash(attrs: dict[str, str]) -> None:
    element = etree.Element("channel")
    for key, value in attrs.items():
        try:
            element.set(key, value)
        except ValueError:  # lxml refuses characters XML cannot carry
            return
    wrapper = etree.Element("channels")
    wrapper.append(element)
    try:
        parsed = metadata.parse_metadata(etree.tostring(wrapper))
    except XenChannelError as exc:
        assert isinstance(exc, InvalidMetadata)
    else:
        # Whatever is accepted is exactly what our schema allows us to write.
        assert metadata.parse_metadata(metadata.metadata_xml(parsed.channels)) == parsed


# --- real libvirt: test:///default -------------------------------------------------


@pytest.fixture
def conn() -> Iterator[object]:
    connection = libvirt.open("test:///default")
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def test_domain(conn: libvirt.virConnect, request: pytest.FixtureRequest) -> Iterator[object]:
    name = f"xcb-md-{uuidlib.uuid4().hex[:12]}"
    block = f"  <metadata>\n    {FOREIGN}\n  </metadata>\n"
    domain = conn.defineXML(domain_xml(name, metadata_block=block).decode())
    try:
        yield domain
    finally:
        if domain.isActive():
            domain.destroy()
        domain.undefine()


def live_and_config_xml(domain: libvirt.virDomain) -> tuple[etree._Element, etree._Element]:
    live = etree.fromstring(domain.XMLDesc(0).encode())
    config = etree.fromstring(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
    return live, config


@pytest.mark.parametrize("flag_name", ["VIR_DOMAIN_AFFECT_CONFIG", "VIR_DOMAIN_AFFECT_LIVE"])
def test_round_trip_through_libvirt_set_metadata(
    schema: etree.RelaxNG, test_domain: libvirt.virDomain, flag_name: str
) -> None:
    flag = getattr(libvirt, flag_name)
    if flag == libvirt.VIR_DOMAIN_AFFECT_LIVE:
        test_domain.create()
    state = "running" if flag == libvirt.VIR_DOMAIN_AFFECT_LIVE else None
    test_domain.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                            metadata.metadata_xml(CHANNELS, state), PREFIX, NAMESPACE, flag)
    text = test_domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE, flag)
    assert metadata.parse_metadata(text, test_domain.name()) == metadata.Metadata(CHANNELS, state)
    # The element libvirt stores is namespaced with our prefix, validates,
    # and reads back through the domain-tree reader; the foreign one survives.
    xml = test_domain.XMLDesc(0 if state else libvirt.VIR_DOMAIN_XML_INACTIVE)
    root = etree.fromstring(xml.encode())
    element = our_element(root)
    assert element.prefix == PREFIX
    assert_valid(schema, element)
    assert metadata.find_domain_metadata(root) == metadata.Metadata(CHANNELS, state)
    assert root.find("metadata/{http://example.org/app/1}settings") is not None


def test_live_metadata_does_not_touch_the_persistent_copy(test_domain: libvirt.virDomain) -> None:
    test_domain.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, metadata.metadata_xml(CHANNELS),
                            PREFIX, NAMESPACE, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    test_domain.create()
    live_channels = (CHANNELS[0], CHANNELS[1].with_path("/dev/pts/7"))
    test_domain.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                            metadata.metadata_xml(live_channels, "running"), PREFIX, NAMESPACE,
                            libvirt.VIR_DOMAIN_AFFECT_LIVE)
    live, config = live_and_config_xml(test_domain)
    assert metadata.find_domain_metadata(live) == metadata.Metadata(live_channels, "running")
    assert metadata.find_domain_metadata(config) == metadata.Metadata(CHANNELS, None)


def test_domain_tree_edited_by_us_defines_and_reads_back(
    schema: etree.RelaxNG, conn: libvirt.virConnect
) -> None:
    name = f"xcb-md-{uuidlib.uuid4().hex[:12]}"
    bad = hand_edited(BAD_ELEMENTS["bad name"])
    block = f"  <metadata>\n    {FOREIGN}\n    {bad}\n  </metadata>\n"
    tree = parse_domain(domain_xml(name, metadata_block=block), "in.xml")
    assert metadata.set_domain_metadata(tree.getroot(), CHANNELS) is not None
    domain = conn.defineXML(serialize(tree))
    try:
        text = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE,
                               libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        assert metadata.parse_metadata(text).channels == CHANNELS
        assert_valid(schema, our_element(live_and_config_xml(domain)[1]))
        foreign = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, "http://example.org/app/1",
                                  libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        assert "keep &amp; me" in foreign
    finally:
        domain.undefine()


def test_missing_metadata_is_libvirt_error_80(test_domain: libvirt.virDomain) -> None:
    # background.md §2: a namespace with no element raises VIR_ERR_NO_DOMAIN_METADATA;
    # api.remote_channels and the monitor rely on this code.
    with pytest.raises(libvirt.libvirtError) as caught:
        test_domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE,
                             libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    assert caught.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA


# --- what fill and define write ---------------------------------------------------

FILL_INPUT = """<domain type='test'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <metadata>
    {foreign}
  </metadata>
  <memory unit='KiB'>65536</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <channel type='unix'><target type='xen' name='org.example.config.0'/></channel>
    <channel type='pty'><target type='xen' name='org.example.debug.0'/></channel>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>
"""


@pytest.fixture
def fill_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A short run directory (paths.MAX_RUNDIR) and no host config file."""
    import shutil
    import tempfile

    top = tempfile.mkdtemp(prefix="xcb-", dir="/tmp")
    monkeypatch.setenv("XEN_CHANNEL_CONFIG", "/dev/null")
    monkeypatch.delenv("XEN_CHANNEL_RUNDIR", raising=False)
    try:
        yield f"{top}/run"
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_fill_output_metadata_validates_and_defines_on_test_driver(
    schema: etree.RelaxNG, conn: libvirt.virConnect, fill_env: str, tmp_path: pathlib.Path
) -> None:
    import io

    from xen_channel_backend.cli import main

    name = f"xcb-md-{uuidlib.uuid4().hex[:12]}"
    source = tmp_path / "in.xml"
    source.write_text(FILL_INPUT.format(name=name, uuid=uuidlib.uuid4(), foreign=FOREIGN))
    out, err = io.StringIO(), io.StringIO()
    assert main(["fill", "--all-targets", "--rundir", fill_env, str(source)],
                stdout=out, stderr=err) == 0, err.getvalue()
    root = etree.fromstring(out.getvalue().encode())
    element = our_element(root)
    assert_valid(schema, element)
    channels = metadata.read_domain_metadata(root)
    assert [(c.name, c.connection.value, c.target.value) for c in channels] == [
        ("org.example.config.0", "socket", "xen"),
        ("org.example.debug.0", "pty", "xen"),
        ("org.qemu.guest_agent.0", "socket", "virtio"),
    ]
    assert all(c.path and c.path.startswith(fill_env + "/") for c in channels
               if c.connection is Connection.SOCKET)
    assert root.find("metadata/{http://example.org/app/1}settings") is not None

    # define: the same, defined through libvirt-python; read it back through libvirt.
    assert main(["define", "--all-targets", "--rundir", fill_env, "--connect",
                 "test:///default", str(source)], stdout=out, stderr=err) == 0, err.getvalue()
    domain = conn.lookupByName(name)
    try:
        text = domain.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE,
                               libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        assert list(metadata.parse_metadata(text, name).channels) == channels
        config = etree.fromstring(domain.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).encode())
        assert_valid(schema, our_element(config))
    finally:
        domain.undefine()
