"""The one escaping rule for text from a guest or a file (errors.escaped / errors.shown).

Whatever such text holds, what reaches a terminal or a log is one line of
printable characters: no ESC (colours, cursor moves, window titles, OSC 52
clipboard writes), no C1 CSI, no line or paragraph separators, no bidi
overrides that make text display other than it reads.
"""

from __future__ import annotations

import logging
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xen_channel_backend.errors import escaped, shown
from xen_channel_backend.guest.agent import GuestAgent
from xen_channel_backend.guest.appliers import ApplyContext, default_registry

#: One of each kind the rule must catch.
HOSTILE = {
    "ESC (OSC 52 clipboard write)": "\x1b]52;c;ZXZpbA==\x07",
    "C0": "\x00\x08\r\n\t",
    "DEL": "\x7f",
    "C1 CSI and NEL": "\x9b2J\x85",
    "line/paragraph separators": "\u2028\u2029",
    "bidi overrides": "\u202a\u202b\u202c\u202d\u202e",
    "bidi isolates": "\u2066\u2067\u2068\u2069",
    "other format characters": "\u200b\u200e\u200f\u061c\ufeff\xad\U000e0041",
    "lone surrogate (from surrogateescape)": "\udcff",
}


@pytest.mark.parametrize("text", list(HOSTILE.values()), ids=list(HOSTILE))
def test_every_unsafe_character_is_escaped(text: str) -> None:
    out = escaped(f"a{text}b")
    assert out.isprintable() and out.isascii()
    assert out.startswith("a\\") and out.endswith("b")


def test_escapes_read_back_unambiguously() -> None:
    assert escaped("plain text, ünïcödé, 日本") == "plain text, ünïcödé, 日本"
    assert escaped("\x1b[31mred\u202e") == "\\x1b[31mred\\u202e"
    # A literal backslash is doubled, so it cannot pass for an escape.
    assert escaped("\\x1b") == "\\\\x1b"


@given(st.text())
def test_shown_quotes_exactly_as_repr_does(text: str) -> None:
    expected = repr(text)
    if len(expected) <= 120:
        assert shown(text) == expected
    assert shown(text).isprintable()


@given(st.text(alphabet=st.characters(codec=None)))
def test_escaped_output_is_always_one_printable_line(text: str) -> None:
    out = escaped(text)
    assert out.isprintable()
    assert all(unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp", "Cs") for c in out)


def test_shown_escapes_a_raw_custom_repr() -> None:
    class Sneaky:
        def __repr__(self) -> str:
            return "sneaky\x1b[2J\nforged line"

    assert shown(Sneaky()) == "sneaky\\x1b[2J\\nforged line"


def test_the_guest_agent_logs_dom0_text_escaped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = GuestAgent(default_registry(), ApplyContext(root=str(tmp_path)))
    hostile_id = "id\x9b2J\u202e"  # C1 and bidi pass the protocol's id rule
    with caplog.at_level(logging.DEBUG, logger="xen_channel_backend"):
        agent.handle({"type": "config", "id": hostile_id, "payload": {"extra": {"k": 1}}})
        agent.handle({"type": "ack\x1b]0;owned\x07", "id": "x"})
    lines = [record.getMessage() for record in caplog.records]
    assert any("\\x9b2J\\u202e" in line for line in lines), lines
    for line in lines:
        assert line.isprintable(), line
