"""Polling from synchronous test code: wait until a check returns something truthy.

(Async tests use ``tests.mesh_helpers.until``.) One helper for every test file, so a
timeout always reads the same way and can carry extra context (a service's logs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    check: Callable[[], T | None],
    timeout_s: float = 15.0,
    what: str = "",
    *,
    interval_s: float = 0.05,
    context: Callable[[], str] | None = None,
) -> T:
    """Call ``check`` every ``interval_s`` until it returns something truthy; that value.

    Fails after ``timeout_s`` naming ``what`` (and appending ``context()``, if given).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{context()}" if context is not None else ""
            raise AssertionError(
                f"timed out after {timeout_s:g} s waiting for {what or check}{extra}"
            )
        time.sleep(interval_s)
