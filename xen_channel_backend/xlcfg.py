"""The Xen side: xl.cfg file syntax and xl's channel SPEC grammar, pure strings.

Two layers, both modelled on what Xen 4.17's ``xl`` really does (background.md §3,
tests/data/xl-channel-spec-cases.txt, and tests/test_xl_conformance.py,
which runs the real ``xl -N create`` over the same inputs):

* the file syntax of libxlu (tools/libs/util/libxlu_cfg_l.l and
  libxlu_cfg_y.y): identifiers ``[a-z][._0-9a-z]*``, numbers, ``"..."`` and
  ``'...'`` strings with libxlu's escapes, ``#`` comments, ``;`` or a newline
  ending a setting, lists with newlines and a trailing comma, nested lists,
  ``+=``.  Any lexical or syntax error makes xl refuse the whole file, so it
  is an :class:`XlConfigError` here, with the file and line;
* the channel SPEC grammar of tools/xl/xl_parse.c: split on ``,`` skipping
  empty pieces (strtok), split each piece on ``=`` the same way keeping two
  parts, trim C ``isspace`` from key and value.

Where xl would silently lose information (``path=/a=b`` becomes ``/a``, a
nested list hides every channel after it, ``\\NNN`` escapes drop bytes) we
refuse instead of guessing.  We are stricter than xl only where libxl would
fail at start anyway (a missing name) or where the shared name/path rules of
:mod:`model` apply.

Every ``channel`` setting keeps its character span, so :func:`replace_channels`
can rewrite just those settings and leave every other byte of the file,
comments included, as it was.
"""

from __future__ import annotations

import dataclasses
import re
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import TypeAlias

from .errors import (
    InvalidChannelName,
    InvalidSocketPath,
    UnsupportedChannel,
    XlConfigError,
    shown,
)
from .model import Channel, Connection, Target
from .translate import CONNECTIONS, XL_FIELDS, XL_KEYS, connection_from_xl

#: Deeper list nesting is refused (xl's bison parser stops between about 2,500
#: and 5,000 levels, depending on the content; no real xl.cfg nests past 2).
MAX_LIST_DEPTH = 1000

#: The setting xl reads channels from (xl_parse.c: xlu_cfg_get_list(config, "channel")).
CHANNEL_SETTING = "channel"

# C isspace() in the "C" locale, which xl's trim() uses; str.strip() would
# also strip Unicode spaces that xl keeps.
_C_SPACE = " \t\n\v\f\r"


# --- values -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Atom:
    """A string or number value (libxlu stores numbers as their text)."""

    text: str
    line: int


XlValue: TypeAlias = "Atom | tuple[XlValue, ...]"


@dataclasses.dataclass(frozen=True, slots=True)
class Setting:
    """One ``NAME = VALUE`` or ``NAME += VALUE`` as written in the file.

    ``start``/``end`` delimit the setting's text (from the name to the end
    of the value, excluding the ``;`` or newline that ends it).
    """

    name: str
    append: bool
    value: XlValue
    line: int
    start: int
    end: int


class XlConfig:
    """A parsed xl.cfg: its text, and where each setting's value is in it.

    Parsing validates the whole file but keeps no value: only, for each
    name, where the settings that make its value start (the last ``=`` and
    the ``+=`` after it), and where every ``channel`` setting starts.  A
    value is built from the text when :meth:`value` asks for it.  So memory
    stays near the size of the text whatever the file holds (issue 9: a
    token list and a value per setting cost 180 bytes per input byte).
    """

    __slots__ = ("_appends", "_bases", "_channels", "end", "source", "text")

    def __init__(
        self,
        source: str,
        text: str,
        end: int,
        bases: dict[str, int],
        appends: dict[str, array[int]],
        channels: array[int],
    ) -> None:
        self.source = source
        self.text = text
        #: Where xl's input ends: before a stray last byte that its lexer drops.
        self.end = end
        # name -> start of the setting its value begins with (the last `=`).
        self._bases = bases
        # name -> [1 if that value is a list else 0, start of each `+=` after it].
        self._appends = appends
        # Start of every `channel` setting, in file order.
        self._channels = channels

    def value(self, name: str) -> XlValue | None:
        """The value xl sees for ``name``: the last assignment plus any ``+=`` after it."""
        base = self._bases.get(name)
        if base is None:
            return None
        text = self.text
        # appends[name] is the kind of the base value, then each `+=`.
        starts = [base, *self._appends.get(name, (0,))[1:]]
        line, counted = _line_at(text, base), base
        pieces: list[XlValue] = []
        for start in starts:
            line += text.count("\n", counted, start)
            counted = start
            head = _SETTING_RE.match(text, start, self.end)
            assert head is not None  # validated by parse_config
            pieces.append(_build_value(text, head.end(), line))
        first = pieces[0]
        if len(pieces) == 1:
            return first
        # libxlu's xlu__cfg_set_store: strings join, lists extend (types were
        # checked by parse_config).  One join: a chain of `+=` stays linear.
        if isinstance(first, Atom):
            last = pieces[-1]
            assert isinstance(last, Atom)
            return Atom("".join(p.text for p in pieces if isinstance(p, Atom)), last.line)
        items: list[XlValue] = []
        for piece in pieces:
            assert isinstance(piece, tuple)
            items.extend(piece)
        return tuple(items)

    def channel_settings(self) -> list[Setting]:
        """Every ``channel =`` and ``channel +=`` setting, in file order."""
        settings: list[Setting] = []
        text = self.text
        line, counted = 1, 0
        for start in self._channels:
            line += text.count("\n", counted, start)
            counted = start
            head = _SETTING_RE.match(text, start, self.end)
            assert head is not None
            value = _build_value(text, head.end(), line)
            end = _value_end(text, head.end(), self.end, self.source)
            settings.append(Setting(head[1], head[2] == "+=", value, line, start, end))
        return settings

    def channel_spans(self) -> list[tuple[int, int]]:
        """(start, end) of every ``channel`` setting, without building its value."""
        spans = []
        for start in self._channels:
            head = _SETTING_RE.match(self.text, start, self.end)
            assert head is not None
            spans.append((start, _value_end(self.text, head.end(), self.end, self.source)))
        return spans

    def channel_line(self) -> int | None:
        """The line of the last ``channel`` setting (the one xl's messages name)."""
        return _line_at(self.text, self._channels[-1]) if self._channels else None


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedChannels:
    """The channels xl would configure, with warnings for what xl ignores."""

    channels: tuple[Channel, ...]
    warnings: tuple[str, ...]


# --- lexer and parser (libxlu_cfg_l.l, libxlu_cfg_y.y) -------------------------
#
# The file is read in two passes, both by regular expressions that consume
# many tokens per call and allocate nothing per token:
#
# 1. lexing: one match of "any number of tokens" must reach the end of the
#    file (or a stray last byte, which flex drops); where it stops is the
#    lexical error xl reports.  Lexing comes first as in the old token list,
#    so a lexical error anywhere wins over a syntax error before it.
# 2. syntax: settings, values and lists are checked by the grammar and
#    only the start of each setting is kept (XlConfig).
#
# Every token pattern is one flex rule.  Flex takes the longest match: the
# possessive quantifiers (*+) never give back, which is the same thing for
# these patterns, and let a token run over millions of bytes without
# building a backtracking stack.

_IDENT = r"[a-z][._0-9a-z]*+"
_NUMBER = r"[0-9][0-9a-fx]*+"
_STRING = r"""'[^'\\\n]*+(?:\\[^\n][^'\\\n]*+)*+'|"[^"\\\n]*+(?:\\[^\n][^"\\\n]*+)*+\""""
# A string with only the escapes libxlu's dequote accepts (and we keep).
_GOOD_STRING = r"""'(?:[^'\\\n]++|\\["'\\abfnrtv])*+'|"(?:[^"\\\n]++|\\["'\\abfnrtv])*+\""""
# Spaces, newlines and comments: libxlu's `nlok` inside lists.
_NL = r"(?:[ \t\n]++|\#[^\n]*+\n)*+"

# One token, for messages (what xl says it found).
_TOKEN_RE = re.compile(
    rf"""
    [ \t]*+  # flex's whitespace rule, folded into the next token's match
    (?:
      (?P<ident>{_IDENT})
    | (?P<number>{_NUMBER})
    | (?P<punct>\+=|[,\[\]=;])
    | (?P<newline>\n|\#[^\n]*+\n)
    | (?P<string>{_STRING})
    )
    """,
    re.VERBOSE,
)
# Pass 1: as many good tokens as there are (runs of one-character tokens
# and spaces in one step).
_TOKENS_RE = re.compile(
    rf"(?:[ \t;,\[\]=\n]++|\+=|{_IDENT}|{_NUMBER}|\#[^\n]*+\n|{_GOOD_STRING})*+"
)
# Pass 2: what may stand between settings (`;` and newlines, any number).
_GAP_RE = re.compile(r"(?:[ \t;\n]++|\#[^\n]*+\n)*+")
# NAME = or NAME +=, up to the value.
_SETTING_RE = re.compile(rf"({_IDENT})[ \t]*+(\+?=)[ \t]*+")
_ATOM_RE = re.compile(rf"{_NUMBER}|{_STRING}")
_A_VALUE = "a value (a quoted string, a number or a [list])"
_END_RE = re.compile(r"[ \t]*+(?:[;\n]|\#[^\n]*+\n|\Z)")
# The common case in one match: NAME = an atom or a flat list of atoms (the
# third group is its `[`), then `;`, a newline or the end.
_ATOM = rf"(?:{_NUMBER}|{_STRING})"
_SIMPLE_RE = re.compile(
    rf"({_IDENT})[ \t]*+(\+?=)[ \t]*+"
    rf"(?:{_ATOM}|(\[){_NL}(?:{_ATOM}{_NL},{_NL})*+(?:{_ATOM}{_NL})?\])"
    r"[ \t]*+(?:[;\n]|\#[^\n]*+\n|\Z)"
)
# Inside a list: any number of `atom ,` items with the newlines around them,
# and (below the depth limit, where `[` is always allowed) of `[ ] ,` too.
_FLAT_ITEMS_RE = re.compile(rf"{_NL}(?:(?:{_NUMBER}|{_STRING}){_NL},{_NL})*+")
_ITEMS_RE = re.compile(rf"{_NL}(?:(?:{_NUMBER}|{_STRING}|\[{_NL}\]){_NL},{_NL})*+")
_NL_RE = re.compile(_NL)
# Building a value: one token of it.
_VALUE_TOKEN_RE = re.compile(rf"[ \t]*+(?:(\n|\#[^\n]*+\n)|({_NUMBER})|({_STRING})|([\[\],]))")

_WORD = re.compile(r"[^ \t\n=]*")

_SIMPLE_ESCAPES = {
    '"': '"',
    "'": "'",
    "\\": "\\",
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
}
_ESCAPE_RE = re.compile(r"\\(.)")


def _line_at(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _dequote(quoted: str, source: str, line: int) -> str:
    # libxlu's xlu__cfgl_dequote.  Its \x escape always fails in 4.17 (it
    # skips a digit and then demands more than two), and its octal escape
    # either fails or drops the characters without storing any byte, so
    # both are refused: the first as xl does, the second because xl would
    # lose data silently.
    body = quoted[1:-1]
    if "\\" not in body:
        return body
    for escape in _ESCAPE_RE.finditer(body):
        escaped = escape[1]
        if escaped in _SIMPLE_ESCAPES:
            continue
        if escaped == "x":
            detail = "invalid \\x escape in quoted string (xl 4.17 refuses every \\x escape)"
        elif escaped in "01234567":
            detail = (
                f"octal escape \\{escaped} in quoted string: xl 4.17 drops such characters "
                "or refuses the file"
            )
        else:
            detail = f"invalid character {shown(escaped)} after backslash in quoted string"
        raise XlConfigError(source, detail, line)
    return _ESCAPE_RE.sub(lambda escape: _SIMPLE_ESCAPES[escape[1]], body)


class _Checker:
    """Both passes over one file; raises XlConfigError as xl would refuse it."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        self.end = len(text)

    # -- pass 1: lexing

    def lex(self) -> None:
        text, size = self.text, len(self.text)
        pos = _TOKENS_RE.match(text).end()  # type: ignore[union-attr]
        if pos == size:
            return
        token = _TOKEN_RE.match(text, pos)
        if token is not None and token.lastgroup == "string":
            # Lexed, but with an escape that dequoting refuses.
            _dequote(token["string"], self.source, _line_at(text, pos))
            raise AssertionError("unreachable: a refused escape was accepted")
        if pos == size - 1 and ord(text[pos]) < 0x80:
            # flex only reports a lexical error when its error rule matches
            # something after the bad byte; a bad last byte (a stray '#',
            # '(' or '\r' at EOF) is dropped without a word, and xl accepts
            # the file.
            self.end = pos
            return
        raise XlConfigError(self.source, self._lexical_error(pos), _line_at(text, pos))

    def _lexical_error(self, pos: int) -> str:
        char = self.text[pos]
        if char in "\"'":
            return f"unterminated {char}-quoted string (xl strings cannot span lines)"
        if char == "#":
            # flex's comment rule needs the newline: xl refuses a comment on
            # the last line of a file that does not end with a newline.
            return "comment at the end of the file without a final newline (xl refuses it)"
        if char == "\r":
            return "carriage return (CRLF line ends?): xl accepts only \\n line ends"
        if char == "\0":
            return "NUL byte in the file"
        if char.isupper():
            word = _WORD.match(self.text, pos, pos + 40)
            return (
                f"lexical error near {shown(word.group() if word else char)}: "
                "setting names are lower case in xl.cfg"
            )
        hint = " (Python is no longer supported in xl.cfg)" if char in "+,-.():" else ""
        return f"lexical error at {shown(char)}{hint}"

    # -- pass 2: syntax (the text lexes; every position here is a token boundary)

    def parse(self) -> XlConfig:
        text, end = self.text, self.end
        bases: dict[str, int] = {}
        appends: dict[str, array[int]] = {}
        channels: array[int] = array("q")
        mismatch: XlConfigError | None = None
        gap, simple = _GAP_RE.match, _SIMPLE_RE.match
        pos = 0
        while True:
            pos = gap(text, pos, end).end()  # type: ignore[union-attr]
            if pos >= end:
                break
            match = simple(text, pos, end)
            if match is not None:
                name, operator, bracket = match.group(1, 2, 3)
                next_pos, is_list = match.end(), bracket is not None
            else:
                name, operator, next_pos, is_list = self._setting(pos)
            if operator == "=" or name not in bases:
                bases[name] = pos
                appends.pop(name, None)
            else:
                chain = appends.get(name)
                if chain is None:
                    # The kind of the value so far, once per chain.
                    appends[name] = chain = array("q", [self._is_list(bases[name])])
                # libxlu's xlu__cfg_set_store: `+=` joins with the value so
                # far, which must be of the same kind.
                if mismatch is None and chain[0] != is_list:
                    mismatch = XlConfigError(
                        self.source,
                        f'can\'t add [list] to "string" or vice versa ({shown(name)} +=)',
                        _line_at(text, pos),
                    )
                chain.append(pos)
            if name == CHANNEL_SETTING:
                channels.append(pos)
            pos = next_pos
        if mismatch is not None:
            # After every syntax error, as xl: it stores settings once parsed.
            raise mismatch
        return XlConfig(self.source, text, end, bases, appends, channels)

    def _setting(self, pos: int) -> tuple[str, str, int, bool]:
        """(name, operator, where the next setting may start, is a list) at ``pos``."""
        text, end = self.text, self.end
        head = _SETTING_RE.match(text, pos, end)
        if head is None:
            name = re.match(_IDENT, text[pos : pos + 100])
            if name is None:
                raise self._expected("a setting name", pos)
            after = pos + len(name.group())
            raise self._expected(f"`=' or `+=' after {shown(name.group())}", after)
        value_end = _value_end(text, head.end(), end, self.source)
        stop = _END_RE.match(text, value_end, end)
        if stop is None:
            raise self._expected("`;' or a new line after the value", value_end)
        return head[1], head[2], stop.end(), text.startswith("[", head.end())

    def _is_list(self, start: int) -> bool:
        head = _SETTING_RE.match(self.text, start, self.end)
        assert head is not None
        return self.text.startswith("[", head.end())

    def _expected(self, what: str, pos: int) -> XlConfigError:
        return _expected(self.text, pos, self.end, self.source, what)


def _expected(text: str, pos: int, end: int, source: str, what: str) -> XlConfigError:
    """A syntax error naming the token at ``pos`` as xl's message would."""
    token = _TOKEN_RE.match(text, pos, end)
    if token is None:
        found, at = "end of file", pos
    else:
        kind = token.lastgroup or ""
        at = token.start(kind)
        if kind == "newline":
            found = "end of line"
        elif kind == "string":
            found = shown(_dequote(token[kind], source, _line_at(text, at)))
        else:
            found = shown(token[kind][:40])
    detail = f"syntax error: expected {what}, found {found}"
    return XlConfigError(source, detail, _line_at(text, at))


def _value_end(text: str, pos: int, end: int, source: str) -> int:
    """Where the value starting at ``pos`` ends; raise XlConfigError if there is none."""
    if not text.startswith("[", pos, end):
        atom = _ATOM_RE.match(text, pos, end)
        if atom is None:
            raise _expected(text, pos, end, source, _A_VALUE)
        return atom.end()
    # A list: a depth counter instead of recursion, so hostile nesting
    # cannot exhaust Python's stack; flat runs of items in one match.
    newlines, atoms = _NL_RE.match, _ATOM_RE.match
    depth, pos = 1, pos + 1
    while True:
        # Just after `[` or `,`: a value, or `]`.
        items = _ITEMS_RE if depth < MAX_LIST_DEPTH else _FLAT_ITEMS_RE
        pos = items.match(text, pos, end).end()  # type: ignore[union-attr]
        char = text[pos : pos + 1] if pos < end else ""
        if char == "[":
            if depth >= MAX_LIST_DEPTH:
                raise XlConfigError(
                    source,
                    f"lists nested deeper than {MAX_LIST_DEPTH} levels "
                    "(xl's own parser gives up at a few thousand)",
                    _line_at(text, pos),
                )
            depth, pos = depth + 1, pos + 1
            continue
        if char == "]":
            depth, pos = depth - 1, pos + 1
        else:
            atom = atoms(text, pos, end)
            if atom is None:
                raise _expected(text, pos, end, source, _A_VALUE)
            pos = atom.end()
        # A value is complete: the whole list, or an item of the open one.
        while depth:
            pos = newlines(text, pos, end).end()  # type: ignore[union-attr]
            char = text[pos : pos + 1] if pos < end else ""
            if char == "]":
                depth, pos = depth - 1, pos + 1
            elif char == ",":
                pos += 1
                break
            else:
                raise _expected(text, pos, end, source, "`,' or `]' in a list")
        else:
            return pos


def _build_value(text: str, pos: int, line: int) -> XlValue:
    """The value at ``pos`` (on ``line``) of a checked text, with each atom's line."""
    # Each open list is the items read so far: a stack, not recursion.
    open_lists: list[list[XlValue]] = []
    token = _VALUE_TOKEN_RE.match
    while True:
        match = token(text, pos)
        assert match is not None  # the text was checked
        pos = match.end()
        newline, number, string, punct = match.groups()
        value: XlValue
        if number is not None:
            value = Atom(number, line)
        elif string is not None:
            value = Atom(_dequote(string, "", line), line)
        elif punct == "[":
            open_lists.append([])
            continue
        elif punct == "]":
            value = tuple(open_lists.pop())
        else:
            if newline is not None:
                line += 1
            continue  # a newline, a comment or a `,`
        if not open_lists:
            return value
        open_lists[-1].append(value)


def parse_config(data: bytes | str, source: str) -> XlConfig:
    """Parse an xl.cfg as libxlu does; raise XlConfigError naming ``source`` and the line.

    The file must be UTF-8 (deliberately stricter than xl, which takes any
    8-bit bytes): channel names are ASCII, and the file is re-emitted as text.
    Time and memory are linear in the size of the file.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise XlConfigError(source, f"not valid UTF-8 (byte {exc.start})", line) from None
    else:
        text = data
    if "\0" in text:
        # libxlu hands strings to C as NUL-terminated: a NUL truncates or crashes.
        line = text.count("\n", 0, text.index("\0")) + 1
        raise XlConfigError(source, "NUL byte in the file", line)
    checker = _Checker(text, source)
    checker.lex()
    # Also raises for `+=` of a list to a string, which xl refuses.
    return checker.parse()



# --- channel SPECs (xl_parse.c) -----------------------------------------------


def _strtok(text: str, delimiter: str) -> list[str]:
    return [piece for piece in text.split(delimiter) if piece]


@dataclasses.dataclass(frozen=True, slots=True)
class SpecLocation:
    """Where a SPEC came from, for messages: file, line and "channel N"."""

    source: str = "<spec>"
    line: int | None = None
    label: str = ""

    def error(self, detail: str) -> XlConfigError:
        return XlConfigError(
            self.source, f"{self.label}: {detail}" if self.label else detail, self.line
        )

    def warning(self, detail: str) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        return f"{where}: {self.label}: {detail}" if self.label else f"{where}: {detail}"


def _spec_fields(spec: str, where: SpecLocation) -> tuple[dict[str, str], list[str]]:
    """Split one SPEC into {xl key: value} as xl does; return (fields, warnings).

    Raises XlConfigError for everything xl refuses, and for pieces whose
    meaning xl would change silently.
    """
    pieces = _strtok(spec, ",")
    if not pieces:
        raise where.error(f"empty channel spec {shown(spec)} (xl 4.17 crashes on it)")
    fields: dict[str, str] = {}
    warnings: list[str] = []
    for piece in pieces:
        parts = _strtok(piece, "=")
        if len(parts) < 2:
            raise where.error(f"{shown(piece)} is not KEY=VALUE (xl refuses it)")
        if piece.count("=") > 1:
            kept = parts[1].strip(_C_SPACE)
            raise where.error(
                f"{shown(piece)} has more than one '=': xl would silently take {shown(kept)}"
            )
        key, value = parts[0].strip(_C_SPACE), parts[1].strip(_C_SPACE)
        if key not in XL_KEYS:
            warnings.append(
                where.warning(f"unknown channel parameter {shown(key)} ignored (as xl does)")
            )
            continue
        if not value:
            raise where.error(f"{key}= has an empty value")
        if key == "connection" and connection_from_xl(value) is None:
            # xl stops at the first bad connection= even if a later one is good.
            raise where.error(
                f"unknown channel connection {shown(value)} (xl accepts only pty or socket)"
            )
        if key in fields:
            warnings.append(
                where.warning(
                    f"{key}= given more than once; the last one, {shown(value)}, wins (as in xl)"
                )
            )
        fields[key] = value
    return fields, warnings


# (attribute, xl key, connections that carry it), in translate.FIELDS order.
_SPEC_KEYS: tuple[tuple[str, str, frozenset[Connection]], ...] = tuple(
    (f.attr, f.xl_key, f.xl_connections) for f in XL_FIELDS if f.xl_key is not None
)


def parse_spec(spec: str, where: SpecLocation | None = None) -> tuple[Channel, list[str]]:
    """One xl channel SPEC -> (Channel, warnings), driven by translate.FIELDS."""
    where = where or SpecLocation()
    fields, warnings = _spec_fields(spec, where)
    values: dict[str, str | None] = {}
    for attr, key, _connections in _SPEC_KEYS:
        values[attr] = fields.get(key)
    raw_connection = values.pop("connection")
    if raw_connection is None:
        raise where.error("channel has no connection= (xl requires pty or socket)")
    connection = connection_from_xl(raw_connection)
    assert connection is not None  # checked in _spec_fields
    for attr, key, connections in _SPEC_KEYS:
        if values.get(attr) is not None and connection not in connections:
            warnings.append(
                where.warning(f"{key}= is ignored for connection={raw_connection} (as xl does)")
            )
            values[attr] = None
    if connection is Connection.SOCKET and values["path"] is None:
        raise where.error("channel connection 'socket' requires path=")
    try:
        channel = Channel(
            name=values["name"],
            connection=connection,
            path=values["path"],
            backend=values["backend"],
            target=Target.XEN,
        )
    except (InvalidChannelName, InvalidSocketPath, UnsupportedChannel) as exc:
        raise where.error(exc.message()) from exc
    return channel, warnings


def read_channels(config: XlConfig) -> ParsedChannels:
    """The channels xl would configure from ``config``, in order."""
    value = config.value(CHANNEL_SETTING)
    if value is None:
        return ParsedChannels((), ())
    if isinstance(value, Atom):
        # xlu_cfg_get_list warns and xl carries on without channels.
        where = f"{config.source}:{config.channel_line()}"
        return ParsedChannels(
            (), (f"{where}: `channel' is a single value but should be a list; xl ignores it",)
        )
    channels: list[Channel] = []
    warnings: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, Atom):
            # xl stops at the first item that is not a string and ignores
            # the rest without a word.
            line = _first_line(item) or config.channel_line()
            raise XlConfigError(
                config.source,
                f"channel {index + 1} is a nested list; xl would silently ignore it "
                "and every channel after it",
                line,
            )
        location = SpecLocation(config.source, item.line, f"channel {index + 1}")
        channel, spec_warnings = parse_spec(item.text, location)
        channels.append(channel)
        warnings.extend(spec_warnings)
    return ParsedChannels(tuple(channels), tuple(warnings))


def _first_line(value: XlValue) -> int | None:
    if isinstance(value, Atom):
        return value.line
    for item in value:
        line = _first_line(item)
        if line is not None:
            return line
    return None


def backends_by_name(config: XlConfig) -> dict[str, str]:
    """``backend=`` of each named channel in ``config``, read leniently.

    Used when an xl.cfg's channels are replaced from XML, which cannot hold
    a backend: a channel that keeps its name keeps its backend.  Specs that
    xl would refuse are skipped here, since they are being replaced anyway.
    """
    value = config.value(CHANNEL_SETTING)
    found: dict[str, str] = {}
    if not isinstance(value, tuple):
        return found
    for item in value:
        if not isinstance(item, Atom):
            break
        try:
            fields, _warnings = _spec_fields(item.text, SpecLocation(config.source, item.line))
        except XlConfigError:
            continue
        if "name" in fields and "backend" in fields:
            found[fields["name"]] = fields["backend"]
    return found


# --- formatting ---------------------------------------------------------------

# A value goes between double quotes with no escapes at all: xl's SPEC
# grammar splits on ',' and '=', libxlu would read a backslash as an escape
# (and its \x escapes are broken in 4.17), and xl trims whitespace, so a value
# must be non-empty, free of those characters and untrimmed.  C isspace() is
# " \t\n\v\f\r": all of it is in \x00-\x20.
_UNCARRIABLE = re.compile(r'[,="\\\x00-\x1f\x7f]')
_VALUE = r'[^,="\\\x00-\x20\x7f](?:[^,="\\\x00-\x1f\x7f]*[^,="\\\x00-\x20\x7f])?'
_CARRIABLE = re.compile(_VALUE)

# What is left to check of a value, per xl key: a Channel has passed the
# model's rules, and for a Xen channel those already rule out most of what a
# SPEC cannot carry.  A name has only NAME_RULE's characters
# (model.validate_name); a path has no ',', '=', '"', no control character
# and no whitespace at an end (model.validate_path(for_xl=True)), which
# leaves a backslash; a backend is only known to be non-blank.  Checking
# only the rest saves a third of formatting; tests/test_translate_properties.py
# pins the model's side of this.
_BACKSLASH = re.compile(r"\\")
_LEFT_TO_CHECK: dict[str, Callable[[str], object]] = {
    "name": lambda _value: False,
    "path": _BACKSLASH.search,
    "backend": lambda value: _CARRIABLE.fullmatch(value) is None,
}

# Per connection type, in translate.FIELDS order: (attribute, xl key, the
# whole piece when it is a constant (``connection=socket``), else the check
# that finds a value xl.cfg cannot carry).
_SPEC_PLAN: dict[
    Connection, tuple[tuple[str, str, str | None, Callable[[str], object]], ...]
] = {
    connection: tuple(
        (
            attr,
            key,
            f"{key}={CONNECTIONS[connection][0]}" if attr == "connection" else None,
            _LEFT_TO_CHECK.get(key, lambda value: _CARRIABLE.fullmatch(value) is None),
        )
        for attr, key, carried in _SPEC_KEYS
        if connection in carried
    )
    for connection in Connection
}


def format_spec(channel: Channel) -> str:
    """``connection=socket,path=P,name=N[,backend=B]``: libvirt's key order, by FIELDS."""
    if channel.target is not Target.XEN:
        raise UnsupportedChannel(channel.name, f"is a {channel.target} channel, not a Xen one")
    pieces: list[str] = []
    for attr, key, constant, uncarriable in _SPEC_PLAN[channel.connection]:
        if constant is not None:
            pieces.append(constant)
            continue
        value = getattr(channel, attr)
        if value is None:
            continue
        if uncarriable(value):
            _refuse(channel, key, value)
        pieces.append(f"{key}={value}")
    return ",".join(pieces)


def _refuse(channel: Channel, key: str, value: str) -> None:
    bad = _UNCARRIABLE.search(value)
    if bad is not None:
        reason = f"contains {shown(bad.group())}, which xl.cfg cannot carry"
    else:
        reason = "is empty or has whitespace at an end, which xl trims"
    raise UnsupportedChannel(channel.name, f"{key} {shown(value)} {reason}")


def format_setting(channels: Sequence[Channel]) -> str:
    """The one-line setting ``channel = [ "SPEC", ... ]`` (no newline)."""
    specs = ", ".join([f'"{format_spec(channel)}"' for channel in channels])
    return f"{CHANNEL_SETTING} = [ {specs} ]"


def replace_channels(config: XlConfig, channels: Iterable[Channel]) -> str:
    """``config``'s text with its channel settings replaced by ``channels``.

    Every ``channel =`` and ``channel +=`` setting is removed and the new
    setting takes the place of the first one (or is appended at the end,
    before a stray last byte that xl drops, so xl still accepts the file).
    A removed setting that stood alone on its line takes its line with it;
    every other character of the file is kept.  With no channels, the
    settings are only removed.
    """
    channel_list = list(channels)
    new = format_setting(channel_list) if channel_list else None
    text = config.text
    spans = config.channel_spans()
    if not spans:
        if new is None:
            return text
        # A stray last byte that xl drops must stay last: after our line,
        # xl would see it and refuse the file (issue 9).
        head, stray = text[: config.end], text[config.end :]
        separator = "" if not head or head.endswith("\n") else "\n"
        return f"{head}{separator}{new}\n{stray}"
    pieces: list[str] = []
    cursor = 0
    for index, (start, end) in enumerate(spans):
        if index == 0 and new is not None:
            pieces.append(text[cursor:start])
            pieces.append(new)
            cursor = end
            continue
        start, end = _whole_line_span(text, start, end)
        pieces.append(text[cursor:start])
        cursor = end
    pieces.append(text[cursor:])
    return "".join(pieces)


def _whole_line_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen (start, end) to its whole line when nothing else is on that line."""
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    if (
        text[line_start:start].strip(" \t")
        or (line_end != -1 and text[end:line_end].strip(" \t"))
        or (line_end == -1 and text[end:].strip(" \t"))
    ):
        return start, end
    return line_start, (line_end + 1 if line_end != -1 else len(text))


__all__ = [
    "CHANNEL_SETTING",
    "Atom",
    "ParsedChannels",
    "Setting",
    "SpecLocation",
    "XlConfig",
    "XlValue",
    "backends_by_name",
    "format_setting",
    "format_spec",
    "parse_config",
    "parse_spec",
    "read_channels",
    "replace_channels",
]
