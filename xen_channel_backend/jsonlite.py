"""JSON for the registry's files, without importing the json package.

Every hook reads and writes registry records.  Importing json compiles its
regular expressions and imports re, about 4 ms of each hook call, which is
a fifth of the budget a hook has (docs/performance.md).  CPython's ``_json``
accelerator, which the json package itself delegates to, parses and
formats the same text; this module drives it directly.  Where ``_json`` is
missing (another interpreter) the json package does the work.

Only what the registry needs: :func:`loads` (strict: no NaN or Infinity,
nothing after the value) and :func:`dumps` (ASCII, sorted keys, one line).
tests/test_jsonlite.py checks both against the json package.
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: the hooks import this module
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_WHITESPACE = " \t\n\r"


class _ScanContext:
    """The attributes _json.make_scanner reads from a JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")


_scanner: Callable[[str, int], tuple[Any, int]] | None = None
_encoder: Callable[[Any, int], Any] | None = None


def loads(data: str | bytes) -> Any:
    """Parse one JSON value; ValueError on anything else (json.JSONDecodeError is one)."""
    global _scanner
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    try:
        import _json
    except ImportError:  # pragma: no cover - not CPython
        import json

        return json.loads(text)
    if _scanner is None:
        _scanner = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]
    stripped = text.strip(_WHITESPACE)
    try:
        value, end = _scanner(stripped, 0)
    except StopIteration:
        raise ValueError("not a JSON value") from None
    if end != len(stripped):
        raise ValueError(f"extra data after the JSON value at character {end}")
    return value


def _refuse(value: object) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> str:
    """``json.dumps(value, sort_keys=True, allow_nan=False)``: ASCII, one line."""
    global _encoder
    try:
        import _json
    except ImportError:  # pragma: no cover - not CPython
        import json

        return json.dumps(value, sort_keys=True, allow_nan=False)
    if _encoder is None:
        _encoder = _json.make_encoder(
            {}, _refuse, _json.encode_basestring_ascii, None, ": ", ", ", True, False, False)
    return "".join(_encoder(value, 0))
