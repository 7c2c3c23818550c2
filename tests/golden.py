"""Golden-file comparison for the translator tests.

A golden file holds the expected output of one conversion.  XML is compared
as canonical XML (C14N 2.0 with insignificant whitespace stripped), so quote
style and indentation do not matter; xl.cfg text is compared byte for byte.

Set ``XCB_REGENERATE_GOLDEN=1`` to rewrite goldens from the current output
(review the diff before committing).  Without it a missing golden is a test
failure, never silently created.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lxml import etree

GOLDEN_DIR = Path(__file__).parent / "data" / "golden"
REGENERATE_ENV = "XCB_REGENERATE_GOLDEN"


def canonical_xml(text: str | bytes) -> str:
    """C14N 2.0 of ``text`` with whitespace-only text nodes removed."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    parser = etree.XMLParser(remove_blank_text=True, resolve_entities=False, no_network=True)
    root = etree.fromstring(data, parser)
    # lxml-stubs do not know C14N 2.0's strip_text option.
    canonical: bytes = etree.tostring(root, method="c14n2", strip_text=True)  # type: ignore[call-overload]
    return canonical.decode("utf-8")


def _regenerating() -> bool:
    return os.environ.get(REGENERATE_ENV, "") not in ("", "0")


def check_golden(name: str, actual: str, *, xml: bool = False) -> None:
    """Compare ``actual`` with tests/data/golden/``name`` (or rewrite it, see above)."""
    path = GOLDEN_DIR / name
    if _regenerating():
        existed = path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        if not existed:
            # Loud on purpose: a new golden must be reviewed and added to git.
            pytest.fail(
                f"created new golden {path}; review it, then rerun without {REGENERATE_ENV}"
            )
        return
    if not path.exists():
        pytest.fail(
            f"golden file {path} is missing; create it with {REGENERATE_ENV}=1 and review it"
        )
    expected = path.read_text(encoding="utf-8")
    if xml:
        assert canonical_xml(actual) == canonical_xml(expected), f"differs from {path}"
    else:
        assert actual == expected, f"differs from {path}"
