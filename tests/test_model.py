"""The shared name and path rules, and the frozen Channel model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xen_channel_backend.errors import InvalidChannelName, InvalidSocketPath
from xen_channel_backend.model import (
    MAX_SOCKET_PATH,
    Channel,
    Connection,
    Target,
    validate_name,
    validate_path,
)

GOOD_NAMES = ["org.qemu.guest_agent.0", "a", "0", "A-b_c.d", "x" * 100, "org.example.agent.0"]
BAD_NAMES = [
    "", "../../etc/evil", ".hidden", "-dash", "_under", "a b", "a\nb", "a'b", 'a"b', "a,b",
    "a=b", "a/b", "x" * 101, "x" * 300, "org.\u00e9.agent", "a\x00b", "tab\there",
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names_pass(name: str) -> None:
    validate_name(name)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_fail_with_the_name_and_the_rule(name: str) -> None:
    with pytest.raises(InvalidChannelName) as info:
        validate_name(name)
    assert info.value.name == name
    message = str(info.value)
    assert "\n" not in message
    assert "org.example.agent.0" in message


def test_name_is_optional_only_when_not_required() -> None:
    validate_name(None, required=False)
    with pytest.raises(InvalidChannelName, match="nameless"):
        validate_name(None)


@pytest.mark.parametrize(
    ("path", "rule"),
    [
        ("relative/sock", "not absolute"),
        ("", "empty"),
        ("/a,b", "','"),
        ("/a=b", "'='"),
        ('/a"b', "'\"'"),
        ("/a/../etc/passwd", "'..'"),
        ("/a\nb", "control"),
        ("/a ", "whitespace"),
        ("/" + "p" * 107, "107-byte"),
    ],
)
def test_bad_paths_name_the_rule(path: str, rule: str) -> None:
    with pytest.raises(InvalidSocketPath) as info:
        validate_path(path, "org.example.agent.0")
    assert rule in str(info.value)
    assert "'org.example.agent.0'" in str(info.value)
    assert "\n" not in str(info.value)


def test_path_limit_counts_bytes_not_characters() -> None:
    validate_path("/" + "p" * (MAX_SOCKET_PATH - 1))
    validate_path("/" + "\u00e9" * 53)  # 1 + 53 * 2 = 107 bytes: exactly fits
    with pytest.raises(InvalidSocketPath, match="108 bytes"):
        validate_path("/" + "\u00e9" * 53 + "p")


@given(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", fullmatch=True))
def test_every_name_matching_the_documented_rule_is_accepted(name: str) -> None:
    validate_name(name)


@given(st.text(min_size=1, max_size=120))
def test_accepted_names_are_safe_file_names(name: str) -> None:
    try:
        validate_name(name)
    except InvalidChannelName:
        return
    assert "/" not in name and name not in (".", "..") and name.isascii() and name.isprintable()
    assert not set(name) & set(" ,=\"'\t\n")


def test_channel_is_frozen_and_validated_on_construction() -> None:
    channel = Channel("org.example.agent.0", Connection.SOCKET, "/run/x.sock")
    with pytest.raises(AttributeError, match="immutable"):
        channel.name = "other"  # type: ignore[misc]
    assert channel.with_path("/run/y.sock").path == "/run/y.sock"
    with pytest.raises(InvalidChannelName):
        Channel("../../etc/evil", Connection.PTY)
    with pytest.raises(InvalidSocketPath):
        Channel("a.b", Connection.SOCKET, "/x=y")


def test_virtio_channels_may_be_nameless_but_xen_ones_may_not() -> None:
    assert Channel(None, Connection.SOCKET, target=Target.VIRTIO).label.startswith("<unnamed")
    with pytest.raises(InvalidChannelName):
        Channel(None, Connection.SOCKET)


def test_xls_character_rules_apply_to_xen_channels_only() -> None:
    # libvirt's generated virtio path embeds the domain name, which may hold '='.
    path = "/var/lib/libvirt/qemu/channel/target/domain-1-a=b,c/org.qemu.guest_agent.0"
    virtio = Channel("org.qemu.guest_agent.0", Connection.SOCKET, path, target=Target.VIRTIO)
    assert virtio.path == path
    with pytest.raises(InvalidSocketPath, match=r"xl\.cfg cannot express"):
        Channel("org.qemu.guest_agent.0", Connection.SOCKET, path)
    with pytest.raises(InvalidSocketPath, match=r"'\.\.'"):
        Channel("a.b", Connection.SOCKET, "/a/../b", target=Target.VIRTIO)
