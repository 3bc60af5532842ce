"""Integer labels for block ids, with the metadata the hnsw backend filters on.

Labels are dense and never reused, so a label always means one block. Kind,
scope, author and tags are stored as small integer codes in numpy arrays:
a filter becomes a few vectorised comparisons over all labels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from kiana.memory.vectors.base import VectorItem
from kiana.store import BlockFilter

Mask = npt.NDArray[np.bool_]


class Vocab:
    def __init__(self, words: list[str] | None = None) -> None:
        self.words: list[str] = list(words or [])
        self.codes = {w: i for i, w in enumerate(self.words)}

    def code(self, word: str) -> int:
        found = self.codes.get(word)
        if found is None:
            found = self.codes[word] = len(self.words)
            self.words.append(word)
        return found


class LabelTable:
    def __init__(self) -> None:
        self.by_id: dict[str, int] = {}
        self.ids: list[str | None] = []
        self.vocab = {c: Vocab() for c in ("kind", "scope", "author", "tag")}
        self.cols = {c: np.full(0, -1, dtype=np.int32) for c in ("kind", "scope", "author")}
        self.created = np.zeros(0, dtype=np.int64)
        self.alive = np.zeros(0, dtype=np.bool_)
        self.tags: list[tuple[int, ...]] = []
        self.tag_labels: dict[int, set[int]] = {}

    def __len__(self) -> int:
        return len(self.by_id)

    @property
    def next_label(self) -> int:
        return len(self.ids)

    def assign(self, item: VectorItem) -> tuple[int, bool]:
        """The label for ``item`` (new if unknown) and whether it is new; records metadata."""
        label = self.by_id.get(item.block_id)
        new = label is None
        if label is None:
            label = len(self.ids)
            self.ids.append(item.block_id)
            self.tags.append(())
            self.by_id[item.block_id] = label
            self._grow(label + 1)
        self._set(label, item)
        return label, new

    def drop(self, block_id: str) -> int | None:
        label = self.by_id.pop(block_id, None)
        if label is None:
            return None
        self.ids[label] = None
        self.alive[label] = False
        for code in self.tags[label]:
            self.tag_labels.get(code, set()).discard(label)
        self.tags[label] = ()
        return label

    def mask(self, flt: BlockFilter) -> Mask:
        n = self.next_label
        mask = self.alive[:n].copy()
        for col, value in (("kind", flt.kind), ("scope", flt.scope), ("author", flt.author)):
            if value is not None:
                code = self.vocab[col].codes.get(value, -2)
                mask &= self.cols[col][:n] == code
        if flt.tag is not None:
            tagged = np.zeros(n, dtype=np.bool_)
            tag_code = self.vocab["tag"].codes.get(flt.tag)
            labels = self.tag_labels.get(tag_code, set()) if tag_code is not None else set()
            if labels:
                tagged[np.fromiter(labels, dtype=np.int64, count=len(labels))] = True
            mask &= tagged
        if flt.since is not None:
            mask &= self.created[:n] >= flt.since
        if flt.until is not None:
            mask &= self.created[:n] < flt.until
        return mask

    def _set(self, label: int, item: VectorItem) -> None:
        for col, value in (("kind", item.kind), ("scope", item.scope), ("author", item.author)):
            self.cols[col][label] = self.vocab[col].code(value)
        self.created[label] = item.created
        self.alive[label] = True
        for code in self.tags[label]:
            self.tag_labels.get(code, set()).discard(label)
        codes = tuple(self.vocab["tag"].code(t) for t in dict.fromkeys(item.tags))
        self.tags[label] = codes
        for code in codes:
            self.tag_labels.setdefault(code, set()).add(label)

    def _grow(self, size: int) -> None:
        if size <= len(self.alive):
            return
        cap = max(size, 2 * len(self.alive), 1024)
        for col, arr in self.cols.items():
            self.cols[col] = np.concatenate([arr, np.full(cap - len(arr), -1, dtype=np.int32)])
        self.created = np.concatenate([self.created, np.zeros(cap - len(self.created), np.int64)])
        self.alive = np.concatenate([self.alive, np.zeros(cap - len(self.alive), np.bool_)])

    # -- persistence (the JSON sidecar) -------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        n = self.next_label
        return {
            "next_label": n,
            "vocab": {c: v.words for c, v in self.vocab.items()},
            "ids": self.ids,
            "kind": self.cols["kind"][:n].tolist(),
            "scope": self.cols["scope"][:n].tolist(),
            "author": self.cols["author"][:n].tolist(),
            "created": self.created[:n].tolist(),
            "tags": [list(t) for t in self.tags],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabelTable:
        table = cls()
        n = int(data["next_label"])
        table.vocab = {c: Vocab(list(data["vocab"][c])) for c in table.vocab}
        table.ids = list(data["ids"])
        table.tags = [tuple(int(c) for c in t) for t in data["tags"]]
        if len(table.ids) != n or len(table.tags) != n:
            raise ValueError("sidecar columns disagree in length")
        table._grow(n)
        for col in ("kind", "scope", "author"):
            table.cols[col][:n] = np.asarray(data[col], dtype=np.int32)
        table.created[:n] = np.asarray(data["created"], dtype=np.int64)
        for label, block_id in enumerate(table.ids):
            if block_id is None:
                continue
            table.by_id[str(block_id)] = label
            table.alive[label] = True
            for code in table.tags[label]:
                table.tag_labels.setdefault(code, set()).add(label)
        return table
