"""xml/metadata.rng on its own: what the schema accepts and refuses, by lxml's RelaxNG.

tests/test_metadata.py checks that everything metadata.py writes validates;
this file checks the other direction, that the schema refuses what our reader
refuses, so a management tool validating against the published schema never
accepts an element that ``xen-channel`` would call invalid.
"""

from __future__ import annotations

import pathlib

import pytest
from lxml import etree

from xen_channel_backend import metadata
from xen_channel_backend.errors import InvalidMetadata
from xen_channel_backend.metadata import NAMESPACE

SCHEMA = pathlib.Path(__file__).resolve().parent.parent / "xml" / "metadata.rng"


@pytest.fixture(scope="module")
def schema() -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(SCHEMA)))


def element(*channels: str) -> etree._Element:
    return etree.fromstring(
        f'<xcb:channels xmlns:xcb="{NAMESPACE}">{"".join(channels)}</xcb:channels>'
    )


@pytest.mark.parametrize(
    "channel",
    [
        '<xcb:channel name="a.b" connection="pty" target="xen"/>',
        '<xcb:channel name="a.b" connection="socket" path="/run/x/a.b" target="xen"/>',
        '<xcb:channel connection="pty" target="virtio"/>',
        '<xcb:channel connection="socket" path="/run/x/v" target="virtio"/>',
        '<xcb:channel connection="socket" path="/run/x/g" target="guestfwd"/>',
        '<xcb:channel name="v.0" connection="socket" path="/run/x/v" target="virtio"/>',
    ],
)
def test_schema_accepts_what_we_read(schema: etree.RelaxNG, channel: str) -> None:
    root = element(channel)
    assert schema.validate(root), schema.error_log
    metadata.parse_metadata(etree.tostring(root))


@pytest.mark.parametrize(
    "channel",
    [
        # A Xen channel always has a name: libxl refuses a nameless one.
        '<xcb:channel connection="pty" target="xen"/>',
        '<xcb:channel connection="socket" path="/run/x/s" target="xen"/>',
        '<xcb:channel name="" connection="pty" target="xen"/>',
        '<xcb:channel name="a" connection="tcp" target="xen"/>',
        '<xcb:channel name="a" connection="pty"/>',
        '<xcb:channel name="a" connection="pty" target="serial"/>',
        '<xcb:channel name="a" connection="socket" path="tmp/x" target="xen"/>',
    ],
)
def test_schema_refuses_what_we_refuse(schema: etree.RelaxNG, channel: str) -> None:
    root = element(channel)
    assert not schema.validate(root), f"schema accepts {channel}"
    with pytest.raises(InvalidMetadata):
        metadata.parse_metadata(etree.tostring(root))
