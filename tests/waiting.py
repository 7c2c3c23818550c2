"""The one polling helper the tests share: wait for a condition, never time it.

A deadline here is a hang guard, not an assertion about speed (speed belongs
in bench/): it is generous, and a condition that normally holds within
milliseconds is polled until it does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

WAIT = 15.0


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``condition`` until it is truthy and return its value; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
