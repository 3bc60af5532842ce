"""The node: one device's KI_ana, the core that the CLI and HTTP API call.

A ``Node`` owns the settings, this device's keys, the mind's genesis and
the block store. Its methods are synchronous and may block (database,
files): async callers go through ``kiana.offload.Offloader``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kiana.blocks import (
    Block,
    Ref,
    Tombstone,
    make_block,
    make_tombstone,
    parse_block,
    verify_block,
)
from kiana.changes import ChangeFeed, Topic
from kiana.config import Settings, redact_url
from kiana.errors import (
    BlockError,
    EmbeddingModelError,
    HomeError,
    InputError,
    KianaError,
    NotFoundError,
)
from kiana.home import HomeLayout, initialise_home, load_identity
from kiana.identity import DeviceKeys, Genesis
from kiana.memory.chunking import chunk_text
from kiana.memory.files import read_text_file
from kiana.store import BlockFilter, BlockStore, Device, Page, PutResult, SearchHit

if TYPE_CHECKING:
    from kiana.memory.index_service import VectorMemory

log = logging.getLogger("kiana.node")

Progress = Callable[[int], None]
"""Called with the number of items just completed."""


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Remembered:
    block: Block
    created: bool  # False: an identical live block already existed


@dataclass(slots=True)
class AddReport:
    files: int = 0
    chunks_stored: int = 0
    chunks_skipped: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, message)


@dataclass(slots=True)
class VerifyReport:
    checked: int = 0
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (id, code, message)

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass(frozen=True, slots=True)
class Provenance:
    """Who wrote a block and whether it verifies: the basis of 'verifiable memory'."""

    block_id: str
    author: str
    author_name: str
    author_role: str
    created: int
    valid: bool
    error: str = ""


class Node:
    def __init__(
        self, settings: Settings, keys: DeviceKeys, genesis: Genesis, store: BlockStore
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.genesis = genesis
        self.store = store
        # Embed on write: None = when the embedding stack is installed (decided on first write).
        self.auto_embed: bool | None = None
        self._vectors: VectorMemory | None = None
        # Who wants to know that memory changed (the dashboard's live events, sync pushes).
        self.changes = ChangeFeed()

    # -- lifecycle -------------------------------------------------------------

    @classmethod
    def init(cls, settings: Settings, *, mind_name: str = "My mind", device_name: str = "") -> Node:
        keys, genesis = initialise_home(
            settings, mind_name=mind_name, device_name=device_name, now=now_ms()
        )
        node = cls._open_with(settings, keys, genesis)
        return node

    @classmethod
    def open(cls, settings: Settings) -> Node:
        keys, genesis = load_identity(settings)
        return cls._open_with(settings, keys, genesis)

    @classmethod
    def _open_with(cls, settings: Settings, keys: DeviceKeys, genesis: Genesis) -> Node:
        layout = HomeLayout(settings.home)
        store = BlockStore.open(settings.effective_database_url, backup_dir=layout.backups)
        try:
            recorded = store.get_meta("mind_id")
            if recorded is None:
                store.set_meta("mind_id", genesis.mind_id)
                store.set_meta("genesis", json.dumps(genesis.to_dict(), sort_keys=True))
                store.add_device(
                    Device(
                        device_id=genesis.device,
                        sign_key=genesis.sign_key,
                        box_key=genesis.box_key,
                        role="authority",
                        person=genesis.person,
                        name=genesis.device_name,
                        added=genesis.created,
                        record=json.dumps(genesis.to_dict(), sort_keys=True),
                    )
                )
            elif recorded != genesis.mind_id:
                raise HomeError(
                    f"the database belongs to {recorded}, but this home is {genesis.mind_id}; "
                    "check storage.database_url"
                )
            if store.device_key(keys.device_id) != keys.sign_public:
                raise HomeError(
                    f"this device ({keys.device_id}) is not a member of {genesis.mind_id}"
                )
        except BaseException:
            store.close()
            raise
        return cls(settings, keys, genesis, store)

    def close(self) -> None:
        try:
            if self._vectors is not None:
                self._vectors.close()
        finally:
            self.store.close()

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def device_id(self) -> str:
        return self.keys.device_id

    @property
    def mind_id(self) -> str:
        return self.genesis.mind_id

    # -- writing memory -------------------------------------------------------

    def new_block(self, *, body: str, kind: str = "note", **kwargs: Any) -> Block:
        return make_block(
            self.keys.signing,
            self.device_id,
            kind=kind,
            body=body,
            created=now_ms(),
            max_body=self.settings.max_body_bytes,
            **kwargs,
        )

    def remember(
        self,
        text: str,
        *,
        kind: str = "fact",
        scope: str = "shared",
        tags: Iterable[str] = (),
        title: str = "",
        lang: str = "",
        supersedes: str | None = None,
    ) -> Remembered:
        body = text.strip()
        if not body:
            raise InputError("nothing to remember: the text is empty")
        refs: list[Ref] = []
        if supersedes:
            refs.append(Ref("supersedes", self.store.resolve_prefix(supersedes)))
        # Build (and so validate) the block first: bad text fails here with a BlockError.
        block = self.new_block(
            body=body, kind=kind, scope=scope, tags=tags, title=title, lang=lang, refs=refs
        )
        existing = self.store.find_same_body(body)
        if existing and not refs:
            prior = self.store.get(existing)
            if prior.kind == kind and prior.scope == scope and set(block.tags) <= set(prior.tags):
                self.index_blocks([prior])
                return Remembered(prior, created=False)
        self.store.put(block, verified=True)
        self.changes.publish(Topic.BLOCKS, local=True)
        self.index_blocks([block])
        return Remembered(block, created=True)

    def add_files(
        self,
        paths: Iterable[Path],
        *,
        tags: Iterable[str] = (),
        scope: str = "shared",
        progress: Progress | None = None,
    ) -> AddReport:
        """Chunk text files into ``chunk`` blocks. Re-adding an unchanged file stores nothing new."""
        report = AddReport()
        tag_list = list(tags)
        for path in paths:
            try:
                text = read_text_file(path)
            except InputError as exc:
                report.errors.append((str(path), exc.message))
                if progress:
                    progress(1)
                continue
            try:
                blocks, skipped = self._file_blocks(path, text, tags=tag_list, scope=scope)
            except BlockError as exc:  # e.g. a chunk over the body limit: skip the file whole
                report.errors.append((str(path), exc.message))
                if progress:
                    progress(1)
                continue
            report.chunks_skipped += skipped
            if blocks:
                self.store.put_many(blocks, verified=True)
                self.changes.publish(Topic.BLOCKS, local=True)
                self.index_blocks(blocks)
            report.chunks_stored += len(blocks)
            report.files += 1
            if progress:
                progress(1)
        return report

    def _file_blocks(
        self, path: Path, text: str, *, tags: list[str], scope: str
    ) -> tuple[list[Block], int]:
        """Signed chunk blocks for one file, leaving out chunks already stored from it."""
        source = str(path.resolve())
        blocks: list[Block] = []
        skipped = 0
        for chunk in chunk_text(text, target=self.settings.chunk_chars, default_title=path.name):
            if self.store.find_same_body(chunk.text, source):
                skipped += 1
                continue
            blocks.append(
                self.new_block(
                    body=chunk.text,
                    kind="chunk",
                    scope=scope,
                    tags=tags,
                    title=chunk.title,
                    source=source,
                    seq=chunk.seq,
                )
            )
        return blocks, skipped

    def put_signed(self, record: dict[str, Any]) -> tuple[Block, str]:
        """Verify and store a block signed elsewhere (API, import). Returns (block, result)."""
        block = parse_block(record, max_body=self.settings.max_body_bytes)
        verify_block(block, self.store.device_key)
        result = self.store.put(block, verified=True)
        if result is PutResult.STORED:
            self.changes.publish(Topic.BLOCKS, local=True)
        if result is not PutResult.ERASED:
            self.index_blocks([block])
        return block, result.value

    def forget(self, block_id: str, *, reason: str = "") -> Tombstone:
        full = self.store.resolve_prefix(block_id)
        existing = self.store.tombstone_for(full)
        if existing is not None:
            return existing
        if not self.store.has(full):
            raise NotFoundError(f"no block with id {full[:12]}…")
        tomb = make_tombstone(
            self.keys.signing, self.device_id, erases=full, created=now_ms(), reason=reason
        )
        self.store.erase(tomb, verified=True)
        self.changes.publish(Topic.BLOCKS, local=True)
        self.unindex_blocks([full])
        return tomb

    # -- vectors (semantic memory) ------------------------------------------------------

    @property
    def vectors(self) -> VectorMemory:
        """Embeddings and the vector index, created on first use (needs kiana[embeddings])."""
        if self._vectors is None:
            try:
                from kiana.memory.index_service import VectorMemory
            except ImportError as exc:  # numpy and friends come with the extra
                raise EmbeddingModelError(
                    f"semantic memory needs the embeddings extra ({exc.name} is missing);"
                    " pip install 'kiana[embeddings]'"
                ) from exc
            self._vectors = VectorMemory(self.store, self.settings)
        return self._vectors

    @vectors.setter
    def vectors(self, memory: VectorMemory) -> None:
        """Use this vector memory (e.g. one sharing an already loaded embedder)."""
        if self._vectors is not None and self._vectors is not memory:
            self._vectors.close()
        self._vectors = memory

    def index_blocks(self, blocks: Sequence[Block]) -> None:
        """Give newly stored blocks their vectors. Never fails a write: the blocks are
        already stored, and ``kiana reindex`` makes any vector missed here."""
        if not blocks or not self._embed_on_write():
            return
        try:
            self.vectors.index_blocks(blocks)
        except Exception as exc:  # noqa: BLE001 - embedding is best effort; the block is safe
            log.warning(
                "could not embed %d block(s) (%s); 'kiana reindex' will retry",
                len(blocks),
                getattr(exc, "code", type(exc).__name__),
            )

    def unindex_blocks(self, block_ids: Sequence[str]) -> None:
        """Drop erased blocks from the vector index (the database dropped their vectors)."""
        if not block_ids:
            return
        try:
            self.vectors.remove(block_ids)
        except EmbeddingModelError:
            return  # no embedding stack: there is no index either
        except Exception as exc:  # noqa: BLE001 - searches skip erased blocks regardless
            log.warning(
                "could not remove %d erased block(s) from the vector index (%s)",
                len(block_ids),
                getattr(exc, "code", type(exc).__name__),
            )

    def _embed_on_write(self) -> bool:
        if self.auto_embed is None:
            from kiana.memory.embedding.loader import embedding_available

            self.auto_embed = embedding_available(self.settings)
        return self.auto_embed

    # -- reading memory -------------------------------------------------------

    def get(self, block_id: str) -> Block:
        return self.store.get(self.store.resolve_prefix(block_id))

    def list_blocks(
        self, flt: BlockFilter | None = None, *, limit: int = 50, cursor: str | None = None
    ) -> Page:
        return self.store.list_blocks(flt, limit=limit, cursor=cursor)

    def search(
        self, query: str, flt: BlockFilter | None = None, *, limit: int = 10
    ) -> list[SearchHit]:
        return self.store.search(query, flt, limit=limit)

    def provenance(self, block_id: str) -> Provenance:
        block = self.get(block_id)
        devices = {d.device_id: d for d in self.store.devices()}
        device = devices.get(block.author)
        try:
            verify_block(block, self.store.device_key)
            valid, error = True, ""
        except BlockError as exc:
            valid, error = False, exc.code
        return Provenance(
            block_id=block.id,
            author=block.author,
            author_name=device.name if device else "unknown device",
            author_role=device.role if device else "unknown",
            created=block.created,
            valid=valid,
            error=error,
        )

    def verify_all(self, progress: Progress | None = None) -> VerifyReport:
        report = VerifyReport()
        for block in self.store.iter_blocks():
            report.checked += 1
            try:
                verify_block(block, self.store.device_key)
            except BlockError as exc:
                report.failures.append((block.id, exc.code, exc.message))
            if progress:
                progress(1)
        return report

    def status(self) -> dict[str, Any]:
        stats = self.store.stats()
        url = self.settings.effective_database_url
        return {
            "mind": {
                "id": self.mind_id,
                "name": self.genesis.name,
                "created": self.genesis.created,
            },
            "device": {"id": self.device_id, "name": self._device_name()},
            "storage": {
                "backend": self.store.db.dialect,
                "location": redact_url(url),
                "schema_version": stats.schema_version,
            },
            "blocks": {
                "total": stats.blocks,
                "by_kind": stats.by_kind,
                "by_scope": stats.by_scope,
                "erased": stats.erased,
                "tombstones": stats.tombstones,
            },
            "devices": stats.devices,
        }

    def _device_name(self) -> str:
        for d in self.store.devices():
            if d.device_id == self.device_id:
                return d.name
        return ""


__all__ = ["AddReport", "KianaError", "Node", "Provenance", "Remembered", "VerifyReport", "now_ms"]
