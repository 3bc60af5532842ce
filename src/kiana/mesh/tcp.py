"""TCP carrier: a 6-byte preamble, then length-prefixed frames (asyncio).

``KIANA`` + purpose byte (``L`` link, ``P`` pairing), then frames of a 4-byte
big-endian length and that many bytes. Anything else on the port is dropped at
the preamble, logged without its content, and the listener keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from kiana.errors import FrameError, PeerUnreachableError

MAGIC = b"KIANA"
PURPOSE_LINK = b"L"
PURPOSE_PAIR = b"P"
PREAMBLE_TIMEOUT_S = 5.0
_LEN = struct.Struct(">I")


class FramedStream:
    """Length-prefixed frames over an asyncio stream pair. One reader and one writer task."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_frame: int,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.max_frame = max_frame
        peer = writer.get_extra_info("peername")
        self.remote = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def read_frame(self) -> bytes:
        """The next frame. ``FrameError`` on a truncated or oversized frame; EOF too."""
        try:
            head = await self.reader.readexactly(4)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise FrameError("the connection ended inside a frame header") from exc
            raise EOFError from exc
        (size,) = _LEN.unpack(head)
        if size > self.max_frame:
            raise FrameError(f"a frame of {size} bytes exceeds the limit of {self.max_frame}")
        try:
            return await self.reader.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            raise FrameError("the connection ended inside a frame (truncated)") from exc

    def write_frames(self, frames: list[bytes]) -> None:
        if not frames:
            return
        if self.writer.is_closing():
            raise ConnectionResetError("the connection is closed")
        try:
            self.writer.writelines(b for f in frames for b in (_LEN.pack(len(f)), f))
        except RuntimeError as exc:  # uvloop: "...; the handler is closed"
            raise ConnectionResetError("the connection is closed") from exc

    async def drain(self) -> None:
        await self.writer.drain()

    async def close(self) -> None:
        with contextlib.suppress(OSError, ConnectionError, TimeoutError):
            self.writer.close()
            await asyncio.wait_for(self.writer.wait_closed(), 2.0)


async def read_preamble(reader: asyncio.StreamReader) -> bytes:
    """Return the purpose byte, or raise ``FrameError`` for anything that is not KI_ana."""
    try:
        head = await asyncio.wait_for(reader.readexactly(6), PREAMBLE_TIMEOUT_S)
    except (asyncio.IncompleteReadError, TimeoutError) as exc:
        raise FrameError("no KI_ana preamble") from exc
    if head[:5] != MAGIC or head[5:] not in (PURPOSE_LINK, PURPOSE_PAIR):
        raise FrameError("garbage instead of a KI_ana preamble")
    return head[5:]


async def open_framed(
    host: str, port: int, purpose: bytes, *, max_frame: int, timeout_s: float = 5.0
) -> FramedStream:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
    except (OSError, TimeoutError) as exc:
        raise PeerUnreachableError(
            f"cannot connect to {host}:{port}: {exc or 'timed out'}"
        ) from exc
    writer.write(MAGIC + purpose)
    return FramedStream(reader, writer, max_frame=max_frame)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port`` or ``[v6]:port`` → (host, port); ``ValueError`` when malformed."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    port = int(port_text) if port_text else default_port
    if not host or not 0 < port < 65536:
        raise ValueError(f"not a host:port address: {text!r}")
    return host, port
