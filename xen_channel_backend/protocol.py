"""Channel protocol v1: framing and messages, with no I/O (see docs/protocol.md).

The same byte stream runs from QEMU's Unix socket in dom0 to a tty
(``/dev/hvcN``) in the guest.  Neither end can tell where the other's
previous session stopped: QEMU keeps the guest side open across dom0
reconnects, so a new client can meet half a frame written for the last
one (the reason qemu-ga has ``guest-sync-delimited``).  Framing therefore
starts every frame with a sync byte, 0xFF, which never occurs inside a
frame: the body is JSON serialised as ASCII, and a UTF-8/ASCII stream
never contains 0xFF.  A reader drops everything up to the next 0xFF and
can always find the start of the next good frame.

Frame = ``0xFF`` + one JSON object (ASCII, no raw newline) + ``\\n``,
at most :data:`MAX_FRAME` bytes counting the sync byte and the newline.

Everything here is sans-IO: :class:`FrameSplitter` and
:class:`FrameDecoder` take bytes and return frames, and report bad peer
data as :class:`FrameError` *values*, never as exceptions, so a broker can
keep serving other consumers and channels.  Exceptions are raised only for
our own mistakes (:func:`encode` of a message that cannot be sent).
"""

from __future__ import annotations

import json
import re
import secrets
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from .errors import InvalidMessage, escaped, shown

MAX_FRAME: Final = 1048576
SYNC: Final = b"\xff"
NEWLINE: Final = b"\n"
PROTOCOL_VERSIONS: Final = (1,)

# Message types of protocol v1.
HELLO: Final = "hello"
HELLO_ACK: Final = "hello-ack"
CONFIG: Final = "config"
ACK: Final = "ack"
PING: Final = "ping"
PONG: Final = "pong"
ERROR: Final = "error"

ACK_STATUSES: Final = ("ok", "partial", "error")
ITEM_STATUSES: Final = ("applied", "unchanged", "failed", "unsupported")
ITEM_OK_STATUSES: Final = frozenset({"applied", "unchanged"})
PAYLOAD_KEYS: Final = ("hostname", "addresses", "ssh_keys", "extra")
#: The channel qemu-guest-agent serves: it speaks qemu-ga's JSON commands,
#: not this protocol, so nothing here ever writes our frames into it.
QEMU_GA_CHANNEL: Final = "org.qemu.guest_agent.0"

FrameErrorCode = Literal["frame-too-large", "bad-frame"]


@dataclass(frozen=True)
class FrameError:
    """Bad data from the peer, reported by a splitter/decoder instead of raised.

    ``code`` is ``"frame-too-large"`` or ``"bad-frame"`` - the same strings
    as the protocol's error codes, so a receiver can answer with
    ``error(None, fe.code, fe.detail)`` directly.
    """

    code: FrameErrorCode
    detail: str


def encode(message: Mapping[str, Any]) -> bytes:
    """Serialise one message as a frame: sync byte, ASCII JSON, newline.

    ``ensure_ascii`` escapes every non-ASCII character and ``json.dumps``
    escapes control characters, so the body can contain neither 0xFF nor
    a raw newline - the two bytes framing depends on.
    """
    message_type = message.get("type")
    if not isinstance(message_type, str) or not message_type:
        raise InvalidMessage(None, 'message has no "type" string')
    try:
        body = json.dumps(
            message, ensure_ascii=True, separators=(",", ":"), allow_nan=False
        ).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise InvalidMessage(message_type, f"not serialisable as JSON: {exc}") from None
    size = len(body) + 2
    if size > MAX_FRAME:
        raise InvalidMessage(
            message_type, f"frame would be {size} bytes, over the {MAX_FRAME}-byte limit"
        )
    return SYNC + body + NEWLINE


class FrameSplitter:
    """Cut a byte stream into whole raw frames (sync byte and newline included).

    The broker forwards these bytes unchanged, without parsing them, so a
    consumer's frame reaches the guest whole and never interleaved.

    Rules (docs/protocol.md, "Framing"):

    - bytes before a sync byte are stale and dropped silently;
    - a sync byte inside a frame means the frame was cut short: it is
      dropped silently and a new frame starts;
    - a frame that grows past :data:`MAX_FRAME` is reported once as
      ``frame-too-large`` and its bytes are dropped up to the next sync
      byte.

    Memory stays bounded by ``max_frame`` whatever the peer sends.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        if max_frame < 3:
            raise ValueError("max_frame must leave room for sync byte, '{}' and newline")
        self.max_frame = max_frame
        self._frame = bytearray()
        self._in_frame = False

    @property
    def pending(self) -> int:
        """Bytes of an unfinished frame held back (0 when between frames)."""
        return len(self._frame)

    def reset(self) -> None:
        """Forget any partial frame (e.g. after a reconnect)."""
        self._frame = bytearray()
        self._in_frame = False

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        out: list[bytes | FrameError] = []
        pos = 0
        end = len(data)
        while pos < end:
            if not self._in_frame:
                start = data.find(SYNC, pos)
                if start < 0:
                    break  # all stale: no frame starts in the rest of data
                self._frame = bytearray(SYNC)
                self._in_frame = True
                pos = start + 1
                continue
            newline = data.find(NEWLINE, pos)
            sync = data.find(SYNC, pos)
            stop = end
            if newline >= 0:
                stop = newline
            if sync >= 0 and sync < stop:
                stop = sync
            # A frame without its newline may hold at most max_frame - 1 bytes.
            if len(self._frame) + (stop - pos) > self.max_frame - 1:
                out.append(
                    FrameError(
                        "frame-too-large",
                        f"frame longer than {self.max_frame} bytes without a newline; dropped",
                    )
                )
                self.reset()
                pos = stop  # a sync byte at stop starts the next frame; a newline is stale
                continue
            self._frame += data[pos:stop]
            if stop == end:
                break
            if stop == sync:
                # The previous frame was cut short (a writer died mid-frame);
                # drop it and let the sync byte start a new one.
                self.reset()
                pos = stop
                continue
            self._frame += NEWLINE
            out.append(bytes(self._frame))
            self.reset()
            pos = stop + 1
        return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_frame(frame: bytes) -> dict[str, Any] | FrameError:
    """Parse one raw frame from :class:`FrameSplitter` into a message dict.

    Senders must emit ASCII; a UTF-8 body is accepted too, since it cannot
    contain the framing bytes either.  Deeply nested JSON raises
    RecursionError in the json module, so that is caught as well.
    """
    body = frame[1:-1] if frame[:1] == SYNC and frame[-1:] == NEWLINE else frame
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return FrameError("bad-frame", f"invalid JSON: {_short(str(exc))}")
    if not isinstance(value, dict):
        return FrameError("bad-frame", f"frame is a JSON {type(value).__name__}, not an object")
    message_type = value.get("type")
    if not isinstance(message_type, str) or not message_type:
        return FrameError("bad-frame", 'frame has no "type" string')
    return value


class FrameDecoder:
    """Bytes in, message dicts (or :class:`FrameError` values) out."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.splitter = FrameSplitter(max_frame)

    def reset(self) -> None:
        self.splitter.reset()

    def feed(self, data: bytes) -> list[dict[str, Any] | FrameError]:
        out: list[dict[str, Any] | FrameError] = []
        for item in self.splitter.feed(data):
            out.append(item if isinstance(item, FrameError) else parse_frame(item))
        return out


def _short(text: str, limit: int = 160) -> str:
    text = escaped(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- identifiers -----------------------------------------------------------


def new_nonce() -> str:
    """A fresh hello nonce: 32 lowercase hex digits (128 random bits)."""
    return secrets.token_hex(16)


def new_id() -> str:
    """A fresh request id (16 hex digits; unique enough within one connection)."""
    return secrets.token_hex(8)


# --- message constructors ----------------------------------------------------


def hello(nonce: str, versions: Sequence[int] = PROTOCOL_VERSIONS) -> dict[str, Any]:
    return {"type": HELLO, "versions": list(versions), "nonce": nonce}


def hello_ack(
    nonce: str,
    *,
    agent_name: str,
    agent_version: str,
    capabilities: Sequence[str],
    version: int = 1,
) -> dict[str, Any]:
    return {
        "type": HELLO_ACK,
        "version": version,
        "nonce": nonce,
        "agent": {"name": agent_name, "version": agent_version},
        "capabilities": list(capabilities),
    }


def config(id: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": CONFIG, "id": id, "payload": dict(payload)}


def ack(
    id: str,
    status: str | None = None,
    results: Sequence[Mapping[str, Any]] = (),
    *,
    error: str | None = None,
) -> dict[str, Any]:
    """An ack; ``status`` defaults to what ``results``/``error`` imply.

    ``error`` means the payload was rejected whole (status "error");
    otherwise "ok" when every item is applied/unchanged, else "partial".
    """
    if status is None:
        status = ack_status(results) if error is None else "error"
    message: dict[str, Any] = {
        "type": ACK,
        "id": id,
        "status": status,
        "results": [dict(r) for r in results],
    }
    if error is not None:
        message["error"] = error
    return message


def ack_status(results: Sequence[Mapping[str, Any]]) -> str:
    """The ack status that per-item results imply ("ok" or "partial")."""
    return "ok" if all(r.get("status") in ITEM_OK_STATUSES for r in results) else "partial"


def ping(id: str) -> dict[str, Any]:
    return {"type": PING, "id": id}


def pong(id: str) -> dict[str, Any]:
    return {"type": PONG, "id": id}


def error(id: str | None, code: str, message: str) -> dict[str, Any]:
    return {"type": ERROR, "id": id, "code": code, "message": message}


def negotiate_version(offered: object) -> int | None:
    """The highest version both sides speak, or None (answer "unsupported-version")."""
    if not isinstance(offered, list):
        return None
    common = [v for v in offered if type(v) is int and v in PROTOCOL_VERSIONS]
    return max(common) if common else None


# --- validators ----------------------------------------------------------------
# Each validate_* returns a list of problems (empty when valid), each a short
# phrase naming the field, so a receiver can answer "bad-request" with all of them.
#
# The config payload's rules (docs/protocol.md 4.3) are each defined once,
# here, as a *_problem(s) function whose phrases say what is wrong but not
# where the value sat.  validate_config_payload names the place by position
# ("addresses[0]"); the guest's appliers (appliers.py) call the same functions
# and name the item at fault ("addresses/eth0"), so the two cannot disagree.

_NONCE_RE: Final = re.compile(r"[0-9a-f]{32}")
_HOST_LABEL_RE: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
# useradd's default NAME_REGEX (Debian adduser is stricter still).
_USER_RE: Final = re.compile(r"[a-z_][a-z0-9_-]{0,30}\$?")
_EXTRA_KEY_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_CONTROL_RE: Final = re.compile(r"[\x00-\x1f\x7f]")
# The kernel's dev_valid_name() refuses '/', ':' and whitespace in a name.
_BAD_INTERFACE_CHAR_RE: Final = re.compile(r"[/:\s\x00-\x1f\x7f]")
MAX_ID_LENGTH: Final = 128
MAX_HOSTNAME_LENGTH: Final = 253  # RFC 1123 (via RFC 1035's 255 octets on the wire)
MAX_INTERFACE_NAME_LENGTH: Final = 15  # Linux IFNAMSIZ is 16 including the NUL
MAX_SSH_KEY_LENGTH: Final = 16384
ADDRESS_ENTRY_KEYS: Final = ("interface", "address", "gateway", "dns")
SSH_ENTRY_KEYS: Final = ("user", "keys")


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _check_id(message: Mapping[str, Any], problems: list[str]) -> None:
    value = message.get("id")
    if not isinstance(value, str) or not value:
        problems.append('"id" must be a non-empty string')
    elif len(value) > MAX_ID_LENGTH or _CONTROL_RE.search(value):
        problems.append(f'"id" must be at most {MAX_ID_LENGTH} printable characters')


def hostname_problem(name: object) -> str | None:
    """Why ``name`` is not an RFC 1123 host name, or None (follows "hostname ")."""
    if not isinstance(name, str) or not name:
        return f"must be a non-empty string, not {shown(name)}"
    if len(name) > MAX_HOSTNAME_LENGTH:
        return f"is {len(name)} characters, longer than {MAX_HOSTNAME_LENGTH}"
    if not all(_HOST_LABEL_RE.fullmatch(label) for label in name.split(".")):
        return (
            f"{shown(name)} is not a valid host name (dot-separated labels of 1-63 "
            "letters, digits and hyphens, none starting or ending with a hyphen)"
        )
    return None


def interface_problem(name: object) -> str | None:
    """Why ``name`` is not a Linux network interface name, or None."""
    if not isinstance(name, str) or not name:
        return f"interface must be a non-empty string, not {shown(name)}"
    if (
        len(name) > MAX_INTERFACE_NAME_LENGTH
        or name in (".", "..")
        or _BAD_INTERFACE_CHAR_RE.search(name)
    ):
        return (
            f"interface {shown(name)} is not a valid Linux interface name (1-15 characters, "
            "no '/', ':', whitespace or control characters, not '.' or '..')"
        )
    return None


def _unknown_keys_problem(entry: Mapping[str, object], known: Sequence[str]) -> str | None:
    unknown = sorted(set(entry) - set(known))
    return f"has unknown keys {shown(unknown)} (known: {list(known)})" if unknown else None


def _ip_version(value: object) -> int | None:
    """4 or 6 for an IP address without a zone index, else None."""
    import ipaddress  # lazily: only the guest agent and send validate payloads

    # A zone index ("fe80::1%eth0") is free text that ipaddress keeps as given
    # (newlines included) and that would reach the guest's network files; an
    # entry already names its interface, so none is needed.
    if not isinstance(value, str) or "%" in value:
        return None
    try:
        return ipaddress.ip_address(value).version
    except ValueError:
        return None


def address_entry_problems(entry: Mapping[str, object]) -> list[str]:
    """Every problem in one ``addresses`` entry (an object)."""
    import ipaddress

    problems: list[str] = []
    if (problem := interface_problem(entry.get("interface"))) is not None:
        problems.append(problem)
    if (problem := _unknown_keys_problem(entry, ADDRESS_ENTRY_KEYS)) is not None:
        problems.append(problem)
    address = entry.get("address")
    version: int | None = None
    if not isinstance(address, str) or "/" not in address:
        problems.append(f"address {shown(address)} must be a string 'ADDRESS/PREFIX'")
    else:
        try:
            if "%" in address:
                raise ValueError("a zone index (see _ip_version)")
            version = ipaddress.ip_interface(address).version
        except ValueError:
            problems.append(f"address {shown(address)} is not an IP address with a prefix")
    gateway = entry.get("gateway")
    if gateway is not None:
        gateway_version = _ip_version(gateway)
        if gateway_version is None:
            problems.append(f"gateway {shown(gateway)} is not an IP address")
        elif version is not None and gateway_version != version:
            problems.append(
                f"gateway {shown(gateway)} is not the same IP version as the address (IPv{version})"
            )
    dns = entry.get("dns")
    if dns is not None:
        if not isinstance(dns, list):
            problems.append("dns must be a list of IP addresses")
        else:
            problems += [
                f"dns server {shown(server)} is not an IP address"
                for server in dns
                if _ip_version(server) is None
            ]
    return problems


def user_problem(user: object) -> str | None:
    """Why ``user`` is not a user name by useradd's default rule, or None."""
    if not isinstance(user, str) or not _USER_RE.fullmatch(user):
        return (
            f"user {shown(user)} is not a valid user name "
            "([a-z_][a-z0-9_-]{0,30}, optionally followed by '$')"
        )
    return None


def ssh_key_line_problem(line: object) -> str | None:
    """Why ``line`` is not one authorized_keys line 'TYPE BASE64 [COMMENT]', or None.

    Each key becomes one line of authorized_keys: a newline would smuggle in a
    second key, so control characters are refused outright (a tab separates
    fields, as a space does).
    """
    if not isinstance(line, str):
        return f"must be a string, not {type(line).__name__}"
    if len(line) > MAX_SSH_KEY_LENGTH:
        return f"is {len(line)} characters, over the {MAX_SSH_KEY_LENGTH} allowed"
    if _CONTROL_RE.search(line.replace("\t", " ")):
        return f"{shown(line)} contains a newline or another control character"
    if len(line.split(None, 2)) < 2:
        return f"{shown(line)} is not one line 'TYPE BASE64 [COMMENT]'"
    return None


def ssh_entry_problems(entry: Mapping[str, object]) -> list[str]:
    """Every problem in one ``ssh_keys`` entry (an object)."""
    problems: list[str] = []
    if (problem := user_problem(entry.get("user"))) is not None:
        problems.append(problem)
    if (problem := _unknown_keys_problem(entry, SSH_ENTRY_KEYS)) is not None:
        problems.append(problem)
    keys = entry.get("keys")
    if not isinstance(keys, list):
        problems.append("keys must be a list of authorized_keys lines")
    else:
        problems += [
            f"key {number}: {problem}"
            for number, key in enumerate(keys)
            if (problem := ssh_key_line_problem(key)) is not None
        ]
    return problems


def extra_key_problem(key: object) -> str | None:
    """Why ``key`` may not name an ``extra`` item, or None."""
    if not isinstance(key, str) or not _EXTRA_KEY_RE.fullmatch(key):
        return (
            f"key {shown(key)} must be 1-128 of letters, digits, '_', '.', '-', "
            "not starting with '.' or '-'"
        )
    return None


def repeated(values: Iterable[object]) -> list[str]:
    """The strings that occur more than once in ``values``, sorted.

    One counting pass: a 1 MiB frame holds some 25,000 entries, and a
    per-entry count of the whole list would be quadratic in that.
    """
    counts = Counter(value for value in values if isinstance(value, str))
    return sorted(value for value, count in counts.items() if count > 1)


def validate_config_payload(payload: object) -> list[str]:
    """Every problem in a config payload; empty means it may be applied.

    A guest agent rejects a payload with any problem *whole* (ack status
    "error", nothing applied): applying half of a malformed configuration
    leaves a guest nobody asked for.
    """
    if not isinstance(payload, dict):
        return ["payload must be an object"]
    problems: list[str] = []
    unknown = sorted(set(payload) - set(PAYLOAD_KEYS))
    if unknown:
        problems.append(
            f"payload has unknown keys {shown(unknown)} (v1 knows {list(PAYLOAD_KEYS)})"
        )
    if "hostname" in payload and (problem := hostname_problem(payload["hostname"])):
        problems.append(f"hostname {problem}")
    if "addresses" in payload:
        problems += _validate_entries(
            payload["addresses"], "addresses", address_entry_problems, "interface"
        )
    if "ssh_keys" in payload:
        problems += _validate_entries(payload["ssh_keys"], "ssh_keys", ssh_entry_problems, "user")
    if "extra" in payload:
        extra = payload["extra"]
        if not isinstance(extra, dict):
            problems.append("extra must be an object")
        else:
            problems += [
                f"extra {problem}"
                for key in extra
                if (problem := extra_key_problem(key)) is not None
            ]
    return problems


def _validate_entries(
    entries: object,
    kind: str,
    entry_problems: Callable[[Mapping[str, object]], list[str]],
    unique_key: str,
) -> list[str]:
    if not isinstance(entries, list):
        return [f"{kind} must be a list"]
    problems: list[str] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            problems.append(f"{kind}[{index}] must be an object")
        else:
            problems += [f"{kind}[{index}]: {problem}" for problem in entry_problems(entry)]
    dupes = repeated(entry.get(unique_key) for entry in entries if isinstance(entry, dict))
    if dupes:
        problems.append(f"{kind} lists the same {unique_key} more than once: {shown(dupes)}")
    return problems


def payload_items(payload: Mapping[str, Any]) -> list[str]:
    """The item names an ack must report for a valid payload, in payload order.

    Payload order is the order of the payload's keys as sent, then of the
    entries of ``addresses`` and ``ssh_keys`` and of the keys of ``extra``
    (docs/protocol.md 4.4): what a guest gets by walking the payload as
    it decoded it.
    """
    items: list[str] = []
    for key, value in payload.items():
        if key == "hostname":
            items.append("hostname")
        elif key == "addresses":
            items += [f"addresses/{entry['interface']}" for entry in value]
        elif key == "ssh_keys":
            items += [f"ssh_keys/{entry['user']}" for entry in value]
        elif key == "extra":
            items += [f"extra/{name}" for name in value]
    return items


def results_problem(payload: Mapping[str, Any], results: Sequence[Mapping[str, Any]]) -> str | None:
    """Why an ok/partial ack's ``results`` do not answer ``payload``, or None.

    They must name every payload item exactly once, in payload order, and
    nothing else: an ack that leaves an item out, reports one never sent
    (``ssh_keys/mallory``) or shuffles them does not confirm what was sent.
    """
    expected = payload_items(payload)
    got = [result.get("item") for result in results]
    if got == expected:
        return None
    problems: list[str] = []
    got_set, expected_set = set(got), set(expected)
    if missing := [item for item in expected if item not in got_set]:
        problems.append(f"missing {shown(missing)}")
    if unknown := [item for item in got if item not in expected_set]:
        problems.append(f"items never sent {shown(unknown)}")
    if dupes := repeated(got):
        problems.append(f"items repeated {shown(dupes)}")
    if not problems:
        problems.append("items out of payload order")
    return "the ack's results do not match the payload: " + "; ".join(problems)


def validate_hello(message: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    versions = message.get("versions")
    if not isinstance(versions, list) or not versions or not all(type(v) is int for v in versions):
        problems.append('"versions" must be a non-empty list of integers')
    nonce = message.get("nonce")
    if not isinstance(nonce, str) or not _NONCE_RE.fullmatch(nonce):
        problems.append('"nonce" must be 32 lowercase hex digits')
    return problems


def validate_hello_ack(message: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    if type(message.get("version")) is not int:
        problems.append('"version" must be an integer')
    elif message["version"] not in PROTOCOL_VERSIONS:
        problems.append(f"version {message['version']} was not offered")
    if not _is_str(message.get("nonce")):
        problems.append('"nonce" must be a string')
    agent = message.get("agent")
    if (
        not isinstance(agent, dict)
        or not _is_str(agent.get("name"))
        or not _is_str(agent.get("version"))
    ):
        problems.append('"agent" must be an object with string "name" and "version"')
    capabilities = message.get("capabilities")
    if not isinstance(capabilities, list) or not all(_is_str(c) for c in capabilities):
        problems.append('"capabilities" must be a list of strings')
    return problems


def validate_ack(message: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    _check_id(message, problems)
    status = message.get("status")
    if status not in ACK_STATUSES:
        problems.append(f'"status" {status!r:.40} is not one of {list(ACK_STATUSES)}')
    results = message.get("results", [])
    if not isinstance(results, list):
        return [*problems, '"results" must be a list']
    for i, result in enumerate(results):
        if (
            not isinstance(result, dict)
            or not _is_str(result.get("item"))
            or result.get("status") not in ITEM_STATUSES
            or not _is_str(result.get("detail", ""))
        ):
            problems.append(
                f'results[{i}] must be an object with string "item", '
                f'"status" one of {list(ITEM_STATUSES)} and string "detail"'
            )
    if problems:
        return problems
    if status == "error":
        if not _is_str(message.get("error")):
            problems.append('status "error" needs an "error" string')
        # Nothing was applied: results may only list the problems found.
        if any(r.get("status") in ITEM_OK_STATUSES for r in results):
            problems.append("status 'error' contradicts the item results")
    elif "error" in message:
        problems.append(f'"error" is only allowed with status "error", not {status!r}')
    elif status != ack_status(results):
        problems.append(f"status {status!r} contradicts the item results")
    return problems


def validate_error(message: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    id_ = message.get("id")
    if id_ is not None and not _is_str(id_):
        problems.append('"id" must be a string or null')
    if not _is_str(message.get("code")):
        problems.append('"code" must be a string')
    if not _is_str(message.get("message")):
        problems.append('"message" must be a string')
    return problems


def validate_message(message: Mapping[str, Any]) -> list[str]:
    """Problems with a decoded message of a v1 type (none for unknown types).

    Unknown types are not a validation problem: the receiver answers them
    with an "unknown-type" error (or, for replies, ignores them).
    """
    kind = message.get("type")
    if kind == HELLO:
        return validate_hello(message)
    if kind == HELLO_ACK:
        return validate_hello_ack(message)
    if kind == CONFIG:
        problems: list[str] = []
        _check_id(message, problems)
        if "payload" not in message:
            problems.append('config has no "payload"')
        return problems  # the payload itself: validate_config_payload
    if kind == ACK:
        return validate_ack(message)
    if kind in (PING, PONG):
        problems = []
        _check_id(message, problems)
        return problems
    if kind == ERROR:
        return validate_error(message)
    return []
