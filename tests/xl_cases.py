"""Reader for tests/data/xl-channel-spec-cases.txt: 47 inputs measured on the real xl 4.17.

Each case is the xl.cfg fragment, xl's exit status, its stderr and the
channels it parsed (from ``xl -N create``'s JSON), as recorded on a Debian 12
machine.  Both our parser's tests and the live-xl conformance tests read the
cases from here, so the two agree on what "the research" says.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

CASES_FILE = Path(__file__).parent / "data" / "xl-channel-spec-cases.txt"

_HEADING = re.compile(r"^### (?P<name>\S+) \(rc=(?P<rc>\d+)\)$", re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class XlCase:
    name: str
    rc: int
    cfg: str
    stderr: str
    channels: list[dict[str, Any]] | None  # None: xl printed no JSON (it failed)
    json_null: bool  # xl succeeded and printed "channels": null (no channels)

    @property
    def accepted(self) -> bool:
        return self.rc == 0

    def simple_channels(self) -> list[tuple[str | None, str, str | None]]:
        """(name, connection, path) per channel, comparable with our model."""
        return [simplify(c) for c in self.channels or []]


def simplify(channel: dict[str, Any]) -> tuple[str | None, str, str | None]:
    """One channel of xl's JSON as (name, connection, socket path)."""
    if "connection.socket" in channel:
        return channel.get("name"), "socket", channel["connection.socket"].get("path")
    if "connection.pty" in channel:
        return channel.get("name"), "pty", None
    raise ValueError(f"unexpected channel JSON {channel!r}")


def load_cases() -> list[XlCase]:
    text = CASES_FILE.read_text(encoding="utf-8")
    headings = list(_HEADING.finditer(text))
    cases = []
    for index, heading in enumerate(headings):
        end = headings[index + 1].start() if index + 1 < len(headings) else len(text)
        body = text[heading.end() + 1 : end]
        cfg_part, rest = body.split("--- stderr:\n", 1)
        stderr, json_part = rest.split("--- channels JSON:\n", 1)
        cfg = cfg_part.removeprefix("--- cfg:\n")
        json_text = json_part.strip()
        channels: list[dict[str, Any]] | None
        if json_text.startswith("(no JSON)"):
            channels, json_null = None, False
        elif json_text == "null":
            channels, json_null = [], True
        else:
            channels, json_null = json.loads(json_text), False
        cases.append(XlCase(heading["name"], int(heading["rc"]), cfg, stderr, channels, json_null))
    return cases
