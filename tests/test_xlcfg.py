"""xl.cfg file syntax and channel SPEC grammar, against the 47 cases measured on xl 4.17.

The same cases are replayed on the live xl in tests/test_xl_conformance.py;
here they pin our parser to the recorded results without needing xl.
"""

from __future__ import annotations

import tracemalloc

import pytest
from xl_cases import XlCase, load_cases

from xen_channel_backend import xlcfg
from xen_channel_backend.errors import UnsupportedChannel, XenChannelError, XlConfigError
from xen_channel_backend.model import Channel, Connection, Target

CASES = load_cases()

#: Research cases xl accepts and we refuse on purpose, with the reason.
#: Everything else must agree with xl exactly (accept/reject and channels).
STRICTER_THAN_XL = {
    "missing_name": "libxl refuses a nameless channel at start anyway",
    "value_with_eq": "xl silently cuts path=/scratch/a=b to /scratch/a",
    "leading_eq": "xl silently reads '=name=a.b' as an unknown key '' and loses the name",
    "spaces_inside": "name 'a b c' breaks our name rules",
    "relative_path": "our path rules require an absolute socket path",
    "long_name": "a 300-character name breaks our name rules (max 100)",
    "unicode_name": "a non-ASCII name breaks our name rules",
    "escaped_quote": "a name with '\"' breaks our name rules",
    "name_with_slash": "'../../etc/evil' breaks our name rules",
    "long_path": "a 159-byte path cannot be a socket path (sun_path holds 107)",
    "nested_list": "xl silently ignores a nested list and every channel after it",
    "newline_escape": "a name with a newline breaks our name rules",
    "key_quoted_sp": "the name is lost under the unknown key 'na me'; libxl would refuse it",
}


def ours(cfg: str, source: str = "t.cfg") -> xlcfg.ParsedChannels:
    return xlcfg.read_channels(xlcfg.parse_config(cfg.encode(), source))


def as_tuples(channels: tuple[Channel, ...]) -> list[tuple[str | None, str, str | None]]:
    return [(c.name, c.connection.value, c.path) for c in channels]


def test_all_47_research_cases_are_loaded() -> None:
    assert len(CASES) == 47
    assert set(STRICTER_THAN_XL) <= {c.name for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_research_case_agrees_with_xl_417(case: XlCase) -> None:
    try:
        parsed = ours(case.cfg, f"{case.name}.cfg")
    except XenChannelError as exc:
        assert "\n" not in str(exc)
        assert not case.accepted or case.name in STRICTER_THAN_XL, f"xl accepts: {exc}"
        return
    assert case.name not in STRICTER_THAN_XL, "listed as stricter, but accepted"
    assert case.accepted, f"xl refuses this (rc={case.rc}), we accepted {parsed}"
    assert as_tuples(parsed.channels) == case.simple_channels()
    # Every warning xl printed about the channels has one of ours.
    for xl_warning in ("unknown channel parameter", "single value but should be a list"):
        if xl_warning in case.stderr:
            assert any(
                xl_warning.split()[0] in w or "single value" in w for w in parsed.warnings
            ), parsed.warnings


def test_unknown_key_warning_names_the_key() -> None:
    parsed = ours('channel = [ "connection=pty, name=a.b, foo=bar" ]\n')
    assert parsed.warnings == (
        "t.cfg:1: channel 1: unknown channel parameter 'foo' ignored (as xl does)",
    )


def test_errors_carry_file_and_line() -> None:
    with pytest.raises(XlConfigError) as info:
        ours(
            'name = "g"\n\nchannel = [ "connection=pty,name=a.b",\n  "connection=pty, name" ]\n',
            "g.cfg",
        )
    assert (info.value.source, info.value.line) == ("g.cfg", 4)
    assert str(info.value).startswith("g.cfg:4: channel 2: ' name' is not KEY=VALUE")
    assert info.value.detail.startswith("channel 2: ")


@pytest.mark.parametrize(
    ("text", "line", "detail"),
    [
        ('name = "g\n', 1, "unterminated"),
        ("a = 1\nb = 'x\n", 2, "unterminated"),
        ("a = 1\nName = 2\n", 2, "lower case"),
        ("a = 1 # no newline at the end", 1, "comment at the end"),
        ("a = 1\r\n", 1, "carriage return"),
        ("a = [ 1, , 2 ]\n", 1, "syntax error"),
        ("a = [ , 1 ]\n", 1, "syntax error"),
        ("a = b\n", 1, "syntax error"),
        ("a 1\n", 1, "syntax error"),
        ("a = 1 2\n", 1, "syntax error"),
        ("a = [ 1\n", 2, "syntax error"),
        ("a = 'x'\na += [ 1 ]\n", 2, "can't add"),
        ("a = '\\q'\n", 1, "after backslash"),
        ("a = '\\x41'\n", 1, "\\x escape"),
        ("a = '\\101'\n", 1, "octal escape"),
        ("a = '\\0'\n", 1, "octal escape"),
        ("x = 1\ndef f():\n", 2, "lexical error"),
        ("a = 'b\0'\n", 1, "NUL"),
    ],
)
def test_file_syntax_errors(text: str, line: int, detail: str) -> None:
    with pytest.raises(XlConfigError) as info:
        xlcfg.parse_config(text.encode(), "f.cfg")
    assert info.value.line == line and detail in info.value.detail, str(info.value)


@pytest.mark.parametrize("last", ["#", "(", "\r", '"', "A"])
def test_a_stray_last_byte_is_ignored_like_xl(last: str) -> None:
    config = xlcfg.parse_config(f"a = 1\n{last}".encode(), "f.cfg")
    assert config.value("a") == xlcfg.Atom("1", 1)


def test_deep_nesting_is_parsed_without_recursion_and_bounded() -> None:
    depth = xlcfg.MAX_LIST_DEPTH
    config = xlcfg.parse_config(("x = " + "[" * depth + "]" * depth + "\n").encode(), "f")
    value = config.value("x")
    for _ in range(depth - 1):
        assert isinstance(value, tuple) and len(value) == 1
        value = value[0]
    assert value == ()
    with pytest.raises(XlConfigError, match="nested deeper"):
        xlcfg.parse_config(("x = " + "[ '1', " * 100_000).encode(), "f")


#: 256 KiB xl.cfg files of the shapes that made the parser blow up (issue 9 defect 6).
_MIB = 256 * 1024
LARGE_SHAPES = {
    "semicolons": b";" * _MIB,
    "newlines and comments": b"# a comment\n\n" * (_MIB // 13),
    "flat list": b"junk = [" + b"'x',\n" * (_MIB // 5) + b"]\n",
    "one-line list": b"junk = [" + b"1," * (_MIB // 2) + b"]\n",
    "nested lists": b"junk = [" + b"[]," * (_MIB // 3) + b"]\n",
    "settings": b"a = 1\n" * (_MIB // 6),
    "string += chain": b"s = ''\n" + b"s += 'x'\n" * (_MIB // 9),
    "list += chain": b"l = []\n" + b"l += [1]\n" * (_MIB // 9),
}


@pytest.mark.parametrize("shape", sorted(LARGE_SHAPES))
def test_parsing_holds_no_object_per_token(shape: str) -> None:
    # The parser used to build a token list and a value per setting: about
    # 180 bytes per input byte (and quadratic time for `+=` chains).  It
    # now validates the file with regular expressions and keeps only where
    # each name's value is, so its peak memory is the decoded text plus a
    # little.  tracemalloc counts Python's allocations exactly: no timing.
    data = LARGE_SHAPES[shape]
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        config = xlcfg.parse_config(data, "big.cfg")
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * len(data), f"{peak / len(data):.1f} bytes per input byte"
    assert config.text.encode() == data


def test_values_of_long_plus_equals_chains_are_whole_and_linear_in_memory() -> None:
    count = 30_000
    strings = xlcfg.parse_config(b"s = 'a'\n" + b"s += 'bc'\n" * count, "s.cfg")
    lists = xlcfg.parse_config(b"l = [ 0 ]\n" + b"l += [ 1, '2' ]\n" * count, "l.cfg")
    assert strings.value("s") == xlcfg.Atom("a" + "bc" * count, count + 1)
    tracemalloc.start()
    try:
        value = lists.value("l")
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(value, tuple) and len(value) == 2 * count + 1
    assert value[:3] == (xlcfg.Atom("0", 1), xlcfg.Atom("1", 2), xlcfg.Atom("2", 2))
    assert value[-1] == xlcfg.Atom("2", count + 1)
    # The result itself is about 8 + 48 bytes per item (a pointer and an Atom).
    assert peak < 150 * len(value), f"{peak / len(value):.0f} bytes per item"


def test_not_utf8_is_refused_with_its_line() -> None:
    with pytest.raises(XlConfigError) as info:
        xlcfg.parse_config(b'a = 1\nb = "\xff"\n', "f.cfg")
    assert info.value.line == 2 and "UTF-8" in info.value.detail


def test_file_syntax_that_xl_accepts() -> None:
    config = xlcfg.parse_config(
        b"# comment\n"
        b"\n"
        b"a = 1; b = 0x1f ;;\n"
        b"c.d_e = [ 'x', \"y\",\n   [ 'nested', [ ] ], 3,\n ]   # comment in a line\n"
        b's = \'it\' ; t = "q\\"\\\\\\t\\n"\n'
        b"s += 'more'\n"
        b"l = [ ]\n"
        b"l += [ 'one' ]\n"
        b"last = 'no newline'",
        "f.cfg",
    )
    atom = xlcfg.Atom
    assert config.value("a") == atom("1", 3)
    assert config.value("b") == atom("0x1f", 3)
    assert config.value("c.d_e") == (
        atom("x", 4),
        atom("y", 4),
        (atom("nested", 5), ()),
        atom("3", 5),
    )
    assert config.value("s") == atom("itmore", 8)
    assert config.value("t") == atom('q"\\\t\n', 7)
    assert config.value("l") == (atom("one", 10),)
    assert config.value("last") == atom("no newline", 11)
    assert config.value("missing") is None


def test_adjacent_strings_are_a_syntax_error_not_a_join() -> None:
    # 'it''s' is two STRING tokens in a row: libxlu's grammar refuses it.
    with pytest.raises(XlConfigError):
        xlcfg.parse_config(b"s = 'it''s'\n", "f.cfg")


def test_plus_equals_joins_strings_and_a_later_assignment_resets() -> None:
    config = xlcfg.parse_config(
        b"s = 'ab'\ns += 'cd'\nl = [ '1' ]\nl = [ '2' ]\nl += [ '3' ]\n", "f"
    )
    assert config.value("s") == xlcfg.Atom("abcd", 2)
    assert [a.text for a in config.value("l")] == ["2", "3"]  # type: ignore[union-attr]


def test_channel_settings_keep_their_spans() -> None:
    text = (
        'a = 1\nchannel = [ "connection=pty,name=a" ] # c\n'
        'channel += [\n "connection=pty,name=b"\n]\n'
    )
    config = xlcfg.parse_config(text.encode(), "f")
    spans = [text[s.start : s.end] for s in config.channel_settings()]
    assert spans == [
        'channel = [ "connection=pty,name=a" ]',
        'channel += [\n "connection=pty,name=b"\n]',
    ]


# --- SPEC grammar --------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("connection=socket,path=/run/a,name=a.b", Channel("a.b", Connection.SOCKET, "/run/a")),
        (
            " path = /run/a , name = a.b , connection = socket ",
            Channel("a.b", Connection.SOCKET, "/run/a"),
        ),
        (
            "connection=pty,name=a.b,backend=Domain-0",
            Channel("a.b", Connection.PTY, backend="Domain-0"),
        ),
        ("\tconnection=pty\t,\vname=a.b\f", Channel("a.b", Connection.PTY)),
        (",,connection=pty,,name=a.b,,", Channel("a.b", Connection.PTY)),
    ],
)
def test_spec_accepted(spec: str, expected: Channel) -> None:
    channel, warnings = xlcfg.parse_spec(spec)
    assert channel == expected and warnings == []


@pytest.mark.parametrize(
    ("spec", "detail"),
    [
        ("", "empty channel spec"),
        (",,,", "empty channel spec"),
        ("connection=pty,name=a.b, ", "is not KEY=VALUE"),
        ("connection=pty,name=a.b,=x", "is not KEY=VALUE"),
        ("connection=pty,name= \t", "empty value"),
        ("connection=pty,name==a.b", "more than one '='"),
        ("connection=socket,name=a.b,path=/a=b", "xl would silently take '/a'"),
        ("connection=Pty,name=a.b", "unknown channel connection 'Pty'"),
        ("connection=foo,connection=pty,name=a.b", "unknown channel connection 'foo'"),
        ("name=a.b", "no connection="),
        ("connection=socket,name=a.b", "requires path="),
        ("connection=pty", "has no name"),
        ("connection=pty,name=a b", "is invalid"),
        ("connection=socket,name=a.b,path=relative", "not absolute"),
        ("connection=pty,name=a.b,backend= ", "empty value"),
    ],
)
def test_spec_refused(spec: str, detail: str) -> None:
    with pytest.raises(XlConfigError) as info:
        xlcfg.parse_spec(spec, xlcfg.SpecLocation("f.cfg", 3, "channel 1"))
    assert detail in str(info.value)
    assert str(info.value).startswith("f.cfg:3: channel 1: ")


def test_spec_warnings() -> None:
    channel, warnings = xlcfg.parse_spec(
        "connection=pty,name=a.b,path=/x,name=c.d,Name=e", xlcfg.SpecLocation("w", 2, "channel 1")
    )
    assert channel == Channel("c.d", Connection.PTY)
    assert warnings == [
        "w:2: channel 1: name= given more than once; the last one, 'c.d', wins (as in xl)",
        "w:2: channel 1: unknown channel parameter 'Name' ignored (as xl does)",
        "w:2: channel 1: path= is ignored for connection=pty (as xl does)",
    ]


def test_single_value_channel_is_ignored_with_a_warning_like_xl() -> None:
    parsed = ours('a = 1\nchannel = "connection=pty,name=a.b"\n')
    assert parsed.channels == ()
    assert parsed.warnings == (
        "t.cfg:2: `channel' is a single value but should be a list; xl ignores it",
    )


# --- formatting -----------------------------------------------------------------


def test_format_uses_libvirts_key_order() -> None:
    channels = [
        Channel("org.qemu.guest_agent.0", Connection.SOCKET, "/path/to/socket"),
        Channel("a.b", Connection.PTY, "/dev/pts/3", backend="Domain-0"),
    ]
    assert xlcfg.format_setting(channels) == (
        'channel = [ "connection=socket,path=/path/to/socket,name=org.qemu.guest_agent.0", '
        '"connection=pty,name=a.b,backend=Domain-0" ]'
    )


@pytest.mark.parametrize(
    "channel",
    [
        Channel("a.b", Connection.SOCKET, "/run/back\\slash"),
        Channel("a.b", Connection.PTY, backend="dom,1"),
        Channel("a.b", Connection.PTY, backend='dom"1'),
        Channel("a.b", Connection.PTY, backend=" dom1"),
    ],
)
def test_format_refuses_what_xl_cannot_carry(channel: Channel) -> None:
    with pytest.raises(UnsupportedChannel) as info:
        xlcfg.format_spec(channel)
    assert "'a.b'" in str(info.value)


def test_format_refuses_non_xen_targets() -> None:
    with pytest.raises(UnsupportedChannel):
        xlcfg.format_spec(Channel("a.b", Connection.PTY, target=Target.VIRTIO))
