"""Run blocking core calls off the event loop: one writer thread, a pool of readers.

The store already serialises writes; routing them through a single thread as
well keeps write order equal to arrival order and leaves the reader pool free.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Offloader:
    def __init__(self, readers: int = 4) -> None:
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiana-write")
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="kiana-read")

    async def read(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, functools.partial(fn, *args, **kwargs))

    async def write(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._writer, functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
