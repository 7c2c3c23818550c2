"""jsonlite drives CPython's _json directly: it must read and write what json does."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xen_channel_backend import jsonlite

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@given(values)
def test_dumps_is_jsons_sorted_ascii_form(value: Any) -> None:
    assert jsonlite.dumps(value) == json.dumps(value, sort_keys=True, allow_nan=False)


@given(values)
def test_loads_reads_what_json_writes(value: Any) -> None:
    text = json.dumps(value, indent=2)
    assert jsonlite.loads(text) == json.loads(text)
    assert jsonlite.loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize("bad", ["", "{", '{"a": 1} x', "NaN", "[Infinity]", "{'a': 1}",
                                 '"\x01"', "1 2", "\ufeff{}"])
def test_loads_refuses_what_is_not_one_strict_json_value(bad: str) -> None:
    with pytest.raises(ValueError):
        jsonlite.loads(bad)
    with pytest.raises(ValueError):
        json.loads(bad, parse_constant=jsonlite._ScanContext.parse_constant)


def test_dumps_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(TypeError):
        jsonlite.dumps({"a": object()})
    with pytest.raises(ValueError):
        jsonlite.dumps(float("nan"))
