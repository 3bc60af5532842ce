"""The ``Carrier`` protocol: whole frames between two devices, whatever moves them.

Two implementations: ``tcp.FramedStream`` (direct TCP, length-prefixed) and
``rtc.DataChannelCarrier`` (a WebRTC data channel, possibly relayed by TURN).
A ``Link`` runs over either; it never sees which.
"""

from __future__ import annotations

from typing import Protocol


class Carrier(Protocol):
    remote: str  # a printable description of the other end (address, or "webrtc:relay")

    async def read_frame(self) -> bytes:
        """The next frame; ``EOFError`` at a clean end, ``FrameError`` when broken."""
        ...

    def write_frames(self, frames: list[bytes]) -> None: ...

    async def drain(self) -> None: ...

    async def close(self) -> None: ...
