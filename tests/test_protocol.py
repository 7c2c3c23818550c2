"""Tests for xen_channel_backend.protocol: framing properties and message rules."""

from __future__ import annotations

import itertools
import json
import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xen_channel_backend import protocol
from xen_channel_backend.errors import InvalidMessage, XenChannelError
from xen_channel_backend.protocol import (
    MAX_FRAME,
    SYNC,
    FrameDecoder,
    FrameError,
    FrameSplitter,
    encode,
)

# --- strategies ----------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
messages = st.builds(
    lambda kind, rest: {**rest, "type": kind},
    st.text(min_size=1),
    st.dictionaries(st.text(), json_values, max_size=5),
)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def decode_all(chunks: list[bytes], max_frame: int = MAX_FRAME) -> list[Any]:
    decoder = FrameDecoder(max_frame)
    out: list[Any] = []
    for chunk in chunks:
        out += decoder.feed(chunk)
    return out


# --- properties ----------------------------------------------------------------
# No per-example deadline: speed is not under test here (bench/ measures it),
# and a busy 2-core CI machine must not turn a slow example into a failure.
untimed = settings(deadline=None)


@untimed
@given(messages)
def test_encode_decode_round_trip(message: dict[str, Any]) -> None:
    frame = encode(message)
    assert frame[:1] == SYNC and frame.endswith(b"\n")
    # The two framing bytes never occur inside the body.
    assert b"\xff" not in frame[1:] and b"\n" not in frame[:-1]
    assert FrameDecoder().feed(frame) == [message]


@untimed
@given(st.lists(messages, max_size=6), st.lists(st.integers(min_value=0), max_size=20))
def test_arbitrary_chunking_gives_the_same_messages(
    batch: list[dict[str, Any]], cuts: list[int]
) -> None:
    stream = b"".join(encode(m) for m in batch)
    assert decode_all(chunked(stream, cuts)) == batch


@untimed
@given(
    st.binary(max_size=300),
    messages,
    st.lists(st.integers(min_value=0), max_size=10),
)
def test_garbage_never_hides_a_later_valid_frame(
    garbage: bytes, message: dict[str, Any], cuts: list[int]
) -> None:
    stream = garbage + encode(message)
    decoded = decode_all(chunked(stream, cuts))
    assert decoded and decoded[-1] == message
    # Whatever the garbage held came out as messages or error values, never exceptions.
    assert all(isinstance(d, dict | FrameError) for d in decoded)


@untimed
@given(
    st.integers(min_value=3, max_value=120),
    st.lists(st.integers(min_value=0, max_value=200), min_size=1, max_size=5),
    st.lists(st.integers(min_value=0), max_size=10),
)
def test_frames_over_the_limit_are_reported_and_skipped(
    max_frame: int, body_lengths: list[int], cuts: list[int]
) -> None:
    # Raw frames whose body is length L: total size L + 2.
    frames = [SYNC + b"a" * n + b"\n" for n in body_lengths]
    splitter = FrameSplitter(max_frame)
    out: list[bytes | FrameError] = []
    for chunk in chunked(b"".join(frames), cuts):
        out += splitter.feed(chunk)
        assert splitter.pending <= max_frame  # memory stays bounded
    expected = [f if len(f) <= max_frame else FrameError("frame-too-large", "") for f in frames]
    assert [o if isinstance(o, bytes) else o.code for o in out] == [
        e if isinstance(e, bytes) else e.code for e in expected
    ]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.integers(min_value=3, max_value=64))
def test_splitter_never_raises_and_stays_bounded(data: bytes, max_frame: int) -> None:
    splitter = FrameSplitter(max_frame)
    for item in splitter.feed(data):
        if isinstance(item, bytes):
            assert item[:1] == SYNC and item.endswith(b"\n") and len(item) <= max_frame
            assert b"\xff" not in item[1:] and b"\n" not in item[:-1]
    assert splitter.pending <= max_frame


# --- framing examples ------------------------------------------------------------


def test_splitter_returns_raw_frames_whole() -> None:
    frame = encode(protocol.ping("1"))
    assert FrameSplitter().feed(b"junk" + frame + frame) == [frame, frame]
    assert frame == b'\xff{"type":"ping","id":"1"}\n'


def test_half_frame_cut_by_a_new_sync_byte_is_dropped_silently() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b'\xff{"type":"ack","id":"ol') == []
    assert decoder.feed(b'\xff{"type":"pong","id":"2"}\n') == [{"type": "pong", "id": "2"}]


def test_real_limit_exact_size_accepted_one_more_byte_refused() -> None:
    # Pad a message so that its frame is exactly MAX_FRAME bytes.
    base = len(encode({"type": "x", "pad": ""}))
    exact = {"type": "x", "pad": "p" * (MAX_FRAME - base)}
    frame = encode(exact)
    assert len(frame) == MAX_FRAME
    oversized = frame[:-1] + b"p\n"
    after = encode(protocol.pong("after"))
    decoded = FrameDecoder().feed(frame + oversized + after)
    assert decoded[0] == exact
    assert isinstance(decoded[1], FrameError) and decoded[1].code == "frame-too-large"
    assert decoded[2:] == [protocol.pong("after")]


def test_endless_frame_reports_once_and_drops_until_next_sync() -> None:
    decoder = FrameDecoder(max_frame=16)
    first = decoder.feed(b"\xff" + b"x" * 40)
    assert [e.code for e in first if isinstance(e, FrameError)] == ["frame-too-large"]
    assert decoder.feed(b"y" * 100 + b"\n" + b"z" * 5) == []
    assert decoder.feed(b'\xff{"type":"a"}\n') == [{"type": "a"}]


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"\xffnot json\n", "invalid JSON"),
        (b"\xff[1,2]\n", "not an object"),
        (b'\xff{"id":"1"}\n', 'no "type"'),
        (b'\xff{"type":5}\n', 'no "type"'),
        (b'\xff{"type":"a","n":NaN}\n', "invalid JSON"),
        (b"\xff\xc3\x28\n", "invalid JSON"),
        (b"\xff" + b"[" * 100000 + b"\n", "invalid JSON"),
    ],
)
def test_bad_frames_are_values_and_decoding_continues(raw: bytes, fragment: str) -> None:
    decoded = FrameDecoder().feed(raw + b'\xff{"type":"pong","id":"1"}\n')
    assert len(decoded) == 2
    bad = decoded[0]
    assert isinstance(bad, FrameError) and bad.code == "bad-frame" and fragment in bad.detail
    assert decoded[1] == {"type": "pong", "id": "1"}


def test_crlf_from_a_cooked_tty_still_parses() -> None:
    # A guest tty left in cooked mode turns "\n" into "\r\n"; "\r" is JSON whitespace.
    assert FrameDecoder().feed(b'\xff{"type":"a"}\r\n') == [{"type": "a"}]


def test_utf8_body_is_accepted_but_we_send_ascii() -> None:
    assert FrameDecoder().feed(b'\xff{"type":"h","n":"\xc3\xa9"}\n') == [{"type": "h", "n": "é"}]
    assert encode({"type": "h", "n": "é"}) == b'\xff{"type":"h","n":"\\u00e9"}\n'


def test_encode_refuses_messages_it_cannot_frame() -> None:
    with pytest.raises(InvalidMessage, match='no "type"'):
        encode({"id": "1"})
    with pytest.raises(InvalidMessage, match="over the 1048576-byte limit"):
        encode({"type": "config", "payload": "x" * MAX_FRAME})
    with pytest.raises(InvalidMessage, match="not serialisable"):
        encode({"type": "x", "v": float("nan")})
    assert issubclass(InvalidMessage, XenChannelError)


# --- messages -------------------------------------------------------------------


def test_constructors_match_the_contract() -> None:
    nonce = protocol.new_nonce()
    assert len(nonce) == 32 and int(nonce, 16) >= 0
    assert protocol.hello(nonce) == {"type": "hello", "versions": [1], "nonce": nonce}
    assert protocol.validate_hello(protocol.hello(nonce)) == []
    ack_hello = protocol.hello_ack(
        nonce, agent_name="g", agent_version="1.0", capabilities=["hostname"]
    )
    assert ack_hello == {
        "type": "hello-ack",
        "version": 1,
        "nonce": nonce,
        "agent": {"name": "g", "version": "1.0"},
        "capabilities": ["hostname"],
    }
    assert protocol.validate_hello_ack(ack_hello) == []
    assert protocol.error(None, "unknown-type", "m") == {
        "type": "error",
        "id": None,
        "code": "unknown-type",
        "message": "m",
    }
    assert protocol.new_id() != protocol.new_id()


def test_ack_status_follows_the_results() -> None:
    ok = {"item": "hostname", "status": "applied", "detail": ""}
    failed = {"item": "addresses/eth0", "status": "failed", "detail": "no such device"}
    assert protocol.ack("1", results=[ok])["status"] == "ok"
    assert protocol.ack("1", results=[ok, failed])["status"] == "partial"
    rejected = protocol.ack("1", error="payload must be an object")
    assert rejected["status"] == "error" and rejected["error"] == "payload must be an object"
    for message in (
        protocol.ack("1", results=[ok]),
        protocol.ack("1", results=[ok, failed]),
        rejected,
    ):
        assert protocol.validate_ack(message) == []
    assert protocol.validate_ack(protocol.ack("1", "ok", [failed])) == [
        "status 'ok' contradicts the item results"
    ]
    assert protocol.validate_ack({"type": "ack", "id": "1", "status": "error"}) == [
        'status "error" needs an "error" string'
    ]
    assert protocol.validate_ack({"type": "ack", "status": "maybe", "results": [1]}) != []


def test_version_negotiation() -> None:
    assert protocol.negotiate_version([1]) == 1
    assert protocol.negotiate_version([1, 2, 7]) == 1
    assert protocol.negotiate_version([2]) is None
    assert protocol.negotiate_version("1") is None
    assert protocol.negotiate_version([True]) is None


SAMPLE_PAYLOAD: dict[str, Any] = {
    "hostname": "vm1.example.org",
    "addresses": [
        {
            "interface": "eth0",
            "address": "192.0.2.10/24",
            "gateway": "192.0.2.1",
            "dns": ["192.0.2.53", "2001:db8::53"],
        },
        {"interface": "eth1", "address": "2001:db8::10/64"},
    ],
    "ssh_keys": [{"user": "root", "keys": ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA admin@host"]}],
    "extra": {"any.key": {"nested": [1, 2]}},
}


def test_sample_payload_is_valid_and_names_its_items() -> None:
    assert protocol.validate_config_payload(SAMPLE_PAYLOAD) == []
    assert protocol.validate_config_payload({}) == []
    assert protocol.payload_items(SAMPLE_PAYLOAD) == [
        "hostname",
        "addresses/eth0",
        "addresses/eth1",
        "ssh_keys/root",
        "extra/any.key",
    ]
    # The sample survives the wire.
    message = protocol.config("c1", SAMPLE_PAYLOAD)
    assert FrameDecoder().feed(encode(message)) == [message]


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"hostname": "-bad-.example"}, "not a valid host name"),
        ({"hostname": "a" * 254}, "longer than 253"),
        ({"hostname": 7}, "non-empty string"),
        ({"addresses": {}}, "addresses must be a list"),
        ({"addresses": [{"interface": "eth0", "address": "192.0.2.10"}]}, "ADDRESS/PREFIX"),
        ({"addresses": [{"interface": "eth0/x", "address": "10.0.0.1/8"}]}, "interface name"),
        (
            {"addresses": [{"interface": "eth0", "address": "10.0.0.1/8", "gateway": "::1"}]},
            "same IP version",
        ),
        ({"addresses": [{"interface": "eth0", "address": "10.0.0.1/8", "dns": ["x"]}]}, "dns"),
        (
            {"addresses": [{"interface": "e", "address": "10.0.0.1/8"}] * 2},
            "more than once",
        ),
        ({"ssh_keys": [{"user": "Root!", "keys": []}]}, "not a valid user name"),
        (
            {"ssh_keys": [{"user": "root", "keys": ["ssh-ed25519 AAAA\nssh-rsa BBBB evil"]}]},
            "contains a newline",
        ),
        ({"ssh_keys": [{"user": "root", "keys": ["onlyonefield"]}]}, "is not one line"),
        (
            {"ssh_keys": [{"user": "a", "keys": []}, {"user": "a", "keys": []}]},
            "ssh_keys lists the same user more than once: ['a']",
        ),
        # ipaddress keeps a zone index verbatim, newline and all.
        ({"addresses": [{"interface": "e", "address": "fe80::1%e\nDNS=x/64"}]}, "with a prefix"),
        (
            {"addresses": [{"interface": "e", "address": "::2/64", "gateway": "fe80::1%e"}]},
            "gateway 'fe80::1%e' is not an IP address",
        ),
        ({"addresses": [{"interface": "e", "address": "::2/64", "dns": [53]}]}, "dns server 53"),
        ({"extra": {"a/b": 1}}, "extra key"),
        ({"extra": []}, "extra must be an object"),
        ({"ntp": ["pool.ntp.org"]}, "unknown keys ['ntp']"),
    ],
)
def test_invalid_payloads_are_named(change: dict[str, Any], fragment: str) -> None:
    problems = protocol.validate_config_payload({**SAMPLE_PAYLOAD, **change})
    assert any(fragment in p for p in problems), problems


def test_duplicates_are_found_in_a_full_size_payload() -> None:
    """Duplicate detection counts in one pass: a frame near MAX_FRAME holds tens
    of thousands of entries, and every duplicate is still named exactly once."""
    users = [f"u{n}" for n in range(20000)] + ["u7", "u19999", "u7"]
    payload = {"ssh_keys": [{"user": user, "keys": []} for user in users]}
    assert len(encode(protocol.config("c1", payload))) < MAX_FRAME
    assert protocol.validate_config_payload(payload) == [
        "ssh_keys lists the same user more than once: ['u19999', 'u7']"
    ]
    del payload["ssh_keys"][-3:]
    assert protocol.validate_config_payload(payload) == []


def test_repeated_names_strings_seen_more_than_once() -> None:
    assert protocol.repeated(["b", "a", None, "b", 1, 1, "a", "b", "c"]) == ["a", "b"]
    assert protocol.repeated(iter([])) == []


def test_payload_that_is_not_an_object() -> None:
    assert protocol.validate_config_payload([1]) == ["payload must be an object"]


def test_validate_message_dispatches_by_type() -> None:
    assert protocol.validate_message(protocol.ping("1")) == []
    assert protocol.validate_message({"type": "ping"}) == ['"id" must be a non-empty string']
    assert protocol.validate_message({"type": "config", "id": "1"}) == ['config has no "payload"']
    assert protocol.validate_message({"type": "hello", "versions": [], "nonce": "x"}) == [
        '"versions" must be a non-empty list of integers',
        '"nonce" must be 32 lowercase hex digits',
    ]
    assert protocol.validate_message({"type": "future-thing"}) == []
    # Error values from the decoder carry the protocol's own error codes (4.7).
    documented = {
        "unknown-type", "bad-request", "unsupported-version", "frame-too-large", "bad-frame",
    }
    assert set(typing.get_args(protocol.FrameErrorCode)) <= documented
    assert json.loads(encode(protocol.error("1", "bad-frame", "x"))[1:])["code"] == "bad-frame"


def test_items_follow_the_payloads_own_key_order() -> None:
    payload = {
        "extra": {"z": 1, "a": 2},
        "ssh_keys": [{"user": "root", "keys": []}],
        "hostname": "vm1",
        "addresses": [{"interface": "eth1", "address": "10.0.0.1/8"},
                      {"interface": "eth0", "address": "10.0.0.2/8"}],
    }
    assert protocol.payload_items(payload) == [
        "extra/z", "extra/a", "ssh_keys/root", "hostname", "addresses/eth1", "addresses/eth0",
    ]


def test_results_must_answer_each_item_once_in_order() -> None:
    payload = {"hostname": "vm1", "ssh_keys": [{"user": "root", "keys": []}]}

    def results(*items: str) -> list[dict[str, str]]:
        return [{"item": item, "status": "applied", "detail": ""} for item in items]

    assert protocol.results_problem(payload, results("hostname", "ssh_keys/root")) is None
    assert protocol.results_problem({}, []) is None
    cases = {
        ("hostname",): "missing ['ssh_keys/root']",
        ("hostname", "ssh_keys/root", "ssh_keys/mallory"): "items never sent ['ssh_keys/mallory']",
        ("ssh_keys/root", "hostname"): "items out of payload order",
        ("hostname", "hostname", "ssh_keys/root"): "items repeated ['hostname']",
    }
    for items, fragment in cases.items():
        problem = protocol.results_problem(payload, results(*items))
        assert problem is not None and fragment in problem, (items, problem)


def test_an_error_ack_may_list_problems_but_never_applied_items() -> None:
    problem = {"item": "hostname", "status": "failed", "detail": "bad"}
    applied = {"item": "hostname", "status": "applied", "detail": ""}
    assert protocol.validate_ack(protocol.ack("1", results=[problem], error="bad")) == []
    assert protocol.validate_ack(protocol.ack("1", results=[applied], error="bad")) == [
        "status 'error' contradicts the item results"
    ]
