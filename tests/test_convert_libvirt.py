"""Every domain XML that ``convert --into`` produces is valid for the real libvirt.

Two checks per output: libvirt's own RelaxNG schema
(/usr/share/libvirt/schemas/domain.rng) and ``defineXML`` on libvirt's
``test:///default`` driver through libvirt-python, after which the defined
domain must still hold exactly the channels we wrote.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from convert_cases import into_xml_outputs
from golden import canonical_xml
from lxml import etree

pytestmark = pytest.mark.integration

SCHEMA = "/usr/share/libvirt/schemas/domain.rng"
OUTPUTS = into_xml_outputs()


@pytest.fixture(scope="module")
def relaxng() -> etree.RelaxNG:
    if not os.path.exists(SCHEMA):
        pytest.skip(f"{SCHEMA} is missing: install libvirt-daemon (make test does)")
    return etree.RelaxNG(etree.parse(SCHEMA))


@pytest.fixture(scope="module")
def test_driver() -> Iterator[Any]:
    libvirt = pytest.importorskip(
        "libvirt", reason="libvirt-python is missing (pip install '.[test]')"
    )
    connection = libvirt.open("test:///default")
    try:
        yield connection
    finally:
        connection.close()


def channels_of(xml: str) -> list[str]:
    root = etree.fromstring(xml.encode())
    return [canonical_xml(etree.tostring(c)) for c in root.iterfind("devices/channel")]


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_into_output_validates_against_libvirts_schema(name: str, relaxng: etree.RelaxNG) -> None:
    document = etree.fromstring(OUTPUTS[name].encode())
    assert relaxng.validate(document), relaxng.error_log.last_error


@pytest.mark.parametrize("name", sorted(OUTPUTS))
def test_into_output_is_accepted_by_define_xml(name: str, test_driver: Any) -> None:
    # The test driver accepts domain type 'xen' and 'kvm' as they are, so the
    # output is defined unchanged except for name and UUID, made unique so
    # that cases cannot collide in the shared test:///default state.
    root = etree.fromstring(OUTPUTS[name].encode())
    unique = uuid.uuid4()
    root.find("name").text = f"xcb-{unique.hex[:12]}"  # type: ignore[union-attr]
    root.find("uuid").text = str(unique)  # type: ignore[union-attr]
    xml = etree.tostring(root, encoding="unicode")
    domain = test_driver.defineXML(xml)
    try:
        assert channels_of(domain.XMLDesc(0)) == channels_of(xml)
    finally:
        domain.undefine()
