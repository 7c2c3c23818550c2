"""The Xen side: xl.cfg file syntax and xl's channel SPEC grammar, pure strings.

Two layers, both modelled on what Xen 4.17's ``xl`` really does (FACTS §3,
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
from collections.abc import Iterable, Sequence
from typing import NamedTuple, TypeAlias

from .errors import (
    InvalidChannelName,
    InvalidSocketPath,
    UnsupportedChannel,
    XlConfigError,
    shown,
)
from .model import Channel, Connection, Target
from .translate import CONNECTIONS, FIELDS, XL_KEYS, connection_from_xl

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


@dataclasses.dataclass(frozen=True, slots=True)
class XlConfig:
    """A parsed xl.cfg: its text and its settings in file order."""

    source: str
    text: str
    settings: tuple[Setting, ...]
    #: What xl sees for each name: the last assignment plus any ``+=`` after it.
    values: dict[str, XlValue] = dataclasses.field(default_factory=dict, compare=False)
    #: Where xl's input ends: before a stray last byte that its lexer drops.
    end: int = -1

    def value(self, name: str) -> XlValue | None:
        """The value xl sees for ``name``: the last assignment plus any ``+=`` after it."""
        return self.values.get(name)

    def channel_settings(self) -> list[Setting]:
        return [s for s in self.settings if s.name == CHANNEL_SETTING]


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedChannels:
    """The channels xl would configure, with warnings for what xl ignores."""

    channels: tuple[Channel, ...]
    warnings: tuple[str, ...]


# --- lexer (libxlu_cfg_l.l) ---------------------------------------------------

# One alternation per flex rule.  Flex takes the longest match and, on a tie,
# the earlier rule; every rule here that can tie with another is listed in
# flex's order, and `+=` (two characters) beats the one-character `+` of the
# "looks like Python" rule because it is longer.
_TOKEN_RE = re.compile(
    r"""
    [ \t]*  # flex's whitespace rule, folded into the next token's match
    (?:
      (?P<ident>[a-z][._0-9a-z]*)
    | (?P<number>[0-9][0-9a-fx]*)
    | (?P<punct>\+=|[,\[\]=;])
    | (?P<newline>\n|\#[^\n]*\n)
    | (?P<string>'[^'\\\n]*(?:\\[^\n][^'\\\n]*)*'|"[^"\\\n]*(?:\\[^\n][^"\\\n]*)*")
    )
    """,
    re.VERBOSE,
)

_SPACES = re.compile(r"[ \t]*")
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


class _Token(NamedTuple):
    kind: str  # ident, number, string, newline, eof, or the punctuation itself
    text: str  # the dequoted text for strings
    line: int
    start: int
    end: int


class _Lexer:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source
        #: Where a stray last byte that xl drops starts (else the text's length).
        self.stray = len(text)

    def error(self, line: int, detail: str) -> XlConfigError:
        return XlConfigError(self.source, detail, line)

    def tokens(self) -> list[_Token]:
        text, pos, line = self.text, 0, 1
        out: list[_Token] = []
        size = len(text)
        while pos < size:
            match = _TOKEN_RE.match(text, pos)
            if match is None:
                pos = _SPACES.match(text, pos).end()  # type: ignore[union-attr]
                if pos >= size:
                    break
                if pos == size - 1 and ord(text[pos]) < 0x80:
                    # flex only reports a lexical error when its error rule
                    # matches something after the bad byte; a bad last byte
                    # (a stray '#', '(' or '\r' at EOF) is dropped without a
                    # word, and xl accepts the file.
                    self.stray = pos
                    break
                raise self.error(line, self._lexical_error(pos))
            kind = match.lastgroup or ""
            start, end = match.start(kind), match.end()
            if kind == "newline":
                out.append(_Token("newline", "", line, start, end))
                line += 1
            elif kind == "string":
                out.append(_Token("string", self._dequote(match[kind], line), line, start, end))
            elif kind == "punct":
                out.append(_Token(match[kind], match[kind], line, start, end))
            else:
                out.append(_Token(kind, match[kind], line, start, end))
            pos = end
        out.append(_Token("eof", "", line, pos, pos))
        return out

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

    def _dequote(self, quoted: str, line: int) -> str:
        # libxlu's xlu__cfgl_dequote.  Its \x escape always fails in 4.17 (it
        # skips a digit and then demands more than two), and its octal escape
        # either fails or drops the characters without storing any byte, so
        # both are refused: the first as xl does, the second because xl would
        # lose data silently.
        body = quoted[1:-1]
        if "\\" not in body:
            return body
        out: list[str] = []
        i = 0
        while i < len(body):
            char = body[i]
            if char != "\\":
                out.append(char)
                i += 1
                continue
            escaped = body[i + 1]
            i += 2
            if escaped in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[escaped])
            elif escaped == "x":
                raise self.error(
                    line, "invalid \\x escape in quoted string (xl 4.17 refuses every \\x escape)"
                )
            elif escaped in "01234567":
                raise self.error(
                    line,
                    f"octal escape \\{escaped} in quoted string: xl 4.17 drops such characters "
                    "or refuses the file",
                )
            else:
                raise self.error(
                    line, f"invalid character {shown(escaped)} after backslash in quoted string"
                )
        return "".join(out)


# --- parser (libxlu_cfg_y.y) --------------------------------------------------


class _Parser:
    """Recursive descent over libxlu's LALR grammar; any error is fatal, as in xl."""

    def __init__(self, tokens: list[_Token], source: str) -> None:
        self.tokens = tokens
        self.pos = 0
        self.source = source

    @property
    def current(self) -> _Token:
        return self.tokens[self.pos]

    def advance(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def expected(self, what: str) -> XlConfigError:
        token = self.current
        found = {"eof": "end of file", "newline": "end of line"}.get(token.kind)
        if found is None:
            found = shown(token.text) if token.kind == "string" else shown(token.text[:40])
        detail = f"syntax error: expected {what}, found {found}"
        return XlConfigError(self.source, detail, token.line)

    def skip_newlines(self) -> None:
        while self.current.kind == "newline":
            self.advance()

    def parse_file(self) -> list[Setting]:
        settings: list[Setting] = []
        while self.current.kind != "eof":
            if self.current.kind in ("newline", ";"):
                self.advance()
                continue
            if self.current.kind != "ident":
                raise self.expected("a setting name")
            settings.append(self.parse_assignment())
            if self.current.kind in ("newline", ";"):
                self.advance()
            elif self.current.kind != "eof":
                raise self.expected("`;' or a new line after the value")
        return settings

    def parse_assignment(self) -> Setting:
        name = self.advance()
        if self.current.kind not in ("=", "+="):
            raise self.expected(f"`=' or `+=' after {shown(name.text)}")
        append = self.advance().kind == "+="
        value_line = self.current.line
        value = self.parse_value()
        end = self.tokens[self.pos - 1].end
        return Setting(name.text, append, value, value_line, name.start, end)

    def parse_value(self) -> XlValue:
        """A string, a number, or a list of values (iterative: lists nest deeply)."""
        # Each open list is the items read so far; a stack instead of
        # recursion, so hostile nesting cannot exhaust Python's stack.
        open_lists: list[list[XlValue]] = []
        while True:
            token = self.current
            if token.kind == "[":
                if len(open_lists) >= MAX_LIST_DEPTH:
                    raise XlConfigError(
                        self.source,
                        f"lists nested deeper than {MAX_LIST_DEPTH} levels "
                        "(xl's own parser gives up at a few thousand)",
                        token.line,
                    )
                self.advance()
                self.skip_newlines()
                if self.current.kind != "]":
                    open_lists.append([])
                    continue  # read the first item
                value: XlValue = ()
                self.advance()
            elif token.kind in ("string", "number"):
                self.advance()
                value = Atom(token.text, token.line)
            else:
                raise self.expected("a value (a quoted string, a number or a [list])")
            # A value is complete: it is the result, or the next item of a list.
            while open_lists:
                open_lists[-1].append(value)
                self.skip_newlines()
                if self.current.kind == ",":
                    self.advance()
                    self.skip_newlines()
                    if self.current.kind != "]":
                        break  # read the next item
                elif self.current.kind != "]":
                    raise self.expected("`,' or `]' in a list")
                self.advance()
                value = tuple(open_lists.pop())
            else:
                return value


def parse_config(data: bytes | str, source: str) -> XlConfig:
    """Parse an xl.cfg as libxlu does; raise XlConfigError naming ``source`` and the line.

    The file must be UTF-8 (deliberately stricter than xl, which takes any
    8-bit bytes): channel names are ASCII, and the file is re-emitted as text.
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
    lexer = _Lexer(text, source)
    tokens = lexer.tokens()
    settings = tuple(_Parser(tokens, source).parse_file())
    # Also raises for `+=` of a list to a string, which xl refuses.
    return XlConfig(source, text, settings, _effective_values(source, settings), lexer.stray)


def _effective_values(source: str, settings: Iterable[Setting]) -> dict[str, XlValue]:
    # libxlu's xlu__cfg_set_store: `+=` concatenates with the newest earlier
    # setting of that name (strings join, lists extend) and a later `=`
    # replaces everything before it.
    values: dict[str, XlValue] = {}
    for setting in settings:
        previous = values.get(setting.name)
        if not setting.append or previous is None:
            values[setting.name] = setting.value
        elif isinstance(previous, Atom) and isinstance(setting.value, Atom):
            values[setting.name] = Atom(previous.text + setting.value.text, setting.value.line)
        elif isinstance(previous, tuple) and isinstance(setting.value, tuple):
            values[setting.name] = previous + setting.value
        else:
            raise XlConfigError(
                source,
                f'can\'t add [list] to "string" or vice versa ({shown(setting.name)} +=)',
                setting.line,
            )
    return values


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


def parse_spec(spec: str, where: SpecLocation | None = None) -> tuple[Channel, list[str]]:
    """One xl channel SPEC -> (Channel, warnings), driven by translate.FIELDS."""
    where = where or SpecLocation()
    fields, warnings = _spec_fields(spec, where)
    values: dict[str, str | None] = {}
    for field in FIELDS:
        values[field.attr] = fields.get(field.xl_key)
    raw_connection = values.pop("connection")
    if raw_connection is None:
        raise where.error("channel has no connection= (xl requires pty or socket)")
    connection = connection_from_xl(raw_connection)
    assert connection is not None  # checked in _spec_fields
    for field in FIELDS:
        if values.get(field.attr) is not None and connection not in field.xl_connections:
            warnings.append(
                where.warning(
                    f"{field.xl_key}= is ignored for connection={raw_connection} (as xl does)"
                )
            )
            values[field.attr] = None
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
    settings = config.channel_settings()
    if isinstance(value, Atom):
        # xlu_cfg_get_list warns and xl carries on without channels.
        where = f"{config.source}:{settings[-1].line}"
        return ParsedChannels(
            (), (f"{where}: `channel' is a single value but should be a list; xl ignores it",)
        )
    channels: list[Channel] = []
    warnings: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, Atom):
            # xl stops at the first item that is not a string and ignores
            # the rest without a word.
            line = _first_line(item) or settings[-1].line
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
# must be non-empty, free of those characters and untrimmed.
_UNCARRIABLE = re.compile(r'[,="\\\x00-\x1f\x7f]')

# (attribute, xl key) per connection type, in FIELDS order.
_XL_FIELDS: dict[Connection, tuple[tuple[str, str], ...]] = {
    connection: tuple((f.attr, f.xl_key) for f in FIELDS if connection in f.xl_connections)
    for connection in Connection
}


def format_spec(channel: Channel) -> str:
    """``connection=socket,path=P,name=N[,backend=B]``: libvirt's key order, by FIELDS."""
    if channel.target is not Target.XEN:
        raise UnsupportedChannel(channel.name, f"is a {channel.target} channel, not a Xen one")
    pieces: list[str] = []
    for attr, key in _XL_FIELDS[channel.connection]:
        raw = getattr(channel, attr)
        if raw is None:
            continue
        value: str = CONNECTIONS[raw][0] if attr == "connection" else raw
        if (
            not value
            or value[0] in _C_SPACE
            or value[-1] in _C_SPACE
            or _UNCARRIABLE.search(value) is not None
        ):
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
    specs = ", ".join(f'"{format_spec(channel)}"' for channel in channels)
    return f"{CHANNEL_SETTING} = [ {specs} ]"


def replace_channels(config: XlConfig, channels: Iterable[Channel]) -> str:
    """``config``'s text with its channel settings replaced by ``channels``.

    Every ``channel =`` and ``channel +=`` setting is removed and the new
    setting takes the place of the first one (or is appended at the end).
    A removed setting that stood alone on its line takes its line with it;
    every other character of the file is kept.  With no channels, the
    settings are only removed.
    """
    channel_list = list(channels)
    new = format_setting(channel_list) if channel_list else None
    text = config.text
    spans = [(s.start, s.end) for s in config.channel_settings()]
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
